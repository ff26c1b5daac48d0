"""The pipeline as users drive it: one stage list, DVC, Prefect deployments, MLflow, a one-command demo.

    mmada.pipeline.stages   the stages (name, command, deps, params, outs, metrics, plots) → dvc.yaml
    mmada.pipeline.params   params.yaml: each stage's typed config (the Prefect form, the DVC params)
    mmada.pipeline.steps    what each stage does (shared by `dvc repro`, `mmada pipeline`, Prefect flows)
    mmada.pipeline.launch   local / torchrun / sbatch launchers + the watcher (training never runs in-flow)
    mmada.pipeline.run      `mmada pipeline`: dvc repro + progress + summary
    mmada.pipeline.summary  the end-of-run summary

Prefect flows live in ``flows/stages.py`` (served by ``flows/serve.py``); ``flows/ui.py`` is ``mmada serve``
(the Prefect server, the served deployments and the MLflow UI on 127.0.0.1).
"""
