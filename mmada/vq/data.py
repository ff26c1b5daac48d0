"""Image data for tokenizer training: built-in generators, image folders, and a generic wrapper.

The Lightning module accepts any DataLoader whose batches are ``(B, 3, H, W)`` float tensors in
[-1, 1], or dicts holding such a tensor under ``"pixels"`` (what the WebDataset loaders of
:mod:`mmada.data` can produce). This module builds such loaders for the CLI / tiny defaults.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, TensorDataset

from mmada.errors import ConfigError
from mmada.models.vq.preprocess import ResizeMode, images_to_tensor, load_image
from mmada.vq.config import DataConfig

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def shapes_images(n: int, seed: int, image_size: int = 32) -> list[Image.Image]:
    """``n`` scenes of the built-in shapes world (``image_size``² RGB, deterministic in ``seed``)."""
    from mmada.builtin.shapes import generate_shapes

    return [r["image"] for r in generate_shapes(n, seed=seed, image_size=image_size)]


def digits_images(n: int, seed: int, image_size: int = 32) -> list[Image.Image]:
    """``n`` scikit-learn digits (8×8, 17 gray levels) upscaled to ``image_size``² RGB.

    The 1,797 digits are sampled with replacement in a seed-determined order.
    """
    from sklearn.datasets import load_digits

    digits = load_digits().images  # (1797, 8, 8) float in [0, 16]
    order = np.random.default_rng(seed).integers(0, len(digits), size=n)
    out = []
    for i in order:
        gray = Image.fromarray(np.round(digits[i] * (255 / 16)).astype(np.uint8), "L")
        out.append(gray.resize((image_size, image_size), Image.Resampling.BILINEAR).convert("RGB"))
    return out


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
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise ConfigError(f"data.folder={str(folder)!r} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
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


def build_datasets(cfg: DataConfig, multiple_of: int) -> tuple[Dataset, Dataset]:
    """Train and validation datasets of ``(3, R, R)`` tensors in [-1, 1]."""
    r = cfg.image_size
    if cfg.source == "folder":
        files = folder_files(cfg.folder or "")
        if len(files) <= cfg.num_val:
            raise ConfigError(f"data.folder has {len(files)} images; need more than data.num_val={cfg.num_val}")
        return (
            ImageFileDataset(files[: -cfg.num_val], r, cfg.resize_mode, multiple_of),
            ImageFileDataset(files[-cfg.num_val :], r, cfg.resize_mode, multiple_of),
        )
    train = builtin_images(cfg.source, cfg.num_train, cfg.seed, r)
    # A disjoint stream (different seed) for validation.
    val = builtin_images(cfg.source, cfg.num_val, cfg.seed + 1_000_003, r)
    return (
        TensorDataset(images_to_tensor(train, r, cfg.resize_mode, multiple_of)),
        TensorDataset(images_to_tensor(val, r, cfg.resize_mode, multiple_of)),
    )


def build_dataloaders(cfg: DataConfig, multiple_of: int) -> tuple[DataLoader, DataLoader]:
    train, val = build_datasets(cfg, multiple_of)
    generator = torch.Generator().manual_seed(cfg.seed)
    return (
        DataLoader(train, batch_size=cfg.batch_size, shuffle=True, drop_last=len(train) >= cfg.batch_size,
                   num_workers=cfg.num_workers, generator=generator),
        DataLoader(val, batch_size=max(cfg.batch_size, 64), shuffle=False, num_workers=cfg.num_workers),
    )
