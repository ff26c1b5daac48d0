"""The config sections every training run shares, and their base: what the harness reads.

    optim       OptimSpec        AdamW + the one LR schedule (:func:`mmada.training.optim.lr_factor`)
    trainer     TrainerSpec      devices, nodes, strategy, precision, steps, logging/validation cadence
    checkpoint  CheckpointSpec   atomic Lightning checkpoints and resume
    tracking    TrackingSpec     the MLflow run and the registry

:class:`~mmada.training.config.TrainConfig` (the MMaDA stages) and
:class:`~mmada.training.vq.VQTrainConfig` (the image tokenizer) are both :class:`RunConfig`: they hold
these sections under the same names, next to their own ``model``, ``data`` and ``loss``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field

from mmada.config import MAX_COUNT, MAX_STEPS, Strict


class OptimSpec(Strict):
    """AdamW with the reference's no-decay rule and a cosine schedule with linear warmup."""

    lr: float = Field(1e-4, gt=0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    no_decay: list[str] = Field(default_factory=lambda: ["bias", "layer_norm.weight", "mlm_ln.weight",
                                                          "embeddings.weight"])
    """Parameters whose name contains one of these get no weight decay (the reference's list)."""
    warmup_steps: int = Field(100, ge=0, le=MAX_STEPS)
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
    num_nodes: int = Field(1, ge=1, le=4096)
    strategy: Literal["auto", "ddp", "fsdp"] = "auto"
    """``auto``: single process, or DDP when there are several; ``fsdp``: FSDP2 (per-parameter sharding)."""
    precision: Literal["auto", "32-true", "bf16-mixed", "16-mixed", "bf16-true"] = "auto"
    """``auto``: ``bf16-mixed`` on GPU, ``32-true`` on CPU."""
    accumulate_grad_batches: int = Field(1, ge=1, le=4096)
    max_steps: int = Field(1000, ge=1, le=MAX_STEPS)
    """Optimizer steps of the run (resumed runs stop at the same total)."""
    log_every_n_steps: int = Field(10, ge=1, le=MAX_STEPS)
    val_every_n_steps: int | None = Field(None, ge=1, le=MAX_STEPS)
    """Run validation every N optimizer steps (None: only at the end of the run; 0 batches disables it)."""
    activation_checkpointing: bool = False
    """Recompute transformer blocks in backward without FSDP (memory for compute)."""
    compile: bool = False
    """``torch.compile`` each transformer block (regional compilation; mmada.training.parallelize)."""
    fsdp: FSDPSpec = Field(default_factory=FSDPSpec)
    matmul_precision: Literal["highest", "high", "medium"] = "high"
    process_group_backend: Literal["nccl", "gloo"] | None = None
    """Default: nccl on GPU, gloo on CPU."""


class CheckpointSpec(Strict):
    every_n_steps: int = Field(500, ge=1, le=MAX_STEPS)
    keep_last: int = Field(2, ge=-1, le=MAX_COUNT)
    """Step checkpoints kept besides ``last`` (-1: all)."""
    resume: str = "auto"
    """``auto`` (continue from ``<dir>/last.ckpt`` if present), ``never``, or a checkpoint path."""
    dir: str | None = None
    """Default: ``<output_dir>/checkpoints``."""


class TrackingSpec(Strict):
    uri: str | None = None
    """MLflow tracking URI; default ``$MLFLOW_TRACKING_URI`` or ``sqlite:///runs/mlflow.db``."""
    experiment: str | None = None
    """Default: ``mmada-<stage>`` for a training stage, ``vq-tokenizer`` for the image tokenizer."""
    run_name: str | None = None
    registered_model: str | None = None
    """Registered model name. A training stage defaults to ``mmada-<model size>`` (e.g. ``mmada-tiny``);
    the image tokenizer is registered only when this is set."""
    alias: str | None = None
    """Alias set on the new version; default: the stage (``pretrain`` / ``sft`` / ``grpo`` / ``vq``)."""
    registry: bool = True
    """Register the export as a new version of ``registered_model`` (with ``alias``)."""
    log_system_metrics: bool = True
    system_metrics_interval: float = Field(10.0, gt=0, le=86400)
    max_retries: int = Field(3, ge=0, le=100)
    """Retries of a failed MLflow call before it is reported and dropped (training never stops for it)."""


class RunConfig(Strict):
    """Base of the configs :func:`mmada.training.harness.fit` runs.

    A subclass declares, in its own field order, ``name``, ``seed``, ``output_dir`` and the sections
    ``optim``, ``trainer``, ``checkpoint`` and ``tracking`` (the types above), and the ``experiment``
    and ``alias`` properties (the MLflow experiment and the registry alias when they are not set).
    """

    if TYPE_CHECKING:  # declared by each subclass (pydantic keeps a base's fields first)
        name: str
        seed: int
        output_dir: str
        optim: OptimSpec
        trainer: TrainerSpec
        checkpoint: CheckpointSpec
        tracking: TrackingSpec
        experiment: str
        alias: str

    HASH_EXCLUDE: ClassVar[dict[str, Any]] = {"tracking": True, "output_dir": True, "checkpoint": {"resume", "dir"}}
    """Fields that do not decide the result (where it is written, logged, resumed from)."""

    @property
    def out_dir(self) -> Path:
        return Path(self.output_dir.format(name=self.name))

    @property
    def checkpoint_dir(self) -> Path:
        return Path(self.checkpoint.dir) if self.checkpoint.dir else self.out_dir / "checkpoints"

    def flat(self) -> dict[str, str]:
        """``{"optim.lr": "0.0001", …}``: the config as MLflow params."""
        return flatten(self.model_dump(mode="json"))

    def config_hash(self) -> str:
        """sha256 of what decides the result (not where it is logged or resumed from)."""
        d = self.model_dump(mode="json", exclude=self.HASH_EXCLUDE)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()


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
