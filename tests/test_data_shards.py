"""Shards and manifests: byte reproducibility, tar compatibility, checksum-verified loading, atomic writes,
fsspec outputs (memory://, a local S3 endpoint), the read = kept + rejected invariant."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import fsspec
import numpy as np
import pytest

from mmada.data import curate as C
from mmada.data.errors import CountMismatchError, ShardError
from mmada.data.shards import ShardSet, write_shard, write_tar
from mmada.data.specs import load_spec
from mmada.files import atomic_write
from tests.test_data_readers import GSM8K_ROWS, write_jsonl

ARITH = {"name": "ar", "kind": "reasoning", "sources": [{"type": "builtin", "uri": "builtin:arithmetic", "n": 300}],
         "filters": {"verify_answer": True}, "split": {"val_fraction": 0.1}, "shards": {"max_samples": 100}}
SHAPES = {"name": "sh", "kind": "t2i", "sources": [{"type": "builtin", "uri": "builtin:shapes", "n": 40}],
          "shards": {"max_samples": 16}}


def files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.is_file()}


def test_output_is_byte_identical_across_runs_and_chunkings(tmp_path):
    a = C.curate(load_spec(ARITH), out=str(tmp_path / "a"))
    b = C.curate(load_spec(ARITH, ["chunk_size=37"]), out=str(tmp_path / "b"))
    fa, fb = files(tmp_path / "a"), files(tmp_path / "b")
    assert sorted(fa) == sorted(fb) == sorted(["manifest.json", "quarantine.jsonl", "datacard.md"]
                                              + [s.name for s in a.shards])
    for name in fa:
        if name != "manifest.json":  # the manifest records the spec, including chunk_size
            assert fa[name] == fb[name], name
    assert a.model_dump(exclude={"spec"}) == b.model_dump(exclude={"spec"})
    assert [s.split for s in a.shards] == ["train"] * 3 + ["val"] and a.splits["val"].samples > 0
    assert not (tmp_path / "a" / "_work").exists()  # intermediates removed
    m = json.loads(fa["manifest.json"])
    assert m["counts"]["read"] == m["counts"]["kept"] + m["counts"]["rejected"] == 300
    assert m["shards"][0]["sha256"] and m["spec_hash"] == a.spec_hash and "created" not in json.dumps(m)


def test_shards_are_plain_tars_for_every_reader(tmp_path):
    import webdataset as wds

    m = C.curate(load_spec(SHAPES), out=str(tmp_path))
    path = tmp_path / m.shards[0].name
    with tarfile.open(path) as tf:
        members = tf.getmembers()
    assert [x.name for x in members[:2]] == ["shapes-000000000.json", "shapes-000000000.txt"]
    assert members[2].name == "shapes-000000000.png"
    assert all(x.mtime == 0 and x.uid == 0 and x.mode == 0o444 and x.isfile() for x in members)
    ds = wds.WebDataset(str(path), shardshuffle=False).decode("rgb8")
    first = next(iter(ds))
    assert first["__key__"] == "shapes-000000000" and first["json"]["kind"] == "t2i"
    assert first["png"].shape == (32, 32, 3) and first["txt"] == first["json"]["caption"]
    if shutil.which("tar"):
        out = subprocess.run(["tar", "tf", str(path)], capture_output=True, text=True, check=True).stdout.split()
        assert out == [x.name for x in members]


def test_loader_verifies_checksums_and_names_the_bad_shard(tmp_path):
    m = C.curate(load_spec(ARITH), out=str(tmp_path))
    ss = ShardSet.open(str(tmp_path))
    ss.verify()
    keys = [s["__key__"] for s in ss.iter_samples("train")]
    assert len(keys) == m.splits["train"].samples == len(set(keys))
    victim = tmp_path / m.shards[1].name
    data = bytearray(victim.read_bytes())
    data[2000] ^= 0xFF  # one flipped bit inside a member: same size, different bytes
    victim.write_bytes(bytes(data))
    with pytest.raises(ShardError, match=f"shard {m.shards[1].name} is corrupt"):
        ss.verify()
    seen = []
    with pytest.raises(ShardError, match=m.shards[1].name):
        for s in ss.iter_samples("train"):
            seen.append(s["__shard__"])
    assert set(seen) == {m.shards[0].name}  # nothing from the corrupt shard was yielded
    victim.write_bytes(bytes(data[:-10240]))
    with pytest.raises(ShardError, match=f"shard {m.shards[1].name} has .* bytes, manifest says"):
        ss.verify()
    victim.unlink()
    (tmp_path / m.shards[3].name).unlink()
    with pytest.raises(ShardError) as ei:
        ss.verify()
    assert f"shard {m.shards[1].name} is missing" in str(ei.value) and m.shards[3].name in str(ei.value)
    (tmp_path / "manifest.json").unlink()
    with pytest.raises(ShardError, match=r"no manifest\.json"):
        ShardSet.open(str(tmp_path))


def test_complete_output_is_not_rebuilt_but_changed_sources_are(tmp_path):
    f = write_jsonl(tmp_path / "g.jsonl", GSM8K_ROWS[:2])
    spec = load_spec({"name": "g", "kind": "reasoning", "sources": [{"type": "gsm8k", "uri": str(f)}]})
    out = tmp_path / "out"
    m1 = C.curate(spec, out=str(out))
    shard = out / m1.shards[0].name
    stat1 = shard.stat()
    m2 = C.curate(spec, out=str(out))
    assert m2 == m1 and shard.stat().st_ino == stat1.st_ino and shard.stat().st_mtime_ns == stat1.st_mtime_ns
    write_jsonl(f, GSM8K_ROWS)  # the source changed: its fingerprint differs, so the output is rebuilt
    m3 = C.curate(spec, out=str(out))
    assert m3.counts.kept == 3 and m3.sources[0].fingerprint != m1.sources[0].fingerprint
    m4 = C.curate(spec, out=str(out), force=True)
    assert m4 == m3


def test_memory_filesystem_source_and_output(tmp_path):
    fs = fsspec.filesystem("memory")
    with fs.open("/src/g.jsonl", "wb") as fh:
        fh.write("".join(json.dumps(r) + "\n" for r in GSM8K_ROWS).encode())
    spec = load_spec({"name": "mem", "kind": "reasoning", "sources": [{"type": "gsm8k", "uri": "memory://src/g.jsonl"}],
                      "split": {"val_fraction": 0}})
    m = C.curate(spec, out="memory://out/mem")
    ss = ShardSet.open("memory://out/mem")
    ss.verify()
    texts = [s["txt"] for s in ss.iter_samples()]
    assert len(texts) == 3 and "Natalia" in texts[0]
    assert sorted(p.rsplit("/", 1)[-1] for p in fs.ls("/out/mem", detail=False)) == sorted(
        ["datacard.md", "manifest.json", "quarantine.jsonl", m.shards[0].name])
    fs.rm("/out", recursive=True)
    fs.rm("/src", recursive=True)


def test_s3_source_and_output_via_local_endpoint(tmp_path, s3_endpoint):
    fs = fsspec.filesystem("s3")
    fs.mkdir("mmada-test")
    fs.pipe("mmada-test/raw/gsm8k.jsonl", "".join(json.dumps(r) + "\n" for r in GSM8K_ROWS).encode())
    spec = load_spec({"name": "s3", "kind": "reasoning",
                      "sources": [{"type": "gsm8k", "uri": "s3://mmada-test/raw/gsm8k.jsonl"}],
                      "split": {"val_fraction": 0}, "filters": {"verify_answer": True}})
    m = C.curate(spec, out="s3://mmada-test/shards/gsm8k")
    assert m.sources[0].fingerprint and m.counts.kept == 3
    ss = ShardSet.open("s3://mmada-test/shards/gsm8k")
    ss.verify()
    samples = list(ss.iter_samples())
    assert [s["json"].answer for s in samples] == ["72", "10", "5"]
    listing = sorted(p.rsplit("/", 1)[-1] for p in fs.ls("mmada-test/shards/gsm8k", detail=False))
    assert listing == sorted(["datacard.md", "manifest.json", "quarantine.jsonl", m.shards[0].name])
    again = C.curate(spec, out="s3://mmada-test/shards/gsm8k")  # complete: found and verified, not rebuilt
    assert again == m


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "x.tar"
    with pytest.raises(RuntimeError), atomic_write(str(target)) as f:
        f.write(b"half a shard")
        raise RuntimeError("crash mid-write")
    assert list(tmp_path.iterdir()) == []

    def boom():
        yield "k0", {"json": b"{}"}
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        write_shard(str(target), boom())
    assert list(tmp_path.iterdir()) == []
    target.write_bytes(b"old")
    n, size, _ = write_shard(str(target), [("k1", {"json": b"{}", "txt": b"hi"})])
    assert (n, size) == (1, target.stat().st_size) and list(tmp_path.iterdir()) == [target]


@pytest.mark.parametrize(("key", "ext"), [("../evil", "json"), ("a/b", "json"), ("a.b", "json"), ("ok", "sh"),
                                          ("ok", "../../x")])
def test_member_names_cannot_escape(key, ext):
    with pytest.raises(ShardError):
        write_tar(io.BytesIO(), [(key, {ext: b"x"})])


def test_keys_are_sanitised():
    assert C.make_key("src", "a/b.c d") == "src-a_b_c_d"
    long = C.make_key("s" * 60, "x" * 60)
    assert len(long) <= 80 and long.startswith("s" * 60)


def test_count_mismatch_fails_loudly(tmp_path, monkeypatch):
    real = C.write_shard

    def lossy(uri, samples, **kw):  # a bug that silently drops one sample per shard
        return real(uri, list(samples)[:-1], **kw)

    monkeypatch.setattr(C, "write_shard", lossy)
    with pytest.raises(CountMismatchError, match=r"arithmetic: read 300 != kept \d+ \+ rejected \d+"):
        C.curate(load_spec(ARITH), out=str(tmp_path))
    assert not (tmp_path / "manifest.json").exists()


def test_split_is_deterministic_and_stable_per_key():
    keys = [f"src-{i}" for i in range(4000)]
    a = [C.split_of(k, 0.1, "s") for k in keys]
    assert a == [C.split_of(k, 0.1, "s") for k in keys]
    assert 300 < a.count("val") < 500  # ~10 %
    assert a != [C.split_of(k, 0.1, "other") for k in keys]
    assert all(C.split_of(k, 0.0, "s") == "train" for k in keys[:100])


def test_vq_pretokenisation_stores_codes(tmp_path):
    import torch
    from PIL import Image

    from mmada.models.vq import MAGVITv2, encode_images
    from mmada.training.vq import TINY_MODEL

    torch.manual_seed(0)
    MAGVITv2(TINY_MODEL).save_pretrained(tmp_path / "vq")  # random weights: the codes only need to be consistent
    small = {**SHAPES, "sources": [{"type": "builtin", "uri": "builtin:shapes", "n": 12}]}
    spec = load_spec({**small, "vq": {"enabled": True, "model": str(tmp_path / "vq"), "batch_size": 8}})
    m = C.curate(spec, out=str(tmp_path / "out"))
    assert m.vq["model"] == str(tmp_path / "vq")
    model = MAGVITv2.from_pretrained(tmp_path / "vq")
    samples = list(ShardSet.open(str(tmp_path / "out")).iter_samples())
    assert len(samples) == m.counts.kept
    for s in samples[:3]:  # each sample's codes are the encoding of its own image
        img = Image.open(io.BytesIO(s["png"])).convert("RGB")
        ref = encode_images(model, [img], batch_size=1)[0]
        np.testing.assert_array_equal(s["codes"], ref)
        assert s["codes"].shape == (64,) and s["json"].codes.length == 64  # 32 px / 4 = 8x8 tokens
    assert len({s["codes"].tobytes() for s in samples}) > 1
    torch.manual_seed(1)
    MAGVITv2(TINY_MODEL).save_pretrained(tmp_path / "vq")  # the tokenizer was retrained in place
    m2 = C.curate(spec, out=str(tmp_path / "out"))  # same spec: rebuilt, because the weights changed
    assert m2.vq["fingerprint"] != m.vq["fingerprint"] and m2.spec_hash == m.spec_hash
    again = {s["__key__"]: s["codes"] for s in ShardSet.open(str(tmp_path / "out")).iter_samples()}
    assert any(not np.array_equal(again[s["__key__"]], s["codes"]) for s in samples)
    tiny = {**SHAPES, "sources": [{"type": "builtin", "uri": "builtin:shapes", "n": 3}]}
    C.curate(load_spec({**tiny, "vq": {"enabled": True, "model": str(tmp_path / "vq"), "keep_png": False}}),
             out=str(tmp_path / "codes-only"))
    first = next(ShardSet.open(str(tmp_path / "codes-only")).iter_samples())
    assert "png" not in first and first["codes"].shape == (64,)
