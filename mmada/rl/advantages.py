"""Group-relative advantages (GRPO): z-score of each completion's reward within its prompt's group.

Rewards arrive flat, grouped consecutively: ``[p0g0, p0g1, …, p0g(G−1), p1g0, …]``. A group whose
rewards are all equal carries no learning signal: its advantages are exactly 0 (not NaN), and
``frac_reward_zero_std`` reports how much of the batch that was (TRL's metric of the same name).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mmada.errors import ConfigError


@dataclass
class Advantages:
    advantages: torch.Tensor  # (N,) one per completion
    group_mean: torch.Tensor  # (N // G,)
    group_std: torch.Tensor  # (N // G,)
    frac_reward_zero_std: float


def group_advantages(
    rewards: torch.Tensor, num_generations: int, *, scale: bool = True, eps: float = 1e-4
) -> Advantages:
    """``A_i = (r_i − mean_g) / std_g`` per group of ``num_generations`` (``scale=False``: no division, as d1).

    ``std`` is the unbiased sample std (TRL's convention); groups with std 0 get A = 0.
    """
    if rewards.dim() != 1 or rewards.numel() % num_generations:
        raise ConfigError(
            f"{rewards.numel()} rewards cannot be split into groups of num_generations={num_generations}"
        )
    if num_generations < 2:
        raise ConfigError(f"num_generations={num_generations}: group advantages need at least 2 completions")
    g = rewards.float().view(-1, num_generations)  # (P, G)
    mean = g.mean(dim=1, keepdim=True)
    std = g.std(dim=1, keepdim=True)  # unbiased
    zero = std.squeeze(1) < 1e-12
    centred = g - mean
    adv = centred / (std + eps) if scale else centred
    adv = torch.where(zero[:, None], torch.zeros_like(adv), adv)
    return Advantages(adv.reshape(-1), mean.squeeze(1), std.squeeze(1), float(zero.float().mean()))
