"""The one answer verifier (``mmada.data.answers``): extraction protocols, final answers of traces,
equivalence against tables of tricky answers, and the same verdicts from curation, reward and evaluation."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction

import pytest

from mmada.data.answers import (
    all_boxed,
    computed_answer,
    final_answer,
    last_boxed,
    lm_eval_exact_match,
    parse_number,
    split_gsm8k,
    strip_calculator_annotations,
    trace_computes,
)
from mmada.errors import MMaDAError
from mmada.eval import PROTOCOLS, extract_answer, gold_answer, is_equivalent
from mmada.eval.runners import math_accuracy, score_response
from mmada.rl.rewards import math_correctness
from tests.test_data_readers import run, write_jsonl

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
    # the cases curation's answers_equal was tested with (exact numbers, LaTeX fractions, symbolic)
    ("72", "72.0", True),
    ("\\dfrac{1}{2}", "\\frac12", True),
    ("$5$", "5", True),
    ("-2", "2", False),
    ("x^2+1", "1+x^{2}", True),
    ("\\sqrt{2}", "2", False),
    ("50\\%", "50", True),
    # exact rationals: a fraction and its decimal are equal, a rounding of it or a near number is not
    ("1/2", "\\dfrac12", True),
    ("-\\frac{1}{2}", "-0.5", True),
    ("1\\,000", "1{,}000", True),
    ("12\\text{ cm}", "12", True),
    ("0.333333", "1/3", False),
    ("1000001", "1000000", False),
    ("2x", "2", False),  # a glued letter is a variable, not a unit
]


@pytest.mark.parametrize(("pred", "gold", "equal"), EQUIVALENCE)
def test_equivalence_table(pred, gold, equal):
    assert is_equivalent(pred, gold) is equal


def test_symbolic_verdicts_do_not_depend_on_the_thread():
    # curation runs on Prefect threads and Dask workers, where math-verify's signal timeouts cannot be set
    with ThreadPoolExecutor(1) as pool:
        in_thread = list(pool.map(lambda p: is_equivalent(*p), [("(x+1)^2", "x^2+2x+1"), ("x^2+2x+2", "(x+1)^2")]))
    assert in_thread == [True, False]


def test_parse_number_handles_decorations():
    assert parse_number("\\text{1{,}234}") == 1234
    assert parse_number("= 3.5") == 3.5
    assert parse_number("3/4") == parse_number("\\dfrac34") == parse_number("0.75") == Fraction(3, 4)
    assert parse_number("-\\frac{1}{2}") == parse_number("\\frac{-1}{2}") == Fraction(-1, 2)
    assert parse_number("abc") is None and parse_number("1/0") is None
    assert parse_number("1e999999999") is None  # no billion-digit integers from a model's output


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


def test_trace_pieces():
    assert strip_calculator_annotations("48/2 = <<48/2=24>>24 clips") == "48/2 = 24 clips"
    assert split_gsm8k("a\nb\n#### 1,234") == ("a\nb", "1,234")
    assert split_gsm8k("no final line") is None and split_gsm8k("x ####  ") is None
    assert last_boxed("so $\\boxed{\\frac{1}{\\sqrt{2}}}$ and \\boxed{3}") == "3"
    assert last_boxed("x = \\boxed{\\frac{1}{\\sqrt{2}}}.") == "\\frac{1}{\\sqrt{2}}"
    assert last_boxed("\\boxed{unbalanced") is None and last_boxed("none") is None


# (free-form trace or completion, its final answer)
FINAL = [
    ("It is 5 apples, then 7.", "7"),
    ("text\n#### 42", "42"),
    ("no numbers", None),
    ("", None),
    ("<think>3 + 5 = 8.</think> The answer is 8.", "8"),
    ("<think>3 + 5 = 8.</think>", "8"),  # nothing after the reasoning: the reasoning is all there is
    ("<think>maybe \\boxed{3}</think> so 8", "8"),  # boxes inside the reasoning are not the answer
    ("<answer>1/2</answer>", "1/2"),
    ("<answer>The answer is \\boxed{2}</answer> \\boxed{9}", "2"),
    ("First \\boxed{2}, then \\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
    ("#### 7\nthen later #### 8\nQuestion: 9", "8"),
    ("It costs $1,234.50.", "1,234.50"),
    ("so 48/2 = 24, i.e. 3/4", "3/4"),
    ("it fell to −7", "−7"),
]


@pytest.mark.parametrize(("text", "expected"), FINAL)
def test_final_answer_table(text, expected):
    assert final_answer(text) == expected


# (worked solution, gold, what it computes, does it compute the gold?)
COMPUTED = [
    ("so she pays 3 * 4 = <<3*4=12>>12 dollars for her 5 pens.", "12", "12", True),
    ("so she pays 3 * 4 = <<3*4=12>>12 dollars for her 5 pens.", "5", "12", False),
    ("so she pays 3 * 4 = 12 dollars for her 5 pens.", "12", "12", True),  # annotations stripped
    ("Natalia sold <<48/2=24>>24 clips in May.", "24", "24", True),  # an annotation without a written '='
    ("He earns 40 * 30 = $<<40*30=1200>>1,200 in 30 days.", "1,200", "1,200", True),
    ("7 - 6 = 1. 1 + 1 = 2. 2 - 1 = 1.", "1", "1", True),  # builtin:arithmetic traces
    ("7 - 6 = 1. 1 + 1 = 2. 2 - 1 = 1.", "2", "1", False),
    ("Tom has 3+4=<<3+4=7>>7.\nJerry has 7*2=<<7*2=14>>14.\nSo Tom has 7 apples.", "7", "14", True),
    ("She gave 10-4 = <<10-4=6>>6 away, keeping 4 apples.", "4", "6", False),  # 4 is no computed result
    ("100/12 = <<100/12=8.33>>8.33, so 8 full boxes.", "8", "8.33", True),
    ("100/12 = <<100/12=8.33>>8.33, so 8 full boxes.", "7", "8.33", False),
    ("3 + 4 = 7, so the answer is 12.", "12", "12", True),  # a stated result decides
    ("3 + 4 = 7, so the answer is 12.", "7", "12", False),
    ("It is 5 + 2 = 7 in all. \\boxed{7}", "7", "7", True),
    ("<think>2 + 2 = 4</think> The answer is \\boxed{5}.", "4", "5", False),
    ("She has 5 apples.", "5", "5", True),  # nothing calculated: the last number
    ("no numbers", "5", None, False),
]


@pytest.mark.parametrize(("trace", "gold", "computed", "ok"), COMPUTED)
def test_what_a_worked_solution_computes(trace, gold, computed, ok):
    assert computed_answer(trace) == computed
    assert trace_computes(trace, gold) is ok


# (response, gold, the evaluation protocol that reads this response format, correct?)
SAME_VERDICT = [
    ("<think>3 + 4 = 7.</think> The answer is \\boxed{7}.", "7", "boxed", True),
    ("<think>3 + 4 = 7.</think> The answer is \\boxed{8}.", "7", "boxed", False),
    ("So the answer is \\boxed{0.5}", "\\frac{1}{2}", "boxed", True),
    ("\\boxed{\\dfrac{3}{4}}", "0.75", "boxed", True),
    ("\\boxed{0.333}", "\\frac{1}{3}", "boxed", False),
    ("\\boxed{1{,}000}", "1000", "boxed", True),
    ("\\boxed{12\\text{ cm}}", "12", "boxed", True),
    ("\\boxed{-3}", "3", "boxed", False),
    ("\\boxed{\\frac{\\sqrt{2}}{2}}", "\\frac{1}{\\sqrt{2}}", "boxed", True),
    ("The total is 1,000 + 234.\n#### 1,234", "1234", "gsm8k_strict", True),
    ("The total is 1,000 + 243.\n#### 1,243", "1234", "gsm8k_strict", False),
    ("She pays $18.50 in total.", "18.5", "gsm8k_flexible", True),
    ("<answer>\\boxed{(x+1)^2}</answer>", "x^2+2x+1", "answer_tag", True),
    ("<answer>x^2+2x+2</answer>", "(x+1)^2", "answer_tag", False),
    ("I am not sure.", "4", "boxed", False),
]


def test_curation_reward_and_evaluation_give_the_same_verdicts(tmp_path):
    """The same (response, gold) pairs through the three real paths: a curation run with
    ``filters.verify_answer`` (kept or rejected), the ``math_correctness`` reward and evaluation scoring."""
    rows = [{"id": f"r{i}", "question": f"Question {i}?", "thinking": "work", "answer": resp, "gold": gold}
            for i, (resp, gold, _, _) in enumerate(SAME_VERDICT)]
    f = write_jsonl(tmp_path / "pairs.jsonl", rows)
    _, samples, quarantine = run(tmp_path, "reasoning", [{"name": "p", "type": "reasoning", "uri": str(f)}],
                                 filters={"verify_answer": True, "exact_dedup": False})
    kept = {s["json"].question for s in samples.values()}
    assert {q["reason"] for q in quarantine} <= {"answer_mismatch", "no_final_answer"}
    assert len(kept) + len(quarantine) == len(rows)
    curation = [r["question"] in kept for r in rows]
    reward = math_correctness(None, [r for r, *_ in SAME_VERDICT], answer=[g for _, g, *_ in SAME_VERDICT])
    evaluation = [score_response(r, g, p, match="equivalent")["correct"] for r, g, p, _ in SAME_VERDICT]
    expected = [e for *_, e in SAME_VERDICT]
    assert curation == expected
    assert [v == 1.0 for v in reward] == expected
    assert evaluation == expected


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
