"""Parallelism, applied in one place: the strategy (DDP / FSDP2), per-block sharding, activation
checkpointing and compilation, and gathering a full state dict for export. The model
(``mmada.models``) knows none of this.

    strategy = build_strategy(cfg.trainer, accelerator="gpu")     # what the Trainer gets
    parallelize(model, cfg.trainer, mesh, precision)               # the module's configure_model
    state = full_state_dict(trainer)                               # collective when sharded

The transformer block (:class:`~mmada.models.MMaDABlock`) is the unit of everything, in torchtitan's
order (``torchtitan/models/llama3/infra/parallelize.py``): activation checkpointing wraps each block,
``torch.compile`` compiles each block (regional compilation: one graph reused by every block, and the
wrapping around it stays per block), then FSDP2's ``fully_shard`` shards each block and finally the
root (embeddings, final norm and LM head stay in the root unit).

FSDP (``trainer.strategy: fsdp``) is FSDP2, per-parameter sharding over DTensors, through Lightning's
``ModelParallelStrategy``: bf16-mixed means bf16 parameters in compute with fp32 gradient reduction
and fp32 sharded master weights (``MixedPrecisionPolicy``); ``FULL_SHARD`` reshards after forward,
``SHARD_GRAD_OP`` keeps the gathered parameters until backward; ``HYBRID_SHARD`` (automatic when
``num_nodes > 1``) shards inside a node and replicates across nodes on a ``(nodes, devices)`` mesh.
Checkpoints are sharded (one DCP directory per save) or, with ``state_dict_type: full``, one file.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.strategies import DDPStrategy, ModelParallelStrategy, Strategy
from torch import nn

from mmada.errors import ConfigError
from mmada.models import MMaDABlock
from mmada.training.specs import TrainerSpec

WRAP_UNITS: set[type[nn.Module]] = {MMaDABlock}


def sharding_strategy(spec: TrainerSpec) -> str:
    s = spec.fsdp.sharding_strategy
    if s == "auto":
        return "HYBRID_SHARD" if spec.num_nodes > 1 else "FULL_SHARD"
    return s


def devices_per_node(spec: TrainerSpec, accelerator: str) -> int:
    if spec.devices != "auto":
        return int(spec.devices)
    return max(1, torch.cuda.device_count()) if accelerator == "gpu" else 1


def fsdp_precision(spec: TrainerSpec, precision: str) -> tuple[str, torch.dtype | None]:
    """(the Trainer's precision, FSDP2's compute dtype): under FSDP, bf16-mixed is FSDP2's own mixed
    precision (bf16 compute, fp32 reduce and master weights), so Lightning adds no autocast."""
    if spec.strategy == "fsdp" and precision == "bf16-mixed":
        return "32-true", torch.bfloat16
    if spec.strategy == "fsdp" and precision == "16-mixed":
        raise ConfigError("trainer.precision: 16-mixed under fsdp needs a gradient scaler; use bf16-mixed")
    return precision, None


def build_strategy(spec: TrainerSpec, accelerator: str) -> str | Strategy:
    """``auto`` for one process; DDP or FSDP2 (see module docstring) otherwise."""
    world = None if spec.devices == "auto" else int(spec.devices) * spec.num_nodes
    backend = spec.process_group_backend or ("gloo" if accelerator == "cpu" else "nccl")
    if spec.strategy == "fsdp":
        if sharding_strategy(spec) == "NO_SHARD":
            raise ConfigError("trainer.fsdp.sharding_strategy: NO_SHARD is DDP; use trainer.strategy: ddp")
        # a (world, 1) mesh: every rank is a data-parallel rank (no tensor parallelism)
        return ModelParallelStrategy(data_parallel_size=devices_per_node(spec, accelerator) * spec.num_nodes,
                                     tensor_parallel_size=1,
                                     save_distributed_checkpoint=spec.fsdp.state_dict_type == "sharded",
                                     process_group_backend=backend)
    if spec.strategy == "ddp" or (spec.strategy == "auto" and (world is None or world > 1)):
        if world == 1 and spec.strategy == "auto":
            return "auto"
        return DDPStrategy(process_group_backend=backend, find_unused_parameters=False,
                           gradient_as_bucket_view=True)
    return "auto"


def blocks_of(model: nn.Module) -> nn.ModuleList:
    """The transformer blocks (the unit of checkpointing, compilation and sharding)."""
    return model.model.transformer.blocks


def parallelize(model: nn.Module, spec: TrainerSpec, mesh=None, compute_dtype: torch.dtype | None = None) -> nn.Module:
    """Apply activation checkpointing, compilation and (with a device ``mesh``) FSDP2 to ``model``, in place.

    ``mesh``: the strategy's device mesh (``LightningModule.device_mesh``) under ``strategy: fsdp``,
    else None. ``compute_dtype``: FSDP2's parameter dtype in compute (:func:`fsdp_precision`).
    """
    sharded = mesh is not None
    if spec.activation_checkpointing or (sharded and spec.fsdp.activation_checkpointing):
        apply_activation_checkpointing(model)
    if spec.compile:
        apply_compile(model)
    if sharded:
        apply_fsdp(model, spec, mesh, compute_dtype)
    return model


def apply_compile(model: nn.Module) -> int:
    """Compile each block in place (``nn.Module.compile``); returns the number of blocks compiled.

    Every block has the same code, so the compiler traces one graph and reuses it (``dynamic=False``
    still recompiles per new shape); RMSNorm and RoPE keep their fp32 casts, which the compiler fuses
    with their neighbours instead of running them as separate kernels.
    """
    blocks = blocks_of(model)
    for block in blocks:
        block.compile()
    return len(blocks)


def apply_fsdp(model: nn.Module, spec: TrainerSpec, mesh, compute_dtype: torch.dtype | None) -> None:
    """``fully_shard`` each block, then the root (see the module docstring)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

    strategy = sharding_strategy(spec)
    if strategy == "HYBRID_SHARD" and spec.num_nodes > 1:
        per_node = mesh.size() // spec.num_nodes
        mesh = init_device_mesh(mesh.device_type, (spec.num_nodes, per_node), mesh_dim_names=("replicate", "shard"))
    elif mesh.ndim > 1:
        mesh = mesh["data_parallel"]
    kwargs: dict[str, Any] = {"mesh": mesh, "reshard_after_forward": strategy != "SHARD_GRAD_OP"}
    if compute_dtype is not None:
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32)
    if spec.fsdp.cpu_offload:
        kwargs["offload_policy"] = CPUOffloadPolicy()
    for block in blocks_of(model):
        fully_shard(block, **kwargs)
    fully_shard(model, **kwargs)


def apply_activation_checkpointing(model: nn.Module) -> int:
    """Recompute every transformer block in backward (non-FSDP runs); returns the number of blocks wrapped."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
        CheckpointImpl,
        checkpoint_wrapper,
    )
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
        apply_activation_checkpointing as apply_ac,
    )

    def wrapper(m: nn.Module) -> nn.Module:
        return checkpoint_wrapper(m, checkpoint_impl=CheckpointImpl.NO_REENTRANT)

    apply_ac(model, checkpoint_wrapper_fn=wrapper, check_fn=lambda m: isinstance(m, tuple(WRAP_UNITS)))
    return sum(1 for m in model.modules() if isinstance(m, tuple(WRAP_UNITS)))


def is_sharded(trainer) -> bool:
    """True when parameters are sharded, i.e. every rank must take part in any forward pass."""
    return isinstance(trainer.strategy, ModelParallelStrategy)


def model_weights(module_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The MMaDA model's entries of a LightningModule state dict, under the model's own names.

    The module holds the model as ``.model``, so its keys are ``model.<MMaDAModelLM key>``; anything
    else the module owns (nothing is saved for the frozen UniGRPO reference) is dropped.
    """
    prefix = "model."
    return {k[len(prefix):]: v for k, v in module_state.items() if k.startswith(prefix)}


def full_state_dict(trainer) -> dict[str, torch.Tensor]:
    """The model's full state dict on CPU under its own names (``model.transformer.…``).

    Collective under FSDP (call it on every rank); a plain copy otherwise.
    """
    module = trainer.lightning_module
    if is_sharded(trainer):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        sd = get_model_state_dict(trainer.strategy.model,
                                  options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return model_weights(sd)
    return {k: v.detach().to("cpu", copy=True) for k, v in module.model.state_dict().items()}
