"""``mmada generate`` (text answers) and ``mmada t2i`` (image tokens) from a checkpoint directory.

    mmada generate CKPT --prompt "What is 2+3?" --gen-length 256 --steps 256 --cache prefix --threshold 0.9
    mmada t2i CKPT --prompt "a red circle" --guidance-scale 2 --cache prefix
    mmada t2i CKPT --prompt "a red circle" --think --think-gen-length 128 --image-tokenizer VQ_DIR --save out/

Every field of the sampler settings is a flag (``--help`` lists them with their defaults). The
settings used are printed to stderr (``sampler: …``) so logs say how an output was sampled.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from mmada.cli._args import int_at_least
from mmada.cli._sampler_args import add_sampler_args, parse_config_overrides, sampler_from_args
from mmada.diffusion.settings import ImageSamplerSettings, SamplerSettings
from mmada.errors import ConfigError
from mmada.files import save_png
from mmada.inference import (
    MIN_TEXT_LEN,
    generate_answers,
    generate_image_codes,
    generate_r2i,
    load_checkpoint,
)
from mmada.models.vq import MAGVITv2, tensor_to_images


def _load(args: argparse.Namespace):
    return load_checkpoint(args.checkpoint, tokenizer=args.tokenizer, device=args.device, dtype=args.dtype,
                           overrides=parse_config_overrides(args.config_override))


def _generate(args: argparse.Namespace) -> int:
    settings = sampler_from_args(SamplerSettings, args)
    lm = _load(args)
    print(f"sampler: {settings.describe()}", file=sys.stderr)
    answers = generate_answers(lm, args.prompt, settings, think=args.think, chat=not args.raw)
    if args.json:
        print(json.dumps([{"prompt": p, "answer": a} for p, a in zip(args.prompt, answers)], indent=1))
    else:
        for p, a in zip(args.prompt, answers):
            print(f"### {p}\n{a}")
    return 0


def _t2i(args: argparse.Namespace) -> int:
    settings = sampler_from_args(ImageSamplerSettings, args)
    think = sampler_from_args(SamplerSettings, args, prefix="think-") if args.think else None
    if args.save and not args.image_tokenizer:
        raise ConfigError("--save needs --image-tokenizer (a MAGVIT-v2 directory) to decode the codes")
    vq = MAGVITv2.from_pretrained(args.image_tokenizer) if args.image_tokenizer else None
    lm = _load(args)
    print(f"sampler: {settings.describe()}" + (f"; reasoning: {think.describe()}" if think else ""), file=sys.stderr)
    rows = [{"prompt": p} for p in args.prompt]
    if think is not None:  # reasoning to image: a detailed description first, then the image
        res = generate_r2i(lm, args.prompt, think, settings, max_text_len=args.max_text_len)
        codes = res.codes
        for row, answer, trace in zip(rows, res.answers, res.traces):
            row |= {"answer": answer, "trace": trace}
    else:
        codes = generate_image_codes(lm, args.prompt, settings, max_text_len=args.max_text_len or 32)
    if args.save:
        with torch.no_grad():
            images = tensor_to_images(vq.to(lm.device).decode(codes))
        for i, (row, image) in enumerate(zip(rows, images)):
            row["image"] = str(save_png(Path(args.save) / f"{i:03d}.png", image))
    for row, c in zip(rows, codes.tolist()):
        row["codes"] = c
    print(json.dumps(rows))
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="checkpoint directory (save_pretrained layout) or HF repo id")
    p.add_argument("--prompt", action="append", required=True, help="prompt text (repeat for a batch)")
    p.add_argument("--tokenizer", default=None, help="tokenizer dir or 'builtin' (default: the checkpoint's)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--dtype", default=None, choices=["bf16", "fp32"], help="load dtype (default: checkpoint's)")
    p.add_argument("--config-override", action="append", metavar="FIELD=VALUE",
                   help="change a config field that leaves the weights alone, e.g. num_vq_tokens=1024 for a "
                        "config.json that states 256 image tokens (repeatable)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="generate text answers with the block diffusion sampler")
    _common(p)
    p.add_argument("--think", action="store_true", help="add the <think> instruction to the prompt")
    p.add_argument("--raw", action="store_true", help="no chat template: continue the prompt text")
    p.add_argument("--json", action="store_true")
    add_sampler_args(p, SamplerSettings, "sampler (defaults = the plain sampler; cache/threshold/factor/"
                                         "stop-at-eos = Fast-dLLM fast sampling)")
    p.set_defaults(func=_generate)

    p = sub.add_parser("t2i", help="generate image tokens for captions (MaskGIT decoding)")
    _common(p)
    p.add_argument("--max-text-len", type=int_at_least(MIN_TEXT_LEN), default=None, metavar="N",
                   help="text slots before the image (default: 32; with --think, the prompt + --think-gen-length)")
    p.add_argument("--think", action="store_true",
                   help="reasoning to image (<|r2i|>): write a detailed description first, then the image")
    p.add_argument("--image-tokenizer", default=None, help="MAGVIT-v2 directory, to decode the codes (--save)")
    p.add_argument("--save", default=None, metavar="DIR", help="write the images as DIR/000.png, … (needs "
                                                              "--image-tokenizer)")
    add_sampler_args(p, ImageSamplerSettings, "MaskGIT sampler (defaults = the plain loop)")
    add_sampler_args(p, SamplerSettings, "reasoning sampler (--think; the text sampler's flags)", prefix="think-")
    p.set_defaults(func=_t2i)
