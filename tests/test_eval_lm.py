"""ELBO estimator, the lm-eval adapter and model-driven evaluation on a tiny overfit checkpoint.

The module fixture trains a 2-layer model (d_model 64) for a few hundred steps on six fixed
question/answer pairs with the LLaDA SFT objective (masked answer tokens, 1/p weighting, EOS fill)
and saves it with the built-in tokenizer — a real checkpoint directory, made in a few seconds.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import textwrap

import pytest
import torch

from mmada.diffusion import SamplerSettings, generate_text
from mmada.eval.elbo import elbo_loglikelihood, greedy_matches, stratified_mask_counts
from mmada.models import MMaDAConfig, MMaDAModelLM
from mmada.tokenization import SpecialTokenIds, load_text_tokenizer

PAIRS = [
    ("Q: 3 + 4 =", " 7 apples"),
    ("Q: 5 + 5 =", " 10 pens"),
    ("Q: 9 - 2 =", " 7 coins"),
    ("Q: 2 * 6 =", " 12 books"),
    ("Q: 8 - 5 =", " 3 cards"),
    ("Q: 1 + 1 =", " 2 shells"),
]
FILL = 6  # answers are followed by 0..FILL EOS tokens in training (as in SFT's EOS fill)


def tiny_config() -> MMaDAConfig:
    return MMaDAConfig.from_preset("tiny", d_model=64, n_layers=2, n_heads=2, n_kv_heads=2, mlp_hidden_size=128)


def encode_pair(tok, ctx: str, cont: str) -> tuple[list[int], list[int]]:
    """As lm-eval's ``TemplateLM._encode_pair``: encode the whole, split at the context length."""
    whole = tok.encode(ctx + cont, add_special_tokens=False)
    c = tok.encode(ctx, add_special_tokens=False)
    return c, whole[len(c) :]


def train_overfit(steps: int = 400, seed: int = 0) -> tuple[MMaDAModelLM, object, SpecialTokenIds]:
    tok = load_text_tokenizer("builtin")
    sp = SpecialTokenIds.from_tokenizer(tok)
    rows = []
    for q, a in PAIRS:
        c, ans = encode_pair(tok, q, a)
        rows.append(([sp.bos, *c], ans))
    torch.manual_seed(seed)
    model = MMaDAModelLM(tiny_config())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)  # 3e-3 overshoots with single-digit tokens
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        fill = int(torch.randint(0, FILL + 1, (1,), generator=g))
        seqs = [p + a + [sp.eos] * fill for p, a in rows]
        L = max(map(len, seqs))
        ids = torch.full((len(seqs), L), sp.eos)
        attn = torch.zeros((len(seqs), L), dtype=torch.bool)
        target = torch.zeros((len(seqs), L), dtype=torch.bool)
        for i, (s, (p, _)) in enumerate(zip(seqs, rows)):
            ids[i, : len(s)] = torch.tensor(s)
            attn[i, : len(s)] = True
            target[i, len(p) : len(s)] = True
        t = torch.rand((len(seqs), 1), generator=g) * (1 - 1e-3) + 1e-3  # (B, 1) mask ratio
        m = (torch.rand(ids.shape, generator=g) < t) & target
        logits = model(torch.where(m, sp.mask, ids), attention_mask=attn).logits
        ce = torch.nn.functional.cross_entropy(logits[m], ids[m], reduction="none")
        loss = (ce / t.expand_as(ids)[m]).sum() / target.sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), tok, sp


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models run fastest on one thread (and a shared 2-core CI box contends for the second)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def overfit(tmp_path_factory, _one_thread):
    model, tok, sp = train_overfit()
    ckpt = tmp_path_factory.mktemp("overfit_ckpt")
    model.save_pretrained(ckpt)
    tok.save_pretrained(ckpt)
    return model, tok, sp, ckpt


@pytest.fixture(scope="module")
def random_model():
    torch.manual_seed(0)
    return MMaDAModelLM(tiny_config()).eval()


# ---------------------------------------------------------------------------------------------
# ELBO


def test_stratified_mask_counts_match_llada_formula():
    # k=3, T=8, b=4: linspace(3, 3 + 3*2, 4) = [3, 5, 7, 9] → wrapped ((n-1) % 8) + 1 = [3, 5, 7, 1]
    assert stratified_mask_counts(3, 8, 4).tolist() == [3, 5, 7, 1]
    # every count stays within 1..T
    for k in range(1, 6):
        c = stratified_mask_counts(k, 5, 8)
        assert c.min() >= 1 and c.max() <= 5


def test_elbo_is_batch_invariant_and_reproducible(random_model):
    P = [[0, 5, 6, 7], [0, 9, 10], [0, 11, 12, 13, 14, 15]]
    A = [[20, 21], [22, 23, 24, 25], [26]]
    batched = elbo_loglikelihood(random_model, P, A, mc_num=16, mc_batch_size=8, batch_size=16)
    single = torch.cat([elbo_loglikelihood(random_model, [p], [a], mc_num=16, mc_batch_size=8, batch_size=5)
                        for p, a in zip(P, A)])
    torch.testing.assert_close(batched, single, rtol=1e-5, atol=1e-5)
    again = elbo_loglikelihood(random_model, P, A, mc_num=16, mc_batch_size=8, batch_size=16)
    assert torch.equal(batched, again)
    assert (batched < 0).all()


def test_elbo_matches_brute_force_single_token_answer(random_model):
    # T = 1: every row masks the one answer token with p = 1, so the ELBO is exactly log p(a | prompt).
    p, a = [0, 5, 6, 7], [21]
    est = float(elbo_loglikelihood(random_model, [p], [a], mc_num=4, mc_batch_size=2))
    ids = torch.tensor([[*p, random_model.config.mask_token_id]])
    with torch.no_grad():
        ref = torch.log_softmax(random_model(ids).logits[0, -1].double(), -1)[21]
    assert est == pytest.approx(float(ref), rel=1e-5)


def test_elbo_variance_falls_with_more_samples(random_model):
    P, A = [[0, 9, 10]], [[22, 23, 24, 25, 26, 27]]

    def var(mc: int) -> float:
        return statistics.variance(
            float(elbo_loglikelihood(random_model, P, A, mc_num=mc, mc_batch_size=4, seed=s)) for s in range(16)
        )

    v4, v64 = var(4), var(64)
    assert v64 < v4 / 4, (v4, v64)  # 1/mc scaling predicts a 16x drop


def test_elbo_rejects_bad_arguments(random_model):
    from mmada.errors import MMaDAError

    with pytest.raises(MMaDAError, match="multiple of mc_batch_size"):
        elbo_loglikelihood(random_model, [[0]], [[5]], mc_num=10, mc_batch_size=4)
    with pytest.raises(MMaDAError, match="empty answer"):
        elbo_loglikelihood(random_model, [[0]], [[]], mc_num=4, mc_batch_size=4)


def test_elbo_ranks_correct_above_corrupted_on_overfit_model(overfit):
    model, tok, sp, _ = overfit
    prompts, good, bad = [], [], []
    for i, (q, a) in enumerate(PAIRS):
        c, ans = encode_pair(tok, q, a)
        prompts += [[sp.bos, *c]] * 2
        good += [ans, ans]
        _, other = encode_pair(tok, q, PAIRS[(i + 1) % len(PAIRS)][1])  # another pair's answer
        number, noun = a.split()
        _, wrong_noun = encode_pair(tok, q, f" {number} {'stamps' if noun != 'stamps' else 'coins'}")
        bad += [other, wrong_noun]
    ll_good = elbo_loglikelihood(model, prompts, good, mc_num=32, mc_batch_size=8)
    ll_bad = elbo_loglikelihood(model, prompts, bad, mc_num=32, mc_batch_size=8)
    assert (ll_good > ll_bad).all(), (ll_good, ll_bad)
    # greedy diffusion decoding reproduces the memorised answers, not the corrupted ones
    assert sum(greedy_matches(model, prompts[::2], good[::2])) >= len(PAIRS) - 1
    assert not any(greedy_matches(model, prompts, bad))


# ---------------------------------------------------------------------------------------------
# lm-eval adapter


def _instances(kind: str, args: list[tuple]):
    from lm_eval.api.instance import Instance

    return [Instance(request_type=kind, doc={}, arguments=a, idx=i) for i, a in enumerate(args)]


@pytest.fixture(scope="module")
def harness_lm(overfit):
    from mmada.eval.harness import MMaDALM

    return MMaDALM(pretrained=str(overfit[3]), device="cpu", batch_size=4, steps=8, gen_length=8, block_length=8,
                   mc_num=16, mc_batch_size=8)


def test_harness_generate_until_batches_and_applies_stops(overfit, harness_lm):
    model, tok, sp, _ = overfit
    reqs = _instances("generate_until", [(q, {"until": ["\n"]}) for q, _ in PAIRS])
    out = harness_lm.generate_until(reqs, disable_tqdm=True)
    # independent path: one prompt at a time straight through the sampler
    for (q, _), text in zip(PAIRS, out):
        ids = torch.tensor([[sp.bos, *tok.encode(q, add_special_tokens=False)]])
        greedy = SamplerSettings(steps=8, gen_length=8, block_length=8)
        gen = generate_text(model, ids, greedy, mask_id=sp.mask)[0, ids.shape[1]:]
        toks = gen.tolist()
        toks = toks[: toks.index(sp.eos)] if sp.eos in toks else toks
        assert text == tok.decode(toks, skip_special_tokens=True)
    assert sum(t.strip() == a.strip() for t, (_, a) in zip(out, PAIRS)) >= len(PAIRS) - 1
    cut = harness_lm.generate_until(_instances("generate_until", [(PAIRS[0][0], {"until": ["apple"]})]),
                                    disable_tqdm=True)
    assert cut == [out[0].split("apple")[0]] and "apple" in out[0]


def test_harness_loglikelihood_uses_elbo(overfit, harness_lm):
    model, tok, sp, _ = overfit
    reqs = _instances("loglikelihood", [(q, a) for q, a in PAIRS[:3]])
    res = harness_lm.loglikelihood(reqs, disable_tqdm=True)
    assert len(res) == 3 and all(isinstance(v, float) and isinstance(g, bool) for v, g in res)
    c, ans = encode_pair(tok, *PAIRS[1])
    direct = elbo_loglikelihood(model, [[sp.bos, *c]], [ans], mc_num=16, mc_batch_size=8, pad_id=sp.eos)
    assert res[1][0] == pytest.approx(float(direct), rel=1e-6)
    assert res[0][1] is True  # memorised answer = greedy decode


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("lm_eval_tasks")
    gen_rows = [{"question": q, "answer": a.strip()} for q, a in PAIRS]
    mc_rows = [
        {"question": q, "choices": [a.strip(), PAIRS[(i + 1) % len(PAIRS)][1].strip()], "label": 0}
        for i, (q, a) in enumerate(PAIRS)
    ]
    (d / "gen.jsonl").write_text("".join(json.dumps(r) + "\n" for r in gen_rows))
    (d / "mc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in mc_rows))
    (d / "mmada_toy_gen.yaml").write_text(textwrap.dedent(f"""\
        task: mmada_toy_gen
        dataset_path: json
        dataset_kwargs:
          data_files:
            test: {d / 'gen.jsonl'}
        test_split: test
        output_type: generate_until
        doc_to_text: "{{{{question}}}}"
        doc_to_target: "{{{{answer}}}}"
        generation_kwargs:
          until: ["\\n"]
        metric_list:
          - metric: exact_match
            aggregation: mean
            higher_is_better: true
            regexes_to_ignore: [" "]
        """))
    (d / "mmada_toy_mc.yaml").write_text(textwrap.dedent(f"""\
        task: mmada_toy_mc
        dataset_path: json
        dataset_kwargs:
          data_files:
            test: {d / 'mc.jsonl'}
        test_split: test
        output_type: multiple_choice
        doc_to_text: "{{{{question}}}}"
        doc_to_choice: "{{{{choices}}}}"
        doc_to_target: "{{{{label}}}}"
        metric_list:
          - metric: acc
            aggregation: mean
            higher_is_better: true
        """))
    return d


def test_lm_eval_simple_evaluate_offline_local_tasks(overfit, task_dir, monkeypatch):
    import lm_eval
    from lm_eval.tasks import TaskManager

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    import mmada.eval.harness  # noqa: F401  (registers --model mmada)

    res = lm_eval.simple_evaluate(
        model="mmada",
        model_args=f"pretrained={overfit[3]},steps=8,gen_length=8,block_length=8,mc_num=16,mc_batch_size=8",
        tasks=["mmada_toy_gen", "mmada_toy_mc"], batch_size=3, device="cpu",
        task_manager=TaskManager(include_path=str(task_dir), include_defaults=False),
    )
    r = res["results"]
    assert r["mmada_toy_mc"]["acc,none"] == 1.0
    assert r["mmada_toy_gen"]["exact_match,none"] >= 5 / 6
    assert "steps=8" in res["config"]["model_args"]


def test_lm_eval_cli_wrapper_runs(overfit, task_dir, tmp_path):
    env = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "mmada.eval.harness", "--model", "mmada", "--model_args",
           f"pretrained={overfit[3]},steps=8,gen_length=8,block_length=8,mc_num=8,mc_batch_size=8",
           "--tasks", "mmada_toy_mc", "--include_path", str(task_dir), "--batch_size", "2", "--device", "cpu",
           "--output_path", str(tmp_path / "out")]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "mmada_toy_mc" in p.stdout and "acc" in p.stdout
    assert list((tmp_path / "out").rglob("results_*.json"))


def test_harness_rejects_unknown_model_args(overfit):
    from mmada.errors import MMaDAError
    from mmada.eval.harness import MMaDALM

    with pytest.raises(MMaDAError, match="bogus"):
        MMaDALM.create_from_arg_string(f"pretrained={overfit[3]},bogus=1")
    with pytest.raises(MMaDAError, match="block_length"):
        MMaDALM(pretrained=str(overfit[3]), gen_length=10, block_length=4)
    # every sampler option is a model argument (lm-eval passes strings) and reaches the sampler settings
    lm = MMaDALM.create_from_arg_string(f"pretrained={overfit[3]},steps=8,gen_length=8,block_length=8,cache=prefix,"
                                        "threshold=0.9,stop_at_eos=true,seed=3")
    assert lm.sampler == SamplerSettings(steps=8, gen_length=8, block_length=8, cache="prefix", threshold=0.9,
                                         stop_at_eos=True, seed=3)


# ---------------------------------------------------------------------------------------------
# model-driven runners


def test_evaluate_math_generates_and_scores(overfit):
    from mmada.eval.report import ModelRef
    from mmada.eval.runners import evaluate_math
    from mmada.inference import load_checkpoint

    lm = load_checkpoint(overfit[3], device="cpu")
    recs = [{"id": i, "question": q, "answer": a.split()[0]} for i, (q, a) in enumerate(PAIRS)]
    sampler = SamplerSettings(steps=8, gen_length=8, block_length=8)
    # The toy model continues "Q: …=" directly; evaluate_math wraps questions as "Question: …\nAnswer:",
    # so its answers are junk — but the run must record everything and score what it produced.
    report, rows = evaluate_math(recs, protocol="gsm8k_flexible", dataset="toy", lm=lm, sampler=sampler,
                                 chat=False, batch_size=4, model_ref=ModelRef.from_path(overfit[3]))
    assert report.n == 6 and report.source == "model" and report.sampler == sampler  # recorded whole
    assert report.model.version.startswith("sha256:")
    assert all("response" in r and "extracted" in r for r in rows)
    assert report.metrics["accuracy"] == sum(r["correct"] for r in rows) / 6


def test_evaluate_math_prompt_template_and_difficulty_breakdown(overfit):
    """Asked the way it was trained ('{question}' bare, no chat), the toy model answers every problem;
    records carrying a difficulty get a per-level accuracy."""
    from mmada.errors import MMaDAError
    from mmada.eval.runners import evaluate_math
    from mmada.inference import load_checkpoint

    lm = load_checkpoint(overfit[3], device="cpu")
    recs = [{"question": q, "answer": a.split()[0], "difficulty": 1 + (i % 2)} for i, (q, a) in enumerate(PAIRS)]
    sampler = SamplerSettings(steps=8, gen_length=8, block_length=8)
    report, rows = evaluate_math(recs, protocol="gsm8k_flexible", dataset="toy", lm=lm, sampler=sampler,
                                 chat=False, prompt_template="{question}", batch_size=6)
    per_level = {k: [r["correct"] for r, rec in zip(rows, recs) if rec["difficulty"] == k] for k in (1, 2)}
    assert report.metrics["accuracy"] == 1.0, [r["response"] for r in rows]
    assert report.metrics["accuracy/difficulty_1"] == sum(per_level[1]) / 3 == 1.0
    assert report.metrics["accuracy/difficulty_2"] == sum(per_level[2]) / 3
    assert report.details["prompt_template"] == "{question}" and report.details["n_per_difficulty"] == {"1": 3, "2": 3}
    assert rows[0]["question"] == PAIRS[0][0]
    # the default lm-eval wrapping changes the prompt the model sees (and so what it answers)
    _, wrapped = evaluate_math(recs[:2], protocol="gsm8k_flexible", dataset="toy", lm=lm, sampler=sampler,
                               chat=False, batch_size=2)
    assert [r["response"] for r in wrapped] != [r["response"] for r in rows[:2]]
    with pytest.raises(MMaDAError, match="placeholder"):
        evaluate_math(recs, protocol="gsm8k_flexible", dataset="toy", lm=lm, prompt_template="Q:")
