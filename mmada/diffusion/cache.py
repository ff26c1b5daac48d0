"""Where a sampler step gets its logits: a full forward, or Fast-dLLM's block-wise KV caches.

Diffusion LMs attend bidirectionally, so no K/V is ever exactly reusable once any token changes;
Fast-dLLM (arXiv 2505.22618; NVlabs/Fast-dLLM llada/generate.py) shows that K/V change little between
neighbouring steps and reuses them approximately:

    none    every step: model(x) over the whole sequence (the plain sampler).
    prefix  at the first step of each block: one full forward that (re)fills the cache; the other
            steps feed only x[:, block_start:] (current block + masked suffix) and attend to the
            cached K/V of everything before the block.
    dual    like prefix, but the other steps feed only the current block x[:, s:e]; the masked
            suffix's K/V also come from the block's refresh.

With ``prompt_cache="once"`` the prompt's K/V (e.g. the MMU image prefix) are computed by the
very first forward and never refreshed: block refreshes recompute only ``[P, L)``.

Text (:class:`BlockLogits`) returns the current block's logits (B, block, V); images
(:class:`ImageLogits`) cache the text prompt once and compute the LM head only for the image
slots and the codebook columns. Both count forwards and fed tokens (``stats``) for benchmarks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from mmada.models.modeling import KVCache

CacheMode = Literal["none", "prefix", "dual"]
# Every image slot can change at every MaskGIT step, so images have no dual cache.
ImageCacheMode = Literal["none", "prefix"]
PromptCache = Literal["per_block", "once"]


@dataclass
class ForwardStats:
    """Work done by a sampler: model forwards and query tokens fed (summed over rows)."""

    forwards: int = 0
    tokens: int = 0

    def add(self, x: torch.Tensor) -> None:
        self.forwards += 1
        self.tokens += x.numel()


class BlockLogits:
    """Logits of the current block ``[s, e)`` for the text block sampler under a cache mode.

    ``attention_mask`` (B, L) covers the whole sequence (every cached call attends to all L keys).
    ``prompt_len`` is P, the first generated position (used by ``prompt_cache="once"``).
    """

    def __init__(
        self, model, mode: CacheMode, attention_mask: torch.Tensor | None, prompt_len: int,
        prompt_cache: PromptCache = "per_block",
    ) -> None:
        self.model, self.mode, self.attn, self.P = model, mode, attention_mask, prompt_len
        self.prompt_once = prompt_cache == "once"
        self.cache: KVCache | None = None
        self.stats = ForwardStats()

    def __call__(self, x: torch.Tensor, s: int, e: int, refresh: bool) -> torch.Tensor:
        """x (B, L) → logits (B, e − s, V); ``refresh``: first step of a block (refills the cache)."""
        m, attn = self.model, self.attn
        if self.mode == "none":
            self.stats.add(x)
            return m(x, attention_mask=attn).logits[:, s:e]
        if self.cache is None or (refresh and not self.prompt_once):
            self.cache = self.cache or KVCache()
            self.stats.add(x)
            return m(x, attention_mask=attn, kv_cache=self.cache, cache_start=0, logits_positions=slice(s, e)).logits
        if refresh:  # prompt K/V stay from the first forward; recompute the generated region
            xin, start = x[:, self.P :], self.P
        elif self.mode == "prefix":
            xin, start = x[:, s:], s
        else:  # dual
            xin, start = x[:, s:e], s
        self.stats.add(xin)
        pos = slice(s - start, e - start)
        return m(xin, attention_mask=attn, kv_cache=self.cache, cache_start=start, logits_positions=pos).logits


class ImageLogits:
    """MaskGIT logits (B, N, C) of the image slots, restricted to the codebook columns.

    ``mode="prefix"``: the text prompt ``[0, L − N − 1)`` is encoded once (first step) and its K/V
    reused for every later step, which feeds only the image slots and ``<|eoi|>``.
    """

    def __init__(self, model, mode: Literal["none", "prefix"], attention_mask: torch.Tensor | None,
                 num_image_tokens: int, image_offset: int, codebook_size: int) -> None:
        self.model, self.mode, self.attn = model, mode, attention_mask
        self.N, self.vocab = num_image_tokens, slice(image_offset, image_offset + codebook_size)
        self.cache: KVCache | None = None
        self.stats = ForwardStats()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        L = x.shape[1]
        text_len = L - self.N - 1
        if self.mode == "none":
            self.stats.add(x)
            return self.model(x, attention_mask=self.attn).logits[:, text_len : L - 1, self.vocab]
        if self.cache is None:
            self.cache = KVCache()
            self.stats.add(x)
            return self.model(x, attention_mask=self.attn, kv_cache=self.cache, cache_start=0,
                              logits_positions=slice(text_len, L - 1), logits_vocab=self.vocab).logits
        xin = x[:, text_len:]  # (B, N + 1): image slots + <|eoi|>
        self.stats.add(xin)
        return self.model(xin, attention_mask=self.attn, kv_cache=self.cache, cache_start=text_len,
                          logits_positions=slice(0, self.N), logits_vocab=self.vocab).logits
