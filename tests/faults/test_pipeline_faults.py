"""Faults of the pipeline and its flows (issue 17, row 5, and kill -9 at the stage boundaries of ``mmada pipeline``).

Real processes throughout: ``mmada pipeline`` (→ ``dvc repro`` → each stage → its training job) in a fresh
clone of the project with the tiny params, a real MLflow SQLite store, the real Prefect test server. A
crash is ``kill -9`` of every process of the pipeline's tree at an exact line of the real code: the
injection (``tests/faults/inject/sitecustomize.py``) stops the process that reaches it, the test kills
the whole tree while it stands still there.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from mlflow import MlflowClient

from tests.test_pipeline_support import REPO, dvc, env_for, make_clone

INJECT = Path(__file__).resolve().parent / "inject"


# ------------------------------------------------------------------------------------------------
# row 5: what a UI / API caller may choose is data, never a program; a failed flow fails its MLflow run


@pytest.fixture
def train_config() -> dict:
    from mmada.training.config import load_train_config

    return load_train_config(REPO / "configs/train/tiny_pretrain.yaml").model_dump(mode="json")


def test_a_program_as_a_launch_parameter_is_refused_by_the_api_and_by_the_flow(prefect_test_harness, train_config,
                                                                              tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.exceptions import PrefectHTTPStatusError

    from flows.stages import train_flow

    marker = tmp_path / "ran"
    program = tmp_path / "program"
    program.write_text(f"#!/bin/sh\ntouch {marker}\n")
    program.chmod(0o755)
    deployment_id = train_flow.to_deployment("fault-probe", parameters={"config": train_config}).apply()
    for key in ("python", "setup", "sbatch_args"):
        value = str(program) if key == "python" else [str(program)]
        with get_client(sync_client=True) as client, pytest.raises(PrefectHTTPStatusError) as refused:
            client.create_flow_run_from_deployment(deployment_id, parameters={"config": train_config,
                                                                               "launch": {key: value}})
        assert refused.value.response.status_code in (409, 422) and key in refused.value.response.text
    state = train_flow(config=train_config, launch={"python": str(program)}, return_state=True)
    assert state.is_failed() and "operator setting" in str(state.result(raise_on_failure=False))
    assert not marker.exists()


def test_a_failed_train_flow_ends_its_mlflow_run_failed(prefect_test_harness, train_config, tmp_path, monkeypatch):
    from flows.stages import train_flow

    failing = tmp_path / "python"  # the operator's interpreter, broken: the job dies at once
    failing.write_text("#!/bin/sh\necho 'Traceback: the node lost its GPU' >&2\nexit 3\n")
    failing.chmod(0o755)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MMADA_LAUNCH_PYTHON", str(failing))
    state = train_flow(config=train_config, return_state=True)
    assert state.is_failed()
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("mmada-pretrain").experiment_id])
    assert [r.info.status for r in runs] == ["FAILED"]


# ------------------------------------------------------------------------------------------------
# kill -9 at the stage boundaries of `mmada pipeline`, then the pipeline again: it finishes, nothing twice


def kill_tree_at(clone: Path, where: str, argv: str, log: Path, timeout: float = 600) -> None:
    """Run ``mmada pipeline`` until a process whose command line holds ``argv`` returns from ``where``
    (``module:function``), then kill -9 every process of the pipeline's tree."""
    marker = clone.parent / "fault.json"
    marker.unlink(missing_ok=True)
    env = env_for(clone, PYTHONPATH=os.pathsep.join([str(INJECT), os.environ.get("PYTHONPATH", "")]),
                  MMADA_FAULT_AFTER=where, MMADA_FAULT_ARGV=argv, MMADA_FAULT_ACTION="stop",
                  MMADA_FAULT_MARKER=str(marker))
    with log.open("a") as out:
        proc = subprocess.Popen([sys.executable, "-m", "mmada", "pipeline"], cwd=clone, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + timeout
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)] if proc.poll() is None else []
    for p in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    proc.wait(timeout=60)
    # DVC's rwlock names the killed `dvc repro`: the next repro starts only once that pid is gone (reaped)
    deadline = time.monotonic() + 60
    while any(p.is_running() for p in tree) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert marker.exists(), f"never reached {where} in {argv!r}:\n{log.read_text()[-4000:]}"
    assert proc.returncode == -9


@pytest.mark.slow
def test_kill_at_stage_boundaries_then_the_pipeline_finishes_with_nothing_twice(tmp_path):
    clone = make_clone(tmp_path / "clone")
    log = tmp_path / "pipeline.log"
    # 1. a stage's outputs are written but DVC has not recorded them (prepare: the first dataset curated)
    kill_tree_at(clone, "mmada.pipeline.prepare:run_curate", "stage curate-", log)
    # 2. the new model version's registry row is written, its alias is not (pretraining's job)
    kill_tree_at(clone, "mlflow.tracking.client:MlflowClient.create_model_version", "/work/pretrain/", log)
    # 3. evaluation is half-way: one suite's MLflow run is logged, the stage's outputs are not written
    kill_tree_at(clone, "mmada.eval.report:log_report", "stage evaluate", log)
    run = dvc(clone, "repro")  # what a user runs after a crash
    assert run.returncode == 0
    assert "Data and pipelines are up to date" in dvc(clone, "status").stdout

    uri = f"sqlite:///{clone / 'runs' / 'mlflow.db'}"
    client = MlflowClient(uri)
    versions = client.search_model_versions("name = 'mmada-tiny'")
    per_stage = collections.Counter(v.tags.get("pipeline.stage") for v in versions)
    assert per_stage == {"pretrain": 1, "sft": 1, "grpo": 1}, per_stage
    for stage in ("pretrain", "sft", "grpo"):
        mv = client.get_model_version_by_alias("mmada-tiny", stage)
        assert mv.tags["pipeline.stage"] == stage
        ref = json.loads((clone / "runs" / "pipeline" / "models" / f"{stage}.json").read_text())
        assert ref["version"] == str(mv.version)
        runs = client.search_runs([client.get_experiment_by_name(f"mmada-{stage}").experiment_id])
        assert [r.info.status for r in runs] == ["FINISHED"], (stage, [r.info.status for r in runs])
    evals = client.search_runs([client.get_experiment_by_name("mmada-eval").experiment_id])
    names = collections.Counter(r.info.run_name for r in evals)
    assert names and all(n == 1 for n in names.values()), names
    assert {r.info.status for r in evals} == {"FINISHED"}
