"""Train an image tokenizer end to end: data → Lightning → MLflow → safetensors export.

    mmada vq train --preset tiny                      # built-in shapes, 32 px, 64 tokens, CPU
    mmada vq train --config configs/vq/tiny.yaml --set max_steps=500

or from Python (e.g. a Prefect task), optionally with your own DataLoaders::

    result = train_tokenizer(load_train_config("tiny"), train_loader=..., val_loader=...)
    result.export_dir   # <output_dir>/tokenizer: config.json + model.safetensors

The run validates once before training (the step-0 baseline) and once at the end, logs everything to
MLflow (metrics per step, reconstruction grids, the exported tokenizer as the ``tokenizer``
artifact) and writes ``<output_dir>/metrics.json`` for DVC.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import MLFlowLogger
from torch.utils.data import DataLoader

from mmada.errors import ConfigError
from mmada.files import write_json
from mmada.models.vq import MAGVITv2
from mmada.tracking import default_tracking_uri
from mmada.vq.callbacks import ReconstructionGrid, SafetensorsCheckpoint
from mmada.vq.config import VQTrainConfig
from mmada.vq.data import build_dataloaders
from mmada.vq.module import VQTokenizerModule, pixels_of


@dataclass
class TrainResult:
    export_dir: Path
    run_id: str
    steps: int
    train_seconds: float
    initial_val: dict[str, float]
    final_val: dict[str, float]
    grids: list[Path] = field(default_factory=list)


def _grid_images(val_loader: DataLoader, n: int) -> torch.Tensor:
    chunks, have = [], 0
    for batch in val_loader:
        x = pixels_of(batch)
        chunks.append(x[: n - have])
        have += chunks[-1].shape[0]
        if have >= n:
            break
    return torch.cat(chunks)


def _initial_model(cfg: VQTrainConfig) -> MAGVITv2:
    if cfg.init_from is None:
        return MAGVITv2(cfg.model)
    model = MAGVITv2.from_pretrained(cfg.init_from)
    if model.config != cfg.model:
        raise ConfigError(f"init_from={cfg.init_from!r} has a different architecture than the config's model section")
    return model.train()


def train_tokenizer(
    cfg: VQTrainConfig,
    *,
    train_loader: DataLoader | None = None,
    val_loader: DataLoader | None = None,
    progress_bar: bool = False,
) -> TrainResult:
    """Train per ``cfg``; loaders default to ``cfg.data`` (built-in generators or an image folder)."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = _initial_model(cfg)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if train_loader is None or val_loader is None:
        built_train, built_val = build_dataloaders(cfg.data, cfg.model.downsample_factor)
        train_loader, val_loader = train_loader or built_train, val_loader or built_val
    module = VQTokenizerModule(cfg, model)

    logger = MLFlowLogger(
        experiment_name=cfg.experiment,
        run_name=cfg.name,
        tracking_uri=cfg.tracking_uri or default_tracking_uri(),
        log_model=False,
    )
    grid_cb = ReconstructionGrid(_grid_images(val_loader, cfg.grid_images), out / "reconstructions")
    callbacks: list[L.Callback] = [grid_cb]
    if cfg.checkpoint_every:
        callbacks.append(SafetensorsCheckpoint(out / "checkpoints", cfg.checkpoint_every, cfg.keep_checkpoints))
    trainer = L.Trainer(
        max_steps=cfg.max_steps,
        accelerator=cfg.accelerator,
        devices=1,
        precision=cfg.precision,
        logger=logger,
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=progress_bar,
        val_check_interval=cfg.val_every,
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
        log_every_n_steps=cfg.log_every,
        default_root_dir=str(out),
    )

    trainer.validate(module, val_loader, verbose=False)  # step-0 baseline
    initial = dict(module.last_val)
    t0 = time.perf_counter()
    trainer.fit(module, train_loader, val_loader)
    seconds = time.perf_counter() - t0
    if trainer.global_step % cfg.val_every:  # the last step was not validated yet
        trainer.validate(module, val_loader, verbose=False)
    final = dict(module.last_val)

    run_id = logger.run_id
    client = logger.experiment
    client.log_metric(run_id, "train/seconds", seconds, step=trainer.global_step)
    export = module.model.save_pretrained(
        out / "tokenizer",
        extra={"_mlflow_run_id": run_id, "_steps": trainer.global_step, "_val_psnr": round(final["psnr"], 4)},
    )
    client.log_artifacts(run_id, str(export), artifact_path="tokenizer")
    metrics = {"steps": trainer.global_step, "train_seconds": round(seconds, 2),
               "initial": initial, "final": final}
    write_json(out / "metrics.json", metrics)
    if cfg.register_as:
        register_export(client, cfg.register_as, run_id)
    return TrainResult(export, run_id, trainer.global_step, seconds, initial, final, list(grid_cb.paths))


def register_export(client, name: str, run_id: str) -> str:
    """Register the run's ``tokenizer`` artifact directory as a new version of model ``name``.

    MLflow 3's ``register_model("runs:/…")`` only accepts LoggedModels, so the version is created
    directly from the artifact location. Returns the version number.
    """
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name)
    except MlflowException as exc:
        if "already exists" not in str(exc).lower():
            raise
    source = f"{client.get_run(run_id).info.artifact_uri}/tokenizer"
    return client.create_model_version(name, source=source, run_id=run_id).version


def result_summary(result: TrainResult) -> dict:
    d = asdict(result)
    d["export_dir"] = str(result.export_dir)
    d["grids"] = [str(p) for p in result.grids]
    return d
