"""Fast sampling: KV-cached forwards, prefix/dual cache, threshold/factor decoding, EOS stop, batching.

Small fp64 models so that "equal" can mean token-identical. A 1-layer model makes the caches
exact (its K/V depend only on each token's own embedding, so nothing cached is ever stale),
which checks the cache plumbing (positions, padding masks, batching, CFG) end to end; deeper
models check that the approximation is real but small.
"""

from types import SimpleNamespace

import pytest
import torch

from mmada.diffusion import generate_image, generate_text
from mmada.diffusion.cache import BlockLogits
from mmada.diffusion.parallel import confident_counts
from mmada.diffusion.settings import ImageSamplerSettings as IS
from mmada.diffusion.settings import SamplerSettings as S
from mmada.errors import ConfigError, SamplerError
from mmada.models import MMaDAConfig, MMaDAModelLM
from mmada.models.modeling import KVCache

MASK, EOS = 40, 1


def make_model(n_layers: int, init: float = 0.5, n_kv_heads: int = 4, seed: int = 0) -> MMaDAModelLM:
    torch.manual_seed(seed)
    cfg = MMaDAConfig(d_model=32, n_layers=n_layers, n_heads=4, n_kv_heads=n_kv_heads, mlp_hidden_size=64,
                      llm_vocab_size=48, codebook_size=16, mask_token_id=MASK, num_vq_tokens=6, rope_theta=1e4,
                      initializer_range=init, eos_token_id=EOS)
    return MMaDAModelLM(cfg).double().eval()


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


@pytest.fixture(scope="module")
def one_layer():
    return make_model(1)


@pytest.fixture(scope="module")
def deep():
    return make_model(2)


def padded_batch(lengths=(6, 3, 5), seed=3):
    """Left-padded prompts of mixed lengths (pad id 0), their mask, and the unpadded rows."""
    g = torch.Generator().manual_seed(seed)
    rows = [torch.randint(4, 40, (n,), generator=g) for n in lengths]
    P = max(lengths)
    ids = torch.zeros((len(rows), P), dtype=torch.long)
    attn = torch.zeros((len(rows), P), dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, P - len(r):], attn[i, P - len(r):] = r, True
    return ids, attn, rows


# ---------------------------------------------------------------------------------------------
# the cached forward


@pytest.mark.parametrize("n_kv_heads", [4, 2])
def test_cached_forward_matches_full_forward(n_kv_heads):
    model = make_model(3, init=0.3, n_kv_heads=n_kv_heads)
    ids, attn, _ = padded_batch()
    x = torch.cat([ids, torch.randint(4, 48, (3, 10))], 1)  # (3, 16)
    am = torch.cat([attn, torch.ones(3, 10, dtype=torch.bool)], 1)
    full = model(x, attention_mask=am).logits  # (3, 16, V)
    cache = KVCache()
    torch.testing.assert_close(model(x, attention_mask=am, kv_cache=cache).logits, full, rtol=0, atol=1e-12)
    assert cache.length == 16 and cache.keys[0].shape == (3, n_kv_heads, 16, 8)
    s, e = 8, 12
    # prefix: queries [s, L), keys from the cache before s; dual: queries [s, e) only
    pre = model(x[:, s:], attention_mask=am, kv_cache=cache, cache_start=s).logits
    torch.testing.assert_close(pre, full[:, s:], rtol=0, atol=1e-12)
    dual = model(x[:, s:e], attention_mask=am, kv_cache=cache, cache_start=s).logits
    torch.testing.assert_close(dual, full[:, s:e], rtol=0, atol=1e-12)
    # restricted LM head, and explicit per-row positions (a constant shift: RoPE is relative)
    part = model(x[:, s:], attention_mask=am, kv_cache=cache, cache_start=s, logits_positions=slice(0, 4),
                 logits_vocab=slice(10, 20)).logits
    torch.testing.assert_close(part, full[:, s:e, 10:20], rtol=0, atol=1e-12)
    shifted = model(x, attention_mask=am, position_ids=torch.arange(16).repeat(3, 1) + 7).logits
    torch.testing.assert_close(shifted, full, rtol=0, atol=1e-10)


def test_cached_forward_sees_stale_keys_and_appends():
    model = make_model(2, init=0.3)
    x = torch.randint(4, 48, (2, 12))
    cache = KVCache()
    model(x, kv_cache=cache)
    y = x.clone()
    y[:, 9:] = 5  # change the suffix: a dual-cache call on [4, 8) still uses the old suffix K/V
    stale = model(y[:, 4:8], kv_cache=cache, cache_start=4).logits
    torch.testing.assert_close(stale, model(x).logits[:, 4:8], rtol=0, atol=1e-12)
    assert not torch.allclose(stale, model(y).logits[:, 4:8])
    # appending after the cached length grows the cache (prompt encoded first, then the rest)
    c2 = KVCache()
    model(x[:, :7], kv_cache=c2)
    model(x[:, 7:], kv_cache=c2)
    assert c2.length == 12
    # layer 0 K/V depend on each token alone; deeper ones saw only the first 7 tokens
    torch.testing.assert_close(c2.keys[0], cache.keys[0], rtol=0, atol=1e-12)
    assert not torch.allclose(c2.keys[1][:, :, :7], cache.keys[1][:, :, :7])


def test_cache_argument_errors_name_the_value():
    model = make_model(1)
    x = torch.randint(4, 48, (2, 6))
    cache = KVCache()
    model(x, kv_cache=cache)
    with pytest.raises(ConfigError, match=r"cache_start=9 is outside the cached length \[0, 6\]"):
        model(x, kv_cache=cache, cache_start=9)
    with pytest.raises(ConfigError, match="kv_cache holds 2 rows but input_ids has 1"):
        model(x[:1], kv_cache=cache, cache_start=0)
    with pytest.raises(ConfigError, match="cache_start needs a kv_cache"):
        model(x, cache_start=0)
    with pytest.raises(ConfigError, match=r"attention_mask has shape \(2, 2\); expected \(B, 6\)"):
        model(x[:, 4:], kv_cache=cache, cache_start=4, attention_mask=torch.ones(2, 2, dtype=torch.bool))
    with pytest.raises(ConfigError, match="kv_cache=KVCache"):
        model(x, use_cache=True)


# ---------------------------------------------------------------------------------------------
# cache modes in the text sampler


def test_prefix_and_dual_logits_match_full_forward_at_every_block_start(deep):
    """Along a real decoding trajectory (left-padded batch): the block's logits from a cache refreshed at
    the block start equal a full forward of the same sequence; one step later the cache is stale."""
    ids, attn, _ = padded_batch()
    P, G, blk = ids.shape[1], 12, 4
    am = torch.cat([attn, torch.ones(3, G, dtype=torch.bool)], 1)
    snaps = {}
    generate_text(deep, ids, S(steps=12, gen_length=G, block_length=blk), attention_mask=attn, mask_id=MASK,
                  on_step=lambda d: snaps.__setitem__((d["block"], d["step"]), d["x"]))
    x = torch.cat([ids, torch.full((3, G), MASK)], 1)
    for b in range(G // blk):
        s, e = P + b * blk, P + (b + 1) * blk
        full = deep(x, attention_mask=am).logits[:, s:e]
        after = snaps[(b, 0)]  # one step later
        for mode in ("prefix", "dual"):
            bl = BlockLogits(deep, mode, am, P)
            torch.testing.assert_close(bl(x, s, e, refresh=True), full, rtol=0, atol=1e-12)
            torch.testing.assert_close(bl(x, s, e, refresh=False), full, rtol=0, atol=1e-12)
            approx, exact = bl(after, s, e, refresh=False), deep(after, attention_mask=am).logits[:, s:e]
            assert not torch.allclose(approx, exact)  # the cached K/V are really stale ...
        x = snaps[(b, 3)]


def test_cache_error_is_small_for_a_smoothly_initialised_model():
    model = make_model(2, init=0.02)  # the usual init: K/V change little between steps
    ids = torch.randint(4, 40, (2, 6), generator=torch.Generator().manual_seed(0))
    snaps = {}
    generate_text(model, ids, S(steps=16, gen_length=16, block_length=4), mask_id=MASK,
                  on_step=lambda d: snaps.__setitem__((d["block"], d["step"]), d["x"]))
    x = torch.cat([ids, torch.full((2, 16), MASK)], 1)
    for b in range(4):
        s, e = 6 + 4 * b, 10 + 4 * b
        for mode in ("prefix", "dual"):
            bl = BlockLogits(model, mode, None, 6)
            bl(x, s, e, refresh=True)
            approx, exact = bl(snaps[(b, 0)], s, e, refresh=False), model(snaps[(b, 0)]).logits[:, s:e]
            rel = float((approx - exact).norm() / exact.norm())
            assert 1e-9 < rel < 0.05, (b, mode, rel)
        x = snaps[(b, 3)]


@pytest.mark.parametrize("cache,prompt_cache", [("prefix", "per_block"), ("dual", "per_block"),
                                                ("prefix", "once"), ("dual", "once")])
@pytest.mark.parametrize("cfg", [0.0, 1.5])
def test_caches_are_exact_for_a_one_layer_model(one_layer, cache, prompt_cache, cfg):
    ids, attn, _ = padded_batch()
    base, kw = S(steps=12, gen_length=12, block_length=4, cfg_scale=cfg), dict(mask_id=MASK, attention_mask=attn)
    plain = generate_text(one_layer, ids, base, **kw)
    fast = generate_text(one_layer, ids, base.model_copy(update={"cache": cache, "prompt_cache": prompt_cache}), **kw)
    assert torch.equal(fast, plain)


def test_cache_equals_plain_when_every_block_is_one_step(deep):
    ids, attn, _ = padded_batch()
    kw = dict(mask_id=MASK, attention_mask=attn)
    plain = generate_text(deep, ids, S(steps=3, gen_length=12, block_length=4), **kw)
    for cache in ("prefix", "dual"):
        assert torch.equal(generate_text(deep, ids, S(steps=3, gen_length=12, block_length=4, cache=cache), **kw), plain)


def test_dual_equals_prefix_with_a_single_block(deep):
    ids, attn, _ = padded_batch()
    kw = dict(mask_id=MASK, attention_mask=attn)
    prefix = generate_text(deep, ids, S(steps=8, gen_length=8, block_length=8, cache="prefix"), **kw)
    assert torch.equal(generate_text(deep, ids, S(steps=8, gen_length=8, block_length=8, cache="dual"), **kw), prefix)
    assert not (prefix == MASK).any()


@pytest.mark.parametrize("opts", [
    {}, {"cache": "prefix"}, {"cache": "dual"}, {"threshold": 0.3}, {"factor": 1.0},
    {"cache": "prefix", "threshold": 0.3}, {"cache": "dual", "factor": 1.0, "prompt_cache": "once"},
    {"cache": "prefix", "threshold": 0.3, "stop_at_eos": True},
])
def test_mixed_length_batch_equals_one_prompt_at_a_time(deep, opts):
    ids, attn, rows = padded_batch()
    settings = S(steps=12, gen_length=12, block_length=4, **opts)
    out = generate_text(deep, ids, settings, attention_mask=attn, mask_id=MASK)
    for i, r in enumerate(rows):
        single = generate_text(deep, r[None], settings, mask_id=MASK)
        assert torch.equal(out[i, ids.shape[1]:], single[0, len(r):]), (i, opts)


def test_mmu_image_prefix_is_encoded_once(one_layer):
    """MMU prompts = image tokens + text, left-padded; with prompt_cache='once' the prompt is fed once."""
    g = torch.Generator().manual_seed(1)
    img = torch.randint(48, 64, (2, 6), generator=g)  # image codes live after the text vocab
    text = [torch.randint(4, 40, (n,), generator=g) for n in (4, 2)]
    rows = [torch.cat([torch.tensor([41, 42]), im, torch.tensor([43]), t]) for im, t in zip(img, text)]
    P = max(len(r) for r in rows)
    ids = torch.zeros((2, P), dtype=torch.long)
    attn = torch.zeros((2, P), dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, P - len(r):], attn[i, P - len(r):] = r, True
    G, blk, steps = 12, 4, 12
    base, kw = S(steps=steps, gen_length=G, block_length=blk), dict(mask_id=MASK, attention_mask=attn)
    fed = []
    plain = generate_text(one_layer, ids, base, **kw)
    once = base.model_copy(update={"cache": "prefix", "prompt_cache": "once"})
    fast = generate_text(one_layer, ids, once, on_step=lambda d: fed.append(d["tokens"]), **kw)
    assert torch.equal(fast, plain)
    L, B, per = P + G, 2, steps // (G // blk)
    # first step: the whole sequence; later block starts: only [P, L); other steps: [s, L)
    expected = 0
    for b in range(G // blk):
        s = P + b * blk
        for i in range(per):
            expected += B * (L if (b, i) == (0, 0) else (L - P if i == 0 else L - s))
    assert fed[-1] == expected
    per_block = []
    generate_text(one_layer, ids, base.model_copy(update={"cache": "prefix"}),
                  on_step=lambda d: per_block.append(d["tokens"]), **kw)
    assert per_block[-1] - fed[-1] == B * P * (G // blk - 1)  # the prompt re-encoded at each later block


# ---------------------------------------------------------------------------------------------
# parallel decoding


class ScoreModel(torch.nn.Module):
    """Position j predicts token 10 + j with logit ``scores[j]`` (all other logits 0)."""

    def __init__(self, scores, vocab=40):
        super().__init__()
        self.scores, self.vocab = scores, vocab
        self.config = SimpleNamespace(mask_token_id=MASK, eos_token_id=EOS)

    def forward(self, x, attention_mask=None):
        B, L = x.shape
        logits = torch.zeros(B, L, self.vocab, dtype=torch.float64)
        for j in range(L):
            logits[:, j, 10 + j] = self.scores[j]
        return SimpleNamespace(logits=logits)


def test_confident_counts_rules():
    inf = float("-inf")
    conf = torch.tensor([[0.99, 0.95, 0.6, 0.2], [0.3, inf, inf, inf], [inf, inf, inf, inf], [0.97, 0.8, 0.7, 0.55]],
                        dtype=torch.float64)
    zero = torch.zeros(4, dtype=torch.long)
    assert confident_counts(conf, zero, threshold=0.9).tolist() == [2, 1, 0, 1]  # ≥1 while masks remain
    assert confident_counts(conf, torch.tensor([3, 2, 1, 0]), threshold=0.9).tolist() == [3, 1, 0, 1]
    # factor 1: n-th most confident needs c > 1 − 1/(n+1): 0.5, 0.667, 0.75, 0.8
    assert confident_counts(conf, zero, factor=1.0).tolist() == [2, 1, 0, 2]
    # factor 2: bars 0, 0.333, 0.5, 0.6 → row 3 takes 0.97, 0.8, 0.7 but not 0.55
    assert confident_counts(conf, zero, factor=2.0).tolist() == [3, 1, 0, 3]


def test_threshold_and_factor_hand_traced():
    # |V| = 40, one logit s per position: p = e^s / (e^s + 39).
    # scores 9 → 0.995, 8 → 0.987, 4.6 → 0.718, 2 → 0.159, 1 → 0.065, 0.5 → 0.041
    scores = [0, 0, 9.0, 1.0, 8.0, 2.0, 4.6, 0.5]
    prompt = torch.tensor([[7, 8]])
    def trace(**opts):
        t = []
        out = generate_text(ScoreModel(scores), prompt, S(steps=6, gen_length=6, block_length=6, **opts),
                            on_step=lambda d: t.append(d["transfer"][0].nonzero().flatten().tolist()))
        assert out[0, 2:].tolist() == [12, 13, 14, 15, 16, 17]
        return t

    assert trace() == [[0], [2], [4], [3], [1], [5]]  # one per step, most confident first
    assert trace(threshold=0.9) == [[0, 2], [4], [3], [1], [5]]
    # factor 1: 0.995 > 0.5, 0.987 > 0.667, 0.718 < 0.75 → 2; then 0.718 > 0.5 alone; ...
    assert trace(factor=1.0) == [[0, 2], [4], [3], [1], [5]]
    # factor 1.5: bars 0.25, 0.5, 0.625, 0.7 → 0.995, 0.987, 0.718 go together
    assert trace(factor=1.5) == [[0, 2, 4], [3], [1], [5]]


@pytest.mark.parametrize("threshold", [1.0, 2.0])
def test_threshold_of_one_or_more_is_the_plain_sampler(deep, threshold):
    ids, attn, _ = padded_batch()
    for steps in (12, 6):  # one token per step, and two per step
        base, kw = S(steps=steps, gen_length=12, block_length=4), dict(mask_id=MASK, attention_mask=attn)
        counts = []
        out = generate_text(deep, ids, base.model_copy(update={"threshold": threshold}),
                            on_step=lambda d, c=counts: c.append(int(d["transfer"].sum())), **kw)
        assert torch.equal(out, generate_text(deep, ids, base, **kw))
        assert counts == [3 * 12 // steps] * steps


def test_low_threshold_needs_fewer_steps_and_finishes_every_block(deep):
    ids, attn, _ = padded_batch()
    steps = []
    out = generate_text(deep, ids, S(steps=12, gen_length=12, block_length=4, threshold=0.3, cache="prefix"),
                        mask_id=MASK, attention_mask=attn, on_step=lambda d: steps.append(d["step"]))
    assert not (out == MASK).any()
    assert len(steps) < 12


# ---------------------------------------------------------------------------------------------
# EOS early stop


class EosModel(torch.nn.Module):
    """Row r's answer is ``20 + j`` before position ``x[r, 0] - 4 + P`` and EOS after it (confident)."""

    def __init__(self, P):
        super().__init__()
        self.P = P
        self.config = SimpleNamespace(mask_token_id=MASK, eos_token_id=EOS)
        self.calls = 0

    def forward(self, x, attention_mask=None):
        self.calls += 1
        B, L = x.shape
        logits = torch.zeros(B, L, 48, dtype=torch.float64)
        for r in range(B):
            end = self.P + int(x[r, 0]) - 4
            for j in range(L):
                logits[r, j, EOS if j >= end else 20 + j % 20] = 5.0 + (L - j) * 0.01
        return SimpleNamespace(logits=logits)


def test_stop_at_eos_fills_finished_rows_and_stops():
    prompt = torch.tensor([[4 + 3, 9], [4 + 7, 9]])  # row 0 answers 3 tokens, row 1 answers 7
    plain_s = S(steps=16, gen_length=16, block_length=4)
    stop = plain_s.model_copy(update={"stop_at_eos": True})
    m = EosModel(P=2)
    plain = generate_text(m, prompt, plain_s)
    assert m.calls == 16
    m.calls = 0
    fast = generate_text(m, prompt, stop)
    assert torch.equal(fast, plain)  # here the model would have produced the EOS fill anyway
    assert m.calls == 8  # blocks 0 and 1: row 1's second block ends with EOS, then all rows are done
    # row 0 alone finishes after its first block
    m.calls = 0
    solo = generate_text(m, prompt[:1], stop)
    assert m.calls == 4 and torch.equal(solo[0], fast[0])
    # EOS id from the argument (here: token 23 ends the answer) instead of model.config
    m.calls = 0
    other = generate_text(m, prompt, stop, eos_id=20 + 5 % 20)
    assert m.calls == 16  # row 1's first block ends with 25, row 0 never emits it
    assert (other[1, 6:] == 25).all() and torch.equal(other[0], plain[0])


def test_stop_at_eos_needs_an_eos_id():
    m = ScoreModel([0] * 6)
    m.config = SimpleNamespace(mask_token_id=MASK)
    with pytest.raises(SamplerError, match="stop_at_eos needs eos_id"):
        generate_text(m, torch.tensor([[7, 8]]), S(steps=4, gen_length=4, block_length=2, stop_at_eos=True))


# ---------------------------------------------------------------------------------------------
# images


def _t2i_rows(n_img=6):
    soi, eoi = 6, 7
    cond = torch.tensor([[3, 1, 5, 9, 12, soi, *[MASK] * n_img, eoi], [0, 0, 2, 10, 11, soi, *[MASK] * n_img, eoi]])
    uncond = torch.tensor([[0, 0, 0, 1, 2, soi, *[MASK] * n_img, eoi]] * 2)
    attn = torch.tensor([[True] * 13, [False, False] + [True] * 11])
    uattn = torch.tensor([[False] * 3 + [True] * 10] * 2)
    return cond, uncond, attn, uattn


@pytest.mark.parametrize("w", [0.0, 2.0])
def test_image_prompt_cache_is_exact_for_one_layer_and_feeds_less(one_layer, deep, w):
    cond, uncond, attn, uattn = _t2i_rows()
    kw = dict(uncond_input_ids=uncond, attention_mask=attn, uncond_attention_mask=uattn, codebook_size=16,
              image_offset=48, num_image_tokens=6)
    fed = {}
    for cache in ("none", "prefix"):
        out = [generate_image(m, cond, IS(steps=5, guidance_scale=w, cache=cache), generator=torch.Generator().manual_seed(5),
                              on_step=lambda d, c=cache: fed.__setitem__(c, d["tokens"]), **kw) for m in (one_layer, deep)]
        fed[cache + "_out"] = out
    assert torch.equal(fed["prefix_out"][0], fed["none_out"][0])
    rows = 2 * (2 if w > 0 else 1)
    assert fed["none"] == 5 * rows * 13 and fed["prefix"] == rows * (13 + 4 * 7)
    assert fed["prefix_out"][1].shape == (2, 6) and int(fed["prefix_out"][1].max()) < 16


# ---------------------------------------------------------------------------------------------
# argument errors


def test_fast_sampler_arguments_are_checked():
    """The rules between fast-sampling options live in the settings, each failure naming the field."""
    for opts, msg in [
        ({"cache": "full"}, r"cache: Input should be 'none', 'prefix' or 'dual' \(got 'full'\)"),
        ({"threshold": -0.5}, r"threshold: Input should be greater than 0 \(got -0.5\)"),
        ({"threshold": 0.9, "factor": 1.0}, "threshold and factor are exclusive"),
        ({"factor": 0}, r"factor: Input should be greater than 0 \(got 0\)"),
        ({"threshold": 0.9, "remasking": "random"}, "threshold/factor decoding needs remasking='low_confidence'"),
        ({"prompt_cache": "once"}, "prompt_cache='once' needs cache='prefix' or 'dual'"),
        ({"prompt_cache": "never", "cache": "prefix"}, r"prompt_cache: Input should be 'per_block' or 'once'"),
        ({"stop_at_eos": "maybe"}, "stop_at_eos: Input should be a valid boolean"),
    ]:
        with pytest.raises(SamplerError, match=msg):
            S.make(steps=4, gen_length=4, block_length=4, **opts)
    with pytest.raises(SamplerError, match=r"cache: Input should be 'none' or 'prefix' \(got 'dual'\)"):
        IS.make(cache="dual")  # every image slot can change at every step: no dual cache for images
