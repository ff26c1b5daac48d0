"""Multimodal-understanding metrics: normalised-match QA accuracy and POPE yes/no metrics.

QA (built-in shapes VQA, digits, any ``question/answer`` set): a prediction is right when its
normalised form equals the normalised gold answer (``exact_match``); ``contains_match`` is the
looser "gold appears as a whole word" rate, reported beside it, never instead of it.

POPE (object-hallucination probing): each prediction is mapped to yes/no with the official LLaVA
``eval_pope.py`` rule (first sentence; "no"/"not"/"No" as a word → no, else yes) and scored with
"yes" as the positive class: accuracy, precision, recall, F1 (the headline), yes-ratio — per split
(``category``: random / popular / adversarial) and averaged over splits.

POPE-format JSONL: questions ``{"question_id", "image", "text", "label": "yes"|"no", "category"?}``;
answers ``{"question_id", "text"}`` (or a single file whose rows carry both ``label`` and ``text``).
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable, Mapping, Sequence

from mmada.errors import MMaDAError

_NUMBER_WORDS = {
    "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
_ARTICLES = {"a", "an", "the"}
_PUNCT = re.compile(f"[{re.escape(string.punctuation)}]")


def normalize_answer(text: str | None) -> str:
    """Lower-case, drop punctuation and articles, number words → digits, collapse spaces."""
    if text is None:
        return ""
    t = _PUNCT.sub(" ", str(text).lower())
    words = [_NUMBER_WORDS.get(w, w) for w in t.split() if w not in _ARTICLES]
    return " ".join(words)


def qa_accuracy(predictions: Sequence[str | None], answers: Sequence[str]) -> dict:
    """``exact_match`` (normalised equality) and ``contains_match`` over paired lists."""
    if len(predictions) != len(answers):
        raise MMaDAError(f"{len(predictions)} predictions for {len(answers)} answers; lengths must match")
    if not answers:
        raise MMaDAError("no QA records to score")
    exact = contains = 0
    for p, a in zip(predictions, answers, strict=True):
        np_, na = normalize_answer(p), normalize_answer(a)
        exact += np_ == na
        contains += bool(na) and re.search(rf"(^| ){re.escape(na)}( |$)", np_) is not None
    n = len(answers)
    return {"exact_match": exact / n, "contains_match": contains / n, "n": n}


# ---------------------------------------------------------------------------------------------
# POPE


def pope_label(text: str | None) -> str:
    """Map a free-form answer to ``"yes"``/``"no"`` with LLaVA's ``eval_pope.py`` rule."""
    t = (text or "").strip()
    if "." in t:
        t = t.split(".")[0]
    words = t.replace(",", "").split(" ")
    return "no" if ("No" in words or "not" in words or "no" in words) else "yes"


def _gold_label(v: str, where: str) -> str:
    lab = str(v).strip().lower()
    if lab not in ("yes", "no"):
        raise MMaDAError(f"{where}: POPE label must be 'yes' or 'no', got {v!r}")
    return lab


def pope_metrics(predictions: Sequence[str], labels: Sequence[str]) -> dict:
    """Accuracy, precision, recall, F1 and yes-ratio with "yes" as positive (inputs are yes/no)."""
    if len(predictions) != len(labels):
        raise MMaDAError(f"{len(predictions)} predictions for {len(labels)} labels; lengths must match")
    if not labels:
        raise MMaDAError("no POPE records to score")
    tp = fp = tn = fn = 0
    for p, g in zip(predictions, labels, strict=True):
        if p == "yes" and g == "yes":
            tp += 1
        elif p == "yes":
            fp += 1
        elif g == "no":
            tn += 1
        else:
            fn += 1
    n = tp + fp + tn + fn
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": (tp + tn) / n,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "yes_ratio": (tp + fp) / n,
        "n": n,
        "tp": tp, "fp": fp, "tn": tn, "fn": fn,
    }


def pope_evaluate(questions: Iterable[Mapping], answers: Iterable[Mapping] | None = None) -> dict:
    """POPE metrics overall, per ``category`` split, and F1/accuracy averaged over splits.

    ``questions`` rows need ``question_id`` and ``label``; answers come from ``answers`` (joined on
    ``question_id``) or, when ``answers`` is None, from each question row's ``text``-like field
    ``prediction``/``answer``.
    """
    qs = list(questions)
    if answers is not None:
        by_id: dict = {}
        for i, a in enumerate(answers):
            if "question_id" not in a:
                raise MMaDAError(f"answer row {i} has no 'question_id'")
            by_id[a["question_id"]] = a.get("text", a.get("answer", a.get("prediction")))
    preds, labels, cats = [], [], []
    for i, q in enumerate(qs):
        where = f"POPE row {i} (question_id={q.get('question_id', '?')!r})"
        if "label" not in q:
            raise MMaDAError(f"{where} has no 'label'")
        if answers is not None:
            if q.get("question_id") not in by_id:
                raise MMaDAError(f"{where} has no answer in the answers file")
            pred = by_id[q["question_id"]]
        else:
            pred = q.get("prediction", q.get("answer"))
            if pred is None:
                raise MMaDAError(f"{where} has no 'prediction'/'answer' field")
        preds.append(pope_label(pred))
        labels.append(_gold_label(q["label"], where))
        cats.append(str(q.get("category", "all")))
    out = {"overall": pope_metrics(preds, labels), "splits": {}}
    for c in sorted(set(cats)):
        idx = [i for i, x in enumerate(cats) if x == c]
        out["splits"][c] = pope_metrics([preds[i] for i in idx], [labels[i] for i in idx])
    splits = out["splits"].values()
    out["mean_f1"] = sum(s["f1"] for s in splits) / len(out["splits"])
    out["mean_accuracy"] = sum(s["accuracy"] for s in splits) / len(out["splits"])
    return out
