"""MLflow from the pipeline's side: runs created before a job starts, progress, curves, references.

The training stages create their MLflow run *before* launching the job and hand its id to every
rank through ``MLFLOW_RUN_ID`` (docs/pipeline.md), so the pipeline can link the run at once, read the
job's progress from the run's metric history, and turn the history into the DVC plot CSV.

A *model reference* (``runs/pipeline/models/<stage>.json``) stands for a registered model version:

    {"stage": "sft", "registered_model": "mmada-tiny", "version": "4", "alias": "sft",
     "model_uri": "models:/mmada-tiny/4", "source": "runs:/<run>/hf", "run_id": "…",
     "experiment_id": "…", "tracking_uri": "sqlite:///…/runs/mlflow.db", "sha256": "<weights sha256>", …}
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from mmada.errors import MMaDAError
from mmada.tracking import artifact_root_for, default_tracking_uri
from mmada.tracking.client import ensure_experiment as tracking_experiment
from mmada.tracking.client import limit_http_retries

DEFAULT_MLFLOW_UI = "http://127.0.0.1:5000"


class MissingUpstreamError(MMaDAError):
    """A stage was run before the stage that produces one of its inputs."""


def tracking_uri() -> str:
    return default_tracking_uri()


def check_tracking(uri: str, timeout: float = 5.0) -> None:
    """Fail fast (with what to do) when the tracking URI is a server that does not answer."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as r:
            if r.status == 200:
                return
    except (urllib.error.URLError, OSError) as exc:
        raise MMaDAError(f"the MLflow tracking server at {uri} is not reachable ({exc}); start it with "
                         "`mmada serve` (or `make ui`), or unset MLFLOW_TRACKING_URI to use runs/mlflow.db") from None


def ui_base() -> str:
    return os.environ.get("MMADA_MLFLOW_UI", DEFAULT_MLFLOW_UI).rstrip("/")


# MLflow ≥ 3.x's UI picks its view (model training vs GenAI) from this query parameter (else from the
# browser's last choice, GenAI at first), not from the experiment's ``mlflow.experimentKind`` tag: links
# carry it so they open runs, metrics and models.
TRAINING_VIEW = "workflowType=machine_learning"


def experiments_url() -> str:
    return f"{ui_base()}/#/experiments?{TRAINING_VIEW}"


def run_url(experiment_id: str, run_id: str) -> str:
    return f"{ui_base()}/#/experiments/{experiment_id}/runs/{run_id}?{TRAINING_VIEW}"


def model_url(name: str, version: str | None = None) -> str:
    return f"{ui_base()}/#/models/{name}" + (f"/versions/{version}" if version else "") + f"?{TRAINING_VIEW}"


def client(uri: str):

    if uri.startswith(("http://", "https://")):
        limit_http_retries()
    return MlflowClient(uri)


def ensure_store(uri: str) -> None:
    """Create/migrate the store now: two processes opening a fresh SQLite store at once race its migrations."""
    client(uri).search_experiments(max_results=1)


def ensure_experiment(c, uri: str, name: str) -> str:
    return tracking_experiment(c, name, artifact_root_for(uri))


def create_run(uri: str, experiment: str, run_name: str, tags: dict[str, str]) -> tuple[str, str]:
    """A RUNNING run the launched job attaches to (``MLFLOW_RUN_ID``); returns (run_id, experiment_id)."""
    c = client(uri)
    exp_id = ensure_experiment(c, uri, experiment)
    run = c.create_run(exp_id, run_name=run_name, tags=tags)
    return run.info.run_id, exp_id


def open_run(uri: str, experiment: str, run_name: str, tags: dict[str, str], *,
             reuse: str | None = None) -> tuple[str, str]:
    """The run a launched job logs into: ``reuse`` (the run its checkpoint belongs to) reopened as RUNNING
    with ``tags`` added, when it exists in this store; else a new one (:func:`create_run`)."""
    if reuse:
        c = client(uri)
        try:
            run = c.get_run(reuse)
        except MlflowException:
            run = None
        if run is not None:
            c.update_run(reuse, status="RUNNING")
            set_tags(uri, reuse, {**tags, "resumed": "true"})
            return reuse, run.info.experiment_id
    return create_run(uri, experiment, run_name, tags)


def end_run(uri: str, run_id: str, status: str) -> None:
    """Mark a run FAILED/KILLED when its job died before closing it (never raises)."""
    try:
        c = client(uri)
        if c.get_run(run_id).info.status == "RUNNING":
            c.set_terminated(run_id, status=status)
    except Exception:
        pass


def find_run(uri: str, experiment: str, run_name: str):
    c = client(uri)
    exp = c.get_experiment_by_name(experiment)
    if exp is None:
        return None
    runs = c.search_runs([exp.experiment_id], filter_string=f"attributes.run_name = '{run_name}'", max_results=1)
    return runs[0] if runs else None


def latest_step(uri: str, run_id: str, key: str = "train/loss") -> tuple[int, float] | None:
    """(step, value) of the newest ``key`` point of the run, or None before the first one."""
    hist = client(uri).get_metric_history(run_id, key)
    if not hist:
        return None
    m = max(hist, key=lambda m: (m.step, m.timestamp))
    return m.step, m.value


def curves(uri: str, run_id: str, keys: list[str]) -> tuple[list[str], list[list[Any]]]:
    """Metric histories as a wide table: ``step`` then one column per key (``train/loss`` → ``train_loss``)."""
    c = client(uri)
    by_step: dict[int, dict[str, float]] = {}
    for k in keys:
        for m in c.get_metric_history(run_id, k):
            by_step.setdefault(int(m.step), {})[k] = m.value
    header = ["step", *(k.replace("/", "_") for k in keys)]
    rows = [[s, *(by_step[s].get(k, "") for k in keys)] for s in sorted(by_step)]
    return header, rows


def metric_keys(uri: str, run_id: str) -> list[str]:
    return sorted(client(uri).get_run(run_id).data.metrics)


def set_tags(uri: str, run_id: str, tags: dict[str, str]) -> None:
    c = client(uri)
    for k, v in tags.items():
        c.set_tag(run_id, k, str(v))


def set_version_tags(uri: str, name: str, version: str, tags: dict[str, str]) -> None:
    c = client(uri)
    for k, v in tags.items():
        c.set_model_version_tag(name, version, k, str(v))


def registry(uri: str, name: str) -> dict[str, Any] | None:
    """``{"name", "aliases": {alias: version}, "versions": [{version, run_id, stage, created}]}`` or None."""
    c = client(uri)
    try:
        rm = c.get_registered_model(name)
    except MlflowException:
        return None
    versions = sorted(c.search_model_versions(f"name = '{name}'"), key=lambda v: int(v.version))
    return {"name": name, "aliases": dict(rm.aliases or {}),
            "versions": [{"version": str(v.version), "run_id": v.run_id, "stage": (v.tags or {}).get("stage", ""),
                          "created": v.creation_timestamp} for v in versions]}


# ------------------------------------------------------------------------------------------------
# model references


def read_ref(path: str | Path, *, producer: str | None = None, needed_by: str | None = None) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        who = f"stage {needed_by!r} needs" if needed_by else "missing"
        hint = (f"; run the upstream stages first: `mmada pipeline --until {producer}` (or `dvc repro {producer}`)"
                if producer else "")
        raise MissingUpstreamError(f"{who} {p} (the model reference written by stage {producer!r}){hint}")
    try:
        ref = json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise MMaDAError(f"{p}: not a model reference ({exc.msg}); re-run stage {producer!r}") from None
    for k in ("registered_model", "version", "tracking_uri"):
        if k not in ref:
            raise MMaDAError(f"{p}: model reference has no {k!r}; re-run stage {producer!r}")
    return ref


def ref_model_uri(ref: dict[str, Any]) -> str:
    return f"models:/{ref['registered_model']}/{ref['version']}"
