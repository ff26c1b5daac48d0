"""Pre-tokenize images into codes once, so data shards can store codes instead of pixels.

    model = load_tokenizer_model("runs/vq/tiny/tokenizer")     # or "tiny", "official", models:/…
    codes = encode_images(model, pil_images, batch_size=64)  # (N, h·w) int16/int32 numpy

    mmada vq encode runs/vq/tiny/tokenizer images/ --output codes.npz

Images are streamed in batches (the iterable is consumed once, lazily), preprocessed exactly like
:meth:`MAGVITv2.preprocess`, and encoded on CPU or GPU with gradients off.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mmada.errors import MMaDAError
from mmada.files import atomic_write
from mmada.models.vq import MAGVITv2
from mmada.models.vq.preprocess import RESIZE_MODES, ImageInputError, image_to_array

# Where `load_tokenizer_model("tiny")` looks: the export of `mmada vq train --preset tiny`.
PRESET_DIRS = {"tiny": Path("runs/vq/tiny/tokenizer")}
OFFICIAL_REPO = "showlab/magvitv2"


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


def load_tokenizer_model(path_or_preset: str) -> MAGVITv2:
    """A tokenizer ready for :func:`encode_images` (eval mode, CPU, fp32).

    Accepts a checkpoint directory (official layout or ours); ``"tiny"`` (the export of
    ``mmada vq train --preset tiny`` under ``runs/vq/tiny/tokenizer``); ``"official"``/``"magvitv2"`` or a Hub id
    such as ``showlab/magvitv2`` (read from the Hugging Face cache; downloaded only when the Hub is
    online); or an MLflow URI (``models:/name@alias``, ``runs:/<run_id>/tokenizer``).
    """
    key = str(path_or_preset)
    if key in PRESET_DIRS and not Path(key).is_dir():
        directory = PRESET_DIRS[key]
        if not directory.is_dir():
            raise MMaDAError(
                f"no trained {key!r} tokenizer at {directory}; run `mmada vq train --preset {key}` first"
            )
        return MAGVITv2.from_pretrained(directory)
    if key in ("official", "magvitv2"):
        key = OFFICIAL_REPO
    if key.startswith(("models:/", "runs:/")):
        return MAGVITv2.from_pretrained(_download_mlflow(key))
    return MAGVITv2.from_pretrained(key)


def _download_mlflow(uri: str) -> Path:
    import mlflow

    from mmada.tracking import default_tracking_uri

    try:
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=uri, dst_path=tempfile.mkdtemp(prefix="mmada-vq-"), tracking_uri=default_tracking_uri()
        )
    except Exception as exc:  # unknown model/alias/run: a user error
        raise MMaDAError(f"{uri}: cannot fetch the tokenizer from MLflow ({type(exc).__name__}: {exc})") from None
    return Path(local)


def save_codes(path: str | os.PathLike, codes: np.ndarray, sources: list[str], grid: tuple[int, int]) -> Path:
    """Write ``codes``/``sources``/``grid`` arrays to an ``.npz`` atomically (temp file + rename)."""
    path = Path(path)
    if path.suffix != ".npz":
        raise MMaDAError(f"output {path} must end in .npz")
    with atomic_write(path) as fh:
        np.savez(fh, codes=codes, sources=np.array(sources, dtype=str), grid=np.array(grid, dtype=np.int64))
    return path
