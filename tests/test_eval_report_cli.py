"""Reports (fields, table, atomic JSON), MLflow logging to a sqlite store, and `mmada eval …`."""

from __future__ import annotations

import json
import re

import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from mmada.builtin.shapes import generate_shapes, render_scene
from mmada.cli import main
from mmada.data.images import image_grid
from mmada.diffusion.settings import ImageSamplerSettings, SamplerSettings
from mmada.errors import MMaDAError
from mmada.eval.report import EvalReport, ModelRef, flatten_metrics, log_report
from mmada.models import MMaDAConfig, MMaDAModelLM
from mmada.tokenization import load_text_tokenizer


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory):
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    """An untrained tiny checkpoint (the tiny preset's vocabulary, palette-sized image grid)."""
    torch.manual_seed(0)
    cfg = MMaDAConfig.from_preset("tiny", d_model=64, n_layers=2, n_heads=2, n_kv_heads=2, mlp_hidden_size=128)
    d = tmp_path_factory.mktemp("tiny_ckpt")
    MMaDAModelLM(cfg).save_pretrained(d)
    load_text_tokenizer("builtin").save_pretrained(d)
    return d


def _report(**kw) -> EvalReport:
    base = dict(suite="math", protocol="gsm8k_flexible", dataset="builtin:arithmetic", n=3, num_fewshot=5,
                model=ModelRef(path="ckpt", version="v1"),
                sampler=SamplerSettings(steps=64, gen_length=64, block_length=32),
                metrics={"accuracy": 2 / 3})
    return EvalReport(**(base | kw))


def test_report_requires_settings_and_prints_them(tmp_path):
    with pytest.raises(ValidationError, match="protocol"):
        EvalReport(suite="math", dataset="x", n=1, model=ModelRef(), sampler=SamplerSettings(), metrics={})
    with pytest.raises(ValidationError, match="source"):
        _report(source="guessed")
    with pytest.raises(ValidationError, match="steps_typo"):
        SamplerSettings(steps_typo=3)
    r = _report()
    table = r.table()
    for key, value in [("protocol", "gsm8k_flexible"), ("few-shot", "5"), ("sampler.block_length", "32"),
                       ("sampler.cache", "none"), ("sampler.threshold", "null"), ("sampler.stop_at_eos", "False"),
                       ("outputs from", "model"), ("accuracy", "0.6667"), ("version", "v1")]:
        assert re.search(rf"^{re.escape(key)}\s+\| {re.escape(value)}$", table, re.M), key
    out = r.write_json(tmp_path / "sub" / "report.json")
    data = json.loads(out.read_text())
    assert data["sampler"] == SamplerSettings(steps=64, gen_length=64, block_length=32).model_dump(mode="json")
    assert EvalReport.model_validate(data) == r
    images = _report(suite="t2i_shapes", sampler=ImageSamplerSettings(guidance_scale=2.0))  # either settings type
    assert EvalReport.model_validate_json(images.model_dump_json()).sampler == ImageSamplerSettings(guidance_scale=2.0)
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["report.json"]  # no temp files left
    assert flatten_metrics({"a": {"b": 1, "c": "x"}, "d": True}) == {"a/b": 1.0, "d": 1.0}


def test_weights_fingerprint_tracks_content(tiny_ckpt, tmp_path):
    v1 = ModelRef.from_path(tiny_ckpt).version
    assert v1.startswith("sha256:") and ModelRef.from_path(tiny_ckpt).version == v1
    assert ModelRef.from_path(tmp_path).version is None  # no weights there
    assert ModelRef.from_path(tiny_ckpt, version="models:/mmada/3").version == "models:/mmada/3"
    model = MMaDAModelLM.from_pretrained(tiny_ckpt)
    with torch.no_grad():
        next(model.parameters()).add_(1e-3)  # a fine-tune of the same shape
    model.save_pretrained(tmp_path / "tuned")
    assert ModelRef.from_path(tmp_path / "tuned").version not in (None, v1)


def test_log_report_to_mlflow_sqlite(tracking_uri, tmp_path):
    from mlflow.tracking import MlflowClient

    grid = image_grid([Image.new("RGB", (8, 8), (255, 0, 0))] * 3, ncol=2)
    rid = log_report(_report(), tracking_uri, experiment="eval-test", images={"generated_grid": grid})
    c = MlflowClient(tracking_uri=tracking_uri)
    run = c.get_run(rid)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["accuracy"] == pytest.approx(2 / 3)
    assert run.data.params["protocol"] == "gsm8k_flexible" and run.data.params["sampler.steps"] == "64"
    assert run.data.params["num_fewshot"] == "5" and run.data.params["sampler.cfg_scale"] == "0.0"
    assert run.data.tags["mmada.model_version"] == "v1" and run.data.params["sampler.cache"] == "none"
    assert run.data.params["sampler.threshold"] == "null" and run.data.params["source"] == "model"
    arts = {a.path for a in c.list_artifacts(rid)} | {a.path for a in c.list_artifacts(rid, "images")}
    assert {"report.json", "images/generated_grid.png"} <= arts
    png = c.download_artifacts(rid, "images/generated_grid.png", str(tmp_path))
    assert Image.open(png).size == grid.size


def _write_images_jsonl(tmp_path, recs, corrupt: set[int]) -> str:
    rows = []
    for i, r in enumerate(recs):
        objs = r["metadata"]["objects"]
        img = render_scene(objs[:-1] if i in corrupt else objs)  # drop an object from the corrupted ones
        img.save(tmp_path / f"{i}.png")
        rows.append({"image": f"{i}.png", "caption": r["caption"], "metadata": r["metadata"]})
    p = tmp_path / "gens.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(p)


def test_cli_t2i_scores_image_files_and_logs(tmp_path, tracking_uri, capsys):
    recs = generate_shapes(12, seed=4)  # two scenes of each task
    corrupt = {i for i, r in enumerate(recs) if r["task"] == "counting"}  # both counting scenes lose one
    path = _write_images_jsonl(tmp_path, recs, corrupt)
    out = tmp_path / "t2i.json"
    rc = main(["eval", "t2i", "--images", path, "--out", str(out), "--tracking-uri", tracking_uri,
               "--images-dir", str(tmp_path / "png"), "--steps", "12", "--guidance-scale", "3.5",
               "--samples-out", str(tmp_path / "rows.jsonl")])
    assert rc == 0
    rows = [json.loads(x) for x in (tmp_path / "rows.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == list(range(12))  # the JSONL rows have no id: their position
    assert [not r["correct"] for r in rows] == [i in corrupt for i in range(12)]
    assert [r["caption"] for r in rows] == [r["caption"] for r in recs]
    rep = json.loads(out.read_text())
    assert rep["metrics"]["task/counting"] == 0.0 and rep["metrics"]["task/position"] == 1.0
    assert rep["metrics"]["overall"] == pytest.approx(5 / 6)
    assert rep["source"] == "predictions_file" and rep["sampler"]["guidance_scale"] == 3.5  # as stated
    assert rep["protocol"] == "geneval_shapes" and rep["n"] == 12
    assert (tmp_path / "png" / "generated_grid.png").is_file()
    printed = capsys.readouterr().out
    assert "task/counting" in printed and "mlflow run:" in printed


def test_cli_math_from_predictions_and_errors(tmp_path, capsys):
    p = tmp_path / "preds.jsonl"
    rows = [{"question": "q1", "answer": "\\frac{1}{2}", "response": "so \\boxed{0.5}"},
            {"question": "q2", "answer": "4", "response": "\\boxed{5}"}]
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "m.json"
    assert main(["eval", "math", "--data", str(p), "--protocol", "boxed", "--out", str(out),
                 "--samples-out", str(tmp_path / "s.jsonl")]) == 0
    rep = json.loads(out.read_text())
    assert rep["metrics"]["accuracy"] == 0.5 and rep["source"] == "predictions_file" and rep["sampler"] is None
    assert rep["details"]["match"] == "equivalent"
    samples = [json.loads(x) for x in (tmp_path / "s.jsonl").read_text().splitlines()]
    assert [s["extracted"] for s in samples] == ["0.5", "5"]
    # a record without the response field is a user error: "error: …" and exit status 2
    p.write_text(json.dumps({"question": "q", "answer": "1"}) + "\n")
    assert main(["eval", "math", "--data", str(p), "--protocol", "boxed", "--out", str(out)]) == 2
    assert "no field 'response'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["eval", "math", "--data", str(p), "--protocol", "gsm9k"])


def test_cli_pope(tmp_path):
    q = tmp_path / "q.jsonl"
    a = tmp_path / "a.jsonl"
    q.write_text("".join(json.dumps({"question_id": i, "label": lab, "category": "random"}) + "\n"
                         for i, lab in enumerate(["yes", "no", "yes", "no"])))
    a.write_text("".join(json.dumps({"question_id": i, "text": t}) + "\n"
                         for i, t in enumerate(["Yes", "No", "No", "No"])))
    out = tmp_path / "pope.json"
    assert main(["eval", "pope", "--questions", str(q), "--answers", str(a), "--out", str(out)]) == 0
    m = json.loads(out.read_text())["metrics"]
    assert m["accuracy"] == 0.75 and m["precision"] == 1.0 and m["recall"] == 0.5 and m["yes_ratio"] == 0.25
    assert m["split/random/f1"] == pytest.approx(2 / 3)


def test_cli_recon_palette(tmp_path):
    out = tmp_path / "r.json"
    assert main(["eval", "recon", "--n", "6", "--image-tokenizer", "palette", "--out", str(out),
                 "--images-dir", str(tmp_path)]) == 0
    rep = json.loads(out.read_text())
    assert rep["n"] == 6 and rep["metrics"]["psnr"] > 10 and rep["metrics"]["mse"] > 0
    assert Image.open(tmp_path / "reconstructions.png").size[0] > 64


def test_cli_generation_and_mmu_with_a_checkpoint(tiny_ckpt, tmp_path):
    """The model-driven paths run end to end (an untrained model: only the plumbing is judged)."""
    out = tmp_path / "t2i.json"
    assert main(["eval", "t2i", "--checkpoint", str(tiny_ckpt), "--data", "builtin:shapes", "--n", "6",
                 "--steps", "4", "--device", "cpu", "--out", str(out), "--images-dir", str(tmp_path),
                 "--samples-out", str(tmp_path / "t2i.jsonl")]) == 0
    rep = json.loads(out.read_text())
    assert rep["source"] == "model" and rep["sampler"]["steps"] == 4 and rep["n"] == 6
    rows = [json.loads(x) for x in (tmp_path / "t2i.jsonl").read_text().splitlines()]
    recs = generate_shapes(6, seed=0)
    assert [r["id"] for r in rows] == [r["id"] for r in recs]  # the records' own ids
    assert [r["caption"] for r in rows] == [r["caption"] for r in recs]  # scored from metadata, caption kept
    assert rep["model"]["version"].startswith("sha256:") and 0.0 <= rep["metrics"]["overall"] <= 1.0
    assert (tmp_path / "generated_grid.png").is_file()
    out = tmp_path / "mmu.json"
    assert main(["eval", "mmu", "--checkpoint", str(tiny_ckpt), "--data", "builtin:shapes", "--n", "2",
                 "--steps", "4", "--gen-length", "4", "--block-length", "4", "--device", "cpu",
                 "--out", str(out), "--samples-out", str(tmp_path / "mmu.jsonl")]) == 0
    rep = json.loads(out.read_text())
    assert rep["suite"] == "mmu" and rep["n"] >= 6 and rep["details"]["image_tokenizer"] == "palette"
    rows = [json.loads(x) for x in (tmp_path / "mmu.jsonl").read_text().splitlines()]
    assert all(isinstance(r["prediction"], str) for r in rows)


def test_load_records_reads_webdataset_shards_and_names_bad_lines(tmp_path):
    import io
    import tarfile

    from mmada.errors import MMaDAError
    from mmada.eval.runners import load_records

    recs = generate_shapes(3, seed=9)
    with tarfile.open(tmp_path / "shard-000000.tar", "w") as tf:
        for i, r in enumerate(recs):
            members = {"json": json.dumps({"caption": r["caption"], "metadata": r["metadata"]}).encode()}
            buf = io.BytesIO()
            r["image"].save(buf, format="PNG")
            members["png"] = buf.getvalue()
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{i:06d}.{ext}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    got = load_records(str(tmp_path))  # a directory of shards
    assert [g["caption"] for g in got] == [r["caption"] for r in recs]
    from mmada.eval import score_shapes_image

    assert all(score_shapes_image(g["image"], g["metadata"])["correct"] for g in got)
    (tmp_path / "bad.jsonl").write_text('{"a": 1}\n{oops\n')
    with pytest.raises(MMaDAError, match=r"bad\.jsonl:2: invalid JSON"):
        load_records(str(tmp_path / "bad.jsonl"))
    with pytest.raises(MMaDAError, match="unknown built-in dataset"):
        load_records("builtin:nope")


def test_fast_sampler_settings_are_used_and_reported(tiny_ckpt, tmp_path):
    """--cache/--threshold reach the sampler and the report says which produced the numbers."""
    reports = {}
    for name, extra in {"plain": [], "fast": ["--cache", "prefix", "--threshold", "0.9"]}.items():
        out = tmp_path / f"{name}.json"
        assert main(["eval", "mmu", "--checkpoint", str(tiny_ckpt), "--data", "builtin:shapes", "--n", "2",
                     "--steps", "4", "--gen-length", "4", "--block-length", "4", "--device", "cpu",
                     "--out", str(out), *extra]) == 0
        reports[name] = json.loads(out.read_text())
    assert reports["plain"]["sampler"]["cache"] == "none" and reports["plain"]["sampler"]["threshold"] is None
    assert reports["plain"]["sampler"]["prompt_cache"] == "per_block"
    assert reports["fast"]["sampler"]["cache"] == "prefix" and reports["fast"]["sampler"]["threshold"] == 0.9
    assert reports["fast"]["sampler"]["prompt_cache"] == "once"  # MMU with a cache: the image prefix encoded once
    assert reports["fast"]["n"] == reports["plain"]["n"]
    with pytest.raises(SystemExit):
        main(["eval", "mmu", "--cache", "triple"])


def test_image_grid_tiles_and_labels():
    red, blue = Image.new("RGB", (8, 8), (255, 0, 0)), Image.new("RGB", (4, 4), (0, 0, 255))
    grid = image_grid([red, blue, red], ncol=2, scale=2)  # every tile takes the first one's size × scale
    assert grid.size == (2 * (16 + 2) + 2, 2 * (16 + 2) + 2)
    assert grid.getpixel((2, 2)) == (255, 0, 0) and grid.getpixel((2 + 18, 2)) == (0, 0, 255)
    assert grid.getpixel((2 + 18, 2 + 18)) == (64, 64, 64)  # the empty fourth cell
    labelled = image_grid([red, blue, red], ncol=2, scale=2, labels=["0.50", "1.00", "0.00"])
    assert labelled.size == (grid.size[0], grid.size[1] + 2 * 12)  # a label row under each tile row
    assert any(sum(labelled.getpixel((x, 2 + 16 + y))) > 400 for x in range(2, 18) for y in range(12))  # text drawn
    with pytest.raises(MMaDAError, match="2 labels for 3 images"):
        image_grid([red, blue, red], labels=["a", "b"])
