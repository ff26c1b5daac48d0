"""MMaDAModelLM numerics against independent references, official checkpoint layout, save/load."""

import json

import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoModel

from mmada.errors import ConfigError
from mmada.models import LLaDAModelLM, MMaDAConfig, MMaDAModelLM
from mmada.models.modeling import RMSNorm, apply_rope, rope_cos_sin
from tests.reference_impl import attention_ref, forward_ref, rms_norm_ref, rope_ref

SMALL = dict(d_model=32, n_layers=2, n_heads=4, n_kv_heads=4, mlp_hidden_size=48, llm_vocab_size=40,
             codebook_size=16, mask_token_id=3, rope_theta=500000.0, rms_norm_eps=1e-5, num_vq_tokens=4)


def small_model(seed=0, **kw) -> MMaDAModelLM:
    torch.manual_seed(seed)
    model = MMaDAModelLM(MMaDAConfig(**{**SMALL, **kw})).eval()
    # Random norm weights too, so the tests see them (init sets them to one).
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("norm.weight") or n.endswith("ln_f.weight"):
                p.uniform_(0.5, 1.5)
    return model


def official_state_dict(cfg: dict, seed: int = 1) -> dict[str, torch.Tensor]:
    """A state dict spelled out with the official key names and shapes (docs/model.md)."""
    g = torch.Generator().manual_seed(seed)
    d, f, V = cfg["d_model"], cfg["mlp_hidden_size"], cfg["vocab_size"]

    def r(*shape, scale=0.2):
        return torch.randn(*shape, generator=g) * scale

    sd = {"model.transformer.wte.weight": r(V, d, scale=1.0), "model.transformer.ln_f.weight": 1 + r(d),
          "model.transformer.ff_out.weight": r(V, d)}
    for i in range(cfg["n_layers"]):
        p = f"model.transformer.blocks.{i}."
        sd |= {p + "attn_norm.weight": 1 + r(d), p + "q_proj.weight": r(d, d), p + "k_proj.weight": r(d, d),
               p + "v_proj.weight": r(d, d), p + "attn_out.weight": r(d, d), p + "ff_norm.weight": 1 + r(d),
               p + "ff_proj.weight": r(f, d), p + "up_proj.weight": r(f, d), p + "ff_out.weight": r(d, f)}
    return sd


def test_rmsnorm_matches_formula():
    torch.manual_seed(0)
    norm = RMSNorm(16, eps=1e-5)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2.0)
    x = torch.randn(3, 5, 16)
    torch.testing.assert_close(norm(x), rms_norm_ref(x, norm.weight, 1e-5), rtol=1e-5, atol=1e-6)
    xb = x.bfloat16()
    out = norm.to(torch.bfloat16)(xb)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, rms_norm_ref(xb, norm.weight, 1e-5), rtol=1e-2, atol=1e-2)


def test_rope_matches_explicit_rotation():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 7, 8)
    cos, sin = rope_cos_sin(torch.arange(7), 8, 500000.0)
    torch.testing.assert_close(apply_rope(x, cos, sin).double(), rope_ref(x, 500000.0), rtol=1e-5, atol=1e-5)
    # Relative: shifting every position by the same offset leaves q·k unchanged.
    q, k = torch.randn(1, 1, 5, 8), torch.randn(1, 1, 5, 8)
    c0, s0 = rope_cos_sin(torch.arange(5), 8, 10000.0)
    c1, s1 = rope_cos_sin(torch.arange(5) + 11, 8, 10000.0)
    torch.testing.assert_close(apply_rope(q, c0, s0) @ apply_rope(k, c0, s0).mT,
                               apply_rope(q, c1, s1) @ apply_rope(k, c1, s1).mT, rtol=1e-4, atol=1e-4)


def test_block_attention_matches_manual_softmax():
    model = small_model().double()
    blk = model.model.transformer.blocks[0]
    x = torch.randn(2, 6, 32, dtype=torch.float64)
    key_mask = torch.tensor([[True] * 6, [False, False, True, True, True, True]])
    h = blk.attn_norm(x)
    q = blk.q_proj(h).view(2, 6, 4, 8).transpose(1, 2)
    k = blk.k_proj(h).view(2, 6, 4, 8).transpose(1, 2)
    v = blk.v_proj(h).view(2, 6, 4, 8).transpose(1, 2)
    a = attention_ref(rope_ref(q, 5e5), rope_ref(k, 5e5), v, key_mask).transpose(1, 2).reshape(2, 6, 32)
    after_attn = x + blk.attn_out(a)
    h2 = blk.ff_norm(after_attn)
    expected = after_attn + blk.ff_out(torch.nn.functional.silu(blk.ff_proj(h2)) * blk.up_proj(h2))
    from mmada.models.modeling import build_attention_bias

    cos, sin = rope_cos_sin(torch.arange(6), 8, 5e5)
    got = blk(x, cos, sin, build_attention_bias(key_mask, None, x.dtype, 6, 6))
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)


def test_forward_matches_functional_reference():
    model = small_model()
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    ids = torch.randint(0, 56, (2, 9))
    ref = forward_ref(sd, ids, n_heads=4, theta=5e5, eps=1e-5)
    torch.testing.assert_close(model.double()(ids).logits, ref, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(model.float()(ids).logits.double(), ref, rtol=1e-4, atol=1e-4)


def test_padding_masks():
    model = small_model().double()
    ids = torch.randint(4, 56, (1, 7))
    alone = model(ids).logits
    pad = torch.full((1, 3), 1)
    padded = torch.cat([pad, ids], 1)
    mask = torch.tensor([[False] * 3 + [True] * 7])
    # Left padding with a key mask: the real tokens' logits equal the unpadded ones (RoPE is relative).
    torch.testing.assert_close(model(padded, attention_mask=mask).logits[:, 3:], alone, rtol=1e-9, atol=1e-9)
    # The official bool attention_bias (m_q & m_k) gives the same logits on real tokens.
    bias = (mask[:, :, None] & mask[:, None, :])[:, None]
    torch.testing.assert_close(model(padded, attention_bias=bias).logits[:, 3:], alone, rtol=1e-9, atol=1e-9)
    # Without a mask the pads are attended, which changes the result.
    assert not torch.allclose(model(padded).logits[:, 3:], alone, atol=1e-6)
    # Reference with an explicit key mask.
    ref = forward_ref(model.state_dict(), padded, n_heads=4, theta=5e5, eps=1e-5, key_mask=mask)
    torch.testing.assert_close(model(padded, attention_mask=mask).logits[:, 3:], ref[:, 3:], rtol=1e-8, atol=1e-8)


def test_save_load_round_trip_is_bit_exact(tmp_path):
    model = small_model()
    model.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    loaded, info = MMaDAModelLM.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    for (n1, p1), (n2, p2) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2), n1
    ids = torch.randint(0, 56, (2, 5))
    assert torch.equal(model(ids).logits, loaded.eval()(ids).logits)
    assert list(tmp_path.glob("*.bin")) == [] and list(tmp_path.glob("*.pt")) == []


@pytest.mark.parametrize("model_type", ["llada", "mmada"])
def test_official_checkpoint_layout_loads_with_exact_logits(tmp_path, model_type):
    cfg = dict(d_model=32, n_layers=2, n_heads=4, n_kv_heads=4, mlp_hidden_size=48, vocab_size=64,
               embedding_size=64, rope_theta=500000.0, rms_norm_eps=1e-5, mask_token_id=30, max_sequence_length=4096)
    official = {
        "architectures": ["LLaDAModelLM"], "activation_type": "silu", "alibi": False, "alibi_bias_max": 8.0,
        "attention_dropout": 0.0, "attention_layer_norm": False, "attention_layer_norm_with_affine": True,
        "auto_map": {"AutoConfig": "configuration_llada.LLaDAConfig", "AutoModel": "modeling_llada.LLaDAModelLM"},
        "bias_for_layer_norm": False, "block_group_size": 1, "block_type": "llama", "embedding_dropout": 0.0,
        "eos_token_id": 61, "pad_token_id": 61, "flash_attention": False, "include_bias": False,
        "include_qkv_bias": False, "init_device": "meta", "init_fn": "mitchell", "init_std": 0.02,
        "input_emb_norm": False, "layer_norm_type": "rms", "layer_norm_with_affine": True, "mlp_ratio": 4,
        "model_type": model_type, "multi_query_attention": None, "precision": "amp_bf16", "residual_dropout": 0.0,
        "rope": True, "rope_full_precision": True, "scale_logits": False, "torch_dtype": "float32",
        "transformers_version": "4.46.3", "use_cache": False, "weight_tying": False, **cfg,
    }
    if model_type == "mmada":
        official |= {"llm_vocab_size": 48, "codebook_size": 16, "num_vq_tokens": 4, "num_new_special_tokens": 0}
    (tmp_path / "config.json").write_text(json.dumps(official))
    sd = official_state_dict(cfg)
    # Two shards + index, as the HF hub checkpoints are laid out.
    keys = sorted(sd)
    shards = {"model-00001-of-00002.safetensors": keys[: len(keys) // 2],
              "model-00002-of-00002.safetensors": keys[len(keys) // 2 :]}
    for fname, ks in shards.items():
        save_file({k: sd[k].contiguous() for k in ks}, str(tmp_path / fname), metadata={"format": "pt"})
    index = {"metadata": {"total_size": 0}, "weight_map": {k: f for f, ks in shards.items() for k in ks}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))

    ids = torch.randint(0, 64, (2, 11))
    ref = forward_ref(sd, ids, n_heads=4, theta=5e5, eps=1e-5)
    for loader in (MMaDAModelLM, AutoModel):
        model, info = loader.from_pretrained(tmp_path, output_loading_info=True)
        assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
        assert isinstance(model, MMaDAModelLM)
        for k, v in model.state_dict().items():
            assert torch.equal(v, sd[k]), k
        torch.testing.assert_close(model.eval().double()(ids).logits, ref, rtol=1e-10, atol=1e-10)
    if model_type == "llada":
        assert isinstance(AutoModel.from_pretrained(tmp_path), LLaDAModelLM)


def test_bf16_forward_close_to_fp32():
    model = small_model()
    ids = torch.randint(0, 56, (2, 9))
    ref = model(ids).logits
    out = model.to(torch.bfloat16)(ids).logits
    assert out.dtype == torch.bfloat16
    assert (out.float() - ref).abs().max() < 0.05 * ref.abs().max()


def test_activation_checkpointing_gives_same_gradients():
    ids = torch.randint(0, 56, (2, 9))
    grads = []
    for ckpt in (False, True):
        model = small_model().train()
        if ckpt:
            model.activation_checkpointing_enable()
            assert all(b.gradient_checkpointing for b in model.model.transformer.blocks)
        model(ids).logits.square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], rtol=1e-5, atol=1e-6)


def test_resize_llada_vocab_to_mmada():
    model = small_model(llm_vocab_size=40, codebook_size=0, vocab_size=40)
    model.resize_token_embeddings(56)
    assert model.config.vocab_size == model.config.embedding_size == 56
    assert model(torch.tensor([[55, 1]])).logits.shape == (1, 2, 56)


def test_out_of_range_ids_are_rejected():
    model = small_model()
    with pytest.raises(ConfigError, match=r"outside \[0, 56\)"):
        model(torch.tensor([[1, 56]]))
    with pytest.raises(ConfigError, match="use_cache"):
        model(torch.tensor([[1, 2]]), use_cache=True)


@pytest.mark.gpu
def test_cuda_bf16_matches_cpu():
    model = small_model()
    ids = torch.randint(0, 56, (2, 9))
    ref = model(ids).logits
    out = model.cuda().to(torch.bfloat16)(ids.cuda()).logits.float().cpu()
    assert (out - ref).abs().max() < 0.05 * ref.abs().max()
