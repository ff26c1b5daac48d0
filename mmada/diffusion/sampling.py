"""Samplers: LLaDA's semi-autoregressive block sampler for text/MMU and MaskGIT for images.

Text (``generate_text``; ML-GSAI/LLaDA generate.py: generate): the answer starts fully masked and
is decoded ``block_length`` tokens at a time, left to right; inside a block, each of
``steps / num_blocks`` steps predicts every masked token and commits the ``k`` most confident
ones (``k`` splits the block's masks evenly over the steps, the remainder going to the earliest
steps). Sampling uses the Gumbel-max trick in float64; at temperature 0 it is greedy and the
tokens equal the reference algorithm's exactly. Classifier-free guidance masks the prompt for
the unconditional pass: ``un + (w + 1)(cond − un)``.

Images (``generate_image``; Gen-Verse/MMaDA models/modeling_mmada.py: MMadaModelLM.t2i_generate):
MaskGIT over the image slots with a cosine schedule, MUSE-style guidance ``(1 + w)·cond − w·uncond``,
only the codebook slice of the logits sampled, and the confidence noise annealed by
``temperature · Π(1 − step/T)`` (the official code's compounding decay;
``temperature_decay="linear"`` gives ``temperature · (1 − step/T)``).

Multimodal understanding is ``generate_text`` on a prompt that starts with the image prefix
(``SequenceBuilder.mmu``).

Fast sampling (Fast-dLLM, arXiv 2505.22618), all off by default so the defaults are
the plain samplers above, token for token:

* ``cache="prefix"|"dual"`` — block-wise approximate KV cache (``mmada.diffusion.cache``);
  ``prompt_cache="once"`` never refreshes the prompt's K/V (the MMU image prefix is encoded once).
  Images: ``cache="prefix"`` encodes the text prompt once for all MaskGIT steps.
* ``threshold=τ`` / ``factor=f`` — confidence-aware parallel decoding
  (``mmada.diffusion.parallel``): a step commits every token the rule accepts, at least one and at
  least the fixed schedule's count, and a block ends as soon as it has no masks left.
LLaDA's EOS options (ML-GSAI/LLaDA generate.py, LLaDA paper Appendix B.4), also off by default:
``logits_eos_inf`` sets EOS's logit to −inf before sampling (no EOS is ever generated);
``confidence_eos_eot_inf`` computes the low-confidence scores from logits whose EOS and EoT entries
are −inf, so a position predicted as EOS/EoT has confidence 0 and is committed last. At temperature
> 0 the official code applies that to EoT only (its chained assignment writes EOS's −inf into the
Gumbel-noised copy, after the argmax); this sampler does the same, so the options are token-identical
to the reference.

* ``stop_at_eos=True`` — a row whose just-finished block ends with ``eos_id`` (default
  ``model.config.eos_token_id``) is complete: its remaining positions become EOS (the fill the
  model is trained to produce) and are never decoded; sampling stops when every row is complete
  (the official ``mmu_generate_fast`` rule, applied per row so batching does not change a row).

A typed bundle of these options for configs and reports: ``mmada.diffusion.settings``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from mmada.diffusion.cache import BlockLogits, ImageLogits
from mmada.diffusion.masking import get_schedule
from mmada.diffusion.parallel import confident_counts, num_transfer_tokens
from mmada.diffusion.settings import ImageSamplerSettings, SamplerSettings
from mmada.errors import SamplerError
from mmada.models import check_ids

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


def _check_prompt(prompt_ids: torch.Tensor, mask_id: int, attention_mask: torch.Tensor | None, model=None) -> None:
    """The tensors' side of the contract (the settings validate themselves); once per call, so the
    model's per-forward id check (CPU only) is not needed on an accelerator."""
    if prompt_ids.dim() != 2:
        raise SamplerError(f"prompt_ids must be (batch, prompt_len), got shape {tuple(prompt_ids.shape)}")
    vocab = getattr(getattr(model, "config", None), "embedding_size", None)
    if isinstance(vocab, int) and prompt_ids.device.type != "cpu":
        check_ids(prompt_ids, vocab)
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


def top_k_mask(conf: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """(B, K) bool: True at the ``counts[j]`` (B,) highest ``conf`` (B, K) of each row.

    One batched sort instead of a ``topk`` per row (whose ``k`` would be read back to the host every
    step). Equal confidences go to the lower position, as ``topk`` does on these inputs (ties among
    masked positions; the ``-inf`` of decoded ones is never reached because ``counts`` ≤ masked).
    """
    order = torch.sort(conf, dim=-1, descending=True, stable=True).indices  # (B, K)
    ranks = torch.arange(conf.shape[-1], device=conf.device)
    take = ranks[None, :] < counts.to(conf.device)[:, None]  # (B, K) in rank order
    return torch.zeros_like(take).scatter_(-1, order, take)


def _check_settings(settings, kind: type) -> None:
    if not isinstance(settings, kind):
        raise SamplerError(f"settings must be a {kind.__name__} (mmada.diffusion.settings), got {type(settings).__name__}")


def _eos_id(model, eos_id: int | None) -> int:
    if eos_id is not None:
        return int(eos_id)
    eos = getattr(getattr(model, "config", None), "eos_token_id", None)
    if isinstance(eos, list | tuple):
        eos = eos[0] if eos else None
    if eos is None:
        raise SamplerError("stop_at_eos needs eos_id: not given and the model config has no eos_token_id")
    return int(eos)


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
    settings: SamplerSettings,
    *,
    mask_id: int | None = None,
    attention_mask: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    on_step: StepCallback | None = None,
    eos_id: int | None = None,
    eot_id: int | None = None,
) -> torch.Tensor:
    """Generate ``settings.gen_length`` tokens after ``prompt_ids`` (B, P); returns (B, P + gen_length).

    Batches are left-padded: pass the (B, P) ``attention_mask`` (False on padding). ``on_step``
    receives ``{"block", "step", "x", "transfer", "forwards", "tokens"}`` after every step (x is a
    copy; forwards/tokens count the model work so far). ``eos_id`` (default
    ``model.config.eos_token_id``) is the EOS of ``settings.stop_at_eos`` / ``logits_eos_inf`` /
    ``confidence_eos_eot_inf``; ``eot_id`` (``<|eot_id|>``) is needed by the latter.

    Fast sampling (module docstring) is selected by the settings: ``cache``, ``prompt_cache``,
    ``threshold`` or ``factor``, ``stop_at_eos``. Their defaults give the plain sampler.
    """
    _check_settings(settings, SamplerSettings)
    mask_id = _mask_id(model, mask_id)
    _check_prompt(prompt_ids, mask_id, attention_mask, model)
    s = settings
    gen_length, block_length, threshold, factor = s.gen_length, s.block_length, s.threshold, s.factor
    stop_at_eos, remasking, cfg_scale, temperature = s.stop_at_eos, s.remasking, s.cfg_scale, s.temperature
    num_blocks = gen_length // block_length
    logits_eos_inf = s.logits_eos_inf
    eos = _eos_id(model, eos_id) if stop_at_eos or logits_eos_inf or s.confidence_eos_eot_inf else None
    # ids whose logits are −inf when computing confidences (official quirk: EoT only at temperature > 0)
    no_conf = None
    if s.confidence_eos_eot_inf:
        if eot_id is None:
            raise SamplerError("confidence_eos_eot_inf needs eot_id (the tokenizer's <|eot_id|>)")
        no_conf = torch.tensor([int(eot_id)] if temperature > 0 else [eos, int(eot_id)], device=prompt_ids.device)
    dynamic = threshold is not None or factor is not None
    steps_per_block = s.steps // num_blocks
    B, P = prompt_ids.shape
    dev = prompt_ids.device
    x = torch.full((B, P + gen_length), mask_id, dtype=torch.long, device=dev)
    x[:, :P] = prompt_ids
    attn = None
    if attention_mask is not None:
        attn = torch.cat([attention_mask.bool(), torch.ones((B, gen_length), dtype=torch.bool, device=dev)], 1)
    prompt_index = torch.zeros_like(x, dtype=torch.bool)
    prompt_index[:, :P] = True
    if cfg_scale > 0 and attn is not None:
        attn = attn.repeat(2, 1)  # cond rows, then unconditional rows
    block_logits = BlockLogits(model, s.cache, attn, P, s.prompt_cache)
    for b in range(num_blocks):
        s, e = P + b * block_length, P + (b + 1) * block_length
        k_per_step = num_transfer_tokens(x[:, s:e] == mask_id, steps_per_block)  # (B, steps_per_block)
        for i in range(steps_per_block):
            masked = x[:, s:e] == mask_id  # (B, block)
            # The plain sampler always runs every step (same random stream as the reference).
            if (dynamic or stop_at_eos) and not bool(masked.any()):
                break
            if cfg_scale > 0:
                un_x = x.clone()
                un_x[prompt_index] = mask_id
                cond, un = block_logits(torch.cat([x, un_x]), s, e, refresh=i == 0).chunk(2)
                blk = un + (cfg_scale + 1) * (cond - un)
            else:
                blk = block_logits(x, s, e, refresh=i == 0)
            # Only the current block can be committed: positions after it get confidence −inf and
            # positions before it are already decoded, so the work is restricted to the block.
            # blk: (B, block, V)
            if logits_eos_inf:
                blk = blk.index_fill(-1, torch.tensor([eos], device=dev), -math.inf)
            x0 = add_gumbel_noise(blk, temperature, generator).argmax(dim=-1)  # (B, block)
            if remasking == "low_confidence":
                conf_logits = blk if no_conf is None else blk.index_fill(-1, no_conf, -math.inf)
                p = torch.softmax(conf_logits.to(torch.float64), dim=-1)
                conf = torch.gather(p, -1, x0[..., None]).squeeze(-1)
            else:
                conf = torch.rand(x0.shape, generator=generator, device=dev, dtype=torch.float64)
            conf = torch.where(masked, conf, torch.tensor(-math.inf, dtype=conf.dtype, device=dev))
            counts = k_per_step[:, i]  # (B,)
            if dynamic:
                counts = confident_counts(conf, counts, threshold=threshold, factor=factor)
            transfer = top_k_mask(conf, counts)  # (B, block): each row's counts[j] most confident
            x[:, s:e] = torch.where(transfer, x0, x[:, s:e])
            if on_step is not None:
                on_step({"block": b, "step": i, "x": x.clone(), "transfer": transfer.clone(),
                         "forwards": block_logits.stats.forwards, "tokens": block_logits.stats.tokens})
        if stop_at_eos and e < x.shape[1]:
            done = x[:, e - 1] == eos  # (B,) rows whose finished block ends with EOS
            rest = x[:, e:]
            x[:, e:] = torch.where(done[:, None] & (rest == mask_id), eos, rest)
            if not bool((x[:, e:] == mask_id).any()):
                break
    return x


@torch.no_grad()
def generate_image(
    model,
    input_ids: torch.Tensor,
    settings: ImageSamplerSettings,
    *,
    codebook_size: int,
    image_offset: int,
    num_image_tokens: int | None = None,
    attention_mask: torch.Tensor | None = None,
    uncond_input_ids: torch.Tensor | None = None,
    uncond_attention_mask: torch.Tensor | None = None,
    mask_id: int | None = None,
    generator: torch.Generator | None = None,
    on_step: StepCallback | None = None,
) -> torch.Tensor:
    """MaskGIT decoding of the image slots of t2i rows; returns image codes (B, N) in [0, codebook_size).

    ``input_ids`` (B, L) are t2i rows (``SequenceBuilder.t2i``) whose ``N`` image slots, at
    ``[-(N+1):-1]`` before ``<|eoi|>``, are masked (or partly given, for inpainting). With
    ``settings.guidance_scale > 0``, ``uncond_input_ids`` are the same layout with an empty caption;
    their text part is combined with the current image slots at every step (cond and uncond rows go
    through the model as one batch). ``settings.cache="prefix"`` encodes the text prompts once and
    reuses their K/V for every step (approximate: the prompt's K/V then do not see the image evolve).
    """
    _check_settings(settings, ImageSamplerSettings)
    steps, guidance_scale, temperature = settings.steps, settings.guidance_scale, settings.temperature
    mask_id = _mask_id(model, mask_id)
    N = int(num_image_tokens or model.config.num_vq_tokens)
    if input_ids.dim() != 2 or input_ids.shape[1] < N + 1:
        raise SamplerError(f"input_ids shape {tuple(input_ids.shape)} cannot hold {N} image tokens + <|eoi|>")
    if guidance_scale > 0 and uncond_input_ids is None:
        raise SamplerError("guidance_scale > 0 needs uncond_input_ids (the same layout with an empty caption)")
    if uncond_input_ids is not None and uncond_input_ids.shape != input_ids.shape:
        raise SamplerError(
            f"uncond_input_ids shape {tuple(uncond_input_ids.shape)} != input_ids shape {tuple(input_ids.shape)}"
        )
    cumulative = settings.temperature_decay == "cumulative"
    gamma = get_schedule(settings.schedule)
    x = input_ids.clone()
    B = x.shape[0]
    img = slice(x.shape[1] - N - 1, x.shape[1] - 1)
    # Unknown slots are tracked in token space (image tokens are >= image_offset, the mask is a text
    # token), so any mask id works, even one that is also a valid code number.
    given = x[:, img] != mask_id
    if bool((given & ((x[:, img] < image_offset) | (x[:, img] >= image_offset + codebook_size))).any()):
        raise SamplerError(f"given image tokens fall outside [image_offset, image_offset + {codebook_size})")
    sampled = torch.where(given, x[:, img] - image_offset, 0)
    am = attention_mask
    if guidance_scale > 0 and (attention_mask is not None or uncond_attention_mask is not None):
        ones = torch.ones_like(x, dtype=torch.bool)
        am = torch.cat([ones if attention_mask is None else attention_mask.bool(),
                        ones if uncond_attention_mask is None else uncond_attention_mask.bool()])
    image_logits = ImageLogits(model, settings.cache, am, N, image_offset, codebook_size)
    for step in range(steps):
        if guidance_scale > 0:
            un = uncond_input_ids.clone()
            un[:, img] = x[:, img]
            cond, unc = image_logits(torch.cat([x, un])).chunk(2)
            logits = (1 + guidance_scale) * cond - guidance_scale * unc
        else:
            logits = image_logits(x)
        logits = logits.float()  # (B, N, C): image slots, codebook columns
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
        temperature = temperature * (1 - ratio) if cumulative else temperature
        temp_now = temperature if cumulative else temperature * (1 - ratio)
        u = torch.rand(conf.shape, generator=generator, device=conf.device)
        noisy_conf = _safe_log(conf) + temp_now * -_safe_log(-_safe_log(u))  # log p + τ·Gumbel
        cutoff = torch.gather(noisy_conf.sort(dim=-1).values, 1, mask_len.long())
        remask = noisy_conf < cutoff
        x[:, img] = torch.where(remask, mask_id, sampled + image_offset)
        if on_step is not None:
            on_step({"step": step, "remasked": remask.clone(), "sampled": sampled.clone(),
                     "forwards": image_logits.stats.forwards, "tokens": image_logits.stats.tokens})
    return sampled
