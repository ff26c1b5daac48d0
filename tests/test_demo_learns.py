"""A shortened demo that must still learn: the accuracy floor of the tiny pipeline, in CI time.

The demo's value is a model that has visibly learned. A change to the built-in world, curation, layouts,
the masked-diffusion loss, the optimiser, bf16 autocast, the sampler or the evaluation can silently turn
that into a model that learns nothing while every unit test passes. This curates the demo's arithmetic
(one-step problems, as ``params.yaml`` does), trains the demo's model (the ``tiny`` preset at the demo's
width) from scratch on it through ``mmada.training.train``, then asks held-out problems through the math
suite the pipeline's ``evaluate`` stage runs, with its sampler settings.

The floor is what no model blind to the question can reach: the best a blind model can do is always give
the most frequent gold answer of these very items (computed from them, not assumed), and an untrained model
is scored too, on the same items. The trained model must beat that share with an exact one-sided binomial
p-value below 1e-3 and by five points (one run of 500 steps: 49/200 = 24.5% against a blind 17%,
p = 0.004; 600 steps and 400 items are what makes that margin significant).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import pytest
import torch

from mmada.data.curate import curate
from mmada.data.specs import load_spec
from mmada.eval.suites import EvalModel, EvalOutputs, math_suite
from mmada.models import MMaDAConfig, MMaDAModelLM
from mmada.pipeline.params import TINY_DEMO_MODEL, EvalParams, load_params
from mmada.tokenization import load_text_tokenizer
from mmada.training import load_train_config, train
from tests.test_training_support import fresh_mlflow_uri, one_thread

REPO = Path(__file__).resolve().parents[1]
STEPS = 600
N = 400
MARGIN = 0.05  # above the blind share, besides the significance test

_one_thread = pytest.fixture(autouse=True, scope="module")(one_thread)


def binomial_tail(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p), exactly."""
    return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1))


def test_binomial_tail_matches_hand_values():
    assert binomial_tail(0, 5, 0.3) == pytest.approx(1.0)
    assert binomial_tail(5, 5, 0.5) == pytest.approx(1 / 32)
    assert binomial_tail(2, 3, 0.5) == pytest.approx(4 / 8)


def scored(samples: Path) -> list[dict]:
    return [json.loads(line) for line in samples.read_text().splitlines()]


def test_a_shortened_demo_learns_arithmetic_above_a_blind_floor(tmp_path_factory, tmp_path):
    demo_params = load_params(REPO / "params.yaml", REPO)  # the demo's own arithmetic spec, as its stage runs it
    spec = load_spec(demo_params.curate.arithmetic, ["tokenizer=builtin"])
    curate(spec, out=str(tmp_path / "arith"))
    # A tight text budget: the longest row (~58 tokens) and an EOS-filled answer region as long as the
    # sampler's gen_length below (the model learns the answer region's length; a longer region at evaluation
    # than in training makes it write past its answer).
    cfg = load_train_config({
        "name": "floor", "stage": "sft", "seed": 0, "output_dir": str(tmp_path / "run"),
        "model": {"preset": "tiny", "tokenizer": "builtin", "overrides": TINY_DEMO_MODEL},
        "data": {"streams": {"chat": {"manifests": [str(tmp_path / "arith")], "batch_size": 32, "max_text_len": 64}},
                 "val_batches": 1},
        "loss": {"coeffs": {"chat": 1.0}},
        "optim": {"lr": 2e-3, "warmup_steps": 20, "min_lr_scale": 0.1},
        "trainer": {"accelerator": "cpu", "precision": "bf16-mixed", "max_steps": STEPS, "log_every_n_steps": 50,
                    "val_every_n_steps": STEPS},
        "checkpoint": {"every_n_steps": STEPS},
        "samples": {"every_n_steps": 0},
        "tracking": {"uri": fresh_mlflow_uri(tmp_path_factory, tmp_path), "log_system_metrics": False,
                     "registered_model": "mmada-floor"},
    })
    torch.manual_seed(0)
    result = train(cfg)
    assert result.global_step == STEPS and result.export_dir is not None

    untrained = tmp_path / "untrained"
    torch.manual_seed(0)
    MMaDAModelLM(MMaDAConfig.from_preset("tiny", **TINY_DEMO_MODEL)).save_pretrained(untrained)
    load_text_tokenizer("builtin").save_pretrained(untrained)
    demo = EvalParams()  # the evaluate stage's defaults: seed, difficulty, prompt, protocol
    sampler = demo.sampler.model_copy(update={"steps": 32, "gen_length": 32, "block_length": 32})
    rows = {}
    for name, ckpt in (("trained", result.export_dir), ("untrained", untrained)):
        out = EvalOutputs(report=tmp_path / f"{name}.json", samples=tmp_path / f"{name}.jsonl")
        math_suite("builtin:arithmetic", protocol=demo.math_protocol, model=EvalModel(checkpoint=str(ckpt), batch_size=50),
                   sampler=sampler, out=out, n=N, data_seed=demo.data_seed, think=True,
                   prompt_template="{question}", difficulty=demo.math_difficulty, exclude_data=[str(tmp_path / "arith")])
        rows[name] = scored(out.samples)
    trained, untrained_rows = rows["trained"], rows["untrained"]
    assert len(trained) == N and [r["id"] for r in trained] == [r["id"] for r in untrained_rows]
    blind = Counter(r["gold"] for r in trained).most_common(1)[0][1] / N  # always the most frequent answer
    k = sum(r["correct"] for r in trained)
    untrained_acc = sum(r["correct"] for r in untrained_rows) / N
    assert untrained_acc <= blind, f"an untrained model answered {untrained_acc:.0%}: the floor means nothing"
    p = binomial_tail(k, N, blind)
    assert k / N >= blind + MARGIN and p < 1e-3, (
        f"after {STEPS} steps {k}/{N} held-out one-step problems are right; a model blind to the question gets "
        f"{blind:.0%} (p = {p:.2g}): the demo's model no longer learns arithmetic")
