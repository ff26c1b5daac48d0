"""LoRA adapters (PEFT) for SFT and UniGRPO, as d1 fine-tunes LLaDA-8B; full fine-tuning stays the default.

    lora: {r: 128, alpha: 64, dropout: 0.05}      # a training config's section (stages sft and grpo)

d1 (dllm-reasoning/d1 diffu-grpo/slurm_scripts/train.yaml: ``lora_r: 128, lora_alpha: 64,
lora_dropout: 0.05``; diffu_grpo_train.py: ``LoraConfig(target_modules=[q, k, v, o, up, down, gate
projections])``) adapts the attention and MLP projections. Here the same projections under LLaDA's
names, inside the blocks only (``ff_out`` is also the LM head's name, which is not adapted):
``q_proj k_proj v_proj attn_out ff_proj up_proj ff_out``. The adapters are injected into the model in
place (``peft.inject_adapter_in_model``), so the module, the samplers and the losses see the same
``MMaDAModelLM``; only the adapters have ``requires_grad``.

* UniGRPO's frozen reference policy is the model with its adapters switched off
  (:func:`adapters_disabled`): no second copy of the weights.
* The registered version is a normal checkpoint: :func:`merged_state_dict` folds every adapter into
  its base weight, ``W + (alpha / r) · B @ A``, under the official key names.
* The adapter itself is saved too (:func:`save_adapter`: ``adapter_model.safetensors`` +
  ``adapter_config.json``, PEFT's layout) and logged with the run.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer
from pydantic import Field, field_validator
from safetensors.torch import save_file

from mmada.config import Strict
from mmada.errors import ConfigError
from mmada.files import atomic_dir

BLOCK_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "attn_out", "ff_proj", "up_proj", "ff_out")
ADAPTER = "default"


class LoRASpec(Strict):
    """LoRA adapters on the blocks' projections (d1's values by default)."""

    r: int = Field(128, gt=0)
    """Adapter rank (d1: 128)."""
    alpha: float = Field(64.0, gt=0)
    """Scale numerator: the update is ``(alpha / r) · B @ A`` (d1: 64)."""
    dropout: float = Field(0.05, ge=0, lt=1)
    """Dropout on the adapter's input (d1: 0.05)."""
    target_modules: list[str] = Field(default_factory=lambda: list(BLOCK_PROJECTIONS))
    """Which block projections get an adapter."""

    @field_validator("target_modules")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        bad = [m for m in v if m not in BLOCK_PROJECTIONS]
        if bad or not v:
            raise ValueError(f"target_modules {bad or v} must be among {list(BLOCK_PROJECTIONS)}")
        return v

    @property
    def scaling(self) -> float:
        return self.alpha / self.r

    def peft_config(self) -> LoraConfig:
        pattern = rf".*\.blocks\.\d+\.({'|'.join(map(re.escape, self.target_modules))})"
        return LoraConfig(r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout, target_modules=pattern,
                          bias="none")


def add_lora(model: torch.nn.Module, spec: LoRASpec) -> torch.nn.Module:
    """Inject adapters in place (B = 0, so the model's outputs are unchanged); freezes everything else."""
    model = inject_adapter_in_model(spec.peft_config(), model, adapter_name=ADAPTER)
    if not any(isinstance(m, LoraLayer) for m in model.modules()):
        raise ConfigError(f"lora.target_modules {spec.target_modules}: no layer of the model matched")
    return model


def has_lora(model: torch.nn.Module) -> bool:
    return any(isinstance(m, LoraLayer) for m in model.modules())


@contextmanager
def adapters_disabled(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """The base model inside the block: every adapter is switched off, then back on."""
    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    for m in layers:
        m.enable_adapters(False)
    try:
        yield model
    finally:
        for m in layers:
            m.enable_adapters(True)


def merged_state_dict(state: dict[str, torch.Tensor], scaling: float) -> dict[str, torch.Tensor]:
    """Official-key weights with every adapter folded in: ``W + scaling · B @ A``.

    ``state`` is the adapted model's state dict: a wrapped projection holds ``<name>.base_layer.weight``
    (out, in), ``<name>.lora_A.default.weight`` (r, in) and ``<name>.lora_B.default.weight`` (out, r).
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if ".lora_A." in key or ".lora_B." in key:
            continue
        if key.endswith(".base_layer.weight"):
            name = key[: -len(".base_layer.weight")]
            a, b = state[f"{name}.lora_A.{ADAPTER}.weight"], state[f"{name}.lora_B.{ADAPTER}.weight"]
            delta = (b.float() @ a.float()) * scaling  # (out, r) @ (r, in)
            out[f"{name}.weight"] = (value.float() + delta).to(value.dtype)
        else:
            out[key] = value
    return out


def adapter_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The adapter weights alone, under PEFT's saved names (``….lora_A.weight``)."""
    return {f"base_model.model.{k.replace(f'.{ADAPTER}.', '.')}": v.contiguous()
            for k, v in state.items() if ".lora_A." in k or ".lora_B." in k}


def save_adapter(state: dict[str, torch.Tensor], spec: LoRASpec, target: Path) -> Path:
    """``adapter_model.safetensors`` + ``adapter_config.json`` (loadable by ``peft.PeftModel.from_pretrained``)."""
    with atomic_dir(target) as tmp:
        save_file(adapter_state(state), str(Path(tmp) / "adapter_model.safetensors"))
        spec.peft_config().save_pretrained(str(tmp))  # adapter_config.json
    return target
