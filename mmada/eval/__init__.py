"""Evaluation: math answer protocols, understanding (QA, POPE), generation (shapes GenEval-like
checker, class accuracy, CLIP score), the ELBO likelihood, reports and the lm-eval adapter.

    from mmada.eval import extract_answer, is_equivalent, score_shapes_image
    extract_answer("… #### 72", "gsm8k_strict")       # '72'
    is_equivalent("0.5", "\\frac{1}{2}")              # True
    score_shapes_image(image, "two red circles")      # {'correct': …, 'criteria': …, …}

Heavier pieces are imported from their modules: ``mmada.eval.elbo``, ``mmada.eval.classifier``,
``mmada.eval.clip_score``, ``mmada.eval.report``, ``mmada.eval.runners``, ``mmada.eval.harness``
(importing the last one registers ``--model mmada`` with lm-evaluation-harness).
Math answers are extracted and compared by :mod:`mmada.data.answers` (re-exported here), the verifier
curation and the UniGRPO reward use too; accuracy over records is ``mmada.eval.runners.math_accuracy``.
CLI: ``mmada eval --help``.
"""

from mmada.data.answers import PROTOCOLS, extract_answer, gold_answer, is_equivalent
from mmada.eval.mmu import normalize_answer, pope_evaluate, pope_metrics, qa_accuracy
from mmada.eval.shapes_checker import (
    CheckerConfig,
    detect_objects,
    geneval_summary,
    parse_caption,
    score_shapes_image,
    score_shapes_set,
)

__all__ = [
    "PROTOCOLS",
    "CheckerConfig",
    "detect_objects",
    "extract_answer",
    "geneval_summary",
    "gold_answer",
    "is_equivalent",
    "normalize_answer",
    "parse_caption",
    "pope_evaluate",
    "pope_metrics",
    "qa_accuracy",
    "score_shapes_image",
    "score_shapes_set",
]
