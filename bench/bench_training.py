"""Training throughput: the Lightning loop (``DiffusionModule`` + ``build_trainer``) against a plain PyTorch
loop doing the same steps on the same batches, and (on a GPU) model FLOPs utilisation.

    python bench/bench_training.py                        # CPU: tiny and small presets, tokens/s + overhead ratio
    python bench/bench_training.py --sizes tiny --steps 30 --threads 1
    python bench/bench_training.py --sizes tiny --settings 32-true:wide:joint bf16-mixed:data:per_task
    python bench/bench_training.py --mfu                  # GPU: the 1b preset in bf16-mixed, eager vs compiled MFU
    python bench/bench_training.py --mfu --seq-len 1024 2048 --rows 0 --plain   # largest batch that fits; + plain loop

CPU mode trains on real rows: the built-in arithmetic (lm), shapes (t2i) and shapes VQA (mmu)
specs are curated into a temp dir (images tokenized with an untrained tiny MAGVIT-v2), and the
data module's first batches are materialised once, so both loops see identical tensors and only
the loop differs. ``--settings`` compares precisions (fp32 / bf16-mixed autocast), text budgets (the
padding of each stream's rows) and one forward for all tasks against one per task (``loss.per_task_forward``),
each against the first setting, in the same run (ratios hold on a shared machine; wall times do not). ``--mfu`` uses lm rows of random tokens (length ``--seq-len``, no padding), the
shape that matters for FLOPs. Both loops: masked-diffusion ``unified_loss``, backward, global-norm
clipping, AdamW, cosine schedule; bf16 autocast on GPU (Lightning ``bf16-mixed``). ``--mfu`` times the
Lightning loop (what ``mmada train`` runs) eager and with ``trainer.compile: true`` (each block compiled)
at every ``--seq-len``, and prints compiled/eager as a ratio; ``--rows 0`` finds the largest batch
(powers of two) whose eager step fits in memory.

MFU = tokens/s · (6·N + 12·L·T·d) / peak, with N the parameters except the input embedding
(the untied LM head is a real matmul) and the attention term for full (non-causal) attention.
``--peak-tflops`` defaults to 989 (H100/H200 SXM dense bf16).
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmada.diffusion import unified_loss
from mmada.models import MMaDAConfig, MMaDAModelLM
from mmada.tokenization import SpecialTokenIds, load_text_tokenizer
from mmada.training.config import load_train_config
from mmada.training.module import DiffusionModule, to_sequence_batches
from mmada.training.optim import build_optimizer, build_scheduler


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def batch_tokens(batch: dict) -> int:
    return int(sum(b["attention_mask"].sum() for b in batch.values()))


# ------------------------------------------------------------------------------------------------ data


def curated_batches(workdir: Path, n: int, num_vq_tokens: int, tokenizer, budgets: str = "wide") -> list[dict]:
    """Materialise ``n`` mixed batches (t2i + lm + mmu) from freshly curated built-in shards (curated once per
    ``workdir``; ``budgets`` only changes how far the same rows are padded)."""
    from mmada.data.curate import curate
    from mmada.data.loading import ShardDataModule
    from mmada.data.specs import load_spec
    from mmada.models.vq import MAGVITv2
    from mmada.training.vq import TINY_MODEL

    repo = Path(__file__).resolve().parents[1]
    if not (workdir / "vq").is_dir():
        torch.manual_seed(0)
        MAGVITv2(TINY_MODEL).save_pretrained(workdir / "vq")
        vq = ["vq.enabled=true", f"vq.model={workdir / 'vq'}", "vq.device=cpu"]
        for name, spec, extra in (("arithmetic", "arithmetic.yaml", ["sources.0.n=300"]),
                                  ("shapes", "shapes.yaml", ["sources.0.n=200", *vq]),
                                  ("shapes_vqa", "shapes_vqa.yaml", ["sources.0.n=60", *vq])):
            curate(load_spec(str(repo / "data_specs" / spec), extra), out=str(workdir / name))
    cfg = _config(workdir, "tiny", "cpu", n, budgets=budgets)
    dm = ShardDataModule(cfg.data, tokenizer, num_vq_tokens=num_vq_tokens, batches_per_epoch=n)
    return list(dm.train_dataset())


def random_lm_batches(n: int, rows: int, seq_len: int, special: SpecialTokenIds) -> list[dict]:
    """Full-length text rows of random ordinary tokens (no special ids, no padding)."""
    g = torch.Generator().manual_seed(0)
    ids_in_use = [v for v in special.as_dict().values() if isinstance(v, int) and v >= 32]
    high = min(ids_in_use) if ids_in_use else special.image_offset
    out = []
    for _ in range(n):
        ids = torch.randint(32, high, (rows, seq_len), generator=g)
        ids[:, 0] = special.bos
        ones = torch.ones_like(ids, dtype=torch.bool)
        out.append({"lm": {"input_ids": ids, "attention_mask": ones, "prompt_mask": ~ones, "image_mask": ~ones,
                           "keys": [""] * rows}})
    return out


BUDGETS = {  # max_text_len per stream: t2i, lm, mmu
    "wide": (32, 256, 192),  # the budgets before they were sized to the data
    "data": (16, 184, 136),  # configs/train/tiny_*.yaml: the longest curated caption / text / VQA row
}


def _config(workdir: Path, preset: str, accelerator: str, steps: int, overrides: dict | None = None,
            precision: str | None = None, budgets: str = "wide", forward: str = "joint", compile: bool = False):
    t2i, lm, mmu = BUDGETS[budgets]
    streams = {"t2i": {"manifests": [str(workdir / "shapes")], "batch_size": 4, "max_text_len": t2i},
               "lm": {"manifests": [str(workdir / "arithmetic")], "batch_size": 4, "max_text_len": lm},
               "mmu": {"manifests": [str(workdir / "shapes_vqa")], "batch_size": 4, "max_text_len": mmu}}
    precision = precision or ("bf16-mixed" if accelerator == "cuda" else "32-true")
    return load_train_config({
        "name": "bench", "stage": "pretrain", "seed": 0, "output_dir": str(workdir / "out"),
        "model": {"preset": preset, "overrides": overrides or {}},
        "data": {"streams": streams, "shuffle_buffer": 50, "cond_dropout_prob": 0.0},
        "optim": {"lr": 3e-4, "warmup_steps": 2},
        "loss": {"per_task_forward": forward == "per_task"},
        "trainer": {"accelerator": "gpu" if accelerator == "cuda" else "cpu", "max_steps": steps,
                    "log_every_n_steps": 1, "precision": precision, "compile": compile},
    })


# ------------------------------------------------------------------------------------------------ loops


def plain_loop(cfg, model_config, special, batches, device: str, warmup: int) -> float:
    """Seconds per step of a hand-written loop (after ``warmup`` steps)."""
    torch.manual_seed(cfg.seed)
    with torch.device(device):
        model = MMaDAModelLM(model_config).train()
    opt = build_optimizer(model, cfg.optim)
    sched = build_scheduler(opt, cfg.optim, max_steps=len(batches))
    bf16 = cfg.trainer.precision == "bf16-mixed"  # what Lightning's bf16-mixed does: autocast, fp32 weights
    autocast = torch.autocast("cuda" if device == "cuda" else "cpu", dtype=torch.bfloat16, enabled=bf16)
    t0 = None
    for i, batch in enumerate(batches):
        if i == warmup:
            sync(device)
            t0 = time.perf_counter()
        b = {t: {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in x.items()}
             for t, x in batch.items()}
        with autocast:
            res = unified_loss(model, to_sequence_batches(b), mask_id=special.mask, coeffs=cfg.coeffs,
                               per_task_forward=cfg.loss.per_task_forward)
        res.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.max_grad_norm)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        res.loss.item()  # what a loop that prints its loss pays
    sync(device)
    return (time.perf_counter() - t0) / (len(batches) - warmup)


class _Timer:
    def __init__(self, warmup: int, device: str):
        self.warmup, self.device, self.t0, self.t1 = warmup, device, None, None

    def on_train_batch_start(self, trainer, module, batch, idx):
        if idx == self.warmup:
            sync(self.device)
            self.t0 = time.perf_counter()

    def on_train_end(self, trainer, module):
        sync(self.device)
        self.t1 = time.perf_counter()


def lightning_loop(cfg, model_config, special, batches, device: str, warmup: int) -> float:
    import lightning as L

    from mmada.training.callbacks import SpeedMonitor
    from mmada.training.trainer import build_trainer

    class Timer(_Timer, L.Callback):
        pass

    timer = Timer(warmup, device)
    module = DiffusionModule(cfg, model_config=model_config, special=special)
    trainer = build_trainer(cfg, callbacks=[timer, SpeedMonitor()], enable_checkpointing=False)
    loader = torch.utils.data.DataLoader(batches, batch_size=None, pin_memory=device == "cuda")
    trainer.fit(module, train_dataloaders=loader)
    return (timer.t1 - timer.t0) / (len(batches) - warmup)


def flops_per_token(config: MMaDAConfig, seq_len: int) -> float:
    d, f, L = config.d_model, config.mlp_hidden_size, config.n_layers
    kv = config.n_kv_heads * config.head_dim
    block = 2 * d * d + 2 * d * kv + 3 * d * f
    non_embedding = L * block + config.embedding_size * d  # blocks + LM head (input embedding excluded)
    return 6 * non_embedding + 12 * L * seq_len * d


# ------------------------------------------------------------------------------------------------ main


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", nargs="+", default=["tiny", "small"])
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--repeats", type=int, default=2, help="CPU: alternate plain/Lightning runs this many times")
    p.add_argument("--settings", nargs="+",
                   default=["32-true:wide:joint", "bf16-mixed:wide:joint", "bf16-mixed:data:joint",
                            "bf16-mixed:data:per_task"],
                   help="CPU: PRECISION:BUDGETS:FORWARD to compare (budgets: wide = 32/256/192 text tokens for "
                   "t2i/lm/mmu, data = 16/184/136 as in configs/train/tiny_*.yaml; forward: joint = one forward "
                   "for all rows, per_task = loss.per_task_forward); the first is the baseline of 'vs first'")
    p.add_argument("--mfu", action="store_true", help="GPU: MFU of --preset in bf16-mixed")
    p.add_argument("--preset", default="1b")
    p.add_argument("--rows", type=int, default=8, help="--mfu: rows per step (0: the largest that fits)")
    p.add_argument("--seq-len", type=int, nargs="+", default=[1024])
    p.add_argument("--plain", action="store_true", help="--mfu: also time the plain loop (Lightning's overhead)")
    p.add_argument("--peak-tflops", type=float, default=989.0)
    p.add_argument("--device", default="cuda", help=argparse.SUPPRESS)  # `--mfu --device cpu`: smoke test only
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.mfu:
            run_mfu(args, work)
            return
        tok = load_text_tokenizer("builtin")
        print(f"# CPU, {torch.get_num_threads()} threads; {args.steps} steps ({args.warmup} warm-up) per loop; "
              f"best of {args.repeats} alternating runs")
        special = SpecialTokenIds.from_tokenizer(tok)
        settings = [tuple(s.split(":")) for s in args.settings]
        batches = {b: curated_batches(work, args.steps, 64, tok, b) for b in dict.fromkeys(b for _, b, _ in settings)}
        # the same rows in every setting: count them once, as the data-sized budgets pad them
        ref = batches.get("data") or next(iter(batches.values()))
        tokens = sum(batch_tokens(b) for b in ref[args.warmup:]) / (args.steps - args.warmup)
        print(f"{'preset':8} {'precision':10} {'budgets':7} {'forward':8} {'params':>7} {'tokens/step':>11} {'plain s/step':>12} "
              f"{'lightning s/step':>16} {'tokens/s (L)':>12} {'overhead':>8} {'vs first':>8}")
        for size in args.sizes:
            mc = MMaDAConfig.from_preset(size)
            best = {}
            for _ in range(args.repeats):  # alternate settings and loops; keep each one's best (least disturbed) run
                for prec, bud, fwd in settings:
                    cfg = _config(work, size, "cpu", args.steps, precision=prec, budgets=bud, forward=fwd)
                    plain, light = best.get((prec, bud, fwd), (math.inf, math.inf))
                    plain = min(plain, plain_loop(cfg, mc, special, batches[bud], "cpu", args.warmup))
                    light = min(light, lightning_loop(cfg, mc, special, batches[bud], "cpu", args.warmup))
                    best[(prec, bud, fwd)] = plain, light
            first = best[settings[0]][1]
            for prec, bud, fwd in settings:
                plain, light = best[(prec, bud, fwd)]
                print(f"{size:8} {prec:10} {bud:7} {fwd:8} {mc.num_parameters_estimate() / 1e6:6.1f}M {tokens:11.0f} "
                      f"{plain:12.3f} {light:16.3f} {tokens / light:12.0f} {light / plain:8.3f} {first / light:7.2f}x")


def largest_rows(cfg, mc, special, seq_len: int, device: str, cap: int = 256) -> int:
    """The largest power-of-two batch whose eager training step fits (two steps of the plain loop)."""
    rows, best = 1, 0
    while rows <= cap:
        try:
            plain_loop(cfg, mc, special, random_lm_batches(2, rows, seq_len, special), device, warmup=1)
            best, rows = rows, rows * 2
        except torch.OutOfMemoryError:
            break
        finally:
            if device == "cuda":
                torch.cuda.empty_cache()
    if not best:
        sys.exit(f"not even one row of {seq_len} tokens fits")
    return best


def run_mfu(args, work: Path) -> None:
    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        sys.exit("--mfu needs a CUDA device")
    torch.backends.cuda.matmul.allow_tf32 = True
    mc = MMaDAConfig.from_preset(args.preset)
    special = (SpecialTokenIds.official() if mc.llm_vocab_size == 126464
               else SpecialTokenIds.from_tokenizer(load_text_tokenizer("builtin")))
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    print(f"# {name}; preset {args.preset} ({mc.num_parameters_estimate() / 1e9:.2f}B params); peak "
          f"{args.peak_tflops} TFLOP/s; {args.steps} steps ({args.warmup} warm-up); Lightning loop", flush=True)
    for seq_len in args.seq_len:
        rows = args.rows or largest_rows(_config(work, args.preset, device, args.steps), mc, special, seq_len, device)
        batches = random_lm_batches(args.steps, rows, seq_len, special)
        fpt = flops_per_token(mc, seq_len)
        tokens = rows * seq_len
        print(f"## seq_len {seq_len}: {rows} rows ({tokens} tokens/step), {fpt / 1e9:.2f} GFLOP/token", flush=True)
        loops = [("eager", lightning_loop, False), ("compiled", lightning_loop, True)]
        if args.plain:
            loops.insert(0, ("plain", plain_loop, False))
        results = {}
        for label, loop, compiled in loops:
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            cfg = _config(work, args.preset, device, args.steps, compile=compiled)
            dt = results[label] = loop(cfg, mc, special, batches, device, args.warmup)
            mfu = tokens / dt * fpt / (args.peak_tflops * 1e12)
            mem = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
            print(f"{label:10} {dt * 1e3:8.1f} ms/step  {tokens / dt:10.0f} tokens/s  MFU {100 * mfu:5.1f}%  "
                  f"peak mem {mem:.1f} GiB", flush=True)
            if device == "cuda":
                torch.cuda.empty_cache()
        print(f"compiled/eager tokens/s: {results['eager'] / results['compiled']:.3f}", flush=True)
        if args.plain:
            print(f"eager lightning/plain time per step: {results['eager'] / results['plain']:.3f}", flush=True)


if __name__ == "__main__":
    main()
