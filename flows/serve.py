"""Serve every pipeline deployment from one process (``prefect.serve``); runs start from the UI's Run button.

    PREFECT_API_URL=http://127.0.0.1:4200/api python -m flows.serve [--params params.yaml]
    mmada serve        # starts the Prefect server and the MLflow UI too, then this

Deployments (flow/deployment), defaults from ``params.yaml``:

    pipeline/tiny              the whole pipeline (each stage a subprocess task)
    tokenizer/builtin          curate/<dataset> (4)          vq-train/tiny
    train/pretrain  train/sft  train/grpo
    evaluate/tiny

Flow runs execute in subprocesses of this process, in the current directory (the project root).
Each deployment has ``concurrency_limit=1`` (one training job per deployment at a time).

For a cluster, deploy the same flows to a ``process`` work pool whose worker runs on the SLURM
login node, and pick ``launch.kind = sbatch`` in the run form (see the README, "Clusters"):

    prefect work-pool create gpu-login --type process
    prefect worker start --pool gpu-login            # on the login node, in the project checkout
    python -m flows.serve --deploy gpu-login         # register the deployments on that pool (in the checkout)
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from mmada.pipeline import stages as S

DESCRIPTIONS = {
    "pipeline": "The whole tiny pipeline (same commands and outputs as `dvc repro`).",
    "tokenizer": "Train the built-in BPE text tokenizer.",
    "vq-train": "Train the tiny MAGVIT-v2 image tokenizer (launched job).",
    "train-pretrain": "Stage 1 pretraining (t2i + LM + captioning); registers mmada-tiny@pretrain.",
    "train-sft": "Stage 2 mixed long-CoT SFT from @pretrain; registers mmada-tiny@sft.",
    "train-grpo": "Stage 3 UniGRPO from @sft; registers mmada-tiny@grpo.",
    "evaluate": "Evaluate a registered version (math, mmu, t2i, reconstructions).",
}


def deployment_specs(params_path: str = S.PARAMS_FILE) -> list[tuple[Any, str, dict[str, Any], str]]:
    """(flow, deployment name, default parameters, description) for every deployment."""
    from flows.curate import curate_flow
    from flows.stages import (
        default_parameters,
        evaluate_flow,
        pipeline_flow,
        tokenizer_flow,
        train_flow,
        vq_flow,
    )

    d = default_parameters(params_path)
    specs = [
        (pipeline_flow, "tiny", d["pipeline"], DESCRIPTIONS["pipeline"]),
        (tokenizer_flow, "builtin", d["tokenizer"], DESCRIPTIONS["tokenizer"]),
        *[(curate_flow, n, d[f"curate-{n}"], f"Curate the built-in {n} spec into runs/data/{n}.")
          for n in S.DATASETS],
        (vq_flow, "tiny", d["vq-train"], DESCRIPTIONS["vq-train"]),
        *[(train_flow, s, d[f"train-{s}"], DESCRIPTIONS[f"train-{s}"]) for s in S.TRAIN_STAGES],
        (evaluate_flow, "tiny", d["evaluate"], DESCRIPTIONS["evaluate"]),
    ]
    return specs


def deployment_names(params_path: str = S.PARAMS_FILE) -> list[str]:
    return [f"{fl.name}/{name}" for fl, name, _, _ in deployment_specs(params_path)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m flows.serve", description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", default=S.PARAMS_FILE)
    ap.add_argument("--deploy", metavar="WORK_POOL", default=None,
                    help="register the deployments on this work pool instead of serving them here")
    ap.add_argument("--suffix", default="", help="append this to every deployment name (e.g. -hpc)")
    args = ap.parse_args(argv)
    from prefect import serve

    specs = deployment_specs(args.params)
    if args.deploy:  # a process pool's worker imports the flows by module path and runs them in this folder
        from pathlib import Path

        from prefect.deployments import deploy
        from prefect.deployments.runner import EntrypointType

        deploy(*[fl.to_deployment(name + args.suffix, parameters=params, description=desc, tags=["mmada"], concurrency_limit=1,
                                  entrypoint_type=EntrypointType.MODULE_PATH,
                                  job_variables={"working_dir": str(Path.cwd())})
                 for fl, name, params, desc in specs],
               work_pool_name=args.deploy, build=False, push=False, print_next_steps_message=False)
        print(f"registered {len(specs)} deployments on work pool {args.deploy!r}", flush=True)
        return 0
    deployments = [fl.to_deployment(name + args.suffix, parameters=params, description=desc, tags=["mmada"], concurrency_limit=1)
                   for fl, name, params, desc in specs]
    print("serving: " + ", ".join(f"{fl.name}/{name}" for fl, name, _, _ in specs), flush=True)
    serve(*deployments, print_starting_message=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
