"""Fast sampling vs the plain samplers: tokens/s and arithmetic accuracy, side by side as ratios.

Fast-dLLM (arXiv 2505.22618; NVlabs/Fast-dLLM README) reports 8.1× at gen length 256 for LLaDA-8B on an A100
(prefix cache + threshold 0.9) at < 1 point GSM8K loss. This script measures our samplers the
same way — gen length 256, block 32, one token per step for the plain sampler
(``steps = gen_length``), greedy, threshold 0.9, factor 1.0 — in three sections:

  accuracy  the ``tiny`` preset trained in-script on built-in arithmetic (``train_arithmetic_model``:
            500 steps, ~10 min on 2 busy CPU cores, cached under ``--cache-dir``). Tokens/s,
            accuracy and agreement with the plain sampler for every config, at batch 8 over
            ``--n-problems`` held-out problems and at batch 1 over the first ``--n-batch1`` (whose
            answers are checked to equal the batch-8 ones). A trained model is needed: parallel
            decoding fires only where the model is confident, and a random model scores 0.
            Caveat: these answers are ~12 tokens, the rest of the 256 is EOS fill that a trained
            model decodes a whole block per step, so threshold/EOS ratios are far larger here than
            on long GSM8K answers.
  speed     ``--preset`` (default ``small``), random init; tokens/s only, chat prompts of arithmetic
            questions, sequence = prompt + 256. On CPU batch 8 is timed over the first
            ``--speed-blocks`` blocks (default 1; a prefix cache is cheapest in late blocks, so a
            partial run under-states its gain). A random model's confidence never exceeds a
            threshold (max p ≈ 1/|V|), so threshold configs there equal plain/prefix/dual plus
            overhead; they run with ``--speed-configs all``.
  t2i       ``--preset``, random init: MaskGIT images/s, plain loop vs the prompt K/V cache, CFG 3.5
            (cond + uncond in one batch), and the fraction of image codes equal to the plain run's.

    python bench/bench_sampling.py --threads 1          # all sections on CPU (~15 min + first training)
    python bench/bench_sampling.py --quick              # smoke: 8 problems at batch 8, speed 1 block batch 1
    python bench/bench_sampling.py --sections speed,t2i --device cuda --dtype bf16 --preset 1b --t2i-text-len 128
    python bench/bench_sampling.py --json rows.json     # also write every row

Columns: ``tok/s`` = generated tokens (gen_length × rows) / wall time (t2i: images/s); ``×plain``
= ratio to the plain sampler in the same table and batch size; ``acc`` = exact match of the last
integer after ``</think>``; ``=plain`` = fraction of answers (t2i: image codes) identical to the
plain sampler's; ``NFE`` = model forwards; ``fed/tok`` = query tokens through the model per
generated token (the compute proxy). CPU timings depend on load: ``--threads 1`` is steadier on a
shared machine.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from mmada.builtin.arithmetic import generate_arithmetic
from mmada.diffusion import generate_image, generate_text, unified_loss
from mmada.diffusion.settings import ImageSamplerSettings, SamplerSettings
from mmada.inference import LoadedModel, load_checkpoint
from mmada.models import MMaDAConfig, MMaDAModelLM
from mmada.tokenization import SequenceBuilder, load_text_tokenizer
from mmada.training.optim import lr_factor

GEN, BLOCK = 256, 32
THRESHOLD = 0.9
FACTOR = 1.0
# name → the fast-sampling options added to the plain sampler
CONFIGS: dict[str, dict] = {
    "plain": {},
    "+prefix": {"cache": "prefix"},
    "+dual": {"cache": "dual"},
    "+threshold": {"threshold": THRESHOLD},
    "+both": {"cache": "prefix", "threshold": THRESHOLD},
    "+dual+thr": {"cache": "dual", "threshold": THRESHOLD},
    "+both+eos": {"cache": "prefix", "threshold": THRESHOLD, "stop_at_eos": True},
    "+factor": {"factor": FACTOR},
    "+dual+factor": {"cache": "dual", "factor": FACTOR},
}
SPEED_DEFAULT = ("plain", "+prefix", "+dual")
SPEED_ALL = ("plain", "+prefix", "+dual", "+threshold", "+both", "+dual+thr")


@dataclass
class Row:
    section: str
    config: str
    batch: int
    rows: int
    tokens: int
    seconds: float
    tok_per_s: float
    nfe: int
    fed_per_token: float
    accuracy: float | None = None
    same_as_plain: float | None = None  # fraction of answers identical to the plain sampler's
    ratio: float | None = None
    extra: dict = field(default_factory=dict)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


# ---------------------------------------------------------------------------------------------
# the accuracy model: tiny preset trained on built-in arithmetic, cached on disk

# version 2: the platform's LR schedule (mmada.training.optim.lr_factor: linear warmup, then cosine to 0)
RECIPE = dict(preset="tiny", steps=500, batch=16, lr=2e-3, difficulty=1, max_operand=4, short_len=56,
              long_every=4, long_batch=4, long_len=40 + GEN, seed=0, version=2)


def train_arithmetic_model(cache_dir: Path, recipe: dict = RECIPE, device: str = "cpu") -> Path:
    """Train (or reuse) the accuracy model; returns its checkpoint dir.

    Chat rows ``question → <think>a op b = c.</think> c`` + EOS fill, masked-diffusion SFT loss.
    Most steps use short rows (cheap); every ``long_every``-th step uses rows of ``long_len``
    tokens so the model also learns the EOS fill across a 256-token answer window. The directory
    name hashes the recipe; it is written to a temp dir and renamed when complete.
    """
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:10]
    out = cache_dir / f"tiny-arith-{key}"
    if (out / "recipe.json").exists():
        return out
    cache_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(recipe["seed"])
    tok = load_text_tokenizer("builtin")
    sb = SequenceBuilder(tok)
    model = MMaDAModelLM(MMaDAConfig.from_preset(recipe["preset"])).to(device)
    problems = generate_arithmetic(5000, seed=recipe["seed"], difficulty=recipe["difficulty"],
                                   max_operand=recipe["max_operand"])
    steps = recipe["steps"]
    opt = torch.optim.AdamW(model.parameters(), lr=recipe["lr"], weight_decay=0.01, betas=(0.9, 0.95))
    warm = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, warmup=warm, max_steps=steps, min_lr_scale=0.0))
    gen = torch.Generator().manual_seed(recipe["seed"])
    model.train()
    t0 = time.time()
    for step in range(steps):
        long = (step + 1) % recipe["long_every"] == 0
        n, length = (recipe["long_batch"], recipe["long_len"]) if long else (recipe["batch"], recipe["short_len"])
        idx = torch.randint(0, len(problems), (n,), generator=gen).tolist()
        chat = sb.chat([problems[i]["question"] for i in idx],
                       [f"<think>{problems[i]['thinking']}</think> {problems[i]['answer']}" for i in idx],
                       max_text_len=length).to(device)
        res = unified_loss(model, {"chat": chat}, mask_id=sb.special.mask, generator=gen)
        opt.zero_grad(set_to_none=True)
        res.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 100 == 0 or step == steps - 1:
            print(f"  [train] step {step:4d} loss {res.loss.item():.3f} ({time.time() - t0:.0f}s)", flush=True)
    model.eval()
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".tmp", dir=cache_dir))
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / "recipe.json").write_text(json.dumps({**recipe, "train_seconds": round(time.time() - t0, 1)}, indent=1))
    if out.exists():  # a partial leftover (no recipe.json): replace it
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


# ---------------------------------------------------------------------------------------------
# runs


class _Stop(Exception):
    pass


def extract_answer(text: str) -> str | None:
    """The last integer after the final ``</think>`` (the whole text if there is none)."""
    nums = re.findall(r"-?\d+", text.split("</think>")[-1])
    return nums[-1] if nums else None


def run_text(model, ids, attn, settings: SamplerSettings, *, mask_id: int, eos_id: int,
             max_blocks: int | None = None) -> tuple[torch.Tensor, float, int, int]:
    """One batch → (output ids, seconds, forwards, fed tokens); ``max_blocks`` stops early (timing)."""
    dev = ids.device
    last = {"forwards": 0, "tokens": 0, "x": None}
    P = ids.shape[1]

    def on_step(d):
        last.update(forwards=d["forwards"], tokens=d["tokens"], x=d["x"])
        if max_blocks is not None and d["block"] == max_blocks - 1:
            s, e = P + d["block"] * settings.block_length, P + max_blocks * settings.block_length
            if not bool((d["x"][:, s:e] == mask_id).any()):
                raise _Stop

    sync(dev)
    t0 = time.perf_counter()
    try:
        out = generate_text(model, ids, settings, attention_mask=attn, mask_id=mask_id, eos_id=eos_id,
                            on_step=on_step, generator=settings.generator(dev))
    except _Stop:
        out = last["x"]
    sync(dev)
    return out, time.perf_counter() - t0, last["forwards"], last["tokens"]


def chat_batch(sb: SequenceBuilder, questions: list[str], device) -> tuple[torch.Tensor, torch.Tensor]:
    b = sb.chat(questions)
    return b.input_ids.to(device), b.attention_mask.to(device)


def with_ratios(rows: list[Row]) -> list[Row]:
    base = {(r.section, r.batch): r.tok_per_s for r in rows if r.config == "plain"}
    for r in rows:
        if (r.section, r.batch) in base:
            r.ratio = r.tok_per_s / base[(r.section, r.batch)]
    return rows


def accuracy_section(lm: LoadedModel, args, configs: list[str]) -> list[Row]:
    probs = generate_arithmetic(args.n_problems, seed=12345, difficulty=RECIPE["difficulty"],
                                max_operand=RECIPE["max_operand"])
    sp = lm.builder.special
    big = max(args.batch_sizes)
    rows, texts_by = [], {}
    for name in configs:
        s = SamplerSettings(steps=GEN, gen_length=GEN, block_length=BLOCK, **CONFIGS[name])
        for batch in sorted(args.batch_sizes, reverse=True):
            n = args.n_problems if batch == big else min(args.n_batch1, args.n_problems)
            texts, secs, nfe, fed = [], 0.0, 0, 0
            for i in range(0, n, batch):
                ids, attn = chat_batch(lm.builder, [p["question"] for p in probs[i : min(i + batch, n)]], lm.device)
                out, t, f, k = run_text(lm.model, ids, attn, s, mask_id=sp.mask, eos_id=sp.eos)
                texts += lm.tokenizer.batch_decode(out[:, ids.shape[1]:], skip_special_tokens=True)
                secs, nfe, fed = secs + t, nfe + f, fed + k
            texts_by[name, batch] = texts
            acc = sum(extract_answer(a) == p["answer"] for a, p in zip(texts, probs)) / n
            extra = {} if batch == big else {f"same_answers_as_batch{big}": texts == texts_by[name, big][:n]}
            same = None
            if ("plain", batch) in texts_by:
                same = sum(a == b for a, b in zip(texts, texts_by["plain", batch])) / n
            rows.append(Row("accuracy", name, batch, n, n * GEN, secs, n * GEN / secs, nfe, fed / (n * GEN), acc,
                            same, extra=extra))
            print(f"  accuracy {name:11s} batch {batch}: acc {acc:.3f}  {n * GEN / secs:8.1f} tok/s  NFE {nfe}"
                  + (f"  e.g. {texts[0][:60]!r}" if batch == big else ""), flush=True)
    return with_ratios(rows)


def speed_section(args, configs: list[str], device, dtype) -> list[Row]:
    cfg = MMaDAConfig.from_preset(args.preset)
    torch.manual_seed(0)
    with torch.device(device):
        model = MMaDAModelLM(cfg).to(dtype).eval()
    sb = SequenceBuilder(load_text_tokenizer("builtin"))
    probs = generate_arithmetic(max(args.speed_batch_sizes), seed=999, difficulty=1)
    rows = []
    for batch, blocks in zip(args.speed_batch_sizes, args.speed_blocks):
        ids, attn = chat_batch(sb, [p["question"] for p in probs[:batch]], device)
        blocks = min(blocks, GEN // BLOCK)
        for name in configs:
            s = SamplerSettings(steps=GEN, gen_length=GEN, block_length=BLOCK, **CONFIGS[name])
            _, secs, nfe, fed = run_text(model, ids, attn, s, mask_id=cfg.mask_token_id, eos_id=cfg.eos_token_id,
                                         max_blocks=None if blocks == GEN // BLOCK else blocks)
            tokens = batch * blocks * BLOCK
            rows.append(Row("speed", name, batch, batch, tokens, secs, tokens / secs, nfe, fed / tokens,
                            extra={"blocks_timed": blocks, "preset": args.preset}))
            print(f"  speed {args.preset} {name:11s} batch {batch}: {tokens / secs:8.2f} tok/s "
                  f"({blocks} blocks, {secs:.1f}s)", flush=True)
    return with_ratios(rows)


def t2i_section(args, device, dtype) -> list[Row]:
    cfg = MMaDAConfig.from_preset(args.preset)
    torch.manual_seed(0)
    with torch.device(device):
        model = MMaDAModelLM(cfg).to(dtype).eval()
    sb = SequenceBuilder(load_text_tokenizer("builtin"))
    caps = [f"a {c} {s}" for c in ("red", "blue", "green", "yellow") for s in ("circle", "square")]
    B = args.t2i_batch
    caps = (caps * (B // len(caps) + 1))[:B]
    N = cfg.num_vq_tokens
    cond = sb.t2i(caps, num_image_tokens=N, max_text_len=args.t2i_text_len).to(device)
    unc = sb.t2i([""] * B, num_image_tokens=N, max_text_len=args.t2i_text_len).to(device)
    for b in (cond, unc):  # the preset's mask id (the 1b preset uses LLaDA's, not the builtin tokenizer's)
        b.input_ids[b.image_mask] = cfg.mask_token_id
    offset = cfg.llm_vocab_size  # image code c has id llm_vocab_size + c
    rows, codes = [], {}
    for name in ("plain", "+prefix"):
        stats = {}
        sync(device)
        t0 = time.perf_counter()
        settings = ImageSamplerSettings(steps=args.t2i_steps, guidance_scale=3.5,
                                        cache="none" if name == "plain" else "prefix")
        codes[name] = generate_image(
            model, cond.input_ids, settings, attention_mask=cond.attention_mask, uncond_input_ids=unc.input_ids,
            uncond_attention_mask=unc.attention_mask, codebook_size=cfg.codebook_size, image_offset=offset,
            num_image_tokens=N, mask_id=cfg.mask_token_id, generator=settings.generator(device),
            on_step=lambda d, st=stats: st.update(d))
        sync(device)
        secs = time.perf_counter() - t0
        agree = float((codes[name] == codes["plain"]).float().mean())
        rows.append(Row("t2i", name, B, B, B * N, secs, B / secs, stats["forwards"], stats["tokens"] / (B * N),
                        extra={"images_per_s": B / secs, "codes_equal_plain": agree, "preset": args.preset}))
        print(f"  t2i {args.preset} {name:8s} batch {B}: {B / secs:.3f} images/s  codes = plain: {agree:.3f}",
              flush=True)
    return with_ratios(rows)


# ---------------------------------------------------------------------------------------------
# report


def print_table(title: str, rows: list[Row], unit: str = "tok/s") -> None:
    if not rows:
        return
    print(f"\n{title}")
    batches = sorted({r.batch for r in rows})
    head = f"{'config':12s}" + "".join(f" | b{b}: {unit:>8s}  ×plain    acc  =plain   NFE  fed/tok" for b in batches)
    print(head)
    print("-" * len(head))
    for name in dict.fromkeys(r.config for r in rows):
        line = f"{name:12s}"
        for b in batches:
            r = next((r for r in rows if r.config == name and r.batch == b), None)
            if r is None:
                line += " | " + " " * 52
                continue
            rate = r.extra.get("images_per_s", r.tok_per_s)
            acc = "  —  " if r.accuracy is None else f"{r.accuracy:5.3f}"
            same = r.same_as_plain if r.same_as_plain is not None else r.extra.get("codes_equal_plain")
            same = "  —  " if same is None else f"{same:5.3f}"
            ratio = "   —  " if r.ratio is None else f"{r.ratio:5.2f}×"
            line += f" | {rate:12.2f}  {ratio}  {acc}  {same} {r.nfe:5d}  {r.fed_per_token:6.1f}"
        print(line)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sections", default="accuracy,speed,t2i", help="comma list of accuracy, speed, t2i")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"], help="speed/t2i sections' model dtype")
    p.add_argument("--preset", default="small", help="model preset of the speed and t2i sections")
    p.add_argument("--batch-sizes", default="1,8", help="accuracy section: comma list (the largest runs all problems)")
    p.add_argument("--speed-batch-sizes", default="1,8", help="speed section: comma list")
    p.add_argument("--speed-blocks", default=None,
                   help="blocks timed per speed batch size (default: all 8 for batch 1 and on GPU; on CPU 1 for "
                        "larger batches)")
    p.add_argument("--speed-configs", default="default",
                   help=f"'default' {SPEED_DEFAULT}, 'all' {SPEED_ALL}, or a comma list")
    p.add_argument("--configs", default="all", help=f"accuracy-section configs: 'all' {tuple(CONFIGS)} or a comma list")
    p.add_argument("--n-problems", type=int, default=16, help="accuracy: held-out problems (batch-8 run)")
    p.add_argument("--n-batch1", type=int, default=2, help="accuracy: problems run at batch 1")
    p.add_argument("--t2i-batch", type=int, default=8)
    p.add_argument("--t2i-steps", type=int, default=12)
    p.add_argument("--t2i-text-len", type=int, default=32, help="caption budget (the official layout uses 128)")
    p.add_argument("--cache-dir", default="runs/bench_cache", help="where the trained accuracy model is kept")
    p.add_argument("--train-steps", type=int, default=None, help=f"accuracy model training steps ({RECIPE['steps']})")
    p.add_argument("--accuracy-preset", default=RECIPE["preset"],
                   help="preset of the accuracy model (trained in-script on --device; e.g. small on a GPU)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--quick", action="store_true", help="smoke run: 8 problems, batch 8 only, 1 block, fewer steps")
    p.add_argument("--json", default=None, help="also write all rows to this JSON file")
    args = p.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    args.speed_batch_sizes = [int(b) for b in args.speed_batch_sizes.split(",")]
    if args.quick:
        args.batch_sizes, args.n_problems, args.t2i_steps = [max(args.batch_sizes)], 8, 4
        args.speed_batch_sizes = [min(args.speed_batch_sizes)]
    if args.speed_blocks is None:
        full = GEN // BLOCK
        args.speed_blocks = [full if (b == 1 or device.type == "cuda") and not args.quick else 1
                             for b in args.speed_batch_sizes]
    else:
        args.speed_blocks = [int(x) for x in args.speed_blocks.split(",")]
        if len(args.speed_blocks) != len(args.speed_batch_sizes):
            p.error("--speed-blocks needs one value per --speed-batch-sizes entry")
    sections = args.sections.split(",")
    configs = list(CONFIGS) if args.configs == "all" else args.configs.split(",")
    speed_configs = (list(SPEED_DEFAULT) if args.speed_configs == "default"
                     else list(SPEED_ALL) if args.speed_configs == "all" else args.speed_configs.split(","))
    for c in configs + speed_configs:
        if c not in CONFIGS:
            p.error(f"unknown config {c!r}; choose from {list(CONFIGS)}")
    print(f"bench_sampling: device {device} threads {torch.get_num_threads()} gen {GEN} block {BLOCK} "
          f"steps {GEN} threshold {THRESHOLD} factor {FACTOR}", flush=True)
    t_all = time.time()
    rows: list[Row] = []
    if "accuracy" in sections:
        recipe = {**RECIPE, "preset": args.accuracy_preset}
        if args.train_steps is not None:
            recipe["steps"] = args.train_steps
        ckpt = train_arithmetic_model(Path(args.cache_dir), recipe, device=args.device)
        lm = load_checkpoint(ckpt, device=args.device)
        lm.model.to(dtype)  # sampled in --dtype (trained in fp32)
        print(f"accuracy model: {ckpt} ({json.loads((ckpt / 'recipe.json').read_text())})", flush=True)
        acc_rows = accuracy_section(lm, args, configs)
        rows += acc_rows
    if "speed" in sections:
        rows += speed_section(args, speed_configs, device, dtype)
    if "t2i" in sections:
        rows += t2i_section(args, device, dtype)

    print_table(f"[accuracy] {args.accuracy_preset} preset trained on arithmetic, {args.device} {args.dtype}, "
                f"gen {GEN}/block {BLOCK}/"
                f"steps {GEN}, greedy; acc over {args.n_problems} problems (batch-1 rows: first {args.n_batch1})",
                [r for r in rows if r.section == "accuracy"])
    print_table(f"[speed] {args.preset} preset, random init, {args.device} {args.dtype}; blocks timed per batch "
                f"{dict(zip(args.speed_batch_sizes, args.speed_blocks))}", [r for r in rows if r.section == "speed"])
    print_table(f"[t2i] {args.preset} preset, random init, MaskGIT {args.t2i_steps} steps, CFG 3.5 "
                f"(cond+uncond batched), {args.device} {args.dtype}", [r for r in rows if r.section == "t2i"],
                unit="img/s")
    for r in rows:
        for k, v in r.extra.items():
            if k.startswith("same_answers_as_batch"):
                print(f"{r.config} batch {r.batch}: answers identical to the larger batch's: {v}")
    print(f"\ntotal {time.time() - t_all:.0f}s")
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in rows], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
