"""The image tokenizer on the data side: load one by name, and the images it is trained on.

    model = load_tokenizer_model("runs/vq/tiny/tokenizer")     # or "tiny", "official", a Hub id, models:/…
    data = TokenizerImageData(ImageDataSpec(source="shapes"), multiple_of=4)   # a LightningDataModule

Training images come from the built-in shapes world, shapes + scikit-learn digits, or an image
folder, as ``(3, R, R)`` float tensors in [-1, 1]. Batches of any DataLoader passed in instead may be
such tensors, one-tensor tuples, or dicts holding the tensor under ``"pixels"`` (:func:`pixels_of`).
Encoding images with a loaded tokenizer is :func:`mmada.models.vq.encode_images`; training one is
:mod:`mmada.training.vq`.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from PIL import Image
from pydantic import Field, model_validator
from torch.utils.data import DataLoader, Dataset, DistributedSampler, TensorDataset

from mmada.builtin.shapes import generate_shapes
from mmada.config import MAX_COUNT, MAX_IMAGE_SIDE, Strict
from mmada.data.sources.builtin import DIGITS_N, digit_image
from mmada.data.sources.vision import IMAGE_EXTS
from mmada.errors import ConfigError, MMaDAError
from mmada.models.vq import MAGVITv2
from mmada.models.vq.preprocess import ResizeMode, images_to_tensor, load_image
from mmada.tracking import default_tracking_uri
from mmada.tracking.registry import resolve_model

# Where `load_tokenizer_model("tiny")` looks: the export of `mmada vq train --preset tiny`.
PRESET_DIRS = {"tiny": Path("runs/vq/tiny/tokenizer")}
OFFICIAL_REPO = "showlab/magvitv2"


def load_tokenizer_model(source: str, *, tracking_uri: str | None = None) -> MAGVITv2:
    """A tokenizer ready for :func:`~mmada.models.vq.encode_images` (eval mode, CPU, fp32).

    ``source``: a checkpoint directory (official layout or ours); ``"tiny"`` (the export of
    ``mmada vq train --preset tiny`` under ``runs/vq/tiny/tokenizer``); ``"official"``/``"magvitv2"``
    or a Hub id such as ``showlab/magvitv2`` (read from the Hugging Face cache; downloaded only when
    the Hub is online); or an MLflow URI (``models:/NAME@ALIAS``, ``models:/NAME/VERSION``,
    ``runs:/<run_id>/tokenizer``) resolved in ``tracking_uri`` (default: the platform's).
    """
    key = str(source)
    if key in PRESET_DIRS and not Path(key).is_dir():
        directory = PRESET_DIRS[key]
        if not directory.is_dir():
            raise MMaDAError(f"no trained {key!r} tokenizer at {directory}; run `mmada vq train --preset {key}` first")
        return MAGVITv2.from_pretrained(directory)
    if key.startswith(("models:/", "runs:/")):
        directory, _ = resolve_model(key, tracking_uri=tracking_uri or default_tracking_uri(),
                                     cache_dir=tempfile.mkdtemp(prefix="mmada-vq-"), field="image tokenizer")
        return MAGVITv2.from_pretrained(directory)
    return MAGVITv2.from_pretrained(OFFICIAL_REPO if key in ("official", "magvitv2") else key)


# ------------------------------------------------------------------------------------------------
# training images


class ImageDataSpec(Strict):
    """Where an image tokenizer's training images come from (when no DataLoaders are passed in)."""

    source: Literal["shapes", "shapes+digits", "folder"] = "shapes"
    """``shapes``: the built-in shapes world; ``shapes+digits``: half shapes, half scikit-learn digits
    (8×8 gray, upscaled, RGB); ``folder``: image files under ``folder``."""
    folder: str | None = None
    """Directory of images (searched recursively) for ``source: folder``."""
    image_size: int = Field(32, ge=8, le=MAX_IMAGE_SIDE)
    """Training resolution (square); must be a multiple of the model's downsampling factor."""
    resize_mode: Literal["crop", "squash", "none"] = "crop"
    num_train: int = Field(8192, ge=1, le=MAX_COUNT)
    """Generated training images (built-in sources); ``folder`` uses every file."""
    num_val: int = Field(256, ge=1, le=MAX_COUNT)
    """Held-out images (built-in: a different seed; folder: the last ``num_val`` files)."""
    seed: int = 0
    batch_size: int = Field(32, ge=1, le=MAX_COUNT)
    num_workers: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _check(self) -> ImageDataSpec:
        if self.source == "folder" and not self.folder:
            raise ValueError("data.folder is required when data.source is 'folder'")
        return self


def shapes_images(n: int, seed: int, image_size: int = 32) -> list[Image.Image]:
    """``n`` scenes of the built-in shapes world (``image_size``² RGB, deterministic in ``seed``)."""
    return [r["image"] for r in generate_shapes(n, seed=seed, image_size=image_size)]


def digits_images(n: int, seed: int, image_size: int = 32) -> list[Image.Image]:
    """``n`` scikit-learn digits (8×8, 17 gray levels) upscaled to ``image_size``² RGB, drawn with
    replacement in a seed-determined order."""
    order = np.random.default_rng(seed).integers(0, DIGITS_N, size=n)
    return [Image.fromarray(digit_image(int(i), image_size)) for i in order]


def builtin_images(source: str, n: int, seed: int, image_size: int) -> list[Image.Image]:
    if source == "shapes":
        return shapes_images(n, seed, image_size)
    if source == "shapes+digits":
        n_digits = n // 2
        imgs = shapes_images(n - n_digits, seed, image_size) + digits_images(n_digits, seed, image_size)
        order = np.random.default_rng(seed).permutation(len(imgs))
        return [imgs[i] for i in order]
    raise ConfigError(f"data.source={source!r} is not a built-in image source (shapes, shapes+digits)")


def folder_files(folder: str | Path) -> list[Path]:
    root = Path(folder)
    if not root.is_dir():
        raise ConfigError(f"data.folder={str(folder)!r} is not a directory")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file())
    if not files:
        raise ConfigError(f"data.folder={str(folder)!r} holds no image files ({', '.join(IMAGE_EXTS)})")
    return files


class ImageFileDataset(Dataset):
    """Image files decoded and preprocessed lazily (for folders too large to hold in memory)."""

    def __init__(self, files: Sequence[Path], resolution: int, mode: ResizeMode = "crop", multiple_of: int = 1):
        self.files, self.resolution, self.mode, self.multiple_of = list(files), resolution, mode, multiple_of

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        img = load_image(self.files[i])
        return images_to_tensor([img], self.resolution, self.mode, self.multiple_of)[0]


def build_datasets(spec: ImageDataSpec, multiple_of: int) -> tuple[Dataset, Dataset]:
    """Train and validation datasets of ``(3, R, R)`` tensors in [-1, 1]."""
    r = spec.image_size
    if spec.source == "folder":
        files = folder_files(spec.folder or "")
        if len(files) <= spec.num_val:
            raise ConfigError(f"data.folder has {len(files)} images; need more than data.num_val={spec.num_val}")
        return (
            ImageFileDataset(files[: -spec.num_val], r, spec.resize_mode, multiple_of),
            ImageFileDataset(files[-spec.num_val :], r, spec.resize_mode, multiple_of),
        )
    train = builtin_images(spec.source, spec.num_train, spec.seed, r)
    # A disjoint stream (different seed) for validation.
    val = builtin_images(spec.source, spec.num_val, spec.seed + 1_000_003, r)
    return (
        TensorDataset(images_to_tensor(train, r, spec.resize_mode, multiple_of)),
        TensorDataset(images_to_tensor(val, r, spec.resize_mode, multiple_of)),
    )


def pixels_of(batch: Any) -> torch.Tensor:
    """The ``(B, 3, H, W)`` pixel tensor of a batch (a tensor, ``(tensor,)`` or ``{"pixels": tensor}``)."""
    if isinstance(batch, dict):
        if "pixels" not in batch:
            raise MMaDAError(f"batch dict has no 'pixels' entry (keys: {sorted(batch)})")
        batch = batch["pixels"]
    elif isinstance(batch, list | tuple):
        batch = batch[0]
    if not isinstance(batch, torch.Tensor) or batch.dim() != 4:
        raise MMaDAError(f"expected a (B, 3, H, W) pixel batch, got {getattr(batch, 'shape', type(batch))}")
    return batch


class TokenizerImageData(L.LightningDataModule):
    """Training and validation images of an image tokenizer, built from ``spec`` (or the loaders given).

    Each rank reads its own share of every epoch's shuffle (``DistributedSampler``, seeded by
    ``spec.seed`` and the epoch, so a resumed run reshuffles the same way).
    """

    def __init__(self, spec: ImageDataSpec, multiple_of: int, *, train_loader: DataLoader | None = None,
                 val_loader: DataLoader | None = None) -> None:
        super().__init__()
        self.spec, self.multiple_of = spec, multiple_of
        self.train_loader, self.val_loader = train_loader, val_loader
        self._datasets: tuple[Dataset, Dataset] | None = None

    def datasets(self) -> tuple[Dataset, Dataset]:
        if self._datasets is None:
            self._datasets = build_datasets(self.spec, self.multiple_of)
        return self._datasets

    def train_dataloader(self) -> DataLoader:
        if self.train_loader is not None:
            return self.train_loader
        train, _ = self.datasets()
        trainer = self.trainer
        sampler = DistributedSampler(train, num_replicas=trainer.world_size if trainer else 1,
                                     rank=trainer.global_rank if trainer else 0, shuffle=True, seed=self.spec.seed)
        sampler.set_epoch(trainer.current_epoch if trainer else 0)
        return DataLoader(train, batch_size=self.spec.batch_size, sampler=sampler, num_workers=self.spec.num_workers,
                          drop_last=len(train) >= self.spec.batch_size)

    def val_dataloader(self) -> DataLoader:
        if self.val_loader is not None:
            return self.val_loader
        _, val = self.datasets()
        return DataLoader(val, batch_size=max(self.spec.batch_size, 64), shuffle=False,
                          num_workers=self.spec.num_workers)
