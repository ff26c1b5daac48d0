"""The pipeline as users drive it: one stage list, DVC, Prefect deployments, MLflow, a one-command demo.

    mmada.pipeline.stages    the stages (name, command, deps, params, outs, metrics, plots) → dvc.yaml
    mmada.pipeline.params    params.yaml: the config file each stage starts from + what differs → typed configs
    mmada.pipeline.dispatch  run one stage by name (shared by `dvc repro`, `mmada pipeline`, Prefect flows)
    mmada.pipeline.context   what a stage gets (reporter, launcher, output paths) and its upstream checks
    mmada.pipeline.prepare   the tokenizer and curate stages (in process)
    mmada.pipeline.vq        the image-tokenizer stage (a launched `mmada vq train`)
    mmada.pipeline.train     the training stages (a launched `mmada train`, read back from its result file)
    mmada.pipeline.evaluate  the evaluate stage (mmada.eval.suites: typed reports, in process)
    mmada.pipeline.launch    local / torchrun / sbatch launchers + the watcher (training never runs in-flow)
    mmada.pipeline.report    where a stage reports: the console; events.py: typed events for a Prefect flow
    mmada.pipeline.tracking  MLflow from the pipeline's side: runs, curves, model references
    mmada.pipeline.run       `mmada pipeline`: dvc repro + progress + summary
    mmada.pipeline.summary   the end-of-run summary

Prefect flows live in ``flows/stages.py`` (served by ``flows/serve.py``); ``flows/ui.py`` is ``mmada serve``
(the Prefect server, the served deployments and the MLflow UI on 127.0.0.1).
"""
