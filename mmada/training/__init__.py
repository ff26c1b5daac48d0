"""Training: one harness for every model (the MMaDA stages, the image tokenizer), their modules, the CLI.

    specs.py        the sections every run shares (optim, trainer, checkpoint, tracking), RunConfig
    config.py       TrainConfig (pydantic) + load_train_config(path, ["a.b=c"])
    module.py       MMaDAModule (shared) → DiffusionModule (stage pretrain | sft)
    grpo.py         GRPOModule (stage grpo) and its prompt data
    optim.py        AdamW with the reference no-decay rule, cosine schedule with warmup (the one LR schedule)
    parallelize.py  DDP / FSDP strategy, wrap + activation-checkpoint units, full state dict gather
    trainer.py      build_trainer(cfg, …)
    callbacks.py    atomic checkpoints, tokens/s, periodic samples, the MLflow run
    harness.py      fit(cfg, module, data, …): resume → MLflow run → fit → validate → export → registry
    run.py          train(cfg): the MMaDA stage on the harness
    vq/             the image tokenizer on the harness: VQTrainConfig + presets, module, train_tokenizer
"""

from mmada.training.config import TrainConfig, load_train_config

__all__ = ["TrainConfig", "load_train_config", "train"]


def __getattr__(name: str):
    if name == "train":
        from mmada.training.run import train

        return train
    raise AttributeError(name)
