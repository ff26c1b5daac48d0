"""Prefect flows for every pipeline stage, plus ``pipeline`` (all of them, each as a subprocess task).

Parameters are the stages' pydantic configs, so the Prefect UI's "Run → Custom run" renders
validated forms (descriptions, bounds, choices) and the API rejects a bad value naming the field.
The forms start from the resolved configs of ``params.yaml`` (the config files it names, with what it
changes in them merged in):

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

from mlflow.exceptions import MlflowException
from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NONE
from prefect.runtime import flow_run
from pydantic import Field

from flows.reporting import PrefectReporter
from mmada.errors import MMaDAError
from mmada.files import write_json
from mmada.pipeline import stages as S
from mmada.pipeline import tracking as T
from mmada.pipeline.context import StageContext, StageOutputs
from mmada.pipeline.evaluate import eval_rows, run_evaluate
from mmada.pipeline.events import EVENTS_ENV, EventFollower
from mmada.pipeline.launch import LaunchOperator, LaunchSpec, launch
from mmada.pipeline.params import (
    EvalParams,
    PipelineParams,
    TokenizerParams,
    load_params,
    params_dict,
    write_resolved,
)
from mmada.pipeline.prepare import run_tokenizer
from mmada.pipeline.summary import collect, render
from mmada.pipeline.train import run_train
from mmada.pipeline.vq import run_vq
from mmada.tracking.registry import parse_model_uri
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
    ctx = _ctx("evaluate", outputs=run_folder())
    parsed = parse_model_uri(model)
    c = T.client(ctx.tracking_uri)
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


@task(name="stage", retries=0, cache_policy=NONE)
def stage_task(name: str, params_file: str, launch_spec: LaunchSpec) -> None:
    """Run ``python -m mmada pipeline stage NAME`` as a subprocess; its console output goes to the log, the
    typed events it writes (progress, MLflow link, summary, tables) become this task's artifacts."""
    reporter = PrefectReporter(name, log_events=False)
    rid = str(flow_run.get_id() or "local")
    events = Path(S.PIPELINE_DIR) / "work" / "flows" / f"{rid}-{name}.events.jsonl"
    events.unlink(missing_ok=True)
    follower = EventFollower(events, reporter)
    argv = ["pipeline", "stage", name, "--params", params_file, "--launch", launch_spec.model_dump_json()]
    env = {"MMADA_PREFECT_FLOW_RUN_ID": str(flow_run.get_id() or ""), "MMADA_PIPELINE_RUNNER": "prefect",
           EVENTS_ENV: str(events.resolve())}
    launch(LaunchSpec(poll_seconds=2.0), argv, workdir=events.parent, job_name=f"stage-{name}", env=env,
           on_line=reporter.line, poll=follower.poll, what=f"stage {name!r}",
           operator=LaunchOperator())  # the stage process runs here, with this interpreter


@flow(name="pipeline", log_prints=True, persist_result=False)
def pipeline_flow(params: PipelineParams, stages: list[StageName] | None = None,
                  launch: LaunchSpec = LOCAL) -> dict[str, Any]:
    """The tiny end-to-end pipeline: tokenizer → curate → image tokenizer → pretrain → SFT → UniGRPO → evaluate.

    Each stage runs as ``python -m mmada pipeline stage NAME`` in a subprocess (the same command
    as ``dvc repro``), writing the same output paths; training jobs start as ``launch`` says.

    Args:
        params: every stage's resolved config (defaults: the project's ``params.yaml`` with the config
            files it names merged in).
        stages: run only these stages (their upstream outputs must exist); default: all of them.
        launch: how training jobs start (local subprocess, torchrun, sbatch).
    """
    log = get_run_logger()
    order = [s for s in S.STAGE_NAMES if not stages or s in stages]
    rid = str(flow_run.get_id() or "local")
    params_file = write_resolved(params, Path(S.PIPELINE_DIR) / "flow-params" / rid)
    log.info("running %d stages: %s (params %s)", len(order), " -> ".join(order), params_file)
    overall = create_progress_artifact(0.0, key="pipeline-progress", description="stages finished")
    for i, name in enumerate(order):
        stage_task.with_options(name=f"stage-{name}")(name, str(params_file), launch)
        update_progress_artifact(overall, progress=100.0 * (i + 1) / len(order))
    info = collect()
    text = render(info)
    create_markdown_artifact(f"```\n{text}\n```", key="pipeline-summary", description="pipeline summary")
    if info["eval"]:
        create_table_artifact(eval_rows(info["eval"]), key="pipeline-eval")
    print(text)
    return {"stages": order, "refs": {k: v for k, v in info["refs"].items() if v}, "eval": info["eval"]}


def default_parameters(params_path: str | os.PathLike = S.PARAMS_FILE) -> dict[str, dict[str, Any]]:
    """Each deployment's default parameters: the resolved configs of the project's ``params.yaml``."""
    d = params_dict(load_params(params_path))
    return {
        "pipeline": {"params": d},
        "tokenizer": {"params": d["tokenizer"]},
        "vq-train": {"config": d["vq"]},
        "evaluate": {"params": d["evaluate"], "model": "models:/mmada-tiny@grpo"},
        **{f"train-{s}": {"config": d[s]} for s in S.TRAIN_STAGES},
        **{f"curate-{n}": {"spec": d["curate"][n], "out": S.data_dir(n)} for n in S.DATASETS},
    }


if __name__ == "__main__":  # run the pipeline flow once against the configured (or a temporary) API
    result = pipeline_flow(params=load_params(sys.argv[1] if len(sys.argv) > 1 else S.PARAMS_FILE))
    print(json.dumps(result, indent=1, default=str))
