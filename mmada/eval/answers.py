"""Answer extraction and equivalence for math benchmarks, with *named* protocols.

Published numbers differ mostly by protocol, so every score names the one it used:

    gsm8k_strict    lm-eval-harness gsm8k "strict-match": first ``#### N`` (regex ``#### (\\-?[0-9\\.\\,]+)``)
    gsm8k_flexible  lm-eval-harness gsm8k "flexible-extract": the *last* match of
                    ``(-?[$0-9.,]{2,})|(-?[0-9]+)`` (first non-empty group)
    boxed           MATH / MATH500: the content of the *last* ``\\boxed{…}`` (or ``\\fbox{…}``),
                    braces matched (Hendrycks ``last_boxed_only_string`` + ``remove_boxed``)
    answer_tag      d1-style: the content of the last ``<answer>…</answer>`` (a ``\\boxed{}`` inside wins)

GSM8K extractions then get lm-eval's ``regexes_to_ignore`` (``,``, ``$``, trailing ``.``) and, by
default, lm-eval's string ``exact_match`` (parity with published lm-eval numbers); MATH-style
protocols default to :func:`is_equivalent` (also available for GSM8K with ``match="equivalent"``):
plain numbers are compared numerically after removing commas, ``$``, units and trailing periods;
anything else goes through ``math-verify`` (symbolic: ``0.5`` = ``\\frac{1}{2}``,
``(x+1)^2`` = ``x^2+2x+1``), then a MATH-style normalised string match.

    >>> extract_answer("so 3 + 4 = 7.\\n#### 7", "gsm8k_strict")
    '7'
    >>> is_equivalent("0.5", "\\\\frac{1}{2}")
    True
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable, Mapping
from typing import Literal

from mmada.errors import MMaDAError

Protocol = Literal["gsm8k_strict", "gsm8k_flexible", "boxed", "answer_tag"]
PROTOCOLS: tuple[str, ...] = ("gsm8k_strict", "gsm8k_flexible", "boxed", "answer_tag")

# lm-eval-harness gsm8k.yaml (filters and exact_match settings).
GSM8K_STRICT_RE = re.compile(r"#### (\-?[0-9\.\,]+)")
GSM8K_FLEXIBLE_RE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
_GSM8K_IGNORE = [re.compile(r","), re.compile(r"\$"), re.compile(r"(?s).*#### "), re.compile(r"\.$")]
_ANSWER_TAG_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)

log = logging.getLogger(__name__)


def _check_protocol(protocol: str) -> None:
    if protocol not in PROTOCOLS:
        raise MMaDAError(f"unknown answer protocol {protocol!r}; expected one of {PROTOCOLS}")


def _gsm8k_clean(s: str) -> str:
    for rx in _GSM8K_IGNORE:
        s = rx.sub("", s)
    return s.strip()


# ---------------------------------------------------------------------------------------------
# \boxed{} handling


def _boxed_at(text: str, i: int) -> str | None:
    """The complete boxed expression starting at ``text[i]`` (a ``\\boxed``/``\\fbox``), or None."""
    rest = text[i:]
    if rest.startswith("\\boxed "):  # "\boxed 5" form (no braces): one token
        tok = rest[len("\\boxed ") :].split("$")[0].split()
        return "\\boxed " + tok[0] if tok else None
    cmd = "\\boxed" if rest.startswith("\\boxed") else "\\fbox"
    if not rest[len(cmd) :].startswith("{"):
        return None
    depth = 0
    for j in range(len(cmd), len(rest)):
        depth += {"{": 1, "}": -1}.get(rest[j], 0)
        if depth == 0:
            return rest[: j + 1]
    return None  # unbalanced braces: no complete boxed answer


def _boxed_starts(text: str) -> list[int]:
    return sorted(m.start() for m in re.finditer(r"\\boxed|\\fbox", text))


def last_boxed(text: str) -> str | None:
    """The last complete ``\\boxed{…}`` / ``\\fbox{…}`` / ``\\boxed N`` substring, or None."""
    for i in reversed(_boxed_starts(text)):
        b = _boxed_at(text, i)
        if b is not None:
            return b
    return None


def all_boxed(text: str) -> list[str]:
    """The contents of every complete boxed expression, in order (for reporting several answers)."""
    found = (_boxed_at(text, i) for i in _boxed_starts(text))
    return [remove_boxed(b) for b in found if b is not None]


def remove_boxed(s: str) -> str:
    """``\\boxed{X}`` → ``X`` (also ``\\fbox{X}`` and ``\\boxed X``)."""
    if s.startswith("\\boxed "):
        return s[len("\\boxed ") :].strip()
    for cmd in ("\\boxed", "\\fbox"):
        if s.startswith(cmd + "{") and s.endswith("}"):
            return s[len(cmd) + 1 : -1].strip()
    raise MMaDAError(f"not a boxed expression: {s!r}")


# ---------------------------------------------------------------------------------------------
# extraction


def extract_answer(response: str | None, protocol: Protocol | str) -> str | None:
    """The final answer in ``response`` under ``protocol`` (see module docstring); None if absent."""
    _check_protocol(protocol)
    if not response:
        return None
    if protocol == "gsm8k_strict":
        m = GSM8K_STRICT_RE.search(response)  # take_first
        return (_gsm8k_clean(m.group(1)) or None) if m else None
    if protocol == "gsm8k_flexible":
        matches = GSM8K_FLEXIBLE_RE.findall(response)
        if not matches:
            return None
        last = matches[-1]  # group_select: -1
        text = next((g for g in last if g), "")
        return _gsm8k_clean(text) or None
    if protocol == "boxed":
        b = last_boxed(response)
        return remove_boxed(b) if b is not None else None
    # answer_tag
    tags = _ANSWER_TAG_RE.findall(response)
    if not tags:
        return None
    inner = tags[-1].strip()
    b = last_boxed(inner)
    if b is not None:
        return remove_boxed(b)
    return inner or None


def gold_answer(answer: str | int | float, protocol: Protocol | str) -> str:
    """Normalise a reference answer: GSM8K golds ``"…#### 72"`` → ``"72"``, MATH solutions → last boxed."""
    _check_protocol(protocol)
    s = str(answer).strip()
    if "####" in s:
        return _gsm8k_clean(s.split("####")[-1])
    b = last_boxed(s)
    if b is not None:
        return remove_boxed(b)
    if protocol in ("gsm8k_strict", "gsm8k_flexible"):
        return _gsm8k_clean(s)
    return s


# ---------------------------------------------------------------------------------------------
# equivalence

_NUM_RE = re.compile(r"^[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?$")
_TEXT_WRAP_RE = re.compile(r"\\(?:text|textbf|mathrm|mbox)\{([^{}]*)\}")
_UNIT_TAIL_RE = re.compile(r"^(.*?\d)\s*(?:[a-zA-Z][a-zA-Z .]*)$")


def parse_number(s: str | None) -> float | None:
    """A plain number with cosmetic decorations removed, else None.

    Handles thousands commas (``1,000``), ``$`` / ``\\$``, ``%``, a leading ``=``, LaTeX ``{,}``
    and ``\\!``, ``\\text{…}`` wrappers, the unicode minus, trailing units/words (``5 dollars``,
    ``12 cm``) and a trailing period. ``3/4`` is *not* a plain number (math-verify handles it).
    """
    if s is None:
        return None
    t = s.strip().replace("{,}", ",")
    t = _TEXT_WRAP_RE.sub(r"\1", t)
    t = t.replace("\\!", "").replace("\\$", "").replace("$", "")
    t = t.replace("\\%", "").replace("%", "").replace("−", "-").replace("\\,", "").replace("~", " ")
    t = t.strip().lstrip("=").strip().rstrip(".").strip()
    m = _UNIT_TAIL_RE.match(t)
    if m and not _NUM_RE.match(t.replace(",", "")):
        t = m.group(1)
    if re.fullmatch(r"[-+]?\d{1,3}(,\d{3})+(\.\d*)?", t):
        t = t.replace(",", "")
    if not _NUM_RE.match(t):
        return None
    try:
        v = float(t)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def normalize_math_string(s: str) -> str:
    """MATH-style string normalisation (Hendrycks ``strip_string``-like) for the last-resort match."""
    t = s.strip()
    t = t.replace("\n", "").replace("\\!", "").replace("\\\\", "\\")
    t = t.replace("tfrac", "frac").replace("dfrac", "frac").replace("\\left", "").replace("\\right", "")
    t = t.replace("^{\\circ}", "").replace("^\\circ", "").replace("\\$", "").replace("$", "")
    t = t.replace("\\%", "").replace("%", "")
    t = _TEXT_WRAP_RE.sub(r"\1", t)
    t = t.replace(" .", " 0.").replace("{.", "{0.")
    if t.startswith("."):
        t = "0" + t
    if len(t.split("=")) == 2 and len(t.split("=")[0].strip()) <= 2:  # "x = 5" → "5"
        t = t.split("=")[1]
    t = t.replace(" ", "").rstrip(".")
    if t == "0.5":
        t = "\\frac{1}{2}"
    return t


def _mv_parse(s: str):
    from math_verify import parse

    if "$" in s or "\\boxed" in s or "\\(" in s or "\\[" in s:
        cands = [s]
    else:  # bare LaTeX is only recognised inside math delimiters
        cands = [f"${s}$", s]
    for c in cands:
        try:
            parsed = parse(c, parsing_timeout=5)
        except Exception:  # math-verify raises on some malformed LaTeX; treat as unparsable
            parsed = []
        if parsed:
            return parsed
    return []


def is_equivalent(prediction: str | None, gold: str | int | float | None, *, rel_tol: float = 1e-6) -> bool:
    """Whether an extracted answer matches the reference (numeric → symbolic → normalised string)."""
    if prediction is None or gold is None:
        return False
    pred, ref = str(prediction).strip(), str(gold).strip()
    if not pred or not ref:
        return False
    a, b = parse_number(pred), parse_number(ref)
    if a is not None and b is not None:
        return math.isclose(a, b, rel_tol=rel_tol, abs_tol=1e-9)
    gp, pp = _mv_parse(ref), _mv_parse(pred)
    if gp and pp:
        from math_verify import verify

        try:
            if verify(gp, pp, timeout_seconds=5):
                return True
        except Exception:  # verification errors count as "not shown equal"; fall through
            log.debug("math-verify failed on %r vs %r", pred, ref)
    return normalize_math_string(pred) == normalize_math_string(ref)


def lm_eval_exact_match(prediction: str | None, gold: str | int | float | None) -> bool:
    """lm-eval-harness gsm8k ``exact_match``: ``regexes_to_ignore`` on both sides, ``ignore_case``, ``==``."""
    if prediction is None or gold is None:
        return False
    return _gsm8k_clean(str(prediction)).lower() == _gsm8k_clean(str(gold)).lower()


Match = Literal["exact", "equivalent"]


def default_match(protocol: str) -> Match:
    """GSM8K protocols default to lm-eval's string ``exact_match`` (parity); MATH-style to equivalence."""
    return "exact" if protocol.startswith("gsm8k") else "equivalent"


def score_response(
    response: str | None, gold: str | int | float, protocol: Protocol | str, match: Match | None = None
) -> dict:
    """Extract under ``protocol`` and compare: ``{"extracted", "gold", "correct"}``.

    ``match="exact"`` is lm-eval's exact_match; ``"equivalent"`` is :func:`is_equivalent`.
    """
    match = match or default_match(protocol)
    if match not in ("exact", "equivalent"):
        raise MMaDAError(f"unknown match mode {match!r}; expected 'exact' or 'equivalent'")
    extracted = extract_answer(response, protocol)
    ref = gold_answer(gold, protocol)
    ok = lm_eval_exact_match(extracted, ref) if match == "exact" else is_equivalent(extracted, ref)
    return {"extracted": extracted, "gold": ref, "correct": ok}


def math_accuracy(
    records: Iterable[Mapping],
    protocol: Protocol | str,
    *,
    response_field: str = "response",
    answer_field: str = "answer",
    match: Match | None = None,
) -> tuple[dict, list[dict]]:
    """Accuracy of ``records`` (each has a model response and a reference answer).

    Returns ``(metrics, per_record)``: metrics ``accuracy``, ``n``, ``no_answer_rate``; per-record rows
    carry ``extracted``/``gold``/``correct`` for inspection.
    """
    _check_protocol(protocol)
    rows: list[dict] = []
    for i, rec in enumerate(records):
        for f in (response_field, answer_field):
            if f not in rec:
                raise MMaDAError(f"record {i} (id={rec.get('id', '?')!r}) has no field {f!r}")
        row = score_response(rec[response_field], rec[answer_field], protocol, match)
        row["id"] = rec.get("id", i)
        rows.append(row)
    if not rows:
        raise MMaDAError("no records to score")
    n = len(rows)
    return (
        {
            "accuracy": sum(r["correct"] for r in rows) / n,
            "no_answer_rate": sum(r["extracted"] is None for r in rows) / n,
            "n": n,
        },
        rows,
    )
