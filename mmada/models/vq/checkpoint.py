"""Reading and writing tokenizer checkpoint directories (diffusers/Show-o style).

A directory holds ``config.json`` and one weights file. We write ``model.safetensors``; we read, in
this order, ``model.safetensors``, ``diffusion_pytorch_model.safetensors``,
``pytorch_model.safetensors``, then the legacy pickles ``pytorch_model.bin`` /
``diffusion_pytorch_model.bin`` (the official ``showlab/magvitv2`` file) with
``torch.load(weights_only=True)``, which refuses arbitrary objects.

The official ``config.json`` carries only bookkeeping keys (``_class_name``, ``_version``, …),
because the official class takes no arguments; any such config means the official architecture.
Our exports add the :class:`VQConfig` fields beside ``_class_name``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from mmada.config import validate
from mmada.errors import MMaDAError
from mmada.files import atomic_dir
from mmada.models.vq.config import VQConfig

CONFIG_NAME = "config.json"
SAFETENSORS_NAMES = ("model.safetensors", "diffusion_pytorch_model.safetensors", "pytorch_model.safetensors")
PICKLE_NAMES = ("pytorch_model.bin", "diffusion_pytorch_model.bin")
CLASS_NAMES = ("MAGVITv2", "MAGViTv2", "VQGANModel")


class CheckpointError(MMaDAError):
    """A tokenizer checkpoint directory is missing, corrupt or does not match the architecture."""


def read_config(directory: Path) -> VQConfig:
    path = directory / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"{directory}: no {CONFIG_NAME} (not a tokenizer checkpoint directory)")
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(raw).__name__}")
    cls = raw.get("_class_name")
    if cls is not None and cls not in CLASS_NAMES:
        raise CheckpointError(f"{path}: _class_name={cls!r} is not a MAGVIT-v2 tokenizer (expected one of {CLASS_NAMES})")
    fields = {k: v for k, v in raw.items() if not k.startswith("_")}
    return validate(VQConfig, fields, f"{path}: invalid VQConfig")


def find_weights(directory: Path) -> Path:
    for name in SAFETENSORS_NAMES + PICKLE_NAMES:
        if (directory / name).is_file():
            return directory / name
    raise CheckpointError(
        f"{directory}: no weights file; expected one of {', '.join(SAFETENSORS_NAMES + PICKLE_NAMES)}"
    )


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a weights file, read without executing code."""
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path), device="cpu")
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except (SafetensorError, OSError, RuntimeError, EOFError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot read weights ({type(exc).__name__}: {exc})") from None
    except Exception as exc:  # weights_only unpickler refusals come as pickle.UnpicklingError
        raise CheckpointError(f"{path}: refused or corrupt pickle ({type(exc).__name__}: {exc})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: expected a flat mapping of parameter names to tensors")
    return state


def write_checkpoint(directory: Path, config: VQConfig, state: dict[str, torch.Tensor], extra: dict | None = None) -> Path:
    """Write ``config.json`` + ``model.safetensors`` atomically: a temp directory renamed into place,
    so a half-written export never looks complete. ``extra`` keys (provenance such as an MLflow run
    id) must start with ``_`` so loaders treat them as bookkeeping."""
    bad = [k for k in extra or {} if not k.startswith("_")]
    if bad:
        raise ValueError(f"extra config keys must start with '_': {bad}")
    directory = Path(directory)
    with atomic_dir(directory) as tmp:
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        meta = {"_class_name": "MAGVITv2", "_mmada_format": 1, **config.to_json_dict(), **(extra or {})}
        (tmp / CONFIG_NAME).write_text(json.dumps(meta, indent=2) + "\n")
    return directory
