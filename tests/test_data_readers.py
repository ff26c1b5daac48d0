"""Every source reader on small fixture files in the real formats, end to end (spec -> shards -> loader).

Fixtures are written with the real tools where one exists (``datasets.save_to_disk``, pyarrow
Parquet, ``webdataset.TarWriter`` as img2dataset uses it); GSM8K/MATH/s1K lines copy the published
field layouts. Expected values are written out by hand or recomputed independently (pixels,
sklearn targets, the tokenizer's own chat template).
"""

from __future__ import annotations

import gzip
import io
import json
import struct
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from mmada.data.curate import curate
from mmada.data.shards import ShardSet
from mmada.data.specs import load_spec

# ------------------------------------------------------------------------------------------------
# fixture writers (also used by test_data_malformed.py)

GSM8K_ROWS = [
    {"question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
                 "How many clips did Natalia sell altogether in April and May?",
     "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips "
               "altogether in April and May.\n#### 72"},
    {"question": "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. "
                 "How much did she earn?",
     "answer": "Weng earns 12/60 = $<<12/60=0.2>>0.2 per minute.\nWorking 50 minutes, she earned 0.2 x 50 = "
               "$<<0.2*50=10>>10.\n#### 10"},
    {"question": "Betty is saving money for a new wallet which costs $100. Betty has only half of the money she "
                 "needs. Her parents decided to give her $15 for that purpose, and her grandparents twice as much "
                 "as her parents. How much more money does Betty need to buy the wallet?",
     "answer": "In the beginning, Betty has only 100 / 2 = $<<100/2=50>>50.\nBetty's grandparents gave her "
               "15 * 2 = $<<15*2=30>>30.\nThis means, Betty needs 100 - 50 - 30 - 15 = $<<100-50-30-15=5>>5 "
               "more.\n#### 5"},
]


def write_jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def png_bytes(rgb: tuple[int, int, int] | np.ndarray, size: int = 16) -> bytes:
    arr = rgb if isinstance(rgb, np.ndarray) else np.full((size, size, 3), rgb, np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def jpeg_bytes(rgb: tuple[int, int, int], size: int = 24) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), rgb).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def pattern(seed: int, h: int = 16, w: int = 16) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def write_idx(path: Path, arr: np.ndarray, compress: bool = False) -> Path:
    """MNIST IDX: magic (0, 0, 0x08 = ubyte, ndim), big-endian uint32 dims, raw bytes."""
    data = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data, mtime=0) if compress else data)
    return path


def write_wds(path: Path, samples: list[dict]) -> Path:
    """An img2dataset-style tar written by webdataset's own TarWriter (what img2dataset uses)."""
    import webdataset as wds

    path.parent.mkdir(parents=True, exist_ok=True)
    with wds.TarWriter(str(path)) as w:
        for s in samples:
            w.write(s)
    return path


# ------------------------------------------------------------------------------------------------


def run(tmp_path: Path, kind: str, sources: list[dict], name: str = "t", **spec) -> tuple:
    """Curate a one-off spec; returns (manifest, samples by key, quarantine lines)."""
    spec = load_spec({"name": name, "kind": kind, "sources": sources, "split": {"val_fraction": 0.0}, **spec})
    out = tmp_path / f"out-{name}"
    m = curate(spec, out=str(out))
    samples = {s["__key__"]: s for s in ShardSet.open(str(out)).iter_samples()}
    quarantine = [json.loads(line) for line in (out / "quarantine.jsonl").read_text().splitlines()]
    for src in m.sources:
        assert src.counts.read == src.counts.kept + src.counts.rejected
    assert len(samples) == m.counts.kept
    return m, samples, quarantine


def decoded(sample: dict) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(sample["png"])).convert("RGB"))


# ------------------------------------------------------------------------------------------------
# reasoning formats


def test_gsm8k_jsonl(tmp_path):
    from mmada.tokenization import load_text_tokenizer

    f = write_jsonl(tmp_path / "gsm8k" / "train.jsonl", GSM8K_ROWS)
    m, samples, q = run(tmp_path, "reasoning", [{"type": "gsm8k", "uri": str(f)}], filters={"verify_answer": True})
    assert m.counts.model_dump() == {"read": 3, "kept": 3, "rejected": 0} and q == []
    s = samples["gsm8k-0-000000001"]["json"]
    assert s.position == "train.jsonl line 1"
    assert s.answer == "72" and s.metadata["gold_answer"] == "72"
    assert s.thinking == ("Natalia sold 48/2 = 24 clips in May.\nNatalia sold 48+24 = 72 clips altogether in April "
                          "and May.")  # <<calc>> notes stripped
    assert s.response == f"<think>{s.thinking}</think> \\boxed{{72}}<|eot_id|>"
    assert s.messages[0].content.startswith("You should first think about the reasoning process")
    tok = load_text_tokenizer("builtin")
    expected = tok.apply_chat_template([{"role": "user", "content": s.messages[0].content}], tokenize=False,
                                       add_generation_prompt=True)
    assert s.prompt == expected  # our renderer agrees with the tokenizer's own chat template
    assert samples["gsm8k-0-000000001"]["txt"] == s.prompt + s.response
    assert s.num_tokens == len(tok(s.prompt + s.response, add_special_tokens=False)["input_ids"])


def test_math_jsonl_with_and_without_answer_column(tmp_path):
    rows = [
        {"problem": "If $x^2+y^2=1$, what is the largest possible value of $|x|+|y|$?",
         "solution": "By Cauchy-Schwarz, $(|x|+|y|)^2 \\le 2(x^2+y^2) = 2$, so the maximum is $\\boxed{\\sqrt{2}}$.",
         "level": "Level 5", "type": "Algebra"},
        {"problem": "What is $\\frac{1}{4}+\\frac{1}{4}$?",
         "solution": "We have $\\frac14+\\frac14 = \\boxed{\\frac{1}{2}}$.", "answer": "0.5", "unique_id": "test/1.json"},
        {"problem": "What is $1+2$?", "solution": "It is $\\boxed{3}$.", "answer": "4"},
    ]
    f = write_jsonl(tmp_path / "math.jsonl", rows)
    m, samples, q = run(tmp_path, "reasoning", [{"type": "math", "uri": str(f)}], filters={"verify_answer": True})
    assert samples["math-0-000000001"]["json"].answer == "\\sqrt{2}"
    half = samples["math-0-000000002"]["json"]
    assert half.answer == "\\frac{1}{2}" and half.source_id == "test/1.json" and half.metadata["gold_answer"] == "0.5"
    assert [(x["position"], x["reason"]) for x in q] == [("line 3", "answer_mismatch")]
    assert m.sources[0].rejected_by_reason == {"answer_mismatch": 1}


S1K_ROWS = [
    {"solution": "128", "question": "What is $2^7$?", "cot_type": "math", "source_type": "AI-MO/NuminaMath-CoT",
     "metadata": "{}", "cot": None, "thinking_trajectories": ["We double 1 seven times: 2, 4, 8, 16, 32, 64, 128."],
     "attempt": "Doubling seven times gives $2^7 = \\boxed{128}$."},
    {"solution": "The sum is $\\boxed{10}$.", "question": "Sum 1..4?", "cot_type": "math", "source_type": "x",
     "metadata": "{}", "cot": None, "thinking_trajectories": ["1+2=3", "3+3=6, 6+4=10"], "attempt": "\\boxed{10}"},
    {"solution": "64", "question": "What is $4^3$?", "cot_type": "math", "source_type": "x", "metadata": "{}",
     "cot": None, "thinking_trajectories": ["4*4=16, 16*4=48?"], "attempt": "\\boxed{48}"},
]
S1K_FIELDS = {"question": "question", "thinking": "thinking_trajectories", "answer": "attempt", "gold": "solution"}


def test_s1k_parquet(tmp_path):
    pq_path = tmp_path / "s1k.parquet"
    pq.write_table(pa.Table.from_pylist(S1K_ROWS), pq_path, row_group_size=2)  # 2 row groups -> 2 chunks
    m, samples, q = run(tmp_path, "reasoning", [{"name": "pq", "type": "reasoning", "uri": str(pq_path),
                                                 "fields": S1K_FIELDS}], filters={"verify_answer": True}, chunk_size=1)
    assert m.counts.model_dump() == {"read": 3, "kept": 2, "rejected": 1}
    assert [(x["position"], x["reason"]) for x in q] == [("row 2", "answer_mismatch")]
    first = samples["pq-0-000000000"]["json"]
    assert first.thinking == "We double 1 seven times: 2, 4, 8, 16, 32, 64, 128."
    assert first.answer == "128" and first.metadata["gold_answer"] == "128"
    assert first.response == ("<think>We double 1 seven times: 2, 4, 8, 16, 32, 64, 128.</think> "
                              "Doubling seven times gives $2^7 = \\boxed{128}$.<|eot_id|>")
    assert samples["pq-0-000000001"]["json"].thinking == "1+2=3\n\n3+3=6, 6+4=10"  # list of traces joined


def test_hf_datasets_save_to_disk(tmp_path):
    import datasets  # dev dependency: writes the real save_to_disk layout (our reader uses pyarrow only)

    ds_dir = tmp_path / "s1k_ds"
    datasets.Dataset.from_list(S1K_ROWS).save_to_disk(str(ds_dir))
    dd_dir = tmp_path / "s1k_dd"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(S1K_ROWS[:1]),
                          "test": datasets.Dataset.from_list(S1K_ROWS[1:])}).save_to_disk(str(dd_dir))
    sources = [{"name": "disk", "type": "reasoning", "uri": str(ds_dir), "fields": S1K_FIELDS},
               {"name": "dd", "type": "reasoning", "uri": str(dd_dir), "split": "test", "fields": S1K_FIELDS}]
    m, samples, q = run(tmp_path, "reasoning", sources, filters={"verify_answer": True, "exact_dedup": False})
    counts = {s.name: s.counts.model_dump() for s in m.sources}
    assert counts == {"disk": {"read": 3, "kept": 2, "rejected": 1}, "dd": {"read": 2, "kept": 1, "rejected": 1}}
    assert {x["reason"] for x in q} == {"answer_mismatch"}
    assert samples["disk-0-000000000"]["json"].response.endswith("\\boxed{128}$.<|eot_id|>")
    assert samples["dd-0-000000000"]["json"].question == "Sum 1..4?"  # split "test" of the DatasetDict
    from mmada.data.errors import DataError

    with pytest.raises(DataError, match=r"DatasetDict with splits \['train', 'test'\]"):
        run(tmp_path, "reasoning", [{**sources[1], "split": "validation"}], name="bad")


def test_chat_messages_and_sharegpt(tmp_path):
    chat = write_jsonl(tmp_path / "chat.jsonl", [
        {"id": "c1", "messages": [{"role": "system", "content": "You are terse."},
                                  {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                                  {"role": "user", "content": "What is 2+3?"},
                                  {"role": "assistant", "content": "<think>2 plus 3 is 5.</think> 5"}]},
    ])
    share = write_jsonl(tmp_path / "sharegpt.jsonl", [
        {"conversations": [{"from": "human", "value": "Name a color."}, {"from": "gpt", "value": "Blue."}]},
    ])
    _m, samples, q = run(tmp_path, "reasoning", [
        {"name": "chat", "type": "chat", "uri": str(chat)},
        {"name": "share", "type": "chat", "uri": str(share), "fields": {"messages": "conversations"}},
    ])
    assert q == []  # nothing quarantined
    s = samples["chat-0-000000001"]["json"]
    assert [mm.role for mm in s.messages] == ["system", "user", "assistant", "user", "assistant"]
    assert s.thinking == "2 plus 3 is 5." and s.source_id == "c1"
    assert s.messages[3].content.startswith("You should first think") and s.messages[3].content.endswith("What is 2+3?")
    assert s.prompt == ("<|startoftext|><|start_header_id|>system<|end_header_id|>\nYou are terse.<|eot_id|>"
                        "<|start_header_id|>user<|end_header_id|>\nHi<|eot_id|>"
                        "<|start_header_id|>assistant<|end_header_id|>\nHello!<|eot_id|>"
                        f"<|start_header_id|>user<|end_header_id|>\n{s.messages[3].content.strip()}<|eot_id|>"
                        "<|start_header_id|>assistant<|end_header_id|>\n")
    assert s.response == "<think>2 plus 3 is 5.</think> 5<|eot_id|>"
    g = samples["share-0-000000001"]["json"]
    assert g.prompt.endswith("user<|end_header_id|>\nName a color.<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n")
    assert g.response == "Blue.<|eot_id|>" and g.thinking is None


def test_alpaca_json_array(tmp_path):
    f = tmp_path / "alpaca_data.json"
    f.write_text(json.dumps([
        {"instruction": "Give three tips for staying healthy.", "input": "",
         "output": "1. Eat a balanced diet.\n2. Exercise regularly.\n3. Get enough sleep."},
        {"instruction": "Translate to French.", "input": "Good morning", "output": "Bonjour"},
    ], indent=2))
    m, samples, q = run(tmp_path, "reasoning", [{"type": "alpaca", "uri": str(f)}])
    assert q == []  # nothing quarantined
    assert m.counts.kept == 2
    t = samples["alpaca-0-000000001"]["json"]
    assert t.question == "Translate to French.\n\nGood morning" and t.response == "Bonjour<|eot_id|>"
    assert samples["alpaca-0-000000000"]["json"].position == "alpaca_data.json item 0"


# ------------------------------------------------------------------------------------------------
# image-text formats


def test_img2dataset_webdataset_tars(tmp_path):
    pats = [pattern(i) for i in range(3)]
    write_wds(tmp_path / "wds" / "00000.tar", [
        {"__key__": f"00000000{i}", "png": png_bytes(pats[i]), "txt": f"pattern number {i}",
         "json": {"url": f"http://example.com/{i}.png", "key": f"00000000{i}", "status": "success", "width": 16}}
        for i in range(3)])
    write_wds(tmp_path / "wds" / "00001.tar", [
        {"__key__": "000010000", "jpg": jpeg_bytes((200, 30, 30)), "json": {"caption": "a red tile", "key": "000010000"}},
    ])
    m, samples, q = run(tmp_path, "t2i", [{"type": "wds", "uri": str(tmp_path / "wds" / "{00000..00001}.tar")}])
    assert q == []  # nothing quarantined
    assert m.counts.model_dump() == {"read": 4, "kept": 4, "rejected": 0}
    for i in range(3):
        s = samples[f"wds-0-00000000{i}"]
        assert s["txt"] == f"pattern number {i}" and s["json"].source_id == f"00000000{i}"
        np.testing.assert_array_equal(decoded(s), pats[i])  # PNG in, PNG out: pixels survive exactly
        assert s["json"].metadata["url"] == f"http://example.com/{i}.png"
    red = samples["wds-1-000000000"]
    assert red["txt"] == "a red tile"  # caption from the json member when there is no .txt
    assert red["json"].image.width == 24 and abs(int(decoded(red)[..., 0].mean()) - 200) < 8


def test_image_parquet_binary_and_hf_struct(tmp_path):
    pats = [pattern(10 + i) for i in range(2)]
    pq.write_table(pa.table({"image": [png_bytes(p) for p in pats], "caption": ["first", "second"],
                             "key": ["k0", "k1"]}), tmp_path / "a.parquet")
    struct_col = pa.array([{"bytes": png_bytes(pats[0]), "path": "x.png"}],
                          type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    pq.write_table(pa.table({"img": struct_col, "text": ["struct caption"]}), tmp_path / "b.parquet")
    _m, samples, q = run(tmp_path, "image_text", [
        {"name": "plain", "type": "image_parquet", "uri": str(tmp_path / "a.parquet")},
        {"name": "hf", "type": "image_parquet", "uri": str(tmp_path / "b.parquet"), "fields": {"image": "img", "caption": "text"}},
    ], filters={"exact_dedup": False})
    assert q == []  # nothing quarantined
    assert samples["plain-0-000000001"]["txt"] == "second" and samples["plain-0-000000001"]["json"].source_id == "k1"
    np.testing.assert_array_equal(decoded(samples["plain-0-000000001"]), pats[1])
    np.testing.assert_array_equal(decoded(samples["hf-0-000000000"]), pats[0])


def test_image_folder_with_captions_file_and_sidecars(tmp_path):
    root = tmp_path / "folder"
    (root / "sub").mkdir(parents=True)
    (root / "a.png").write_bytes(png_bytes(pattern(1)))
    (root / "sub" / "b.png").write_bytes(png_bytes(pattern(2)))
    write_jsonl(root / "captions.jsonl", [{"file": "sub/b.png", "caption": "bee"}, {"file": "a.png", "caption": "ay"}])
    side = tmp_path / "side"
    side.mkdir()
    (side / "0001.png").write_bytes(png_bytes(pattern(3)))
    (side / "0001.txt").write_text("sidecar caption\n")
    _m, samples, q = run(tmp_path, "image_text", [
        {"name": "folder", "type": "image_folder", "uri": str(root), "captions": "captions.jsonl"},
        {"name": "side", "type": "image_folder", "uri": str(side)},
    ])
    assert q == []  # nothing quarantined
    assert samples["folder-0-000000000"]["txt"] == "bee"  # caption-file order
    np.testing.assert_array_equal(decoded(samples["folder-0-000000000"]), pattern(2))
    assert samples["folder-0-000000001"]["json"].metadata["file"] == "a.png"
    assert samples["side-0-000000000"]["txt"] == "sidecar caption"


def test_llava_conversations(tmp_path):
    (tmp_path / "images" / "coco").mkdir(parents=True)
    (tmp_path / "images" / "coco" / "1.png").write_bytes(png_bytes(pattern(5)))
    (tmp_path / "llava.json").write_text(json.dumps([
        {"id": "000000033471", "image": "coco/1.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat colors are in the image?"},
            {"from": "gpt", "value": "Many colors."},
            {"from": "human", "value": "Is it noisy?"}, {"from": "gpt", "value": "Yes, it is random noise."}]},
    ]))
    _m, samples, q = run(tmp_path, "mmu", [{"type": "llava", "uri": str(tmp_path / "llava.json"),
                                           "image_root": str(tmp_path / "images")}])
    assert q == []  # nothing quarantined
    s = samples["llava-0-000000000"]
    j = s["json"]
    assert j.source_id == "000000033471" and j.metadata["image_path"] == "coco/1.png"
    assert [mm.content for mm in j.messages] == ["What colors are in the image?", "Many colors.", "Is it noisy?",
                                                 "Yes, it is random noise."]  # <image> placeholder removed
    assert j.prompt.endswith("Is it noisy?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n")
    assert j.response == "Yes, it is random noise.<|eot_id|>"
    np.testing.assert_array_equal(decoded(s), pattern(5))


@pytest.mark.parametrize("compress", [False, True])
def test_idx_fashion_mnist_layout(tmp_path, compress):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (7, 28, 28), dtype=np.uint8)
    labels = np.array([0, 9, 3, 3, 1, 5, 2], np.uint8)
    ext = ".gz" if compress else ""
    ip = write_idx(tmp_path / f"train-images-idx3-ubyte{ext}", imgs, compress)
    lp = write_idx(tmp_path / f"train-labels-idx1-ubyte{ext}", labels, compress)
    spec = load_spec("data_specs/fashion_mnist.yaml", overrides=[f"sources.0.uri={ip}", f"sources.0.labels={lp}",
                                                                 "images.size=null", "split.val_fraction=0"])
    out = tmp_path / "out"
    m = curate(spec, out=str(out))
    samples = list(ShardSet.open(str(out)).iter_samples())
    assert m.counts.model_dump() == {"read": 7, "kept": 7, "rejected": 0}
    names = spec.sources[0].class_names
    for s in samples:
        i = int(s["__key__"].rsplit("-", 1)[1])
        assert s["txt"] == f"a photo of a {names[labels[i]]}" and s["json"].metadata["label"] == labels[i]
        np.testing.assert_array_equal(decoded(s), np.repeat(imgs[i][:, :, None], 3, axis=2))  # gray -> RGB


# ------------------------------------------------------------------------------------------------
# built-in sources


def test_builtin_arithmetic_deterministic_by_seed(tmp_path):
    src = {"type": "builtin", "uri": "builtin:arithmetic", "n": 60, "seed": 3}
    _, a, _ = run(tmp_path, "reasoning", [src], name="a", filters={"verify_answer": True, "exact_dedup": False})
    _, b, _ = run(tmp_path, "reasoning", [src], name="b", filters={"verify_answer": True, "exact_dedup": False},
                  chunk_size=7)
    _, c, _ = run(tmp_path, "reasoning", [{**src, "seed": 4}], name="c", filters={"exact_dedup": False})
    assert len(a) == 60 and [s["txt"] for s in a.values()] == [s["txt"] for s in b.values()]
    assert [s["txt"] for s in a.values()] != [s["txt"] for s in c.values()]
    from mmada.builtin.arithmetic import generate_arithmetic

    ref = generate_arithmetic(60, seed=3)
    assert [s["json"].answer for s in a.values()] == [r["answer"] for r in ref]


def test_builtin_shapes_captions_and_vqa(tmp_path):
    from mmada.builtin.shapes import generate_shapes, render_scene

    ref = generate_shapes(12, seed=2)
    _, cap, _ = run(tmp_path, "t2i", [{"type": "builtin", "uri": "builtin:shapes", "n": 12, "seed": 2}], name="cap",
                    filters={"exact_dedup": False})
    for i, r in enumerate(ref):
        s = cap[f"shapes-{i:09d}"]
        assert s["txt"] == r["caption"]
        assert s["json"].metadata["objects"] == json.loads(json.dumps(r["metadata"]["objects"]))  # tuples -> lists
        np.testing.assert_array_equal(decoded(s), np.asarray(render_scene(r["metadata"]["objects"], 32)))
    m, vqa, _ = run(tmp_path, "vqa", [{"type": "builtin", "uri": "builtin:shapes", "n": 12, "seed": 2, "vqa": True}],
                    name="vqa", filters={"exact_dedup": False})
    assert m.kind == "mmu" and m.counts.read == sum(len(r["vqa"]) for r in ref)
    s = vqa["shapes-000000000-q1"]["json"]
    assert s.question == ref[0]["vqa"][1]["question"] and s.answer == ref[0]["vqa"][1]["answer"]
    assert s.thinking == ref[0]["vqa"][1]["thinking"] and s.metadata["gold_answer"] == s.answer


def test_sklearn_digits_captioned_by_class(tmp_path):
    from sklearn.datasets import load_digits

    m, samples, _ = run(tmp_path, "image_text", [{"type": "builtin", "uri": "sklearn:digits", "n": 50}],
                        filters={"exact_dedup": False})
    d = load_digits()
    assert m.counts.kept == 50
    for i in (0, 17, 49):
        s = samples[f"digits-{i:09d}"]
        assert s["txt"] == f"a handwritten digit {d.target[i]}"
        img = decoded(s)
        assert img.shape == (32, 32, 3)
        # brightest 8x8 cell of the upscaled image is where the original 8x8 digit is brightest
        cells = img[..., 0].reshape(8, 4, 8, 4).mean(axis=(1, 3))
        assert np.corrcoef(cells.ravel(), d.images[i].ravel())[0, 1] > 0.9
