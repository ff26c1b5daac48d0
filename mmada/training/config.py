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

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from mmada.config import Strict, apply_overrides, read_yaml, validate
from mmada.data.streams import DataSpec, Task
from mmada.diffusion.settings import ImageSamplerSettings, SamplerSettings
from mmada.rl.grpo import GRPOConfig

Stage = Literal["pretrain", "sft", "grpo"]

# Which task streams each stage trains, and the official loss coefficients
# (Gen-Verse/MMaDA configs/mmada_pretraining_*.yaml, table in docs/model.md: stage 1.1 = 1.0/0.1/1.0;
# Mix-CoT stage 2.1 = t2i 1.0, lm 0.5, mmu 0.5).
STAGE_TASKS: dict[str, tuple[str, ...]] = {
    "pretrain": ("t2i", "lm", "mmu"),
    "sft": ("chat", "mmu", "t2i", "lm"),
    "grpo": ("chat", "mmu", "t2i"),  # prompt streams; rewards, not these coefficients, drive the update
}
STAGE_COEFFS: dict[str, dict[str, float]] = {
    "pretrain": {"t2i": 1.0, "lm": 0.1, "mmu": 1.0},
    "sft": {"chat": 0.5, "mmu": 0.5, "t2i": 1.0, "lm": 0.5},
    "grpo": {"chat": 1.0, "mmu": 1.0, "t2i": 1.0},
}


class ModelSpec(Strict):
    """Where the weights come from: a fresh preset, or a registered/saved checkpoint."""

    preset: Literal["tiny", "small", "1b", "8b"] | None = None
    """Initialise a fresh model of this size (``mmada.models.PRESETS``)."""
    overrides: dict[str, Any] = Field(default_factory=dict)
    """Preset field overrides, e.g. ``{n_layers: 2, d_model: 128}`` (only with ``preset``)."""
    init: str | None = None
    """Start from ``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` or a ``save_pretrained`` directory."""
    tokenizer: str | None = None
    """Text tokenizer: ``builtin``, a directory or an HF id. Default: the checkpoint's own, else ``builtin``."""

    @model_validator(mode="after")
    def _one_source(self) -> ModelSpec:
        if (self.preset is None) == (self.init is None):
            raise ValueError("set exactly one of model.preset (fresh weights) or model.init (a checkpoint)")
        if self.overrides and self.preset is None:
            raise ValueError("model.overrides only applies to a fresh model.preset")
        return self


class LossSpec(Strict):
    coeffs: dict[Task, float] | None = None
    """Per-task loss coefficients; default: the stage's reference values (``STAGE_COEFFS``)."""
    image_schedule: str = "cosine"
    """Image mask schedule γ(t): cosine | linear | sigmoid | pow<k>."""
    min_masking_rate: float = Field(0.0, ge=0, le=1)


class OptimSpec(Strict):
    """AdamW with the reference's no-decay rule and a cosine schedule with linear warmup."""

    lr: float = Field(1e-4, gt=0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    no_decay: list[str] = Field(default_factory=lambda: ["bias", "layer_norm.weight", "mlm_ln.weight",
                                                          "embeddings.weight"])
    """Parameters whose name contains one of these get no weight decay (the reference's list)."""
    warmup_steps: int = Field(100, ge=0)
    min_lr_scale: float = Field(0.0, ge=0, le=1)
    """Cosine decay from ``lr`` to ``lr · min_lr_scale`` at ``trainer.max_steps``."""
    scheduler: Literal["cosine", "constant"] = "cosine"
    max_grad_norm: float | None = Field(1.0, gt=0)


class FSDPSpec(Strict):
    sharding_strategy: Literal["auto", "FULL_SHARD", "HYBRID_SHARD", "SHARD_GRAD_OP", "NO_SHARD"] = "auto"
    """``auto``: HYBRID_SHARD (shard within a node, replicate across nodes) when num_nodes > 1, else FULL_SHARD."""
    activation_checkpointing: bool = True
    """Recompute each transformer block in backward (the same unit as the FSDP wrap)."""
    state_dict_type: Literal["sharded", "full"] = "sharded"
    cpu_offload: bool = False


class TrainerSpec(Strict):
    accelerator: Literal["auto", "cpu", "gpu", "cuda"] = "auto"
    devices: int | Literal["auto"] = 1
    """Processes per node (GPUs per node; SLURM ``--ntasks-per-node``)."""
    num_nodes: int = Field(1, ge=1)
    strategy: Literal["auto", "ddp", "fsdp"] = "auto"
    """``auto``: single process, or DDP when there are several."""
    precision: Literal["auto", "32-true", "bf16-mixed", "16-mixed", "bf16-true"] = "auto"
    """``auto``: ``bf16-mixed`` on GPU, ``32-true`` on CPU."""
    accumulate_grad_batches: int = Field(1, ge=1)
    max_steps: int = Field(1000, ge=1)
    """Optimizer steps of the run (resumed runs stop at the same total)."""
    log_every_n_steps: int = Field(10, ge=1)
    val_every_n_steps: int | None = Field(None, ge=1)
    """Run validation every N optimizer steps (None: only at the end of the run; 0 batches disables it)."""
    activation_checkpointing: bool = False
    """Recompute transformer blocks in backward without FSDP (memory for compute)."""
    fsdp: FSDPSpec = Field(default_factory=FSDPSpec)
    matmul_precision: Literal["highest", "high", "medium"] = "high"
    process_group_backend: Literal["nccl", "gloo"] | None = None
    """Default: nccl on GPU, gloo on CPU."""


class CheckpointSpec(Strict):
    every_n_steps: int = Field(500, ge=1)
    keep_last: int = Field(2, ge=-1)
    """Step checkpoints kept besides ``last`` (-1: all)."""
    resume: str = "auto"
    """``auto`` (continue from ``<dir>/last.ckpt`` if present), ``never``, or a checkpoint path."""
    dir: str | None = None
    """Default: ``<output_dir>/checkpoints``."""


class SamplesSpec(Strict):
    """Periodic generations logged as MLflow artifacts (text answers, a grid of generated images)."""

    every_n_steps: int = Field(0, ge=0)
    """0 disables periodic samples (they are still made once at the end if prompts/captions are set)."""
    prompts: list[str] = Field(default_factory=list)
    think: bool = False
    sampler: SamplerSettings = Field(default_factory=lambda: SamplerSettings(steps=16, gen_length=32, block_length=16))
    """How the answers to ``prompts`` are sampled."""
    captions: list[str] = Field(default_factory=list)
    image_sampler: ImageSamplerSettings = Field(default_factory=lambda: ImageSamplerSettings(steps=8))
    """How the images of ``captions`` are sampled."""


class TrackingSpec(Strict):
    uri: str | None = None
    """MLflow tracking URI; default ``$MLFLOW_TRACKING_URI`` or ``sqlite:///runs/mlflow.db``."""
    experiment: str | None = None
    """Default: ``mmada-<stage>``."""
    run_name: str | None = None
    registered_model: str | None = None
    """Registered model name; default ``mmada-<model size>`` (e.g. ``mmada-tiny``)."""
    alias: str | None = None
    """Alias set on the new version; default: the stage (``pretrain`` / ``sft``)."""
    registry: bool = True
    """Register the HF export as a new version of ``registered_model`` (with ``alias``)."""
    log_system_metrics: bool = True
    system_metrics_interval: float = Field(10.0, gt=0)
    max_retries: int = Field(3, ge=0)
    """Retries of a failed MLflow call before it is reported and dropped (training never stops for it)."""


class TrainConfig(Strict):
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

    @model_validator(mode="after")
    def _check_stage(self) -> TrainConfig:
        if (self.stage == "grpo") != (self.grpo is not None):
            raise ValueError("grpo: the section is required for stage 'grpo' and only allowed there")
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
    def checkpoint_dir(self) -> Path:
        return Path(self.checkpoint.dir) if self.checkpoint.dir else self.out_dir / "checkpoints"

    @property
    def experiment(self) -> str:
        return self.tracking.experiment or f"mmada-{self.stage}"

    @property
    def alias(self) -> str:
        return self.tracking.alias or self.stage

    def flat(self) -> dict[str, str]:
        """``{"optim.lr": "0.0001", …}``: the config as MLflow params."""
        return flatten(self.model_dump(mode="json"))

    def config_hash(self) -> str:
        """sha256 of what decides the result (not where it is logged or resumed from)."""
        d = self.model_dump(mode="json", exclude={"tracking": True, "output_dir": True, "samples": True,
                                                  "checkpoint": {"resume", "dir"}})
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()


# ---------------------------------------------------------------------------------------------
# Loading and overrides


def flatten(d: Any, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    if isinstance(d, dict) and d:
        for k, v in d.items():
            out.update(flatten(v, f"{prefix}{k}."))
    elif isinstance(d, list) and d and any(isinstance(v, (dict, list)) for v in d):
        for i, v in enumerate(d):
            out.update(flatten(v, f"{prefix}{i}."))
    else:
        out[prefix[:-1]] = json.dumps(d) if not isinstance(d, str) else d
    return out


def validate_train_config(data: Any, where: str = "config") -> TrainConfig:
    return validate(TrainConfig, data, f"{where}: invalid training config")


def load_train_config(source: str | Path | dict, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML file (or a dict), apply ``key=value`` overrides and validate."""
    if isinstance(source, dict):
        data, where = source, "config"
    else:
        data, where = read_yaml(source), str(source)
    return validate_train_config(apply_overrides(data, overrides), where)
