"""AdamW with the official no-decay rule, and a cosine learning-rate schedule with linear warmup.

Shared by every stage (pretrain, SFT, UniGRPO) and the image tokenizer (:mod:`mmada.training.vq`):

    opt = build_optimizer(model, cfg.optim)
    sched = build_scheduler(opt, cfg.optim, max_steps=cfg.trainer.max_steps)   # step it every optimizer step

No-decay rule (``no_decay`` in Gen-Verse/MMaDA training/train_mmada.py): a parameter whose *name*
contains one of ``optim.no_decay`` (default ``bias``, ``layer_norm.weight``, ``mlm_ln.weight``,
``embeddings.weight``) gets weight decay 0. With the official parameter names those patterns
match nothing (no biases; norms are ``attn_norm``/``ff_norm``/``ln_f``; the embedding is ``wte``),
so — exactly like the official code — every parameter is decayed unless the config lists more
patterns (e.g. ``norm.weight``, ``wte.weight``).

Schedule: ``lr · min(1, (s+1)/warmup)`` during warmup, then
``lr · (m + (1−m)·½(1 + cos(π·p)))`` with ``p = (s − warmup)/(max_steps − warmup)`` and ``m = min_lr_scale``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from mmada.training.specs import OptimSpec


def param_groups(named: Iterable[tuple[str, nn.Parameter]], weight_decay: float,
                 no_decay: Iterable[str]) -> list[dict]:
    patterns = tuple(no_decay)
    decay, plain = [], []
    for name, p in named:
        if not p.requires_grad:
            continue
        (plain if any(pat in name for pat in patterns) else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if plain:
        groups.append({"params": plain, "weight_decay": 0.0})
    return groups


def build_optimizer(model: nn.Module, spec: OptimSpec, *, fused: bool = False) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups`; ``fused`` selects the single-kernel implementation (GPU)."""
    groups = param_groups(model.named_parameters(), spec.weight_decay, spec.no_decay)
    return torch.optim.AdamW(groups, lr=spec.lr, betas=spec.betas, eps=spec.eps, fused=fused or None)


def lr_factor(step: int, *, warmup: int, max_steps: int, min_lr_scale: float, kind: str = "cosine") -> float:
    """Multiplier of the base learning rate at optimizer step ``step`` (0-based)."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    span = max(1, max_steps - warmup)
    progress = min(1.0, max(0.0, (step - warmup) / span))
    return min_lr_scale + (1.0 - min_lr_scale) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(opt: torch.optim.Optimizer, spec: OptimSpec, *, max_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, warmup=spec.warmup_steps, max_steps=max_steps,
                                 min_lr_scale=spec.min_lr_scale, kind=spec.scheduler)
    )
