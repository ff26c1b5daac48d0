"""Per-token log-probs from one forward pass, and the clipped GRPO objective with a k3 KL penalty.

For completion ``i`` and its masked positions ``M_i`` (one noising draw shared by all policies):

    r_it  = exp(log π_θ(o_it | x_i) − log π_old(o_it | x_i))
    J_i   = (1/|M_i|) Σ_{t∈M_i} [ min(r_it A_i, clip(r_it, 1−ε_low, 1+ε_high) A_i) − β·KL_it ]
    KL_it = exp(s) − s − 1,  s = log π_ref − log π_θ          (k3 estimator, ≥ 0)
    loss  = −mean_i J_i                                              (loss_type "grpo", UniGRPO)
    loss  = −Σ_i Σ_{t∈M_i} [ … ] / Σ_i |M_i|                          (loss_type "bnpo", d1)

d1 (dllm-reasoning/d1 diffu_grpo_trainer.py: compute_loss) averages over every scored token of the
batch, so a long completion weighs more than a short one; TRL calls that "bnpo".

With π_θ = π_old = π_ref (the first inner step of an iteration) the ratio is exactly 1 and the
KL exactly 0, so the loss is ``−mean_i A_i``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from mmada.errors import ConfigError


def per_token_logps(
    model, noisy_ids: torch.Tensor, targets: torch.Tensor, *, attention_mask: torch.Tensor | None = None,
    vocab_slice: tuple[int, int] | None = None,
) -> torch.Tensor:
    """log p(target_t | noisy) for every position t (N, L) in fp32, from ONE forward pass.

    ``vocab_slice=(lo, hi)`` restricts the distribution to a vocabulary range (image codes for t2i
    completions, as the image sampler does); targets are then taken relative to ``lo``.
    """
    logits = model(noisy_ids, attention_mask=attention_mask).logits  # (N, L, V)
    if vocab_slice is not None:
        lo, hi = vocab_slice
        logits = logits[..., lo:hi]
        targets = (targets - lo).clamp(0, hi - lo - 1)
    logp = torch.log_softmax(logits.float(), dim=-1)
    return torch.gather(logp, -1, targets[..., None]).squeeze(-1)


@dataclass
class GRPOLossOutput:
    loss: torch.Tensor
    kl: torch.Tensor  # mean per-token k3 KL over masked tokens (0 when beta == 0 / no ref)
    clip_ratio_low: torch.Tensor  # fraction of masked tokens clipped at 1 − ε (A < 0)
    clip_ratio_high: torch.Tensor  # fraction clipped at 1 + ε (A > 0)
    clip_ratio: torch.Tensor  # region mean: either clip active
    ratio_mean: torch.Tensor


def grpo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    masked: torch.Tensor,
    *,
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    beta: float = 0.0,
    ref_logp: torch.Tensor | None = None,
    loss_type: Literal["grpo", "bnpo"] = "grpo",
) -> GRPOLossOutput:
    """The clipped surrogate minus β·KL over the masked tokens, averaged per ``loss_type`` (module doc).

    Args:
        logp, old_logp, ref_logp: (N, L) per-token log-probs (only ``masked`` positions are used).
        advantages: (N,) one per completion.
        masked: (N, L) bool, the scored completion tokens.
    """
    if beta > 0 and ref_logp is None:
        raise ConfigError(f"beta={beta} > 0 needs reference-policy log-probs (ref_logp)")
    eps_low, eps_high = epsilon, epsilon if epsilon_high is None else epsilon_high
    m = masked.float()
    n_tok = m.sum(dim=1).clamp(min=1.0)  # |M_i|
    ratio = torch.exp(logp - old_logp.detach())
    adv = advantages[:, None].to(logp.dtype)
    unclipped = ratio * adv
    clipped = ratio.clamp(1 - eps_low, 1 + eps_high) * adv
    per_tok = torch.minimum(unclipped, clipped)
    kl = torch.zeros_like(logp)
    if beta > 0:
        s = ref_logp.detach() - logp
        kl = torch.exp(s) - s - 1
        per_tok = per_tok - beta * kl
    if loss_type == "grpo":
        loss = -((per_tok * m).sum(dim=1) / n_tok).mean()
    elif loss_type == "bnpo":
        loss = -(per_tok * m).sum() / m.sum().clamp(min=1.0)
    else:
        raise ConfigError(f"loss_type={loss_type!r}; expected 'grpo' or 'bnpo'")
    with torch.no_grad():
        total = m.sum().clamp(min=1.0)
        low = ((ratio < 1 - eps_low) & (adv < 0)).float() * m
        high = ((ratio > 1 + eps_high) & (adv > 0)).float() * m
        out = GRPOLossOutput(
            loss=loss,
            kl=(kl * m).sum() / total,
            clip_ratio_low=low.sum() / total,
            clip_ratio_high=high.sum() / total,
            clip_ratio=(low + high).sum() / total,
            ratio_mean=(ratio * m).sum() / total,
        )
    return out
