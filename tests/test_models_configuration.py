"""MMaDAConfig: presets, official config.json fields, and errors naming the bad field."""

import pytest

from mmada.errors import ConfigError
from mmada.models import LLaDAConfig, MMaDAConfig

# The fields of the official LLaDA-8B-Instruct config.json (OLMo-style naming).
OFFICIAL_LLADA_8B = {
    "activation_type": "silu", "alibi": False, "alibi_bias_max": 8.0, "architectures": ["LLaDAModelLM"],
    "attention_dropout": 0.0, "attention_layer_norm": False, "attention_layer_norm_with_affine": True,
    "auto_map": {"AutoConfig": "configuration_llada.LLaDAConfig", "AutoModel": "modeling_llada.LLaDAModelLM",
                 "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM"},
    "bias_for_layer_norm": False, "block_group_size": 1, "block_type": "llama", "d_model": 4096,
    "embedding_dropout": 0.0, "embedding_size": 126464, "eos_token_id": 126081, "flash_attention": False,
    "include_bias": False, "include_qkv_bias": False, "init_cutoff_factor": None, "init_device": "meta",
    "init_fn": "mitchell", "init_std": 0.02, "input_emb_norm": False, "layer_norm_type": "rms",
    "layer_norm_with_affine": True, "mask_token_id": 126336, "max_sequence_length": 4096, "mlp_hidden_size": 12288,
    "mlp_ratio": 4, "model_type": "llada", "multi_query_attention": None, "n_heads": 32, "n_kv_heads": 32,
    "n_layers": 32, "pad_token_id": 126081, "precision": "amp_bf16", "residual_dropout": 0.0, "rms_norm_eps": 1e-05,
    "rope": True, "rope_full_precision": True, "rope_theta": 500000.0, "scale_logits": False,
    "transformers_version": "4.46.3", "use_cache": False, "vocab_size": 126464, "weight_tying": False,
}


def test_official_llada_config_fields_are_read():
    cfg = LLaDAConfig(**{k: v for k, v in OFFICIAL_LLADA_8B.items() if k != "model_type"})
    assert (cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.mlp_hidden_size) == (4096, 32, 32, 32, 12288)
    assert cfg.rope_theta == 500000.0 and cfg.rms_norm_eps == 1e-5
    assert cfg.vocab_size == cfg.embedding_size == cfg.llm_vocab_size == 126464 and cfg.codebook_size == 0
    assert cfg.mask_token_id == 126336 and cfg.initializer_range == 0.02
    assert cfg.head_dim == 128
    # Fields we do not interpret survive a round trip unchanged.
    d = cfg.to_dict()
    assert d["init_fn"] == "mitchell" and d["block_group_size"] == 1 and d["rope_full_precision"] is True


def test_mmada_vocabulary_layout():
    cfg = MMaDAConfig.from_preset("8b")
    assert (cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.mlp_hidden_size, cfg.rope_theta) == (4096, 32, 32, 12288, 5e5)
    assert cfg.vocab_size == 134656 == cfg.llm_vocab_size + cfg.codebook_size
    assert cfg.image_token_offset == 126464
    assert 8.0e9 < cfg.num_parameters_estimate() < 8.2e9


@pytest.mark.parametrize("name,lo,hi", [("tiny", 1e6, 1e7), ("small", 8e7, 1.3e8), ("1b", 1e9, 2e9)])
def test_presets_sizes(name, lo, hi):
    assert lo < MMaDAConfig.from_preset(name).num_parameters_estimate() < hi


def test_preset_override_and_unknown_preset():
    assert MMaDAConfig.from_preset("tiny", n_layers=2).n_layers == 2
    with pytest.raises(ConfigError, match="unknown model preset 'huge'"):
        MMaDAConfig.from_preset("huge")


@pytest.mark.parametrize(
    "override,field",
    [
        ({"block_type": "sequential"}, "block_type"),
        ({"include_bias": True}, "include_bias"),
        ({"alibi": True}, "alibi"),
        ({"weight_tying": True}, "weight_tying"),
        ({"n_heads": 5}, "d_model=256 is not divisible by n_heads=5"),
        ({"n_kv_heads": 3}, "n_heads=4 is not divisible by n_kv_heads=3"),
        ({"mask_token_id": 5000}, "mask_token_id=5000"),
        ({"vocab_size": 1500}, "codebook_size=1024 exceeds"),
        ({"d_model": -8}, "d_model=-8"),
    ],
)
def test_bad_fields_are_named(override, field):
    with pytest.raises(ConfigError, match=field.replace("(", r"\(").replace("+", r"\+")):
        MMaDAConfig.from_preset("tiny", **override)


def test_overrides_on_a_checkpoint_config_leave_the_weights_alone():
    released = MMaDAConfig.from_preset("8b", num_vq_tokens=256)  # a config.json that states 256 image tokens
    fixed = released.with_overrides({"num_vq_tokens": 1024, "max_sequence_length": 8192})
    assert fixed.num_vq_tokens == 1024 and fixed.max_sequence_length == 8192 and released.num_vq_tokens == 256
    assert {k: v for k, v in fixed.to_dict().items() if k not in ("num_vq_tokens", "max_sequence_length")} == \
        {k: v for k, v in released.to_dict().items() if k not in ("num_vq_tokens", "max_sequence_length")}
    with pytest.raises(ConfigError, match=r"model.overrides.n_layers cannot be changed on an existing checkpoint"):
        released.with_overrides({"n_layers": 2})
    with pytest.raises(ConfigError, match=r"model.overrides.num_vq_tokens=1000 must be a positive square"):
        released.with_overrides({"num_vq_tokens": 1000})
    with pytest.raises(ConfigError, match=r"--x.num_vq_tokens='big' must be a non-negative integer"):
        released.with_overrides({"num_vq_tokens": "big"}, where="--x")
    with pytest.raises(ConfigError, match=r"model.overrides: config field mask_token_id=200000 must be a text token"):
        released.with_overrides({"mask_token_id": 200000})
    with pytest.raises(ConfigError, match=r"codebook_size=9000 exceeds vocab_size=134656"):
        released.with_overrides({"codebook_size": 9000})
