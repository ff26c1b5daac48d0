"""Forward processes and losses against brute-force computations; a tiny model overfits a fixed batch."""

import math

import pytest
import torch

from mmada.diffusion import lm_loss, mask_image, mask_text, sft_loss, t2i_loss, unified_loss
from mmada.diffusion.masking import get_schedule
from mmada.errors import ConfigError
from mmada.models import MMaDAConfig, MMaDAModelLM
from mmada.tokenization import SequenceBatch


def brute_ce(logits, target):
    row = [float(v) for v in logits]
    m = max(row)
    return -(row[target] - m - math.log(sum(math.exp(v - m) for v in row)))


def test_mask_text_probability_and_prompt():
    ids = torch.arange(20000).view(4, 5000) % 50 + 10
    prompt = torch.zeros_like(ids, dtype=torch.bool)
    prompt[:, :100] = True
    t = torch.tensor([0.0, 0.25, 0.5, 1.0])
    noisy, masked, p = mask_text(ids, mask_id=3, prompt_mask=prompt, t=t, generator=torch.Generator().manual_seed(0))
    assert not masked[:, :100].any() and torch.equal(noisy[:, :100], ids[:, :100])
    assert torch.equal(noisy[masked], torch.full((int(masked.sum()),), 3))
    expected = (1 - 1e-3) * t + 1e-3
    torch.testing.assert_close(p[:, 0], expected)
    frac = masked[:, 100:].float().mean(1)
    assert (frac - expected).abs().max() < 0.03


def test_mask_image_counts_follow_cosine_schedule():
    ids = torch.randint(0, 100, (5, 64)) + 200
    t = torch.tensor([0.0, 0.2, 0.5, 0.9, 1.0])
    noisy, masked = mask_image(ids, mask_id=3, t=t, generator=torch.Generator().manual_seed(0))
    expected = [max(1, round(64 * math.cos(math.pi / 2 * float(x)))) for x in t]
    assert masked.sum(1).tolist() == expected
    assert torch.equal(torch.where(masked, 3, ids), noisy)
    assert float(get_schedule("pow2")(torch.tensor(0.5))) == 0.75
    with pytest.raises(ConfigError, match="unknown mask schedule 'cubic'"):
        get_schedule("cubic")


def test_losses_match_brute_force():
    g = torch.Generator().manual_seed(0)
    B, L, V = 3, 6, 7
    logits = torch.randn(B, L, V, generator=g)
    targets = torch.randint(0, V, (B, L), generator=g)
    masked = torch.rand(B, L, generator=g) < 0.5
    masked[0, 0] = True
    p = torch.rand(B, 1, generator=g).expand(B, L) * 0.9 + 0.1
    prompt = torch.zeros(B, L, dtype=torch.bool)
    prompt[:, :2] = True
    masked_sft = masked & ~prompt
    masked_sft[1, 3] = True

    lm = sum(brute_ce(logits[b, i], targets[b, i]) / float(p[b, i]) for b in range(B) for i in range(L) if masked[b, i])
    assert float(lm_loss(logits, targets, masked, p)) == pytest.approx(lm / (B * L), rel=1e-5)

    rows = []
    for b in range(B):
        s = sum(brute_ce(logits[b, i], targets[b, i]) / float(p[b, i]) for i in range(L) if masked_sft[b, i])
        rows.append(s / (L - 2))  # answer length = non-prompt tokens
    assert float(sft_loss(logits, targets, masked_sft, p, prompt)) == pytest.approx(sum(rows) / B, rel=1e-5)

    ces = [brute_ce(logits[b, i], targets[b, i]) for b in range(B) for i in range(L) if masked[b, i]]
    assert float(t2i_loss(logits, targets, masked)) == pytest.approx(sum(ces) / len(ces), rel=1e-5)


def _tiny_model(seed=0):
    torch.manual_seed(seed)
    return MMaDAModelLM(MMaDAConfig(d_model=32, n_layers=2, n_heads=4, mlp_hidden_size=64, llm_vocab_size=40,
                                    codebook_size=16, mask_token_id=3, num_vq_tokens=4, rope_theta=1e4))


def _batches():
    g = torch.Generator().manual_seed(1)
    B = 3
    t2i_ids = torch.randint(4, 40, (B, 10), generator=g)
    t2i_ids[:, 5:9] = torch.randint(40, 56, (B, 4), generator=g)
    img = torch.zeros(B, 10, dtype=torch.bool)
    img[:, 5:9] = True
    attn = torch.ones(B, 10, dtype=torch.bool)
    attn[0, :2] = False
    chat_ids = torch.randint(4, 40, (2, 8), generator=g)
    chat_prompt = torch.zeros(2, 8, dtype=torch.bool)
    chat_prompt[:, :3] = True
    lm_ids = torch.randint(4, 40, (2, 12), generator=g)
    z = torch.zeros(2, 12, dtype=torch.bool)
    return {
        "t2i": SequenceBatch(t2i_ids, attn, ~img, img),
        "chat": SequenceBatch(chat_ids, torch.ones_like(chat_prompt), chat_prompt, torch.zeros_like(chat_prompt)),
        "lm": SequenceBatch(lm_ids, ~z, z, z),
    }


@pytest.mark.parametrize("per_task_forward", [False, True])
def test_unified_loss_equals_separate_computation(per_task_forward):
    model = _tiny_model().double().eval()
    batches = _batches()
    coeffs = {"t2i": 1.0, "lm": 0.1, "chat": 0.5}
    out = unified_loss(model, batches, mask_id=3, coeffs=coeffs, generator=torch.Generator().manual_seed(7),
                       per_task_forward=per_task_forward)
    # Re-draw the same noise in the same order, then compute each task alone.
    g = torch.Generator().manual_seed(7)
    b = batches["t2i"]
    img = b.input_ids[b.image_mask].view(3, -1)
    nimg, mimg = mask_image(img, mask_id=3, generator=g)
    x = b.input_ids.clone()
    x[b.image_mask] = nimg.reshape(-1)
    m = torch.zeros_like(b.image_mask)
    m[b.image_mask] = mimg.reshape(-1)
    l_t2i = t2i_loss(model(x, attention_mask=b.attention_mask).logits, b.input_ids, m)
    b = batches["lm"]
    x, m, p = mask_text(b.input_ids, mask_id=3, generator=g)
    l_lm = lm_loss(model(x).logits, b.input_ids, m, p)
    b = batches["chat"]
    x, m, p = mask_text(b.input_ids, mask_id=3, prompt_mask=b.prompt_mask, generator=g)
    l_chat = sft_loss(model(x).logits, b.input_ids, m, p, b.prompt_mask)
    for k, v in {"t2i": l_t2i, "lm": l_lm, "chat": l_chat}.items():
        assert float(out.per_task[k]) == pytest.approx(v.item(), rel=1e-7), k
    assert out.loss.item() == pytest.approx((l_t2i + 0.1 * l_lm + 0.5 * l_chat).item(), rel=1e-7)
    with pytest.raises(ConfigError, match="unknown task"):
        unified_loss(model, {"video": batches["lm"]}, mask_id=3)


def test_tiny_model_overfits_fixed_batch():
    model = _tiny_model(1).train()
    batches = _batches()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)

    def eval_loss():
        with torch.no_grad():
            return float(unified_loss(model, batches, mask_id=3, generator=torch.Generator().manual_seed(123)).loss)

    first = eval_loss()
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        loss = unified_loss(model, batches, mask_id=3, generator=g).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    last = eval_loss()
    assert last < 0.1 * first, (first, last)
