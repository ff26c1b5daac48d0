"""The training harness: the one loop every model of the platform trains through.

    tracker = open_tracker(cfg)
    result = fit(cfg, module, datamodule, tracker=tracker, tags=lineage_tags(...),
                 export=Export(write, "hf", registered_model="mmada-tiny", alias="pretrain"))

:func:`mmada.training.run.train` (the MMaDA stages) and :func:`mmada.training.vq.train_tokenizer`
(the image tokenizer) build their Lightning module, data module and export function, and call
:func:`fit`, which, on every rank (rank 0 owns the MLflow run):

1. seeds everything and picks the checkpoint to resume from (``checkpoint.resume: auto``:
   ``<checkpoint dir>/last.ckpt`` when it exists, else a fresh start);
2. builds the Trainer with the non-blocking MLflow logger (:class:`TrackerLogger`) and the harness
   callbacks: the MLflow run (:class:`TrackingCallback`: created, or re-attached when resuming;
   params, lineage tags, system metrics), atomic checkpoints every ``checkpoint.every_n_steps``
   plus ``last``, throughput;
3. validates once before training when asked (the step-0 baseline; its metrics are kept in the
   checkpoints, so a resumed run does not repeat it);
4. fits, then validates the final weights unless that step was just validated;
5. writes the deliverable directory (the task's :class:`Export`, atomically), logs it as the run's
   artifacts and, when a registered model is named, registers it as a new version with an alias;
6. closes the run FINISHED, or FAILED when anything raised.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from pydantic import TypeAdapter, ValidationError

from mmada.config import format_errors
from mmada.errors import ConfigError, MMaDAError
from mmada.files import write_text
from mmada.tracking import default_tracking_uri
from mmada.tracking.client import Tracker
from mmada.tracking.logger import TrackerLogger
from mmada.tracking.registry import register_export
from mmada.training.callbacks import (
    AtomicModelCheckpoint,
    SpeedMonitor,
    TrackingCallback,
    clean_partials,
    find_resume_checkpoint,
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


def resolve_resume(cfg: RunConfig) -> str | None:
    r = cfg.checkpoint.resume
    if r == "never":
        return None
    if r == "auto":
        found = find_resume_checkpoint(cfg.checkpoint_dir)
        return str(found) if found else None
    if not Path(r).exists():
        raise ConfigError(f"checkpoint.resume: {r!r} does not exist")
    return r


def scalar_metrics(trainer: L.Trainer) -> dict[str, float]:
    return {k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v) and v.numel() == 1}


def publish(tracker: Tracker, export: Export, export_dir: Path | None, tags: dict[str, str]) -> str | None:
    """Log the export as the run's artifacts, registered as a new version when a model is named."""
    if export_dir is None:
        return None
    if export.registered_model:
        version = register_export(tracker, export_dir, export.registered_model, alias=export.alias,
                                  tags={**tags, "run_id": tracker.run_id or ""},
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
    tracking = TrackingCallback(tracker, cfg, resuming=resume is not None, tags=tags, inputs=list(inputs))
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
    status, export_dir, version, seconds, metrics = "FAILED", None, None, 0.0, {}
    try:
        if baseline and resume is None:
            trainer.validate(module, datamodule=data, verbose=False)  # step 0: the initial weights
            validations.baseline = scalar_metrics(trainer)
        start = time.perf_counter()
        trainer.fit(module, datamodule=data, ckpt_path=resume)
        seconds = time.perf_counter() - start
        metrics = scalar_metrics(trainer)
        if validate and validations.last_step != trainer.global_step:
            trainer.validate(module, datamodule=data, verbose=False)
            metrics |= scalar_metrics(trainer)
        export_dir = export.write(trainer)
        if trainer.is_global_zero:
            version = publish(tracker, export, export_dir, tags)
        status = "FINISHED"
    finally:
        tracking.stop_system_metrics()
        if trainer.is_global_zero:
            tracker.close(status)
    return TrainResult(global_step=trainer.global_step, run_id=tracking.run_id, export_dir=export_dir,
                       model_version=version, registered_model=export.registered_model if version else None,
                       metrics=metrics, initial_metrics=validations.baseline,
                       train_seconds=seconds, tokens_per_s=speed.history, checkpoint_dir=cfg.checkpoint_dir)
