"""The training harness: the one loop every model of the platform trains through.

    tracker = open_tracker(cfg)
    result = fit(cfg, module, datamodule, tracker=tracker, tags=lineage_tags(...),
                 export=Export(write, "hf", registered_model="mmada-tiny", alias="pretrain"))

:func:`mmada.training.run.train` (the MMaDA stages) and :func:`mmada.training.vq.train_tokenizer`
(the image tokenizer) build their Lightning module, data module and export function, and call
:func:`fit`, which, on every rank (rank 0 owns the MLflow run):

1. seeds everything and picks the checkpoint to resume from (``checkpoint.resume: auto``: the newest
   checkpoint of ``<checkpoint dir>`` that loads, saying which newer ones it skipped and why, else a
   fresh start: :func:`~mmada.training.callbacks.find_resume_checkpoint`). When that checkpoint is the
   final step of a run that already delivered (its result is recorded next to the checkpoints and its
   export is in place), nothing is trained again: the recorded result is reported, its registered
   version (re)gets the alias, and no version is added;
2. builds the Trainer with the non-blocking MLflow logger (:class:`TrackerLogger`) and the harness
   callbacks: the MLflow run (:class:`TrackingCallback`: created, or re-attached when resuming;
   params, lineage tags, system metrics), atomic checkpoints every ``checkpoint.every_n_steps``
   plus ``last``, throughput;
3. validates once before training when asked (the step-0 baseline; its metrics are kept in the
   checkpoints, so a resumed run does not repeat it);
4. fits, then validates the final weights unless that step was just validated;
5. writes the deliverable directory (the task's :class:`Export`, atomically), logs it as the run's
   artifacts and, when a registered model is named, registers it as a new version with an alias
   (once per run and step: :func:`~mmada.tracking.registry.register_export`), then records the
   result next to the checkpoints (``result.json``);
6. closes the run FINISHED, or FAILED when anything raised.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_only
from pydantic import TypeAdapter, ValidationError

from mmada.config import format_errors
from mmada.errors import ConfigError, MMaDAError
from mmada.files import remove_partials, write_text
from mmada.tracking import default_tracking_uri
from mmada.tracking.client import Tracker
from mmada.tracking.logger import TrackerLogger
from mmada.tracking.registry import register_export
from mmada.training.callbacks import (
    AtomicModelCheckpoint,
    ResumePoint,
    SpeedMonitor,
    TrackingCallback,
    UnreadableCheckpoint,
    clean_partials,
    find_resume_checkpoint,
    inspect_checkpoint,
)
from mmada.training.specs import RunConfig
from mmada.training.trainer import build_trainer

log = logging.getLogger("mmada.training")


@dataclass
class TrainResult:
    global_step: int
    run_id: str | None
    export_dir: Path | None
    """The deliverable directory (on global rank 0; None on the other ranks)."""
    model_version: str | None
    registered_model: str | None
    metrics: dict[str, float] = field(default_factory=dict)
    """The last value of every scalar this process logged (``train/…``, ``perf/…``, and ``val/…`` of
    the final validation)."""
    initial_metrics: dict[str, float] = field(default_factory=dict)
    """The step-0 baseline validation (when the task asked for one)."""
    train_seconds: float = 0.0
    """Wall time of this process's fit (a resumed run: since it resumed)."""
    tokens_per_s: list[float] = field(default_factory=list)
    checkpoint_dir: Path | None = None

    def summary(self) -> dict[str, Any]:
        """The JSON line ``mmada train`` and ``mmada vq train`` print."""
        return {"global_step": self.global_step, "run_id": self.run_id,
                "export_dir": str(self.export_dir) if self.export_dir else None,
                "registered_model": self.registered_model, "model_version": self.model_version,
                "train_seconds": round(self.train_seconds, 2), "initial_metrics": self.initial_metrics,
                "metrics": self.metrics}


_RESULT = TypeAdapter(TrainResult)


def write_result(path: str | os.PathLike, result: TrainResult) -> Path:
    """The job's result file (``mmada train --result-file``): the :class:`TrainResult` as JSON, written
    atomically, for the pipeline watcher that launched the job."""
    return write_text(path, _RESULT.dump_json(result, indent=1).decode() + "\n")


def read_result(path: str | os.PathLike) -> TrainResult:
    """The :class:`TrainResult` a job wrote with :func:`write_result`; raises naming the path and the field."""
    p = Path(path)
    if not p.is_file():
        raise MMaDAError(f"{p}: no training result file (the job ended without writing one)")
    try:
        return _RESULT.validate_json(p.read_bytes())
    except ValidationError as exc:
        raise MMaDAError(f"{p}: not a training result: {format_errors(exc)}") from None


@dataclass
class Export:
    """What a run delivers, and where that goes in MLflow."""

    write: Callable[[L.Trainer], Path | None]
    """Called on every rank after the final validation (collective under FSDP): writes the directory
    atomically on global rank 0 and returns it (None on the other ranks)."""
    artifact_path: str
    """The run's artifact folder for it (``hf``, ``tokenizer``)."""
    registered_model: str | None = None
    """Register it as a new version of this model (None: no registry version)."""
    alias: str | None = None
    always_log: bool = False
    """Log it as artifacts even when it is not registered."""
    description: str | None = None
    """Description of the registered model when the registry creates it."""


class ValidationRecord(Callback):
    """The step-0 baseline metrics (kept in checkpoints) and the step of the latest validation."""

    def __init__(self) -> None:
        self.baseline: dict[str, float] = {}
        self.last_step: int | None = None

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.last_step = trainer.global_step

    def state_dict(self) -> dict[str, Any]:
        return {"baseline": self.baseline}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.baseline = dict(state_dict.get("baseline", {}))


def open_tracker(cfg: RunConfig) -> Tracker:
    """The run's MLflow handle (nothing is called yet); failed calls go to ``<out_dir>/mlflow_failed.jsonl``."""
    return Tracker(cfg.tracking.uri or default_tracking_uri(), max_retries=cfg.tracking.max_retries,
                   fallback_path=cfg.out_dir / "mlflow_failed.jsonl")


RESULT_RECORD = "result.json"
"""The :class:`TrainResult` of a finished run, in its checkpoint directory (what a rerun reports)."""


def resolve_resume(cfg: RunConfig, *, quiet: bool = False) -> ResumePoint | None:
    """The checkpoint training continues from (``checkpoint.resume``), or None for a fresh start."""
    r = cfg.checkpoint.resume
    if r == "never":
        return None
    if r == "auto":
        return find_resume_checkpoint(cfg.checkpoint_dir, quiet=quiet)
    if not Path(r).exists():
        raise ConfigError(f"checkpoint.resume: {r!r} does not exist")
    try:
        return inspect_checkpoint(Path(r))
    except UnreadableCheckpoint as exc:
        raise ConfigError(f"checkpoint.resume: {r!r} does not load ({exc}); name another checkpoint, or 'auto' "
                          "for the newest one that loads") from None


def resumed_run(cfg: RunConfig, tracking_uri: str) -> str | None:
    """The MLflow run (in ``tracking_uri``) that a job for ``cfg`` will continue: the run recorded in the
    checkpoint it resumes from. A launcher hands it to the job (``MLFLOW_RUN_ID``) instead of creating
    a new run, so a rerun after a crash stays one run with one registered version."""
    point = resolve_resume(cfg, quiet=True)
    if point is None or not point.run_id or point.tracking_uri != tracking_uri:
        return None
    return point.run_id


def finished_result(cfg: RunConfig, resume: ResumePoint | None, tracker: Tracker, export: Export) -> TrainResult | None:
    """The recorded result of the finished run whose final checkpoint ``resume`` is, when its export is in
    place and its MLflow run exists (the version to report lives there); else None: the run delivers again."""
    if resume is None or resume.global_step < cfg.trainer.max_steps:
        return None
    path = cfg.checkpoint_dir / RESULT_RECORD
    if not path.is_file():
        return None
    try:
        done = read_result(path)
    except MMaDAError:
        return None
    if done.global_step != resume.global_step or (resume.run_id and done.run_id != resume.run_id):
        return None
    if done.export_dir is None or not done.export_dir.is_dir():
        return None
    if done.run_id is None:  # trained without MLflow: only a run that needs no registry is finished
        return None if export.registered_model else done
    ok, run = tracker.try_call("get_run", tracker.client.get_run, done.run_id)
    return done if ok and run is not None else None


def report_finished(cfg: RunConfig, done: TrainResult, *, tracker: Tracker, export: Export,
                    tags: dict[str, str]) -> TrainResult:
    """A rerun of a finished run: its recorded result, with its version (re)aliased (and registered only if
    it went missing from the registry); nothing is trained, exported or logged again."""
    if rank_zero_only.rank != 0:
        return replace(done, export_dir=None, model_version=None, registered_model=None)
    log.warning("%s: this run finished at step %d and delivered %s: reporting it, nothing to train",
                cfg.checkpoint_dir, done.global_step, done.export_dir)
    if not export.registered_model or done.run_id is None or not tracker.attach(done.run_id):
        return done
    try:
        version = publish(tracker, export, done.export_dir, tags, step=done.global_step)
    finally:
        tracker.close("FINISHED")
    result = replace(done, model_version=version, registered_model=export.registered_model if version else None)
    if result != done:
        write_result(cfg.checkpoint_dir / RESULT_RECORD, result)
    return result


def scalar_metrics(trainer: L.Trainer) -> dict[str, float]:
    return {k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v) and v.numel() == 1}


def publish(tracker: Tracker, export: Export, export_dir: Path | None, tags: dict[str, str], *,
            step: int) -> str | None:
    """Log the export as the run's artifacts, registered as a version when a model is named (one per run and step)."""
    if export_dir is None:
        return None
    if export.registered_model:
        version = register_export(tracker, export_dir, export.registered_model, alias=export.alias,
                                  tags={**tags, "run_id": tracker.run_id or ""}, step=step,
                                  artifact_path=export.artifact_path, description=export.description)
        if version is None:
            log.warning("exported to %s but not registered (MLflow unavailable)", export_dir)
        return version
    if export.always_log:
        tracker.log_artifacts(export_dir, export.artifact_path)
    return None


def fit(cfg: RunConfig, module: L.LightningModule, data: L.LightningDataModule, *, tracker: Tracker,
        export: Export, tags: dict[str, str], inputs: Sequence[dict[str, Any]] = (),
        callbacks: Sequence[Callback] = (), baseline: bool = False, validate: bool = True,
        progress_bar: bool = False) -> TrainResult:
    """Train ``module`` on ``data`` as ``cfg`` says and deliver ``export`` (see the module docstring).

    ``tags``: lineage tags of the run and the registered version; ``inputs``: shard manifests logged as
    MLflow dataset inputs; ``baseline``: validate before training; ``validate``: the data has a
    validation split (validate at the end).
    """
    torch.set_float32_matmul_precision(cfg.trainer.matmul_precision)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    resume = resolve_resume(cfg)
    done = finished_result(cfg, resume, tracker, export)
    if done is not None:
        return report_finished(cfg, done, tracker=tracker, export=export, tags=tags)
    tracking = TrackingCallback(tracker, cfg, resume=resume, tags=tags, inputs=list(inputs))
    checkpoints = AtomicModelCheckpoint(
        dirpath=str(cfg.checkpoint_dir), filename="step{step:08d}", auto_insert_metric_name=False,
        every_n_train_steps=cfg.checkpoint.every_n_steps, save_last=True, monitor="step", mode="max",
        save_top_k=cfg.checkpoint.keep_last, enable_version_counter=False,
    )
    speed, validations = SpeedMonitor(), ValidationRecord()
    manual = not module.automatic_optimization
    if manual:  # a step's checkpoint holds the weights after the step, as resuming needs (Lightning warns)
        warnings.filterwarnings("ignore", message=r".*ModelCheckpoint with manual optimization.*")
    trainer = build_trainer(cfg, logger=TrackerLogger(tracker, cfg.experiment),
                            callbacks=[tracking, checkpoints, speed, validations, *callbacks],
                            manual_optimization=manual, progress_bar=progress_bar)
    if trainer.is_global_zero:
        clean_partials(cfg.checkpoint_dir)
        remove_partials(cfg.out_dir)  # an export interrupted while being written
    status, result = "FAILED", None
    try:
        if baseline and resume is None:
            trainer.validate(module, datamodule=data, verbose=False)  # step 0: the initial weights
            validations.baseline = scalar_metrics(trainer)
        start = time.perf_counter()
        trainer.fit(module, datamodule=data, ckpt_path=str(resume.path) if resume else None, weights_only=True)
        seconds = time.perf_counter() - start
        metrics = scalar_metrics(trainer)
        if validate and validations.last_step != trainer.global_step:
            trainer.validate(module, datamodule=data, verbose=False)
            metrics |= scalar_metrics(trainer)
        if resume is not None and trainer.global_step == resume.global_step and trainer.is_global_zero:
            metrics = logged_metrics(tracker) | metrics  # nothing trained here: what the run logged before
        export_dir = export.write(trainer)
        version = None
        if trainer.is_global_zero:
            version = publish(tracker, export, export_dir, tags, step=trainer.global_step)
        result = TrainResult(global_step=trainer.global_step, run_id=tracking.run_id, export_dir=export_dir,
                             model_version=version, registered_model=export.registered_model if version else None,
                             metrics=metrics, initial_metrics=validations.baseline, train_seconds=seconds,
                             tokens_per_s=speed.history, checkpoint_dir=cfg.checkpoint_dir)
        if trainer.is_global_zero:
            write_result(cfg.checkpoint_dir / RESULT_RECORD, result)
        status = "FINISHED"
    finally:
        tracking.stop_system_metrics()
        if trainer.is_global_zero:
            tracker.close(status)
    return result


def logged_metrics(tracker: Tracker) -> dict[str, float]:
    """The latest value of every training metric of the tracker's run (not the ``system/`` samples)."""
    run = tracker.call("get_run", tracker.client.get_run, tracker.run_id) if tracker.online else None
    return {k: float(v) for k, v in (run.data.metrics if run is not None else {}).items() if not k.startswith("system/")}
