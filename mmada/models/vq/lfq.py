"""Lookup-free quantizer (LFQ, MAGVIT-v2): each latent channel is one bit.

``q = sign(z)`` with 0 → −1, so a ``K``-channel latent is one of ``2**K`` codes. A code's index packs
the bits most significant first: ``index = Σ_c 2**(K-1-c) · [z_c > 0]``; the codebook row of an
index is its bits mapped 0 → −1, 1 → +1. The codebook is fixed (no learned embedding): training
only shapes the encoder with

* a commitment term ``mean((z − q)²)`` pulling latents towards their ±1 code, and
* an entropy term ``mean_n H(p_n) − H(mean_n p_n)`` per bit, where ``p_n(+1) = softmax(−(z−1)², −(z+1)²)
  = sigmoid(4z)``: confident bits per position, balanced bits across the batch (codebook usage).

The buffers ``embedding`` (``2**K × K``, ±1 floats) and ``power_vals`` (``K`` int64, MSB first) are
saved in checkpoints under the official names.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


def bits_to_codebook(bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(embedding (2**bits, bits) float ±1, power_vals (bits,) int64)`` with the MSB first."""
    power_vals = 2 ** torch.arange(bits - 1, -1, -1, dtype=torch.long)  # (bits,) 2**(K-1) … 1
    idx = torch.arange(2**bits, dtype=torch.long)
    embedding = ((idx[:, None] // power_vals) % 2).float() * 2 - 1  # (2**bits, bits)
    return embedding, power_vals


@dataclass
class LFQOutput:
    z_q: torch.Tensor  # (B, K, h, w) ±1 with a straight-through gradient to z
    indices: torch.Tensor  # (B, h·w) int64
    commitment_loss: torch.Tensor  # scalar
    entropy_loss: torch.Tensor  # scalar: per-sample entropy − batch entropy (lower is better)
    per_sample_entropy: torch.Tensor  # scalar, nats per bit
    batch_entropy: torch.Tensor  # scalar, nats per bit


class LFQuantizer(nn.Module):
    def __init__(self, bits: int):
        super().__init__()
        self.bits = bits
        self.codebook_size = 2**bits
        embedding, power_vals = bits_to_codebook(bits)
        self.register_buffer("embedding", embedding)  # (2**K, K)
        self.register_buffer("power_vals", power_vals)  # (K,)

    def quantize(self, z: torch.Tensor) -> torch.Tensor:
        """``(B, K, h, w)`` → ±1 of the same shape and dtype (0 → −1), no gradient."""
        return torch.where(z > 0, 1.0, -1.0).to(z.dtype)

    def codes_to_indices(self, z: torch.Tensor) -> torch.Tensor:
        """Latents or ±1 codes ``(B, K, h, w)`` → indices ``(B, h·w)`` (positive channel = bit 1)."""
        bits = (z > 0).long()  # (B, K, h, w)
        idx = (bits * self.power_vals.view(1, -1, 1, 1)).sum(1)  # (B, h, w)
        return idx.flatten(1)

    def indices_to_codes(self, indices: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
        """Indices ``(B, h·w)`` → ±1 codes ``(B, K, h, w)`` (rows of ``embedding``)."""
        b = indices.shape[0]
        h, w = shape
        z_q = self.embedding[indices.reshape(-1)]  # (B·h·w, K)
        return z_q.view(b, h, w, self.bits).permute(0, 3, 1, 2).contiguous()

    def forward(self, z: torch.Tensor) -> LFQOutput:
        """Quantize encoder latents ``(B, K, h, w)`` and compute the training terms (fp32)."""
        q = self.quantize(z)
        z_q = z + (q - z).detach()  # straight-through estimator
        zf = z.float()
        commitment = F.mse_loss(zf, q.float())
        # Per bit: p(+1) = softmax([−(z−1)², −(z+1)²])[0] = sigmoid(4z).
        logit = 4.0 * zf.permute(0, 2, 3, 1).reshape(-1, self.bits)  # (N, K)
        p = torch.sigmoid(logit)
        per_sample = binary_entropy(p).mean()
        batch = binary_entropy(p.mean(0)).mean()
        return LFQOutput(
            z_q=z_q,
            indices=self.codes_to_indices(z.detach()),
            commitment_loss=commitment,
            entropy_loss=per_sample - batch,
            per_sample_entropy=per_sample,
            batch_entropy=batch,
        )


def binary_entropy(p: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Elementwise entropy (nats) of Bernoulli(p)."""
    return -(p * torch.log(p.clamp_min(eps)) + (1 - p) * torch.log((1 - p).clamp_min(eps)))
