"""Optional adversarial term: a small PatchGAN discriminator with hinge losses (off by default).

No perceptual (LPIPS/VGG) term is offered: it needs pretrained weights downloaded from a hub,
which this platform does not fetch at run time.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PatchDiscriminator(nn.Module):
    """``(B, 3, H, W)`` → ``(B, 1, H/4, W/4)`` real/fake logits per patch."""

    def __init__(self, channels: int = 32, in_channels: int = 3):
        super().__init__()
        c = channels
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, c, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(c, 2 * c, 4, stride=2, padding=1),
            nn.GroupNorm(8 if (2 * c) % 8 == 0 else 1, 2 * c),
            nn.LeakyReLU(0.2),
            nn.Conv2d(2 * c, 2 * c, 3, padding=1),
            nn.GroupNorm(8 if (2 * c) % 8 == 0 else 1, 2 * c),
            nn.LeakyReLU(0.2),
            nn.Conv2d(2 * c, 1, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def hinge_g_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    return -logits_fake.mean()
