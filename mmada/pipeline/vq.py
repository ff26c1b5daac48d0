"""The ``vq`` stage: launch ``mmada vq train`` (subprocess / torchrun / sbatch), watch it, write its metrics.

The image tokenizer's export (``runs/vq/tiny/tokenizer``) is the stage's DVC output; its MLflow run
is found by name while the job runs (for the progress and the link), and its ``metrics.json`` and
metric history become the stage's metrics JSON and loss/PSNR curve.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from mmada.errors import MMaDAError
from mmada.files import write_csv, write_json
from mmada.pipeline import stages as S
from mmada.pipeline import tracking as T
from mmada.pipeline.context import StageContext, job_env, lineage, progress_poller, stamp, write_yaml
from mmada.pipeline.launch import launch
from mmada.pipeline.report import metrics_md
from mmada.vq.config import VQTrainConfig


def run_vq(cfg: VQTrainConfig, ctx: StageContext, *, stage: str = "vq", out_dir: str = S.VQ_OUTPUT_DIR) -> dict[str, Any]:
    run_name = f"{cfg.name}-{stamp()}"
    cfg = cfg.model_copy(update={"name": run_name, "output_dir": out_dir, "tracking_uri": ctx.tracking_uri})
    work = ctx.outputs.work(stage, run_name)
    cfg_path = write_yaml(work / "config.yaml", cfg.model_dump(mode="json"))
    found: dict[str, str] = {}

    def run_id() -> str | None:
        if "id" not in found:
            with contextlib.suppress(Exception):
                r = T.find_run(ctx.tracking_uri, cfg.experiment, run_name)
                if r is not None:
                    found["id"], found["exp"] = r.info.run_id, r.info.experiment_id
                    ctx.reporter.link(T.run_url(found["exp"], found["id"]), "MLflow run")
        return found.get("id")

    T.ensure_store(ctx.tracking_uri)
    ctx.reporter.progress(0.0, f"launching `mmada vq train` ({ctx.launch.kind}), {cfg.max_steps} steps")
    export = Path(out_dir) / "tokenizer"
    try:
        launch(ctx.launch, ["vq", "train", "--config", str(cfg_path.resolve())], workdir=work,
               job_name=f"mmada-{stage}", env=job_env(ctx), on_line=ctx.reporter.line,
               poll=progress_poller(ctx, run_id, cfg.max_steps))
    except BaseException:
        if run_id():
            T.end_run(ctx.tracking_uri, found["id"], "FAILED")
        raise
    if not (export / "model.safetensors").is_file():
        raise MMaDAError(f"`mmada vq train` finished but wrote no tokenizer at {export}")
    rid = json.loads((export / "config.json").read_text()).get("_mlflow_run_id") or run_id()
    if rid is None:
        raise MMaDAError(f"cannot find the MLflow run {run_name!r} of the image tokenizer in {ctx.tracking_uri}")
    exp_id = found.get("exp") or T.client(ctx.tracking_uri).get_run(rid).info.experiment_id
    tags = {**lineage(stage, cfg), **ctx.tags}
    T.set_tags(ctx.tracking_uri, rid, tags)
    raw = json.loads((Path(out_dir) / "metrics.json").read_text())
    metrics = {"steps": raw.get("steps"), "train_seconds": raw.get("train_seconds"),
               **{f"final_{k}": v for k, v in (raw.get("final") or {}).items()}}
    header, rows = T.curves(ctx.tracking_uri, rid, ["train/loss", "val/psnr"])
    write_csv(ctx.outputs.plot(stage), header, rows)
    write_json(ctx.outputs.metrics(stage), metrics)
    url = T.run_url(exp_id, rid)
    ctx.reporter.link(url, "MLflow run")
    ctx.reporter.markdown(metrics_md(f"Image tokenizer ({stage})", metrics, url,
                                     extra=[f"Tokenizer: `{export}`",
                                            f"Reconstructions: `{Path(out_dir) / 'reconstructions'}`"]),
                          f"{stage} summary")
    ctx.reporter.progress(1.0, f"PSNR {metrics.get('final_psnr', float('nan')):.2f} dB -> {export}")
    return {"run_id": rid, "experiment_id": exp_id, "path": str(export), "metrics": metrics}
