"""The launchers and their watcher: a real local subprocess, the sbatch path (fake ``sbatch`` on PATH), cancel.

The fake ``sbatch`` (tests/conftest.py) records its arguments and runs the generated batch script
locally, so the script, the submission flags, log following and exit-status handling are real.
"""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

from mmada.pipeline.launch import LaunchError, LaunchOperator, LaunchSpec, launch, local_argv, sbatch_script


def failing_python(tmp_path: Path, status: int = 3) -> str:
    """An interpreter stand-in that prints what it was asked to run and exits with ``status``."""
    exe = tmp_path / "python-fails"
    exe.write_text(f'#!/bin/bash\necho "running $*"\necho "Traceback: boom" >&2\nexit {status}\n')
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    return str(exe)


def test_local_launch_streams_output_and_polls(tmp_path):
    lines, polls = [], []
    res = launch(LaunchSpec(poll_seconds=0.2), ["--help"], workdir=tmp_path / "w", job_name="j",
                 on_line=lines.append, poll=lambda: polls.append(1))
    assert res.returncode == 0 and any(ln.startswith("usage: mmada") for ln in lines)
    assert "pipeline" in "\n".join(res.lines) and polls  # the final poll always happens
    with pytest.raises(LaunchError) as e:
        launch(LaunchSpec(), ["train", "c.yaml"], workdir=tmp_path / "w", job_name="j",
               operator=LaunchOperator(python=failing_python(tmp_path)))
    assert "`mmada train c.yaml` exited with status 3" in str(e.value)
    assert "running -m mmada train c.yaml" in str(e.value) and "Traceback: boom" in str(e.value)


def test_interrupting_the_watcher_kills_the_job(tmp_path):
    fake_python = tmp_path / "python"
    fake_python.write_text(f'#!/bin/bash\necho "$$" > {tmp_path}/pid\necho started\nexec sleep 300\n')
    fake_python.chmod(fake_python.stat().st_mode | stat.S_IXUSR)
    seen: list[str] = []

    def poll() -> None:
        if "started" in seen:
            raise KeyboardInterrupt

    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        launch(LaunchSpec(poll_seconds=0.2), ["train", "x.yaml"], workdir=tmp_path, job_name="j",
               on_line=seen.append, poll=poll, operator=LaunchOperator(python=str(fake_python)))
    pid = int((tmp_path / "pid").read_text())
    assert time.monotonic() - t0 < 60
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_command_builders():
    spec = LaunchSpec(kind="torchrun", procs_per_node=4)
    assert local_argv(spec, ["train", "c.yaml"], LaunchOperator(python="/venv/bin/python")) == [
        "/venv/bin/python", "-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc-per-node", "4",
        "-m", "mmada", "train", "c.yaml"]
    assert local_argv(LaunchSpec(), ["train", "c.yaml"], LaunchOperator(python="py")) == [
        "py", "-m", "mmada", "train", "c.yaml"]
    assert spec.world() == (1, 4) and LaunchSpec(kind="sbatch", nodes=4, procs_per_node=8).world() == (4, 8)
    multi = LaunchSpec(kind="sbatch", nodes=4, procs_per_node=8, partition="gpu", gres="gpu:8", cpus_per_task=96,
                       time_limit="2-00:00:00")
    operator = LaunchOperator.from_env({"MMADA_LAUNCH_PYTHON": "python", "MMADA_SBATCH_ARGS": "--qos=high",
                                        "MMADA_LAUNCH_SETUP": "module load cuda\nsource .venv/bin/activate\n"})
    assert operator.setup == ("module load cuda", "source .venv/bin/activate")
    text = sbatch_script(multi, ["train", "/shared/cfg.yaml"], job_name="mmada-sft", log_path=Path("/l/j.log"),
                         workdir=Path("/proj"), env={"MLFLOW_RUN_ID": "abc", "MLFLOW_TRACKING_URI": "http://mlflow:5000"},
                         operator=operator)
    for line in ["#SBATCH --nodes=4", "#SBATCH --ntasks-per-node=1", "#SBATCH --gres=gpu:8",
                 "#SBATCH --partition=gpu", "#SBATCH --time=2-00:00:00", "#SBATCH --output=/l/j.log",
                 "#SBATCH --chdir=/proj", "#SBATCH --qos=high", "#SBATCH --cpus-per-task=96", "module load cuda",
                 "export MLFLOW_RUN_ID=abc", "export MLFLOW_TRACKING_URI=http://mlflow:5000",
                 'srun python -m torch.distributed.run --nnodes 4 --nproc-per-node 8 --rdzv-id "$SLURM_JOB_ID" '
                 '--rdzv-backend c10d --rdzv-endpoint "$head_node:29500" -m mmada train /shared/cfg.yaml']:
        assert line in text.splitlines(), line
    single = sbatch_script(LaunchSpec(kind="sbatch"), ["train", "c.yaml"], job_name="j",
                           log_path=Path("l"), workdir=Path("."), operator=LaunchOperator(python="python"))
    assert single.splitlines()[-1] == "srun python -m mmada train c.yaml"
    with pytest.raises(ValueError):
        LaunchSpec(time_limit="tomorrow")


def test_sbatch_path_with_a_fake_sbatch(tmp_path, fake_slurm, monkeypatch):
    monkeypatch.setenv("PATH", f"{fake_slurm}{os.pathsep}{os.environ['PATH']}")
    lines: list[str] = []
    spec = LaunchSpec(kind="sbatch", partition="debug", poll_seconds=0.3)
    monkeypatch.setenv("MMADA_LAUNCH_SETUP", "echo setup-ran")  # the operator's setting
    res = launch(spec, ["--help"], workdir=tmp_path / "w", job_name="mmada-test", env={"MMADA_X": "1"},
                 on_line=lines.append)
    assert res.returncode == 0 and res.job_id and res.job_id.isdigit()
    assert "setup-ran" in lines and any(ln.startswith("usage: mmada") for ln in lines)
    calls = (fake_slurm / "calls.log").read_text().splitlines()
    assert any(c.startswith("--parsable --wait ") and c.endswith("mmada-test.sbatch") for c in calls)
    assert any(c.startswith("srun ") and c.endswith("-m mmada --help") for c in calls)
    script = (tmp_path / "w" / "mmada-test.sbatch").read_text()
    assert "#SBATCH --partition=debug" in script and "export MMADA_X=1" in script
    monkeypatch.setenv("MMADA_LAUNCH_PYTHON", failing_python(tmp_path))
    with pytest.raises(LaunchError) as e:
        launch(spec, ["train", "c.yaml"], workdir=tmp_path / "w", job_name="mmada-bad")
    assert "SLURM job" in str(e.value) and "failed with status 3" in str(e.value)
    assert "Traceback: boom" in str(e.value) and "mmada-bad.log" in str(e.value)


def test_sbatch_missing_says_where_to_run(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(LaunchError, match="`sbatch` is not on PATH: run this on a SLURM login node"):
        launch(LaunchSpec(kind="sbatch"), ["--help"], workdir=tmp_path / "w", job_name="j")


def test_sigterm_to_the_watcher_stops_the_job(tmp_path):
    """`kill` of a stage process (or DVC stopping it) must not orphan the training job it launched."""
    import signal
    import subprocess
    import sys

    fake_python = tmp_path / "python"
    fake_python.write_text(f'#!/bin/bash\necho "$$" > {tmp_path}/pid\nexec sleep 300\n')
    fake_python.chmod(fake_python.stat().st_mode | stat.S_IXUSR)
    script = ("import sys; from pathlib import Path; from mmada.pipeline.launch import LaunchOperator, LaunchSpec, launch\n"
              f"launch(LaunchSpec(), ['train', 'c.yaml'], workdir=Path({str(tmp_path)!r}), job_name='j',"
              f" operator=LaunchOperator(python={str(fake_python)!r}))\n")
    watcher = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (tmp_path / "pid").is_file():
        assert time.monotonic() < deadline and watcher.poll() is None
        time.sleep(0.1)
    watcher.send_signal(signal.SIGTERM)
    assert watcher.wait(60) != 0 and "JobCancelled" in watcher.stderr.read()
    with pytest.raises(ProcessLookupError):
        os.kill(int((tmp_path / "pid").read_text()), 0)


def test_a_training_job_without_its_result_file_fails_the_stage(tmp_path, monkeypatch):
    """A job that exits 0 but wrote no (valid) result file is a failure naming the stage and the file."""
    import io

    from mlflow import MlflowClient

    from mmada.pipeline.context import StageContext, StageOutputs
    from mmada.pipeline.report import ConsoleReporter
    from mmada.pipeline.train import run_train
    from mmada.training.config import load_train_config
    from tests.test_pipeline_support import REPO

    monkeypatch.chdir(tmp_path)
    exe = tmp_path / "python-ok"
    exe.write_text('#!/bin/bash\necho "running $*"\nexit 0\n')  # e.g. a rank that died after a clean exit code
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ctx = StageContext(ConsoleReporter("pretrain", stream=io.StringIO()), outputs=StageOutputs(str(tmp_path / "out")),
                       launch=LaunchSpec(poll_seconds=0.2), tracking_uri=uri, operator=LaunchOperator(python=str(exe)))
    cfg = load_train_config(REPO / "configs/train/tiny_pretrain.yaml")
    with pytest.raises(LaunchError) as e:
        run_train(cfg, ctx, stage="pretrain")
    assert "stage 'pretrain': `mmada train` exited 0 without its result:" in str(e.value)
    assert "result.json: no training result file" in str(e.value)
    exe.write_text('#!/bin/bash\nfor a; do last=$a; done\necho \'{"global_step": "many"}\' > "$last"\n')
    with pytest.raises(LaunchError, match=r"result\.json: not a training result: global_step: Input should be a valid "
                                          "integer"):
        run_train(cfg, ctx, stage="pretrain")
    c = MlflowClient(uri)
    runs = c.search_runs([c.get_experiment_by_name("mmada-pretrain").experiment_id])
    assert [r.info.status for r in runs] == ["FAILED", "FAILED"]
    assert not (tmp_path / "out" / "models").exists() and not (tmp_path / "out" / "metrics").exists()
