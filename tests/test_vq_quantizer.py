"""Lookup-free quantizer: index ↔ code bijection, MSB-first packing, losses vs brute force."""

from __future__ import annotations

import pytest
import torch

from mmada.models.vq import LFQuantizer


def brute_code(index: int, bits: int) -> list[float]:
    return [1.0 if b == "1" else -1.0 for b in format(index, f"0{bits}b")]


@pytest.mark.parametrize("bits", [1, 4, 10, 13])
def test_index_code_bijection_over_whole_codebook(bits):
    q = LFQuantizer(bits)
    n = 2**bits
    idx = torch.arange(n).view(1, n)  # one "image" holding every code, grid (1, n)
    codes = q.indices_to_codes(idx, (1, n))  # (1, bits, 1, n)
    assert codes.shape == (1, bits, 1, n)
    assert set(codes.unique().tolist()) <= {-1.0, 1.0}
    assert torch.equal(q.codes_to_indices(codes), idx)  # decode → encode is identity on codes
    # every codebook row is its index's bits, most significant first
    for i in [0, n - 1, *torch.randint(0, n, (50,), generator=torch.Generator().manual_seed(bits)).tolist()]:
        assert codes[0, :, 0, i].tolist() == brute_code(i, bits)
    assert len({tuple(r) for r in q.embedding.tolist()}) == n  # all distinct


def test_hand_made_latents_pack_msb_first_and_zero_is_negative():
    q = LFQuantizer(4)
    # (B=1, K=4, h=1, w=3): positions hold sign patterns + - - + | 0 0 0 + | + + + +
    z = torch.tensor([[[[0.5, 0.0, 2.0]], [[-1.0, 0.0, 0.1]], [[-0.2, -0.0, 3.0]], [[0.7, 1e-6, 0.01]]]])
    assert q.codes_to_indices(z).tolist() == [[0b1001, 0b0001, 0b1111]]
    out = q(z)
    assert out.indices.tolist() == [[9, 1, 15]]
    assert torch.equal(out.z_q, torch.where(z > 0, 1.0, -1.0))


def test_grid_shape_round_trip_non_square():
    q = LFQuantizer(6)
    idx = torch.randint(0, 64, (3, 2 * 5), generator=torch.Generator().manual_seed(0))
    codes = q.indices_to_codes(idx, (2, 5))
    assert codes.shape == (3, 6, 2, 5)
    assert torch.equal(q.codes_to_indices(codes), idx)
    # row-major token order: token t sits at (t // 5, t % 5)
    assert codes[1, :, 1, 3].tolist() == brute_code(int(idx[1, 8]), 6)


def test_losses_match_official_formulas_by_brute_force():
    torch.manual_seed(0)
    z = torch.randn(2, 5, 3, 4, dtype=torch.float64).float() * 1.5
    out = LFQuantizer(5)(z)
    flat = z.permute(0, 2, 3, 1).reshape(-1, 5)  # (N, K)
    sign = torch.where(flat > 0, 1.0, -1.0)
    assert torch.allclose(out.commitment_loss, ((flat - sign) ** 2).mean(), atol=1e-6)
    # Official entropy: Categorical over {+1, -1} with logits −(z∓1)², per bit.
    logits = torch.stack([-(flat - 1) ** 2, -(flat + 1) ** 2], dim=-1)
    dist = torch.distributions.Categorical(logits=logits)
    per_sample = dist.entropy().mean()
    batch = torch.distributions.Categorical(probs=dist.probs.mean(0)).entropy().mean()
    assert torch.allclose(out.per_sample_entropy, per_sample, atol=1e-5)
    assert torch.allclose(out.batch_entropy, batch, atol=1e-5)
    assert torch.allclose(out.entropy_loss, per_sample - batch, atol=1e-5)


def test_straight_through_gradient_and_commitment_gradient():
    z = torch.tensor([[[[0.3]], [[-0.4]]]], requires_grad=True)  # (1, 2, 1, 1)
    out = LFQuantizer(2)(z)
    out.z_q.sum().backward()
    assert torch.equal(z.grad, torch.ones_like(z))  # identity through the sign
    z.grad = None
    LFQuantizer(2)(z).commitment_loss.backward()
    # d/dz mean((z − sign z)²) = 2(z − sign z)/K
    assert torch.allclose(z.grad, 2 * (z.detach() - torch.tensor([[[[1.0]], [[-1.0]]]])) / 2)
