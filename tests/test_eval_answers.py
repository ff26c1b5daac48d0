"""Answer extraction protocols and equivalence against a table of tricky responses."""

from __future__ import annotations

import pytest

from mmada.errors import MMaDAError
from mmada.eval import PROTOCOLS, extract_answer, gold_answer, is_equivalent, math_accuracy
from mmada.eval.answers import all_boxed, lm_eval_exact_match, parse_number, score_response

# (response, protocol, expected extraction)
EXTRACTION = [
    # GSM8K strict: the first "#### N"; lm-eval's regexes_to_ignore strip "," "$" and a trailing "."
    ("She pays 3 * 4 = 12.\n#### 12", "gsm8k_strict", "12"),
    ("#### 1,234.", "gsm8k_strict", "1234"),
    ("#### -5\nthen later #### 7", "gsm8k_strict", "-5"),
    ("The answer is 42.", "gsm8k_strict", None),  # strict needs ####
    ("#### $18", "gsm8k_strict", None),  # the strict regex does not allow "$" after "#### "
    # GSM8K flexible: the last number-ish match, first non-empty group
    ("3 apples + 4 apples = 7 apples. The answer is $1,234.", "gsm8k_flexible", "1234"),
    ("It costs $18.50 in total", "gsm8k_flexible", "18.50"),
    ("Temperature drops to -7 degrees", "gsm8k_flexible", "-7"),
    ("He has 5 then 6", "gsm8k_flexible", "6"),
    ("no digits here", "gsm8k_flexible", None),
    # boxed: the last complete \boxed{}, braces matched
    ("First \\boxed{2}, wait, actually \\boxed{\\frac{1}{2}}", "boxed", "\\frac{1}{2}"),
    ("So $\\boxed{x^{2}+1}$.", "boxed", "x^{2}+1"),
    ("\\fbox{17}", "boxed", "17"),
    ("hence \\boxed 5$.", "boxed", "5"),
    ("\\boxed{3} and then \\boxed{\\frac{1}{2}", "boxed", "3"),  # last one is unbalanced → previous
    ("no box", "boxed", None),
    # <answer> tags: last tag; a boxed answer inside wins
    ("<think>7*6</think><answer>42</answer>", "answer_tag", "42"),
    ("<answer>1</answer> retry <answer>The answer is \\boxed{2}</answer>", "answer_tag", "2"),
    ("<ANSWER> 9 </ANSWER>", "answer_tag", "9"),
    ("<answer>unclosed", "answer_tag", None),
    ("", "answer_tag", None),
]


@pytest.mark.parametrize(("response", "protocol", "expected"), EXTRACTION)
def test_extraction_table(response, protocol, expected):
    assert extract_answer(response, protocol) == expected


# (prediction, gold, equivalent?)
EQUIVALENCE = [
    ("1,000", "1000", True),
    ("$1,000.00", "1000", True),
    ("\\$5", "5", True),
    ("5 dollars", "5", True),
    ("12 cm", "12", True),
    ("12.", "12", True),
    ("−7", "-7", True),  # unicode minus
    ("-3", "3", False),
    ("10\\%", "10", True),
    ("0.5", "\\frac{1}{2}", True),
    ("\\dfrac{3}{4}", "0.75", True),
    ("\\frac{\\sqrt{2}}{2}", "\\sqrt{2}/2", True),
    ("(x+1)^2", "x^2+2x+1", True),
    ("x^2+2x+2", "(x+1)^2", False),
    ("\\text{(A)}", "(A)", True),
    ("7", "8", False),
    (None, "5", False),
    ("", "5", False),
]


@pytest.mark.parametrize(("pred", "gold", "equal"), EQUIVALENCE)
def test_equivalence_table(pred, gold, equal):
    assert is_equivalent(pred, gold) is equal


def test_parse_number_handles_decorations():
    assert parse_number("\\text{1{,}234}") == 1234
    assert parse_number("= 3.5") == 3.5
    assert parse_number("3/4") is None  # fractions go to math-verify
    assert parse_number("abc") is None


def test_gold_answers_are_normalised():
    assert gold_answer("Natalia sold 48/2 = <<48/2=24>>24 clips.\n#### 72", "gsm8k_strict") == "72"
    assert gold_answer("so the answer is $\\boxed{\\frac{3}{5}}$", "boxed") == "\\frac{3}{5}"
    assert gold_answer(1234, "gsm8k_flexible") == "1234"


def test_exact_match_is_lm_eval_string_match_not_numeric():
    assert lm_eval_exact_match("1,234", "1234")
    assert not lm_eval_exact_match("1234.0", "1234")  # lm-eval compares strings
    assert score_response("#### 1234.0", "1234", "gsm8k_strict")["correct"] is False
    assert score_response("#### 1234.0", "1234", "gsm8k_strict", match="equivalent")["correct"] is True


def test_all_boxed_lists_every_answer():
    assert all_boxed("a \\boxed{1} b \\boxed{x^{2}} \\fbox{3} \\boxed{") == ["1", "x^{2}", "3"]


def test_math_accuracy_over_records():
    recs = [
        {"id": "a", "response": "so \\boxed{0.5}", "answer": "\\frac{1}{2}"},
        {"id": "b", "response": "\\boxed{3}", "answer": "4"},
        {"id": "c", "response": "I don't know", "answer": "4"},
        {"id": "d", "response": "<answer>\\boxed{2}</answer> \\boxed{x^2}", "answer": "x^{2}"},
    ]
    metrics, rows = math_accuracy(recs, "boxed")
    assert metrics == {"accuracy": 0.5, "no_answer_rate": 0.25, "n": 4}
    assert [r["correct"] for r in rows] == [True, False, False, True]
    assert rows[2]["extracted"] is None


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(MMaDAError, match="unknown answer protocol 'gsm9k'"):
        extract_answer("1", "gsm9k")
    with pytest.raises(MMaDAError, match=r"record 0 .* no field 'response'"):
        math_accuracy([{"answer": "1"}], "boxed")
    with pytest.raises(MMaDAError, match="no records"):
        math_accuracy([], "boxed")
    assert set(PROTOCOLS) == {"gsm8k_strict", "gsm8k_flexible", "boxed", "answer_tag"}
