"""``MAGVITv2``: encoder + lookup-free quantizer + decoder, with the official module names.

    from mmada.models.vq import MAGVITv2
    vq = MAGVITv2.from_pretrained("path/to/magvitv2")   # official dir or one of our exports
    codes = vq.encode(vq.preprocess(images, resolution=256))   # (B, 256) int64 in [0, 8192)
    pixels = vq.decode(codes)                                  # (B, 3, 256, 256) in [-1, 1]

``MAGVITv2()`` is the official architecture with random weights; ``MAGVITv2(VQConfig(...))`` any
other size. Inputs are checked (shape, dtype, value range, code range) and rejected with a
:class:`~mmada.errors.MMaDAError` instead of producing silent garbage.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn

from mmada.config import validate
from mmada.errors import MMaDAError
from mmada.models.vq.checkpoint import (
    CheckpointError,
    find_weights,
    read_config,
    read_state_dict,
    write_checkpoint,
)
from mmada.models.vq.coders import VQGANDecoder, VQGANEncoder
from mmada.models.vq.config import VQConfig
from mmada.models.vq.lfq import LFQOutput, LFQuantizer, bits_to_codebook
from mmada.models.vq.preprocess import ResizeMode, images_to_tensor

PIXEL_RANGE_TOLERANCE = 1e-3  # pixels must lie in [-1, 1] up to this slack


class TokenizerInputError(MMaDAError):
    """Pixels or codes handed to the tokenizer have the wrong shape, dtype or range."""


@dataclass
class VQOutput:
    reconstruction: torch.Tensor  # (B, 3, H, W), unclamped
    quant: LFQOutput


class MAGVITv2(nn.Module):
    def __init__(self, config: VQConfig | Mapping[str, Any] | None = None):
        super().__init__()
        if config is None:
            config = VQConfig()
        elif not isinstance(config, VQConfig):
            config = validate(VQConfig, dict(config), "MAGVITv2 config: invalid VQConfig")
        self.config = config
        self.encoder = VQGANEncoder(config)
        self.decoder = VQGANDecoder(config)
        self.quantize = LFQuantizer(config.z_channels)

    # ------------------------------------------------------------------ properties
    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    @property
    def downsample_factor(self) -> int:
        return self.config.downsample_factor

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    # ------------------------------------------------------------------ training path
    def forward(self, pixels: torch.Tensor) -> VQOutput:
        """Reconstruct ``(B, 3, H, W)`` pixels through the quantizer (straight-through gradients)."""
        quant = self.quantize(self.encoder(pixels))
        return VQOutput(reconstruction=self.decoder(quant.z_q), quant=quant)

    # ------------------------------------------------------------------ inference API
    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels ``(B, 3, H, W)`` in [-1, 1] → codes ``(B, (H/f)·(W/f))`` int64, row-major."""
        pixels = self._check_pixels(pixels)
        return self.quantize.codes_to_indices(self.encoder(pixels))

    @torch.no_grad()
    def decode(self, codes: torch.Tensor, shape: tuple[int, int] | None = None) -> torch.Tensor:
        """Codes ``(B, h·w)`` → pixels ``(B, 3, h·f, w·f)`` float32 clamped to [-1, 1].

        ``shape=(h, w)`` gives the token grid; without it the grid must be square.
        """
        codes, shape = self._check_codes(codes, shape)
        z_q = self.quantize.indices_to_codes(codes, shape).to(self.dtype)
        return self.decoder(z_q).float().clamp_(-1.0, 1.0)

    # Official method names (Show-o / MMaDA call these).
    def get_code(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.encode(pixel_values)

    def decode_code(self, codebook_indices: torch.Tensor, shape: tuple[int, int] | None = None) -> torch.Tensor:
        return self.decode(codebook_indices, shape)

    def preprocess(
        self, images: Iterable[Image.Image] | Image.Image, resolution: int | None = None, mode: ResizeMode = "crop"
    ) -> torch.Tensor:
        """PIL images → ``(B, 3, R, R)`` float32 in [-1, 1] (see :mod:`mmada.models.vq.preprocess`)."""
        if isinstance(images, Image.Image):
            images = [images]
        return images_to_tensor(images, resolution or self.config.resolution, mode=mode, multiple_of=self.downsample_factor)

    # ------------------------------------------------------------------ checks
    def _check_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        if not isinstance(pixels, torch.Tensor):
            raise TokenizerInputError(f"pixels must be a torch.Tensor, got {type(pixels).__name__}")
        c, f = self.config.in_channels, self.downsample_factor
        if pixels.dim() != 4 or pixels.shape[1] != c:
            raise TokenizerInputError(f"pixels must have shape (B, {c}, H, W), got {tuple(pixels.shape)}")
        h, w = pixels.shape[-2:]
        if h % f or w % f or h == 0 or w == 0:
            raise TokenizerInputError(
                f"pixel height/width must be positive multiples of the downsampling factor {f}, got {h}×{w}; "
                "resize with MAGVITv2.preprocess"
            )
        if not pixels.is_floating_point():
            raise TokenizerInputError(
                f"pixels must be floating point in [-1, 1], got dtype {pixels.dtype}; use MAGVITv2.preprocess"
            )
        if pixels.device.type != "meta" and pixels.numel():
            lo, hi = pixels.aminmax()
            if not torch.isfinite(lo) or not torch.isfinite(hi):
                raise TokenizerInputError("pixels contain NaN or infinite values")
            if lo < -1 - PIXEL_RANGE_TOLERANCE or hi > 1 + PIXEL_RANGE_TOLERANCE:
                raise TokenizerInputError(
                    f"pixels must be normalised to [-1, 1], got values in [{lo.item():.3g}, {hi.item():.3g}]; "
                    "use MAGVITv2.preprocess (x/127.5 - 1)"
                )
        return pixels.to(device=self.device, dtype=self.dtype)

    def _check_codes(self, codes: Any, shape: tuple[int, int] | None) -> tuple[torch.Tensor, tuple[int, int]]:
        if not isinstance(codes, torch.Tensor):
            try:
                codes = torch.as_tensor(codes)
            except (TypeError, ValueError, RuntimeError) as exc:
                raise TokenizerInputError(f"codes must be an integer tensor/array, got {type(codes).__name__}") from exc
        if codes.dtype.is_floating_point or codes.dtype.is_complex or codes.dtype == torch.bool:
            raise TokenizerInputError(f"codes must have an integer dtype, got {codes.dtype}")
        if codes.dim() != 2:
            raise TokenizerInputError(f"codes must have shape (B, h·w), got {tuple(codes.shape)}")
        n = codes.shape[1]
        if shape is None:
            side = math.isqrt(n)
            if side * side != n or n == 0:
                raise TokenizerInputError(f"{n} codes per image is not a square grid; pass shape=(h, w)")
            shape = (side, side)
        elif len(shape) != 2 or shape[0] * shape[1] != n or min(shape) < 1:
            raise TokenizerInputError(f"shape={tuple(shape)} does not hold {n} codes per image")
        if codes.device.type != "meta" and codes.numel():
            lo, hi = int(codes.min()), int(codes.max())
            if lo < 0 or hi >= self.codebook_size:
                raise TokenizerInputError(
                    f"codes must lie in [0, {self.codebook_size}) for a {self.config.z_channels}-bit codebook, "
                    f"got values in [{lo}, {hi}] (image-token offsets must be removed before decoding)"
                )
        return codes.to(device=self.device, dtype=torch.long), (int(shape[0]), int(shape[1]))

    # ------------------------------------------------------------------ checkpoints
    def save_pretrained(self, directory: str | os.PathLike, extra: dict | None = None) -> Path:
        """Write ``config.json`` + ``model.safetensors`` (what :meth:`from_pretrained` reads)."""
        return write_checkpoint(Path(directory), self.config, self.state_dict(), extra=extra)

    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike, *, device: str | torch.device | None = None, dtype: torch.dtype | None = None
    ) -> MAGVITv2:
        """Load a checkpoint directory (official ``showlab/magvitv2`` layout or ours), strictly.

        A string that is not a local directory but looks like ``owner/name`` is fetched through the
        Hugging Face cache (offline when ``HF_HUB_OFFLINE=1``).
        """
        directory = _resolve_directory(path)
        model = cls(read_config(directory))
        model.load_checkpoint_state(read_state_dict(find_weights(directory)), source=str(directory))
        model.eval()
        return model.to(device=device, dtype=dtype) if device is not None or dtype is not None else model

    def load_checkpoint_state(self, state: Mapping[str, torch.Tensor], source: str = "state dict") -> None:
        """Strict load: every key and shape must match, and the codebook buffers must be the
        canonical ±1 / power-of-two tables (a mismatch means a different index convention)."""
        own = self.state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        if missing or unexpected:
            raise CheckpointError(
                f"{source}: checkpoint does not match the configured architecture: "
                f"{len(missing)} missing keys {missing[:5]}, {len(unexpected)} unexpected keys {unexpected[:5]}"
            )
        wrong = [f"{k}: {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items() if state[k].shape != v.shape]
        if wrong:
            raise CheckpointError(f"{source}: {len(wrong)} tensors have the wrong shape, e.g. {wrong[:3]}")
        embedding, power_vals = bits_to_codebook(self.config.z_channels)
        if not torch.equal(state["quantize.embedding"].float(), embedding) or not torch.equal(
            state["quantize.power_vals"].long(), power_vals
        ):
            raise CheckpointError(f"{source}: quantize.embedding/power_vals are not the MSB-first ±1 codebook")
        bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
        if bad:
            raise CheckpointError(f"{source}: non-finite values in {bad[:3]}")
        self.load_state_dict(state, strict=True)


def _resolve_directory(path: str | os.PathLike) -> Path:
    p = Path(path)
    if p.is_dir():
        return p
    text = str(path)
    if p.exists():
        raise CheckpointError(f"{text}: expected a checkpoint directory, got a file")
    parts = text.split("/")
    if len(parts) == 2 and all(parts) and not text.startswith((".", "~")):
        try:
            from huggingface_hub import snapshot_download

            local = snapshot_download(
                repo_id=text, allow_patterns=["config.json", "*.safetensors", "*.bin"]
            )
        except Exception as exc:  # offline, missing repo, network error: all user-facing
            raise CheckpointError(
                f"{text}: not a local directory and could not be fetched from the Hugging Face Hub "
                f"({type(exc).__name__}: {exc})"
            ) from None
        return Path(local)
    raise CheckpointError(f"{text}: no such checkpoint directory")
