"""Start a job outside the calling process and watch it: a local subprocess, ``torchrun``, or ``sbatch``.

Training never runs inside a Prefect flow process or a DVC stage wrapper (docs/pipeline.md):
the wrapper *launches* ``python -m mmada …`` and watches it. The watcher streams the job's output
(the subprocess's stdout, or the SLURM log file as it grows), calls ``poll()`` every
``poll_seconds`` so the caller can report progress (the pipeline reads the MLflow run the job
logs into), cancels the job if the watcher is interrupted (Ctrl-C, a cancelled flow run), and
raises :class:`LaunchError` with the job's last output lines on a non-zero exit.

    spec = LaunchSpec(kind="sbatch", nodes=2, procs_per_node=8, partition="gpu")
    result = launch(spec, ["train", "cfg.yaml"], workdir=Path("runs/pipeline/work/sft"), job_name="mmada-sft",
                    env={"MLFLOW_RUN_ID": run_id}, poll=report_progress)

What a job runs is not a run's parameter. :class:`LaunchSpec` (a flow form, ``--launch``) holds data:
where the job runs and how big it is. The programs (the interpreter on the nodes, shell lines run before
the job, extra ``sbatch`` options) are the operator's: :class:`LaunchOperator`, read from the environment
of the process that launches (the Prefect worker / ``mmada serve`` host, a shell), so nobody who can
only start a run (the UI, the API) can make the server run a program of their choosing:

    MMADA_LAUNCH_PYTHON=/opt/venv/bin/python            # default: the launching process's interpreter
    MMADA_LAUNCH_SETUP=$'module load cuda\nsource /opt/venv/bin/activate'   # sbatch: one shell line per line
    MMADA_SBATCH_ARGS='--qos=high --exclusive'          # sbatch: extra options (shell words)

SLURM layout (docs/pipeline.md; as in torchtitan's multinode_trainer.slurm): one task per node
(``--ntasks-per-node=1``), ``srun`` starts ``torchrun --nnodes N --nproc-per-node G`` on every node
with a c10d rendezvous on the first node, and ``trainer.num_nodes``/``trainer.devices`` are set from
the same numbers so they cannot disagree. ``sbatch --parsable --wait`` returns the job's exit status.
"""

from __future__ import annotations

import collections
import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from mmada.config import Strict
from mmada.errors import MMaDAError

TAIL_LINES = 60


class LaunchError(MMaDAError):
    """The launched job failed (non-zero exit, could not be submitted, or was cancelled)."""


# SLURM names (partition, account, gres): no spaces, quotes or newlines, so a value is one #SBATCH option.
_SLURM_WORD = r"^[A-Za-z0-9_.,:=+-]+$"

OPERATOR_SETTINGS = {"python": "MMADA_LAUNCH_PYTHON", "setup": "MMADA_LAUNCH_SETUP", "sbatch_args": "MMADA_SBATCH_ARGS"}
"""The launcher's programs: environment variables of the launching process, never run parameters."""


class LaunchSpec(Strict):
    """Where a training job runs and how big it is: a subprocess here, ``torchrun`` here, or a SLURM batch job.

    Data only; what the job executes is the operator's :class:`LaunchOperator`.
    """

    kind: Literal["local", "torchrun", "sbatch"] = Field(
        "local", description="local: one subprocess on this machine; torchrun: procs_per_node processes on this "
                             "machine; sbatch: a SLURM job on `nodes` nodes (run the flow on the login node).")
    nodes: int = Field(1, ge=1, le=4096, description="Nodes of the SLURM job (sbatch only).")
    procs_per_node: int = Field(1, ge=1, le=64, description="Processes (GPUs) per node; >1 starts them with torchrun.")
    partition: str | None = Field(None, pattern=_SLURM_WORD, description="SLURM partition (--partition).")
    account: str | None = Field(None, pattern=_SLURM_WORD, description="SLURM account (--account).")
    time_limit: str = Field("24:00:00", pattern=r"^(\d+-)?\d{1,3}(:\d{2}){0,2}$",
                            description="SLURM wall-clock limit, e.g. 24:00:00 or 2-00:00:00.")
    gres: str | None = Field(None, pattern=_SLURM_WORD, description="SLURM --gres per node, e.g. gpu:8 (none by default).")
    cpus_per_task: int | None = Field(None, ge=1, le=1024, description="SLURM --cpus-per-task.")
    rdzv_port: int = Field(29500, ge=1024, le=65535, description="torchrun rendezvous port on the first node.")
    poll_seconds: float = Field(5.0, gt=0, le=600, description="How often progress is polled.")

    @model_validator(mode="before")
    @classmethod
    def _no_programs(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key, env in OPERATOR_SETTINGS.items():
                if key in data:
                    raise ValueError(f"{key} is an operator setting, not a run parameter (what runs on the server is "
                                     f"not chosen by whoever starts a run): set {env} in the environment of the "
                                     "process that launches jobs (the Prefect worker / `mmada serve`, or your shell)")
        return data

    def uses_torchrun(self) -> bool:
        return self.kind == "torchrun" or self.procs_per_node > 1 or self.nodes > 1

    def world(self) -> tuple[int, int]:
        """(num_nodes, devices per node) the training config must use."""
        return (self.nodes if self.kind == "sbatch" else 1), self.procs_per_node


@dataclass(frozen=True)
class LaunchOperator:
    """The programs a launch runs, set by the operator (:data:`OPERATOR_SETTINGS`; :meth:`from_env`)."""

    python: str = sys.executable
    """The Python interpreter on the nodes (``MMADA_LAUNCH_PYTHON``; default: this process's)."""
    setup: tuple[str, ...] = ()
    """Shell lines run on the nodes before the job, sbatch only (``MMADA_LAUNCH_SETUP``, one per line)."""
    sbatch_args: tuple[str, ...] = ()
    """Extra sbatch options (``MMADA_SBATCH_ARGS``, shell words), e.g. ``--qos=high``."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> LaunchOperator:
        env = os.environ if env is None else env
        try:
            sbatch_args = tuple(shlex.split(env.get(OPERATOR_SETTINGS["sbatch_args"], "")))
        except ValueError as exc:
            raise MMaDAError(f"{OPERATOR_SETTINGS['sbatch_args']}: not shell words ({exc})") from None
        return cls(python=env.get(OPERATOR_SETTINGS["python"]) or sys.executable,
                   setup=tuple(ln for ln in env.get(OPERATOR_SETTINGS["setup"], "").splitlines() if ln.strip()),
                   sbatch_args=sbatch_args)


@dataclass
class LaunchResult:
    returncode: int
    lines: list[str] = field(default_factory=list)
    job_id: str | None = None
    log_path: Path | None = None
    command: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------
# command builders


def local_argv(spec: LaunchSpec, module_args: list[str], operator: LaunchOperator | None = None) -> list[str]:
    """``python -m mmada ARGS`` (or ``python -m torch.distributed.run … -m mmada ARGS``) on this machine."""
    py = (operator or LaunchOperator.from_env()).python
    if spec.kind == "sbatch":
        raise ValueError("local_argv is for kind local/torchrun")
    if not spec.uses_torchrun():
        return [py, "-m", "mmada", *module_args]
    return [py, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
            "--nproc-per-node", str(spec.procs_per_node), "-m", "mmada", *module_args]


def sbatch_script(spec: LaunchSpec, module_args: list[str], *, job_name: str, log_path: Path, workdir: Path,
                  env: Mapping[str, str] | None = None, operator: LaunchOperator | None = None) -> str:
    """The batch script: #SBATCH header, setup lines, exported env, then ``srun [torchrun] python -m mmada …``."""
    operator = operator or LaunchOperator.from_env()
    py = operator.python
    head = [
        "#!/bin/bash",
        f"#SBATCH --job-name={job_name}",
        f"#SBATCH --nodes={spec.nodes}",
        "#SBATCH --ntasks-per-node=1",
        f"#SBATCH --time={spec.time_limit}",
        f"#SBATCH --output={log_path}",
        f"#SBATCH --chdir={workdir}",
    ]
    if spec.partition:
        head.append(f"#SBATCH --partition={spec.partition}")
    if spec.account:
        head.append(f"#SBATCH --account={spec.account}")
    if spec.gres:
        head.append(f"#SBATCH --gres={spec.gres}")
    if spec.cpus_per_task:
        head.append(f"#SBATCH --cpus-per-task={spec.cpus_per_task}")
    head += [f"#SBATCH {a}" for a in operator.sbatch_args]
    body = ["set -euo pipefail", *operator.setup]
    body += [f"export {k}={shlex.quote(v)}" for k, v in sorted((env or {}).items())]
    mod = " ".join(shlex.quote(a) for a in module_args)
    if spec.uses_torchrun():
        body += [
            'head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" 2>/dev/null | head -n 1 || hostname)',
            f"srun {shlex.quote(py)} -m torch.distributed.run --nnodes {spec.nodes} "
            f"--nproc-per-node {spec.procs_per_node} --rdzv-id \"$SLURM_JOB_ID\" --rdzv-backend c10d "
            f"--rdzv-endpoint \"$head_node:{spec.rdzv_port}\" -m mmada {mod}",
        ]
    else:
        body.append(f"srun {shlex.quote(py)} -m mmada {mod}")
    return "\n".join([*head, "", *body]) + "\n"


# ------------------------------------------------------------------------------------------------
# the watcher


def _kill_group(proc: subprocess.Popen, grace: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


class _Lines:
    """Output lines of the job: a bounded tail, plus a queue drained in the watching thread.

    The reader thread only collects; ``on_line`` runs in the caller's thread (so callbacks that
    need the caller's context, e.g. Prefect artifacts of the current run, work).
    """

    def __init__(self, on_line: Callable[[str], None] | None, keep: int = 5000) -> None:
        self.tail: collections.deque[str] = collections.deque(maxlen=keep)
        self.pending: collections.deque[str] = collections.deque()
        self.on_line = on_line

    def add(self, line: str) -> None:
        line = line.rstrip("\n")
        self.tail.append(line)
        if self.on_line is not None:
            self.pending.append(line)

    def drain(self) -> None:
        while self.pending:
            self.on_line(self.pending.popleft())  # type: ignore[misc]


class JobCancelled(BaseException):
    """The watcher received SIGTERM (e.g. ``kill``, a cancelled run): the job was stopped."""


@contextlib.contextmanager
def _sigterm_cancels():
    """While watching, SIGTERM raises :class:`JobCancelled` (so the job is killed, not orphaned).

    Only where nobody else handles SIGTERM (Prefect's engine has its own handler, which raises in
    this thread too) and only in the main thread (signal handlers live there).
    """
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return

    def handler(signum, frame):
        if _cancel["defer"]:
            _cancel["pending"] = signum
            return
        raise JobCancelled(f"received signal {signum}")

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


_cancel = {"defer": False, "pending": None}


@contextlib.contextmanager
def _cancel_deferred():
    """A SIGTERM arriving inside this block is raised when it ends (so the caller's handler can
    kill a job whose handle did not exist yet when the signal came)."""
    _cancel["defer"], _cancel["pending"] = True, None
    try:
        yield
    finally:
        _cancel["defer"] = False
        pending, _cancel["pending"] = _cancel["pending"], None
        if pending is not None:
            raise JobCancelled(f"received signal {pending}")


def launch(spec: LaunchSpec, module_args: list[str], *, workdir: Path, job_name: str,
           env: Mapping[str, str] | None = None, cwd: Path | None = None,
           on_line: Callable[[str], None] | None = None, poll: Callable[[], None] | None = None,
           what: str | None = None, operator: LaunchOperator | None = None) -> LaunchResult:
    """Run ``mmada MODULE_ARGS`` as ``spec`` says, with the operator's programs (default: from the
    environment, :meth:`LaunchOperator.from_env`), and watch it until it ends; raise on failure."""
    operator = operator or LaunchOperator.from_env()
    with _sigterm_cancels():
        return _launch(spec, module_args, workdir=workdir, job_name=job_name, env=env, cwd=cwd, on_line=on_line,
                       poll=poll, what=what, operator=operator)


def _launch(spec: LaunchSpec, module_args: list[str], *, workdir: Path, job_name: str,
            env: Mapping[str, str] | None, cwd: Path | None, on_line: Callable[[str], None] | None,
            poll: Callable[[], None] | None, what: str | None, operator: LaunchOperator) -> LaunchResult:
    workdir.mkdir(parents=True, exist_ok=True)
    what = what or f"`mmada {' '.join(module_args)}`"
    lines = _Lines(on_line)
    if spec.kind == "sbatch":
        return _launch_sbatch(spec, module_args, workdir=workdir, job_name=job_name, env=env, cwd=cwd,
                              lines=lines, poll=poll, what=what, operator=operator)
    argv = local_argv(spec, module_args, operator)
    full_env = {**os.environ, **(env or {})}
    full_env.setdefault("PYTHONUNBUFFERED", "1")
    proc: subprocess.Popen | None = None

    def read() -> None:
        assert proc is not None and proc.stdout is not None
        for line in proc.stdout:
            lines.add(line)

    try:
        # a SIGTERM during Popen is raised right after it, here, where the except kills the group
        with _cancel_deferred():
            proc = subprocess.Popen(argv, cwd=cwd, env=full_env, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True, errors="replace", bufsize=1,
                                    start_new_session=True)
        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        _watch(lambda: proc.poll() is not None, spec.poll_seconds, poll, lines)
        reader.join()
        lines.drain()
    except BaseException:
        if proc is not None:
            _kill_group(proc)
        raise
    rc = proc.wait()
    result = LaunchResult(rc, list(lines.tail), command=argv)
    if rc != 0:
        raise LaunchError(f"{what} exited with status {rc}" + _tail_text(result))
    return result


def _watch(done: Callable[[], bool], every: float, poll: Callable[[], None] | None, lines: _Lines) -> None:
    next_poll = time.monotonic() + every
    while not done():
        time.sleep(min(0.2, every))
        lines.drain()
        if poll is not None and time.monotonic() >= next_poll:
            poll()
            next_poll = time.monotonic() + every
    lines.drain()
    if poll is not None:
        poll()


def _tail_text(result: LaunchResult, n: int = TAIL_LINES) -> str:
    tail = [ln for ln in result.lines if ln.strip()][-n:]
    where = f" (full log: {result.log_path})" if result.log_path else ""
    return (f"; last output{where}:\n  " + "\n  ".join(tail)) if tail else where


def _launch_sbatch(spec: LaunchSpec, module_args: list[str], *, workdir: Path, job_name: str,
                   env: Mapping[str, str] | None, cwd: Path | None, lines: _Lines,
                   poll: Callable[[], None] | None, what: str, operator: LaunchOperator) -> LaunchResult:
    sbatch = shutil.which("sbatch")
    if sbatch is None:
        raise LaunchError("launch.kind=sbatch but `sbatch` is not on PATH: run this on a SLURM login node "
                          "(a Prefect `process` worker there), or use launch.kind=local / torchrun")
    log_path = (workdir / f"{job_name}.log").resolve()
    script = workdir / f"{job_name}.sbatch"
    run_dir = (cwd or Path.cwd()).resolve()
    script.write_text(sbatch_script(spec, module_args, job_name=job_name, log_path=log_path, workdir=run_dir,
                                    env=env, operator=operator))
    log_path.unlink(missing_ok=True)
    argv = [sbatch, "--parsable", "--wait", str(script)]
    proc = subprocess.Popen(argv, cwd=run_dir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    job_id: str | None = None
    offset = 0
    partial = ""

    def read_id() -> None:
        nonlocal job_id
        assert proc.stdout is not None
        first = proc.stdout.readline().strip()
        job_id = first.split(";")[0] or None
        proc.stdout.read()

    id_reader = threading.Thread(target=read_id, daemon=True)
    id_reader.start()

    def follow() -> None:  # new complete lines of the job's log
        nonlocal offset, partial
        if not log_path.is_file():
            return
        with open(log_path, errors="replace") as f:
            f.seek(offset)
            chunk = f.read()
            offset = f.tell()
        partial += chunk
        *complete, partial = partial.split("\n")
        for ln in complete:
            lines.add(ln)

    def step() -> None:
        follow()
        if poll is not None:
            poll()

    try:
        _watch(lambda: (follow() or proc.poll() is not None), spec.poll_seconds, step if poll else None, lines)
        id_reader.join(timeout=5)
    except BaseException:
        if job_id and shutil.which("scancel"):
            subprocess.run(["scancel", job_id], capture_output=True, timeout=30)
        _kill_group(proc)
        raise
    follow()
    if partial:
        lines.add(partial)
    lines.drain()
    rc = proc.wait()
    err = proc.stderr.read().strip() if proc.stderr else ""
    result = LaunchResult(rc, list(lines.tail), job_id=job_id, log_path=log_path, command=argv)
    if job_id is None:
        raise LaunchError(f"sbatch did not submit {what} (status {rc}): {err or 'no job id printed'}")
    if rc != 0:
        raise LaunchError(f"SLURM job {job_id} ({what}) failed with status {rc}" + (f": {err}" if err else "")
                          + _tail_text(result))
    return result
