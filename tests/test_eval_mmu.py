"""QA normalised match and POPE metrics against hand counts."""

from __future__ import annotations

import pytest
import torch

from mmada.diffusion.settings import SamplerSettings
from mmada.errors import MMaDAError
from mmada.eval import normalize_answer, pope_evaluate, pope_metrics, qa_accuracy
from mmada.eval.mmu import pope_label
from mmada.eval.runners import PaletteCodec, evaluate_qa, load_records, shapes_vqa_items
from mmada.inference import load_checkpoint
from mmada.models import MMaDAConfig, MMaDAModelLM
from mmada.tokenization import load_text_tokenizer
from mmada.tokenization.text import split_think


def test_normalize_answer():
    assert normalize_answer("The Red circle.") == "red circle"
    assert normalize_answer("Three!") == "3"
    assert normalize_answer(None) == ""


def test_qa_accuracy_exact_and_contains():
    preds = ["Red.", "there are three", "no", "blue"]
    golds = ["red", "3", "No", "green"]
    m = qa_accuracy(preds, golds)
    assert m["exact_match"] == 0.5  # "Red." and "no"
    assert m["contains_match"] == 0.75  # + "there are three" contains 3
    with pytest.raises(MMaDAError, match="lengths must match"):
        qa_accuracy(["a"], ["a", "b"])


@pytest.mark.parametrize(
    ("text", "label"),
    [("Yes, there is a dog.", "yes"), ("No.", "no"), ("There is not a cat", "no"), ("yes", "yes"),
     ("Yes. No wait.", "yes"), ("no, none", "no"), ("", "yes")],
)
def test_pope_label_follows_llava_rule(text, label):
    assert pope_label(text) == label


def test_pope_metrics_against_hand_counts():
    # hand-made confusion: TP=3, FP=1, TN=4, FN=2
    preds = ["yes"] * 3 + ["yes"] + ["no"] * 4 + ["no"] * 2
    gold = ["yes"] * 3 + ["no"] + ["no"] * 4 + ["yes"] * 2
    m = pope_metrics(preds, gold)
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (3, 1, 4, 2)
    assert m["accuracy"] == pytest.approx(7 / 10)
    assert m["precision"] == pytest.approx(3 / 4)
    assert m["recall"] == pytest.approx(3 / 5)
    assert m["f1"] == pytest.approx(2 * (3 / 4) * (3 / 5) / (3 / 4 + 3 / 5))
    assert m["yes_ratio"] == pytest.approx(4 / 10)


def test_pope_no_positive_predictions_gives_zero_precision():
    m = pope_metrics(["no", "no"], ["yes", "no"])
    assert m["precision"] == 0.0 and m["recall"] == 0.0 and m["f1"] == 0.0 and m["accuracy"] == 0.5


def test_pope_evaluate_joins_answers_and_splits():
    qs = [
        {"question_id": 1, "label": "yes", "category": "random"},
        {"question_id": 2, "label": "no", "category": "random"},
        {"question_id": 3, "label": "yes", "category": "adversarial"},
        {"question_id": 4, "label": "no", "category": "adversarial"},
    ]
    ans = [{"question_id": 1, "text": "Yes."}, {"question_id": 2, "text": "No, there is not."},
           {"question_id": 3, "text": "No."}, {"question_id": 4, "text": "Yes"}]
    res = pope_evaluate(qs, ans)
    assert res["splits"]["random"]["accuracy"] == 1.0 and res["splits"]["random"]["f1"] == 1.0
    assert res["splits"]["adversarial"]["accuracy"] == 0.0 and res["splits"]["adversarial"]["f1"] == 0.0
    assert res["mean_f1"] == 0.5 and res["overall"]["accuracy"] == 0.5
    # the same data with predictions inline
    inline = [{**q, "answer": a["text"]} for q, a in zip(qs, ans)]
    assert pope_evaluate(inline)["overall"] == res["overall"]


def test_pope_bad_rows_are_named():
    with pytest.raises(MMaDAError, match=r"question_id=7.*'yes' or 'no'"):
        pope_evaluate([{"question_id": 7, "label": "maybe", "answer": "yes"}])
    with pytest.raises(MMaDAError, match=r"question_id=8.* no answer"):
        pope_evaluate([{"question_id": 8, "label": "yes"}], [{"question_id": 9, "text": "yes"}])


def test_qa_rows_carry_a_verdict_and_the_think_answer_is_scored(tmp_path):
    """Every row has ``correct``; with ``think`` a real (untrained) model is asked after the reasoning
    instruction and the part after ``</think>`` is what is scored (the mmu_correctness rule)."""
    items = [{"id": "a", "question": "What color?", "answer": "red"}, {"id": "b", "question": "How many?",
                                                                       "answer": "2"}]
    rep, rows = evaluate_qa(items, dataset="x", predictions=["Red.", "three"])
    assert [r["correct"] for r in rows] == [True, False] and rep.metrics["exact_match"] == 0.5
    torch.manual_seed(0)
    ckpt = tmp_path / "ckpt"
    MMaDAModelLM(MMaDAConfig.from_preset("tiny", d_model=64, n_layers=2, n_heads=2, n_kv_heads=2,
                                         mlp_hidden_size=128)).save_pretrained(ckpt)
    load_text_tokenizer("builtin").save_pretrained(ckpt)
    lm = load_checkpoint(str(ckpt))
    asked, mmu = [], lm.builder.mmu
    lm.builder.mmu = lambda *a, **k: asked.append(k.get("think")) or mmu(*a, **k)  # what the prompts were built with
    vqa = shapes_vqa_items(load_records("builtin:shapes", n=2, seed=0))
    rep, rows = evaluate_qa(vqa, dataset="builtin:shapes", lm=lm, codec=PaletteCodec(), think=True,
                            sampler=SamplerSettings(steps=4, gen_length=8, block_length=8))
    assert rep.details["think"] is True and len(rows) == len(vqa) and asked and all(asked)
    for r in rows:
        assert r["prediction"] == split_think(r.get("response", r["prediction"]))[1]
        assert r["correct"] == (normalize_answer(r["prediction"]) == normalize_answer(r["answer"]))
