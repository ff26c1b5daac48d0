"""``mmada demo``: train the tiny preset for a few hundred steps on CPU, then sample text and images.

A self-contained smoke run of the model core: built-in tokenizer, built-in arithmetic (chat
with ``<think>`` traces) and shapes (text-to-image) data, the unified loss in one forward pass,
the block text sampler and the MaskGIT image sampler. Images are tokenised here by a fixed
palette quantiser (each 4×4 patch → nearest palette colour, 8×8 = 64 codes), so the demo needs
nothing trained beforehand; the full pipeline (``mmada pipeline``) uses the learned MAGVIT-v2.

    mmada demo --steps 300 --out runs/demo
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mmada.data.builtin.arithmetic import generate_arithmetic
from mmada.data.builtin.shapes import BACKGROUND, COLORS, generate_shapes
from mmada.diffusion import unified_loss
from mmada.inference import LoadedModel, generate_answers, generate_image_codes
from mmada.models import MMaDAConfig, MMaDAModelLM
from mmada.tokenization import SequenceBuilder, load_text_tokenizer

PALETTE = np.array([BACKGROUND, *COLORS.values()], dtype=np.float32)  # (7, 3)


def palette_codes(img: Image.Image, grid: int = 8) -> np.ndarray:
    """(H, W, 3) image → (grid²,) palette indices of the mean colour of each patch."""
    a = np.asarray(img.convert("RGB"), dtype=np.float32)
    H, W, _ = a.shape
    patches = a.reshape(grid, H // grid, grid, W // grid, 3).mean(axis=(1, 3)).reshape(-1, 3)  # (grid², 3)
    return ((patches[:, None] - PALETTE[None]) ** 2).sum(-1).argmin(-1)


def palette_image(codes: np.ndarray, scale: int = 4) -> Image.Image:
    grid = math.isqrt(len(codes))
    rgb = PALETTE[np.clip(codes, 0, len(PALETTE) - 1)].reshape(grid, grid, 3).astype(np.uint8)
    return Image.fromarray(rgb).resize((grid * scale, grid * scale), Image.NEAREST)


def run_demo(out: str | Path = "runs/demo", *, steps: int = 300, batch_size: int = 8, lr: float = 1e-3,
             seed: int = 0, log_every: int = 25) -> dict:
    """Train the tiny preset, save it, sample from it. Returns a summary dict."""
    torch.manual_seed(seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tok = load_text_tokenizer("builtin")
    sb = SequenceBuilder(tok)
    config = MMaDAConfig.from_preset("tiny")
    model = MMaDAModelLM(config)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"[demo] tiny model: {n_params / 1e6:.1f}M parameters, vocab {config.vocab_size} "
          f"(text {config.llm_vocab_size} + image {config.codebook_size})")

    problems = generate_arithmetic(2000, seed=seed, difficulty=1)
    scenes = generate_shapes(2000, seed=seed, tasks=("single_object", "colors"))
    scene_codes = torch.from_numpy(np.stack([palette_codes(s["image"]) for s in scenes]))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.95))
    warmup = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps)))
    )
    gen = torch.Generator().manual_seed(seed)
    model.train()
    t0 = time.time()
    for step in range(steps):
        pi = torch.randint(0, len(problems), (batch_size,), generator=gen).tolist()
        si = torch.randint(0, len(scenes), (batch_size,), generator=gen).tolist()
        chat = sb.chat(
            [problems[i]["question"] for i in pi],
            [f"<think>{problems[i]['thinking']}</think> {problems[i]['answer']}" for i in pi],
            max_text_len=96,
        )
        t2i = sb.t2i([scenes[i]["caption"] for i in si], scene_codes[si], max_text_len=16)
        res = unified_loss(model, {"chat": chat, "t2i": t2i}, mask_id=sb.special.mask, generator=gen)
        opt.zero_grad(set_to_none=True)
        res.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % log_every == 0 or step == steps - 1:
            print(f"[demo] step {step:4d}  loss {res.loss.item():.3f}  chat {res.per_task['chat']:.3f} "
                  f"(acc {res.accuracy['chat']:.2f})  t2i {res.per_task['t2i']:.3f} "
                  f"(acc {res.accuracy['t2i']:.2f})  {time.time() - t0:.0f}s", flush=True)
    model.eval()
    ckpt = out / "model"
    model.save_pretrained(ckpt)
    tok.save_pretrained(ckpt)
    lm = LoadedModel(model, tok, sb)

    held_out = generate_arithmetic(3, seed=seed + 1000, difficulty=1)
    answers = generate_answers(lm, [p["question"] for p in held_out], steps=32, gen_length=32, block_length=16)
    print("\n[demo] text samples (block sampler, 32 tokens, 32 steps, temperature 0):")
    for p, a in zip(held_out, answers):
        print(f"  Q: {p['question']}\n  A: {a.strip()!r}   (gold {p['answer']})")
    captions = ["a red circle", "a blue square", "a yellow triangle"]
    codes = generate_image_codes(lm, captions, steps=12, guidance_scale=2.0, max_text_len=16, seed=seed)
    print("\n[demo] image samples (MaskGIT, 12 steps, cfg 2.0): 8x8 image-token grids")
    grid = Image.new("RGB", (36 * len(captions), 32))
    for j, (cap, c) in enumerate(zip(captions, codes.numpy())):
        print(f"  {cap!r}:")
        for r in range(8):
            print("    " + " ".join(f"{v:4d}" for v in c[r * 8 : (r + 1) * 8]))
        grid.paste(palette_image(c), (36 * j, 0))
    grid.resize((grid.width * 4, grid.height * 4), Image.NEAREST).save(out / "t2i_samples.png")
    print(f"\n[demo] checkpoint: {ckpt}   image grid: {out / 't2i_samples.png'}   ({time.time() - t0:.0f}s)")
    return {"checkpoint": str(ckpt), "final_loss": res.loss.item(), "answers": answers, "codes": codes.tolist()}
