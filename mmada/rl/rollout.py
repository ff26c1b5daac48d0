"""Rollouts: ``G`` completions per prompt from the current policy, batched across prompts.

Three kinds, one output type (:class:`Rollout`) so the GRPO step is modality-agnostic:

* ``text`` — chat prompts (optionally with the ``<think>`` instruction), block diffusion sampler;
* ``mmu``  — the same after an image prefix (image codes), i.e. multimodal reasoning;
* ``t2i``  — captions → image codes with MaskGIT; completions handed to rewards as decoded images.

For scoring, ``completion_mask`` marks the completion tokens whose log-probs enter the loss: for
text the answer up to and including its first EOS; the EOS fill after it is ``tail_mask`` (masked
in the policy's input, as at sampling time, but not scored — dLLM-RL's convention). For t2i it is
the image slots, scored over the codebook slice of the vocabulary.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from mmada.diffusion.sampling import generate_image, generate_text
from mmada.diffusion.settings import ImageSamplerSettings, SamplerSettings
from mmada.tokenization import SequenceBuilder


@dataclass
class Rollout:
    kind: str  # text | mmu | t2i
    sequences: torch.Tensor  # (N, L) prompt + completion ids (N = prompts × G)
    attention_mask: torch.Tensor  # (N, L) bool
    prompt_mask: torch.Tensor  # (N, L) bool, conditioning tokens (never masked by UniGRPO)
    completion_mask: torch.Tensor  # (N, L) bool, scored tokens
    tail_mask: torch.Tensor  # (N, L) bool, unscored completion tail (EOS fill), masked in the input
    completions: list[Any]  # decoded: str (text/mmu) or PIL images (t2i)
    prompt_index: list[int]  # (N,) which prompt each completion belongs to
    vocab_slice: tuple[int, int] | None = None  # t2i: (image_offset, image_offset + codebook)
    extra: dict = field(default_factory=dict)

    @property
    def completion_lengths(self) -> torch.Tensor:
        return self.completion_mask.sum(dim=1)


def _text_masks(seqs: torch.Tensor, prompt_len: int, eos: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Completion tokens up to and including the first EOS are scored; the rest is the tail."""
    N, L = seqs.shape
    pos = torch.arange(L, device=seqs.device)[None].expand(N, L)
    gen = pos >= prompt_len
    is_eos = (seqs == eos) & gen
    first = torch.where(is_eos.any(1), torch.where(is_eos, pos, L).min(1).values, L - 1)  # (N,)
    scored = gen & (pos <= first[:, None])
    return scored, gen & ~scored


@torch.no_grad()
def rollout_text(
    model, builder: SequenceBuilder, prompts: Sequence, num_generations: int, *, image_codes: torch.Tensor | None = None,
    settings: SamplerSettings, think: bool = True, generator: torch.Generator | None = None,
) -> Rollout:
    """``num_generations`` answers per prompt sampled with ``settings`` (``image_codes`` (P, N) given → MMU)."""
    sp = builder.special
    dev = next(model.parameters()).device
    if image_codes is not None:
        batch = builder.mmu(image_codes, prompts, think=think)
        kind = "mmu"
    else:
        batch = builder.chat(prompts, think=think)
        kind = "text"
    rep = lambda t: t.repeat_interleave(num_generations, dim=0).to(dev)  # noqa: E731
    ids, attn = rep(batch.input_ids), rep(batch.attention_mask)
    seqs = generate_text(model, ids, settings, attention_mask=attn, mask_id=sp.mask, eos_id=sp.eos, eot_id=sp.eot,
                         generator=generator)
    P = ids.shape[1]
    full_attn = torch.cat([attn, torch.ones((len(seqs), settings.gen_length), dtype=torch.bool, device=dev)], 1)
    prompt_mask = torch.zeros_like(full_attn)
    prompt_mask[:, :P] = True
    scored, tail = _text_masks(seqs, P, sp.eos)
    texts = builder.tokenizer.batch_decode(seqs[:, P:], skip_special_tokens=True)
    return Rollout(kind, seqs, full_attn, prompt_mask, scored, tail, texts,
                   [i for i in range(len(prompts)) for _ in range(num_generations)])


@torch.no_grad()
def rollout_t2i(
    model, builder: SequenceBuilder, captions: Sequence[str], num_generations: int, *,
    settings: ImageSamplerSettings, decode: Callable[[torch.Tensor], list] | None, num_image_tokens: int,
    codebook_size: int, max_text_len: int = 32, generator: torch.Generator | None = None,
) -> Rollout:
    """``num_generations`` images per caption sampled with ``settings``; ``decode(codes (N, n)) -> list of PIL
    images`` for the rewards."""
    dev = next(model.parameters()).device
    caps = [c for c in captions for _ in range(num_generations)]
    cond = builder.t2i(caps, num_image_tokens=num_image_tokens, max_text_len=max_text_len).to(dev)
    uncond = builder.t2i([""] * len(caps), num_image_tokens=num_image_tokens, max_text_len=max_text_len).to(dev)
    codes = generate_image(
        model, cond.input_ids, settings, attention_mask=cond.attention_mask, uncond_input_ids=uncond.input_ids,
        uncond_attention_mask=uncond.attention_mask, codebook_size=codebook_size,
        image_offset=builder.special.image_offset, num_image_tokens=num_image_tokens, mask_id=builder.special.mask,
        generator=generator,
    )
    seqs = cond.input_ids.clone()
    seqs[cond.image_mask] = (codes + builder.special.image_offset).reshape(-1)
    off = builder.special.image_offset
    images = decode(codes) if decode is not None else [c for c in codes]
    return Rollout(
        "t2i", seqs, cond.attention_mask, ~cond.image_mask, cond.image_mask.clone(),
        torch.zeros_like(cond.image_mask), images,
        [i for i in range(len(captions)) for _ in range(num_generations)],
        vocab_slice=(off, off + codebook_size), extra={"codes": codes},
    )
