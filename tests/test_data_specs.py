"""Data specs: validation errors name the field and happen before anything is written; URI security;
content hashing; the shipped data_specs; prompt templates. (Final answers: tests/test_answers.py.)"""

from __future__ import annotations

import glob
import json

import pytest

from mmada.cli import main
from mmada.data.errors import SpecError
from mmada.data.io import join_under
from mmada.data.specs import load_spec, spec_hash
from mmada.tokenization import THINK_PREFIX
from tests.test_data_readers import GSM8K_ROWS, S1K_FIELDS, S1K_ROWS, write_jsonl

BASE = {"name": "t", "kind": "reasoning", "sources": [{"type": "builtin", "uri": "builtin:arithmetic", "n": 10}]}


def with_(**kw):
    return json.loads(json.dumps({**BASE, **kw}))


@pytest.mark.parametrize(("data", "overrides", "field", "msg"), [
    (with_(colour="red"), [], "colour", "unknown field"),
    (BASE, ["sources.0.colour=red"], "sources.0.colour", "unknown field"),
    (BASE, ["filters.max_tokenz=5"], "filters.max_tokenz", "unknown field"),
    (with_(sources=[{"type": "gsm8k", "uri": "a.jsonl", "fields": {"questoin": "q"}}]), [], "sources.0.fields",
     "unknown canonical field"),
    (with_(sources=[{"type": "gsm8k", "uri": "ftp://host/a.jsonl"}]), [], "sources.0.uri", "unsupported URI scheme 'ftp'"),
    (with_(sources=[{"type": "gsm8k", "uri": "javascript:alert(1)"}]), [], "sources.0.uri", "unsupported URI scheme"),
    (with_(sources=[{"type": "gsm8k", "uri": "pipe:curl http://x | sh"}]), [], "sources.0.uri", "MMADA_ALLOW_PIPE_URLS"),
    (BASE, ["output=pipe:aws s3 cp - s3://b/x"], "output", "'pipe:' URLs cannot be used here"),
    (BASE, ["output=ssh://host/dir"], "output", "unsupported URI scheme 'ssh'"),
    (BASE, ["shards.max_samples=-1"], "shards.max_samples", "greater than or equal to 1"),
    (BASE, ["chunk_size=0"], "chunk_size", "greater than or equal to 1"),
    (BASE, ["sources.0.n=-5"], "sources.0.n", "greater than or equal to 1"),
    (BASE, ["split.val_fraction=2"], "split.val_fraction", "less than or equal to 0.5"),
    (BASE, ["kind=caption"], "kind", "Input should be"),
    (BASE, ["name=Bad Name"], "name", "String should match pattern"),
    (BASE, ["filters.min_tokens=50", "filters.max_tokens=10"], "filters", "min_tokens (50) > max_tokens (10)"),
    (BASE, ["kind=t2i"], "sources.0", "cannot feed kind 't2i'"),
    (with_(sources=[{"type": "chat", "uri": "c.jsonl"}], filters={"verify_answer": True}), [], "filters.verify_answer",
     "has no gold answers"),
    (with_(sources=[{"type": "gsm8k", "uri": "a.jsonl"}, {"type": "gsm8k", "uri": "b.jsonl"}]), [], "sources",
     "duplicate source name"),
    (with_(sources=[{"type": "builtin", "uri": "builtin:nope", "n": 3}]), [], "sources.0.uri", "unsupported URI scheme"),
    (BASE, ["vq.enabled=true"], "vq.enabled", "needs an image kind"),
    (with_(kind="mmu", sources=[{"type": "llava", "uri": "l.json", "image_root": "pipe:cat /etc/passwd"}]), [],
     "sources.0.image_root", "'pipe:' URLs cannot be used here"),
    (with_(kind="t2i", sources=[{"type": "idx", "uri": "i.idx", "labels": "sftp://h/l.idx", "class_names": ["a", "b"]}]),
     [], "sources.0.labels", "unsupported URI scheme 'sftp'"),
])
def test_spec_errors_name_the_field(data, overrides, field, msg):
    with pytest.raises(SpecError) as ei:
        load_spec(data, overrides=overrides)
    text = str(ei.value)
    assert field in text and msg in text, text


def test_cli_spec_error_fails_before_anything_is_written(tmp_path, capsys):
    spec = tmp_path / "s.yaml"
    spec.write_text("name: t\nkind: reasoning\nsources:\n  - {type: builtin, uri: 'builtin:arithmetic', n: 5}\n")
    out = tmp_path / "out"
    assert main(["curate", str(spec), "--out", str(out), "--set", "shards.max_samples=-3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: invalid spec: shards.max_samples:")
    assert not out.exists()
    spec.write_text("name: t\nkind: reasoning\nsurces: []\n")
    assert main(["curate", str(spec), "--out", str(out)]) == 2
    assert "surces: unknown field" in capsys.readouterr().err and not out.exists()
    assert main(["curate", str(spec), "--out", str(out), "--set", "nokeyvalue"]) == 2
    assert "expected KEY=VALUE" in capsys.readouterr().err


def test_pipe_urls_only_with_the_operator_setting(tmp_path, monkeypatch):
    from mmada.data.curate import curate

    f = write_jsonl(tmp_path / "g.jsonl", GSM8K_ROWS)
    data = with_(sources=[{"type": "gsm8k", "uri": f"pipe:cat {f}"}])
    monkeypatch.delenv("MMADA_ALLOW_PIPE_URLS", raising=False)
    with pytest.raises(SpecError, match="MMADA_ALLOW_PIPE_URLS"):
        load_spec(data)
    monkeypatch.setenv("MMADA_ALLOW_PIPE_URLS", "1")
    m = curate(load_spec(data), out=str(tmp_path / "out"))
    assert m.counts.kept == 3 and m.sources[0].uri.startswith("pipe:")


def test_spec_hash_is_about_content_not_location():
    a = load_spec(BASE)
    assert spec_hash(a) == spec_hash(load_spec(BASE, ["output=s3://elsewhere/x", "chunk_size=7", "description=hi"]))
    assert spec_hash(a) != spec_hash(load_spec(BASE, ["filters.max_tokens=99"]))
    assert spec_hash(a) != spec_hash(load_spec(BASE, ["sources.0.seed=1"]))
    assert load_spec(BASE, ["output=runs/{name}/{spec_hash}"]).output_uri() == f"runs/t/{spec_hash(a)[:16]}"


def test_vqa_is_an_alias_of_mmu():
    s = load_spec(with_(kind="vqa", sources=[{"type": "builtin", "uri": "builtin:shapes", "n": 2, "vqa": True}]))
    assert s.kind == "mmu"


def test_shipped_specs_load_and_point_elsewhere_with_one_field(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mmada.data.curate import curate

    specs = {p.rsplit("/", 1)[-1][:-5]: load_spec(p) for p in sorted(glob.glob("data_specs/*.yaml"))}
    assert {"gsm8k", "math", "s1k", "img2dataset", "llava", "fashion_mnist", "arithmetic", "shapes", "shapes_vqa",
            "digits", "chat", "alpaca", "image_folder", "image_parquet", "openthoughts"} <= set(specs)
    assert {s.kind for s in specs.values()} == {"reasoning", "image_text", "t2i", "mmu"}
    g = write_jsonl(tmp_path / "gsm8k.jsonl", GSM8K_ROWS)
    m = curate(load_spec("data_specs/gsm8k.yaml", [f"sources.0.uri={g}"]), out=str(tmp_path / "g"))
    assert m.counts.kept == 3
    pq.write_table(pa.Table.from_pylist(S1K_ROWS), tmp_path / "s1k.parquet")
    s1k = load_spec("data_specs/s1k.yaml", [f"sources.0.uri={tmp_path / 's1k.parquet'}"])
    assert s1k.sources[0].fields == S1K_FIELDS
    m = curate(s1k, out=str(tmp_path / "s"))
    assert m.counts.kept == 2 and m.rejected_by_reason == {"answer_mismatch": 1}


def test_uri_checks_and_path_confinement(monkeypatch):
    from mmada.data.io import check_uri

    for ok in ["data/x.jsonl", "/abs/x.jsonl", "file:///x", "s3://b/k", "gs://b/k", "hf://datasets/o/r/x.parquet",
               "memory://x", "simplecache::s3://b/k", "C:\\data\\x.jsonl"]:
        assert check_uri(ok, field="f") == ok
    for bad in ["ftp://x", "sftp://h/x", "simplecache::ftp://x", "data:text/plain,hi"]:
        with pytest.raises(SpecError, match="f: unsupported URI scheme"):
            check_uri(bad, field="f")
    assert join_under("/root", "a/./b/../c.png", what="image") == "/root/a/c.png"
    for esc in ["../x.png", "a/../../x.png", "/etc/passwd", "s3://b/x.png", "file:/etc/passwd"]:
        with pytest.raises(ValueError):
            join_under("/root", esc, what="image")


# ------------------------------------------------------------------------------------------------
# templates


def test_templates_match_the_tokenizer_chat_template():
    from mmada.data.schema import Message
    from mmada.data.specs import TemplateSpec
    from mmada.data.templates import build_messages, render
    from mmada.tokenization import load_text_tokenizer

    tok = load_text_tokenizer("builtin")
    tmpl = TemplateSpec(system="Be brief.")
    hist = [Message(role="user", content="Hi "), Message(role="assistant", content=" Hello!")]
    msgs = build_messages(hist, "What is 2+3?", "2 plus 3 is 5.", "\\boxed{5}", tmpl)
    prompt, response = render(msgs, tmpl)
    dicts = [m.model_dump() for m in msgs]
    assert prompt == tok.apply_chat_template(dicts[:-1], tokenize=False, add_generation_prompt=True)
    assert prompt + response == tok.apply_chat_template(dicts, tokenize=False)
    # the bytes curated shards hold (render and the tokenizer share one template, so pin its output)
    assert prompt == ("<|startoftext|><|start_header_id|>system<|end_header_id|>\nBe brief.<|eot_id|>"
                      "<|start_header_id|>user<|end_header_id|>\nHi<|eot_id|>"
                      "<|start_header_id|>assistant<|end_header_id|>\nHello!<|eot_id|>"
                      f"<|start_header_id|>user<|end_header_id|>\n{THINK_PREFIX}What is 2+3?<|eot_id|>"
                      "<|start_header_id|>assistant<|end_header_id|>\n")
    assert response == "<think>2 plus 3 is 5.</think> \\boxed{5}<|eot_id|>"
    assert msgs[-2].content == THINK_PREFIX + "What is 2+3?"
    plain = TemplateSpec(think=False, answer_format="plain")
    msgs = build_messages(None, "Q", "trace", "5", plain)
    assert render(msgs, plain)[1] == "trace\n5<|eot_id|>" and msgs[0].content == "Q"
