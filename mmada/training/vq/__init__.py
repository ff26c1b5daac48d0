"""Training the image tokenizer (MAGVIT-v2) on the training harness (the model is :mod:`mmada.models.vq`).

    config.py   VQTrainConfig (the shared optim/trainer/checkpoint/tracking sections + model, data,
                loss) and the presets ``tiny`` and ``official``
    module.py   the Lightning module (manual optimisation, optional PatchGAN), PSNR and codebook metrics
    run.py      train_tokenizer(cfg): images → :func:`mmada.training.harness.fit` → tokenizer export

Its training images come from :mod:`mmada.data.vq`; ``mmada vq train`` is :mod:`mmada.cli.vq`.
"""

from mmada.training.vq.config import PRESETS, TINY_MODEL, VQLossSpec, VQTrainConfig, official, tiny
from mmada.training.vq.run import train_tokenizer, val_metrics

__all__ = ["PRESETS", "TINY_MODEL", "VQLossSpec", "VQTrainConfig", "official", "tiny", "train_tokenizer", "val_metrics"]
