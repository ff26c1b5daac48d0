"""Samplers: LLaDA's semi-autoregressive block sampler for text/MMU and MaskGIT for images.

Text (``generate_text``; shared/reference/mmada.md §5.1, §8.2): the answer starts fully masked and
is decoded ``block_length`` tokens at a time, left to right; inside a block, each of
``steps / num_blocks`` steps predicts every masked token and commits the ``k`` most confident
ones (``k`` splits the block's masks evenly over the steps, the remainder going to the earliest
steps). Sampling uses the Gumbel-max trick in float64; at temperature 0 it is greedy and the
tokens equal the reference algorithm's exactly. Classifier-free guidance masks the prompt for
the unconditional pass: ``un + (w + 1)(cond − un)``.

Images (``generate_image``; §5.2): MaskGIT over the image slots with a cosine schedule, MUSE-style
guidance ``(1 + w)·cond − w·uncond``, only the codebook slice of the logits sampled, and the
confidence noise annealed by ``temperature · Π(1 − step/T)`` (the reference's compounding decay;
``temperature_decay="linear"`` gives ``temperature · (1 − step/T)``).

Multimodal understanding is ``generate_text`` on a prompt that starts with the image prefix
(``SequenceBuilder.mmu``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from mmada.diffusion.masking import get_schedule
from mmada.errors import SamplerError

StepCallback = Callable[[dict], None]


def _safe_log(t: torch.Tensor) -> torch.Tensor:
    return torch.log(t.clamp(min=1e-20))


def add_gumbel_noise(
    logits: torch.Tensor, temperature: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``exp(l) / (−log u)^τ`` in float64 (= argmax-equivalent to ``l/τ + Gumbel``); identity at τ = 0."""
    if temperature == 0:
        return logits
    logits = logits.to(torch.float64)
    u = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=torch.float64)
    return logits.exp() / (-torch.log(u)) ** temperature


def num_transfer_tokens(mask_index: torch.Tensor, steps: int) -> torch.Tensor:
    """Tokens to unmask at each of ``steps`` steps, per row: (B, steps), summing to the mask count."""
    n = mask_index.sum(dim=1, keepdim=True)  # (B, 1)
    base, rem = n // steps, n % steps
    out = base.expand(-1, steps).clone()
    out += (torch.arange(steps, device=mask_index.device)[None] < rem).long()
    return out


def _check_text_args(prompt_ids, steps, gen_length, block_length, mask_id, remasking, attention_mask):
    if prompt_ids.dim() != 2:
        raise SamplerError(f"prompt_ids must be (batch, prompt_len), got shape {tuple(prompt_ids.shape)}")
    if gen_length <= 0 or block_length <= 0 or steps <= 0:
        raise SamplerError(f"gen_length={gen_length}, block_length={block_length}, steps={steps} must be positive")
    if gen_length % block_length:
        raise SamplerError(f"gen_length={gen_length} is not divisible by block_length={block_length}")
    num_blocks = gen_length // block_length
    if steps % num_blocks:
        raise SamplerError(f"steps={steps} is not divisible by the number of blocks gen_length/block_length={num_blocks}")
    if remasking not in ("low_confidence", "random"):
        raise SamplerError(f"remasking={remasking!r}; expected 'low_confidence' or 'random'")
    real = prompt_ids == mask_id
    if attention_mask is not None:
        if attention_mask.shape != prompt_ids.shape:
            raise SamplerError(
                f"attention_mask shape {tuple(attention_mask.shape)} != prompt_ids shape {tuple(prompt_ids.shape)}"
            )
        real &= attention_mask.bool()
    if bool(real.any()):
        rows = sorted({int(r) for r in real.nonzero()[:, 0]})
        raise SamplerError(f"prompt rows {rows} contain the mask token id {mask_id}; remove it from the prompt")
    return num_blocks


def _mask_id(model, mask_id: int | None) -> int:
    if mask_id is not None:
        return int(mask_id)
    try:
        return int(model.config.mask_token_id)
    except AttributeError:
        raise SamplerError("mask_id not given and the model has no config.mask_token_id") from None


@torch.no_grad()
def generate_text(
    model,
    prompt_ids: torch.Tensor,
    *,
    steps: int,
    gen_length: int,
    block_length: int,
    temperature: float = 0.0,
    cfg_scale: float = 0.0,
    remasking: str = "low_confidence",
    mask_id: int | None = None,
    attention_mask: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    on_step: StepCallback | None = None,
) -> torch.Tensor:
    """Generate ``gen_length`` tokens after ``prompt_ids`` (B, P); returns (B, P + gen_length).

    Batches are left-padded: pass the (B, P) ``attention_mask`` (False on padding). ``on_step``
    receives ``{"block", "step", "x", "transfer"}`` after every step (x is a copy).
    """
    mask_id = _mask_id(model, mask_id)
    num_blocks = _check_text_args(prompt_ids, steps, gen_length, block_length, mask_id, remasking, attention_mask)
    steps_per_block = steps // num_blocks
    B, P = prompt_ids.shape
    dev = prompt_ids.device
    x = torch.full((B, P + gen_length), mask_id, dtype=torch.long, device=dev)
    x[:, :P] = prompt_ids
    attn = None
    if attention_mask is not None:
        attn = torch.cat([attention_mask.bool(), torch.ones((B, gen_length), dtype=torch.bool, device=dev)], 1)
    prompt_index = torch.zeros_like(x, dtype=torch.bool)
    prompt_index[:, :P] = True
    for b in range(num_blocks):
        s, e = P + b * block_length, P + (b + 1) * block_length
        k_per_step = num_transfer_tokens(x[:, s:e] == mask_id, steps_per_block)  # (B, steps_per_block)
        for i in range(steps_per_block):
            if cfg_scale > 0:
                un_x = x.clone()
                un_x[prompt_index] = mask_id
                both = model(torch.cat([x, un_x]), attention_mask=None if attn is None else attn.repeat(2, 1)).logits
                cond, un = both.chunk(2)
                logits = un + (cfg_scale + 1) * (cond - un)
            else:
                logits = model(x, attention_mask=attn).logits
            # Only the current block can be committed: positions after it get confidence −inf and
            # positions before it are already decoded, so the work is restricted to the block.
            blk = logits[:, s:e]  # (B, block, V)
            x0 = add_gumbel_noise(blk, temperature, generator).argmax(dim=-1)  # (B, block)
            if remasking == "low_confidence":
                p = torch.softmax(blk.to(torch.float64), dim=-1)
                conf = torch.gather(p, -1, x0[..., None]).squeeze(-1)
            else:
                conf = torch.rand(x0.shape, generator=generator, device=dev, dtype=torch.float64)
            masked = x[:, s:e] == mask_id
            conf = torch.where(masked, conf, torch.tensor(-math.inf, dtype=conf.dtype, device=dev))
            transfer = torch.zeros_like(masked)
            for j in range(B):
                k = int(k_per_step[j, i])
                if k:
                    transfer[j, torch.topk(conf[j], k=k).indices] = True
            x[:, s:e] = torch.where(transfer, x0, x[:, s:e])
            if on_step is not None:
                on_step({"block": b, "step": i, "x": x.clone(), "transfer": transfer.clone()})
    return x


@torch.no_grad()
def generate_image(
    model,
    input_ids: torch.Tensor,
    *,
    codebook_size: int,
    image_offset: int,
    num_image_tokens: int | None = None,
    attention_mask: torch.Tensor | None = None,
    uncond_input_ids: torch.Tensor | None = None,
    uncond_attention_mask: torch.Tensor | None = None,
    steps: int = 12,
    guidance_scale: float = 0.0,
    temperature: float = 1.0,
    schedule: str = "cosine",
    temperature_decay: str = "cumulative",
    mask_id: int | None = None,
    generator: torch.Generator | None = None,
    on_step: StepCallback | None = None,
) -> torch.Tensor:
    """MaskGIT decoding of the image slots of t2i rows; returns image codes (B, N) in [0, codebook_size).

    ``input_ids`` (B, L) are t2i rows (``SequenceBuilder.t2i``) whose ``N`` image slots, at
    ``[-(N+1):-1]`` before ``<|eoi|>``, are masked (or partly given, for inpainting). With
    ``guidance_scale > 0``, ``uncond_input_ids`` are the same layout with an empty caption; their
    text part is combined with the current image slots at every step.
    """
    mask_id = _mask_id(model, mask_id)
    N = int(num_image_tokens or model.config.num_vq_tokens)
    if steps <= 0:
        raise SamplerError(f"steps={steps} must be positive")
    if temperature_decay not in ("cumulative", "linear"):
        raise SamplerError(f"temperature_decay={temperature_decay!r}; expected 'cumulative' or 'linear'")
    if input_ids.dim() != 2 or input_ids.shape[1] < N + 1:
        raise SamplerError(f"input_ids shape {tuple(input_ids.shape)} cannot hold {N} image tokens + <|eoi|>")
    if guidance_scale > 0 and uncond_input_ids is None:
        raise SamplerError("guidance_scale > 0 needs uncond_input_ids (the same layout with an empty caption)")
    if uncond_input_ids is not None and uncond_input_ids.shape != input_ids.shape:
        raise SamplerError(
            f"uncond_input_ids shape {tuple(uncond_input_ids.shape)} != input_ids shape {tuple(input_ids.shape)}"
        )
    gamma = get_schedule(schedule)
    x = input_ids.clone()
    B = x.shape[0]
    img = slice(x.shape[1] - N - 1, x.shape[1] - 1)
    # Unknown slots are tracked in token space (image tokens are >= image_offset, the mask is a text
    # token), so any mask id works, even one that is also a valid code number.
    given = x[:, img] != mask_id
    if bool((given & ((x[:, img] < image_offset) | (x[:, img] >= image_offset + codebook_size))).any()):
        raise SamplerError(f"given image tokens fall outside [image_offset, image_offset + {codebook_size})")
    sampled = torch.where(given, x[:, img] - image_offset, 0)
    for step in range(steps):
        if guidance_scale > 0:
            un = uncond_input_ids.clone()
            un[:, img] = x[:, img]
            am = None
            if attention_mask is not None or uncond_attention_mask is not None:
                ones = torch.ones_like(x, dtype=torch.bool)
                am = torch.cat([ones if attention_mask is None else attention_mask.bool(),
                                ones if uncond_attention_mask is None else uncond_attention_mask.bool()])
            cond, unc = model(torch.cat([x, un]), attention_mask=am).logits.chunk(2)
            logits = (1 + guidance_scale) * cond - guidance_scale * unc
        else:
            logits = model(x, attention_mask=attention_mask).logits
        logits = logits[:, img, image_offset : image_offset + codebook_size].float()  # (B, N, C)
        probs = torch.softmax(logits, dim=-1)
        draw = torch.multinomial(probs.reshape(-1, codebook_size), 1, generator=generator).view(B, N)
        unknown = x[:, img] == mask_id
        sampled = torch.where(unknown, draw, x[:, img] - image_offset)
        ratio = (step + 1) / steps
        mask_ratio = gamma(torch.tensor(ratio))
        conf = torch.gather(probs, -1, sampled[..., None]).squeeze(-1)
        conf = torch.where(unknown, conf, torch.finfo(conf.dtype).max)
        # Re-mask at least one and at most (#unknown − 1) tokens: the next step always has work.
        mask_len = torch.floor(N * mask_ratio).to(x.device)[None, None].expand(B, 1)
        mask_len = torch.maximum(torch.ones_like(mask_len), torch.minimum(unknown.sum(-1, keepdim=True) - 1, mask_len))
        temperature = temperature * (1 - ratio) if temperature_decay == "cumulative" else temperature
        temp_now = temperature if temperature_decay == "cumulative" else temperature * (1 - ratio)
        u = torch.rand(conf.shape, generator=generator, device=conf.device)
        noisy_conf = _safe_log(conf) + temp_now * -_safe_log(-_safe_log(u))  # log p + τ·Gumbel
        cutoff = torch.gather(noisy_conf.sort(dim=-1).values, 1, mask_len.long())
        remask = noisy_conf < cutoff
        x[:, img] = torch.where(remask, mask_id, sampled + image_offset)
        if on_step is not None:
            on_step({"step": step, "remasked": remask.clone(), "sampled": sampled.clone()})
    return sampled
