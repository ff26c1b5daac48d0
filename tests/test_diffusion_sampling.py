"""Samplers: a hand-traced case, token-for-token agreement with the reference algorithms, batching, errors."""

from types import SimpleNamespace

import pytest
import torch

from mmada.diffusion import generate_image, generate_text, num_transfer_tokens
from mmada.diffusion.settings import ImageSamplerSettings as IS
from mmada.diffusion.settings import SamplerSettings as S
from mmada.errors import SamplerError
from mmada.models import MMaDAConfig, MMaDAModelLM
from tests.reference_impl import llada_generate_ref, maskgit_ref

MASK = 40  # a text id above the codebook size, as in MMaDA (126336 > 8192)


class ScoreModel(torch.nn.Module):
    """Position j always predicts token 10 + j with logit ``scores[j]`` (all other logits 0)."""

    def __init__(self, scores, vocab=40):
        super().__init__()
        self.scores, self.vocab = scores, vocab
        self.config = SimpleNamespace(mask_token_id=MASK)

    def forward(self, x, attention_mask=None):
        B, L = x.shape
        logits = torch.zeros(B, L, self.vocab, dtype=torch.float64)
        for j in range(L):
            logits[:, j, 10 + j] = self.scores[j]
        return SimpleNamespace(logits=logits)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = MMaDAConfig(d_model=32, n_layers=2, n_heads=4, mlp_hidden_size=64, llm_vocab_size=48, codebook_size=16,
                      mask_token_id=MASK, num_vq_tokens=6, rope_theta=1e4, initializer_range=0.5)
    return MMaDAModelLM(cfg).double().eval()


def test_num_transfer_tokens_splits_evenly_with_remainder_first():
    m = torch.zeros(2, 10, dtype=torch.bool)
    m[0, :10] = True
    m[1, :3] = True
    assert num_transfer_tokens(m, 4).tolist() == [[3, 3, 2, 2], [1, 1, 1, 0]]


def test_hand_traced_unmasking_order():
    # prompt = 2 tokens; positions 2..5 are generated with confidences ordered 1 < 3 > ... (scores below)
    scores = [0, 0, 1.0, 3.0, 5.0, 2.0]
    trace = []
    out = generate_text(ScoreModel(scores), torch.tensor([[7, 8]]), S(steps=4, gen_length=4, block_length=2),
                        on_step=lambda s: trace.append((s["block"], s["step"], s["transfer"][0].nonzero().flatten().tolist())))
    # Block 0 = positions 2,3: position 3 (score 3) first, then 2; position 4 (score 5) waits for block 1.
    assert trace == [(0, 0, [1]), (0, 1, [0]), (1, 0, [0]), (1, 1, [1])]
    assert out.tolist() == [[7, 8, 12, 13, 14, 15]]
    # One block, two steps: the two most confident positions (4 and 3) first, then 5 and 2.
    trace.clear()
    generate_text(ScoreModel(scores), torch.tensor([[7, 8]]), S(steps=2, gen_length=4, block_length=4),
                  on_step=lambda s: trace.append(s["transfer"][0].nonzero().flatten().tolist()))
    assert trace == [[1, 2], [0, 3]]


@pytest.mark.parametrize(
    "steps,gen_length,block_length,cfg",
    [(8, 8, 4, 0.0), (9, 12, 4, 0.0), (4, 8, 8, 0.0), (6, 6, 3, 1.5)],
)
def test_matches_reference_algorithm_token_for_token(model, steps, gen_length, block_length, cfg):
    prompt = torch.randint(4, 40, (2, 5), generator=torch.Generator().manual_seed(steps))
    ours = generate_text(model, prompt, S(steps=steps, gen_length=gen_length, block_length=block_length, cfg_scale=cfg),
                         mask_id=MASK)
    ref = llada_generate_ref(model, prompt, steps=steps, gen_length=gen_length, block_length=block_length,
                             mask_id=MASK, cfg_scale=cfg)
    assert torch.equal(ours, ref)
    assert not (ours == MASK).any()


def test_left_padded_batch_equals_single_prompts(model):
    g = torch.Generator().manual_seed(3)
    p1, p2 = torch.randint(4, 40, (1, 6), generator=g), torch.randint(4, 40, (1, 3), generator=g)
    batch = torch.cat([p1, torch.cat([torch.full((1, 3), 1), p2], 1)])
    attn = torch.tensor([[True] * 6, [False] * 3 + [True] * 3])
    s = S(steps=8, gen_length=8, block_length=4)
    out = generate_text(model, batch, s, attention_mask=attn, mask_id=MASK)
    assert torch.equal(out[0, 6:], generate_text(model, p1, s, mask_id=MASK)[0, 6:])
    assert torch.equal(out[1, 6:], generate_text(model, p2, s, mask_id=MASK)[0, 3:])
    ref = llada_generate_ref(model, batch, attention_mask=attn, steps=8, gen_length=8, block_length=4, mask_id=MASK)
    assert torch.equal(out, ref)


def test_sampling_with_temperature_is_seeded(model):
    prompt = torch.randint(4, 40, (2, 4), generator=torch.Generator().manual_seed(0))
    s = S(steps=8, gen_length=8, block_length=8, temperature=1.0)
    a = generate_text(model, prompt, s, mask_id=MASK, generator=torch.Generator().manual_seed(1))
    b = generate_text(model, prompt, s, mask_id=MASK, generator=torch.Generator().manual_seed(1))
    c = generate_text(model, prompt, s, mask_id=MASK, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    r = generate_text(model, prompt, s.model_copy(update={"remasking": "random"}), mask_id=MASK,
                      generator=torch.Generator().manual_seed(1))
    assert not (r == MASK).any()


def test_bad_arguments_name_the_value(model):
    p = torch.tensor([[5, 6]])
    # The settings check their own rules, naming the values...
    with pytest.raises(SamplerError, match="gen_length=10 is not divisible by block_length=4"):
        S.make(steps=4, gen_length=10, block_length=4)
    with pytest.raises(SamplerError, match="steps=5 is not divisible by the number of blocks"):
        S.make(steps=5, gen_length=8, block_length=4)
    with pytest.raises(SamplerError, match=r"remasking: Input should be 'low_confidence' or 'random' \(got 'top'\)"):
        S.make(remasking="top")
    # ...the sampler checks the tensors and refuses anything but a settings object.
    with pytest.raises(SamplerError, match=r"prompt rows \[1\] contain the mask token id 40"):
        generate_text(model, torch.tensor([[5, 6], [MASK, 7]]), S(steps=4, gen_length=4, block_length=4))
    with pytest.raises(SamplerError, match="settings must be a SamplerSettings"):
        generate_text(model, p, {"steps": 4})
    # A mask id that only appears on left padding is fine.
    generate_text(model, torch.tensor([[MASK, 6]]), S(steps=2, gen_length=2, block_length=2),
                  attention_mask=torch.tensor([[False, True]]))


def _t2i_rows(n_img=6, text=(1, 5, 9, 12)):
    """A hand-built t2i layout: [text..] <soi> MASK*N <eoi>, plus the unconditional variant."""
    soi, eoi = 6, 7
    cond = torch.tensor([[*text, soi, *[MASK] * n_img, eoi], [2, 10, 11, 12, soi, *[MASK] * n_img, eoi]])
    uncond = torch.tensor([[1, 0, 0, 0, soi, *[MASK] * n_img, eoi]] * 2)
    return cond, uncond


@pytest.mark.parametrize("w", [0.0, 2.0])
def test_image_sampler_matches_maskgit_reference(model, w):
    cond, uncond = _t2i_rows()
    ours = generate_image(model, cond, IS(steps=5, temperature=1.0, guidance_scale=w), uncond_input_ids=uncond,
                          codebook_size=16, image_offset=48, num_image_tokens=6, generator=torch.Generator().manual_seed(5))
    ref = maskgit_ref(model, cond, uncond, N=6, C=16, offset=48, mask_id=MASK, w=w,
                      generator=torch.Generator().manual_seed(5), steps=5, temperature=1.0)
    assert torch.equal(ours, ref)
    assert ours.shape == (2, 6) and ours.min() >= 0 and ours.max() < 16


def test_image_sampler_keeps_given_tokens_and_checks_inputs(model):
    cond, _uncond = _t2i_rows()
    cond[:, 5] = 48 + 9  # the first image token is given (inpainting)
    out = generate_image(model, cond, IS(steps=4), codebook_size=16, image_offset=48, num_image_tokens=6,
                         generator=torch.Generator().manual_seed(0))
    assert (out[:, 0] == 9).all()
    with pytest.raises(SamplerError, match="needs uncond_input_ids"):
        generate_image(model, cond, IS(guidance_scale=1.0), codebook_size=16, image_offset=48)
    bad = cond.clone()
    bad[0, 6] = 20  # a text token in an image slot
    with pytest.raises(SamplerError, match="outside"):
        generate_image(model, bad, IS(), codebook_size=16, image_offset=48, num_image_tokens=6)


class TokenModel(torch.nn.Module):
    """Position j predicts ``tokens[j]`` with logit ``scores[j]`` (all other logits 0), vocabulary of 8."""

    def __init__(self, tokens, scores):
        super().__init__()
        self.tokens, self.scores = tokens, scores
        self.config = SimpleNamespace(mask_token_id=8, eos_token_id=1)

    def forward(self, x, attention_mask=None):
        B, L = x.shape
        logits = torch.zeros(B, L, 8, dtype=torch.float64)
        for j in range(L):
            logits[:, j, self.tokens[j]] = self.scores[j]
        return SimpleNamespace(logits=logits)


def test_llada_eos_options_match_the_official_generate():
    """logits_eos_inf / confidence_eos_eot_inf as in ML-GSAI/LLaDA generate.py (EOS 1, EoT 2 here)."""
    EOS, EOT = 1, 2
    # generated positions 2..5 predict: token 3 (score 10), EOS (14), EoT (13), token 4 (11)
    model = TokenModel([0, 0, 3, EOS, EOT, 4], [0, 0, 10.0, 14.0, 13.0, 11.0])
    prompt = torch.tensor([[5, 6]])

    def run(temperature=0.0, steps=4, **opts):
        trace = []
        s = S(steps=steps, gen_length=4, block_length=4, temperature=temperature, **opts)
        out = generate_text(model, prompt, s, mask_id=8, eos_id=EOS, eot_id=EOT,
                            generator=torch.Generator().manual_seed(0),
                            on_step=lambda st: trace.append(st["transfer"][0].nonzero().flatten().tolist()))
        return out, trace

    plain, order = run()
    assert plain.tolist() == [[5, 6, 3, EOS, EOT, 4]] and order == [[1], [2], [3], [0]]  # by confidence
    # no EOS can be sampled: the EOS position takes the next best token (all 0: token 0)
    no_eos, _ = run(logits_eos_inf=True)
    assert no_eos.tolist() == [[5, 6, 3, 0, EOT, 4]]
    # EOS/EoT predictions are committed last (two per step: no tie to break among them)
    last, order = run(steps=2, confidence_eos_eot_inf=True)
    assert last.tolist() == plain.tolist() and order == [[0, 3], [1, 2]]
    for opts, steps in (({"logits_eos_inf": True}, 4), ({"confidence_eos_eot_inf": True}, 2),
                        ({"logits_eos_inf": True, "confidence_eos_eot_inf": True}, 2)):
        ours, _ = run(steps=steps, **opts)
        ref = llada_generate_ref(model, prompt, steps=steps, gen_length=4, block_length=4, mask_id=8,
                                 eos_id=EOS, eot_id=EOT, **opts)
        assert torch.equal(ours, ref), opts
    # temperature > 0: the official code drops EoT's confidence only (EOS still goes first)
    hot, order = run(temperature=1.0, confidence_eos_eot_inf=True)
    assert hot.tolist() == plain.tolist() and order == [[1], [3], [0], [2]]
    assert run(temperature=1.0)[1] == [[1], [2], [3], [0]]
    with pytest.raises(SamplerError, match="confidence_eos_eot_inf needs eot_id"):
        generate_text(model, prompt, S(steps=4, gen_length=4, block_length=4, confidence_eos_eot_inf=True), mask_id=8)
    assert "logits_eos_inf" in S(logits_eos_inf=True).describe()
