"""Train an image tokenizer on the training harness: images → Lightning → MLflow → safetensors export.

    mmada vq train --preset tiny                      # built-in shapes, 32 px, 64 tokens, CPU
    mmada vq train --config configs/vq/tiny.yaml --set trainer.max_steps=500

or from Python (e.g. a Prefect task), optionally with your own DataLoaders::

    result = train_tokenizer(load_config(VQTrainConfig, tiny()), train_loader=..., val_loader=...)
    result.export_dir   # <output_dir>/tokenizer: config.json + model.safetensors

The loop is :func:`mmada.training.harness.fit` (resume from atomic checkpoints, the non-blocking
MLflow logger, the registry); this module adds the tokenizer's module, images, reconstruction grids
and export. The run validates once before training (the step-0 baseline), every
``trainer.val_every_n_steps`` and at the end; the export is also logged as the run's ``tokenizer``
artifacts, and ``<output_dir>/metrics.json`` (steps, train seconds, initial and final validation
metrics) is written for DVC.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader

from mmada.data.images import image_grid
from mmada.data.vq import TokenizerImageData, pixels_of
from mmada.files import save_png, write_json
from mmada.models.vq import tensor_to_images
from mmada.tracking.client import Tracker
from mmada.tracking.lineage import lineage_tags
from mmada.training.harness import Export, TrainResult, fit, open_tracker
from mmada.training.vq.config import VQTrainConfig
from mmada.training.vq.module import VQTokenizerModule


def first_images(loader: DataLoader, n: int) -> torch.Tensor:
    """The first ``n`` images of a loader, ``(n, 3, H, W)``."""
    chunks, have = [], 0
    for batch in loader:
        chunks.append(pixels_of(batch)[: n - have])
        have += chunks[-1].shape[0]
        if have >= n:
            break
    return torch.cat(chunks)


class ReconstructionGrid(Callback):
    """After each validation: the first ``n`` validation images (top row) and their reconstructions
    (bottom row), written to ``<directory>/step_XXXXXX.png`` and logged to the run's ``reconstructions/``."""

    def __init__(self, tracker: Tracker, n: int, directory: Path) -> None:
        self.tracker, self.n, self.directory = tracker, n, directory
        self.images: torch.Tensor | None = None  # (n, 3, H, W) in [-1, 1]
        self.paths: list[Path] = []

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        if self.images is None:
            self.images = first_images(trainer.val_dataloaders, self.n)
        model = pl_module.model
        x = self.images.to(pl_module.device)
        rec = model.decode(model.encode(x), model.config.grid(*x.shape[-2:]))
        grid = image_grid([*tensor_to_images(x.cpu()), *tensor_to_images(rec.cpu())], ncol=len(x),
                          scale=max(1, 128 // x.shape[-1]))  # make 32-px images visible
        path = save_png(self.directory / f"step_{trainer.global_step:06d}.png", grid)
        self.paths.append(path)
        self.tracker.log_artifact(path, "reconstructions")


def train_tokenizer(cfg: VQTrainConfig, *, train_loader: DataLoader | None = None,
                    val_loader: DataLoader | None = None, progress_bar: bool = False) -> TrainResult:
    """Train per ``cfg``; loaders default to ``cfg.data`` (built-in generators or an image folder)."""
    out = cfg.out_dir
    tracker = open_tracker(cfg)
    module = VQTokenizerModule(cfg)
    data = TokenizerImageData(cfg.data, cfg.model.downsample_factor, train_loader=train_loader,
                              val_loader=val_loader)

    def write_export(trainer: L.Trainer) -> Path | None:
        if not trainer.is_global_zero:
            return None
        return module.model.save_pretrained(out / "tokenizer", extra={
            "_mlflow_run_id": tracker.run_id, "_steps": trainer.global_step,
            "_val_psnr": round(module.last_val["psnr"], 4)})

    export = Export(write_export, "tokenizer", registered_model=cfg.registered_model, alias=cfg.alias,
                    always_log=True, description="MAGVIT-v2 image tokenizer (config.json + model.safetensors)")
    tags = lineage_tags(stage="vq", config_hash=cfg.config_hash(), inputs=[], init=cfg.init_from)
    result = fit(cfg, module, data, tracker=tracker, export=export, tags=tags, baseline=True,
                 callbacks=[ReconstructionGrid(tracker, cfg.grid_images, out / "reconstructions")],
                 progress_bar=progress_bar)
    if result.export_dir is not None:
        write_json(out / "metrics.json", {"steps": result.global_step, "train_seconds": round(result.train_seconds, 2),
                                          "initial": val_metrics(result.initial_metrics),
                                          "final": val_metrics(result.metrics)})
    return result


def val_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """``{"psnr": …, …}`` of the ``val/…`` entries."""
    return {k.removeprefix("val/"): v for k, v in metrics.items() if k.startswith("val/")}
