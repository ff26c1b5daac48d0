"""``MMaDAModelLM``: the LLaDA/MMaDA bidirectional transformer (one block type, official names).

The module tree reproduces the official parameter names exactly, so ``from_pretrained`` loads an
official MMaDA-8B or LLaDA-8B checkpoint directory (sharded safetensors + index) with no missing
or unexpected keys and without ``trust_remote_code``::

    model.transformer.wte.weight                   (V, d)
    model.transformer.blocks.{i}.attn_norm.weight  (d,)
    model.transformer.blocks.{i}.{q,k,v}_proj.weight, attn_out.weight
    model.transformer.blocks.{i}.ff_norm.weight    (d,)
    model.transformer.blocks.{i}.ff_proj.weight    (f, d)   gate, goes through SiLU
    model.transformer.blocks.{i}.up_proj.weight    (f, d)
    model.transformer.blocks.{i}.ff_out.weight     (d, f)
    model.transformer.ln_f.weight                  (d,)
    model.transformer.ff_out.weight                (V, d)   untied LM head

Numerics follow the reference: RMSNorm and RoPE (NeoX "rotate half" convention) in fp32,
attention through ``scaled_dot_product_attention`` without a causal mask. The model holds no
parallelism code: FSDP and activation checkpointing are applied from outside
(``mmada.training``), HF activation checkpointing via ``activation_checkpointing_enable()``.

Cached decoding (Fast-dLLM's prefix/dual cache, used by ``mmada.diffusion`` samplers) goes
through :class:`KVCache`, not HF's ``past_key_values``/``use_cache`` (whose append-only causal
semantics do not fit a bidirectional model)::

    cache = KVCache()
    model(x, kv_cache=cache)                              # full pass: K/V of all L positions stored
    model(x[:, s:], kv_cache=cache, cache_start=s)        # prefix cache: queries s.., keys 0..L
    model(x[:, s:e], kv_cache=cache, cache_start=s)       # dual cache: [e, L) keys are the stored ones

The new tokens' K/V overwrite the cache at ``[cache_start, cache_start + T)``; attention runs
over ``[0, max(cache.length, cache_start + T))``. Keys keep the RoPE rotation of the positions
they were computed at, and new tokens default to positions ``cache_start + arange(T)``.
``logits_positions``/``logits_vocab`` restrict the LM head to the rows/columns a sampler reads.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import MaskedLMOutput

from mmada.errors import ConfigError
from mmada.models.configuration import MMaDAConfig


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32 for half/bf16/fp32 inputs (as the reference), fp64 stays fp64 (exact tests)."""
    return torch.promote_types(dtype, torch.float32)


class RMSNorm(nn.Module):
    """``weight * x / sqrt(mean(x²) + eps)``, normalised in fp32 and cast back before the weight."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x32 = x.to(_compute_dtype(dtype))
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(dtype)


def rope_cos_sin(
    positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables (fp32 by default) for integer ``positions`` (T,) or (B, T) → (…, T, head_dim)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=dtype) / head_dim))
    freqs = positions.to(dtype)[..., None] * inv_freq  # (…, T, hd/2)
    emb = torch.cat((freqs, freqs), dim=-1)  # (…, T, hd): NeoX layout, halves repeated
    return emb.cos(), emb.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` (B, H, T, hd) in fp32; ``cos``/``sin`` broadcast as (T, hd) or (B, 1, T, hd)."""
    x32 = x.to(_compute_dtype(x.dtype))
    return (x32 * cos + rotate_half(x32) * sin).to(x.dtype)


def build_attention_bias(
    attention_mask: torch.Tensor | None,
    attention_bias: torch.Tensor | None,
    dtype: torch.dtype,
    q_len: int,
    k_len: int,
) -> torch.Tensor | None:
    """An additive float mask (B, 1|H, q_len, k_len) for SDPA, or None for full attention.

    ``attention_mask``: (B, k_len) padding mask, 1/True = real token. Only *keys* are masked, so
    padded query rows still attend somewhere (their outputs are never used).
    ``attention_bias``: bool (B, [1,] q_len, k_len) with True = may attend (the official MMaDA
    convention, typically ``m[:, :, None] & m[:, None, :]``), or an additive float mask.
    Bool masks become ``0`` / ``finfo(dtype).min`` so fully masked rows give a uniform (finite)
    attention instead of NaN, as in the reference.
    """
    bias = None
    if attention_bias is not None:
        if attention_bias.dim() == 3:
            attention_bias = attention_bias[:, None]
        if attention_bias.dim() != 4 or attention_bias.shape[-2:] != (q_len, k_len):
            raise ConfigError(
                f"attention_bias has shape {tuple(attention_bias.shape)}; expected (B, 1, {q_len}, {k_len})"
            )
        if attention_bias.dtype == torch.bool:
            bias = torch.zeros(attention_bias.shape, dtype=dtype, device=attention_bias.device)
            bias.masked_fill_(~attention_bias, torch.finfo(dtype).min)
        else:
            bias = attention_bias.to(dtype)
    if attention_mask is not None:
        if attention_mask.dim() != 2 or attention_mask.shape[-1] != k_len:
            raise ConfigError(
                f"attention_mask has shape {tuple(attention_mask.shape)}; expected (B, {k_len})"
            )
        keep = attention_mask.bool()
        # Skipping an all-True mask keeps SDPA on its unmasked kernels, but asking costs a device→host
        # sync on an accelerator: there the (all-zero) pad bias is built instead, with the same result.
        if keep.device.type != "cpu" or not bool(keep.all()):
            pad = torch.zeros(keep.shape, dtype=dtype, device=keep.device)
            pad.masked_fill_(~keep, torch.finfo(dtype).min)
            pad = pad[:, None, None, :]  # (B, 1, 1, k_len)
            bias = pad if bias is None else torch.maximum(bias + pad, torch.tensor(torch.finfo(dtype).min, dtype=dtype))
    return bias


def check_ids(input_ids: torch.Tensor, vocab: int) -> None:
    """Raise :class:`ConfigError` when ``input_ids`` hold ids outside ``[0, vocab)`` (one sync on a device)."""
    if input_ids.numel():
        lo, hi = (int(v) for v in torch.aminmax(input_ids))
        if lo < 0 or hi >= vocab:
            raise ConfigError(f"input_ids contain ids outside [0, {vocab}) (min {lo}, max {hi}): "
                              "tokenizer and checkpoint vocab disagree")


class KVCache:
    """Per-layer key/value buffers for cached diffusion decoding (see the module docstring).

    ``keys[i]``/``values[i]``: (B, H_kv, capacity, head_dim) in the model's dtype, RoPE already
    applied to the keys; ``length``: the number of valid positions (the key length of the last
    forward). Buffers are allocated by the first forward and grow when a write goes past them.
    """

    def __init__(self) -> None:
        self.keys: list[torch.Tensor | None] = []
        self.values: list[torch.Tensor | None] = []
        self.length = 0

    @property
    def batch_size(self) -> int | None:
        return None if not self.keys or self.keys[0] is None else self.keys[0].shape[0]

    def check(self, batch: int, start: int, dtype: torch.dtype) -> None:
        """Raise :class:`ConfigError` if a write of ``batch`` rows at ``start`` cannot use this cache."""
        if start < 0 or start > self.length:
            raise ConfigError(f"cache_start={start} is outside the cached length [0, {self.length}]")
        if self.length and self.batch_size != batch:
            raise ConfigError(f"kv_cache holds {self.batch_size} rows but input_ids has {batch}")
        if self.length and self.keys[0].dtype != dtype:
            raise ConfigError(f"kv_cache dtype {self.keys[0].dtype} != model dtype {dtype}")

    def write(
        self, layer: int, k: torch.Tensor, v: torch.Tensor, start: int, key_len: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k/v (B, H_kv, T, hd) at ``[start, start + T)``; return keys/values ``[0, key_len)``."""
        while len(self.keys) <= layer:
            self.keys.append(None)
            self.values.append(None)
        kb, vb = self.keys[layer], self.values[layer]
        if kb is None or kb.shape[2] < key_len:
            B, H, _, hd = k.shape
            nk = k.new_empty((B, H, key_len, hd))
            nv = v.new_empty((B, H, key_len, hd))
            if kb is not None and self.length:
                nk[:, :, : self.length] = kb[:, :, : self.length]
                nv[:, :, : self.length] = vb[:, :, : self.length]
            kb, vb = self.keys[layer], self.values[layer] = nk, nv
        T = k.shape[2]
        kb[:, :, start : start + T] = k
        vb[:, :, start : start + T] = v
        return kb[:, :, :key_len], vb[:, :, :key_len]


class MMaDABlock(GradientCheckpointingLayer):
    """LLaDA's Llama block: pre-RMSNorm, bidirectional attention with RoPE, SiLU-gated MLP."""

    def __init__(self, config: MMaDAConfig) -> None:
        super().__init__()
        d, hd = config.d_model, config.head_dim
        self.n_heads, self.n_kv_heads, self.head_dim = config.n_heads, config.n_kv_heads, hd
        self.attn_norm = RMSNorm(d, config.rms_norm_eps)
        self.q_proj = nn.Linear(d, config.n_heads * hd, bias=False)
        self.k_proj = nn.Linear(d, config.n_kv_heads * hd, bias=False)
        self.v_proj = nn.Linear(d, config.n_kv_heads * hd, bias=False)
        self.attn_out = nn.Linear(config.n_heads * hd, d, bias=False)
        self.ff_norm = RMSNorm(d, config.rms_norm_eps)
        self.ff_proj = nn.Linear(d, config.mlp_hidden_size, bias=False)  # gate
        self.up_proj = nn.Linear(d, config.mlp_hidden_size, bias=False)
        self.ff_out = nn.Linear(config.mlp_hidden_size, d, bias=False)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, attn_bias: torch.Tensor | None,
        cache: tuple[KVCache, int, int, int] | None = None,
    ) -> torch.Tensor:
        """``cache``: (kv_cache, layer index, cache_start, key_len) for cached decoding, else None."""
        B, T, _ = x.shape
        h = self.attn_norm(x)
        q = self.q_proj(h).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, hd)
        k = self.k_proj(h).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, Hkv, T, hd)
        v = self.v_proj(h).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            kv_cache, layer, start, key_len = cache
            k, v = kv_cache.write(layer, k, v, start, key_len)  # (B, Hkv, key_len, hd)
        a = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_bias, is_causal=False, enable_gqa=self.n_kv_heads != self.n_heads
        )  # (B, H, T, hd)
        x = x + self.attn_out(a.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))
        h = self.ff_norm(x)
        return x + self.ff_out(F.silu(self.ff_proj(h)) * self.up_proj(h))


class MMaDAModel(nn.Module):
    """The backbone; its ``transformer`` ModuleDict carries the official key names."""

    def __init__(self, config: MMaDAConfig) -> None:
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.embedding_size, config.d_model),
                blocks=nn.ModuleList(MMaDABlock(config) for _ in range(config.n_layers)),
                ln_f=RMSNorm(config.d_model, config.rms_norm_eps),
                ff_out=nn.Linear(config.d_model, config.embedding_size, bias=False),
            )
        )

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        attention_bias: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        kv_cache: KVCache | None = None,
        cache_start: int | None = None,
        logits_positions: slice | None = None,
        logits_vocab: slice | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
        B, T = input_ids.shape
        x = self.transformer.wte(input_ids)  # (B, T, d); no embedding scale, no wpe
        start, key_len = 0, T
        if kv_cache is not None:
            start = kv_cache.length if cache_start is None else int(cache_start)
            kv_cache.check(B, start, x.dtype)
            key_len = max(kv_cache.length, start + T)
        elif cache_start is not None:
            raise ConfigError("cache_start needs a kv_cache")
        if position_ids is None:
            position_ids = torch.arange(start, start + T, device=input_ids.device)
        cos, sin = rope_cos_sin(position_ids, self.config.head_dim, self.config.rope_theta, _compute_dtype(x.dtype))
        if cos.dim() == 3:  # per-row positions (B, T, hd) -> (B, 1, T, hd)
            cos, sin = cos[:, None], sin[:, None]
        bias = build_attention_bias(attention_mask, attention_bias, x.dtype, T, key_len)
        hidden = [] if output_hidden_states else None
        for i, block in enumerate(self.transformer.blocks):
            if hidden is not None:
                hidden.append(x)
            x = block(x, cos, sin, bias, None if kv_cache is None else (kv_cache, i, start, key_len))
        if kv_cache is not None:
            kv_cache.length = key_len
        x = self.transformer.ln_f(x)
        if hidden is not None:
            hidden.append(x)
        head = self.transformer.ff_out
        if logits_positions is None and logits_vocab is None:
            return head(x), (tuple(hidden) if hidden is not None else None)
        h = x if logits_positions is None else x[:, logits_positions]  # (B, t, d)
        w = head.weight if logits_vocab is None else head.weight[logits_vocab]  # (v, d)
        return F.linear(h, w), (tuple(hidden) if hidden is not None else None)


class MMaDAModelLM(PreTrainedModel):
    """The unified masked-diffusion LM (text tokens + image codes in one vocabulary).

    ``model(input_ids).logits`` has shape (B, T, embedding_size). Padding: pass a (B, T)
    ``attention_mask`` (1 = token) or an official-style bool ``attention_bias`` (B, 1, T, T);
    with neither, every position attends to every other (the behaviour of the released
    checkpoints before the upstream mask fix, Gen-Verse/MMaDA commit 0ef94ba; see docs/model.md).

    Cached decoding: ``kv_cache=KVCache()`` (+ ``cache_start``) as in the module docstring; the
    masks then cover the keys, ``attention_mask`` (B, key_len), ``attention_bias`` (B, 1, T, key_len).
    """

    config_class = MMaDAConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _no_split_modules = ("MMaDABlock",)
    _supports_sdpa = True

    def __init__(self, config: MMaDAConfig) -> None:
        super().__init__(config)
        self.model = MMaDAModel(config)
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Embedding)):
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, RMSNorm):
            init.ones_(module.weight)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.transformer.wte

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.transformer.wte = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.model.transformer.ff_out

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.model.transformer.ff_out = value

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_bias: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        kv_cache: KVCache | None = None,
        cache_start: int | None = None,
        logits_positions: slice | None = None,
        logits_vocab: slice | None = None,
        **kwargs,
    ) -> MaskedLMOutput:
        """Logits (B, T, V), or (B, t, v) for the ``logits_positions`` rows / ``logits_vocab`` columns."""
        if kwargs.get("past_key_values") is not None or kwargs.get("use_cache"):
            raise ConfigError(
                "MMaDAModelLM.forward has no HF use_cache/past_key_values (causal append semantics); "
                "pass kv_cache=KVCache() and cache_start (see mmada.diffusion samplers)"
            )
        if input_ids.dim() != 2:
            raise ConfigError(f"input_ids must be (batch, seq_len), got shape {tuple(input_ids.shape)}")
        if input_ids.device.type == "cpu":
            # On an accelerator this check is a device→host sync per forward: ids are checked where they
            # enter instead (check_ids in the training module's batch transfer and the samplers' prompts).
            check_ids(input_ids, self.config.embedding_size)
        logits, hidden = self.model(
            input_ids,
            attention_mask=attention_mask,
            attention_bias=attention_bias,
            position_ids=position_ids,
            output_hidden_states=output_hidden_states,
            kv_cache=kv_cache,
            cache_start=cache_start,
            logits_positions=logits_positions,
            logits_vocab=logits_vocab,
        )
        return MaskedLMOutput(logits=logits, hidden_states=hidden)

    @torch.no_grad()
    def resize_token_embeddings(self, new_num_tokens: int | None = None, *args, **kwargs) -> nn.Embedding:
        """Grow the vocabulary (e.g. LLaDA's 126464 → MMaDA's 134656 = + 8192 image codes).

        The new rows of the embedding and of the (untied) head are the mean of the old rows, as the
        official stage 1 got them: Gen-Verse/MMaDA training/train_mmada.py calls HF's
        ``resize_token_embeddings`` under its pinned transformers 4.46.0, whose mean resizing samples
        from N(mean, 1e-9·cov) only if ``torch.linalg.eigvals(cov)`` is not complex — it always is, so
        every new row is the mean. (Later transformers sample; this keeps the official, deterministic
        rows.) Only growing is supported.
        """
        wte, head = self.get_input_embeddings(), self.get_output_embeddings()
        if new_num_tokens is None:
            return wte
        n_old, d = wte.weight.shape
        if new_num_tokens < n_old:
            raise ConfigError(f"resize_token_embeddings: {new_num_tokens} < the current {n_old} rows; only growing")
        new_wte = nn.Embedding(new_num_tokens, d, device=wte.weight.device, dtype=wte.weight.dtype)
        new_head = nn.Linear(d, new_num_tokens, bias=False, device=head.weight.device, dtype=head.weight.dtype)
        for new, old in ((new_wte, wte), (new_head, head)):
            new.weight[:n_old] = old.weight
            new.weight[n_old:] = old.weight.float().mean(dim=0).to(old.weight.dtype)  # (d,) broadcast
            new.weight.requires_grad_(old.weight.requires_grad)
        self.set_input_embeddings(new_wte)
        self.set_output_embeddings(new_head)
        self.config.embedding_size = self.config.vocab_size = new_num_tokens
        return new_wte
