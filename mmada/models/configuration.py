"""``MMaDAConfig``: the model configuration, compatible with official MMaDA and LLaDA ``config.json``.

The official checkpoints carry an OLMo-style config (``d_model``, ``n_layers``, ``n_heads``,
``mlp_hidden_size``, ``block_type="llama"``, …). We read those field names as they are, validate
the ones that decide the architecture (we implement exactly one block type: LLaDA's Llama block,
bidirectional, no biases), and keep every other field untouched so a load → save round trip
writes what it read.

Named presets (``MMaDAConfig.from_preset(name)``):

    tiny    ~4M params, CPU demo (built-in BPE tokenizer of 1024 tokens + 1024 image codes)
    small   ~100M params (same vocabulary as tiny)
    1b      ~1.4B params with the official MMaDA vocabulary
    8b      the official shape: 4096 / 32 layers / 32 heads / MLP 12288 / RoPE θ=5e5 / vocab 134656
"""

from __future__ import annotations

import math
from typing import Any

from transformers import PretrainedConfig

from mmada.errors import ConfigError

# Official LLaDA/MMaDA special ids (docs/model.md). LLADA_VOCAB is the padded embedding size
# (llm_vocab_size), not the tokenizer's length (126349).
LLADA_MASK_ID = 126336
LLADA_BOS_ID = 126080
LLADA_EOS_ID = 126081
LLADA_VOCAB = 126464
MMADA_CODEBOOK = 8192
# Ids of the built-in tokenizer's special tokens (mmada.tokenization.text puts them first).
BUILTIN_TOKEN_IDS = dict(bos_token_id=0, eos_token_id=1, pad_token_id=1, mask_token_id=2)

# Fields whose value decides the architecture; anything else is rejected with a clear message.
_SUPPORTED = {
    "block_type": {"llama"},
    "layer_norm_type": {"rms"},
    "activation_type": {"silu", "swiglu"},
    "alibi": {False},
    "rope": {True},
    "include_bias": {False},
    "include_qkv_bias": {False, None},
    "attention_layer_norm": {False},
    "input_emb_norm": {False},
    "scale_logits": {False},
    "multi_query_attention": {None, False},
    "weight_tying": {False},
}

# Fields a checkpoint's config may change without touching its weights: image tokens per image
# (a released config.json may say 256 where 512 px images need 1024), the RoPE cache length and the
# special ids the samplers and losses use. Everything else decides the weights' shapes or meaning.
CHECKPOINT_OVERRIDES: dict[str, str] = {
    "num_vq_tokens": "image tokens per image, a square grid (MAGVIT-v2: 256 at 256 px, 1024 at 512 px)",
    "max_sequence_length": "RoPE cache length (grows on demand; no weights)",
    "mask_token_id": "the diffusion mask token",
    "bos_token_id": "text start token",
    "eos_token_id": "text end / padding token",
    "pad_token_id": "padding token",
    "codebook_size": "image codes in the vocabulary (within vocab_size)",
}

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        d_model=256, n_layers=4, n_heads=4, n_kv_heads=4, mlp_hidden_size=688,
        llm_vocab_size=1024, codebook_size=1024, num_vq_tokens=64, max_sequence_length=512,
        rope_theta=10000.0, **BUILTIN_TOKEN_IDS,
    ),
    "small": dict(
        d_model=768, n_layers=12, n_heads=12, n_kv_heads=12, mlp_hidden_size=2560,
        llm_vocab_size=1024, codebook_size=1024, num_vq_tokens=64, max_sequence_length=1024,
        rope_theta=10000.0, **BUILTIN_TOKEN_IDS,
    ),
    "1b": dict(
        d_model=2048, n_layers=16, n_heads=16, n_kv_heads=16, mlp_hidden_size=5632,
        llm_vocab_size=LLADA_VOCAB, codebook_size=MMADA_CODEBOOK, num_vq_tokens=256,
        max_sequence_length=4096, rope_theta=500000.0, mask_token_id=LLADA_MASK_ID,
        bos_token_id=LLADA_BOS_ID, eos_token_id=LLADA_EOS_ID, pad_token_id=LLADA_EOS_ID,
    ),
    "8b": dict(
        d_model=4096, n_layers=32, n_heads=32, n_kv_heads=32, mlp_hidden_size=12288,
        llm_vocab_size=LLADA_VOCAB, codebook_size=MMADA_CODEBOOK, num_vq_tokens=1024,
        max_sequence_length=4096, rope_theta=500000.0, mask_token_id=LLADA_MASK_ID,
        bos_token_id=LLADA_BOS_ID, eos_token_id=LLADA_EOS_ID, pad_token_id=LLADA_EOS_ID,
    ),
}


class MMaDAConfig(PretrainedConfig):
    """Configuration of :class:`~mmada.models.MMaDAModelLM`.

    Field names follow the official ``config.json`` (LLaDA/OLMo naming) so official checkpoints
    load unchanged. The unified vocabulary is ``[text tokens | image codes (codebook_size)]``: image
    code ``c`` has token id ``len(text tokenizer) + c``; ``llm_vocab_size`` (LLaDA: 126464, its padded
    embedding size) bounds the tokenizer's length (LLaDA's is 126349, the released checkpoints' offset).
    """

    model_type = "mmada"

    def __init__(
        self,
        d_model: int = 4096,
        n_layers: int = 32,
        n_heads: int = 32,
        n_kv_heads: int | None = None,
        mlp_hidden_size: int | None = 12288,
        mlp_ratio: int = 4,
        rope_theta: float = 500000.0,
        rms_norm_eps: float = 1e-5,
        vocab_size: int | None = None,
        embedding_size: int | None = None,
        llm_vocab_size: int | None = None,
        codebook_size: int = 0,
        num_vq_tokens: int = 256,
        mask_token_id: int = LLADA_MASK_ID,
        max_sequence_length: int = 4096,
        initializer_range: float = 0.02,
        tie_word_embeddings: bool = False,
        **kwargs: Any,
    ) -> None:
        # Official configs store the init std as `init_std`; keep it as the initializer range.
        initializer_range = kwargs.pop("init_std", initializer_range)
        self.d_model = d_model
        self.n_layers = n_layers
        self.n_heads = n_heads
        self.n_kv_heads = n_kv_heads if n_kv_heads is not None else n_heads
        self.mlp_ratio = mlp_ratio
        self.mlp_hidden_size = mlp_hidden_size if mlp_hidden_size is not None else mlp_ratio * d_model
        self.rope_theta = float(rope_theta)
        self.rms_norm_eps = float(rms_norm_eps)
        if llm_vocab_size is None:  # a plain LLaDA config: text only
            llm_vocab_size = vocab_size if vocab_size is not None else LLADA_VOCAB
        self.llm_vocab_size = llm_vocab_size
        self.codebook_size = codebook_size
        if vocab_size is None:
            vocab_size = llm_vocab_size + codebook_size
        self.vocab_size = vocab_size
        self.embedding_size = embedding_size if embedding_size is not None else vocab_size
        self.num_vq_tokens = num_vq_tokens
        self.mask_token_id = mask_token_id
        self.max_sequence_length = max_sequence_length
        self.initializer_range = initializer_range
        kwargs.setdefault("block_type", "llama")
        kwargs.setdefault("layer_norm_type", "rms")
        kwargs.setdefault("activation_type", "silu")
        kwargs.setdefault("rope", True)
        kwargs.setdefault("alibi", False)
        kwargs.setdefault("include_bias", False)
        kwargs.setdefault("weight_tying", False)
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the field if the config cannot describe our model."""
        for name, allowed in _SUPPORTED.items():
            if hasattr(self, name) and getattr(self, name) not in allowed:
                raise ConfigError(
                    f"config field {name}={getattr(self, name)!r} is not supported "
                    f"(this implementation needs {name} in {sorted(map(str, allowed))})"
                )
        for name in ("d_model", "n_layers", "n_heads", "n_kv_heads", "mlp_hidden_size", "vocab_size", "embedding_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"config field {name}={value!r} must be a positive integer")
        if self.d_model % self.n_heads:
            raise ConfigError(f"config field d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            raise ConfigError(f"config field n_heads={self.n_heads} is not divisible by n_kv_heads={self.n_kv_heads}")
        if (self.d_model // self.n_heads) % 2:
            raise ConfigError(f"head dim d_model/n_heads={self.d_model // self.n_heads} must be even for RoPE")
        if self.embedding_size < self.vocab_size:
            raise ConfigError(f"config field embedding_size={self.embedding_size} < vocab_size={self.vocab_size}")
        if self.codebook_size < 0 or self.llm_vocab_size + self.codebook_size > self.vocab_size:
            raise ConfigError(
                f"llm_vocab_size={self.llm_vocab_size} + codebook_size={self.codebook_size} exceeds "
                f"vocab_size={self.vocab_size}: image tokens would fall outside the embedding table"
            )
        if not 0 <= self.mask_token_id < self.llm_vocab_size:
            raise ConfigError(
                f"config field mask_token_id={self.mask_token_id} must be a text token id in [0, {self.llm_vocab_size})"
            )
        if self.rope_theta <= 0 or self.rms_norm_eps <= 0:
            raise ConfigError(f"rope_theta={self.rope_theta} and rms_norm_eps={self.rms_norm_eps} must be positive")

    # ------------------------------------------------------------------ derived
    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def image_token_offset(self) -> int:
        """The largest possible id of image code 0 (``llm_vocab_size``).

        The actual offset is ``len(text tokenizer)`` (``SpecialTokenIds.image_offset``; 126349 for
        the LLaDA tokenizer), equal to this only when the tokenizer fills every text row (ours do).
        """
        return self.llm_vocab_size

    # HF-style aliases used by generic tooling (Trainer, FSDP wrap helpers, lm-eval …).
    @property
    def hidden_size(self) -> int:
        return self.d_model

    @property
    def num_hidden_layers(self) -> int:
        return self.n_layers

    @property
    def num_attention_heads(self) -> int:
        return self.n_heads

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> MMaDAConfig:
        """A named preset (``tiny``, ``small``, ``1b``, ``8b``) with optional field overrides."""
        if name not in PRESETS:
            raise ConfigError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    def with_overrides(self, overrides: dict[str, Any], *, where: str = "model.overrides") -> MMaDAConfig:
        """A copy with ``overrides`` (only :data:`CHECKPOINT_OVERRIDES` fields) applied and validated.

        Errors name the field as ``<where>.<field>``.
        """
        for name, value in overrides.items():
            if name not in CHECKPOINT_OVERRIDES:
                raise ConfigError(
                    f"{where}.{name} cannot be changed on an existing checkpoint (it decides its weights); "
                    f"allowed: {', '.join(sorted(CHECKPOINT_OVERRIDES))}"
                )
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"{where}.{name}={value!r} must be a non-negative integer")
        n = overrides.get("num_vq_tokens")
        if n is not None and (n <= 0 or math.isqrt(n) ** 2 != n):
            raise ConfigError(f"{where}.num_vq_tokens={n} must be a positive square (the image is a square grid)")
        try:
            return type(self).from_dict({**self.to_dict(), **overrides})
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None

    def num_parameters_estimate(self) -> int:
        """Parameter count implied by the config (no model instantiation needed)."""
        d, f = self.d_model, self.mlp_hidden_size
        kv = self.n_kv_heads * self.head_dim
        block = 2 * d * d + 2 * d * kv + 3 * d * f + 2 * d
        return 2 * self.embedding_size * d + self.n_layers * block + d


class LLaDAConfig(MMaDAConfig):
    """The same configuration under ``model_type="llada"`` (official LLaDA checkpoints)."""

    model_type = "llada"

    # transformers 5 turns config classes into dataclasses and generates an __init__ for subclasses
    # that lack one; define it so MMaDAConfig's reading and validation run.
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
