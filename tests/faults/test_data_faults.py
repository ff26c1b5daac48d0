"""Faults of the data layer (issue 17): curation outputs, sources, images, answers, shard loading.

Each test breaks one thing the way a careless or hostile user (or a full disk) would, through the
real code path, and checks the promise of docs/reliability.md: a one-line error naming the value,
``read = kept + rejected`` with a reason for every rejected record, nothing half-written under a
final name, and a rerun that finishes.
"""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from mmada.data.errors import ShardError
from mmada.data.shards import ShardSet
from tests.test_data_readers import pattern, png_bytes, run, write_jsonl

REPO = Path(__file__).resolve().parents[2]

# ------------------------------------------------------------------------------------------------
# helpers


def quarantine_of(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "quarantine.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------------------------------------
# row 13: the answer check of a worked solution is what the trace computes, not its last number

# GSM8K items in the dataset's exact format (question, answer = worked solution with calculator
# annotations, then "#### N"), each consistent with its gold answer.
GSM8K_CONSISTENT = [
    # the result, then more quantities in the same sentence
    {"question": "Pens cost $3 each. Sara buys 4 pens for her 5 pens collection... how much does she pay?",
     "answer": "Each pen costs $3, so she pays 3 * 4 = <<3*4=12>>12 dollars for her 5 pens.\n#### 12"},
    {"question": "A shirt costs $15. How much do 2 shirts cost?",
     "answer": "The 2 shirts cost 2 * 15 = $<<2*15=30>>30 in total, for the 2 of them.\n#### 30"},
    {"question": "Jan walks 3 km every day. How far does she walk in a week?",
     "answer": "In a week she walks 3 * 7 = <<3*7=21>>21 km over the 7 days.\n#### 21"},
    # thousands separators and dollars in the trace and in the gold
    {"question": "Tom earns $40 a day. How much does he earn in 30 days?",
     "answer": "He earns 40 * 30 = $<<40*30=1200>>1,200 in 30 days.\n#### 1,200"},
    {"question": "A car costs $12,500 and its insurance costs $1,500. What is the total cost?",
     "answer": "The total is 12,500 + 1,500 = $<<12500+1500=14000>>14,000.\n#### 14000"},
    # multi-step traces (the published train set's first items)
    {"question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
                 "How many clips did Natalia sell altogether in April and May?",
     "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips "
               "altogether in April and May.\n#### 72"},
    {"question": "Betty is saving money for a new wallet which costs $100. Betty has only half of the money she "
                 "needs. Her parents decided to give her $15 for that purpose, and her grandparents twice as much "
                 "as her parents. How much more money does Betty need to buy the wallet?",
     "answer": "In the beginning, Betty has only 100 / 2 = $<<100/2=50>>50.\nBetty's grandparents gave her "
               "15 * 2 = $<<15*2=30>>30.\nThis means, Betty needs 100 - 50 - 30 - 15 = $<<100-50-30-15=5>>5 "
               "more.\n#### 5"},
    {"question": "James writes a 3-page letter to 2 different friends twice a week. How many pages does he "
                 "write a year?",
     "answer": "He writes each friend 3*2=<<3*2=6>>6 pages a week\nSo he writes 6*2=<<6*2=12>>12 pages every "
               "week\nThat means he writes 12*52=<<12*52=624>>624 pages a year\n#### 624"},
    # the conclusion restates an earlier computed result after the last calculation
    {"question": "Tom has 3 apples and buys 4 more. Jerry has twice as many as Tom. How many apples does Tom have?",
     "answer": "Tom has 3+4=<<3+4=7>>7 apples.\nJerry has 7*2=<<7*2=14>>14 apples.\nSo Tom has 7 apples.\n#### 7"},
    # a non-integer last calculation rounded down as the question asks
    {"question": "Cookies come in boxes of 12. How many full boxes can Mia fill with 100 cookies?",
     "answer": "She can fill 100/12 = <<100/12=8.33>>8.33 boxes, so 8 full boxes of 12.\n#### 8"},
]
# ... and items whose gold answer is not what the trace computes (still rejected).
GSM8K_INCONSISTENT = [
    {"question": "Natalia sold 48 clips in April and half as many in May. How many altogether?",
     "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips "
               "altogether in April and May.\n#### 27"},
    {"question": "Pens cost $3 each. Sara buys 4 pens. How much does she pay?",
     "answer": "Each pen costs $3, so she pays 3 * 4 = <<3*4=12>>12 dollars for her 5 pens.\n#### 5"},
    {"question": "A shirt costs $15. How much do 2 shirts cost?",
     "answer": "The 2 shirts cost 2 * 15 = $<<2*15=30>>30.\n#### 3,000"},
]


def test_gsm8k_solutions_consistent_with_their_answer_are_kept(tmp_path):
    rows = GSM8K_CONSISTENT + GSM8K_INCONSISTENT
    f = write_jsonl(tmp_path / "gsm8k" / "train.jsonl", rows)
    m, samples, q = run(tmp_path, "reasoning", [{"type": "gsm8k", "uri": str(f)}],
                        filters={"verify_answer": True, "exact_dedup": False})
    kept_lines = sorted(int(k.rsplit("-", 1)[1]) for k in samples)
    assert kept_lines == list(range(1, len(GSM8K_CONSISTENT) + 1)), q
    assert [(x["position"], x["reason"]) for x in q] == [
        (f"line {len(GSM8K_CONSISTENT) + i + 1}", "answer_mismatch") for i in range(len(GSM8K_INCONSISTENT))]
    assert "72" in q[0]["detail"] and "27" in q[0]["detail"]  # names what the trace computes and the gold
    assert m.counts.model_dump() == {"read": len(rows), "kept": len(GSM8K_CONSISTENT), "rejected": 3}
    # the kept trace is the solution without calculator annotations, the answer the gold one
    s = samples["gsm8k-0-000000001"]["json"]
    assert "<<" not in s.thinking and s.thinking.endswith("for her 5 pens.") and s.answer == "12"


# ------------------------------------------------------------------------------------------------
# row 12: a UTF-8 byte-order mark is accepted (JSON Lines, JSON arrays, captions files)

BOM = b"\xef\xbb\xbf"


def test_utf8_byte_order_marks_are_accepted(tmp_path):
    from tests.test_data_readers import GSM8K_ROWS, png_bytes

    jsonl = tmp_path / "gsm8k.jsonl"
    jsonl.write_bytes(BOM + b"".join(json.dumps(r).encode() + b"\n" for r in GSM8K_ROWS))
    alpaca = tmp_path / "alpaca.json"  # a JSON array, container found from the file (auto)
    alpaca.write_bytes(BOM + json.dumps([{"instruction": f"Say {i}.", "output": f"{i}"} for i in range(3)]).encode())
    m, _, q = run(tmp_path, "reasoning", [{"type": "gsm8k", "uri": str(jsonl)}, {"type": "alpaca", "uri": str(alpaca)}],
                  filters={"verify_answer": False})
    assert q == [] and m.counts.model_dump() == {"read": 6, "kept": 6, "rejected": 0}

    for cap, text in [("captions.jsonl", "".join(json.dumps({"file": f"{i}.png", "caption": f"image {i}"}) + "\n"
                                                  for i in range(3))),
                      ("captions.csv", "file,caption\n" + "".join(f"{i}.png,image {i}\n" for i in range(3)))]:
        root = tmp_path / cap.replace(".", "_")
        root.mkdir()
        for i in range(3):
            (root / f"{i}.png").write_bytes(png_bytes((40 * i, 10, 200)))
        (root / cap).write_bytes(BOM + text.encode())
        m, samples, q = run(tmp_path, "image_text", [{"type": "image_folder", "uri": str(root), "captions": cap}],
                            name=root.name.replace("_", "-"))
        assert q == [] and m.counts.kept == 3, (cap, q)
        assert sorted(s["txt"] for s in samples.values()) == ["image 0", "image 1", "image 2"]
    (root / "0.txt").write_bytes(BOM + b"a caption beside its image")  # img2dataset "files" layout
    (root / "captions.csv").unlink()
    for i in (1, 2):
        (root / f"{i}.png").unlink()
    _, samples, _ = run(tmp_path, "image_text", [{"type": "image_folder", "uri": str(root)}], name="beside")
    assert [s["txt"] for s in samples.values()] == ["a caption beside its image"]


# ------------------------------------------------------------------------------------------------
# row 7: a source whose uri is a directory where its container reads files


def curate_cli(capsys, *args: str) -> tuple[int, str, str]:
    """``mmada curate ARGS`` in this process: (exit status, stdout, stderr)."""
    from mmada.cli import main

    rc = main(["curate", *args, "--quiet"])
    out, err = capsys.readouterr()
    return rc, out, err


def one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def test_a_directory_as_a_jsonl_source_is_named(tmp_path, capsys):
    folder = tmp_path / "gsm8k_dir"
    write_jsonl(folder / "train.jsonl", [{"question": "q", "answer": "1 + 1 = 2\n#### 2"}])
    for container in ("jsonl", "json"):
        spec = tmp_path / f"{container}.yaml"
        spec.write_text(json.dumps({"name": "dir", "kind": "reasoning", "sources": [
            {"name": "mysource", "type": "gsm8k", "uri": str(folder), "container": container}]}))
        rc, _, err = curate_cli(capsys, str(spec), "--out", str(tmp_path / "out"))
        line = one_line_error(err)
        assert rc == 2 and "'mysource'" in line and str(folder) in line and "directory" in line, line
    spec.write_text(json.dumps({"name": "dir", "kind": "t2i", "sources": [  # read when the chunk is curated
        {"name": "tars", "type": "wds", "uri": str(folder)}]}))
    rc, _, err = curate_cli(capsys, str(spec), "--out", str(tmp_path / "out"))
    line = one_line_error(err)
    assert rc == 2 and "'tars'" in line and str(folder) in line and "directory" in line, line
    assert not (tmp_path / "out" / "manifest.json").exists()


# ------------------------------------------------------------------------------------------------
# also seen: absurd sizes and counts (a typo in a form or an API call) were accepted; an image side of
# 200000 px asked the built-in generator for a 120 GB image (MemoryError traceback, or the OOM killer)


@pytest.mark.parametrize("override", ["sources.0.image_size=200000", "sources.0.n=1000000000000",
                                      "images.size=200000", "vq.resolution=200000",
                                      "shards.max_samples=1000000000000", "chunk_size=1000000000000"])
def test_absurd_sizes_and_counts_in_a_spec_are_refused_naming_the_field(tmp_path, capsys, override):
    field = override.split("=")[0]
    rc, _, err = curate_cli(capsys, str(REPO / "data_specs/shapes.yaml"), "--out", str(tmp_path / "out"),
                            "--set", override)
    line = one_line_error(err)
    assert rc == 2 and f"{field}: Input should be less than or equal to" in line, line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("config", "override"), [
    ("train", "data.image_resolution=200000"), ("train", "data.streams.chat.batch_size=1000000000000"),
    ("train", "data.streams.chat.max_text_len=1000000000000"), ("vq", "data.image_size=200000"),
    ("vq", "data.num_train=1000000000000")])
def test_absurd_sizes_and_counts_of_training_data_are_refused_naming_the_field(config, override):
    from mmada.config import load_config
    from mmada.errors import ConfigError
    from mmada.training.config import TrainConfig
    from mmada.training.vq import VQTrainConfig

    cls, path = {"train": (TrainConfig, "configs/train/tiny_sft.yaml"), "vq": (VQTrainConfig, "configs/vq/tiny.yaml")}[config]
    field = override.split("=")[0]
    with pytest.raises(ConfigError, match=rf"{field}: Input should be less than or equal to"):
        load_config(cls, REPO / path, [override])


# ------------------------------------------------------------------------------------------------
# row 8: images keep their dynamic range (16-bit scaled to 8 bits, not clipped)


def png16(arr: np.ndarray) -> bytes:
    """A 16-bit PNG written byte by byte (IHDR bit depth 16): gray (H, W), gray+alpha, RGB or RGBA."""
    a = np.asarray(arr, dtype=">u2")
    h, w = a.shape[:2]
    color = 0 if a.ndim == 2 else {2: 4, 3: 2, 4: 6}[a.shape[2]]
    raw = b"".join(b"\0" + a[y].tobytes() for y in range(h))  # filter type 0 per row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, color, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def test_16_bit_images_keep_their_dynamic_range(tmp_path):
    from tests.test_data_readers import decoded

    ramp = (np.arange(16 * 16, dtype=np.uint32).reshape(16, 16) * 257).astype(np.uint16)  # 0 … 65535
    images = {"gray16.png": png16(ramp), "rgb16.png": png16(np.stack([ramp, 65535 - ramp, ramp // 2], -1)),
              "graya16.png": png16(np.stack([ramp, np.full_like(ramp, 65535)], -1))}
    buf = io.BytesIO()
    Image.fromarray(ramp).save(buf, format="TIFF")  # Pillow's own 16-bit grayscale TIFF (mode I;16)
    images["gray16.tif"] = buf.getvalue()
    buf = io.BytesIO()
    Image.fromarray(ramp.astype(np.int32)).save(buf, format="TIFF")  # 32-bit integer pixels (mode I)
    images["gray32.tif"] = buf.getvalue()
    root = tmp_path / "folder"
    root.mkdir()
    for name, data in images.items():
        (root / name).write_bytes(data)
    write_jsonl(root / "captions.jsonl", [{"file": n, "caption": f"a ramp ({n})"} for n in images])
    m, samples, q = run(tmp_path, "image_text", [{"type": "image_folder", "uri": str(root), "captions": "captions.jsonl"}],
                        filters={"exact_dedup": False})
    assert q == [] and m.counts.kept == len(images)
    expected = (ramp >> 8).astype(np.uint8)  # 8-bit value of each 16-bit pixel: 0, 1, 2, … 255
    for s in samples.values():
        px = decoded(s)
        name = s["json"].metadata["file"]
        assert np.array_equal(px[..., 0], expected), (name, px[0, :6, 0], px[8, :6, 0])
        if name == "rgb16.png":
            assert np.array_equal(px[..., 1], 255 - expected) and np.array_equal(px[..., 2], expected // 2)
        else:
            assert np.array_equal(px[..., 1], expected) and np.array_equal(px[..., 2], expected)


# ------------------------------------------------------------------------------------------------
# also seen: a symlink in an image folder pointing outside it was followed


def test_image_folder_symlinks_cannot_leave_the_folder(tmp_path):
    from tests.test_data_readers import pattern, png_bytes

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.png").write_bytes(png_bytes(pattern(7)))
    (outside / "secret.txt").write_text("the contents of a private file")
    (outside / "more").mkdir()
    (outside / "more" / "x.png").write_bytes(png_bytes(pattern(8)))
    root = tmp_path / "folder"
    root.mkdir()
    (root / "ok.png").write_bytes(png_bytes(pattern(1)))
    (root / "ok.txt").write_text("a real caption")
    (root / "alias.png").symlink_to(root / "ok.png")  # a link that stays inside the folder is fine
    (root / "alias.txt").write_text("the same image under another name")
    (root / "escape.png").symlink_to(outside / "secret.png")
    (root / "escape.txt").write_text("points outside")
    (root / "leak.png").write_bytes(png_bytes(pattern(2)))
    (root / "leak.txt").symlink_to(outside / "secret.txt")  # the caption file is the link
    (root / "linked").symlink_to(outside / "more", target_is_directory=True)
    (root / "linked.txt").write_text("unused")
    m, samples, q = run(tmp_path, "image_text", [{"type": "image_folder", "uri": str(root)}],
                        filters={"exact_dedup": False})
    assert sorted(s["txt"] for s in samples.values()) == ["a real caption", "the same image under another name"]
    escapes = {x["position"]: x for x in q}
    assert set(escapes) == {"image escape.png", "image leak.png"}, q  # (a linked folder is not listed)
    assert all(x["reason"] == "path_escape" and "outside" in x["detail"] for x in q)
    assert m.counts.read == m.counts.kept + m.counts.rejected
    # the same with a captions file naming the links
    write_jsonl(root / "captions.jsonl", [{"file": "ok.png", "caption": "fine"}, {"file": "escape.png", "caption": "x"},
                                          {"file": "linked/x.png", "caption": "y"}])
    m, samples, q = run(tmp_path, "image_text", [{"type": "image_folder", "uri": str(root), "captions": "captions.jsonl"}],
                        name="captioned", filters={"exact_dedup": False})
    assert [s["txt"] for s in samples.values()] == ["fine"]
    assert {x["position"]: x["reason"] for x in q if x["reason"] != "missing_caption"} == {
        "captions.jsonl line 2": "path_escape", "captions.jsonl line 3": "path_escape"}
    for s in ShardSet.open(str(tmp_path / "out-captioned")).iter_raw():
        assert b"private" not in b"".join(s[2].values())
    # LLaVA images below image_root
    (tmp_path / "llava.json").write_text(json.dumps([
        {"id": str(i), "image": name, "conversations": [{"from": "human", "value": "<image>\nWhat is it?"},
                                                         {"from": "gpt", "value": f"answer {i}"}]}
        for i, name in enumerate(["ok.png", "escape.png"])]))
    _, samples, q = run(tmp_path, "mmu", [{"type": "llava", "uri": str(tmp_path / "llava.json"), "image_root": str(root)}],
                        name="llava")
    assert len(samples) == 1 and [(x["position"], x["reason"]) for x in q] == [("item 1", "path_escape")]


# ------------------------------------------------------------------------------------------------
# row 6: a shard with flipped bytes under data.verify=size is a ShardError naming the shard


def tar_members(raw: bytes) -> list[tuple[str, int, int]]:
    """(name, header offset, size) of each member of one of our ustar shards."""
    out, off = [], 0
    while off + 512 <= len(raw) and raw[off:off + 512] != b"\0" * 512:
        name = raw[off:off + 100].split(b"\0", 1)[0].decode()
        size = int(raw[off + 124:off + 136].rstrip(b"\0 "), 8)
        out.append((name, off, size))
        off += 512 + size + (-size % 512)
    return out


def test_flipped_shard_bytes_under_size_verification_name_the_shard(tmp_path):
    from mmada.data.curate import curate
    from mmada.data.loading import ShardDataModule
    from mmada.data.specs import load_spec
    from mmada.tokenization import load_text_tokenizer
    from mmada.training.config import DataSpec

    good = tmp_path / "good"
    curate(load_spec(str(REPO / "data_specs/arithmetic.yaml"), ["sources.0.n=40", "split.val_fraction=0"]), out=str(good))
    shard = next(good.glob("*-train-*.tar"))
    members = tar_members(shard.read_bytes())
    txt = next(m for m in members if m[0].endswith(".txt"))
    js = next(m for m in members[3:] if m[0].endswith(".json"))
    hdr = members[5]
    tok = load_text_tokenizer("builtin")
    cases = {  # what is flipped: (byte offset, new byte, the sample key the error should name or None)
        "txt member (not UTF-8)": (txt[1] + 512 + 10, 0xFF, txt[0].rsplit(".", 1)[0]),
        "json member (not JSON)": (js[1] + 512 + 1, ord("x"), js[0].rsplit(".", 1)[0]),
        "tar header": (hdr[1] + 20, ord("Z"), None),
    }
    for what, (offset, byte, key) in cases.items():
        bad = tmp_path / what.split()[0]
        bad.mkdir()
        for f in good.iterdir():
            (bad / f.name).write_bytes(f.read_bytes())
        raw = bytearray((bad / shard.name).read_bytes())
        raw[offset] = byte  # same size, different bytes: only a sha256 check would see it
        (bad / shard.name).write_bytes(bytes(raw))
        d = DataSpec.model_validate({"verify": "size", "shuffle_buffer": 4,
                                     "streams": {"lm": {"manifests": [str(bad)], "batch_size": 4, "max_text_len": 32}}})
        with pytest.raises(ShardError) as e:
            for _ in ShardDataModule(d, tok, num_vq_tokens=64, batches_per_epoch=20).train_dataset():
                pass
        msg = str(e.value)
        assert shard.name in msg and (key is None or key in msg) and "\n" not in msg, (what, msg)
        with pytest.raises(ShardError, match=shard.name):  # reading the shard set without verification
            list(ShardSet.open(str(bad)).iter_samples(verify=False))


def test_a_png_member_that_no_longer_decodes_names_its_shard_and_sample():
    import random

    from mmada.data.loading import RowMaker
    from mmada.data.schema import Sample
    from mmada.tokenization import SequenceBuilder, load_text_tokenizer
    from mmada.training.config import DataSpec

    d = DataSpec.model_validate({"verify": "size", "image_tokenizer": "magvitv2",
                                 "streams": {"t2i": {"manifests": ["unused"], "batch_size": 1}}})
    rows = RowMaker("t2i", d.streams["t2i"], d, SequenceBuilder(load_text_tokenizer("builtin")), num_vq_tokens=64)
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(buf, "PNG")
    png = bytearray(buf.getvalue())
    png[30:40] = b"\xff" * 10  # same size, the image data's bytes changed after curation
    sample = {"__key__": "t2i-000000007", "__shard__": "/data/x/t2i-train-000000.tar",
              "json": Sample(key="t2i-000000007", kind="t2i", source="s", position="line 8", caption="a square"),
              "png": bytes(png)}
    with pytest.raises(ShardError) as e:
        rows(sample, random.Random(0))
    msg = str(e.value)
    assert "t2i-train-000000.tar" in msg and "t2i-000000007" in msg and "\n" not in msg


# ------------------------------------------------------------------------------------------------
# row 1: an output directory belongs to one dataset; stale shards never outlive their manifest


def arith_args(name: str, n: int, out: Path, *extra: str) -> list[str]:
    """``mmada curate`` of the built-in arithmetic spec as dataset ``name`` (10 samples a shard)."""
    return ["curate", str(REPO / "data_specs/arithmetic.yaml"), "--out", str(out), "--quiet",
            "--set", f"name={name}", "--set", f"sources.0.n={n}", "--set", "shards.max_samples=10",
            "--set", "split.val_fraction=0", *extra]


def tars(out: Path) -> set[str]:
    return {p.name for p in out.glob("*.tar")}


def assert_complete(out: Path, name: str, read: int) -> None:
    """A manifest of ``name`` whose shards verify, and no tar on disk that it does not list."""
    ss = ShardSet.open(str(out))
    ss.verify()
    m = ss.manifest
    assert m.name == name and m.counts.read == read == m.counts.kept + m.counts.rejected
    assert tars(out) == {s.name for s in m.shards}
    assert not [p.name for p in out.iterdir() if p.name.endswith(".partial") or p.name == ".curate.lock"]


def one_error_line(err: str) -> str:
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def test_an_output_directory_holds_one_dataset(tmp_path, capsys):
    from mmada.cli import main

    out = tmp_path / "arithmetic"
    assert main(arith_args("arithmetic", 40, out)) == 0
    assert_complete(out, "arithmetic", 40)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()

    assert main(arith_args("other", 25, out)) == 2  # another spec's output: refused, nothing touched
    line = one_error_line(capsys.readouterr().err)
    assert "'arithmetic'" in line and "'other'" in line and "--overwrite" in line
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before

    assert main(arith_args("other", 25, out, "--overwrite")) == 0  # replaced: none of its tars stay behind
    assert_complete(out, "other", 25)
    assert not any(n.startswith("arithmetic-") for n in tars(out))

    assert main(arith_args("other", 12, out)) == 0  # the same dataset, fewer shards: the stale ones go
    assert_complete(out, "other", 12)
    assert len(tars(out)) == 2


def test_a_rerun_never_leaves_the_old_manifest_beside_new_shards(tmp_path, monkeypatch):
    """A changed spec rerun that fails half-way leaves no manifest (the old one named shards now rewritten)."""
    from mmada.data import curate as C
    from mmada.data.specs import load_spec

    out = tmp_path / "out"
    spec = load_spec(str(REPO / "data_specs/arithmetic.yaml"), ["sources.0.n=30", "shards.max_samples=10"])
    C.curate(spec, out=str(out))
    real = C.build_shard
    built: list[int] = []

    def build_two(spec, plan, plan_uri, i):
        if len(built) == 2:
            raise KeyboardInterrupt  # the run dies here (a crash, a kill)
        built.append(i)
        return real(spec, plan, plan_uri, i)

    monkeypatch.setattr(C, "build_shard", build_two)
    changed = load_spec(str(REPO / "data_specs/arithmetic.yaml"), ["sources.0.n=40", "shards.max_samples=10"])
    with pytest.raises(KeyboardInterrupt):
        C.curate(changed, out=str(out))
    assert not (out / "manifest.json").exists()
    monkeypatch.setattr(C, "build_shard", real)
    assert C.curate(changed, out=str(out)).counts.read == 40
    assert_complete(out, "arithmetic", 40)


# ------------------------------------------------------------------------------------------------
# a full disk during a shard write


def test_a_full_disk_during_a_shard_write_is_one_line_and_never_looks_complete(tmp_path, capsys, monkeypatch):
    import errno

    from mmada.cli import main
    from mmada.data import shards

    out = tmp_path / "arithmetic"
    assert main(arith_args("arithmetic", 30, out)) == 0  # a complete output, then a rerun with more data
    real_write = shards._HashingWriter.write
    room = {"bytes": 25_000}  # the disk fills during the second or third shard

    def write(self, b):
        room["bytes"] -= len(b)
        if room["bytes"] < 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(self, b)

    monkeypatch.setattr(shards._HashingWriter, "write", write)
    capsys.readouterr()
    assert main(arith_args("arithmetic", 60, out)) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "No space left on device" in line and str(out) in line
    assert not (out / "manifest.json").exists()  # never mistaken for complete
    assert not [p.name for p in out.iterdir() if p.name.endswith(".partial")]
    with pytest.raises(ShardError, match="no manifest"):
        ShardSet.open(str(out))

    monkeypatch.setattr(shards._HashingWriter, "write", real_write)  # space is back: the rerun completes
    assert main(arith_args("arithmetic", 60, out)) == 0
    assert_complete(out, "arithmetic", 60)


# ------------------------------------------------------------------------------------------------
# concurrent `mmada curate` runs


def curate_process(name: str, n: int, out: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "mmada", *arith_args(name, n, out)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_concurrent_curations_into_distinct_outputs_and_into_the_same_one(tmp_path):
    from mmada.cli import main
    from mmada.data.output import output_lock

    busy = tmp_path / "busy"
    runs = {"a": (curate_process("a", 120, tmp_path / "a"), tmp_path / "a", 120),
            "b": (curate_process("b", 90, tmp_path / "b"), tmp_path / "b", 90)}
    with output_lock(str(busy)):  # a curation (this process) is writing `busy`: another is refused
        refused = curate_process("c", 20, busy)
        _, err = refused.communicate(timeout=120)
    assert refused.returncode == 2
    line = one_error_line(err)
    assert str(busy) in line and f"pid {os.getpid()}" in line and "another run" in line
    assert not (busy / "manifest.json").exists() and not tars(busy)
    for name, (proc, out, n) in runs.items():  # both complete, each with its own counts
        _, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err[-2000:]
        assert_complete(out, name, n)
    assert main(arith_args("c", 20, busy)) == 0  # the lock went with its holder
    assert_complete(busy, "c", 20)


# ------------------------------------------------------------------------------------------------
# property: random malformed JSONL lines and image bytes never crash curation; read = kept + rejected

_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=30))
_VALUES = st.recursive(_SCALARS, lambda v: st.one_of(st.lists(v, max_size=3), st.dictionaries(st.text(max_size=8), v, max_size=3)),
                       max_leaves=6)
_GOOD = st.builds(lambda a, b: json.dumps({"question": f"What is {a} + {b}?",
                                           "answer": f"{a} + {b} = <<{a}+{b}={a + b}>>{a + b}\n#### {a + b}"}).encode(),
                  st.integers(0, 99), st.integers(0, 99))
JSONL_LINES = st.lists(st.one_of(
    _GOOD,
    st.binary(max_size=80),  # anything, newlines and invalid UTF-8 included
    st.text(max_size=80).map(str.encode),
    st.dictionaries(st.sampled_from(["question", "answer", "id", "x"]), _VALUES, max_size=4).map(
        lambda d: json.dumps(d).encode()),
    _GOOD.map(lambda line: line[: len(line) // 2]),  # truncated
), min_size=1, max_size=12)
_PNG = png_bytes(pattern(0))


@st.composite
def image_bytes(draw) -> bytes:
    kind = draw(st.sampled_from(["random", "truncated", "flipped", "good"]))
    if kind == "random":
        return draw(st.binary(max_size=200))
    if kind == "truncated":
        return _PNG[: draw(st.integers(0, len(_PNG) - 1))]
    if kind == "flipped":
        data = bytearray(_PNG)
        for i in draw(st.lists(st.integers(0, len(_PNG) - 1), min_size=1, max_size=4)):
            data[i] ^= draw(st.integers(1, 255))
        return bytes(data)
    return _PNG


def records_in(data: bytes) -> int:
    """Non-blank lines: the records a JSONL reader must account for (a BOM opens the first line);
    a file without any counts as one record, rejected as ``empty_file``."""
    lines = data.split(b"\n")
    lines[0] = lines[0].removeprefix(b"\xef\xbb\xbf")
    return max(1, sum(1 for line in lines if line.strip()))


def assert_conserved(out: Path, read: int) -> None:
    from mmada.data.sources import REASONS

    m = ShardSet.open(str(out)).manifest
    q = quarantine_of(out)
    assert m.counts.read == read == m.counts.kept + m.counts.rejected
    assert len(q) == m.counts.rejected and all(x["reason"] in REASONS and x["position"] for x in q)
    assert sum(1 for _ in ShardSet.open(str(out)).iter_samples()) == m.counts.kept


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=JSONL_LINES, images=st.lists(st.tuples(image_bytes(), st.binary(max_size=20)), min_size=1, max_size=5))
def test_random_malformed_records_never_crash_curation_and_are_all_counted(lines, images):
    import tempfile

    from mmada.data.curate import curate
    from mmada.data.specs import load_spec

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        data = b"\n".join(lines) + b"\n"
        (tmp / "g.jsonl").write_bytes(data)
        spec = load_spec({"name": "prop", "kind": "reasoning", "sources": [{"type": "gsm8k", "uri": str(tmp / "g.jsonl")}],
                          "filters": {"verify_answer": True}, "split": {"val_fraction": 0.0}})
        curate(spec, out=str(tmp / "text"))
        assert_conserved(tmp / "text", records_in(data))

        folder = tmp / "images"
        folder.mkdir()
        for i, (img, caption) in enumerate(images):
            (folder / f"{i:03d}.png").write_bytes(img)
            (folder / f"{i:03d}.txt").write_bytes(caption)
        spec = load_spec({"name": "propimg", "kind": "image_text", "split": {"val_fraction": 0.0},
                          "sources": [{"type": "image_folder", "uri": str(folder)}]})
        curate(spec, out=str(tmp / "img"))
        assert_conserved(tmp / "img", len(images))


# ------------------------------------------------------------------------------------------------
# also seen: one 5 MB JSONL line took curation from 0.44 to 1.6 GB


def test_counting_tokens_in_pieces_gives_the_whole_texts_count():
    from mmada.data.tokens import count_tokens, pieces
    from mmada.tokenization import load_text_tokenizer

    tok = load_text_tokenizer("builtin")
    rng = np.random.default_rng(0)
    words = ["Natalia", "sold", "48/2", "=", "<<48/2=24>>24", "clips", "in", "May.\n", "  ", "héllo", "日本", "(x+1)*3", "\t"]
    texts = [" ".join(rng.choice(words, size=int(n))) for n in (1, 50, 3000, 9000)] + ["", "x" * 5000]
    whole = [len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts]
    assert count_tokens(tok, texts, piece_chars=200, batch_chars=1000) == whole
    assert count_tokens(tok, texts) == whole
    assert "".join(pieces(texts[3], 200)) == texts[3] and max(map(len, pieces(texts[3], 200))) < 800


def test_minhash_signatures_are_the_same_when_fed_in_batches():
    from datasketch import MinHash

    from mmada.data import dedup

    text = " ".join(f"w{i % 977}" for i in range(20_000))
    h = dedup.MinHasher(64, 3)
    whole = MinHash(num_perm=64, permutations=h._perms, scheme=dedup._SCHEME)
    whole.update_batch(list(h.shingles(text)))
    assert np.array_equal(h.signature(text), whole.hashvalues.astype(np.uint32))


MEMORY_PROBE = """
import json, random, resource, sys
from pathlib import Path
from mmada.data.curate import curate
from mmada.data.specs import load_spec

tmp = Path(sys.argv[1])
rows = [json.dumps({"question": f"What is {i} + {i}?", "answer": f"{i} + {i} = <<{i}+{i}={2*i}>>{2*i}\\n#### {2*i}"})
        for i in range(50)]
rng = random.Random(0)
def words(n):
    return " ".join(rng.choice(["pens", "cost", "dollars", "she", "buys"]) + str(rng.randrange(1000)) for _ in range(n // 8))
def run(name, lines):
    (tmp / f"{name}.jsonl").write_text("\\n".join(lines) + "\\n")
    spec = load_spec(str(Path(sys.argv[2]) / "data_specs/gsm8k.yaml"),
                     [f"sources.0.uri={tmp / name}.jsonl", "filters.max_record_bytes=4000000"])
    m = curate(spec, out=str(tmp / name))
    return m.counts.model_dump(), m.rejected_by_reason, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
big = json.dumps({"question": words(2_000_000), "answer": "1 + 1 = <<1+1=2>>2\\n#### 2"})
huge = json.dumps({"question": words(6_000_000), "answer": "1 + 1 = <<1+1=2>>2\\n#### 2"})
print(json.dumps([run("small", rows), run("big", rows[:25] + [big, huge] + rows[25:])]))
"""


def test_a_multi_megabyte_record_keeps_curation_memory_bounded(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(tmp_path), str(REPO)], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (small, _, peak_small), (big, reasons, peak_big) = json.loads(proc.stdout.splitlines()[-1])
    assert small == {"read": 50, "kept": 50, "rejected": 0}
    # the 2 MB line is read and tokenized (too many tokens for gsm8k's max_tokens), the 6 MB one is
    # over filters.max_record_bytes and never held whole; every record is counted
    assert big == {"read": 52, "kept": 50, "rejected": 2} and reasons == {"record_too_large": 1, "too_many_tokens": 1}
    assert peak_big - peak_small < 200, (peak_small, peak_big)  # MiB; 2 MB of text took ~500 MiB more before
