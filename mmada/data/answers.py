"""The one answer verifier: final-answer extraction and equivalence for curation, rewards and evaluation.

Curation (``filters.verify_answer``: a trace is kept only if the gold answer is what *it* computes),
the UniGRPO ``math_correctness`` reward and math evaluation all decide "the answer is correct" here,
with the same equivalence (:func:`is_equivalent`).

Free-form text (responses, rollouts): :func:`final_answer` — looking after the last ``</think>``
when something follows it: the last ``<answer>…</answer>`` (a ``\\boxed{}`` inside wins), else the last
``\\boxed{…}``, else the line after the last ``#### ``, else the last number.

Worked solutions (curation): :func:`trace_computes` — the gold answer must be the final result the
solution states (as above, or "the answer is N"), else the result of its last calculation (GSM8K's
``48+24 = <<48+24=72>>72``, or the last ``= 72``), not merely its last number: in "she pays
3 * 4 = <<3*4=12>>12 dollars for her 5 pens" the solution computes 12 (:func:`computed_answer`).

Evaluation reproduces published numbers with *named* protocols (:func:`extract_answer`):

    gsm8k_strict    lm-eval-harness gsm8k "strict-match": first ``#### N`` (regex ``#### (\\-?[0-9\\.\\,]+)``)
    gsm8k_flexible  lm-eval-harness gsm8k "flexible-extract": the *last* match of
                    ``(-?[$0-9.,]{2,})|(-?[0-9]+)`` (first non-empty group)
    boxed           MATH / MATH500: the content of the *last* complete ``\\boxed{…}`` (or ``\\fbox{…}``),
                    braces matched (Hendrycks ``last_boxed_only_string`` + ``remove_boxed``)
    answer_tag      d1-style: the content of the last ``<answer>…</answer>`` (a ``\\boxed{}`` inside wins)

GSM8K extractions get lm-eval's ``regexes_to_ignore`` (``,``, ``$``, trailing ``.``);
:func:`lm_eval_exact_match` is lm-eval's string ``exact_match`` (for parity with published numbers).

Equivalence (:func:`is_equivalent`), in order: (1) when both sides are plain numbers or simple
fractions, exact rational comparison after removing thousands commas, ``$``, ``%``, units,
``\\text{}`` wrappers, the unicode minus and trailing periods (``1/2`` = ``0.5`` = ``\\dfrac12``);
(2) ``math-verify`` (symbolic: ``(x+1)^2`` = ``x^2+2x+1``); (3) a MATH-style normalised string match.

    >>> final_answer("<think>3 + 4 = 7.</think> The answer is 7.")
    '7'
    >>> extract_answer("so 3 + 4 = 7.\\n#### 7", "gsm8k_strict")
    '7'
    >>> is_equivalent("0.5", "\\\\frac{1}{2}")
    True
"""

from __future__ import annotations

import logging
import re
import threading
from fractions import Fraction
from typing import Literal

from math_verify import parse as mv_parse
from math_verify import verify as mv_verify

from mmada.errors import MMaDAError

log = logging.getLogger(__name__)

Protocol = Literal["gsm8k_strict", "gsm8k_flexible", "boxed", "answer_tag"]
PROTOCOLS: tuple[str, ...] = ("gsm8k_strict", "gsm8k_flexible", "boxed", "answer_tag")

# lm-eval-harness gsm8k.yaml (filters and exact_match settings).
GSM8K_STRICT_RE = re.compile(r"#### (\-?[0-9\.\,]+)")
GSM8K_FLEXIBLE_RE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
_GSM8K_IGNORE = [re.compile(r","), re.compile(r"\$"), re.compile(r"(?s).*#### "), re.compile(r"\.$")]

_ANSWER_TAG_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
_CALC_RE = re.compile(r"<<[^<>]*>>")
# A number as a trace states it: thousands groups, decimals, a simple fraction (1/2), unicode minus.
_NUMBER_RE = re.compile(r"[-−]?(?:\d+(?:,\d{3})*(?:\.\d+)?(?:/\d+)?|\.\d+)")
_MV_TIMEOUT_S = 5


# ---------------------------------------------------------------------------------------------
# pieces of traces


def strip_calculator_annotations(text: str) -> str:
    """GSM8K: ``48/2 = <<48/2=24>>24`` -> ``48/2 = 24``."""
    return _CALC_RE.sub("", text)


def split_gsm8k(answer: str) -> tuple[str, str] | None:
    """Split a GSM8K ``answer`` into (worked solution, final answer after ``####``); None if absent."""
    if "####" not in answer:
        return None
    trace, final = answer.rsplit("####", 1)
    final = final.strip()
    if not final:
        return None
    return trace.strip(), final


def _boxed_at(text: str, i: int) -> str | None:
    """The content of the complete boxed expression starting at ``text[i]``, or None if it is not complete."""
    rest = text[i:]
    if rest.startswith("\\boxed "):  # "\boxed 5" form (no braces): one token
        tok = rest[len("\\boxed ") :].split("$")[0].split()
        return tok[0] if tok else None
    cmd = "\\boxed" if rest.startswith("\\boxed") else "\\fbox"
    if not rest[len(cmd) :].startswith("{"):
        return None
    depth = 0
    for j in range(len(cmd), len(rest)):
        depth += {"{": 1, "}": -1}.get(rest[j], 0)
        if depth == 0:
            return rest[len(cmd) + 1 : j].strip()
    return None  # unbalanced braces: no complete boxed answer here


def _boxed_starts(text: str) -> list[int]:
    return [m.start() for m in re.finditer(r"\\boxed|\\fbox", text)]


def last_boxed(text: str) -> str | None:
    """Content of the last *complete* ``\\boxed{…}`` / ``\\fbox{…}`` / ``\\boxed N``, or None.

    A trailing unbalanced ``\\boxed{`` (a generation cut short) falls back to the previous complete one.
    """
    for i in reversed(_boxed_starts(text)):
        b = _boxed_at(text, i)
        if b is not None:
            return b
    return None


def all_boxed(text: str) -> list[str]:
    """The contents of every complete boxed expression, in order (for reporting several answers)."""
    found = (_boxed_at(text, i) for i in _boxed_starts(text))
    return [b for b in found if b is not None]


def last_number(text: str) -> str | None:
    nums = _NUMBER_RE.findall(text)
    return nums[-1] if nums else None


def _answer_tag(text: str) -> str | None:
    tags = _ANSWER_TAG_RE.findall(text)
    if not tags:
        return None
    inner = tags[-1].strip()
    boxed = last_boxed(inner)
    return boxed if boxed is not None else (inner or None)


def _gsm8k_clean(s: str) -> str:
    for rx in _GSM8K_IGNORE:
        s = rx.sub("", s)
    return s.strip()


# ---------------------------------------------------------------------------------------------
# extraction


def final_answer(text: str | None) -> str | None:
    """The final answer a free-form trace or response states (see the module docstring); None if none.

    Only the part after the last ``</think>`` is searched when it is not empty: numbers and boxes in
    the reasoning are intermediate results, not the answer.
    """
    if not text:
        return None
    t = _solution_part(text)
    marked = _marked_result(t)
    return marked if marked is not None else last_number(t)


def _marked_result(text: str) -> str | None:
    """The answer a marker gives: ``<answer>``, else the last ``\\boxed{}``, else ``#### N``; None if none."""
    tag = _answer_tag(text)
    if tag is not None:
        return tag
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    split = split_gsm8k(text)
    if split is not None:
        return split[1].splitlines()[0].strip()  # what follows on later lines is not the answer
    return None


def _solution_part(text: str) -> str:
    """The part after the last ``</think>`` when something follows it, else the whole text."""
    _, sep, tail = text.rpartition("</think>")
    return tail if sep and tail.strip() else text


# A stated result in prose: "the answer is 12", "The final answer is: $1,200".
_STATED_RE = re.compile(r"\b(?:final\s+)?answer\s+is\s*:?\s*\\?\$?\s*(" + _NUMBER_RE.pattern + r")", re.IGNORECASE)
# A calculation's result: the number after "=" (a GSM8K calculator annotation between them is read too:
# "3 * 4 = <<3*4=12>>12"), or an annotation on its own ("sold <<48/2=24>>24 clips").
_NUM = r"(?P<num>" + _NUMBER_RE.pattern + r")"
_CALC_STEP_RE = re.compile(r"=\s*\\?\$?\s*(?:<<(?P<ann>[^<>]*)>>\s*\\?\$?\s*)?" + _NUM + r"?"
                           r"|<<(?P<ann2>[^<>]*)>>\s*\\?\$?\s*" + _NUM.replace("num", "num2") + r"?")


def _annotation_result(ann: str | None) -> str | None:
    """The result of a calculator annotation ``48/2=24`` (the number after its last ``=``)."""
    if not ann or "=" not in ann:
        return None
    m = _NUMBER_RE.fullmatch(ann.rsplit("=", 1)[1].strip())
    return m.group(0) if m else None


def _calculations(text: str) -> list[tuple[str, ...]]:
    """Every calculation of a worked solution, in order: the results it states (annotation, written)."""
    out = []
    for m in _CALC_STEP_RE.finditer(text):
        found = tuple(x for x in (_annotation_result(m.group("ann") or m.group("ann2")), m.group("num") or m.group("num2"))
                      if x is not None)
        if found:
            out.append(found)
    return out


def _stated_result(text: str) -> str | None:
    """A final result the text states: ``<answer>``, ``\\boxed{}``, ``#### N`` or "the answer is N"."""
    marked = _marked_result(text)
    if marked is not None:
        return marked
    said = _STATED_RE.findall(text)
    return said[-1] if said else None


def computed_answer(trace: str | None) -> str | None:
    """What a worked solution computes: the final result it states (``<answer>``, ``\\boxed{}``,
    ``#### N``, "the answer is N"), else the result of its last calculation (``<<48+24=72>>72``, ``= 72``),
    else its last number; None if it has none. (After the last ``</think>`` when something follows it.)"""
    if not trace:
        return None
    t = _solution_part(trace)
    stated = _stated_result(t)
    if stated is not None:
        return stated
    calcs = _calculations(t)
    if calcs:
        return calcs[-1][-1]
    return last_number(t)


def trace_computes(trace: str | None, gold: str | int | float | None) -> bool:
    """Whether a worked solution computes ``gold`` — the rule ``filters.verify_answer`` keeps traces by.

    A stated final result (see :func:`computed_answer`) must equal ``gold``. Without one, ``gold``
    must be the result of the last calculation (its annotation or its written result; a non-integer
    result may be rounded to an integer ``gold``: "100/12 = 8.33, so 8 full boxes"), or the last number
    of the text when that restates a result computed earlier ("So Tom has 7 apples."). A number that
    merely follows the result ("pays 3 * 4 = 12 dollars for her 5 pens") is not what the trace computes.
    """
    if not trace or gold is None:
        return False
    t = _solution_part(trace)
    stated = _stated_result(t)
    if stated is not None:
        return is_equivalent(stated, gold)
    calcs = _calculations(t)
    if not calcs:
        return is_equivalent(last_number(t), gold)
    if any(is_equivalent(r, gold) for r in calcs[-1]):
        return True
    g = parse_number(str(gold))
    if g is not None and g.denominator == 1:
        for r in calcs[-1]:
            x = parse_number(r)
            if x is not None and x.denominator != 1 and abs(x - g) < 1:
                return True
    last = last_number(t)
    return is_equivalent(last, gold) and any(is_equivalent(last, r) for c in calcs for r in c)


def check_protocol(protocol: str) -> None:
    if protocol not in PROTOCOLS:
        raise MMaDAError(f"unknown answer protocol {protocol!r}; expected one of {PROTOCOLS}")


def extract_answer(response: str | None, protocol: Protocol | str) -> str | None:
    """The final answer in ``response`` under a named evaluation ``protocol``; None if absent."""
    check_protocol(protocol)
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
        return last_boxed(response)
    return _answer_tag(response)


def gold_answer(answer: str | int | float, protocol: Protocol | str) -> str:
    """Normalise a reference answer: GSM8K golds ``"…#### 72"`` → ``"72"``, MATH solutions → last boxed."""
    check_protocol(protocol)
    s = str(answer).strip()
    if "####" in s:
        return _gsm8k_clean(s.split("####")[-1])
    boxed = last_boxed(s)
    if boxed is not None:
        return boxed
    if protocol in ("gsm8k_strict", "gsm8k_flexible"):
        return _gsm8k_clean(s)
    return s


# ---------------------------------------------------------------------------------------------
# equivalence

# The exponent is capped: Fraction("1e999999999") would build a billion-digit integer.
_NUM_RE = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d{1,3})?")
_SLASH_RE = re.compile(r"([-+]?\d+)\s*/\s*(\d+)")
_FRAC_RE = re.compile(r"([-+]?)\\[dt]?frac\s*(?:\{\s*([-+]?\d+)\s*\}|(\d))\s*(?:\{\s*(\d+)\s*\}|(\d))")
_TEXT_WRAP_RE = re.compile(r"\\(?:text|textbf|mathrm|mbox)\{([^{}]*)\}")
# Units are words after whitespace ("5 dollars", "12 cm"); a letter glued to a number ("2x") is algebra.
_UNIT_TAIL_RE = re.compile(r"(.*?\d)\s+[a-zA-Z][a-zA-Z .]*")
_LEFT_RIGHT_RE = re.compile(r"\\(?:left|right)(?![a-zA-Z])")


def parse_number(s: str | int | float | None) -> Fraction | None:
    """A plain number or simple fraction as an exact :class:`Fraction`, decorations removed; else None.

    Handles thousands commas (``1,000``, LaTeX ``1{,}000``), ``$`` / ``\\$``, ``%``, a leading ``=``,
    ``\\!`` / ``\\,``, ``\\text{…}`` wrappers, degrees, the unicode minus, trailing unit words
    (``5 dollars``, ``12\\text{ cm}``), a trailing period, ``3/4`` and ``\\frac{3}{4}`` / ``\\dfrac34``.
    """
    if s is None:
        return None
    t = str(s).strip().replace("{,}", ",")
    t = _TEXT_WRAP_RE.sub(r" \1 ", t)  # spaces keep a wrapped unit a separate word: 12\text{cm}
    for mark in ("\\!", "\\,", "\\$", "$", "\\%", "%", "^{\\circ}", "^\\circ"):
        t = t.replace(mark, "")
    t = t.replace("−", "-").replace("~", " ").replace("\\ ", " ")
    t = t.strip().lstrip("=").strip().rstrip(".").strip()
    m = _UNIT_TAIL_RE.fullmatch(t)
    if m:
        t = m.group(1)
    if re.fullmatch(r"[-+]?\d{1,3}(,\d{3})+(\.\d*)?", t):
        t = t.replace(",", "")
    try:
        if _NUM_RE.fullmatch(t):
            return Fraction(t)
        if m := _SLASH_RE.fullmatch(t):
            return Fraction(int(m.group(1)), int(m.group(2)))
        if m := _FRAC_RE.fullmatch(t):
            num = Fraction(m.group(2) or m.group(3))
            return (-num if m.group(1) == "-" else num) / int(m.group(4) or m.group(5))
    except ZeroDivisionError:
        return None
    return None


def normalize_math_string(s: str) -> str:
    """MATH-style string normalisation (Hendrycks ``strip_string``-like) for the last-resort match."""
    t = s.strip()
    t = t.replace("\n", "").replace("\\!", "").replace("\\\\", "\\")
    t = t.replace("tfrac", "frac").replace("dfrac", "frac")
    t = _LEFT_RIGHT_RE.sub("", t)
    t = t.replace("^{\\circ}", "").replace("^\\circ", "").replace("\\$", "").replace("$", "")
    t = t.replace("\\%", "").replace("%", "")
    t = _TEXT_WRAP_RE.sub(r"\1", t)
    t = t.replace(" .", " 0.").replace("{.", "{0.")
    if t.startswith("."):
        t = "0" + t
    if len(t.split("=")) == 2 and len(t.split("=")[0].strip()) <= 2:  # "x = 5" → "5"
        t = t.split("=")[1]
    t = re.sub(r"\s+", "", t).rstrip(".")
    if t == "0.5":
        t = "\\frac{1}{2}"
    return t


def _mv_parse(s: str, timeout: int | None) -> list:
    if "$" in s or "\\boxed" in s or "\\(" in s or "\\[" in s:
        cands = [s]
    else:  # bare LaTeX is only recognised inside math delimiters
        cands = [f"${s}$", s]
    for c in cands:
        try:
            parsed = mv_parse(c, parsing_timeout=timeout)
        except Exception:  # math-verify raises on some malformed LaTeX; treat as unparsable
            parsed = []
        if parsed:
            return parsed
    return []


def _math_verify_equal(pred: str, ref: str) -> bool:
    # math-verify's timeouts use signal.alarm, which only the main thread may set; elsewhere (curation
    # on Prefect threads or Dask workers) it raises, and the answer would silently count as wrong. So
    # other threads verify without math-verify's timeout: every runner gets the same verdict.
    timeout = _MV_TIMEOUT_S if threading.current_thread() is threading.main_thread() else None
    gp, pp = _mv_parse(ref, timeout), _mv_parse(pred, timeout)
    if not (gp and pp):
        return False
    try:
        return bool(mv_verify(gp, pp, timeout_seconds=timeout))
    except Exception:  # verification errors count as "not shown equal"
        log.debug("math-verify failed on %r vs %r", pred, ref)
        return False


def is_equivalent(prediction: str | int | float | None, gold: str | int | float | None) -> bool:
    """Whether an extracted answer matches the reference (exact numbers → symbolic → normalised string)."""
    if prediction is None or gold is None:
        return False
    pred, ref = str(prediction).strip(), str(gold).strip()
    if not pred or not ref:
        return False
    a, b = parse_number(pred), parse_number(ref)
    if a is not None and b is not None:
        return a == b
    return _math_verify_equal(pred, ref) or normalize_math_string(pred) == normalize_math_string(ref)


def lm_eval_exact_match(prediction: str | None, gold: str | int | float | None) -> bool:
    """lm-eval-harness gsm8k ``exact_match``: ``regexes_to_ignore`` on both sides, ``ignore_case``, ``==``."""
    if prediction is None or gold is None:
        return False
    return _gsm8k_clean(str(prediction)).lower() == _gsm8k_clean(str(gold)).lower()
