"""Reconstruction and codebook metrics (pure functions on tensors)."""

from __future__ import annotations

import math

import torch


def psnr(reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of ``(B, C, H, W)`` images in [-1, 1] (peak-to-peak range 2)."""
    mse = (reconstruction.float() - target.float()).pow(2).flatten(1).mean(1)  # (B,)
    return 10 * torch.log10(4.0 / mse.clamp_min(1e-10))


def codebook_stats(counts: torch.Tensor) -> dict[str, float]:
    """Usage and perplexity of a histogram of code indices (``counts[i]`` = uses of code i).

    ``usage``: fraction of codes used at least once; ``perplexity``: ``exp(H)`` of the empirical code
    distribution (1 = one code, ``len(counts)`` = uniform use of every code).
    """
    counts = counts.double()
    total = counts.sum()
    if total == 0:
        return {"usage": 0.0, "perplexity": 0.0, "codes_used": 0.0}
    p = counts[counts > 0] / total
    entropy = -(p * p.log()).sum().item()
    return {
        "usage": (counts > 0).sum().item() / counts.numel(),
        "perplexity": math.exp(entropy),
        "codes_used": float((counts > 0).sum().item()),
    }
