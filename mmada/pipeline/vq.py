"""The ``vq`` stage: launch ``mmada vq train`` (subprocess / torchrun / sbatch), watch it, read its result file.

Launched like the training stages (:mod:`mmada.pipeline.train`): the stage creates the job's MLflow
run first (``MLFLOW_RUN_ID``: progress and the link come from it), launches ``mmada vq train
--config CONFIG --result-file PATH`` and reads the :class:`~mmada.training.harness.TrainResult` the
job's rank 0 wrote. The image tokenizer's export (``runs/vq/tiny/tokenizer``) is the stage's DVC
output; the final validation metrics and the run's loss/PSNR history become the stage's metrics
JSON and curve.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmada.errors import MMaDAError
from mmada.files import write_csv, write_json
from mmada.pipeline import stages as S
from mmada.pipeline import tracking as T
from mmada.pipeline.context import StageContext, lineage, run_job, stamp
from mmada.pipeline.report import metrics_md
from mmada.training.vq import VQTrainConfig, val_metrics


def run_vq(cfg: VQTrainConfig, ctx: StageContext, *, stage: str = "vq", out_dir: str = S.VQ_OUTPUT_DIR) -> dict[str, Any]:
    run_name = f"{cfg.name}-{stamp()}"
    # Same config -> same checkpoint folder (a crashed run resumes); another config starts fresh.
    ckpt_dir = f"{out_dir}/checkpoints/{cfg.config_hash()[:12]}"
    cfg = cfg.model_copy(update={"output_dir": out_dir,
                                 "checkpoint": cfg.checkpoint.model_copy(update={"dir": ckpt_dir})})
    job = run_job(ctx, stage, ["vq", "train", "--config"], cfg, run_name=run_name,
                  tags={**lineage(stage, cfg), **ctx.tags})
    result, url = job.result, job.url
    export = result.export_dir
    if export is None or not (export / "model.safetensors").is_file():
        raise MMaDAError(f"`mmada vq train` finished but wrote no tokenizer at {Path(out_dir) / 'tokenizer'}")
    metrics = {"steps": result.global_step, "train_seconds": round(result.train_seconds, 2),
               **{f"final_{k}": v for k, v in val_metrics(result.metrics).items()}}
    header, rows = T.curves(ctx.tracking_uri, job.run_id, ["train/loss", "val/psnr"])
    write_csv(ctx.outputs.plot(stage), header, rows)
    write_json(ctx.outputs.metrics(stage), metrics)
    ctx.reporter.markdown(metrics_md(f"Image tokenizer ({stage})", metrics, url,
                                     extra=[f"Tokenizer: `{export}`",
                                            f"Reconstructions: `{Path(out_dir) / 'reconstructions'}`"]),
                          f"{stage} summary")
    ctx.reporter.progress(1.0, f"PSNR {metrics.get('final_psnr', float('nan')):.2f} dB -> {export}")
    return {"run_id": job.run_id, "experiment_id": job.experiment_id, "path": str(export), "metrics": metrics}
