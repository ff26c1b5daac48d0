"""Forward (noising) processes of the unified masked-diffusion model.

Text (LLaDA rule): draw ``t ~ U(0, 1)`` per row and mask every token independently with
probability ``p = (1 − ε)·t + ε``; prompt tokens are restored (kept clean).

Images (MaskGIT rule): draw ``t ~ U(0, 1)`` per image, mask exactly
``n = max(1, round(N · γ(t)))`` of its ``N`` tokens chosen uniformly at random, with the schedule
``γ(t) = cos(πt/2)`` by default.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from mmada.errors import ConfigError

TEXT_EPS = 1e-3


def cosine_schedule(t: torch.Tensor) -> torch.Tensor:
    return torch.cos(t * math.pi / 2)


def linear_schedule(t: torch.Tensor) -> torch.Tensor:
    return 1 - t


def sigmoid_schedule(t: torch.Tensor, start: float = -3.0, end: float = 3.0, tau: float = 1.0) -> torch.Tensor:
    v_start = torch.sigmoid(torch.tensor(start / tau))
    v_end = torch.sigmoid(torch.tensor(end / tau))
    return ((v_end - torch.sigmoid((t * (end - start) + start) / tau)) / (v_end - v_start)).clamp(0, 1)


def get_schedule(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """``cosine`` | ``linear`` | ``sigmoid`` | ``pow{k}`` (γ(t) = 1 − t^k)."""
    if name == "cosine":
        return cosine_schedule
    if name == "linear":
        return linear_schedule
    if name == "sigmoid":
        return sigmoid_schedule
    if name.startswith("pow"):
        try:
            k = float(name[3:])
        except ValueError:
            raise ConfigError(f"bad mask schedule {name!r}: expected pow<k>, e.g. pow2") from None
        return lambda t: 1 - t**k
    raise ConfigError(f"unknown mask schedule {name!r}; expected cosine, linear, sigmoid or pow<k>")


def mask_text(
    input_ids: torch.Tensor,
    *,
    mask_id: int,
    prompt_mask: torch.Tensor | None = None,
    t: torch.Tensor | None = None,
    eps: float = TEXT_EPS,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Noise text rows. Returns ``(noisy (B, L), masked (B, L) bool, p (B, L) mask probability)``."""
    B, L = input_ids.shape
    dev = input_ids.device
    if t is None:
        t = torch.rand(B, generator=generator, device=dev)
    p = ((1 - eps) * t + eps)[:, None].expand(B, L)
    masked = torch.rand((B, L), generator=generator, device=dev) < p
    if prompt_mask is not None:
        masked &= ~prompt_mask
    return torch.where(masked, mask_id, input_ids), masked, p


def mask_image(
    image_ids: torch.Tensor,
    *,
    mask_id: int,
    schedule: str = "cosine",
    min_masking_rate: float = 0.0,
    t: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise image-token rows (B, N) with the MaskGIT rule. Returns ``(noisy, masked)``."""
    B, N = image_ids.shape
    dev = image_ids.device
    if t is None:
        t = torch.rand(B, generator=generator, device=dev)
    ratio = get_schedule(schedule)(t).clamp(min=min_masking_rate)
    n_mask = (N * ratio).round().clamp(min=1)  # (B,)
    # A random rank per token; the n lowest-ranked tokens are masked (a uniform random subset).
    ranks = torch.rand((B, N), generator=generator, device=dev).argsort(dim=-1)
    masked = ranks < n_mask[:, None]
    return torch.where(masked, mask_id, image_ids), masked
