"""Prefect flows for every pipeline stage, plus ``pipeline`` (all of them, each as a subprocess task).

Parameters are the stages' pydantic configs, so the Prefect UI's "Run → Custom run" renders
validated forms (descriptions, bounds, choices) and the API rejects a bad value naming the field:

    tokenizer(params: TokenizerParams)                      the text tokenizer → runs/tokenizer
    vq-train(config: VQTrainConfig, launch: LaunchSpec)     the image tokenizer
    train(config: TrainConfig, launch: LaunchSpec)          pretrain / sft / grpo (deployments per stage)
    evaluate(params: EvalParams, model: str)                a registered model version
    pipeline(params: PipelineParams, stages, launch)        everything, in order
    (curate(spec: CurationSpec, …) lives in flows/curate.py)

Training never runs in the flow process: the ``launch-training`` task starts ``mmada train`` as a
subprocess, under ``torchrun`` or as a SLURM job (``launch.kind``) and watches it, updating a
progress artifact from the MLflow run the job logs into. Each run leaves a link to that MLflow
run and a markdown summary; stage outputs of UI-started runs go to ``runs/flows/<flow run>/``
(the ``pipeline`` flow writes the same paths as ``dvc repro``; see the README).

    python -m flows.serve         # serve all deployments (``mmada serve`` also starts the servers)
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NONE
from prefect.runtime import flow_run
from pydantic import Field

from flows.reporting import PrefectReporter, follow_stage_output
from mmada.errors import MMaDAError
from mmada.files import write_json, write_text
from mmada.pipeline import stages as S
from mmada.pipeline import tracking as T
from mmada.pipeline.launch import LaunchSpec, launch
from mmada.pipeline.params import EvalParams, PipelineParams, TokenizerParams, dump_params
from mmada.pipeline.steps import StageContext, StageOutputs, run_evaluate, run_tokenizer, run_train, run_vq
from mmada.training.config import TrainConfig
from mmada.training.vq import VQTrainConfig

StageName = Literal[S.STAGE_NAMES]  # type: ignore[valid-type]
LOCAL = LaunchSpec()  # defaults of the run forms (module-level: never mutated)
DEFAULT_TOKENIZER = TokenizerParams()
DEFAULT_EVAL = EvalParams()
ModelURI = Annotated[str, Field(pattern=r"^models:/[^/@]+(@[^/]+|/\d+)$",
                                description="The registered version: models:/NAME@ALIAS or models:/NAME/VERSION")]


def run_folder() -> StageOutputs:
    """``runs/flows/<flow-run-name>-<id>``: where a UI-started stage writes its reference/metrics/curve."""
    rid = str(flow_run.get_id() or "local")
    return StageOutputs(f"runs/flows/{flow_run.get_name() or 'run'}-{rid[:8]}")


def _ctx(stage: str, launch_spec: LaunchSpec | None = None, outputs: StageOutputs | None = None) -> StageContext:
    return StageContext.create(PrefectReporter(stage), launch=launch_spec, outputs=outputs,
                               tags={"prefect.flow_run_id": str(flow_run.get_id() or "")})


# ------------------------------------------------------------------------------------------------
# single stages


@flow(name="tokenizer", log_prints=True, persist_result=False)
def tokenizer_flow(params: TokenizerParams = DEFAULT_TOKENIZER, out: str = S.TOKENIZER_DIR) -> dict[str, Any]:
    """Train the built-in byte-level BPE text tokenizer and save it (``save_pretrained``) to ``out``."""
    return run_tokenizer(params, _ctx("tokenizer"), out)


@task(name="launch-vq-training", retries=0, cache_policy=NONE)
def vq_task(config: VQTrainConfig, launch_spec: LaunchSpec) -> dict[str, Any]:
    return run_vq(config, _ctx("vq", launch_spec, run_folder()), out_dir=config.output_dir)


@flow(name="vq-train", log_prints=True, persist_result=False)
def vq_flow(config: VQTrainConfig, launch: LaunchSpec = LOCAL) -> dict[str, Any]:
    """Train the MAGVIT-v2 image tokenizer (``mmada vq train``) as a launched job; exports to ``config.output_dir``."""
    return vq_task(config, launch)


@task(name="launch-training", retries=0, cache_policy=NONE)
def train_task(config: TrainConfig, launch_spec: LaunchSpec) -> dict[str, Any]:
    return run_train(config, _ctx(config.stage, launch_spec, run_folder()), stage=config.stage)


@flow(name="train", log_prints=True, persist_result=False)
def train_flow(config: TrainConfig, launch: LaunchSpec = LOCAL) -> dict[str, Any]:
    """Run a training stage (pretrain / sft / grpo) as a launched job and register the model version.

    Args:
        config: the full training config (``configs/train/*.yaml``); ``model.init`` may name a
            registered version (``models:/mmada-tiny@pretrain``).
        launch: where the job runs: ``local`` (a subprocess), ``torchrun`` or ``sbatch`` (a SLURM job
            submitted from the worker's host and watched until it ends).
    """
    return train_task(config, launch)


@flow(name="evaluate", log_prints=True, persist_result=False)
def evaluate_flow(params: EvalParams = DEFAULT_EVAL, model: ModelURI = "models:/mmada-tiny@sft",
                  image_tokenizer: str = S.VQ_DIR) -> dict[str, Any]:
    """Evaluate a registered model: math, image understanding, text-to-image, tokenizer reconstructions."""
    from mmada.tracking.registry import parse_model_uri

    ctx = _ctx("evaluate", outputs=run_folder())
    parsed = parse_model_uri(model)
    c = T.client(ctx.tracking_uri)
    from mlflow.exceptions import MlflowException

    try:
        mv = (c.get_model_version_by_alias(parsed["name"], parsed["alias"]) if "alias" in parsed
              else c.get_model_version(parsed["name"], parsed["version"]))
    except MlflowException as exc:
        raise MMaDAError(f"model: {model!r} is not in the registry at {ctx.tracking_uri} ({exc.message}); "
                         "train it first (the train/pretrain and train/sft deployments, or `mmada pipeline`)") from None
    ref = {"stage": "evaluate-input", "registered_model": parsed["name"], "version": str(mv.version),
           "model_uri": f"models:/{parsed['name']}/{mv.version}", "tracking_uri": ctx.tracking_uri,
           "run_id": mv.run_id}
    ref_path = write_json(Path(ctx.outputs.base) / "models" / "input.json", ref)
    return run_evaluate(params, ctx, model_ref_path=ref_path, image_tokenizer=image_tokenizer, producer="(input)")


# ------------------------------------------------------------------------------------------------
# the whole pipeline


def _stage_artifacts(stage: S.Stage, reporter: PrefectReporter) -> None:
    """After a stage subprocess: its shard table / metrics as artifacts (read from its outputs)."""
    if stage.kind == "curate":
        m = json.loads((Path(S.data_dir(stage.extra["dataset"])) / "manifest.json").read_text())
        rows = [{"shard": s["name"], "split": s["split"], "samples": s["count"], "bytes": s["bytes"],
                 "sha256": s["sha256"]} for s in m["shards"]]
        reporter.table(rows, f"Shards of {m['name']} at {S.data_dir(stage.extra['dataset'])}")
    for path in stage.metrics:
        metrics = json.loads(Path(path).read_text())
        flat = [{"metric": f"{k}.{kk}" if isinstance(v, dict) else k, "value": vv}
                for k, v in metrics.items() for kk, vv in (v.items() if isinstance(v, dict) else [("", v)])]
        lines = [f"### {stage.name}", "", "| metric | value |", "|---|---|",
                 *[f"| {r['metric'].rstrip('.')} | {r['value']} |" for r in flat]]
        for ref_path in stage.refs:
            if ref_path.endswith(".json") and Path(ref_path).is_file():
                ref = json.loads(Path(ref_path).read_text())
                lines += ["", f"Registered: `{ref['model_uri']}` (@{ref.get('alias')}), "
                              f"[MLflow run]({T.run_url(ref['experiment_id'], ref['run_id'])})"]
        reporter.markdown("\n".join(lines), f"{stage.name} summary")


@task(name="stage", retries=0, cache_policy=NONE)
def stage_task(name: str, params_file: str, launch_spec: LaunchSpec) -> None:
    """Run ``python -m mmada pipeline stage NAME`` as a subprocess and follow its progress."""
    stage = S.get_stage(name)
    reporter = PrefectReporter(name)
    argv = ["pipeline", "stage", name, "--params", params_file, "--launch", launch_spec.model_dump_json()]
    env = {"MMADA_PREFECT_FLOW_RUN_ID": str(flow_run.get_id() or ""), "MMADA_PIPELINE_RUNNER": "prefect"}
    launch(LaunchSpec(poll_seconds=2.0), argv, workdir=Path(S.PIPELINE_DIR) / "work" / "flows",
           job_name=f"stage-{name}", env=env, on_line=follow_stage_output(reporter), what=f"stage {name!r}")
    _stage_artifacts(stage, reporter)


@flow(name="pipeline", log_prints=True, persist_result=False)
def pipeline_flow(params: PipelineParams, stages: list[StageName] | None = None,
                  launch: LaunchSpec = LOCAL) -> dict[str, Any]:
    """The tiny end-to-end pipeline: tokenizer → curate → image tokenizer → pretrain → SFT → UniGRPO → evaluate.

    Each stage runs as ``python -m mmada pipeline stage NAME`` in a subprocess (the same command
    as ``dvc repro``), writing the same output paths; training jobs start as ``launch`` says.

    Args:
        params: every stage's parameters (defaults: the project's ``params.yaml``).
        stages: run only these stages (their upstream outputs must exist); default: all of them
            (up to sft while this build has no UniGRPO stage).
        launch: how training jobs start (local subprocess, torchrun, sbatch).
    """
    log = get_run_logger()
    wanted = list(stages) if stages else list(S.STAGE_NAMES)
    if params.grpo is None and "grpo" in wanted:
        if stages:
            raise MMaDAError("stages: 'grpo' was requested but params.grpo is empty (this build has no UniGRPO "
                             "stage, or params.yaml was not regenerated)")
        wanted = S.upstream_closure(["sft"])
        create_markdown_artifact("UniGRPO and evaluate were skipped: this build has no `grpo` training stage yet "
                                 "(or `params.grpo` is empty).", key="pipeline-note")
    order = [s for s in S.STAGE_NAMES if s in wanted]
    rid = str(flow_run.get_id() or "local")
    params_file = write_text(Path(S.PIPELINE_DIR) / "flow-params" / f"{rid}.yaml", dump_params(params))
    log.info("running %d stages: %s (params %s)", len(order), " -> ".join(order), params_file)
    from prefect.artifacts import create_progress_artifact, update_progress_artifact

    overall = create_progress_artifact(0.0, key="pipeline-progress", description="stages finished")
    for i, name in enumerate(order):
        stage_task.with_options(name=f"stage-{name}")(name, str(params_file), launch)
        update_progress_artifact(overall, progress=100.0 * (i + 1) / len(order))
    from mmada.pipeline.summary import collect, render

    info = collect()
    text = render(info)
    create_markdown_artifact(f"```\n{text}\n```", key="pipeline-summary", description="pipeline summary")
    if info["eval"]:
        create_table_artifact([{"suite": s, "metric": k, "value": v} for s, m in info["eval"].items()
                               if isinstance(m, dict) for k, v in m.items()], key="pipeline-eval")
    print(text)
    return {"stages": order, "refs": {k: v for k, v in info["refs"].items() if v}, "eval": info["eval"]}


def default_parameters(params_path: str | os.PathLike = S.PARAMS_FILE) -> dict[str, dict[str, Any]]:
    """Each deployment's default parameters, from the project's ``params.yaml``."""
    from mmada.pipeline.params import load_params, params_dict

    p = load_params(params_path)
    d = params_dict(p)
    out = {
        "pipeline": {"params": d},
        "tokenizer": {"params": d["tokenizer"]},
        "vq-train": {"config": d["vq"]},
        "evaluate": {"params": d["evaluate"], "model": "models:/mmada-tiny@sft" if p.grpo is None
                     else "models:/mmada-tiny@grpo"},
        **{f"train-{s}": {"config": d[s]} for s in S.TRAIN_STAGES if d.get(s)},
        **{f"curate-{n}": {"spec": d["curate"][n], "out": S.data_dir(n)} for n in S.DATASETS},
    }
    return out


if __name__ == "__main__":  # run the pipeline flow once against the configured (or a temporary) API
    from mmada.pipeline.params import load_params

    result = pipeline_flow(params=load_params(sys.argv[1] if len(sys.argv) > 1 else S.PARAMS_FILE))
    print(json.dumps(result, indent=1, default=str))
