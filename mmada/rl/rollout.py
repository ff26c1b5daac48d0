"""Rollouts: ``G`` completions per prompt from the current policy, batched across prompts.

Four kinds, one output type (:class:`Rollout`) so the GRPO step is modality-agnostic:

* ``text`` — chat prompts (optionally with the ``<think>`` instruction), block diffusion sampler;
* ``mmu``  — the same after an image prefix (image codes), i.e. multimodal reasoning;
* ``t2i``  — captions → image codes with MaskGIT; completions handed to rewards as decoded images;
* ``r2i``  — reasoning to image: a detailed description with the block sampler after the ``<|r2i|>``
  prompt, then the image with MaskGIT conditioned on it; rewards see the decoded images.

For scoring, ``completion_mask`` marks the completion tokens whose log-probs enter the loss: for
text the answer up to and including its first EOS; the EOS fill after it is ``tail_mask`` (masked
in the policy's input, as at sampling time, but not scored — dLLM-RL's convention). For t2i it is
the image slots, scored over the codebook slice of the vocabulary. For r2i it is the description up
to and including its first EOS plus the image slots, scored over the whole vocabulary (the r2i loss
trains both parts with one output distribution); the EOS fill between them is the tail.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from mmada.diffusion.sampling import generate_image, generate_text
from mmada.diffusion.settings import ImageSamplerSettings, SamplerSettings
from mmada.errors import ConfigError
from mmada.tokenization import SequenceBuilder, left_pad


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


@torch.no_grad()
def rollout_r2i(
    model, builder: SequenceBuilder, captions: Sequence[str], num_generations: int, *, text: SamplerSettings,
    image: ImageSamplerSettings, decode: Callable[[torch.Tensor], list] | None, num_image_tokens: int,
    codebook_size: int, max_text_len: int, generator: torch.Generator | None = None,
) -> Rollout:
    """``num_generations`` (description, image) pairs per caption (``SequenceBuilder.r2i_from_ids`` rows).

    ``max_text_len`` (the text slots before ``<|soi|>``) must hold the prompt, ``text.gen_length`` and an EOS.
    """
    sp = builder.special
    dev = next(model.parameters()).device
    caps = [c for c in captions for _ in range(num_generations)]
    prompts = [builder.r2i_prompt(c) for c in caps]
    need = max(len(p) - 1 for p in prompts) + text.gen_length + 1
    if need > max_text_len:
        raise ConfigError(f"max_text_len={max_text_len} cannot hold the r2i prompt, gen_length={text.gen_length} "
                          f"and an EOS ({need} tokens)")
    ids, attn = left_pad(prompts, sp.eos)
    gen = generate_text(model, ids.to(dev), text, attention_mask=attn.to(dev), mask_id=sp.mask, eos_id=sp.eos,
                        eot_id=sp.eot, generator=generator)[:, ids.shape[1]:].cpu()
    answers = [row[: row.index(sp.eos)] if sp.eos in row else row for row in gen.tolist()]
    cond = builder.r2i_from_ids(prompts, answers, num_image_tokens=num_image_tokens, max_text_len=max_text_len)
    uncond = builder.r2i_from_ids([[sp.r2i, sp.bos]] * len(caps), [[]] * len(caps), num_image_tokens=num_image_tokens,
                                  max_text_len=max_text_len)
    cond, uncond = cond.to(dev), uncond.to(dev)
    codes = generate_image(
        model, cond.input_ids, image, attention_mask=cond.attention_mask, uncond_input_ids=uncond.input_ids,
        uncond_attention_mask=uncond.attention_mask, codebook_size=codebook_size, image_offset=sp.image_offset,
        num_image_tokens=num_image_tokens, mask_id=sp.mask, generator=generator,
    )
    seqs = cond.input_ids.clone()
    seqs[cond.image_mask] = (codes + sp.image_offset).reshape(-1)
    text_target = ~cond.prompt_mask & ~cond.image_mask  # (N, L) description + EOS fill
    n_scored = torch.tensor([len(a) + 1 for a in answers], device=dev)  # the description and its first EOS
    scored_text = text_target & (text_target.cumsum(1) <= n_scored[:, None])
    images = decode(codes) if decode is not None else [c for c in codes]
    return Rollout(
        "r2i", seqs, cond.attention_mask, cond.prompt_mask, scored_text | cond.image_mask, text_target & ~scored_text,
        images, [i for i in range(len(captions)) for _ in range(num_generations)],
        extra={"codes": codes, "answers": builder.tokenizer.batch_decode(answers, skip_special_tokens=True)},
    )
