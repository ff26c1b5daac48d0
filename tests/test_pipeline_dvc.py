"""`mmada pipeline` / `dvc repro` on a fresh clone, for real: tiny params, CPU, seconds per stage.

The session fixture ``tiny_project`` (tests/conftest.py) clones the project into a temp git repo
and runs ``mmada pipeline`` once. These tests then check its outputs, that a second ``dvc repro``
does nothing, that editing a config file params.yaml names or ``dvc exp run -S <training param>``
re-runs exactly that stage and those after it, the evaluate stage, ``dvc metrics show`` /
``dvc plots show`` and the MLflow lineage.
"""

from __future__ import annotations

import csv
import json
import re

import yaml
from mlflow import MlflowClient

from mmada.pipeline import stages as S
from tests.test_pipeline_support import dvc, mmada


def ran_stages(output: str) -> list[str]:
    return re.findall(r"Running stage '([^']+)'", output)


def client(clone) -> MlflowClient:
    return MlflowClient(f"sqlite:///{clone / 'runs' / 'mlflow.db'}")


def test_pipeline_runs_end_to_end(tiny_project):
    clone, out = tiny_project
    assert ran_stages(out) == list(S.STAGE_NAMES)
    # progress lines from the launched jobs, then the summary
    assert re.search(r"\[pretrain\] +100% registered mmada-tiny version 1 \(@pretrain\)", out), out[-3000:]
    assert "[vq] MLflow run: http://127.0.0.1:5000/#/experiments/" in out
    assert "mmada pipeline summary" in out and "runs/data/arithmetic" in out
    assert "mmada-tiny: v1 @pretrain, v2 @sft" in out
    assert "Open the UIs:  make ui" in out
    for name in S.DATASETS:
        m = json.loads((clone / S.data_dir(name) / "manifest.json").read_text())
        assert m["counts"]["kept"] > 0 and m["tokenizer"] == S.TOKENIZER_DIR
    assert (clone / S.TOKENIZER_DIR / "tokenizer.json").is_file()
    assert (clone / S.VQ_DIR / "model.safetensors").is_file()
    c = client(clone)
    for stage, version in (("pretrain", "1"), ("sft", "2")):
        ref = json.loads((clone / S.model_ref(stage)).read_text())
        assert ref["version"] == version and ref["model_uri"] == f"models:/mmada-tiny/{version}"
        mv = c.get_model_version("mmada-tiny", version)
        assert mv.run_id == ref["run_id"] and mv.tags["pipeline.stage"] == stage
        # lineage: data manifests, the git revision, the DVC params hash, the parent version
        assert mv.tags["data.lm.arithmetic" if stage == "pretrain" else "data.chat.arithmetic"] == \
            c.get_run(ref["run_id"]).data.tags["data.lm.arithmetic" if stage == "pretrain" else "data.chat.arithmetic"]
        assert mv.tags["pipeline.git_rev"] == mv.tags["git_commit"] and len(mv.tags["pipeline.params_sha256"]) == 64
        rows = list(csv.DictReader((clone / S.plot_file(stage)).open()))
        assert len(rows) == 4 and float(rows[-1]["train_loss"]) > 0
        assert json.loads((clone / S.metrics_file(stage)).read_text())["global_step"] == 4
    sft = json.loads((clone / S.model_ref("sft")).read_text())
    assert sft["init"] == "models:/mmada-tiny/1"  # pinned to the exact upstream version
    assert c.get_model_version("mmada-tiny", "2").tags["parent_model_version"] == "mmada-tiny/1"
    assert str(c.get_model_version_by_alias("mmada-tiny", "sft").version) == "2"


def test_second_repro_does_nothing(tiny_project):
    clone, _ = tiny_project
    r = dvc(clone, "repro")
    assert ran_stages(r.stdout) == [] and "Data and pipelines are up to date." in r.stdout


def test_the_config_file_params_yaml_names_is_a_dep(tiny_project):
    """Editing configs/train/tiny_sft.yaml re-runs sft (and what follows); its own params did not change."""
    clone, _ = tiny_project
    cfg = clone / "configs/train/tiny_sft.yaml"
    text = cfg.read_text()
    try:
        cfg.write_text(text.replace("min_lr_scale: 0.1", "min_lr_scale: 0.2"))
        status = dvc(clone, "status", "--json").stdout
        changed = json.loads(status[status.index("{"):])
        assert set(changed) == {"sft"}, changed
        assert {"changed deps": {"configs/train/tiny_sft.yaml": "modified"}} in changed["sft"]
    finally:
        cfg.write_text(text)
    assert "up to date" in dvc(clone, "status").stdout


def test_changing_a_training_param_reruns_that_stage_and_after(tiny_project):
    clone, _ = tiny_project
    # the last training stage: it and the stages after it re-run, nothing before it
    before = json.loads((clone / S.model_ref("grpo")).read_text())
    r = dvc(clone, "exp", "run", "-S", "grpo.optim.lr=0.002")
    assert ran_stages(r.stdout) == S.downstream_closure(["grpo"])
    assert "Stage 'pretrain' didn't change, skipping" in r.stdout
    ref = json.loads((clone / S.model_ref("grpo")).read_text())
    assert int(ref["version"]) > int(before["version"]) and ref["init"] == before["init"]
    assert client(clone).get_run(ref["run_id"]).data.params["optim.lr"] == "0.002"
    assert yaml.safe_load((clone / "params.yaml").read_text())["grpo"]["config"] == "configs/train/tiny_grpo.yaml"
    r = dvc(clone, "repro")
    assert ran_stages(r.stdout) == []


def test_evaluate_stage_and_dvc_metrics_plots(tiny_project):
    clone, _ = tiny_project
    ev = json.loads((clone / S.metrics_file("eval")).read_text())
    assert ev["model"].startswith("mmada-tiny/")
    assert set(ev) >= {"math", "mmu", "t2i", "recon"} and 0 <= ev["math"]["accuracy"] <= 1
    assert ev["recon"]["psnr"] > 0
    # evaluate.baseline=sft: the model UniGRPO started from, on the same problems
    sft = json.loads((clone / S.model_ref("sft")).read_text())
    assert ev["baseline"]["model"] == f"mmada-tiny/{sft['version']}" != ev["model"]
    assert set(ev["baseline"]) == {"model", "math", "mmu", "t2i"}
    assert ev["baseline"]["math"].keys() == ev["math"].keys()
    assert (clone / S.EVAL_DIR / "baseline" / "math_samples.jsonl").is_file()
    ed = clone / S.EVAL_DIR
    assert (ed / "images" / "generated_grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (ed / "images" / "reconstructions.png").is_file() and (ed / "math_samples.jsonl").is_file()
    assert not list((clone / S.PIPELINE_DIR).glob(".eval.*"))  # no temp folders left behind
    shown = dvc(clone, "metrics", "show", "--json").stdout
    data = json.loads(shown[shown.index("{"):])
    files = next(iter(data.values()))["data"]
    assert files[S.metrics_file("eval")]["data"]["math"]["accuracy"] == ev["math"]["accuracy"]
    assert files[S.metrics_file("pretrain")]["data"]["global_step"] == 4
    dvc(clone, "plots", "show", "-o", "plots-out")
    html = (clone / "plots-out" / "index.html").read_text()
    for stage in ("vq", "pretrain", "sft", "grpo"):  # one vega plot per curve
        assert f"vegaEmbed('#{S.plot_file(stage).replace('/', '_').replace('.', '_')}'" in html, stage
    summary = mmada(clone, "pipeline", "summary").stdout
    assert "Evaluation of mmada-tiny/" in summary and "generated_grid.png" in summary
    assert "baseline" in summary and "before UniGRPO" in summary


def test_grpo_stage_registered_with_reward_curve(tiny_project):
    clone, _ = tiny_project
    ref = json.loads((clone / S.model_ref("grpo")).read_text())
    assert ref["alias"] == "grpo" and ref["init"] == "models:/mmada-tiny/2"
    rows = list(csv.DictReader((clone / S.plot_file("grpo")).open()))
    assert rows and "reward" in rows[0]


def test_a_failing_training_job_leaves_nothing_behind(tiny_project, tmp_path):
    clone, _ = tiny_project
    p = yaml.safe_load((clone / "params.yaml").read_text())
    p["sft"]["data"]["streams"]["chat"]["manifests"] = ["runs/data/missing"]  # merged over the named config
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(p))
    out = tmp_path / "out"
    r = mmada(clone, "pipeline", "stage", "sft", "--params", str(tmp_path / "bad.yaml"), "--out-base", str(out),
              check=False)
    assert r.returncode == 2
    assert "error: `mmada train" in r.stderr and "exited with status" in r.stderr and "runs/data/missing" in r.stderr
    assert not (out / "models").exists() and not (out / "metrics").exists() and not (out / "plots").exists()
    c = client(clone)
    run = c.search_runs([c.get_experiment_by_name("mmada-sft").experiment_id], order_by=["attributes.start_time DESC"],
                        max_results=1)[0]
    assert run.info.status == "FAILED" and run.data.tags["pipeline.stage"] == "sft"
