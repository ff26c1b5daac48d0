"""Reward functions for UniGRPO, with TRL's signature.

A reward function is ``f(prompts, completions, **columns) -> list[float | None]``: ``prompts`` and
``completions`` are aligned lists (completions are strings for text/MMU and PIL images for t2i),
``columns`` holds the dataset columns repeated to the same length (``answer``, ``caption``,
``metadata``, ``task``, ``label`` …; unknown columns are ignored through ``**kwargs``). ``None``
means "not applicable to this sample" (e.g. a math reward on a t2i sample). ``combine_rewards``
sums the applicable ones with their weights; a sample no function applies to is an error.

Built in (``REWARDS``): ``math_correctness``, ``format``, ``mmu_correctness``, ``shapes_t2i``,
``digit_classifier``, ``clip_score``. Users add theirs with ``@register_reward("name")`` or by
import path ``"package.module:function"`` in the config, which only names code the operator allowed:
a config is data (it comes from the Prefect UI and API too), so a module is imported only when the
environment of the process that validates the config lists it (or a package above it)::

    MMADA_ALLOW_REWARD_MODULES=myrewards,lab.rl.rewards    # comma-separated; unset: none allowed
"""

from __future__ import annotations

import functools
import importlib
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from mmada.data.answers import final_answer, is_equivalent
from mmada.errors import ConfigError
from mmada.eval import normalize_answer, score_shapes_image
from mmada.eval.classifier import get_digits_classifier, preprocess
from mmada.eval.clip_score import CLIPScorer
from mmada.tokenization.text import split_think

RewardFunc = Callable[..., list[float | None]]
REWARDS: dict[str, RewardFunc] = {}

ALLOW_MODULES_ENV = "MMADA_ALLOW_REWARD_MODULES"
"""The operator's list of modules whose functions a config may name as rewards (``module:function``)."""


def register_reward(name: str) -> Callable[[RewardFunc], RewardFunc]:
    def deco(fn: RewardFunc) -> RewardFunc:
        REWARDS[name] = fn
        return fn

    return deco


def resolve_reward(spec: str | RewardFunc) -> RewardFunc:
    """A registered name, a ``module:function`` import path, or a callable."""
    if callable(spec):
        return spec
    if spec in REWARDS:
        return REWARDS[spec]
    if ":" in spec:
        mod, _, attr = spec.partition(":")
        if not module_allowed(mod):
            allowed = ", ".join(allowed_modules()) or "none"
            raise ConfigError(f"reward function {spec!r}: module {mod!r} is not allowed (a config cannot name code to "
                              f"import; the operator lists the modules rewards may come from in {ALLOW_MODULES_ENV}, "
                              f"allowed now: {allowed}); built in: {sorted(REWARDS)}")
        try:
            fn = getattr(importlib.import_module(mod), attr)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"reward function {spec!r} cannot be imported: {exc}") from exc
        if not callable(fn):
            raise ConfigError(f"reward function {spec!r} is not callable")
        return fn
    raise ConfigError(f"unknown reward function {spec!r}; built in: {sorted(REWARDS)} (or use 'module:function')")


def allowed_modules() -> list[str]:
    """The modules (and packages) listed in ``MMADA_ALLOW_REWARD_MODULES``."""
    return [m.strip() for m in os.environ.get(ALLOW_MODULES_ENV, "").split(",") if m.strip()]


def module_allowed(module: str) -> bool:
    """``module`` is listed in ``MMADA_ALLOW_REWARD_MODULES``, or is inside a listed package."""
    return any(module == m or module.startswith(m + ".") for m in allowed_modules())


def _for_tasks(columns: Mapping[str, Any], n: int, tasks: tuple[str, ...]) -> list[bool]:
    """Which samples a task-specific reward applies to (all of them when there is no ``task`` column)."""
    task = columns.get("task")
    return [True] * n if task is None else [t is None or t in tasks for t in task]


def _column(columns: Mapping[str, Any], name: str, n: int) -> list:
    value = columns.get(name)
    if value is None:
        return [None] * n
    if len(value) != n:
        raise ConfigError(f"dataset column {name!r} has {len(value)} values for {n} completions")
    return list(value)


# --------------------------------------------------------------------------------------------- text
@register_reward("math_correctness")
def math_correctness(prompts: Sequence, completions: Sequence[str], **columns) -> list[float | None]:
    """1.0 if the final answer equals the gold ``answer`` column, else 0.0; None without a gold answer
    (or for rows whose ``task`` column is not a text-reasoning task).

    The final answer and the comparison are :func:`mmada.data.answers.final_answer` and
    :func:`~mmada.data.answers.is_equivalent`, the rule curation keeps traces by (``<answer>`` tag, last
    ``\\boxed{}``, ``#### N``, else the last number, after ``</think>``; exact numbers, then symbolic).
    """
    gold = _column(columns, "answer", len(completions))
    applies = _for_tasks(columns, len(completions), ("chat", "text", "reasoning"))
    return [
        None if g is None or not isinstance(c, str) or not ok else float(is_equivalent(final_answer(c), g))
        for c, g, ok in zip(completions, gold, applies)
    ]


@register_reward("format")
def format_reward(prompts: Sequence, completions: Sequence, **columns) -> list[float | None]:
    """1.0 for ``<think> reasoning </think> answer`` (non-empty both), 0.0 otherwise; None for images."""
    return [None if not isinstance(c, str) else float(all(split_think(c))) for c in completions]


@register_reward("mmu_correctness")
def mmu_correctness(prompts: Sequence, completions: Sequence[str], **columns) -> list[float | None]:
    """Normalised exact match of the final answer with the ``answer`` column (understanding tasks)."""
    gold = _column(columns, "answer", len(completions))
    applies = _for_tasks(columns, len(completions), ("mmu",))
    return [
        None if g is None or not isinstance(c, str) or not ok
        else float(normalize_answer(split_think(c)[1]) == normalize_answer(str(g)))
        for c, g, ok in zip(completions, gold, applies)
    ]


# --------------------------------------------------------------------------------------------- t2i
@register_reward("shapes_t2i")
def shapes_t2i(prompts: Sequence, completions: Sequence, **columns) -> list[float | None]:
    """The built-in shapes checker on generated images: fraction of criteria met (1.0 = correct).

    Uses the ``metadata`` column (ground truth) when present, else the ``caption``; None for text.
    """
    meta = _column(columns, "metadata", len(completions))
    caps = _column(columns, "caption", len(completions))
    out: list[float | None] = []
    for img, m, cap in zip(completions, meta, caps):
        if isinstance(img, str) or (m is None and cap is None):
            out.append(None)
            continue
        out.append(float(score_shapes_image(img, m if m is not None else cap)["score"]))
    return out


@functools.cache
def _digits_classifier():
    return get_digits_classifier()


@register_reward("digit_classifier")
def digit_classifier(prompts: Sequence, completions: Sequence, **columns) -> list[float | None]:
    """Probability the digits classifier gives the prompted class (``label`` column) of a generated image."""
    labels = _column(columns, "label", len(completions))
    idx = [i for i, (c, y) in enumerate(zip(completions, labels)) if y is not None and not isinstance(c, str)]
    out: list[float | None] = [None] * len(completions)
    if not idx:
        return out
    bundle = _digits_classifier()
    with torch.no_grad():
        x = torch.from_numpy(preprocess([completions[i] for i in idx]))
        probs = torch.softmax(bundle.model.eval()(x), dim=-1)
    for row, i in enumerate(idx):
        out[i] = float(probs[row, bundle.label_index(labels[i])])
    return out


@functools.cache
def _clip_scorer(path: str):
    return CLIPScorer(path)


@register_reward("clip_score")
def clip_score(prompts: Sequence, completions: Sequence, *, clip_model_path: str | None = None,
               **columns) -> list[float | None]:
    """CLIP image–caption score / 100 (i.e. max(cos, 0)) with a local ``transformers.CLIPModel``."""
    if clip_model_path is None:
        raise ConfigError("the clip_score reward needs clip_model_path (a local CLIP checkpoint directory)")
    caps = _column(columns, "caption", len(completions))
    idx = [i for i, (c, cap) in enumerate(zip(completions, caps)) if cap is not None and not isinstance(c, str)]
    out: list[float | None] = [None] * len(completions)
    if idx:
        cos = _clip_scorer(str(clip_model_path)).cosines([completions[i] for i in idx], [caps[i] for i in idx])
        for row, i in enumerate(idx):
            out[i] = max(float(cos[row]), 0.0)
    return out


# --------------------------------------------------------------------------------------------- combine
def combine_rewards(
    funcs: Mapping[str, RewardFunc],
    weights: Mapping[str, float],
    prompts: Sequence,
    completions: Sequence,
    columns: Mapping[str, Sequence],
    func_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
) -> tuple[torch.Tensor, dict[str, list[float | None]]]:
    """Weighted sum of the applicable rewards per completion → ``(total (N,), per-function values)``."""
    n = len(completions)
    per: dict[str, list[float | None]] = {}
    for name, fn in funcs.items():
        values = fn(prompts, completions, **{**columns, **(func_kwargs or {}).get(name, {})})
        if len(values) != n:
            raise ConfigError(f"reward {name!r} returned {len(values)} values for {n} completions")
        per[name] = list(values)
    total = torch.zeros(n, dtype=torch.float32)
    for i in range(n):
        applicable = [(name, v[i]) for name, v in per.items() if v[i] is not None]
        if not applicable:
            task = columns.get("task", [None] * n)[i] if "task" in columns else None
            raise ConfigError(
                f"no reward function applies to completion {i} (task {task!r}); configured: {sorted(funcs)}"
            )
        total[i] = sum(weights.get(name, 1.0) * float(v) for name, v in applicable)
    return total, per
