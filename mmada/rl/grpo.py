"""One UniGRPO update as plain functions: score a rollout, draw the noising, take μ policy steps.

    rollout  →  rewards (weighted sum)  →  group z-score advantages
             →  for μ = 1..num_iterations: a fresh structured mask (UniGRPO) or a seeded d1 mask,
                old-policy and reference log-probs on that mask (computed before any update),
                new-policy log-probs with grad, clipped surrogate − β·KL, optimizer step.

The Lightning stage (``mmada.training``) calls these; they are written so a unit test can drive
them with a tiny model and check each number. Field names follow TRL's ``GRPOConfig`` where the
meaning is the same (``num_generations``, ``beta``, ``epsilon``, ``epsilon_high``,
``num_iterations``, ``temperature``, ``reward_weights``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import Field, field_validator, model_validator

from mmada.config import Strict
from mmada.diffusion.settings import ImageSamplerSettings, SamplerSettings
from mmada.rl.advantages import Advantages, group_advantages
from mmada.rl.loss import GRPOLossOutput, grpo_loss, per_token_logps
from mmada.rl.noising import NoisedBatch, d1_mask, unigrpo_mask
from mmada.rl.rewards import combine_rewards, resolve_reward
from mmada.rl.rollout import Rollout


class GRPOConfig(Strict):
    """The algorithm's settings (the stage config adds model, data, trainer and tracking)."""


    num_generations: int = Field(4, ge=2, le=4096, description="completions sampled per prompt (G)")
    beta: float = Field(0.0, ge=0.0, description="KL coefficient to the frozen reference policy (0: no reference)")
    epsilon: float = Field(0.2, gt=0.0, lt=1.0, description="PPO clip range (lower, and upper unless epsilon_high)")
    epsilon_high: float | None = Field(None, gt=0.0, description="separate upper clip range (DAPO-style)")
    num_iterations: int = Field(1, ge=1, le=1000, description="policy updates per rollout (μ)")
    reward_funcs: list[str] = Field(
        default_factory=lambda: ["math_correctness", "format"],
        description="registered reward names or 'module:function' paths",
    )
    reward_weights: dict[str, float] = Field(
        default_factory=lambda: {"math_correctness": 2.0, "format": 0.5},
        description="weight per reward function (default 1.0)",
    )
    reward_kwargs: dict[str, dict] = Field(default_factory=dict, description="extra kwargs per reward function")
    scale_rewards: bool = Field(True, description="divide advantages by the group std (False: d1's r − mean)")
    estimator: Literal["unigrpo", "d1"] = Field("unigrpo", description="log-likelihood estimator")
    mask_ratio_range: tuple[float, float] = Field((0.0, 1.0), description="UniGRPO: per-completion mask ratio range")
    p_mask_prompt: float = Field(0.15, ge=0.0, le=1.0, description="d1: prompt-token mask probability")
    loss_type: Literal["grpo", "bnpo"] | None = Field(
        None, description="how token terms are averaged (TRL's names): 'grpo' = per completion, then over "
        "completions (UniGRPO); 'bnpo' = over all scored tokens of the batch (d1's compute_loss). "
        "Default: the estimator's own ('unigrpo' → grpo, 'd1' → bnpo)")
    think: bool = Field(True, description="add the <think> instruction to text prompts")
    sampler: SamplerSettings = Field(
        default_factory=lambda: SamplerSettings(temperature=1.0),
        description="sampler of the text (and MMU) rollouts, every option of mmada generate (TRL's "
        "`temperature` is sampler.temperature)")
    image_sampler: ImageSamplerSettings = Field(
        default_factory=ImageSamplerSettings, description="MaskGIT sampler of the t2i rollouts")

    @model_validator(mode="after")
    def _check(self) -> GRPOConfig:
        lo, hi = self.mask_ratio_range
        if not 0.0 <= lo <= hi <= 1.0:
            raise ValueError(f"mask_ratio_range={self.mask_ratio_range} must satisfy 0 <= lo <= hi <= 1")
        return self

    @field_validator("reward_funcs")
    @classmethod
    def _known_rewards(cls, names: list[str]) -> list[str]:
        for name in names:
            resolve_reward(name)  # unknown or not allowed names fail at config time, naming the function
        return names

    @property
    def aggregation(self) -> Literal["grpo", "bnpo"]:
        """The effective ``loss_type``."""
        return self.loss_type or ("bnpo" if self.estimator == "d1" else "grpo")


@dataclass
class ScoredRollout:
    rollout: Rollout
    rewards: torch.Tensor  # (N,)
    per_reward: dict[str, list[float | None]]
    advantages: Advantages


@dataclass
class Iteration:
    noised: NoisedBatch
    old_logp: torch.Tensor  # (N, L) under π_old (no grad)
    ref_logp: torch.Tensor | None  # (N, L) under π_ref (no grad), None when beta == 0


def score_rollout(rollout: Rollout, cfg: GRPOConfig, prompts: list, columns: dict[str, list]) -> ScoredRollout:
    """Rewards for every completion and the group advantages.

    ``prompts`` and each column list have one entry per *prompt*; they are repeated to the
    completions with the rollout's ``prompt_index`` (G consecutive completions per prompt).
    """
    funcs = {name: resolve_reward(name) for name in cfg.reward_funcs}
    idx = rollout.prompt_index
    expanded = {k: [v[i] for i in idx] for k, v in columns.items()}
    total, per = combine_rewards(funcs, cfg.reward_weights, [prompts[i] for i in idx], rollout.completions,
                                 expanded, cfg.reward_kwargs)
    adv = group_advantages(total, cfg.num_generations, scale=cfg.scale_rewards)
    return ScoredRollout(rollout, total, per, adv)


def _noise(rollout: Rollout, cfg: GRPOConfig, mask_id: int, mu: int, generator, seeds) -> NoisedBatch:
    if cfg.estimator == "d1":
        return d1_mask(rollout.sequences, rollout.completion_mask, rollout.prompt_mask, tail_mask=rollout.tail_mask,
                       mask_id=mask_id, p_mask_prompt=cfg.p_mask_prompt, seed=int(seeds[mu]))
    nb = unigrpo_mask(rollout.sequences, rollout.completion_mask, mask_id=mask_id,
                      ratio_range=tuple(cfg.mask_ratio_range), generator=generator)
    nb.input_ids[rollout.tail_mask] = mask_id  # the unscored EOS tail is hidden, as during sampling
    return nb


@torch.no_grad()
def prepare_iterations(
    policy, reference, rollout: Rollout, cfg: GRPOConfig, *, mask_id: int, generator: torch.Generator | None = None,
) -> list[Iteration]:
    """Draw the μ masks and evaluate π_old (the current policy, before any update) and π_ref on each."""
    seeds = torch.randint(0, 2**12, (cfg.num_iterations,), generator=generator)  # d1: one seed per μ
    out = []
    for mu in range(cfg.num_iterations):
        nb = _noise(rollout, cfg, mask_id, mu, generator, seeds)
        kw = dict(attention_mask=rollout.attention_mask, vocab_slice=rollout.vocab_slice)
        old = per_token_logps(policy, nb.input_ids, rollout.sequences, **kw)
        ref = per_token_logps(reference, nb.input_ids, rollout.sequences, **kw) if cfg.beta > 0 else None
        out.append(Iteration(nb, old, ref))
    return out


def policy_loss(policy, scored: ScoredRollout, it: Iteration, cfg: GRPOConfig) -> GRPOLossOutput:
    """The GRPO loss of one inner iteration (differentiable w.r.t. the policy)."""
    r = scored.rollout
    logp = per_token_logps(policy, it.noised.input_ids, r.sequences, attention_mask=r.attention_mask,
                           vocab_slice=r.vocab_slice)
    return grpo_loss(logp, it.old_logp, scored.advantages.advantages.to(logp.device), it.noised.masked,
                     epsilon=cfg.epsilon, epsilon_high=cfg.epsilon_high, beta=cfg.beta, ref_logp=it.ref_logp,
                     loss_type=cfg.aggregation)


def reward_metrics(scored: ScoredRollout) -> dict[str, float]:
    """TRL-style reward metrics: per function mean/std over applicable samples, totals, zero-std fraction."""
    m: dict[str, float] = {
        "reward": float(scored.rewards.mean()),
        "reward_std": float(scored.rewards.std()) if scored.rewards.numel() > 1 else 0.0,
        "frac_reward_zero_std": scored.advantages.frac_reward_zero_std,
        "completions/mean_length": float(scored.rollout.completion_lengths.float().mean()),
        "completions/min_length": float(scored.rollout.completion_lengths.min()),
        "completions/max_length": float(scored.rollout.completion_lengths.max()),
    }
    for name, vals in scored.per_reward.items():
        v = torch.tensor([x for x in vals if x is not None], dtype=torch.float32)
        if v.numel():
            m[f"rewards/{name}/mean"] = float(v.mean())
            m[f"rewards/{name}/std"] = float(v.std()) if v.numel() > 1 else 0.0
    return m
