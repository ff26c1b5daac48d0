"""``mmada train CONFIG [--set key=value …]``: run a training stage (the function flows and DVC call).

    mmada train configs/train/tiny_pretrain.yaml
    mmada train configs/train/tiny_sft.yaml --set model.init=models:/mmada-tiny@pretrain
    mmada train configs/train/tiny_sft.yaml --result-file result.json      # the TrainResult as JSON (rank 0)
    mmada train configs/train/tiny_arith_sft.yaml --export-checkpoint runs/train/tiny-arith-sft/checkpoints/step00000500.ckpt
    torchrun --nnodes 2 --nproc-per-node 8 … -m mmada train configs/train/8b_sft.yaml   # see configs/cluster/

Config errors exit with status 2 and name the field (``error: …: optim.lr: Input should be greater than 0``).
"""

from __future__ import annotations

import argparse
import json
import sys


def _train(args: argparse.Namespace) -> int:
    from mmada.training.config import load_train_config

    cfg = load_train_config(args.config, args.set)
    if args.print_config:
        print(json.dumps(cfg.model_dump(mode="json"), indent=1))
        return 0
    if args.export_checkpoint:
        from mmada.training.run import export_checkpoint

        out = export_checkpoint(cfg, args.export_checkpoint, args.export_dir)
        print(json.dumps({"export_dir": str(out), "checkpoint": args.export_checkpoint}))
        return 0
    from mmada.training.harness import write_result
    from mmada.training.run import train

    result = train(cfg, progress_bar=sys.stderr.isatty())
    if result.export_dir is not None:  # only rank 0 reports
        print(json.dumps(result.summary()))
        if args.result_file:
            write_result(args.result_file, result)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="run a training stage (pretrain / sft / grpo) from a config",
                              description="Run a training stage (pretrain / sft / grpo) from a typed config.")
    p.add_argument("config", help="training config YAML (configs/train/*.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set optim.lr=3e-4 --set trainer.devices=8")
    p.add_argument("--print-config", action="store_true", help="print the validated config and exit")
    p.add_argument("--export-checkpoint", metavar="CKPT", default=None,
                   help="instead of training: export this checkpoint of the run (e.g. checkpoints/step00001000.ckpt) "
                        "as a save_pretrained directory")
    p.add_argument("--result-file", default=None, metavar="PATH",
                   help="write the run's result (global step, run id, export dir, registered version, final metrics) "
                        "as JSON here when training ends (rank 0; what the pipeline's watcher reads)")
    p.add_argument("--export-dir", default=None, help="where --export-checkpoint writes (default: <out_dir>/exports/stepN)")
    p.set_defaults(func=_train)
