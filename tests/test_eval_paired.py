"""Paired before/after comparison: McNemar p-values against brute-force enumeration of sign flips."""

import itertools
import json

import pytest

from mmada.errors import MMaDAError
from mmada.eval.paired import load_scores, load_verdicts, mcnemar_exact, paired_flips, paired_scores


def brute_force_p(gained: int, lost: int) -> float:
    """P(a fair ±1 assignment of the changed problems is at least as lopsided as observed), by enumeration."""
    n = gained + lost
    if n == 0:
        return 1.0
    obs = abs(gained - lost)
    hits = sum(abs(2 * sum(s) - n) >= obs for s in itertools.product((0, 1), repeat=n))
    return hits / 2**n


@pytest.mark.parametrize("gained,lost", [(0, 0), (1, 0), (5, 0), (3, 3), (7, 2), (2, 9), (6, 5), (12, 3)])
def test_mcnemar_matches_enumeration(gained, lost):
    assert mcnemar_exact(gained, lost) == pytest.approx(brute_force_p(gained, lost), abs=1e-12)


def test_mcnemar_large_counts_stay_finite():
    p = mcnemar_exact(72, 124)  # 196 changed problems: 2**196 in exact integers
    assert 1e-5 < p < 1e-3
    assert mcnemar_exact(500, 500) == 1.0
    with pytest.raises(ValueError):
        mcnemar_exact(-1, 2)


def test_paired_flips_counts_and_mismatched_ids(tmp_path):
    before = {"a": True, "b": False, "c": False, "d": True, "e": False}
    after = {"a": True, "b": True, "c": True, "d": False, "e": False}
    f = paired_flips(before, after)
    assert (f.n, f.gained, f.lost) == (5, 2, 1)
    assert f.delta == pytest.approx(0.2)
    assert f.p_value == pytest.approx(brute_force_p(2, 1))
    with pytest.raises(MMaDAError, match="1 only before"):
        paired_flips(before, {k: v for k, v in after.items() if k != "e"})

    p = tmp_path / "s.jsonl"
    p.write_text("\n".join(json.dumps({"id": k, "correct": v, "response": "x"}) for k, v in before.items()) + "\n")
    assert load_verdicts(p) == before
    p.write_text(json.dumps({"id": "a", "correct": True}) + "\n" + json.dumps({"id": "a", "correct": False}) + "\n")
    with pytest.raises(MMaDAError, match=r"s.jsonl:2: duplicate id 'a'"):
        load_verdicts(p)
    p.write_text(json.dumps({"id": 7, "correct": True}) + "\n" + json.dumps({"id": "7", "correct": False}) + "\n")
    with pytest.raises(MMaDAError, match=r"s.jsonl:2: duplicate id '7'"):
        load_verdicts(p)
    p.write_text(json.dumps({"id": "a"}) + "\n")
    with pytest.raises(MMaDAError, match="no 'id' / 'correct'"):
        load_verdicts(p)


def test_paired_scores_sign_test_ignores_ties(tmp_path):
    # graded scores (fraction of t2i criteria met): 3 rose, 1 fell, 2 unchanged
    before = {"a": 0.0, "b": 0.5, "c": 0.5, "d": 1.0, "e": 0.25, "f": 1.0}
    after = {"a": 0.5, "b": 1.0, "c": 0.5, "d": 0.5, "e": 0.75, "f": 1.0}
    s = paired_scores(before, after)
    assert (s.n, s.rose, s.fell) == (6, 3, 1)
    assert s.mean_delta == pytest.approx((0.5 + 0.5 + 0 - 0.5 + 0.5 + 0) / 6)
    assert s.p_value == pytest.approx(brute_force_p(3, 1))
    with pytest.raises(MMaDAError, match="1 only after"):
        paired_scores({k: v for k, v in before.items() if k != "f"}, after)

    p = tmp_path / "t2i.jsonl"
    p.write_text("".join(json.dumps({"id": k, "score": v, "correct": v == 1.0}) + "\n" for k, v in before.items()))
    assert load_scores(p, field="score") == before
    assert load_verdicts(p) == {k: v == 1.0 for k, v in before.items()}
    with pytest.raises(MMaDAError, match="no 'id' / 'reward'"):
        load_scores(p, field="reward")


@pytest.mark.parametrize(("k", "n"), [(0, 10), (3, 10), (30, 100), (100, 100), (1, 1)])
def test_proportion_ci_is_the_wilson_interval(k, n):
    import math

    from mmada.eval.paired import proportion_ci

    z = 1.959963984540054  # the 97.5 % normal quantile
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    lo, hi = proportion_ci(k, n)
    assert lo == pytest.approx(max(0.0, centre - half), abs=1e-9) and hi == pytest.approx(min(1.0, centre + half), abs=1e-9)
    assert proportion_ci(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        proportion_ci(3, 2)
