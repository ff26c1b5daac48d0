"""A fault-tolerant handle on one MLflow run: retried calls, a background metric sender, a fallback file.

Training must never stop because the tracking server is down or slow. Every call goes through
:meth:`Tracker.call`, which retries with exponential backoff and, when the last attempt fails too,
*reports* the failure (a warning, a counter, a line in ``fallback.jsonl``) and returns ``None``.
Metrics are queued and sent by a daemon thread, so a stalled server never blocks a training step;
:meth:`Tracker.close` flushes the queue (bounded by a timeout) and prints a one-line report.

    tracker = Tracker("sqlite:///runs/mlflow.db", fallback_path="runs/train/x/mlflow_failed.jsonl")
    tracker.start_run(experiment="mmada-pretrain", run_name="tiny")   # or tracker.attach(run_id)
    tracker.log_metrics({"train/loss": 2.3}, step=10)                   # never raises, never blocks
    tracker.close()

A run that could not be created leaves the tracker *offline*: metrics go to the fallback file
(one JSON object per line, replayable with :func:`replay_fallback`).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

log = logging.getLogger("mmada.tracking")
T = TypeVar("T")

# MLflow's own HTTP client retries a failing request for minutes (7 tries, backoff factor 2). Our
# retry loop is the policy, so unless the operator set them, keep MLflow's retries short.
_HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                  "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}


def limit_http_retries() -> None:
    for k, v in _HTTP_DEFAULTS.items():
        os.environ.setdefault(k, v)


class Tracker:
    """Rank-0 handle on one MLflow run. All methods are safe to call when MLflow is unreachable."""

    def __init__(self, tracking_uri: str, *, max_retries: int = 3, backoff: float = 0.5,
                 fallback_path: str | Path | None = None, asynchronous: bool = True) -> None:
        if tracking_uri.startswith(("http://", "https://")):
            limit_http_retries()
        self.tracking_uri = tracking_uri
        self._client = None
        self.max_retries = max_retries
        self.backoff = backoff
        self.fallback_path = Path(fallback_path) if fallback_path else None
        self.run_id: str | None = None
        self.experiment_id: str | None = None
        self.failures = 0
        self.dropped_metrics = 0
        self._lock = threading.Lock()
        self._queue: queue.Queue | None = queue.Queue() if asynchronous else None
        self._thread: threading.Thread | None = None
        self._closed = False

    @property
    def client(self):
        """The ``MlflowClient`` (created on first use: ranks that never log never touch the store)."""
        if self._client is None:
            self._client = MlflowClient(self.tracking_uri)
        return self._client

    # ------------------------------------------------------------------ retry + report
    def call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
        """``fn(*args, **kwargs)`` with retries; on final failure: report, return None (never raise)."""
        return self.try_call(what, fn, *args, **kwargs)[1]

    def try_call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> tuple[bool, T | None]:
        """Like :meth:`call`, but returns ``(succeeded, result)`` (MLflow log calls return None)."""
        delay = self.backoff
        for attempt in range(self.max_retries + 1):
            try:
                return True, fn(*args, **kwargs)
            except Exception as exc:  # any MLflow/network/DB error: tracking is best effort
                if attempt == self.max_retries or _permanent(exc):
                    self._report(what, exc, {"args": _jsonable(args), "kwargs": _jsonable(kwargs)}, attempt + 1)
                    return False, None
                time.sleep(delay)
                delay *= 2
        return False, None

    def _report(self, what: str, exc: BaseException, payload: dict[str, Any], attempts: int = 1) -> None:
        with self._lock:
            self.failures += 1
            n = self.failures
            if self.fallback_path is not None:
                self.fallback_path.parent.mkdir(parents=True, exist_ok=True)
                with self.fallback_path.open("a") as f:
                    f.write(json.dumps({"time": time.time(), "call": what, "run_id": self.run_id,
                                        "error": f"{type(exc).__name__}: {exc}"[:500], **payload}) + "\n")
        if n <= 5 or n % 100 == 0:
            where = f"; kept in {self.fallback_path}" if self.fallback_path else ""
            log.warning("MLflow %s failed after %d attempt(s) (%s: %s)%s [failure #%d; training continues]",
                        what, attempts, type(exc).__name__, str(exc)[:200], where, n)

    @property
    def online(self) -> bool:
        return self.run_id is not None

    # ------------------------------------------------------------------ runs
    def experiment(self, name: str, artifact_location: str | None = None) -> str | None:
        self.experiment_id = self.call(f"get/create experiment {name!r}", ensure_experiment, self.client, name,
                                       artifact_location)
        return self.experiment_id

    def start_run(self, experiment: str, run_name: str | None = None, tags: dict[str, str] | None = None,
                  artifact_location: str | None = None) -> str | None:
        exp_id = self.experiment(experiment, artifact_location)
        if exp_id is None:
            return None
        run = self.call("create_run", self.client.create_run, exp_id, run_name=run_name, tags=tags or {})
        self.run_id = run.info.run_id if run is not None else None
        return self.run_id

    def attach(self, run_id: str) -> str | None:
        """Log into an existing run (created by a launcher, or the run of a resumed training)."""
        run = self.call("get_run", self.client.get_run, run_id)
        if run is None:
            return None
        self.run_id = run_id
        self.experiment_id = run.info.experiment_id
        if run.info.status != "RUNNING":
            self.call("reopen run", self.client.update_run, run_id, status="RUNNING")
        return run_id

    # ------------------------------------------------------------------ logging
    def log_params(self, params: dict[str, str]) -> None:
        """Log params; on a re-attached run, changed values (e.g. a longer ``max_steps`` on resume) go
        to ``resumed.<key>`` tags, since MLflow params are immutable."""
        if not self.online:
            return
        run = self.call("get_run", self.client.get_run, self.run_id)
        old = run.data.params if run is not None else {}
        params = {k: str(v)[:6000] for k, v in params.items()}
        changed = {k: v for k, v in params.items() if k in old and old[k] != v}
        if changed:
            self.set_tags({f"resumed.{k}": v for k, v in changed.items()})
        items = [Param(k, v) for k, v in params.items() if k not in old]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            self.call("log_batch(params)", self.client.log_batch, self.run_id, params=items[i : i + 100])

    def set_tags(self, tags: dict[str, str]) -> None:
        if self.online and tags:
            self.call("set_tags", self.client.log_batch, self.run_id,
                      tags=[RunTag(k, str(v)[:5000]) for k, v in tags.items()])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Queue metrics for the sender thread (synchronous when ``asynchronous=False``)."""
        if self._closed:
            return
        item = (dict(metrics), int(step), int(time.time() * 1000))
        if self._queue is None:
            self._send_metrics(*item)
            return
        self._ensure_thread()
        self._queue.put(item)

    def _send_metrics(self, metrics: dict[str, float], step: int, ts: int) -> None:
        if not self.online:
            self.dropped_metrics += 1
            self._report("log_metrics (no run)", RuntimeError("tracking is offline"),
                         {"metrics": metrics, "step": step})
            return
        batch = [Metric(k, float(v), ts, step) for k, v in metrics.items()]
        ok, _ = self.try_call("log_batch(metrics)", self.client.log_batch, self.run_id, metrics=batch)
        if not ok:
            self.dropped_metrics += 1

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._worker, name="mlflow-sender", daemon=True)
            self._thread.start()

    def _worker(self) -> None:
        assert self._queue is not None
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                self._send_metrics(*item)
            finally:
                self._queue.task_done()

    def flush(self, timeout: float = 60.0) -> bool:
        """Wait (at most ``timeout`` s) until queued metrics are sent or reported."""
        if self._queue is None or self._thread is None:
            return True
        deadline = time.time() + timeout
        while self._queue.unfinished_tasks and time.time() < deadline:
            time.sleep(0.02)
        return not self._queue.unfinished_tasks

    def log_artifacts(self, local_dir: str | Path, artifact_path: str | None = None) -> bool:
        if not self.online:
            return False
        return self.try_call(f"log_artifacts({artifact_path})", self.client.log_artifacts, self.run_id,
                             str(local_dir), artifact_path)[0]

    def log_artifact(self, local_path: str | Path, artifact_path: str | None = None) -> bool:
        if not self.online:
            return False
        return self.try_call(f"log_artifact({artifact_path})", self.client.log_artifact, self.run_id,
                             str(local_path), artifact_path)[0]

    def end(self, status: str = "FINISHED") -> None:
        if self.online:
            self.flush()
            self.call("set_terminated", self.client.set_terminated, self.run_id, status)

    def close(self, status: str = "FINISHED", timeout: float = 60.0) -> None:
        """Flush, end the run, stop the sender and report what was lost (if anything)."""
        if self._closed:
            return
        self.flush(timeout)
        self.end(status)
        self._closed = True
        if self._queue is not None and self._thread is not None and self._thread.is_alive():
            self._queue.put(None)
        if self.failures:
            log.warning("MLflow: %d call(s) failed and were skipped (%d metric batches); details in %s",
                        self.failures, self.dropped_metrics, self.fallback_path or "the log above")


# MLflow's UI opens an experiment in its model-training view (runs, metrics, models) or its GenAI view
# (traces, evaluations, judges) by this tag; the platform's experiments are model training. The key
# and value are the UI's own (mlflow/server/js: ExperimentKind.CUSTOM_MODEL_DEVELOPMENT, written by
# its experiment-kind selector through setExperimentTag).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
TRAINING_EXPERIMENT_KIND = "custom_model_development"


def ensure_experiment(client: MlflowClient, name: str, artifact_location: str | None = None) -> str:
    """The id of experiment ``name``, created if needed (safe against a concurrent creation), tagged
    as a model-training experiment (older experiments get the tag when they are next used)."""
    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            return client.create_experiment(name, artifact_location=artifact_location,
                                            tags={EXPERIMENT_KIND_TAG: TRAINING_EXPERIMENT_KIND})
        except Exception:  # created concurrently by another process
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
    if EXPERIMENT_KIND_TAG not in exp.tags:
        client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, TRAINING_EXPERIMENT_KIND)
    return exp.experiment_id


_PERMANENT_CODES = {"INVALID_PARAMETER_VALUE", "RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST",
                    "INVALID_STATE", "PERMISSION_DENIED", "BAD_REQUEST", "UNAUTHENTICATED"}


def _permanent(exc: BaseException) -> bool:
    """Errors that a retry cannot fix (bad request, missing resource): report at once."""
    return getattr(exc, "error_code", None) in _PERMANENT_CODES


def _jsonable(x: Any) -> Any:
    try:
        json.dumps(x)
        return x
    except TypeError:
        if isinstance(x, (list, tuple)):
            return [_jsonable(v) for v in x]
        if isinstance(x, dict):
            return {str(k): _jsonable(v) for k, v in x.items()}
        return repr(x)[:200]


def replay_fallback(path: str | Path, tracking_uri: str, run_id: str | None = None) -> int:
    """Send the metrics kept in a fallback file to a run (the one they were meant for by default)."""
    client = MlflowClient(tracking_uri)
    sent = 0
    for line in Path(path).read_text().splitlines():
        rec = json.loads(line)
        if "metrics" not in rec:
            continue
        target = run_id or rec.get("run_id")
        if not target:
            continue
        ts = int(rec["time"] * 1000)
        client.log_batch(target, metrics=[Metric(k, float(v), ts, rec["step"]) for k, v in rec["metrics"].items()])
        sent += 1
    return sent
