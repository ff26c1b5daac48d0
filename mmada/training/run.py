"""Run one training stage end to end: data → Lightning → checkpoints → HF export → registered version.

    from mmada.training import load_train_config, train
    result = train(load_train_config("configs/train/tiny_pretrain.yaml"))
    result.model_version        # "3" of mmada-tiny, now aliased @pretrain

Every rank runs this function (``srun``/``torchrun`` start one process per device). Rank 0 owns
the MLflow run; under FSDP the export gathers the full state dict collectively. Resuming
(``checkpoint.resume: auto``, the default) continues from ``<checkpoint dir>/last.ckpt`` with the
same optimizer, scheduler and step, in the same MLflow run, with the data stream re-seeded by step.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import torch
from pydantic import TypeAdapter, ValidationError

from mmada.config import format_errors
from mmada.data.loading import ShardDataModule
from mmada.errors import ConfigError, MMaDAError
from mmada.files import atomic_dir, write_text
from mmada.models import MMaDAConfig, MMaDAModelLM
from mmada.tokenization import SpecialTokenIds, check_vocab, load_text_tokenizer
from mmada.tracking import default_tracking_uri
from mmada.tracking.client import Tracker
from mmada.tracking.lineage import lineage_tags
from mmada.tracking.logger import TrackerLogger
from mmada.tracking.registry import register_export, resolve_model
from mmada.training.callbacks import (
    AtomicModelCheckpoint,
    SampleCallback,
    SpeedMonitor,
    TrackingCallback,
    clean_partials,
    find_resume_checkpoint,
)
from mmada.training.config import TrainConfig
from mmada.training.module import DiffusionModule
from mmada.training.parallelize import full_state_dict, is_sharded, model_weights
from mmada.training.trainer import build_trainer

log = logging.getLogger("mmada.training")
# Lightning warnings about choices made on purpose here.
_EXPECTED_WARNINGS = (
    r".*overridden `on_after_batch_transfer` in `LightningModule` but have passed in a `LightningDataModule`.*",
    r".*Your `IterableDataset` has `__len__` defined.*",  # validation loaders state their exact length
)


@dataclass
class TrainResult:
    global_step: int
    run_id: str | None
    export_dir: Path | None
    model_version: str | None
    registered_model: str | None
    metrics: dict[str, float] = field(default_factory=dict)
    tokens_per_s: list[float] = field(default_factory=list)
    checkpoint_dir: Path | None = None


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
class ModelSource:
    config: MMaDAConfig
    tokenizer: object
    special: SpecialTokenIds
    init_dir: Path | None
    parent: dict | None


def resolve_model_source(cfg: TrainConfig, tracking_uri: str) -> ModelSource:
    """Model config, tokenizer and initial weights named by ``cfg.model``."""
    init_dir, parent = None, None
    if cfg.model.init is not None:
        init_dir, parent = resolve_model(cfg.model.init, tracking_uri=tracking_uri, cache_dir=cfg.out_dir / "init")
        config = MMaDAConfig.from_pretrained(init_dir)
        tok_src = cfg.model.tokenizer or (str(init_dir) if (init_dir / "tokenizer.json").is_file() else "builtin")
    else:
        config = MMaDAConfig.from_preset(cfg.model.preset, **cfg.model.overrides)
        tok_src = cfg.model.tokenizer or "builtin"
    tokenizer = load_text_tokenizer(tok_src)
    special = SpecialTokenIds.from_tokenizer(tokenizer)
    check_vocab(special, config)
    return ModelSource(config, tokenizer, special, init_dir, parent)


def resolve_resume(cfg: TrainConfig) -> str | None:
    r = cfg.checkpoint.resume
    if r == "never":
        return None
    if r == "auto":
        found = find_resume_checkpoint(cfg.checkpoint_dir)
        return str(found) if found else None
    if not Path(r).exists():
        raise ConfigError(f"checkpoint.resume: {r!r} does not exist")
    return r


def registered_name(cfg: TrainConfig, config: MMaDAConfig) -> str:
    if cfg.tracking.registered_model:
        return cfg.tracking.registered_model
    if cfg.model.preset:
        return f"mmada-{cfg.model.preset}"
    from mmada.tracking.registry import parse_model_uri

    parsed = parse_model_uri(cfg.model.init or "")
    return parsed["name"] if parsed else f"mmada-{config.d_model}x{config.n_layers}"


def export_hf(config: MMaDAConfig, state: dict[str, torch.Tensor], tokenizer, target: Path) -> Path:
    """``save_pretrained`` (safetensors) + tokenizer files, written to a temp dir and renamed into place."""
    with atomic_dir(target) as tmp:
        with torch.device("meta"):
            shell = MMaDAModelLM(config)
        shell.save_pretrained(tmp, state_dict=state, safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
    return target


def export_checkpoint(cfg: TrainConfig, checkpoint: str | os.PathLike, target: str | os.PathLike | None = None) -> Path:
    """Export the weights of one of the stage's checkpoints as a ``save_pretrained`` directory.

    The run's final export is its last step; this picks an earlier one (``<out_dir>/checkpoints/
    step00001000.ckpt``) for evaluation or as the start of another stage. ``cfg`` is the run's own
    config: it names the architecture and tokenizer, which a Lightning checkpoint does not store.
    Loaded with ``weights_only=True`` (no arbitrary unpickling). Default target:
    ``<out_dir>/exports/step<N>``.
    """
    path = Path(checkpoint)
    if path.is_dir():
        raise ConfigError(f"{path} is a sharded (FSDP/DCP) checkpoint directory; export it from the run that wrote it "
                          "or consolidate it first (torch.distributed.checkpoint.format_utils.dcp_to_torch_save)")
    if not path.is_file():
        raise ConfigError(f"checkpoint {str(path)!r} does not exist")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if "state_dict" not in ckpt:
        raise ConfigError(f"{path} is not a Lightning training checkpoint (no 'state_dict')")
    state = model_weights(ckpt["state_dict"])
    src = resolve_model_source(cfg, cfg.tracking.uri or default_tracking_uri())
    step = int(ckpt.get("global_step", 0))
    target = Path(target) if target is not None else cfg.out_dir / "exports" / f"step{step:08d}"
    return export_hf(src.config, state, src.tokenizer, target)


def train(cfg: TrainConfig, *, progress_bar: bool = False) -> TrainResult:
    """Run the stage described by ``cfg`` (see the module docstring)."""
    for message in _EXPECTED_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    torch.set_float32_matmul_precision(cfg.trainer.matmul_precision)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    out = cfg.out_dir
    out.mkdir(parents=True, exist_ok=True)
    tracking_uri = cfg.tracking.uri or default_tracking_uri()
    src = resolve_model_source(cfg, tracking_uri)
    t = cfg.trainer
    if cfg.stage == "grpo":  # UniGRPO: prompt batches in, rollouts + rewards inside the module
        from mmada.training.grpo import GRPOModule, GRPOPromptData

        dm = GRPOPromptData(cfg)
        module = GRPOModule(cfg, model_config=src.config, special=src.special, init_dir=src.init_dir)
    else:
        dm = ShardDataModule(cfg.data, src.tokenizer, num_vq_tokens=src.config.num_vq_tokens,
                             batches_per_epoch=t.max_steps * t.accumulate_grad_batches)
        module = DiffusionModule(cfg, model_config=src.config, special=src.special, init_dir=src.init_dir)
    inputs = dm.dataset_inputs()
    resume = resolve_resume(cfg)

    tracker = Tracker(tracking_uri, max_retries=cfg.tracking.max_retries, fallback_path=out / "mlflow_failed.jsonl")
    tags = lineage_tags(stage=cfg.stage, config_hash=cfg.config_hash(), inputs=inputs, parent=src.parent,
                        init=cfg.model.init)
    if cfg.grpo is not None:  # the reward configuration is part of a grpo version's lineage
        g = cfg.grpo
        tags |= {"grpo.reward_funcs": json.dumps(g.reward_funcs), "grpo.reward_weights": json.dumps(g.reward_weights),
                 "grpo.estimator": g.estimator, "grpo.beta": str(g.beta)}
    tracking_cb = TrackingCallback(tracker, cfg, resuming=resume is not None, tags=tags, inputs=inputs)
    ckpt_cb = AtomicModelCheckpoint(
        dirpath=str(cfg.checkpoint_dir), filename="step{step:08d}", auto_insert_metric_name=False,
        every_n_train_steps=cfg.checkpoint.every_n_steps, save_last=True, monitor="step", mode="max",
        save_top_k=cfg.checkpoint.keep_last, enable_version_counter=False,
    )
    speed = SpeedMonitor()
    callbacks = [tracking_cb, ckpt_cb, speed, SampleCallback(tracker, src.tokenizer, out)]
    trainer = build_trainer(cfg, logger=TrackerLogger(tracker, cfg.experiment), callbacks=callbacks,
                            progress_bar=progress_bar)
    if trainer.is_global_zero:
        clean_partials(cfg.checkpoint_dir)
    status, export_dir, version = "FAILED", None, None
    name = registered_name(cfg, src.config)
    try:
        trainer.fit(module, datamodule=dm, ckpt_path=resume)
        if dm.val_tasks():
            trainer.validate(module, datamodule=dm, verbose=False)
        # collective under FSDP (every rank); otherwise only rank 0 needs the weights
        state = full_state_dict(trainer) if is_sharded(trainer) or trainer.is_global_zero else None
        if trainer.is_global_zero:
            export_dir = export_hf(src.config, state, src.tokenizer, out / "export")
            if cfg.tracking.registry:
                version = register_export(tracker, export_dir, name, alias=cfg.alias,
                                          tags={**tags, "run_id": tracker.run_id or ""})
                if version is None:
                    log.warning("the model was exported to %s but not registered (MLflow unavailable)", export_dir)
        status = "FINISHED"
    finally:
        tracking_cb.stop_system_metrics()
        if trainer.is_global_zero:
            tracker.close(status)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v) and v.numel() == 1}
    return TrainResult(global_step=trainer.global_step, run_id=tracking_cb.run_id, export_dir=export_dir,
                       model_version=version, registered_model=name if version else None, metrics=metrics,
                       tokens_per_s=speed.history, checkpoint_dir=cfg.checkpoint_dir)
