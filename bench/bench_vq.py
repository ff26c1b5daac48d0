"""Tokenizer throughput: images/s encoded and decoded, beside the FLOP count and the device's
dense-matmul rate (the baseline: the ratio says what fraction of the chip's GEMM speed the conv
stack reaches).

    python bench/bench_vq.py                      # CPU: tiny + official (256 px), fp32
    python bench/bench_vq.py --device cuda        # GPU: fp32 and bf16, official at 256/512 px
    python bench/bench_vq.py --quick              # fewer iterations (smoke)

FLOPs are counted once per configuration with ``torch.utils.flop_counter`` on the meta device
(convolutions, attention and matmuls; a multiply-add counts as 2). Weights are random: throughput
does not depend on them. Rows: ``model, res, dtype, batch, op, GFLOP/img, img/s, TFLOP/s,
ratio = achieved / matmul TFLOP/s``; on GPU also ``bf16/fp32`` speedup.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from mmada.models.vq import MAGVITv2, VQConfig
from mmada.training.vq import TINY_MODEL


@dataclass
class Row:
    model: str
    res: int
    dtype: str
    batch: int
    op: str
    gflop_per_img: float
    img_per_s: float
    tflops: float
    ratio_vs_matmul: float


def count_flops(cfg: VQConfig, res: int) -> tuple[float, float]:
    """(encode, decode) FLOPs per image at ``res`` px (meta tensors: no compute)."""
    with torch.device("meta"):
        model = MAGVITv2(cfg)
        x = torch.empty(1, 3, res, res)
        with FlopCounterMode(display=False) as fc:
            codes = model.encode(x)
        enc = fc.get_total_flops()
        with FlopCounterMode(display=False) as fc:
            model.decode(torch.zeros_like(codes))
        dec = fc.get_total_flops()
    return float(enc), float(dec)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: torch.device, warmup: int, iters: int) -> float:
    for _ in range(warmup):
        fn()
    sync(device)
    t = time.perf_counter()
    for _ in range(iters):
        fn()
    sync(device)
    return (time.perf_counter() - t) / iters


def matmul_tflops(device: torch.device, dtype: torch.dtype, iters: int) -> float:
    n = 8192 if device.type == "cuda" else 2048
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    sec = timed(lambda: a @ b, device, 2, iters)
    return 2 * n**3 / sec / 1e12


def bench_one(name: str, cfg: VQConfig, res: int, batch: int, device: torch.device, dtype: torch.dtype,
              peak: float, warmup: int, iters: int) -> list[Row]:
    enc_flops, dec_flops = count_flops(cfg, res)
    torch.manual_seed(0)
    model = MAGVITv2(cfg).eval().to(device=device, dtype=dtype).to(memory_format=torch.channels_last)
    x = (torch.rand(batch, 3, res, res, device=device) * 2 - 1).to(dtype).contiguous(memory_format=torch.channels_last)
    codes = model.encode(x)
    grid = cfg.grid(res, res)
    rows = []
    for op, fn, flops in (("encode", lambda: model.encode(x), enc_flops),
                          ("decode", lambda: model.decode(codes, grid), dec_flops)):
        sec = timed(fn, device, warmup, iters)
        tflops = flops * batch / sec / 1e12
        rows.append(Row(name, res, str(dtype).removeprefix("torch."), batch, op, flops / 1e9, batch / sec, tflops,
                        tflops / peak))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto", help="cpu, cuda or auto")
    ap.add_argument("--quick", action="store_true", help="1 warm-up + 1 timed iteration (smoke)")
    ap.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = ap.parse_args()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    warmup, iters = (1, 1) if args.quick else ((3, 10) if device.type == "cuda" else (1, 3))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        # cuDNN runs fp32 convolutions on TF32 tensor cores by default; let the fp32 matmul
        # baseline do the same so the fp32 ratio compares like with like.
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32
        # (config name, config, resolution, batch)
        plan = [("tiny", TINY_MODEL, 32, 1024), ("official", VQConfig(), 256, 32), ("official", VQConfig(), 512, 8)]
        dtypes = [torch.float32, torch.bfloat16]
    else:
        plan = [("tiny", TINY_MODEL, 32, 256), ("official", VQConfig(), 256, 1)]
        dtypes = [torch.float32]
    print(f"device: {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'} "
          f"({torch.get_num_threads()} threads), torch {torch.__version__}")
    if device.type == "cuda":
        print(f"float32 rows: TF32 tensor cores {'on' if torch.backends.cudnn.allow_tf32 else 'off'} "
              "(convs and the matmul baseline alike)")
    rows: list[Row] = []
    peaks = {}
    for dtype in dtypes:
        peaks[dtype] = matmul_tflops(device, dtype, 10 if device.type == "cuda" else 3)
        print(f"dense matmul baseline {str(dtype).removeprefix('torch.')}: {peaks[dtype]:.2f} TFLOP/s")
    for name, cfg, res, batch in plan:
        for dtype in dtypes:
            rows += bench_one(name, cfg, res, batch, device, dtype, peaks[dtype], warmup, iters)
    print(f"\n{'model':9}{'res':>5} {'dtype':9}{'batch':>6} {'op':7}{'GFLOP/img':>10}{'img/s':>10}"
          f"{'TFLOP/s':>9}{'ratio':>7}{'bf16/fp32':>10}")
    for r in rows:
        speedup = ""
        if r.dtype == "bfloat16":
            base = next(b for b in rows if (b.model, b.res, b.op, b.dtype) == (r.model, r.res, r.op, "float32"))
            speedup = f"{r.img_per_s / base.img_per_s:.2f}x"
        ips = f"{r.img_per_s:.1f}" if r.img_per_s >= 100 else f"{r.img_per_s:.3g}"
        print(f"{r.model:9}{r.res:>5} {r.dtype:9}{r.batch:>6} {r.op:7}{r.gflop_per_img:>10.2f}{ips:>10}"
              f"{r.tflops:>9.3f}{r.ratio_vs_matmul:>7.2f}{speedup:>10}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"device": str(device), "matmul_tflops": {str(k): v for k, v in peaks.items()},
                       "rows": [asdict(r) for r in rows]}, fh, indent=2)


if __name__ == "__main__":
    main()
