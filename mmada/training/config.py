"""``TrainConfig``: one typed config for every training stage (pretrain, SFT, UniGRPO).

The same pydantic model is the YAML schema of ``configs/train/*.yaml``, the Prefect UI form, the
DVC params and the MLflow params dump. A stage is configuration, not a copied script: ``stage``
picks the allowed task streams, the default loss coefficients and the registry alias.

    cfg = load_train_config("configs/train/tiny_pretrain.yaml", ["optim.lr=3e-4", "trainer.max_steps=50"])
    cfg.model.init = "models:/mmada-tiny@pretrain"     # next stage starts from a registered version

Overrides are ``dotted.path=value`` with YAML values (``data.streams.t2i.batch_size=4``,
``trainer.devices=8``, ``loss.coeffs={t2i: 1.0, lm: 0.5}``); a bad value raises
:class:`~mmada.errors.ConfigError` naming the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from mmada.config import MAX_STEPS, Strict, load_config, validate
from mmada.data.streams import DataSpec, Task
from mmada.diffusion.settings import ImageSamplerSettings, SamplerSettings
from mmada.models.configuration import CHECKPOINT_OVERRIDES
from mmada.rl.grpo import GRPOConfig
from mmada.training.lora import LoRASpec
from mmada.training.specs import CheckpointSpec, OptimSpec, RunConfig, TrackingSpec, TrainerSpec

Stage = Literal["pretrain", "sft", "grpo"]

# Which task streams each stage trains, and the official loss coefficients
# (Gen-Verse/MMaDA configs/mmada_pretraining_*.yaml, table in docs/model.md: stage 1.1 = 1.0/0.1/1.0;
# Mix-CoT stage 2.1 = t2i 1.0, lm 0.5, mmu 0.5).
STAGE_TASKS: dict[str, tuple[str, ...]] = {
    "pretrain": ("t2i", "lm", "mmu"),
    "sft": ("chat", "mmu", "t2i", "lm"),
    "grpo": ("chat", "mmu", "t2i", "r2i"),  # prompt streams; rewards, not these coefficients, drive the update
}
STAGE_COEFFS: dict[str, dict[str, float]] = {
    "pretrain": {"t2i": 1.0, "lm": 0.1, "mmu": 1.0},
    "sft": {"chat": 0.5, "mmu": 0.5, "t2i": 1.0, "lm": 0.5},
    "grpo": {"chat": 1.0, "mmu": 1.0, "t2i": 1.0, "r2i": 1.0},
}


class FromLLaDASpec(Strict):
    """Grow a text-only LLaDA checkpoint (``model.init``) into MMaDA's unified vocabulary (official stage 1:
    Gen-Verse/MMaDA training/train_mmada.py, ``resize_token_embeddings(new_vocab_size)``)."""

    vocab_size: int = Field(134656, gt=0)
    """Rows of the grown embedding and head (official ``new_vocab_size``: LLaDA's 126464 + 8192)."""
    codebook_size: int = Field(8192, gt=0)
    """Image codes (MAGVIT-v2: 8192); code ``c`` is token ``len(tokenizer) + c``."""
    num_vq_tokens: int = Field(256, gt=0)
    """Image tokens per image (256 at 256 px, stage 1.1/1.2; 1024 at 512 px)."""
    mask_token_id: int = Field(126336, ge=0)
    """The mask token for text and image positions (LLaDA's ``<|mdm_mask|>``)."""


class ModelSpec(Strict):
    """Where the weights come from: a fresh preset, or a registered/saved checkpoint."""

    preset: Literal["tiny", "small", "1b", "8b"] | None = None
    """Initialise a fresh model of this size (``mmada.models.PRESETS``)."""
    overrides: dict[str, Any] = Field(default_factory=dict)
    """Preset field overrides, e.g. ``{n_layers: 2, d_model: 128}``; with ``init`` only the fields that
    leave the weights unchanged (``mmada.models.configuration.CHECKPOINT_OVERRIDES``: num_vq_tokens,
    max_sequence_length, mask/bos/eos/pad_token_id, codebook_size), e.g. ``{num_vq_tokens: 1024}``."""
    init: str | None = None
    """Start from ``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` or a ``save_pretrained`` directory."""
    tokenizer: str | None = None
    """Text tokenizer: ``builtin``, a directory or an HF id. Default: the checkpoint's own, else ``builtin``."""
    from_llada: FromLLaDASpec | None = None
    """``model.init`` is a text-only LLaDA checkpoint: grow its vocabulary by the image codes first."""

    @model_validator(mode="after")
    def _one_source(self) -> ModelSpec:
        if (self.preset is None) == (self.init is None):
            raise ValueError("set exactly one of model.preset (fresh weights) or model.init (a checkpoint)")
        if self.from_llada is not None and self.init is None:
            raise ValueError("model.from_llada grows the checkpoint named by model.init; set model.init")
        if self.init is not None:
            bad = sorted(set(self.overrides) - set(CHECKPOINT_OVERRIDES))
            if bad:
                raise ValueError(f"model.overrides.{bad[0]} cannot be changed on a checkpoint (model.init); "
                                 f"allowed: {', '.join(sorted(CHECKPOINT_OVERRIDES))}")
        return self


class LossSpec(Strict):
    coeffs: dict[Task, float] | None = None
    """Per-task loss coefficients; default: the stage's reference values (``STAGE_COEFFS``)."""
    image_schedule: str = "cosine"
    """Image mask schedule γ(t): cosine | linear | sigmoid | pow<k>."""
    min_masking_rate: float = Field(0.0, ge=0, le=1)
    per_task_forward: bool = False
    """One forward per task instead of one over all rows padded to the longest task (same losses; less
    padding on CPU, where the tiny presets use it; one larger forward suits GPUs and sharded models)."""


class SamplesSpec(Strict):
    """Periodic generations logged as MLflow artifacts (text answers, a grid of generated images)."""

    every_n_steps: int = Field(0, ge=0, le=MAX_STEPS)
    """0 disables periodic samples (they are still made once at the end if prompts/captions are set)."""
    prompts: list[str] = Field(default_factory=list)
    think: bool = False
    sampler: SamplerSettings = Field(default_factory=lambda: SamplerSettings(steps=16, gen_length=32, block_length=16))
    """How the answers to ``prompts`` are sampled."""
    captions: list[str] = Field(default_factory=list)
    image_sampler: ImageSamplerSettings = Field(default_factory=lambda: ImageSamplerSettings(steps=8))
    """How the images of ``captions`` are sampled."""


class TrainConfig(RunConfig):
    """Everything one training stage needs."""

    name: str = "run"
    stage: Stage
    seed: int = 10086
    output_dir: str = "runs/train/{name}"
    """Checkpoints, exports and traces go here (``{name}``/``{stage}`` are filled in)."""
    model: ModelSpec
    data: DataSpec
    loss: LossSpec = Field(default_factory=LossSpec)
    optim: OptimSpec = Field(default_factory=OptimSpec)
    trainer: TrainerSpec = Field(default_factory=TrainerSpec)
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec)
    samples: SamplesSpec = Field(default_factory=SamplesSpec)
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)
    grpo: GRPOConfig | None = None
    """UniGRPO settings (stage ``grpo`` only): ``mmada.rl.GRPOConfig``, TRL-like field names."""
    lora: LoRASpec | None = None
    """Train LoRA adapters instead of all weights (stages sft and grpo; d1: r 128, alpha 64); the
    registered version holds the merged weights, the adapter is logged with the run."""

    HASH_EXCLUDE: ClassVar[dict[str, Any]] = {**RunConfig.HASH_EXCLUDE, "samples": True}

    @model_validator(mode="after")
    def _check_stage(self) -> TrainConfig:
        if (self.stage == "grpo") != (self.grpo is not None):
            raise ValueError("grpo: the section is required for stage 'grpo' and only allowed there")
        if self.lora is not None and self.stage == "pretrain":
            raise ValueError("lora: adapters are for stages sft and grpo, not pretrain")
        if self.lora is not None and self.trainer.strategy == "fsdp":
            raise ValueError("lora: not supported with trainer.strategy fsdp (use ddp: only the adapters train)")
        allowed = STAGE_TASKS[self.stage]
        bad = [t for t in self.data.streams if t not in allowed]
        if bad:
            raise ValueError(f"data.streams: stage {self.stage!r} trains {list(allowed)}, not {bad}")
        if not self.data.streams:
            raise ValueError("data.streams: at least one task stream is required")
        if self.loss.coeffs is not None:
            missing = [t for t in self.data.streams if t not in self.loss.coeffs]
            if missing:
                raise ValueError(f"loss.coeffs: no coefficient for the stream(s) {missing}")
        return self

    # ------------------------------------------------------------------ derived values
    @property
    def coeffs(self) -> dict[str, float]:
        base = self.loss.coeffs if self.loss.coeffs is not None else STAGE_COEFFS[self.stage]
        return {t: float(base[t]) for t in self.data.streams}

    @property
    def out_dir(self) -> Path:
        return Path(self.output_dir.format(name=self.name, stage=self.stage))

    @property
    def experiment(self) -> str:
        return self.tracking.experiment or f"mmada-{self.stage}"

    @property
    def alias(self) -> str:
        return self.tracking.alias or self.stage


# ---------------------------------------------------------------------------------------------
# Loading


def validate_train_config(data: Any, where: str = "config") -> TrainConfig:
    return validate(TrainConfig, data, f"{where}: invalid training config")


def load_train_config(source: str | Path | dict, overrides: list[str] | None = None) -> TrainConfig:
    """A YAML file (or a dict) with ``key=value`` overrides: :func:`mmada.config.load_config` for ``TrainConfig``."""
    return load_config(TrainConfig, source, overrides)
