"""Run one MMaDA training stage end to end: data → Lightning → checkpoints → HF export → registered version.

    from mmada.training import load_train_config, train
    result = train(load_train_config("configs/train/tiny_pretrain.yaml"))
    result.model_version        # "3" of mmada-tiny, now aliased @pretrain

The loop itself is :func:`mmada.training.harness.fit`; this module supplies the stage's model, data,
samples and HF export. Every rank runs it (``srun``/``torchrun`` start one process per device);
under FSDP the export gathers the full state dict collectively. Resuming (``checkpoint.resume: auto``,
the default) continues from ``<checkpoint dir>/last.ckpt`` with the same optimizer, scheduler and
step, in the same MLflow run, with the data stream re-seeded by step.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch

from mmada.data.loading import ShardDataModule
from mmada.errors import ConfigError
from mmada.files import atomic_dir
from mmada.models import MMaDAConfig, MMaDAModelLM
from mmada.models.from_llada import mmada_config_from_llada
from mmada.tokenization import SpecialTokenIds, check_vocab, load_text_tokenizer
from mmada.tracking import default_tracking_uri
from mmada.tracking.lineage import lineage_tags
from mmada.tracking.registry import EXPORT_ARTIFACT_PATH, parse_model_uri, resolve_model
from mmada.training.callbacks import SampleCallback
from mmada.training.config import TrainConfig
from mmada.training.grpo import GRPOModule, GRPOPromptData
from mmada.training.harness import Export, TrainResult, fit, open_tracker
from mmada.training.lora import merged_state_dict, save_adapter
from mmada.training.module import DiffusionModule
from mmada.training.parallelize import full_state_dict, is_sharded, model_weights

# Lightning warnings about choices made on purpose here.
_EXPECTED_WARNINGS = (
    r".*overridden `on_after_batch_transfer` in `LightningModule` but have passed in a `LightningDataModule`.*",
    r".*Your `IterableDataset` has `__len__` defined.*",  # validation loaders state their exact length
)


@dataclass
class ModelSource:
    config: MMaDAConfig
    tokenizer: object
    special: SpecialTokenIds
    init_dir: Path | None
    parent: dict | None


def resolve_model_source(cfg: TrainConfig, tracking_uri: str) -> ModelSource:
    """Model config, tokenizer and initial weights named by ``cfg.model``."""
    init_dir, parent = None, None
    if cfg.model.init is not None:
        init_dir, parent = resolve_model(cfg.model.init, tracking_uri=tracking_uri, cache_dir=cfg.out_dir / "init")
        config = MMaDAConfig.from_pretrained(init_dir)
        if cfg.model.from_llada is not None:
            config = mmada_config_from_llada(config, **cfg.model.from_llada.model_dump())
        if cfg.model.overrides:
            config = config.with_overrides(cfg.model.overrides)
        tok_src = cfg.model.tokenizer or (str(init_dir) if (init_dir / "tokenizer.json").is_file() else "builtin")
    else:
        config = MMaDAConfig.from_preset(cfg.model.preset, **cfg.model.overrides)
        tok_src = cfg.model.tokenizer or "builtin"
    tokenizer = load_text_tokenizer(tok_src)
    special = SpecialTokenIds.from_tokenizer(tokenizer)
    check_vocab(special, config)
    return ModelSource(config, tokenizer, special, init_dir, parent)


def registered_name(cfg: TrainConfig, config: MMaDAConfig) -> str:
    if cfg.tracking.registered_model:
        return cfg.tracking.registered_model
    if cfg.model.preset:
        return f"mmada-{cfg.model.preset}"
    parsed = parse_model_uri(cfg.model.init or "")
    return parsed["name"] if parsed else f"mmada-{config.d_model}x{config.n_layers}"


def export_hf(config: MMaDAConfig, state: dict[str, torch.Tensor], tokenizer, target: Path) -> Path:
    """``save_pretrained`` (safetensors) + tokenizer files, written to a temp dir and renamed into place."""
    with atomic_dir(target) as tmp:
        with torch.device("meta"):
            shell = MMaDAModelLM(config)
        shell.save_pretrained(tmp, state_dict=state, safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
    return target


def export_checkpoint(cfg: TrainConfig, checkpoint: str | os.PathLike, target: str | os.PathLike | None = None) -> Path:
    """Export the weights of one of the stage's checkpoints as a ``save_pretrained`` directory.

    The run's final export is its last step; this picks an earlier one (``<out_dir>/checkpoints/
    step00001000.ckpt``) for evaluation or as the start of another stage. ``cfg`` is the run's own
    config: it names the architecture and tokenizer, which a Lightning checkpoint does not store.
    Loaded with ``weights_only=True`` (no arbitrary unpickling). Default target:
    ``<out_dir>/exports/step<N>``.
    """
    path = Path(checkpoint)
    if path.is_dir():
        raise ConfigError(f"{path} is a sharded (FSDP/DCP) checkpoint directory; export it from the run that wrote it "
                          "or consolidate it first (torch.distributed.checkpoint.format_utils.dcp_to_torch_save)")
    if not path.is_file():
        raise ConfigError(f"checkpoint {str(path)!r} does not exist")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if "state_dict" not in ckpt:
        raise ConfigError(f"{path} is not a Lightning training checkpoint (no 'state_dict')")
    state = model_weights(ckpt["state_dict"])
    if cfg.lora is not None:
        state = merged_state_dict(state, cfg.lora.scaling)
    src = resolve_model_source(cfg, cfg.tracking.uri or default_tracking_uri())
    step = int(ckpt.get("global_step", 0))
    target = Path(target) if target is not None else cfg.out_dir / "exports" / f"step{step:08d}"
    return export_hf(src.config, state, src.tokenizer, target)


def train(cfg: TrainConfig, *, progress_bar: bool = False) -> TrainResult:
    """Run the stage described by ``cfg`` (see the module docstring)."""
    for message in _EXPECTED_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    out = cfg.out_dir
    tracker = open_tracker(cfg)
    src = resolve_model_source(cfg, tracker.tracking_uri)
    t = cfg.trainer
    if cfg.stage == "grpo":  # UniGRPO: prompt batches in, rollouts + rewards inside the module
        dm = GRPOPromptData(cfg)
        module = GRPOModule(cfg, model_config=src.config, special=src.special, init_dir=src.init_dir)
    else:
        dm = ShardDataModule(cfg.data, src.tokenizer, num_vq_tokens=src.config.num_vq_tokens,
                             batches_per_epoch=t.max_steps * t.accumulate_grad_batches)
        module = DiffusionModule(cfg, model_config=src.config, special=src.special, init_dir=src.init_dir)
    inputs = dm.dataset_inputs()
    tags = lineage_tags(stage=cfg.stage, config_hash=cfg.config_hash(), inputs=inputs, parent=src.parent,
                        init=cfg.model.init)
    if cfg.lora is not None:  # a merged LoRA version says how it was trained
        tags |= {"lora": json.dumps(cfg.lora.model_dump())}
    if cfg.grpo is not None:  # the reward configuration is part of a grpo version's lineage
        g = cfg.grpo
        tags |= {"grpo.reward_funcs": json.dumps(g.reward_funcs), "grpo.reward_weights": json.dumps(g.reward_weights),
                 "grpo.estimator": g.estimator, "grpo.loss_type": g.aggregation,
                 "grpo.beta": str(g.beta)}

    def write_export(trainer: L.Trainer) -> Path | None:
        # collective under FSDP (every rank); otherwise only rank 0 needs the weights
        state = full_state_dict(trainer) if is_sharded(trainer) or trainer.is_global_zero else None
        if not trainer.is_global_zero:
            return None
        if cfg.lora is not None:  # the adapter is logged with the run; the version holds merged weights
            tracker.log_artifacts(save_adapter(state, cfg.lora, out / "adapter"), "adapter")
            state = merged_state_dict(state, cfg.lora.scaling)
        return export_hf(src.config, state, src.tokenizer, out / "export")

    export = Export(write_export, EXPORT_ARTIFACT_PATH, alias=cfg.alias,
                    registered_model=registered_name(cfg, src.config) if cfg.tracking.registry else None,
                    description="MMaDA unified diffusion model (HF format)")
    return fit(cfg, module, dm, tracker=tracker, export=export, tags=tags, inputs=inputs,
               callbacks=[SampleCallback(tracker, src.tokenizer, out)], validate=bool(dm.val_tasks()),
               progress_bar=progress_bar)
