"""Image preprocessing for the tokenizer, matching MMaDA's ``image_transform``.

``crop`` (default, the reference ``image_transform``): bicubic resize of the shorter side to ``R``
(longer side ``int(R · long / short)``), centre crop ``R × R``, scale to [-1, 1] (``x/127.5 − 1``,
i.e. ToTensor + Normalize(0.5, 0.5)). ``squash`` (``image_transform_squash``): bicubic resize to
``R × R`` ignoring the aspect ratio (``resize`` is an alias). ``none``: no resizing; the image must already be ``R × R``.

Documented mode conversions (anything else is rejected):

* ``L``, ``1``, ``P`` (without transparency), ``CMYK``, ``YCbCr``, ``LAB``, ``HSV`` → ``RGB`` via PIL;
* images with alpha (``RGBA``, ``LA``, ``PA``, ``P`` with a transparency key, ``RGBa``, ``La``) are
  composited over an opaque background (black by default, the shapes world's background) — the
  reference's bare ``convert("RGB")`` would expose whatever colour hides under transparent pixels;
* 16-bit / 32-bit / float modes (``I``, ``I;16``, ``F``) are refused: their value range is not
  defined by the file, so converting them would silently clip.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from mmada.errors import MMaDAError

ResizeMode = Literal["crop", "squash", "resize", "none"]
RESIZE_MODES: tuple[str, ...] = ("crop", "squash", "resize", "none")
_DIRECT_MODES = {"RGB", "L", "1", "P", "CMYK", "YCbCr", "LAB", "HSV"}
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}


class ImageInputError(MMaDAError):
    """An image cannot be read or converted for the tokenizer."""


def load_image(path: str | os.PathLike) -> Image.Image:
    """Open and fully decode an image file; corrupt/truncated/unknown files raise ImageInputError."""
    try:
        with Image.open(path) as im:
            im.load()
            return im.copy()
    except FileNotFoundError:
        raise ImageInputError(f"{path}: no such image file") from None
    except UnidentifiedImageError:
        raise ImageInputError(f"{path}: not a readable image (unknown format or corrupt header)") from None
    except (OSError, SyntaxError, ValueError) as exc:  # truncated data, bad chunks, decompression bombs
        raise ImageInputError(f"{path}: corrupt image ({exc})") from None


def to_rgb(image: Image.Image, background: tuple[int, int, int] = (0, 0, 0), name: str = "image") -> Image.Image:
    """Convert to 8-bit RGB following the documented rules above."""
    if not isinstance(image, Image.Image):
        raise ImageInputError(f"{name}: expected a PIL image, got {type(image).__name__}")
    if image.width == 0 or image.height == 0:
        raise ImageInputError(f"{name}: empty image ({image.width}×{image.height})")
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in _ALPHA_MODES or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        base = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(base, rgba).convert("RGB")
    if mode in _DIRECT_MODES:
        return image.convert("RGB")
    raise ImageInputError(
        f"{name}: unsupported image mode {mode!r} (16-bit/float images have no defined range); "
        "convert it to 8-bit RGB first"
    )


def resize(image: Image.Image, resolution: int, mode: ResizeMode = "crop", name: str = "image") -> Image.Image:
    """RGB image → ``resolution × resolution`` RGB image."""
    w, h = image.size
    if mode == "none":
        if (w, h) != (resolution, resolution):
            raise ImageInputError(f"{name}: size {w}×{h} but resize mode 'none' needs {resolution}×{resolution}")
        return image
    if mode in ("squash", "resize"):
        return image.resize((resolution, resolution), Image.Resampling.BICUBIC)
    if mode != "crop":
        raise ImageInputError(f"unknown resize mode {mode!r}; expected one of {RESIZE_MODES}")
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(resolution * long / short)
    new_w, new_h = (resolution, new_long) if w <= h else (new_long, resolution)
    if (new_w, new_h) != (w, h):
        image = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
    left = round((new_w - resolution) / 2.0)
    top = round((new_h - resolution) / 2.0)
    return image.crop((left, top, left + resolution, top + resolution))


def image_to_array(image: Image.Image, resolution: int, mode: ResizeMode = "crop", name: str = "image") -> np.ndarray:
    """One image → ``(3, R, R)`` float32 in [-1, 1]."""
    rgb = resize(to_rgb(image, name=name), resolution, mode, name=name)
    arr = np.asarray(rgb, dtype=np.float32)  # (R, R, 3) in [0, 255]
    return arr.transpose(2, 0, 1) / 127.5 - 1.0


def images_to_tensor(
    images: Iterable[Image.Image | str | Path],
    resolution: int,
    mode: ResizeMode = "crop",
    multiple_of: int = 1,
) -> torch.Tensor:
    """Images (PIL or paths) → ``(B, 3, R, R)`` float32 in [-1, 1]."""
    if resolution < 1 or resolution % multiple_of:
        raise ImageInputError(f"resolution {resolution} must be a positive multiple of {multiple_of}")
    if mode not in RESIZE_MODES:
        raise ImageInputError(f"unknown resize mode {mode!r}; expected one of {RESIZE_MODES}")
    arrays = []
    for i, im in enumerate(images):
        name = f"image {i}"
        if isinstance(im, str | Path):
            name, im = str(im), load_image(im)
        arrays.append(image_to_array(im, resolution, mode, name=name))
    if not arrays:
        return torch.empty(0, 3, resolution, resolution)
    return torch.from_numpy(np.stack(arrays))


def tensor_to_images(pixels: torch.Tensor) -> list[Image.Image]:
    """``(B, 3, H, W)`` in [-1, 1] → RGB PIL images (rounded to the nearest 8-bit value)."""
    arr = ((pixels.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return [Image.fromarray(a.permute(1, 2, 0).cpu().numpy(), "RGB") for a in arr]
