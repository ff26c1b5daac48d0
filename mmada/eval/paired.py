"""Paired comparison of two evaluations of the same problems (before / after a training stage).

A few points of accuracy on a few hundred problems are within sampling noise, but two models scored on
the *same* problems can be compared problem by problem: only the problems whose verdict changed carry
information. Under "no change" each changed verdict is equally likely to go either way, so the split
``gained : lost`` is Binomial(gained + lost, 1/2) — the exact McNemar test.

    flips = paired_flips(load_verdicts("before-math.jsonl"), load_verdicts("after-math.jsonl"))
    flips.gained, flips.lost, flips.p_value
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from scipy.stats import binomtest

from mmada.errors import MMaDAError


@dataclass(frozen=True)
class PairedFlips:
    n: int  # problems scored in both evaluations
    gained: int  # wrong before, correct after
    lost: int  # correct before, wrong after
    p_value: float  # exact two-sided McNemar test of gained vs lost

    @property
    def delta(self) -> float:
        """Change in accuracy (after − before) over the ``n`` shared problems."""
        return (self.gained - self.lost) / self.n if self.n else 0.0

    def as_dict(self) -> dict:
        return {**asdict(self), "delta": self.delta}


def mcnemar_exact(gained: int, lost: int) -> float:
    """Two-sided exact McNemar p-value: ``2·P(X ≤ min(gained, lost))`` for X ~ Bin(gained + lost, 1/2), capped at 1."""
    if gained < 0 or lost < 0:
        raise ValueError(f"counts must be non-negative (gained={gained}, lost={lost})")
    n, k = gained + lost, min(gained, lost)
    if n == 0:
        return 1.0
    return min(1.0, 2 * sum(math.comb(n, j) for j in range(k + 1)) / 2**n)  # exact integers, no underflow


def proportion_ci(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of an accuracy ``k / n`` (scipy's ``binomtest(...).proportion_ci``); ``(0, 1)``
    when ``n`` is 0. Unlike the normal approximation it stays inside [0, 1] and is not empty at 0 % or 100 %."""
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return 0.0, 1.0
    ci = binomtest(k, n).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def paired_flips(before: Mapping[str, bool], after: Mapping[str, bool]) -> PairedFlips:
    """Count verdict changes between two evaluations keyed by problem id; the id sets must match."""
    _check_same_items(before, after)
    gained = sum(bool(after[i]) and not bool(before[i]) for i in before)
    lost = sum(bool(before[i]) and not bool(after[i]) for i in before)
    return PairedFlips(len(before), gained, lost, mcnemar_exact(gained, lost))


@dataclass(frozen=True)
class PairedScores:
    n: int  # items scored in both evaluations
    rose: int  # score higher after
    fell: int  # score lower after (ties carry no information and count in neither)
    p_value: float  # exact two-sided sign test of rose vs fell
    mean_delta: float  # mean of after − before over the n items

    def as_dict(self) -> dict:
        return asdict(self)


def _check_same_items(before: Mapping, after: Mapping) -> None:
    if before.keys() != after.keys():
        only_b, only_a = sorted(before.keys() - after.keys()), sorted(after.keys() - before.keys())
        raise MMaDAError(f"the evaluations did not score the same problems: {len(only_b)} only before "
                         f"(e.g. {only_b[:3]}), {len(only_a)} only after (e.g. {only_a[:3]})")


def paired_scores(before: Mapping[str, float], after: Mapping[str, float]) -> PairedScores:
    """Sign test of a graded per-item score (e.g. the fraction of t2i criteria met); the id sets must match.

    The same binomial as McNemar's: under "no change" each item whose score moved is equally likely
    to have risen or fallen.
    """
    _check_same_items(before, after)
    rose = sum(after[i] > before[i] for i in before)
    fell = sum(after[i] < before[i] for i in before)
    mean = sum(after[i] - before[i] for i in before) / len(before) if before else 0.0
    return PairedScores(len(before), rose, fell, mcnemar_exact(rose, fell), mean)


def load_scores(path: str | Path, *, id_field: str = "id", field: str = "correct") -> dict[str, object]:
    """``{id: record[field]}`` from an eval's per-sample JSONL (``mmada eval … --samples-out``)."""
    out: dict[str, object] = {}
    for lineno, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        rec = json.loads(line)
        if id_field not in rec or field not in rec:
            raise MMaDAError(f"{path}:{lineno}: record has no {id_field!r} / {field!r} field")
        key = str(rec[id_field])  # ids compare as strings, so 7 and "7" are the same problem
        if key in out:
            raise MMaDAError(f"{path}:{lineno}: duplicate id {key!r}")
        out[key] = rec[field]
    return out


def load_verdicts(path: str | Path, *, id_field: str = "id", correct_field: str = "correct") -> dict[str, bool]:
    """``{id: correct}`` from an eval's per-sample JSONL (``mmada eval math --samples-out``)."""
    return {k: bool(v) for k, v in load_scores(path, id_field=id_field, field=correct_field).items()}
