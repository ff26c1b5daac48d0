"""Load a checkpoint directory with its tokenizer, and run the samplers on text prompts.

These are the functions behind ``mmada generate`` and ``mmada t2i`` (and what evaluation and
flows call): a checkpoint directory is an HF ``save_pretrained`` folder (config.json +
safetensors) that also holds the text tokenizer (``tokenizer.json``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from mmada.diffusion.sampling import StepCallback, generate_image, generate_text
from mmada.diffusion.settings import ImageSamplerSettings, SamplerSettings
from mmada.errors import MMaDAError
from mmada.models import MMaDAConfig, MMaDAModelLM
from mmada.models.loading import load_model
from mmada.tokenization import SequenceBuilder, SpecialTokenIds, check_vocab, left_pad, load_text_tokenizer
from mmada.tokenization.text import split_think


@dataclass
class LoadedModel:
    model: MMaDAModelLM
    tokenizer: object
    builder: SequenceBuilder

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def pick_device(device: str | None = None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_checkpoint(
    path: str | Path, *, tokenizer: str | None = None, device: str | None = None, dtype: str | None = None,
    overrides: dict | None = None,
) -> LoadedModel:
    """Load model + tokenizer from a checkpoint dir (or HF repo id); checks that their vocabularies agree.

    ``overrides`` change config fields that leave the weights alone (``MMaDAConfig.with_overrides``),
    e.g. ``{"num_vq_tokens": 1024}`` for a released config.json that states 256 image tokens.
    """
    dev = pick_device(device)
    torch_dtype = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp32": torch.float32,
                   "float32": torch.float32, None: None}.get(dtype, "unknown")
    if torch_dtype == "unknown":
        raise MMaDAError(f"dtype={dtype!r}; expected bf16 or fp32")
    src = str(path)
    if not Path(src).exists() and (src.startswith((".", "/", "~")) or src.count("/") > 1):
        raise MMaDAError(f"checkpoint directory {src} does not exist")
    if Path(src).exists() and not (Path(src) / "config.json").exists():
        raise MMaDAError(f"{src} has no config.json: not a checkpoint directory")
    tok_src = tokenizer or src
    if tokenizer is None and Path(src).exists() and not (Path(src) / "tokenizer.json").exists():
        raise MMaDAError(f"{src} has no tokenizer.json; pass --tokenizer (a tokenizer dir, or 'builtin')")
    kwargs = {"dtype": torch_dtype} if torch_dtype is not None else {}
    try:
        tok = load_text_tokenizer(tok_src)
        if overrides:
            kwargs["config"] = MMaDAConfig.from_pretrained(src).with_overrides(overrides, where="--config-override")
        model = load_model(src, **kwargs).to(dev).eval()
    except OSError as exc:  # not found locally, and the hub is offline / the repo does not exist
        raise MMaDAError(f"cannot load checkpoint {src!r}: {exc}") from exc
    special = SpecialTokenIds.from_tokenizer(tok)
    check_vocab(special, model.config)
    return LoadedModel(model, tok, SequenceBuilder(tok, special))


def generate_answers(lm: LoadedModel, prompts: list, settings: SamplerSettings | None = None, *,
                     think: bool = False, chat: bool = True, on_step: StepCallback | None = None) -> list[str]:
    """Chat-formatted (or raw, ``chat=False``) prompts → decoded answers, batched with left padding.

    ``settings`` (default: the plain sampler) is used as given; its ``seed`` seeds the sampling and
    ``stop_at_eos`` stops at the tokenizer's ``<eos>``. A chat prompt may be a list of messages
    (``{"role", "content"}``, a conversation). ``on_step``: the sampler's per-step callback.
    """
    settings = settings or SamplerSettings()
    if chat:
        batch = lm.builder.chat(prompts, think=think)
        ids, attn = batch.input_ids, batch.attention_mask
    else:
        ids, attn = left_pad([[lm.builder.special.bos, *lm.builder.encode(p)] for p in prompts], lm.builder.special.eos)
    out = generate_text(
        lm.model, ids.to(lm.device), settings, attention_mask=attn.to(lm.device), mask_id=lm.builder.special.mask,
        eos_id=lm.builder.special.eos, eot_id=lm.builder.special.eot, generator=settings.generator(lm.device),
        on_step=on_step,
    )
    return lm.tokenizer.batch_decode(out[:, ids.shape[1]:], skip_special_tokens=True)


MIN_TEXT_LEN = 3
"""The smallest caption budget that keeps a caption token: ``<bos> token <eos>`` (2 or less drops every
caption, so every image would be unconditional)."""


def check_max_text_len(max_text_len: int, *, num_image_tokens: int, max_sequence_length: int) -> None:
    """``max_text_len`` (``<bos> caption <eos>`` budget) keeps a caption and fits the model with the image tokens."""
    if max_text_len < MIN_TEXT_LEN:
        raise MMaDAError(f"max_text_len={max_text_len}: must be at least {MIN_TEXT_LEN} (<bos>, a caption token, "
                         "<eos>); a smaller budget drops every caption")
    if max_text_len + 3 + num_image_tokens > max_sequence_length:
        raise MMaDAError(f"max_text_len={max_text_len}: with the {num_image_tokens} image tokens the rows would be "
                         f"longer than the model's max_sequence_length={max_sequence_length}; at most "
                         f"{max_sequence_length - 3 - num_image_tokens}")


def generate_image_codes(lm: LoadedModel, captions: list[str], settings: ImageSamplerSettings | None = None, *,
                         max_text_len: int = 32, on_step: StepCallback | None = None) -> torch.Tensor:
    """Captions → image codes (B, num_vq_tokens) with MaskGIT decoding (``settings``: default the plain loop;
    ``on_step``: the sampler's per-step callback)."""
    settings = settings or ImageSamplerSettings()
    cfg = lm.model.config
    check_max_text_len(max_text_len, num_image_tokens=cfg.num_vq_tokens, max_sequence_length=cfg.max_sequence_length)
    cond = lm.builder.t2i(captions, num_image_tokens=cfg.num_vq_tokens, max_text_len=max_text_len).to(lm.device)
    uncond = lm.builder.t2i([""] * len(captions), num_image_tokens=cfg.num_vq_tokens,
                            max_text_len=max_text_len).to(lm.device)
    return generate_image(
        lm.model, cond.input_ids, settings, attention_mask=cond.attention_mask, uncond_input_ids=uncond.input_ids,
        uncond_attention_mask=uncond.attention_mask, codebook_size=cfg.codebook_size,
        image_offset=lm.builder.special.image_offset, num_image_tokens=cfg.num_vq_tokens,
        mask_id=lm.builder.special.mask, generator=settings.generator(lm.device), on_step=on_step,
    )


@dataclass
class R2IResult:
    answers: list[str]  # the decoded answers, ``<think>detailed description</think>``
    traces: list[str]  # the detailed descriptions (the answer if it has no think block)
    codes: torch.Tensor  # (B, num_vq_tokens) image codes


def generate_r2i(lm: LoadedModel, captions: list[str], text: SamplerSettings | None = None,
                 image: ImageSamplerSettings | None = None, *, max_text_len: int | None = None) -> R2IResult:
    """Reasoning to image: the text sampler writes a detailed description after the ``<|r2i|>`` prompt,
    then MaskGIT draws the image conditioned on prompt + description (``SequenceBuilder.r2i_from_ids``).

    The answer is taken up to its first EOS; its guidance-free counterpart for CFG is the layout with
    an empty text part (``<|r2i|> <bos> <eos>…``), as t2i's unconditional rows drop the caption.
    ``max_text_len`` (text slots before ``<|soi|>``) defaults to the longest prompt + ``gen_length`` + 1.
    """
    text, image = text or SamplerSettings(), image or ImageSamplerSettings()
    sb, sp, cfg = lm.builder, lm.builder.special, lm.model.config
    prompts = [sb.r2i_prompt(c) for c in captions]
    if max_text_len is None:
        max_text_len = max(len(p) for p in prompts) - 1 + text.gen_length + 1
    if max(len(p) for p in prompts) - 1 >= max_text_len:
        raise MMaDAError(f"an r2i prompt has {max(len(p) for p in prompts) - 1} text tokens; max_text_len="
                         f"{max_text_len} leaves no room for the description")
    ids, attn = left_pad(prompts, sp.eos)
    out = generate_text(lm.model, ids.to(lm.device), text, attention_mask=attn.to(lm.device), mask_id=sp.mask,
                        eos_id=sp.eos, eot_id=sp.eot, generator=text.generator(lm.device))[:, ids.shape[1]:].cpu()
    answers = [row[: row.index(sp.eos)] if sp.eos in row else row for row in out.tolist()]
    N = cfg.num_vq_tokens
    cond = sb.r2i_from_ids(prompts, answers, num_image_tokens=N, max_text_len=max_text_len).to(lm.device)
    uncond = sb.r2i_from_ids([[sp.r2i, sp.bos]] * len(captions), [[]] * len(captions), num_image_tokens=N,
                             max_text_len=max_text_len).to(lm.device)
    codes = generate_image(
        lm.model, cond.input_ids, image, attention_mask=cond.attention_mask, uncond_input_ids=uncond.input_ids,
        uncond_attention_mask=uncond.attention_mask, codebook_size=cfg.codebook_size,
        image_offset=sp.image_offset, num_image_tokens=N, mask_id=sp.mask, generator=image.generator(lm.device),
    )
    decoded = [lm.tokenizer.decode(a, skip_special_tokens=True) for a in answers]
    return R2IResult(decoded, [split_think(a)[0] or a for a in decoded], codes)
