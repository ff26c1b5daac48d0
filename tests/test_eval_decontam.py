"""Held-out math evaluation: ``--difficulty`` and ``--exclude-data`` against real curated shards."""

from __future__ import annotations

import json
import tarfile

import pytest
import torch

from mmada.builtin.arithmetic import generate_arithmetic
from mmada.cli import main
from mmada.errors import MMaDAError
from mmada.eval.decontam import exclude_seen, held_out, normalize
from mmada.eval.runners import load_records
from mmada.models import MMaDAConfig, MMaDAModelLM
from mmada.tokenization import load_text_tokenizer


@pytest.fixture(scope="module")
def curated_seed7(tmp_path_factory):
    """The first 40 one-step problems of seed 7, curated into real shards (the eval below draws seed 7 too)."""
    d = tmp_path_factory.mktemp("decontam")
    spec = d / "spec.yaml"
    spec.write_text("name: easy\nkind: reasoning\nsources:\n"
                    "  - {type: builtin, uri: 'builtin:arithmetic', n: 40, seed: 7, difficulty: 1}\n"
                    "filters: {exact_dedup: true}\nsplit: {val_fraction: 0.1}\n")
    assert main(["curate", str(spec), "--out", str(d / "easy"), "--quiet"]) == 0
    questions = set()
    for tar in (d / "easy").glob("*.tar"):  # read the shards directly, not through the code under test
        with tarfile.open(tar) as tf:
            for m in tf:
                if m.name.endswith(".json"):
                    questions.add(json.load(tf.extractfile(m))["question"])
    return d / "easy", questions


def test_exclude_seen_normalises_and_names_bad_records():
    seen = {normalize("Ann has  3 Apples.")}
    kept, removed = exclude_seen([{"question": "ann has 3 apples."}, {"question": "Ben has 3 apples."}], seen)
    assert removed == 1 and kept == [{"question": "Ben has 3 apples."}]
    with pytest.raises(MMaDAError, match=r"record 1 \(x7\): no 'question'"):
        exclude_seen([{"question": "q"}, {"id": "x7"}], seen)


def test_held_out_draws_past_seen_and_stops_when_exhausted():
    def gen(count, start):
        return [{"question": f"q{(start + i) % 10}"} for i in range(count)]

    recs, removed = held_out(gen, 4, {"q0", "q2", "q3"})
    assert [r["question"] for r in recs] == ["q1", "q4", "q5", "q6"] and removed == 3
    with pytest.raises(MMaDAError, match="only 0 of 5 generated problems are unseen"):
        held_out(gen, 5, {f"q{i}" for i in range(10)})
    with pytest.raises(MMaDAError, match="ran out after 2 records with 1 of 3 unseen"):
        held_out(lambda count, start: gen(count, start)[: max(0, 2 - start)], 3, {"q0"})


def test_excluding_data_without_questions_is_an_error(tmp_path):
    from mmada.eval.decontam import questions_in

    spec = tmp_path / "spec.yaml"
    spec.write_text("name: pics\nkind: t2i\nsources:\n  - {type: builtin, uri: 'builtin:shapes', n: 4}\n")
    assert main(["curate", str(spec), "--out", str(tmp_path / "pics"), "--quiet"]) == 0
    with pytest.raises(MMaDAError, match=r"pics: no sample has a question to exclude \(kind 't2i'\)"):
        questions_in([str(tmp_path / "pics")])


def test_load_records_difficulty_is_builtin_arithmetic_only(tmp_path):
    recs = load_records("builtin:arithmetic", n=30, seed=5, difficulty=2)
    assert {r["difficulty"] for r in recs} == {2} and all(r["question"].count("Then") == 2 for r in recs)
    assert load_records("builtin:arithmetic", n=30, seed=5) == generate_arithmetic(30, seed=5)
    with pytest.raises(MMaDAError, match="difficulty applies to builtin:arithmetic only"):
        load_records("builtin:shapes", n=3, difficulty=1)


def test_cli_math_held_out_from_curated_shards(curated_seed7, tmp_path, capsys):
    root, train_questions = curated_seed7
    torch.manual_seed(0)
    ckpt = tmp_path / "ckpt"
    MMaDAModelLM(MMaDAConfig.from_preset("tiny", d_model=64, n_layers=2, n_heads=2, n_kv_heads=2,
                                         mlp_hidden_size=128)).save_pretrained(ckpt)
    load_text_tokenizer("builtin").save_pretrained(ckpt)
    out, samples = tmp_path / "m.json", tmp_path / "s.jsonl"
    argv = ["eval", "math", "--data", "builtin:arithmetic", "--difficulty", "1", "--n", "12", "--data-seed", "7",
            "--protocol", "gsm8k_flexible", "--prompt-template", "{question}", "--checkpoint", str(ckpt),
            "--steps", "4", "--gen-length", "8", "--block-length", "8", "--out", str(out), "--samples-out", str(samples)]
    assert main([*argv, "--exclude-data", str(root)]) == 0
    rep = json.loads(out.read_text())
    rows = [json.loads(x) for x in samples.read_text().splitlines()]
    assert rep["n"] == len(rows) == 12
    assert not {r["question"] for r in rows} & train_questions
    # brute force: walk the seed-7 one-step stream, skipping training questions, until 12 are kept
    expected, removed, i = [], 0, 0
    while len(expected) < 12:
        q = generate_arithmetic(1, seed=7, difficulty=1, start=i)[0]["question"]
        i += 1
        if q in train_questions:
            removed += 1
        else:
            expected.append(q)
    assert [r["question"] for r in rows] == expected and removed > 0
    assert rep["details"]["held_out"] == {"exclude_data": [str(root)], "removed": removed,
                                          "known_questions": len(train_questions)}
    assert rep["details"]["difficulty"] == "1" and rep["metrics"]["accuracy/difficulty_1"] == rep["metrics"]["accuracy"]
    assert f"held out: removed {removed} problems" in capsys.readouterr().out
    # without the exclusion the same seed repeats training questions
    assert main(argv) == 0
    assert {json.loads(x)["question"] for x in samples.read_text().splitlines()} & train_questions
    assert main([*argv[:4], "--difficulty", "one", *argv[6:]]) == 2
    assert "--difficulty: expected K or LO-HI" in capsys.readouterr().err


def test_shapes_vqa_and_t2i_held_out_by_scene(tmp_path):
    """Scenes curated from seed 3 are dropped from an evaluation that draws seed 3 again: VQA items question
    by question, t2i scenes whole; the shards are read directly to know what training held."""
    from mmada.eval.suites import held_out_scenes

    spec = tmp_path / "spec.yaml"
    spec.write_text("name: vqa\nkind: mmu\nsources:\n  - {type: builtin, uri: 'builtin:shapes', n: 6, seed: 3, "
                    "image_size: 32, vqa: true}\nfilters: {exact_dedup: true}\nsplit: {val_fraction: 0.2}\n")
    assert main(["curate", str(spec), "--out", str(tmp_path / "vqa"), "--quiet"]) == 0
    trained = set()
    for tar in (tmp_path / "vqa").glob("*.tar"):
        with tarfile.open(tar) as tf:
            for m in tf:
                if m.name.endswith(".json"):
                    j = json.load(tf.extractfile(m))
                    objs = sorted((o["shape"], o["color"], tuple(o["bbox"])) for o in j["metadata"]["objects"])
                    trained.add((repr(objs), j["question"]))
    scenes = load_records("builtin:shapes", n=10, seed=3)
    items = [(r, qa["question"]) for r in scenes for qa in r["vqa"]]
    key = lambda r, q: (repr(sorted((o["shape"], o["color"], tuple(o["bbox"])) for o in r["metadata"]["objects"])), q)  # noqa: E731
    expected = [f"{r['id']}-q{j}" for r in scenes for j, qa in enumerate(r["vqa"])
                if key(r, qa["question"]) not in trained]
    kept, held = held_out_scenes("builtin:shapes", n=10, seed=3, exclude_data=[str(tmp_path / "vqa")],
                                 with_question=True)
    assert [it["id"] for it in kept] == expected and 0 < len(kept) < len(items)
    assert held["removed"] == len(items) - len(kept) and held["known_scenes"] == len(trained)
    # t2i: a scene is dropped when training held its layout (any question about it)
    scenes_seen = {s for s, _ in trained}
    kept_t2i, held_t2i = held_out_scenes("builtin:shapes", n=10, seed=3, exclude_data=[str(tmp_path / "vqa")],
                                         with_question=False)
    assert [r["id"] for r in kept_t2i] == [r["id"] for r in scenes if key(r, None)[0] not in scenes_seen]
    assert held_t2i["removed"] == 6  # the six curated scenes are the first six of seed 3
    assert held_out_scenes("builtin:shapes", n=4, seed=9, exclude_data=None, with_question=False)[1] is None
