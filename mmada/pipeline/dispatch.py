"""Run one stage by name: the one implementation behind ``dvc repro``, ``mmada pipeline`` and Prefect.

    ctx = StageContext.create(reporter=ConsoleReporter("pretrain"))
    run_stage("pretrain", load_params("params.yaml"), ctx)

Every stage first checks the outputs of its upstream stages exist (a clear error says which stage
to run), then runs its module's function, which writes its outputs atomically (files via rename;
directories built under a temp name), its model reference last:

    tokenizer, curate-*   mmada.pipeline.prepare    (in process)
    vq                    mmada.pipeline.vq         (a launched `mmada vq train`)
    pretrain, sft, grpo   mmada.pipeline.train      (a launched `mmada train`, read back from its result file)
    evaluate              mmada.pipeline.evaluate   (mmada.eval.suites, in process)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmada.pipeline import stages as S
from mmada.pipeline.context import StageContext, check_upstream
from mmada.pipeline.evaluate import run_evaluate
from mmada.pipeline.params import PipelineParams
from mmada.pipeline.prepare import run_curate, run_tokenizer
from mmada.pipeline.report import ConsoleReporter
from mmada.pipeline.train import run_train
from mmada.pipeline.vq import run_vq


def run_stage(name: str, params: PipelineParams, ctx: StageContext | None = None, *,
              model_ref: str | None = None) -> Any:
    """Run one stage of the pipeline with ``params`` (``model_ref`` overrides what ``evaluate`` evaluates)."""
    stage = S.get_stage(name)
    ctx = ctx or StageContext.create(ConsoleReporter(name))
    skip = {S.model_ref("grpo"), S.model_ref("sft")} if (name == "evaluate" and model_ref) else set()
    check_upstream(stage, skip=skip)
    if stage.kind == "tokenizer":
        return run_tokenizer(params.tokenizer, ctx)
    if stage.kind == "curate":
        ds = stage.extra["dataset"]
        return run_curate(getattr(params.curate, ds), ctx, S.data_dir(ds))
    if stage.kind == "vq":
        return run_vq(params.vq, ctx)
    if stage.kind == "train":
        init_from = stage.extra.get("init_from")
        return run_train(getattr(params, name), ctx, stage=name,
                         init_ref_path=Path(S.model_ref(init_from)) if init_from else None)
    if stage.kind == "evaluate":
        path = Path(model_ref) if model_ref else Path(S.model_ref(stage.extra["model_from"]))
        return run_evaluate(params.evaluate, ctx, model_ref_path=path,
                            producer=stage.extra["model_from"] if not model_ref else "(given --model-ref)")
    raise AssertionError(stage.kind)
