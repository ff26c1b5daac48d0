"""UniGRPO pieces against hand-computed values, rewards, and a learnable run whose reward rises."""

import math

import pytest
import torch

from mmada.builtin.arithmetic import generate_arithmetic
from mmada.builtin.shapes import generate_shapes, render_scene
from mmada.diffusion.settings import SamplerSettings
from mmada.errors import ConfigError
from mmada.models import MMaDAConfig, MMaDAModelLM
from mmada.rl import (
    GRPOConfig,
    combine_rewards,
    d1_mask,
    group_advantages,
    grpo_loss,
    per_token_logps,
    policy_loss,
    prepare_iterations,
    register_reward,
    resolve_reward,
    reward_metrics,
    rollout_text,
    score_rollout,
    unigrpo_mask,
)
from mmada.rl.rewards import format_reward, math_correctness, mmu_correctness, shapes_t2i
from mmada.tokenization import SequenceBuilder, load_text_tokenizer


def test_group_advantages_hand_values():
    r = torch.tensor([1.0, 0.0, 1.0, 0.0, 2.0, 2.0, 2.0, 2.0])
    a = group_advantages(r, 4)
    s = math.sqrt(1 / 3)  # unbiased std of [1, 0, 1, 0]
    expected = [0.5 / (s + 1e-4), -0.5 / (s + 1e-4)] * 2 + [0.0] * 4
    assert a.advantages.tolist() == pytest.approx(expected, rel=1e-6)
    assert a.frac_reward_zero_std == 0.5 and a.group_mean.tolist() == [0.5, 2.0]
    assert group_advantages(r, 4, scale=False).advantages.tolist()[:4] == [0.5, -0.5, 0.5, -0.5]
    with pytest.raises(ConfigError, match="groups of num_generations=3"):
        group_advantages(r, 3)


def test_grpo_loss_hand_computed():
    logp = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -1.2, -0.7]], requires_grad=True)
    old = torch.tensor([[-1.5, -2.0, -0.1], [-0.3, -0.2, -0.7]])
    ref = torch.tensor([[-1.0, -1.0, -1.0], [-0.5, -0.5, -0.5]])
    adv = torch.tensor([1.0, -2.0])
    masked = torch.tensor([[True, True, False], [True, True, True]])
    eps, beta = 0.2, 0.1
    out = grpo_loss(logp, old, adv, masked, epsilon=eps, beta=beta, ref_logp=ref)
    per = []
    for i in range(2):
        terms = []
        for t in range(3):
            if not masked[i, t]:
                continue
            ratio = math.exp(float(logp.detach()[i, t] - old[i, t]))
            a = float(adv[i])
            surr = min(ratio * a, min(max(ratio, 1 - eps), 1 + eps) * a)
            s = float(ref[i, t] - logp.detach()[i, t])
            terms.append(surr - beta * (math.exp(s) - s - 1))
        per.append(sum(terms) / len(terms))
    assert float(out.loss) == pytest.approx(-sum(per) / 2, rel=1e-6)
    # Tokens clipped: (0,0) ratio e^0.5 > 1.2 with A > 0 -> high; (1,1) ratio e^-1 < 0.8 with A < 0 -> low.
    assert float(out.clip_ratio_high) == pytest.approx(1 / 5) and float(out.clip_ratio_low) == pytest.approx(1 / 5)
    out.loss.backward()
    assert logp.grad[0, 2] == 0  # unmasked tokens get no gradient
    with pytest.raises(ConfigError, match=r"beta=0\.1 > 0 needs reference"):
        grpo_loss(logp, old, adv, masked, beta=0.1)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    tok = load_text_tokenizer("builtin")
    cfg = MMaDAConfig.from_preset("tiny", d_model=64, n_layers=2, n_heads=2, n_kv_heads=2, mlp_hidden_size=128,
                                  codebook_size=0, vocab_size=1024)
    return MMaDAModelLM(cfg), SequenceBuilder(tok)


def test_first_inner_step_ratio_one_kl_zero_and_masks_only_in_completions(tiny):
    model, sb = tiny
    probs = generate_arithmetic(3, seed=0)
    g = torch.Generator().manual_seed(0)
    model.eval()
    cfg = GRPOConfig(num_generations=2, beta=0.05, num_iterations=2, reward_funcs=["format"], reward_weights={},
                     sampler=SamplerSettings(steps=8, gen_length=8, block_length=4, temperature=1.0))
    r = rollout_text(model, sb, [p["question"] for p in probs], 2, settings=cfg.sampler, think=False, generator=g)
    assert r.sequences.shape[0] == 6 and r.prompt_index == [0, 0, 1, 1, 2, 2]
    assert not (r.completion_mask & r.prompt_mask).any()
    scored = score_rollout(r, cfg, [p["question"] for p in probs], {})
    its = prepare_iterations(model, model, r, cfg, mask_id=sb.special.mask, generator=g)
    for it in its:
        assert not (it.noised.masked & ~r.completion_mask).any()  # scored positions: completion only
        assert (it.noised.masked.sum(1) >= 1).all()
        changed = it.noised.input_ids != r.sequences
        assert not (changed & r.prompt_mask).any()  # the prompt stays clean
    out = policy_loss(model, scored, its[0], cfg)
    assert float(out.ratio_mean) == 1.0 and float(out.kl) == 0.0
    assert float(out.loss) == pytest.approx(-float(scored.advantages.advantages.mean()), abs=1e-7)
    # The two iterations draw different masks.
    assert not torch.equal(its[0].noised.masked, its[1].noised.masked)
    # Rollouts take the fast-sampling options (cache + threshold) through the same config.
    fast = GRPOConfig(num_generations=2, reward_funcs=["format"], reward_weights={},
                      sampler={"steps": 8, "gen_length": 8, "block_length": 4, "cache": "prefix", "threshold": 0.9})
    rf = rollout_text(model, sb, [probs[0]["question"]], 2, settings=fast.sampler, think=False)
    assert rf.sequences.shape[0] == 2 and int(rf.prompt_mask[0].sum()) + 8 == rf.sequences.shape[1]
    assert not (rf.sequences == sb.special.mask).any()  # every generated position was decoded


def test_noising_estimators():
    seq = torch.arange(40).view(2, 20) + 10
    comp = torch.zeros(2, 20, dtype=torch.bool)
    comp[:, 8:] = True
    nb = unigrpo_mask(seq, comp, mask_id=3, ratio_range=(0.3, 0.6), generator=torch.Generator().manual_seed(0))
    assert ((nb.ratio >= 0.3) & (nb.ratio <= 0.6)).all() and not nb.masked[:, :8].any()
    none = unigrpo_mask(seq, comp, mask_id=3, ratio_range=(0.0, 0.0))
    assert none.masked.sum(1).tolist() == [1, 1]  # at least one scored token per completion
    prompt = ~comp
    a = d1_mask(seq, comp, prompt, mask_id=3, p_mask_prompt=0.5, seed=7)
    b = d1_mask(seq, comp, prompt, mask_id=3, p_mask_prompt=0.5, seed=7)
    assert torch.equal(a.input_ids, b.input_ids)  # fixed seed per inner iteration
    assert (a.input_ids[comp] == 3).all() and torch.equal(a.masked, comp)
    assert 0 < int((a.input_ids[prompt] == 3).sum()) < int(prompt.sum())
    with pytest.raises(ConfigError, match="mask_ratio_range"):
        unigrpo_mask(seq, comp, mask_id=3, ratio_range=(0.7, 0.2))


def test_per_token_logps_match_log_softmax(tiny):
    model, _ = tiny
    ids = torch.randint(20, 1000, (2, 7))
    lp = per_token_logps(model.eval(), ids, ids)
    ref = torch.log_softmax(model(ids).logits.float(), -1).gather(-1, ids[..., None]).squeeze(-1)
    torch.testing.assert_close(lp, ref)


def test_builtin_rewards():
    comps = ["<think>3 + 5 = 8.</think> The answer is 8.", "<think>x</think> 9", "8", "<answer>1/2</answer>",
             "<think></think> 8"]
    assert math_correctness(None, comps, answer=["8", "8", "8", "0.5", None]) == [1.0, 0.0, 1.0, 1.0, None]
    assert format_reward(None, comps) == [1.0, 1.0, 0.0, 0.0, 0.0]
    assert mmu_correctness(None, ["<think>it is red</think> Red.", "blue"], answer=["red", "red"]) == [1.0, 0.0]
    scenes = generate_shapes(4, seed=3)
    imgs = [s["image"] for s in scenes]
    good = shapes_t2i(None, imgs, metadata=[s["metadata"] for s in scenes], caption=[None] * 4)
    assert good == [1.0] * 4
    blank = render_scene([], 32)
    assert shapes_t2i(None, [blank], caption=[scenes[0]["caption"]])[0] < 1.0
    assert shapes_t2i(None, ["text"], caption=["a red circle"]) == [None]


def test_combine_rewards_weights_and_errors(monkeypatch):
    funcs = {"math_correctness": resolve_reward("math_correctness"), "format": resolve_reward("format")}
    total, per = combine_rewards(funcs, {"math_correctness": 2.0, "format": 0.5}, [None] * 2,
                                 ["<think>a</think> 4", "4"], {"answer": ["4", None]})
    assert total.tolist() == [2.5, 0.0] and per["math_correctness"] == [1.0, None]
    with pytest.raises(ConfigError, match="no reward function applies to completion 0"):
        combine_rewards({"math_correctness": funcs["math_correctness"]}, {}, [None], ["x"], {"answer": [None]})
    with pytest.raises(ConfigError, match="unknown reward function 'nope'"):
        resolve_reward("nope")
    with pytest.raises(ConfigError, match=r"module 'mmada\.nothing' is not allowed"):
        resolve_reward("mmada.nothing:here")  # a config names no code the operator did not allow
    monkeypatch.setenv("MMADA_ALLOW_REWARD_MODULES", "mmada")
    with pytest.raises(ConfigError, match="cannot be imported"):
        resolve_reward("mmada.nothing:here")
    with pytest.raises(ValueError, match="unknown reward function"):
        GRPOConfig(reward_funcs=["nope"])


@register_reward("test_digit_fraction")
def _digit_fraction(prompts, completions, **columns):
    return [sum(ch.isdigit() for ch in c) / max(1, len(c)) for c in completions]


def test_reward_rises_on_a_learnable_task(tiny):
    """GRPO end to end (sampler rollouts → rewards → advantages → UniGRPO noising → clipped loss + KL)
    on built-in arithmetic prompts with a verifiable reward (share of digits in the answer)."""
    _, sb = tiny
    torch.manual_seed(0)
    cfg_model = MMaDAConfig.from_preset("tiny", d_model=64, n_layers=2, n_heads=2, n_kv_heads=2,
                                        mlp_hidden_size=128, codebook_size=0, vocab_size=1024)
    model, ref = MMaDAModelLM(cfg_model), MMaDAModelLM(cfg_model)
    ref.load_state_dict(model.state_dict())
    ref.eval()
    probs = generate_arithmetic(200, seed=0, difficulty=1)
    cfg = GRPOConfig(num_generations=4, think=False, num_iterations=2, beta=0.01, reward_funcs=["test_digit_fraction"],
                     reward_weights={}, sampler=SamplerSettings(steps=8, gen_length=8, block_length=8, temperature=1.0))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    rewards = []
    for _ in range(30):
        idx = torch.randint(0, len(probs), (4,), generator=g).tolist()
        model.eval()
        r = rollout_text(model, sb, [probs[i]["question"] for i in idx], cfg.num_generations, settings=cfg.sampler,
                         think=False, generator=g)
        scored = score_rollout(r, cfg, [probs[i]["question"] for i in idx], {})
        model.train()
        for it in prepare_iterations(model, ref, r, cfg, mask_id=sb.special.mask, generator=g):
            loss = policy_loss(model, scored, it, cfg).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
        rewards.append(reward_metrics(scored)["reward"])
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    assert last > first + 0.3, (first, last)


def test_d1_estimator_as_published_on_rollouts_with_eos_fill(tiny):
    """d1: every generated position masked (EOS fill too), prompt tokens masked at p with the iteration's
    seed, scored tokens = completion up to and including the first EOS, loss averaged over all scored
    tokens of the batch; checked against a hand computation."""
    from mmada.rl.grpo import ScoredRollout
    from mmada.rl.rollout import Rollout, _text_masks

    model, sb = tiny
    model.eval()
    E, M = sb.special.eos, sb.special.mask
    P = 3
    rows = [[30, 31, 32, 40, 41, E, E, E, E],        # answer of 2 tokens + EOS, then EOS fill
            [30, 31, 32, 42, 43, 44, 45, 46, E],     # 5 tokens + EOS
            [33, 34, 35, E, E, E, E, E, E],          # EOS at once
            [33, 34, 35, 50, 51, 52, 53, 54, 55]]    # no EOS: all 6 generated tokens scored
    seqs = torch.tensor(rows)
    n_scored = [3, 6, 1, 6]
    scored = torch.zeros_like(seqs, dtype=torch.bool)
    for i, n in enumerate(n_scored):
        scored[i, P:P + n] = True
    generated = torch.zeros_like(scored)
    generated[:, P:] = True
    assert [torch.equal(a, b) for a, b in zip(_text_masks(seqs, P, E), (scored, generated & ~scored))] == [True] * 2
    prompt = ~generated
    r = Rollout("text", seqs, torch.ones_like(scored), prompt, scored, generated & ~scored, [""] * 4, [0, 0, 1, 1])
    adv = group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]), 2, scale=False)  # A = ±0.5
    sr = ScoredRollout(r, torch.tensor([1.0, 0.0, 0.0, 1.0]), {}, adv)
    cfg = GRPOConfig(num_generations=2, estimator="d1", p_mask_prompt=0.5, scale_rewards=False,
                     reward_funcs=["format"], reward_weights={})
    assert cfg.aggregation == "bnpo"
    it = prepare_iterations(model, None, r, cfg, mask_id=M, generator=torch.Generator().manual_seed(5))[0]

    # hand: d1's forward_process with the iteration's seed (drawn first from the run's generator)
    seed = int(torch.randint(0, 2**12, (1,), generator=torch.Generator().manual_seed(5))[0])
    noise = torch.rand(seqs.shape, generator=torch.Generator().manual_seed(seed)) < 0.5
    noisy = torch.where(generated | (noise & prompt), M, seqs)
    assert torch.equal(it.noised.input_ids, noisy) and torch.equal(it.noised.masked, scored)
    assert (it.noised.input_ids[:, P:] == M).all() and 0 < int((it.noised.input_ids[:, :P] == M).sum()) < 12

    # a different policy than the one that drew the rollout (so ratios are not 1)
    torch.manual_seed(1)
    new = MMaDAModelLM(model.config).eval()
    new.load_state_dict({k: v + 0.05 * torch.randn_like(v) for k, v in model.state_dict().items()})
    lp_old = torch.log_softmax(model(noisy).logits.double(), -1)
    lp_new = torch.log_softmax(new(noisy).logits.double(), -1)
    terms = [[], [], [], []]
    for i in range(4):
        a = float(adv.advantages[i])
        for t in range(P, P + n_scored[i]):
            ratio = math.exp(float(lp_new[i, t, seqs[i, t]] - lp_old[i, t, seqs[i, t]]))
            terms[i].append(min(ratio * a, min(max(ratio, 0.8), 1.2) * a))
    d1_loss = -sum(sum(t) for t in terms) / sum(n_scored)          # 16 scored tokens of the batch
    per_completion = -sum(sum(t) / len(t) for t in terms) / 4
    got = policy_loss(new, sr, it, cfg)
    assert float(got.loss) == pytest.approx(d1_loss, rel=1e-4)
    seq_cfg = cfg.model_copy(update={"loss_type": "grpo"})
    assert float(policy_loss(new, sr, it, seq_cfg).loss) == pytest.approx(per_completion, rel=1e-4)
    assert abs(d1_loss - per_completion) > 1e-3
    # scoring the EOS fill too (the earlier behaviour) gives a different number
    fill = torch.where(generated, 1.0, 0.0)
    assert float(grpo_loss(per_token_logps(new, noisy, seqs), it.old_logp, adv.advantages, fill.bool(),
                           loss_type="bnpo").loss) != pytest.approx(d1_loss, rel=1e-4)
