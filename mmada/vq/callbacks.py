"""Callbacks of tokenizer training: reconstruction-grid artifacts and safetensors checkpoints.

Lightning's own ``.ckpt`` files are pickles and its MLflow ``log_model`` breaks on MLflow 3 (Path
artifact paths); both are off. Checkpoints here are tokenizer export directories (config.json +
model.safetensors) that :meth:`MAGVITv2.from_pretrained` reads.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import lightning as L
import torch
from PIL import Image

from mmada.models.vq.preprocess import tensor_to_images


def reconstruction_grid(originals: torch.Tensor, reconstructions: torch.Tensor, scale: int = 1) -> Image.Image:
    """Two rows: originals on top, reconstructions below (``(B, 3, H, W)`` in [-1, 1])."""
    tops, bottoms = tensor_to_images(originals), tensor_to_images(reconstructions)
    w, h = tops[0].size
    gap = 2
    grid = Image.new("RGB", (len(tops) * (w + gap) - gap, 2 * h + gap), (128, 128, 128))
    for i, (a, b) in enumerate(zip(tops, bottoms)):
        grid.paste(a, (i * (w + gap), 0))
        grid.paste(b, (i * (w + gap), h + gap))
    if scale > 1:
        grid = grid.resize((grid.width * scale, grid.height * scale), Image.Resampling.NEAREST)
    return grid


class ReconstructionGrid(L.Callback):
    """After each validation: a PNG grid of fixed validation images and their reconstructions,
    written to ``<output_dir>/reconstructions/`` and logged as an MLflow artifact."""

    def __init__(self, images: torch.Tensor, output_dir: Path):
        self.images = images  # (N, 3, H, W) in [-1, 1]
        self.output_dir = output_dir
        self.paths: list[Path] = []

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        model = pl_module.model
        x = self.images.to(pl_module.device)
        rec = model.decode(model.encode(x), model.config.grid(*x.shape[-2:]))
        scale = max(1, 128 // x.shape[-1])  # make 32-px images visible
        grid = reconstruction_grid(x.cpu(), rec.cpu(), scale=scale)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        path = self.output_dir / f"step_{trainer.global_step:06d}.png"
        grid.save(path)
        self.paths.append(path)
        logger = trainer.logger
        if logger is not None and hasattr(logger, "run_id"):
            logger.experiment.log_artifact(logger.run_id, str(path), artifact_path="reconstructions")


class SafetensorsCheckpoint(L.Callback):
    """Every ``every`` steps, export the tokenizer to ``<dir>/step-XXXXXX`` (keeping the last ``keep``)."""

    def __init__(self, directory: Path, every: int, keep: int = 2):
        self.directory, self.every, self.keep = directory, every, keep
        self.saved: list[Path] = []

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step == 0 or step % self.every or not trainer.is_global_zero:
            return
        path = pl_module.model.save_pretrained(self.directory / f"step-{step:06d}", extra={"_step": step})
        self.saved.append(path)
        while len(self.saved) > self.keep:
            shutil.rmtree(self.saved.pop(0), ignore_errors=True)
