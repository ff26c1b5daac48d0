"""Structured noising for the policy log-likelihood of a diffusion LM (which has no exact token log-probs).

UniGRPO (arXiv 2505.15809, Algorithm 1): for each inner iteration μ draw a mask ratio
``p_i ~ U[lo, hi]`` per completion, mask each *completion* token with probability ``p_i`` (at least
one), keep the prompt clean. The same mask serves the old, new and reference policies of that
iteration, so their ratio compares like with like. ``lo, hi = 0, 1`` is the paper's uniform
range; dLLM-RL uses ``[0.1, 0.9]``.

d1's diffu-GRPO (arXiv 2504.12216; dllm-reasoning/d1 diffu-grpo/diffu_grpo_trainer.py:
forward_process): every generated position (the EOS fill included) is masked and prompt tokens are
masked with ``p_mask_prompt = 0.15``, drawn from a fixed seed per inner iteration; the scored tokens
are the completion up to and including its first EOS (``_generate_and_score_completions``:
``completion_mask = sequence_indices <= eos_idx``), not the fill.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mmada.errors import ConfigError


@dataclass
class NoisedBatch:
    input_ids: torch.Tensor  # (N, L) with mask ids at masked positions
    masked: torch.Tensor  # (N, L) bool: completion tokens whose log-prob is scored
    ratio: torch.Tensor  # (N,) the mask ratio drawn per completion


def unigrpo_mask(
    sequences: torch.Tensor,
    completion_mask: torch.Tensor,
    *,
    mask_id: int,
    ratio_range: tuple[float, float] = (0.0, 1.0),
    generator: torch.Generator | None = None,
) -> NoisedBatch:
    """Mask completion tokens at a per-completion random ratio; the prompt stays clean.

    Args:
        sequences: (N, L) prompt + completion ids.
        completion_mask: (N, L) bool, True on completion tokens that are scored (not padding).
    """
    lo, hi = ratio_range
    if not 0.0 <= lo <= hi <= 1.0:
        raise ConfigError(f"mask_ratio_range={ratio_range} must satisfy 0 <= lo <= hi <= 1")
    N, L = sequences.shape
    dev = sequences.device
    ratio = lo + (hi - lo) * torch.rand(N, generator=generator, device=dev)  # (N,)
    draw = torch.rand((N, L), generator=generator, device=dev)
    masked = (draw < ratio[:, None]) & completion_mask
    # At least one masked token per completion (the one with the smallest draw), else the row has no loss.
    empty = ~masked.any(dim=1) & completion_mask.any(dim=1)
    if bool(empty.any()):
        first = torch.where(completion_mask, draw, torch.full_like(draw, 2.0)).argmin(dim=1)
        masked[empty, first[empty]] = True
    return NoisedBatch(torch.where(masked, mask_id, sequences), masked, ratio)


def d1_mask(
    sequences: torch.Tensor,
    completion_mask: torch.Tensor,
    prompt_mask: torch.Tensor,
    *,
    mask_id: int,
    p_mask_prompt: float = 0.15,
    seed: int = 42,
    tail_mask: torch.Tensor | None = None,
) -> NoisedBatch:
    """diffu-GRPO: every generated position masked, prompt tokens masked with ``p_mask_prompt`` (seeded).

    Args:
        completion_mask: (N, L) bool, the scored completion tokens (up to and including the first EOS).
        tail_mask: (N, L) bool, the EOS fill after them: masked in the input too, never scored.
    """
    if not 0.0 <= p_mask_prompt <= 1.0:
        raise ConfigError(f"p_mask_prompt={p_mask_prompt} must be within [0, 1]")
    g = torch.Generator(device=sequences.device).manual_seed(int(seed))
    prompt_noise = (torch.rand(sequences.shape, generator=g, device=sequences.device) < p_mask_prompt) & prompt_mask
    generated = completion_mask if tail_mask is None else completion_mask | tail_mask
    noisy = torch.where(generated | prompt_noise, mask_id, sequences)
    ratio = torch.ones(sequences.shape[0], device=sequences.device)
    return NoisedBatch(noisy, completion_mask.clone(), ratio)
