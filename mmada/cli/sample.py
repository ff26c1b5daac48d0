"""Core subcommands: ``generate`` (text answers) and ``t2i`` (image tokens) from a checkpoint.

    mmada generate CKPT --prompt "What is 2+3?" --gen-length 256 --steps 256 --cache prefix --threshold 0.9
    mmada t2i CKPT --prompt "a red circle" --guidance-scale 2 --cache prefix

The settings used are printed to stderr (``sampler: …``) so logs say how an output was sampled.
"""

from __future__ import annotations

import argparse
import json
import sys


def _generate(args: argparse.Namespace) -> int:
    from mmada.inference import generate_answers, load_checkpoint

    lm = load_checkpoint(args.checkpoint, tokenizer=args.tokenizer, device=args.device, dtype=args.dtype)
    from mmada.diffusion.settings import SamplerSettings

    settings = SamplerSettings.make(
        steps=args.steps, gen_length=args.gen_length, block_length=args.block_length, temperature=args.temperature,
        cfg_scale=args.cfg_scale, remasking=args.remasking, seed=args.seed, cache=args.cache,
        prompt_cache=args.prompt_cache, threshold=args.threshold, factor=args.factor, stop_at_eos=args.stop_at_eos,
    )
    print(f"sampler: {settings.describe()}", file=sys.stderr)
    answers = generate_answers(lm, args.prompt, think=args.think, chat=not args.raw, **settings.model_dump())
    if args.json:
        print(json.dumps([{"prompt": p, "answer": a} for p, a in zip(args.prompt, answers)], indent=1))
    else:
        for p, a in zip(args.prompt, answers):
            print(f"### {p}\n{a}")
    return 0


def _t2i(args: argparse.Namespace) -> int:
    from mmada.inference import generate_image_codes, load_checkpoint

    lm = load_checkpoint(args.checkpoint, tokenizer=args.tokenizer, device=args.device, dtype=args.dtype)
    from mmada.diffusion.settings import ImageSamplerSettings

    settings = ImageSamplerSettings.make(steps=args.steps, guidance_scale=args.guidance_scale,
                                         temperature=args.temperature, seed=args.seed, cache=args.cache)
    print(f"sampler: {settings.describe()}", file=sys.stderr)
    codes = generate_image_codes(lm, args.prompt, max_text_len=args.max_text_len, **settings.model_dump())
    print(json.dumps([{"prompt": p, "codes": c} for p, c in zip(args.prompt, codes.tolist())]))
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="checkpoint directory (save_pretrained layout) or HF repo id")
    p.add_argument("--prompt", action="append", required=True, help="prompt text (repeat for a batch)")
    p.add_argument("--tokenizer", default=None, help="tokenizer dir or 'builtin' (default: the checkpoint's)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--dtype", default=None, choices=["bf16", "fp32"], help="load dtype (default: checkpoint's)")
    p.add_argument("--seed", type=int, default=0)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="generate text answers with the block diffusion sampler")
    _common(p)
    p.add_argument("--steps", type=int, default=64)
    p.add_argument("--gen-length", type=int, default=64)
    p.add_argument("--block-length", type=int, default=32)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--cfg-scale", type=float, default=0.0)
    p.add_argument("--remasking", default="low_confidence", choices=["low_confidence", "random"])
    fast = p.add_argument_group("fast sampling (Fast-dLLM; defaults = the plain sampler)")
    fast.add_argument("--cache", default="none", choices=["none", "prefix", "dual"],
                      help="block-wise KV cache: prefix (cache before the block) or dual (also the masked suffix)")
    fast.add_argument("--prompt-cache", default="per_block", choices=["per_block", "once"],
                      help="once: never refresh the prompt's K/V (needs --cache)")
    fast.add_argument("--threshold", type=float, default=None,
                      help="parallel decoding: commit every token with confidence > THRESHOLD (e.g. 0.9)")
    fast.add_argument("--factor", type=float, default=None,
                      help="factor-based parallel decoding: commit the n best while (n+1)(1-conf_n) < FACTOR")
    fast.add_argument("--stop-at-eos", action="store_true",
                      help="stop a row once a block ends with <eos> (rest filled with <eos>)")
    p.add_argument("--think", action="store_true", help="add the <think> instruction to the prompt")
    p.add_argument("--raw", action="store_true", help="no chat template: continue the prompt text")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_generate)

    p = sub.add_parser("t2i", help="generate image tokens for captions (MaskGIT decoding)")
    _common(p)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--guidance-scale", type=float, default=0.0)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--max-text-len", type=int, default=32)
    p.add_argument("--cache", default="none", choices=["none", "prefix"],
                   help="prefix: encode the caption once and reuse its K/V for every step")
    p.set_defaults(func=_t2i)
