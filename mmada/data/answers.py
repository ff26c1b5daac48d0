"""Final answers of math traces: extraction (``\\boxed{}``, GSM8K ``#### N``, last number) and comparison.

Used by the readers (to split a GSM8K solution into trace + gold answer) and by the
``filters.verify_answer`` filter: a trace is kept only if *its* final answer equals the gold one.
Numbers compare numerically (``1,000`` = ``1000.0``, ``1/2`` = ``0.5``); other answers compare
after light LaTeX normalisation and, failing that, with ``math_verify``.
"""

from __future__ import annotations

import re
from fractions import Fraction

_CALC = re.compile(r"<<[^<>]*>>")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?|-?\.\d+")


def strip_calculator_annotations(text: str) -> str:
    """GSM8K: ``48/2 = <<48/2=24>>24`` -> ``48/2 = 24``."""
    return _CALC.sub("", text)


def split_gsm8k(answer: str) -> tuple[str, str] | None:
    """Split a GSM8K ``answer`` into (worked solution, final answer after ``####``); None if absent."""
    if "####" not in answer:
        return None
    trace, final = answer.rsplit("####", 1)
    final = final.strip()
    if not final:
        return None
    return trace.strip(), final


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{…}`` / ``\\fbox{…}`` (balanced braces), or None."""
    idx = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if idx < 0:
        return None
    i = text.find("{", idx)
    if i < 0:
        # \boxed 5 (space form)
        m = re.match(r"\\boxed\s+([^\s$]+)", text[idx:])
        return m.group(1) if m else None
    depth, start = 0, i + 1
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[start:j].strip()
    return None


def last_number(text: str) -> str | None:
    nums = _NUMBER.findall(text)
    return nums[-1].rstrip(".") if nums else None


def final_answer(text: str) -> str | None:
    """The final answer a trace states: last ``\\boxed{}``, else after ``####``, else the last number."""
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    split = split_gsm8k(text)
    if split is not None:
        return split[1]
    return last_number(text)


def _to_number(s: str) -> Fraction | None:
    t = s.strip().strip("$").strip()
    t = re.sub(r"\\(?:text|mathrm)\{[^{}]*\}", "", t)  # units: 5\text{ cm}
    t = t.replace("\\!", "").replace("\\,", "").replace(" ", "").rstrip(".")
    t = re.sub(r"^\\d?frac\{(-?\d+)\}\{(\d+)\}$", r"\1/\2", t)
    t = t.replace("\\%", "").replace("%", "")
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", t):
        t = t.replace(",", "")
    try:
        return Fraction(t)
    except (ValueError, ZeroDivisionError):
        return None


def _norm_text(s: str) -> str:
    t = s.strip().strip("$").strip().rstrip(".")
    t = re.sub(r"\\(?:left|right)\b", "", t)
    t = t.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("^\\circ", "").replace("^{\\circ}", "")
    return re.sub(r"\s+", "", t).lower()


def answers_equal(pred: str | None, gold: str | None) -> bool:
    """Whether two final answers are the same (numbers numerically, expressions symbolically)."""
    if pred is None or gold is None:
        return False
    a, b = _to_number(pred), _to_number(gold)
    if a is not None and b is not None:
        return a == b
    if _norm_text(pred) == _norm_text(gold):
        return True
    try:
        from math_verify import parse, verify

        return bool(verify(parse(f"${gold}$"), parse(f"${pred}$")))
    except Exception:  # math_verify cannot parse it: not provably equal
        return False
