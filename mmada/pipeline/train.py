"""The training stages (``pretrain``, ``sft``, ``grpo``): launch ``mmada train``, watch it, read its result file.

The stage creates the job's MLflow run first (``MLFLOW_RUN_ID``; progress and the link come from it),
pins ``model.init`` to the exact upstream version named by the upstream model reference, launches
``mmada train CONFIG --result-file PATH`` (:mod:`mmada.pipeline.launch`) and, when the job ends,
reads the :class:`~mmada.training.harness.TrainResult` the job's rank 0 wrote. It then writes the stage's
metrics JSON, loss/reward CSV and, last, its model reference (which means "complete").
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mmada.errors import MMaDAError
from mmada.files import sha256_file, write_csv, write_json
from mmada.pipeline import stages as S
from mmada.pipeline import tracking as T
from mmada.pipeline.context import StageContext, check_version, lineage, run_job, stamp
from mmada.pipeline.report import metrics_md
from mmada.tracking.registry import parse_model_uri
from mmada.training.config import TrainConfig, validate_train_config


def pin_init(cfg: TrainConfig, init_ref: dict[str, Any]) -> TrainConfig:
    """``models:/NAME@ALIAS`` of the upstream model → ``models:/NAME/<version in the reference>``."""
    parsed = parse_model_uri(cfg.model.init or "")
    if parsed and parsed["name"] == init_ref["registered_model"]:
        return cfg.model_copy(update={"model": cfg.model.model_copy(update={"init": T.ref_model_uri(init_ref)})})
    return cfg


def run_train(cfg: TrainConfig, ctx: StageContext, *, stage: str, init_ref_path: Path | None = None) -> dict[str, Any]:
    """Launch ``mmada train`` for ``cfg`` and write the stage's reference, metrics and curve."""
    init_ref = None
    if init_ref_path is not None:
        producer = S.get_stage(stage).extra.get("init_from", "")
        init_ref = T.read_ref(init_ref_path, producer=producer, needed_by=stage)
        check_version(ctx.tracking_uri, init_ref, init_ref_path, producer)
        cfg = pin_init(cfg, init_ref)
    nodes, devices = ctx.launch.world()
    data = cfg.model_dump(mode="json")
    data["trainer"].update(num_nodes=nodes, devices=devices)
    cfg = validate_train_config(data, f"{stage} config")
    # Same config -> same folder (a crashed run resumes); another config starts fresh.
    cfg = cfg.model_copy(update={"output_dir": f"{cfg.output_dir}/{cfg.config_hash()[:12]}"})
    run_name = cfg.tracking.run_name or f"{cfg.name}-{stamp()}"
    tags = {**lineage(stage, cfg), **ctx.tags}
    if init_ref is not None:
        tags["pipeline.init_ref"] = T.ref_model_uri(init_ref)
    job = run_job(ctx, stage, ["train"], cfg, run_name=run_name, tags=tags,
                  note=f", from {cfg.model.init or 'fresh ' + str(cfg.model.preset)}")
    cfg, result, run_id, exp_id, url = job.cfg, job.result, job.run_id, job.experiment_id, job.url
    if not result.model_version:
        raise MMaDAError(f"stage {stage!r} trained but registered no model version (MLflow unavailable? see "
                         f"{cfg.out_dir / 'mlflow_failed.jsonl'}); nothing was written for it")
    name, version = result.registered_model, str(result.model_version)
    mv = T.client(ctx.tracking_uri).get_model_version(name, version)
    weights = result.export_dir / "model.safetensors" if result.export_dir else None
    ref = {"stage": stage, "registered_model": name, "version": version, "alias": cfg.alias,
           "model_uri": f"models:/{name}/{version}", "source": mv.source, "run_id": result.run_id or run_id,
           "experiment_id": exp_id, "tracking_uri": ctx.tracking_uri, "global_step": result.global_step,
           "sha256": sha256_file(weights) if weights and weights.is_file() else None,
           "config_hash": cfg.config_hash(), "params_sha256": tags["pipeline.params_sha256"],
           "init": cfg.model.init}
    T.set_version_tags(ctx.tracking_uri, name, version, {**tags, "pipeline.ref": str(ctx.outputs.ref(stage))})
    keys = [k for k in T.metric_keys(ctx.tracking_uri, run_id)
            if k.startswith("train/") and ("loss" in k or "reward" in k or k == "train/lr")]
    header, rows = T.curves(ctx.tracking_uri, run_id, keys)
    reward = [k for k in keys if "reward" in k]
    if reward:  # a plain `reward` column for the DVC plot (train/reward if logged, else the first reward key)
        pick = "train/reward" if "train/reward" in reward else reward[0]
        col = header.index(pick.replace("/", "_"))
        header, rows = [*header, "reward"], [[*r, r[col]] for r in rows]
    last = {h: r[i] for r in rows[-1:] for i, h in enumerate(header) if h != "step" and r[i] != ""}
    metrics = {"global_step": result.global_step, "model_version": int(version),
               **{f"final_{k}": v for k, v in last.items()}, **result.metrics}
    write_csv(ctx.outputs.plot(stage), header, rows)
    write_json(ctx.outputs.metrics(stage), metrics)
    write_json(ctx.outputs.ref(stage), ref)  # last: the reference means "complete"
    ctx.reporter.markdown(train_md(stage, ref, metrics, url, cfg.out_dir), f"{stage} summary")
    ctx.reporter.progress(1.0, f"registered {name} version {version} (@{cfg.alias})")
    return ref


def latest_samples(out_dir: Path) -> tuple[list[dict], Path | None]:
    """Answers and the t2i grid of the newest ``samples/step_*`` folder a training run wrote."""
    steps = sorted((out_dir / "samples").glob("step_*"))
    if not steps:
        return [], None
    last = steps[-1]
    answers = json.loads((last / "answers.json").read_text()) if (last / "answers.json").is_file() else []
    grid = last / "t2i_grid.png"
    return answers, grid if grid.is_file() else None


def train_md(stage: str, ref: dict[str, Any], metrics: dict[str, Any], url: str, out_dir: Path) -> str:
    md = metrics_md(f"{stage}: {ref['registered_model']} version {ref['version']} (@{ref['alias']})", metrics, url,
                    extra=[f"Model: `{ref['model_uri']}` (sha256 `{(ref.get('sha256') or '')[:16]}`)"])
    answers, grid = latest_samples(out_dir)
    if answers:
        md += "\n\n**Sample answers**\n\n" + "\n".join(f"- *{a.get('prompt', '')}* → `{a.get('answer', '')}`"
                                                      for a in answers[:4])
    if grid:
        md += f"\n\nGenerated images: `{grid}`"
    return md
