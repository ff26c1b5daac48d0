"""Encode images into codes once, so data shards (or ``.npz`` files) store codes instead of pixels.

    codes = encode_images(model, pil_images, batch_size=64)       # (N, h·w) int16/int32 numpy
    save_codes("codes.npz", codes, sources=[...], grid=(8, 8))

Images are streamed in batches (the iterable is consumed once, lazily), preprocessed exactly like
:meth:`MAGVITv2.preprocess`, and encoded on CPU or GPU with gradients off. ``mmada vq encode`` and
curation (``vq.enabled``) call these; a tokenizer is loaded by name with
:func:`mmada.data.vq.load_tokenizer_model`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mmada.errors import MMaDAError
from mmada.files import atomic_write
from mmada.models.vq.model import MAGVITv2
from mmada.models.vq.preprocess import RESIZE_MODES, ImageInputError, image_to_array


def codes_dtype(codebook_size: int) -> np.dtype:
    """Smallest signed integer type holding every code (int16 up to 32768 codes)."""
    return np.dtype(np.int16) if codebook_size <= 2**15 else np.dtype(np.int32)


def _batches(items: Iterable, size: int) -> Iterator[list]:
    it = iter(items)
    while chunk := list(islice(it, size)):
        yield chunk


def encode_images(
    model: MAGVITv2,
    images: Iterable[Image.Image],
    *,
    batch_size: int = 64,
    device: str | None = None,
    resolution: int | None = None,
    mode: str = "crop",
) -> np.ndarray:
    """Encode PIL images into an ``(N, h·w)`` array of code indices (row-major token grid).

    ``resolution`` defaults to the model's nominal resolution; ``mode`` is ``crop`` (resize +
    centre crop, MMaDA's default), ``squash`` or ``none`` (images must already be square at
    ``resolution``). ``device`` (default: ``cuda`` when available, else the model's device) moves
    the model there for the call and back afterwards. The dtype
    is int16 for codebooks up to 32768 codes, else int32. Bad images raise
    :class:`~mmada.models.vq.ImageInputError` naming the image's position in the stream.
    """
    if batch_size < 1:
        raise MMaDAError(f"batch_size must be >= 1, got {batch_size}")
    if mode not in RESIZE_MODES:
        raise MMaDAError(f"unknown resize mode {mode!r}; expected one of {RESIZE_MODES}")
    res = resolution or model.config.resolution
    f = model.downsample_factor
    if res % f:
        raise MMaDAError(f"resolution {res} is not a multiple of the tokenizer's downsampling factor {f}")
    n_tokens = (res // f) ** 2
    dtype = codes_dtype(model.codebook_size)
    original = model.device
    if device is None:
        target = torch.device("cuda") if torch.cuda.is_available() else original
    else:
        try:
            target = torch.device(device)
        except RuntimeError as exc:
            raise MMaDAError(f"device={device!r} is not a torch device ({exc})") from None
    was_training = model.training
    model.eval()
    if target != original:
        model.to(target)
    chunks: list[np.ndarray] = []
    seen = 0
    try:
        for batch in _batches(images, batch_size):
            arrays = []
            for j, im in enumerate(batch):
                if not isinstance(im, Image.Image):
                    raise ImageInputError(f"image {seen + j}: expected a PIL image, got {type(im).__name__}")
                arrays.append(image_to_array(im, res, mode, name=f"image {seen + j}"))  # (3, R, R)
            pixels = torch.from_numpy(np.stack(arrays))  # (B, 3, R, R) in [-1, 1]
            codes = model.encode(pixels)  # (B, h·w) int64 on target
            chunks.append(codes.cpu().numpy().astype(dtype))
            seen += len(batch)
    finally:
        if target != original:
            model.to(original)
        model.train(was_training)
    if not chunks:
        return np.empty((0, n_tokens), dtype=dtype)
    return np.concatenate(chunks)


def save_codes(path: str | os.PathLike, codes: np.ndarray, sources: list[str], grid: tuple[int, int]) -> Path:
    """Write ``codes``/``sources``/``grid`` arrays to an ``.npz`` atomically (temp file + rename)."""
    path = Path(path)
    if path.suffix != ".npz":
        raise MMaDAError(f"output {path} must end in .npz")
    with atomic_write(path) as fh:
        np.savez(fh, codes=codes, sources=np.array(sources, dtype=str), grid=np.array(grid, dtype=np.int64))
    return path
