"""``mmada pipeline …`` and ``mmada serve`` / ``mmada ui``: the pipeline as users drive it.

    mmada pipeline [--until STAGE] [--force]   # dvc repro + progress + summary (README's first command)
    mmada pipeline stage NAME                   # one stage (what dvc.yaml's commands call)
    mmada pipeline summary                      # shards, registered versions, eval table, samples, UIs
    mmada pipeline generate [--check]           # dvc.yaml from mmada/pipeline/stages.py
    mmada pipeline params [--write [--profile full]|--check]  # the resolved configs / write / validate params.yaml
    mmada serve                                 # Prefect server + served deployments + MLflow UI (Ctrl-C stops)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mmada.errors import MMaDAError


def _launch_spec(text: str | None):
    from mmada.config import parse_yaml, validate
    from mmada.pipeline.launch import LaunchSpec

    if not text:
        return LaunchSpec()
    raw = Path(text).read_text() if not text.lstrip().startswith("{") and Path(text).is_file() else text
    return validate(LaunchSpec, parse_yaml(raw, "--launch"), "--launch")  # JSON is YAML


def _run(args: argparse.Namespace) -> int:
    from mmada.pipeline.run import run_pipeline

    return run_pipeline(until=args.until, force=args.force, dry=args.dry)


def _stage(args: argparse.Namespace) -> int:
    from mmada.pipeline import stages as S
    from mmada.pipeline.context import StageContext, StageOutputs
    from mmada.pipeline.dispatch import run_stage
    from mmada.pipeline.params import load_params
    from mmada.pipeline.report import ConsoleReporter

    S.get_stage(args.name)
    params = load_params(args.params)
    launch = _launch_spec(args.launch)
    ctx = StageContext.create(ConsoleReporter(args.name, echo_job_output=args.verbose), launch=launch,
                              outputs=StageOutputs(args.out_base))
    result = run_stage(args.name, params, ctx, model_ref=args.model_ref)
    if args.json:
        print(json.dumps(result, default=str))
    return 0


def _summary(args: argparse.Namespace) -> int:
    from mmada.pipeline.summary import summary_text

    print(summary_text())
    return 0


def _generate(args: argparse.Namespace) -> int:
    from mmada.pipeline import stages as S

    path = Path("dvc.yaml")
    if args.check:
        if not path.is_file() or path.read_text() != S.dvc_yaml_text():
            raise MMaDAError("dvc.yaml is out of date with mmada/pipeline/stages.py: run `mmada pipeline generate`")
        print("dvc.yaml is up to date")
        return 0
    print(f"wrote {S.write_dvc_yaml('.')}")
    return 0


def _params(args: argparse.Namespace) -> int:
    from mmada.pipeline.params import dump_params, load_params, profile_params, write_params

    if args.write:
        print(f"wrote {write_params(profile_params(args.profile), args.params)} ({args.profile} sizes)")
    elif args.check:
        load_params(args.params)
        print(f"{args.params} is valid (every section resolved with the config file it names)")
    else:
        print(dump_params(load_params(args.params)), end="")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from flows.ui import ServeOptions, serve

    return serve(ServeOptions(prefect_port=args.prefect_port, mlflow_port=args.mlflow_port,
                              home=args.home, mlflow=not args.no_mlflow, deployments=not args.no_deployments,
                              startup_timeout=args.startup_timeout, playground_port=args.playground_port,
                              playground=not args.no_playground))


def register(subparsers) -> None:
    from mmada.pipeline.stages import STAGE_NAMES

    p = subparsers.add_parser("pipeline", help="run the tiny end-to-end pipeline (dvc repro) and print a summary",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--until", default=None, choices=STAGE_NAMES, metavar="STAGE",
                   help=f"stop after STAGE (and what it needs); one of {', '.join(STAGE_NAMES)}")
    p.add_argument("--force", action="store_true", help="re-run stages even if nothing changed")
    p.add_argument("--dry", action="store_true", help="only show what would run")
    p.set_defaults(func=_run)
    sub = p.add_subparsers(dest="pipeline_command", metavar="SUBCOMMAND")

    s = sub.add_parser("stage", help="run one stage (the command in dvc.yaml)")
    s.add_argument("name", choices=STAGE_NAMES, metavar="NAME", help=", ".join(STAGE_NAMES))
    s.add_argument("--params", default="params.yaml", help="parameters file (default params.yaml)")
    s.add_argument("--launch", default=None, metavar="JSON|FILE",
                   help='how training jobs start, e.g. \'{"kind": "sbatch", "nodes": 2, "procs_per_node": 8}\'')
    s.add_argument("--model-ref", default=None, help="evaluate: the model reference JSON to evaluate "
                   "(default runs/pipeline/models/grpo.json)")
    s.add_argument("--out-base", default="runs/pipeline", help="folder of references/metrics/curves")
    s.add_argument("--json", action="store_true", help="print the stage result as JSON")
    s.add_argument("--verbose", action="store_true", help="echo the launched job's output (on failure its last "
                   "lines are always shown)")
    s.set_defaults(func=_stage)

    s = sub.add_parser("summary", help="print where the outputs are, registered versions, the eval table")
    s.set_defaults(func=_summary)

    s = sub.add_parser("generate", help="write dvc.yaml from mmada/pipeline/stages.py")
    s.add_argument("--check", action="store_true", help="fail if dvc.yaml is out of date instead of writing it")
    s.set_defaults(func=_generate)

    s = sub.add_parser("params", help="show the resolved configs of params.yaml / validate / rewrite it")
    s.add_argument("--params", default="params.yaml")
    g = s.add_mutually_exclusive_group()
    g.add_argument("--write", action="store_true", help="rewrite it: the config files of configs/ and data_specs/ "
                   "it names, and what the profile changes in them")
    g.add_argument("--check", action="store_true", help="validate the resolved configs and name the bad fields")
    s.add_argument("--profile", choices=["demo", "full"], default="demo",
                   help="with --write: demo sizes (~12 min on 2 CPU cores) or the configs' own sizes (full, ~1 h)")
    s.set_defaults(func=_params)

    for name in ("serve", "ui"):
        s = subparsers.add_parser(name, help="start the Prefect server + served deployments, the MLflow UI and the "
                                             "playground on 127.0.0.1 (Ctrl-C stops them all)")
        s.add_argument("--prefect-port", type=int, default=4200)
        s.add_argument("--mlflow-port", type=int, default=5000)
        s.add_argument("--home", default="runs/prefect", help="PREFECT_HOME (server database, settings)")
        s.add_argument("--playground-port", type=int, default=7860)
        s.add_argument("--no-mlflow", action="store_true", help="do not start the MLflow UI")
        s.add_argument("--no-playground", action="store_true", help="do not start the playground")
        s.add_argument("--no-deployments", action="store_true", help="only the servers, no served flows")
        s.add_argument("--startup-timeout", type=float, default=180.0, help="seconds to wait for each server")
        s.set_defaults(func=_serve)
