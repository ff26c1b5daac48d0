"""UniGRPO for masked-diffusion models, as pure functions (rollouts, rewards, advantages, noising, loss).

The Lightning stage that drives them lives in ``mmada.training``.
"""

from mmada.rl.advantages import Advantages, group_advantages
from mmada.rl.grpo import (
    GRPOConfig,
    Iteration,
    ScoredRollout,
    policy_loss,
    prepare_iterations,
    reward_metrics,
    score_rollout,
)
from mmada.rl.loss import GRPOLossOutput, grpo_loss, per_token_logps
from mmada.rl.noising import NoisedBatch, d1_mask, unigrpo_mask
from mmada.rl.rewards import REWARDS, combine_rewards, register_reward, resolve_reward
from mmada.rl.rollout import Rollout, rollout_r2i, rollout_t2i, rollout_text

__all__ = [
    "REWARDS",
    "Advantages",
    "GRPOConfig",
    "GRPOLossOutput",
    "Iteration",
    "NoisedBatch",
    "Rollout",
    "ScoredRollout",
    "combine_rewards",
    "d1_mask",
    "group_advantages",
    "grpo_loss",
    "per_token_logps",
    "policy_loss",
    "prepare_iterations",
    "register_reward",
    "resolve_reward",
    "reward_metrics",
    "rollout_r2i",
    "rollout_t2i",
    "rollout_text",
    "score_rollout",
    "unigrpo_mask",
]
