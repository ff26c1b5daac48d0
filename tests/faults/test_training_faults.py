"""Faults of training, the registry and the commands that load models (issue 17, rows 2-4, 9-11).

Real tiny trainings (a 1-layer model, a handful of steps, CPU) on the curated test shards, a real
MLflow SQLite store, the real ``mmada`` command. A crash "at a bad moment" is a real ``kill -9`` at
that line of the real code (``tests/faults/inject/sitecustomize.py``).
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from mlflow import MlflowClient

from mmada.training import load_train_config, train
from mmada.training.vq import tiny, train_tokenizer
from tests.test_training_support import (
    curated_data,
    fresh_mlflow_uri,
    one_thread,
    subprocess_env,
    tiny_config,
)

REPO = Path(__file__).resolve().parents[2]
INJECT = Path(__file__).resolve().parent / "inject"

_one_thread = pytest.fixture(autouse=True, scope="module")(one_thread)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return curated_data(tmp_path_factory)


@pytest.fixture
def uri(tmp_path_factory, tmp_path):
    return fresh_mlflow_uri(tmp_path_factory, tmp_path / "mlflow")


def versions(uri: str, name: str) -> list[str]:
    return sorted((str(v.version) for v in MlflowClient(uri).search_model_versions(f"name = '{name}'")), key=int)


def truncate(path: Path) -> None:
    """What a full disk (or a power cut after an unsynced rename) leaves: the first half of the file."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


class Evil:
    """A pickle that runs code when loaded (it would create ``marker``)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def write_config(cfg: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


# ------------------------------------------------------------------------------------------------
# row 2: a truncated checkpoint


def test_truncated_last_checkpoint_resumes_from_the_newest_that_loads(data, uri, tmp_path, caplog):
    out = tmp_path / "run"
    cfg = tiny_config(data, out, uri, steps=4, data={"val_batches": 0, "trace_keys": True},
                      checkpoint={"every_n_steps": 2, "keep_last": 2})
    assert train(load_train_config(cfg)).global_step == 4
    ckpts = out / "checkpoints"
    assert sorted(p.name for p in ckpts.glob("*.ckpt")) == ["last.ckpt", "step00000002.ckpt", "step00000004.ckpt"]
    truncate(ckpts / "last.ckpt")
    marker = tmp_path / "pickle-ran"
    with open(ckpts / "step00000009.ckpt", "wb") as f:  # newest by name, and hostile
        pickle.dump({"global_step": 9, "state_dict": Evil(marker)}, f)

    longer = {**cfg, "trainer": {**cfg["trainer"], "max_steps": 6}}
    with caplog.at_level(logging.WARNING, logger="mmada.training"):
        result = train(load_train_config(longer))
    assert result.global_step == 6 and not marker.exists()
    trace = json.loads((out / "data_trace" / "rank0.json").read_text())
    assert len(trace["batches"]) == 2  # resumed at step 4: trained steps 5 and 6 only
    said = caplog.text
    assert "last.ckpt" in said and "step00000009.ckpt" in said and "skipped" in said
    assert "resuming from" in said and "step00000004.ckpt" in said

    for p in ckpts.glob("*.ckpt"):  # nothing loads any more: a fresh start that says so
        truncate(p)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mmada.training"):
        again = train(load_train_config(longer))
    assert again.global_step == 6
    assert len(json.loads((out / "data_trace" / "rank0.json").read_text())["batches"]) == 6
    assert "no checkpoint" in caplog.text and "starting from scratch" in caplog.text
    assert torch.load(ckpts / "last.ckpt", weights_only=True)["global_step"] == 6


def test_truncated_tokenizer_checkpoint_resumes_from_the_newest_that_loads(uri, tmp_path, caplog):
    from mmada.config import load_config
    from mmada.training.vq import VQTrainConfig

    def cfg(steps: int) -> VQTrainConfig:
        return load_config(VQTrainConfig, tiny(), [
            f"trainer.max_steps={steps}", "trainer.val_every_n_steps=100", "trainer.log_every_n_steps=1",
            "data.num_train=64", "data.num_val=8", "data.batch_size=8", "checkpoint.every_n_steps=2",
            "checkpoint.keep_last=2", "grid_images=1", f"output_dir={tmp_path / 'vq'}", f"tracking.uri={uri}",
            "tracking.log_system_metrics=false"])

    first = train_tokenizer(cfg(4))
    assert first.global_step == 4
    ckpts = tmp_path / "vq" / "checkpoints"
    truncate(ckpts / "last.ckpt")
    with caplog.at_level(logging.WARNING, logger="mmada.training"):
        result = train_tokenizer(cfg(6))
    assert result.global_step == 6 and result.run_id == first.run_id  # resumed: the same MLflow run went on
    assert "last.ckpt" in caplog.text and "resuming from" in caplog.text and "step00000004.ckpt" in caplog.text


# ------------------------------------------------------------------------------------------------
# rows 3 and 4: registering is idempotent per run


def test_kill_between_registry_row_and_alias_is_repaired_without_a_second_version(data, uri, tmp_path):
    """kill -9 right after the new version's registry row is written (before its alias), then the same
    command again: the version of this run gets its alias, no second version appears."""
    cfg = tiny_config(data, tmp_path / "run", uri, steps=2, checkpoint={"every_n_steps": 2})
    path = write_config(cfg, tmp_path / "run.yaml")
    cmd = [sys.executable, "-m", "mmada", "train", str(path)]
    fault = {"PYTHONPATH": os.pathsep.join([str(INJECT), os.environ.get("PYTHONPATH", "")]),
             "MMADA_FAULT_AFTER": "mlflow.tracking.client:MlflowClient.create_model_version",
             "MMADA_FAULT_ACTION": "kill"}
    killed = subprocess.run(cmd, cwd=REPO, env={**subprocess_env(), **fault}, capture_output=True, text=True,
                            timeout=600)
    assert killed.returncode == -9, killed.stderr[-3000:]
    client = MlflowClient(uri)
    assert versions(uri, "mmada-test") == ["1"]
    assert not client.get_registered_model("mmada-test").aliases  # killed before the alias

    again = subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    summary = json.loads(again.stdout.strip().splitlines()[-1])
    assert summary["model_version"] == "1" and summary["global_step"] == 2
    assert versions(uri, "mmada-test") == ["1"]
    mv = client.get_model_version_by_alias("mmada-test", "pretrain")
    assert str(mv.version) == "1" and mv.run_id == summary["run_id"]
    runs = client.search_runs([client.get_experiment_by_name("mmada-pretrain").experiment_id])
    assert [r.info.status for r in runs] == ["FINISHED"]  # one run: the rerun finished the killed one


def test_rerun_of_a_finished_run_reports_its_version_without_registering_again(data, uri, tmp_path):
    cfg = load_train_config(tiny_config(data, tmp_path / "run", uri, steps=2, checkpoint={"every_n_steps": 2},
                                        data={"trace_keys": True}))
    first = train(cfg)
    assert first.model_version == "1"
    loss_points = len(MlflowClient(uri).get_metric_history(first.run_id, "train/loss"))
    again = train(cfg)
    assert (again.model_version, again.registered_model, again.run_id) == ("1", "mmada-test", first.run_id)
    assert again.export_dir == first.export_dir and (again.export_dir / "model.safetensors").is_file()
    assert again.global_step == 2 and again.metrics == first.metrics  # what the finished run reported
    assert versions(uri, "mmada-test") == ["1"]
    client = MlflowClient(uri)
    assert str(client.get_model_version_by_alias("mmada-test", "pretrain").version) == "1"
    assert client.get_run(first.run_id).info.status == "FINISHED"
    assert len(client.get_metric_history(first.run_id, "train/loss")) == loss_points  # nothing trained again


# ------------------------------------------------------------------------------------------------
# rows 9-11 and the bounds of a form: bad input is one line naming the value, rc 2, no traceback


def mmada(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mmada", *args], cwd=REPO, env={**subprocess_env(), **(env or {})},
                          capture_output=True, text=True, timeout=300)


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    """The error, asserted to be one line (the last of stderr, after progress and info lines), rc 2, no traceback."""
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert [ln for ln in lines if "error" in ln.lower()] == lines[-1:], proc.stderr[-3000:]
    return lines[-1]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny model directory as ``save_pretrained`` writes it, with the built-in tokenizer."""
    from mmada.models import MMaDAConfig, MMaDAModelLM
    from mmada.tokenization import load_text_tokenizer

    d = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    MMaDAModelLM(MMaDAConfig.from_preset("tiny", n_layers=1, d_model=64, n_heads=2, n_kv_heads=2,
                                         mlp_hidden_size=128, num_vq_tokens=16)).save_pretrained(d)
    load_text_tokenizer("builtin").save_pretrained(d)
    return d


def in_process(capsys, *args: str) -> tuple[int, str]:
    """``mmada ARGS`` in this process (what ``python -m mmada`` runs): exit status and stderr."""
    from mmada.cli import main

    try:
        rc = main(list(args))
    except SystemExit as exc:  # argparse's usage errors
        rc = exc.code
    return rc, capsys.readouterr().err


@pytest.mark.parametrize("value", ["0", "-5", "2"])
def test_t2i_caption_budget_that_drops_the_caption_is_refused(checkpoint, value, capsys):
    """0 silently dropped every caption (two prompts, identical images); -5 was a RuntimeError traceback."""
    rc, err = in_process(capsys, "t2i", str(checkpoint), "--prompt", "a red circle", "--steps", "2",
                         "--max-text-len", value)
    assert rc == 2 and err.count("\n") == 1 and "--max-text-len" in err and repr(value) in err, err


def test_t2i_caption_budget_beyond_the_model_is_refused(checkpoint):
    err = one_line_error(mmada("t2i", str(checkpoint), "--prompt", "a red circle", "--steps", "2",
                               "--max-text-len", "100000"))
    assert "max_text_len=100000" in err and "max_sequence_length" in err


def test_malicious_pickle_weights_are_refused_in_one_line_and_never_run(checkpoint, tmp_path):
    evil = tmp_path / "evil"
    shutil.copytree(checkpoint, evil)
    (evil / "model.safetensors").unlink()
    marker = tmp_path / "pickle-ran"
    torch.save({"model.transformer.wte.weight": Evil(marker)}, evil / "pytorch_model.bin")
    for cmd in (["t2i", str(evil), "--prompt", "x"], ["generate", str(evil), "--prompt", "x"]):
        err = one_line_error(mmada(*cmd))
        assert str(evil) in err and "refused its pickled weights" in err and "safetensors" in err
    assert not marker.exists()
    debug = mmada("--debug", "t2i", str(evil), "--prompt", "x")  # the traceback on request
    assert debug.returncode == 2 and "Traceback" in debug.stderr and "WeightsError" in debug.stderr
    assert not marker.exists()


@pytest.fixture
def probe_module(tmp_path):
    """An importable module that records being imported (what 'any installed module' could do)."""
    marker = tmp_path / "imported"
    (tmp_path / "fault_probe.py").write_text(f"from pathlib import Path\nPath({str(marker)!r}).touch()\n")
    return {"PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])}, marker


def test_reward_module_named_by_a_config_is_not_imported_unless_the_operator_allows_it(probe_module):
    env, marker = probe_module
    args = ["train", "configs/train/tiny_grpo.yaml", "--set", 'grpo.reward_funcs=["fault_probe:reward"]',
            "--print-config"]
    err = one_line_error(mmada(*args, env=env))
    assert "grpo.reward_funcs" in err and "'fault_probe' is not allowed" in err and "MMADA_ALLOW_REWARD_MODULES" in err
    assert not marker.exists()  # never imported
    err = one_line_error(mmada(*args, env={**env, "MMADA_ALLOW_REWARD_MODULES": "fault_probe"}))
    assert marker.exists() and "grpo.reward_funcs" in err and "cannot be imported" in err  # allowed: imported


@pytest.mark.parametrize("field", ["trainer.max_steps", "checkpoint.every_n_steps", "optim.warmup_steps",
                                   "grpo.num_generations"])
def test_absurd_counts_are_refused_naming_the_field(field):
    from mmada.errors import ConfigError
    from mmada.pipeline.params import PipelineParams, load_params
    from mmada.training.config import load_train_config

    with pytest.raises(ConfigError, match=rf"{field}: Input should be less than or equal to"):
        load_train_config(REPO / "configs/train/tiny_grpo.yaml", [f"{field}={10**12}"])
    d = load_params(REPO / "params.yaml", root=REPO).model_dump(mode="json")  # the pipeline form the UI shows
    section, key = field.split(".")
    with pytest.raises(ValueError, match="less than or equal to"):
        PipelineParams.model_validate({**d, "grpo": {**d["grpo"], section: {**d["grpo"][section], key: 10**12}}})
    if field == "trainer.max_steps":  # the command says it in one line
        err = one_line_error(mmada("train", "configs/train/tiny_grpo.yaml", "--set", f"{field}={10**12}",
                                   "--print-config"))
        assert field in err
