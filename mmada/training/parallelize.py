"""Parallelism, applied in one place: the strategy (DDP / FSDP), the FSDP wrap and activation-checkpoint
units, and gathering a full state dict for export. The model (``mmada.models``) knows none of this.

    strategy = build_strategy(cfg.trainer, accelerator="gpu")     # what the Trainer gets
    apply_activation_checkpointing(model)                          # non-FSDP runs that trade compute for memory
    state = full_state_dict(trainer)                               # collective; full CPU tensors on every rank

FSDP: the transformer block (:class:`~mmada.models.MMaDABlock`) is both the wrap unit and the
activation-checkpointing unit; embeddings, final norm and LM head stay in the root unit.
``HYBRID_SHARD`` (shard inside a node, replicate across nodes, device mesh ``(num_nodes, devices)``)
is used automatically when ``num_nodes > 1``; checkpoints are sharded (one DCP directory per save).
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy, Strategy
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


def fsdp_kwargs(spec: TrainerSpec) -> dict[str, Any]:
    """Keyword arguments of Lightning's ``FSDPStrategy`` for this trainer config."""
    strategy = sharding_strategy(spec)
    kwargs: dict[str, Any] = dict(
        auto_wrap_policy=set(WRAP_UNITS),
        activation_checkpointing_policy=set(WRAP_UNITS) if spec.fsdp.activation_checkpointing else None,
        sharding_strategy=strategy,
        state_dict_type=spec.fsdp.state_dict_type,
        cpu_offload=spec.fsdp.cpu_offload,
        limit_all_gathers=True,
        use_orig_params=True,  # optimizer groups by parameter name (no-decay rule)
    )
    if strategy == "HYBRID_SHARD":
        if spec.devices == "auto":
            raise ConfigError("trainer.devices: HYBRID_SHARD needs an explicit number of devices per node")
        kwargs["device_mesh"] = (spec.num_nodes, int(spec.devices))  # (replicas = nodes, shards = GPUs/node)
    if spec.process_group_backend:
        kwargs["process_group_backend"] = spec.process_group_backend
    return kwargs


def build_strategy(spec: TrainerSpec, accelerator: str) -> str | Strategy:
    """``auto`` for one process; DDP or FSDP (see module docstring) otherwise."""
    world = None if spec.devices == "auto" else int(spec.devices) * spec.num_nodes
    if spec.strategy == "fsdp":
        if accelerator == "cpu":
            raise ConfigError("trainer.strategy: fsdp needs GPUs (accelerator gpu); use ddp on CPU")
        return FSDPStrategy(**fsdp_kwargs(spec))
    if spec.strategy == "ddp" or (spec.strategy == "auto" and (world is None or world > 1)):
        if world == 1 and spec.strategy == "auto":
            return "auto"
        backend = spec.process_group_backend or ("gloo" if accelerator == "cpu" else "nccl")
        return DDPStrategy(process_group_backend=backend, find_unused_parameters=False,
                           gradient_as_bucket_view=True)
    return "auto"


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
    return isinstance(trainer.strategy, FSDPStrategy)


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
