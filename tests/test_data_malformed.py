"""Malformed input of every kind is quarantined with the right reason and position; counts are conserved."""

from __future__ import annotations

import io
import json
import tarfile
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mmada.data.specs import load_spec
from tests.test_data_readers import GSM8K_ROWS, pattern, png_bytes, run, write_idx, write_jsonl, write_wds


def reasons_by_position(q: list[dict]) -> dict[str, str]:
    return {x["position"]: x["reason"] for x in q}


def test_bad_jsonl_lines(tmp_path):
    good = json.dumps(GSM8K_ROWS[0]).encode()
    lines = [
        good,                                                           # line 1: kept
        b'{"question": "unterminated',                                  # line 2: bad JSON
        '{"question": "caf\u00e9", "answer": "x\\n#### 1"}'.encode("latin-1"),  # line 3: not UTF-8
        json.dumps({"question": "no answer here"}).encode(),            # line 4: missing field
        json.dumps({"question": 123, "answer": "1\n#### 1"}).encode(),  # line 5: wrong type
        json.dumps({"question": "q?", "answer": "It is 4."}).encode(),  # line 6: GSM8K answer without #### N
        b"[1, 2, 3]",                                                   # line 7: not an object
        b"",                                                            # line 8: blank (no record)
        json.dumps({"question": "x" * 5000, "answer": "1\n#### 1"}).encode(),  # line 9: huge record
        json.dumps({"question": "   ", "answer": "1\n#### 1"}).encode(),  # line 10: empty question
        json.dumps(GSM8K_ROWS[1]).encode(),                             # line 11: kept
    ]
    f = tmp_path / "gsm8k.jsonl"
    f.write_bytes(b"\n".join(lines) + b"\n")
    m, samples, q = run(tmp_path, "reasoning", [{"type": "gsm8k", "uri": str(f)}],
                        filters={"max_record_bytes": 4096}, chunk_size=3)
    assert reasons_by_position(q) == {
        "line 2": "bad_json", "line 3": "not_utf8", "line 4": "missing_field", "line 5": "wrong_type",
        "line 6": "no_final_answer", "line 7": "wrong_type", "line 9": "record_too_large", "line 10": "empty_field",
    }
    assert all(x["source"] == "gsm8k" and x["file"] == str(f) and x["detail"] for x in q)
    assert "answer" in next(x["detail"] for x in q if x["position"] == "line 4")
    assert "question" in next(x["detail"] for x in q if x["position"] == "line 5")
    assert m.counts.model_dump() == {"read": 10, "kept": 2, "rejected": 8}  # the blank line is no record
    assert sorted(samples) == ["gsm8k-0-000000001", "gsm8k-0-000000011"]


def test_huge_line_is_skipped_without_reading_it_whole(tmp_path):
    from mmada.data.sources import containers as C

    data = b'{"a": 1}\n' + b"x" * 3_000_000 + b"\n" + b'{"b": 2}\n'
    out = list(C.iter_lines(io.BytesIO(data), max_bytes=1000, block=4096))
    assert [(line, n) for line, n, _ in out] == [(b'{"a": 1}\n', 9), (None, 3_000_001), (b'{"b": 2}\n', 9)]


def test_empty_files(tmp_path):
    (tmp_path / "empty.jsonl").write_bytes(b"")
    (tmp_path / "blank.jsonl").write_bytes(b"\n\n  \n")
    (tmp_path / "empty.tar").write_bytes(b"")
    (tmp_path / "empty.json").write_bytes(b"[]")
    m, _, q = run(tmp_path, "reasoning", [
        {"name": "a", "type": "gsm8k", "uri": str(tmp_path / "empty.jsonl")},
        {"name": "b", "type": "gsm8k", "uri": str(tmp_path / "blank.jsonl")},
        {"name": "c", "type": "alpaca", "uri": str(tmp_path / "empty.json")},
    ])
    assert [(x["source"], x["position"], x["reason"]) for x in q] == [("a", "file", "empty_file"),
                                                                       ("b", "file", "empty_file")]
    assert {s.name: s.counts.read for s in m.sources} == {"a": 1, "b": 1, "c": 0}
    m2, _, q2 = run(tmp_path, "t2i", [{"type": "wds", "uri": str(tmp_path / "empty.tar")}], name="t2")
    assert [x["reason"] for x in q2] == ["empty_file"] and m2.counts.rejected == 1


def test_truncated_tar_and_bad_images(tmp_path):
    samples = [{"__key__": f"{i:03d}", "png": png_bytes(pattern(i)), "txt": f"caption {i}"} for i in range(4)]
    samples.insert(1, {"__key__": "bad", "jpg": b"\xff\xd8 definitely not a jpeg", "txt": "broken"})
    samples.insert(2, {"__key__": "tiny", "png": png_bytes((1, 2, 3), size=4), "txt": "too small"})
    samples.insert(3, {"__key__": "nocap", "png": png_bytes(pattern(9))})
    full = write_wds(tmp_path / "full.tar", samples)
    raw = full.read_bytes()
    with tarfile.open(full) as tf:
        last = tf.getmembers()[-1]  # cut inside the data of the last member
    (tmp_path / "cut.tar").write_bytes(raw[: last.offset_data + 10])
    m, kept, q = run(tmp_path, "t2i", [{"type": "wds", "uri": str(tmp_path / "cut.tar")}])
    r = reasons_by_position(q)
    assert r["sample 'bad'"] == "undecodable_image" and r["sample 'tiny'"] == "image_too_small"
    assert r["sample 'nocap'"] == "missing_caption" and r["sample '003'"] == "truncated_tar"
    assert sorted(s["txt"] for s in kept.values()) == ["caption 0", "caption 1", "caption 2"]
    assert m.counts.model_dump() == {"read": 7, "kept": 3, "rejected": 4}


def test_unsafe_tar_members_are_refused(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in [("000.png", png_bytes(pattern(0))), ("000.txt", b"ok"), ("../evil.txt", b"x"),
                           ("/abs.txt", b"y")]:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
        link = tarfile.TarInfo("001.png")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(link)
    (tmp_path / "evil.tar").write_bytes(buf.getvalue())
    m, kept, q = run(tmp_path, "t2i", [{"type": "wds", "uri": str(tmp_path / "evil.tar")}])
    assert sorted(x["reason"] for x in q) == ["unsafe_member"] * 3
    assert list(kept) == ["wds-0-000000000"] and m.counts.read == 4


def test_image_paths_cannot_escape_the_source_root(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "secret.png").write_bytes(png_bytes(pattern(1)))
    (root / "ok.png").write_bytes(png_bytes(pattern(2)))
    write_jsonl(root / "captions.jsonl", [{"file": "ok.png", "caption": "fine"},
                                          {"file": "../secret.png", "caption": "escape"},
                                          {"file": str(tmp_path / "secret.png"), "caption": "absolute"},
                                          {"file": "gone.png", "caption": "missing"},
                                          {"file": "ok.png"}])
    (root / "stray.png").write_bytes(png_bytes(pattern(3)))
    _m, kept, q = run(tmp_path, "image_text", [{"type": "image_folder", "uri": str(root), "captions": "captions.jsonl"}],
                     filters={"exact_dedup": False})
    assert reasons_by_position(q) == {"captions.jsonl line 2": "path_escape", "captions.jsonl line 3": "path_escape",
                                      "captions.jsonl line 4": "missing_image", "captions.jsonl line 5": "missing_field",
                                      "image stray.png": "missing_caption"}
    assert [s["txt"] for s in kept.values()] == ["fine"]
    (tmp_path / "images").mkdir()
    (tmp_path / "llava.json").write_text(json.dumps([
        {"id": "1", "image": "../secret.png", "conversations": [{"from": "human", "value": "<image>\nWhat?"},
                                                                 {"from": "gpt", "value": "x"}]},
        {"id": "2", "conversations": [{"from": "human", "value": "text only"}, {"from": "gpt", "value": "y"}]},
        {"id": "3", "image": "a.png", "conversations": [{"from": "gpt", "value": "no question"}]},
    ]))
    _, _, q2 = run(tmp_path, "mmu", [{"type": "llava", "uri": str(tmp_path / "llava.json"),
                                      "image_root": str(tmp_path / "images")}], name="llava")
    assert [x["reason"] for x in q2] == ["path_escape", "missing_field", "bad_conversation"]


def test_idx_truncated_and_unknown_labels(tmp_path):
    import numpy as np

    imgs = np.arange(5 * 4 * 4, dtype=np.uint8).reshape(5, 4, 4) * 3
    ip = write_idx(tmp_path / "imgs.idx", imgs)
    ip.write_bytes(ip.read_bytes()[:-20])  # images are 16 bytes: item 4 is gone, item 3 lost 4 bytes
    lp = write_idx(tmp_path / "labels.idx", np.array([0, 1, 7, 1, 0], np.uint8))
    spec_src = {"type": "idx", "uri": str(ip), "labels": str(lp), "class_names": ["zero", "one", "two"],
                "caption_template": "digit {label}"}
    m, kept, q = run(tmp_path, "image_text", [spec_src], filters={"min_image_size": 1, "exact_dedup": False},
                     chunk_size=2)
    assert reasons_by_position(q) == {"item 2": "unknown_label", "item 3": "truncated_file", "item 4": "truncated_file"}
    assert sorted(s["txt"] for s in kept.values()) == ["digit one", "digit zero"]
    assert m.counts.model_dump() == {"read": 5, "kept": 2, "rejected": 3}


def test_corrupt_parquet_and_undecodable_image_bytes(tmp_path):
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 this is not parquet PAR1")
    pq.write_table(pa.table({"image": [b"\x89PNG\r\n\x1a\n garbage", png_bytes(pattern(4))], "caption": ["x", None]}),
                   tmp_path / "ok.parquet")
    m, _kept, q = run(tmp_path, "image_text", [
        {"name": "bad", "type": "image_parquet", "uri": str(tmp_path / "bad.parquet")},
        {"name": "ok", "type": "image_parquet", "uri": str(tmp_path / "ok.parquet")},
    ])
    assert [(x["source"], x["position"], x["reason"]) for x in q] == [
        ("bad", "file", "unreadable_file"), ("ok", "row 0", "undecodable_image"), ("ok", "row 1", "missing_field")]
    assert m.counts.model_dump() == {"read": 3, "kept": 0, "rejected": 3}


def test_decompression_bomb_is_rejected_before_decoding(tmp_path):
    from PIL import Image

    big = io.BytesIO()
    Image.new("L", (4000, 4000)).save(big, format="PNG")  # 16 Mpx, compresses to a few KB
    write_wds(tmp_path / "bomb.tar", [{"__key__": "b", "png": big.getvalue(), "txt": "bomb"}])
    _, kept, q = run(tmp_path, "t2i", [{"type": "wds", "uri": str(tmp_path / "bomb.tar")}],
                     filters={"max_image_pixels": 1_000_000})
    assert [x["reason"] for x in q] == ["image_too_large"] and not kept


def test_duplicates_and_near_duplicates_keep_the_first(tmp_path):
    base = GSM8K_ROWS[2]
    near = {"question": base["question"].replace("wallet", "purse"), "answer": base["answer"]}
    f = write_jsonl(tmp_path / "d.jsonl", [GSM8K_ROWS[0], base, GSM8K_ROWS[0], near, GSM8K_ROWS[1]])
    g = write_jsonl(tmp_path / "e.jsonl", [GSM8K_ROWS[1]])
    m, _kept, q = run(tmp_path, "reasoning", [{"name": "d", "type": "gsm8k", "uri": str(f)},
                                             {"name": "e", "type": "gsm8k", "uri": str(g)}],
                     filters={"near_dedup": True, "near_dedup_threshold": 0.7}, chunk_size=2)
    assert [(x["key"], x["reason"], x["detail"]) for x in q] == [
        ("d-0-000000003", "duplicate", "of d-0-000000001"),
        ("d-0-000000004", "near_duplicate", "of d-0-000000002"),
        ("e-0-000000001", "duplicate", "of d-0-000000005"),
    ]
    assert {s.name: s.counts.model_dump() for s in m.sources} == {
        "d": {"read": 5, "kept": 3, "rejected": 2}, "e": {"read": 1, "kept": 0, "rejected": 1}}


def test_token_length_filters(tmp_path):
    rows = [{"question": "Short?", "answer": "1\n#### 1"}, {"question": "word " * 300, "answer": "2\n#### 2"}]
    f = write_jsonl(tmp_path / "t.jsonl", rows)
    from mmada.tokenization import load_text_tokenizer

    tok = load_text_tokenizer("builtin")
    _m, kept, q = run(tmp_path, "reasoning", [{"type": "gsm8k", "uri": str(f)}], filters={"max_tokens": 200})
    assert [(x["position"], x["reason"]) for x in q] == [("t.jsonl line 2", "too_many_tokens")]
    (s,) = kept.values()
    assert s["json"].num_tokens == len(tok(s["txt"], add_special_tokens=False)["input_ids"]) <= 200
    _m2, kept2, q2 = run(tmp_path, "reasoning", [{"type": "gsm8k", "uri": str(f)}], name="t2",
                        filters={"min_tokens": s["json"].num_tokens + 1})
    assert [x["reason"] for x in q2] == ["too_few_tokens"] and len(kept2) == 1


def test_missing_source_file_fails_loudly(tmp_path):
    from mmada.data.curate import curate
    from mmada.data.errors import DataError

    spec = load_spec({"name": "x", "kind": "reasoning", "sources": [{"type": "gsm8k", "uri": str(tmp_path / "nope.jsonl")}]})
    with pytest.raises(DataError, match=r"nope\.jsonl"):
        curate(spec, out=str(tmp_path / "out"))
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_reject_reasons_are_documented(tmp_path):
    from mmada.data.sources import REASONS

    f = write_jsonl(tmp_path / "x.jsonl", [{"question": 1}, {"nothing": True}])
    _, _, q = run(tmp_path, "reasoning", [{"type": "gsm8k", "uri": str(f)}])
    assert Counter(x["reason"] for x in q) == {"wrong_type": 1, "missing_field": 1}
    assert all(x["reason"] in REASONS for x in q)
