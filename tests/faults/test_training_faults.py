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

