"""``mmada vq`` subcommands: train a tokenizer, encode images into codes.

    mmada vq train --preset tiny                                # ~minutes on a 2-core CPU
    mmada vq train --config configs/vq/tiny.yaml --set trainer.max_steps=500 --set optim.lr=1e-3
    mmada vq encode runs/vq/tiny/tokenizer img_dir/ a.png --output codes.npz [--resolution 32]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mmada.cli._args import int_at_least


def register(subparsers: argparse._SubParsersAction) -> None:
    vq = subparsers.add_parser("vq", help="image tokenizer (MAGVIT-v2): train, encode")
    sub = vq.add_subparsers(dest="vq_command", required=True, metavar="VQ_COMMAND")

    train = sub.add_parser("train", help="train a tokenizer; exports <output_dir>/tokenizer (safetensors)")
    src = train.add_mutually_exclusive_group()
    src.add_argument("--preset", default=None, choices=["tiny", "official"],
                     help="named recipe: tiny (default) or official (mmada.training.vq.PRESETS)")
    src.add_argument("--config", default=None, help="YAML training config (see configs/vq/)")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config field, e.g. --set trainer.max_steps=500 (repeatable)")
    train.add_argument("--output-dir", default=None, help="shortcut for --set output_dir=…")
    train.add_argument("--max-steps", type=int, default=None, help="shortcut for --set trainer.max_steps=…")
    train.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or ./runs)")
    train.add_argument("--progress", action="store_true", help="show Lightning's progress bar")
    train.add_argument("--result-file", default=None, metavar="PATH",
                       help="also write the run's result (TrainResult) as JSON here (for a job's launcher)")
    train.set_defaults(func=cmd_train)

    enc = sub.add_parser("encode", help="encode image files into codes (.npz with codes, sources, grid)")
    enc.add_argument("model", help="tokenizer directory, preset (tiny, official), Hub id or MLflow models:/ URI")
    enc.add_argument("inputs", nargs="+", help="image files or directories (searched recursively)")
    enc.add_argument("--output", required=True, help="output .npz path")
    enc.add_argument("--resolution", type=int, default=None, help="square input size (default: the model's)")
    enc.add_argument("--mode", choices=["crop", "squash", "none"], default="crop", help="resize mode")
    enc.add_argument("--batch-size", type=int_at_least(1), default=64)
    enc.add_argument("--device", default=None, help="cpu, cuda, cuda:1 … (default: cpu)")
    enc.set_defaults(func=cmd_encode)


def cmd_train(args: argparse.Namespace) -> int:
    from mmada.config import load_config
    from mmada.training.harness import write_result
    from mmada.training.vq import PRESETS, VQTrainConfig, train_tokenizer

    overrides = list(args.overrides)
    if args.output_dir is not None:
        overrides.append(f"output_dir={args.output_dir}")
    if args.max_steps is not None:
        overrides.append(f"trainer.max_steps={args.max_steps}")
    if args.tracking_uri is not None:
        overrides.append(f"tracking.uri={args.tracking_uri}")
    cfg = load_config(VQTrainConfig, args.config or PRESETS[args.preset or "tiny"](), overrides)
    result = train_tokenizer(cfg, progress_bar=args.progress)
    if result.export_dir is not None:  # only rank 0 reports
        print(json.dumps(result.summary()))
        if args.result_file:
            write_result(args.result_file, result)
    return 0


def _expand(inputs: list[str]) -> list[Path]:
    from mmada.data.sources.vision import IMAGE_EXTS
    from mmada.errors import MMaDAError

    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTS)
            if not found:
                raise MMaDAError(f"{p}: directory holds no image files ({', '.join(IMAGE_EXTS)})")
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise MMaDAError(f"{p}: no such file or directory")
    return files


def cmd_encode(args: argparse.Namespace) -> int:
    from mmada.data.vq import load_tokenizer_model
    from mmada.models.vq import encode_images, load_image, save_codes

    files = _expand(args.inputs)
    model = load_tokenizer_model(args.model)
    codes = encode_images(
        model, (load_image(f) for f in files), batch_size=args.batch_size, device=args.device,
        resolution=args.resolution, mode=args.mode,
    )
    res = args.resolution or model.config.resolution
    grid = model.config.grid(res, res)
    path = save_codes(args.output, codes, [str(f) for f in files], grid)
    print(f"encoded {len(files)} images → {codes.shape[1]} tokens each ({grid[0]}×{grid[1]}), "
          f"codebook {model.codebook_size}; wrote {path}")
    return 0
