"""Training: Lightning modules for every stage, the trainer factory, parallelism, callbacks, the CLI.

    config.py       TrainConfig (pydantic) + load_train_config(path, ["a.b=c"])
    module.py       MMaDAModule (shared) → DiffusionModule (stage pretrain | sft)
    optim.py        AdamW with the reference no-decay rule, cosine schedule with warmup
    parallelize.py  DDP / FSDP strategy, wrap + activation-checkpoint units, full state dict gather
    trainer.py      build_trainer(cfg, …)
    callbacks.py    atomic checkpoints, tokens/s, periodic samples, the MLflow run
    run.py          train(cfg): data → fit → export → registered model version
    cli.py          ``mmada train CONFIG [--set key=value …]``
"""

from mmada.training.config import TrainConfig, load_train_config

__all__ = ["TrainConfig", "load_train_config", "train"]


def __getattr__(name: str):
    if name == "train":
        from mmada.training.run import train

        return train
    raise AttributeError(name)
