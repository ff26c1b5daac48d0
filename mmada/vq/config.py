"""Typed training config of an image tokenizer (one pydantic model; YAML files under ``configs/vq/``).

    cfg = load_train_config("configs/vq/tiny.yaml", overrides=["max_steps=200", "optim.lr=1e-3"])
    cfg = load_train_config("tiny")   # the in-code preset (mmada.vq.presets)

The same object is what the CLI, a Prefect flow form and the MLflow params dump see.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from mmada.config import Strict, apply_overrides, read_yaml, validate
from mmada.errors import ConfigError
from mmada.models.vq.config import VQConfig


class DataConfig(Strict):
    """Where training images come from when no DataLoader is passed in."""

    source: Literal["shapes", "shapes+digits", "folder"] = "shapes"
    """``shapes``: the built-in shapes world; ``shapes+digits``: half shapes, half scikit-learn digits
    (8×8 gray, upscaled, RGB); ``folder``: image files under ``folder``."""
    folder: str | None = None
    """Directory of images (searched recursively) for ``source: folder``."""
    image_size: int = Field(32, ge=8)
    """Training resolution (square); must be a multiple of the model's downsampling factor."""
    resize_mode: Literal["crop", "squash", "none"] = "crop"
    num_train: int = Field(8192, ge=1)
    """Generated training images (built-in sources); ``folder`` uses every file."""
    num_val: int = Field(256, ge=1)
    """Held-out images (built-in: a different seed; folder: the last ``num_val`` files)."""
    seed: int = 0
    batch_size: int = Field(32, ge=1)
    num_workers: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _check(self) -> DataConfig:
        if self.source == "folder" and not self.folder:
            raise ValueError("data.folder is required when data.source is 'folder'")
        return self


class LossConfig(Strict):
    """Weights of the training terms: reconstruction + LFQ terms (+ optional adversarial)."""

    l1_weight: float = Field(1.0, ge=0)
    l2_weight: float = Field(1.0, ge=0)
    entropy_weight: float = Field(0.1, ge=0)
    """LFQ entropy term: per-position bit entropy minus batch bit entropy."""
    commitment_weight: float = Field(0.25, ge=0)
    """LFQ commitment term ``mean((z − sign z)²)``."""
    adversarial_weight: float = Field(0.0, ge=0)
    """PatchGAN hinge loss weight for the generator; 0 (default) disables the discriminator."""
    adversarial_start_step: int = Field(0, ge=0)
    """Step from which the adversarial term is applied (the discriminator trains from then on too)."""
    disc_channels: int = Field(32, ge=4)
    disc_lr: float = Field(2e-4, gt=0)


class OptimConfig(Strict):
    lr: float = Field(2e-3, gt=0)
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(50, ge=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    """Cosine decay from ``lr`` to ``lr · min_lr_ratio`` at ``max_steps``."""
    grad_clip: float | None = Field(1.0, gt=0)


class VQTrainConfig(Strict):
    """Everything one tokenizer training run needs."""

    name: str = "vq"
    """Run name; also the experiment's default run name in MLflow."""
    model: VQConfig = Field(default_factory=VQConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    max_steps: int = Field(2000, ge=1)
    val_every: int = Field(250, ge=1)
    """Validate (PSNR, codebook usage, reconstruction grid) every this many steps and at the end."""
    log_every: int = Field(10, ge=1)
    checkpoint_every: int | None = Field(None, ge=1)
    """Write a safetensors checkpoint every this many steps (None: only the final export)."""
    keep_checkpoints: int = Field(2, ge=1)
    output_dir: str = "runs/vq/tiny"
    """The final export goes to ``<output_dir>/tokenizer`` (config.json + model.safetensors)."""
    init_from: str | None = None
    """Start from the weights of an exported tokenizer directory (same architecture)."""
    accelerator: str = "cpu"
    precision: Literal["32-true", "bf16-mixed", "16-mixed"] = "32-true"
    seed: int = 0
    channels_last: bool = True
    """Use the channels-last memory layout (faster convolutions on CPU and tensor cores)."""
    experiment: str = "vq-tokenizer"
    """MLflow experiment name."""
    tracking_uri: str | None = None
    """MLflow tracking URI; None uses ``mmada.tracking.default_tracking_uri()``."""
    register_as: str | None = None
    """If set, register the exported tokenizer in the MLflow model registry under this name."""
    grid_images: int = Field(8, ge=1)
    """Validation images shown in the reconstruction grid artifact."""

    @model_validator(mode="after")
    def _check(self) -> VQTrainConfig:
        f = self.model.downsample_factor
        if self.data.image_size % f:
            raise ValueError(
                f"data.image_size={self.data.image_size} is not a multiple of the model's downsampling factor {f}"
            )
        return self


def load_train_config(source: str | Path, overrides: list[str] | None = None) -> VQTrainConfig:
    """A preset name (``tiny``, ``official``) or a YAML file, plus dotted overrides."""
    from mmada.vq.presets import PRESETS

    if str(source) in PRESETS:
        tree = PRESETS[str(source)]().model_dump(mode="json")
        where = f"preset {source!r}"
    else:
        if not Path(source).is_file():
            raise ConfigError(f"{source}: not a preset ({', '.join(PRESETS)}) and no such config file")
        tree, where = read_yaml(source), str(source)
    return validate(VQTrainConfig, apply_overrides(tree, overrides), f"{where}: invalid VQTrainConfig")
