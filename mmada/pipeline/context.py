"""What every stage gets: where it reports, how jobs launch, where outputs go; the checks before it runs.

    ctx = StageContext.create(ConsoleReporter("sft"), launch=LaunchSpec(kind="sbatch", nodes=2))
    check_upstream(S.get_stage("sft"))      # a clear error naming the stage to run first

In a stage process started by a Prefect flow (``MMADA_STAGE_EVENTS`` set), the reporter also writes
typed events to the flow's file (:mod:`mmada.pipeline.events`).
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from mlflow.exceptions import MlflowException

from mmada.errors import MMaDAError
from mmada.files import sha256_file, sha256_json, write_text
from mmada.pipeline import stages as S
from mmada.pipeline import tracking as T
from mmada.pipeline.events import EVENTS_ENV, EventWriter
from mmada.pipeline.launch import LaunchError, LaunchOperator, LaunchSpec, launch
from mmada.pipeline.report import Reporter, TeeReporter
from mmada.tracking.lineage import git_commit
from mmada.training.harness import TrainResult, read_result, resumed_run

# A directory output counts as present only when its completion marker exists.
COMPLETE_MARKERS = {S.TOKENIZER_DIR: "tokenizer.json", S.VQ_DIR: "model.safetensors",
                    **{S.data_dir(n): "manifest.json" for n in S.DATASETS}}


@dataclass
class StageOutputs:
    """Where a stage writes its reference, metrics and curve (the DVC paths, or a Prefect run's folder)."""

    base: str = S.PIPELINE_DIR

    def ref(self, stage: str) -> Path:
        return Path(self.base) / "models" / f"{stage}.json"

    def metrics(self, stage: str) -> Path:
        return Path(self.base) / "metrics" / f"{stage}.json"

    def plot(self, stage: str) -> Path:
        return Path(self.base) / "plots" / f"{stage}.csv"

    def eval_dir(self) -> Path:
        return Path(self.base) / "eval"

    def work(self, stage: str, run_name: str) -> Path:
        return Path(self.base) / "work" / stage / run_name


@dataclass
class StageContext:
    reporter: Reporter
    launch: LaunchSpec = field(default_factory=LaunchSpec)
    outputs: StageOutputs = field(default_factory=StageOutputs)
    tracking_uri: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    """Extra lineage tags for MLflow runs and model versions (e.g. ``prefect.flow_run_id``)."""
    operator: LaunchOperator = field(default_factory=LaunchOperator.from_env)
    """The programs jobs run (the operator's environment, never a run parameter)."""

    @classmethod
    def create(cls, reporter: Reporter, *, launch: LaunchSpec | None = None, outputs: StageOutputs | None = None,
               tags: dict[str, str] | None = None) -> StageContext:
        uri = T.tracking_uri()
        T.check_tracking(uri)
        env_tags = {}
        if os.environ.get("MMADA_PREFECT_FLOW_RUN_ID"):
            env_tags["prefect.flow_run_id"] = os.environ["MMADA_PREFECT_FLOW_RUN_ID"]
        if os.environ.get("MMADA_PIPELINE_RUNNER"):
            env_tags["pipeline.runner"] = os.environ["MMADA_PIPELINE_RUNNER"]
        if os.environ.get(EVENTS_ENV):
            reporter = TeeReporter(reporter, EventWriter(os.environ[EVENTS_ENV]))
        return cls(reporter=reporter, launch=launch or LaunchSpec(), outputs=outputs or StageOutputs(),
                   tracking_uri=uri, tags={**env_tags, **(tags or {})})


def lineage(stage: str, section: Any) -> dict[str, str]:
    """Tags tying a run / model version to this pipeline: stage, params hash, git and DVC revision."""
    section_json = section.model_dump(mode="json") if hasattr(section, "model_dump") else section
    tags = {"pipeline.stage": stage, "pipeline.params_sha256": sha256_json(section_json),
            "pipeline.git_rev": git_commit()}
    if Path("dvc.lock").is_file():
        tags["pipeline.dvc_lock_sha256"] = sha256_file("dvc.lock")
    return tags


def check_upstream(stage: S.Stage, *, skip: set[str] | None = None) -> None:
    """Raise :class:`MissingUpstreamError` naming the stage to run when an upstream output is missing."""
    for dep in stage.deps:
        producer = S.producer_of(dep)
        if producer is None or dep in (skip or set()):
            continue
        marker = COMPLETE_MARKERS.get(dep)
        path = Path(dep) / marker if marker else Path(dep)
        if not path.exists():
            raise T.MissingUpstreamError(
                f"stage {stage.name!r} needs {dep} (written by stage {producer.name!r}), which is missing or "
                f"incomplete: run `mmada pipeline --until {producer.name}` (or `dvc repro {producer.name}`) first")


def check_version(uri: str, ref: dict[str, Any], ref_path: Path, producer: str) -> None:
    """The registered version a model reference names must exist in the registry."""
    try:
        T.client(uri).get_model_version(ref["registered_model"], ref["version"])
    except MlflowException:
        raise MMaDAError(
            f"{ref_path} names {ref['registered_model']} version {ref['version']}, which is not in the model "
            f"registry at {uri} (was the MLflow store deleted?): re-run it with `mmada pipeline --force --until "
            f"{producer}` (or `dvc repro -f {producer}`)") from None


# ------------------------------------------------------------------------------------------------
# launched jobs


def stamp() -> str:
    """A unique, sortable run-name suffix: ``20250101-120000-3fa2c1``."""
    return time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]


def job_env(ctx: StageContext, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {"MLFLOW_TRACKING_URI": ctx.tracking_uri, "PYTHONUNBUFFERED": "1"}
    return {**env, **(extra or {})}


def job_result(path: Path, stage: str, command: str) -> TrainResult:
    """The result file of a job that exited 0; a missing or invalid one fails the stage (a crash is no success)."""
    try:
        return read_result(path)
    except MMaDAError as exc:
        raise LaunchError(f"stage {stage!r}: `{command}` exited 0 without its result: {exc}") from None


def progress_poller(ctx: StageContext, run_id_fn: Callable[[], str | None], max_steps: int) -> Callable[[], None]:
    """A ``poll`` for :func:`~mmada.pipeline.launch.launch`: the job's step and loss from its MLflow run."""

    def poll() -> None:
        run_id = run_id_fn()
        if not run_id:
            return
        try:
            got = T.latest_step(ctx.tracking_uri, run_id)
        except Exception:
            return
        if got is not None:
            step, loss = got
            done = min(step + 1, max_steps)
            ctx.reporter.progress(done / max_steps, f"step {done}/{max_steps} train/loss {loss:.4f}")

    return poll


def write_yaml(path: Path, data: dict) -> Path:
    return write_text(path, yaml.safe_dump(data, sort_keys=False))


@dataclass
class Job:
    """A finished training job: its config as launched, its MLflow run and the result it wrote."""

    cfg: Any
    result: TrainResult
    run_id: str
    experiment_id: str
    url: str


def run_job(ctx: StageContext, stage: str, command: list[str], cfg: Any, *, run_name: str, tags: dict[str, str],
            note: str = "") -> Job:
    """Launch ``mmada COMMAND CONFIG --result-file PATH`` for a training config and read its result.

    The job's MLflow run exists first and is handed over as ``MLFLOW_RUN_ID`` (the run the job's
    harness logs into; progress and the link come from it): a new run, or, when the job will resume
    from a checkpoint, the run that checkpoint belongs to (reopened), so a rerun after a crash is the
    same run and registers no second version. When the job exits 0, rank 0's result file is read and
    validated. Any failure after the run exists (the job's, or writing its config here) marks the run
    FAILED. ``cfg`` is a harness config (``TrainConfig``, ``VQTrainConfig``): the job gets it with this
    run's tracking URI and name.
    """
    run_id, exp_id = T.open_run(ctx.tracking_uri, cfg.experiment, run_name, tags,
                                reuse=resumed_run(cfg, ctx.tracking_uri))
    try:
        url = T.run_url(exp_id, run_id)
        ctx.reporter.link(url, "MLflow run")
        cfg = cfg.model_copy(update={"tracking": cfg.tracking.model_copy(update={"uri": ctx.tracking_uri,
                                                                                 "run_name": run_name})})
        work = ctx.outputs.work(stage, run_name)
        cfg_path = write_yaml(work / "config.yaml", cfg.model_dump(mode="json"))
        result_path = work / "result.json"
        result_path.unlink(missing_ok=True)
        max_steps = cfg.trainer.max_steps
        what = " ".join(command)
        ctx.reporter.progress(0.0, f"launching `mmada {what}` ({ctx.launch.kind}), {max_steps} steps{note}")
        launch(ctx.launch, [*command, str(cfg_path.resolve()), "--result-file", str(result_path.resolve())],
               workdir=work, job_name=f"mmada-{stage}", env=job_env(ctx, {"MLFLOW_RUN_ID": run_id}),
               on_line=ctx.reporter.line, poll=progress_poller(ctx, lambda: run_id, max_steps),
               operator=ctx.operator)
        result = job_result(result_path, stage, f"mmada {what}")
    except BaseException:
        T.end_run(ctx.tracking_uri, run_id, "FAILED")
        raise
    return Job(cfg, result, run_id, exp_id, url)
