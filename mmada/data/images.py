"""Image checks and canonical encoding for curated samples.

Every image — JPEG bytes from an img2dataset tar, an HF ``{bytes, path}`` struct, a numpy IDX
digit, a PIL image from a generator — is decoded, checked (decodable, each side ≥
``filters.min_image_size``, at most ``filters.max_image_pixels`` pixels, checked from the header
*before* decoding so decompression bombs are refused cheaply), converted to RGB, optionally resized
and centre-cropped to ``images.size``, and re-encoded as PNG with fixed settings so shards are
byte-reproducible.
"""

from __future__ import annotations

import hashlib
import io
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from mmada.data.errors import RecordRejected
from mmada.errors import MMaDAError

PNG_COMPRESS_LEVEL = 6


@dataclass(frozen=True)
class PreparedImage:
    png: bytes
    width: int
    height: int
    sha256: str  # of the RGB pixels


def to_pil(obj: Any, *, max_pixels: int) -> Image.Image:
    """Decode ``obj`` into a loaded PIL image, raising ``RecordRejected`` for bad images."""
    if isinstance(obj, dict):  # HF datasets Image feature: {"bytes": b"...", "path": "..."}
        if not isinstance(obj.get("bytes"), (bytes, bytearray)):
            raise RecordRejected("missing_field", "image struct has no bytes")
        obj = obj["bytes"]
    if isinstance(obj, Image.Image):
        if obj.width * obj.height > max_pixels:
            raise RecordRejected("image_too_large", f"{obj.width}x{obj.height} > {max_pixels} pixels")
        return obj
    if isinstance(obj, np.ndarray):
        if obj.dtype != np.uint8 or obj.ndim not in (2, 3) or (obj.ndim == 3 and obj.shape[2] not in (1, 3, 4)):
            raise RecordRejected("wrong_type", f"image array must be uint8 HxW[xC], got {obj.dtype} {obj.shape}")
        arr = obj[:, :, 0] if obj.ndim == 3 and obj.shape[2] == 1 else obj
        return Image.fromarray(np.ascontiguousarray(arr))
    if not isinstance(obj, (bytes, bytearray, memoryview)):
        raise RecordRejected("wrong_type", f"image must be bytes, got {type(obj).__name__}")
    data = bytes(obj)
    if not data:
        raise RecordRejected("undecodable_image", "empty image bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            w, h = im.size
            if w * h > max_pixels:
                raise RecordRejected("image_too_large", f"{w}x{h} > {max_pixels} pixels")
            im.load()
    except RecordRejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise RecordRejected("image_too_large", str(exc)) from None
    except Exception as exc:  # PIL raises many types for corrupt data (OSError, SyntaxError, ValueError, …)
        raise RecordRejected("undecodable_image", f"{type(exc).__name__}: {exc}") from None
    return im


_MODES_16 = ("I;16", "I;16L", "I;16B", "I;16N")


def to_8bit(im: Image.Image) -> Image.Image:
    """Scale a 16/32-bit single-channel image to 8 bits (``L``), keeping its dynamic range.

    Pillow's ``convert`` clips such pixels to 0..255 (a 16-bit ramp turns black and white). 16-bit
    pixels (``I;16*``, and ``I`` images whose values fit 16 bits, as 16-bit files decode) keep their
    high byte (``>> 8``); other ``I`` and float (``F``) images are scaled proportionally from
    [min(0, lowest), highest] (floats within [0, 1] from [0, 1]). 16-bit RGB(A) and gray+alpha PNGs
    come out of Pillow in 8 bits already. Other modes are returned as they are.
    """
    if im.mode not in (*_MODES_16, "I", "F"):
        return im
    arr = np.asarray(im)
    if im.mode in _MODES_16:
        out = arr.astype(np.uint16) >> 8
    elif im.mode == "I" and arr.size and arr.min() >= 0 and arr.max() <= 0xFFFF:
        out = arr.astype(np.int64) >> 8
    else:
        x = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        lo, hi = (0.0, 1.0) if im.mode == "F" and x.size and x.min() >= 0 and x.max() <= 1 else (
            float(x.min(initial=0)), float(x.max(initial=0)))
        out = np.rint((x - lo) * (255.0 / (hi - lo))) if hi > lo else np.zeros_like(x)
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))  # 2-D uint8: mode L


def resize_center_crop(im: Image.Image, size: int) -> Image.Image:
    w, h = im.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    if (nw, nh) != (w, h):
        im = im.resize((nw, nh), Image.Resampling.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    return im.crop((left, top, left + size, top + size))


def encode_png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL, optimize=False)
    return buf.getvalue()


def prepare_image(obj: Any, *, min_size: int, max_pixels: int, size: int | None) -> PreparedImage:
    """Decode, check, convert to RGB, resize (optional) and PNG-encode one image."""
    im = to_pil(obj, max_pixels=max_pixels)
    if min(im.size) < min_size:
        raise RecordRejected("image_too_small", f"{im.width}x{im.height} < {min_size} px")
    if im.mode != "RGB":
        im = to_8bit(im).convert("RGB")
    if size is not None:
        im = resize_center_crop(im, size)
    pixels = im.tobytes()
    return PreparedImage(encode_png(im), im.width, im.height, hashlib.sha256(pixels).hexdigest())


def decode_png_rgb(png: bytes) -> np.ndarray:
    """PNG bytes -> (H, W, 3) uint8 array."""
    with Image.open(io.BytesIO(png)) as im:
        return np.asarray(im.convert("RGB"))


# ------------------------------------------------------------------------------------------------
# Grids of images (evaluation reports, training samples, UniGRPO rollouts, tokenizer reconstructions)


def image_grid(images: Sequence[Image.Image], ncol: int = 8, pad: int = 2, scale: int = 1,
               labels: Sequence[str] | None = None) -> Image.Image:
    """Tile images (resized to the first one's size × ``scale``) into a grid on a grey background,
    with an optional label (e.g. a reward) under each."""
    if not images:
        raise MMaDAError("no images to put in a grid")
    if labels is not None and len(labels) != len(images):
        raise MMaDAError(f"{len(labels)} labels for {len(images)} images")
    w, h = images[0].size
    w, h = w * scale, h * scale
    label_h = 12 if labels is not None else 0
    ncol = max(1, min(ncol, len(images)))
    nrow = math.ceil(len(images) / ncol)
    grid = Image.new("RGB", (ncol * (w + pad) + pad, nrow * (h + label_h + pad) + pad), (64, 64, 64))
    draw = ImageDraw.Draw(grid)
    for i, im in enumerate(images):
        r, c = divmod(i, ncol)
        x, y = pad + c * (w + pad), pad + r * (h + label_h + pad)
        grid.paste(im.convert("RGB").resize((w, h), Image.Resampling.NEAREST), (x, y))
        if labels is not None:
            draw.text((x + 2, y + h), labels[i], fill=(255, 255, 255))
    return grid
