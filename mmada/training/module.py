"""Lightning modules of the unified model: one family, the stage is configuration.

    MMaDAModule       what every stage shares: building/loading the model (``configure_model``),
                      AdamW + cosine schedule, on-device image tokenization, a sampler view.
    DiffusionModule   pretraining and mixed long-CoT SFT: the masked-diffusion ``unified_loss`` over
                      a mixed batch (t2i / lm / mmu / chat rows, one forward pass) with the stage's
                      per-task coefficients. UniGRPO's ``GRPOModule`` (``mmada.training.grpo``)
                      subclasses ``MMaDAModule`` too.

Batches come from :class:`mmada.data.loading.ShardDataModule`: ``{task: {input_ids, attention_mask,
prompt_mask, image_mask (B, L), keys, [needs_codes (B,), pixel_values (B, 3, R, R)]}}``.

Logged every ``trainer.log_every_n_steps``: ``train/loss``, ``train/loss_<task>``,
``train/acc_<task>`` (masked-token accuracy), ``train/lr``; ``perf/tokens_per_s`` comes from
:class:`~mmada.training.callbacks.SpeedMonitor`. Validation: ``val/loss_<task>`` with fixed noise.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning as L
import torch

from mmada.data.loading import make_seed
from mmada.data.vq import load_tokenizer_model
from mmada.diffusion import unified_loss
from mmada.errors import ConfigError
from mmada.files import write_json
from mmada.models import MMaDAConfig, MMaDAModelLM, check_ids
from mmada.models.from_llada import grow_from_llada
from mmada.models.loading import load_model
from mmada.tokenization import SequenceBatch, SpecialTokenIds
from mmada.training import parallelize
from mmada.training.config import TrainConfig
from mmada.training.lora import add_lora
from mmada.training.optim import build_optimizer, build_scheduler
from mmada.training.trainer import resolve_precision

BATCH_FIELDS = ("input_ids", "attention_mask", "prompt_mask", "image_mask")


class MMaDAModule(L.LightningModule):
    """Shared by all stages. ``init_dir``: a ``save_pretrained`` directory, or None for fresh weights."""

    def __init__(self, cfg: TrainConfig, *, model_config: MMaDAConfig, special: SpecialTokenIds,
                 init_dir: str | Path | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.model_config = model_config
        self.special = special
        self.init_dir = str(init_dir) if init_dir is not None else None
        self.model: MMaDAModelLM | None = None
        object.__setattr__(self, "_image_tokenizer", None)  # not a submodule: never sharded/saved/optimized

    # ------------------------------------------------------------------ model
    def configure_model(self) -> None:
        """Build (fresh, seeded identically on every rank) or load the model; once."""
        if self.model is not None:
            return
        if self.init_dir is not None and self.cfg.model.from_llada is not None:
            # a LLaDA checkpoint with its own config, grown to the stage's unified vocabulary
            llada = load_model(self.init_dir, dtype=torch.float32)
            self.model = grow_from_llada(llada, self.model_config)
        elif self.init_dir is not None:
            # the stage's config: the checkpoint's, with model.overrides applied (weights unchanged)
            self.model = load_model(self.init_dir, config=self.model_config, dtype=torch.float32)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.cfg.seed)
                self.model = MMaDAModelLM(self.model_config)
        if self.cfg.lora is not None:  # only the adapters train; the base weights stay as loaded
            add_lora(self.model, self.cfg.lora)
        self.model.train()
        self.on_model_built()
        spec = self.cfg.trainer
        mesh = self.device_mesh if spec.strategy == "fsdp" else None  # set by the FSDP2 strategy before this hook
        accelerator = "gpu" if mesh is not None and mesh.device_type == "cuda" else "cpu"
        dtype = parallelize.fsdp_precision(spec, resolve_precision(spec.precision, accelerator))[1]
        parallelize.parallelize(self.model, spec, mesh, dtype)

    def on_model_built(self) -> None:
        """Called once the model is built and before it is parallelized (its state dict is still plain tensors)."""

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs: Any):
        """The model's forward; ``kwargs`` are the samplers' KV-cache arguments (``kv_cache``,
        ``cache_start``, ``logits_positions``, ``logits_vocab``)."""
        return self.model(input_ids, attention_mask=attention_mask, **kwargs)

    def _fused_optimizer(self) -> bool:
        """Fused AdamW on GPU (one kernel for all parameters: 181 vs 200 ms per step for the 1b preset,
        8×1024 tokens, bf16, one H200, in bench/bench_training.py's plain loop), except under FSDP (its
        own clipping path) and fp16 (the scaler must unscale before clipping)."""
        trainer = self._trainer
        return (self.device.type == "cuda" and trainer is not None and not parallelize.is_sharded(trainer)
                and str(trainer.precision) != "16-mixed")

    def configure_optimizers(self) -> dict[str, Any]:
        opt = build_optimizer(self.model, self.cfg.optim, fused=self._fused_optimizer())
        sched = build_scheduler(opt, self.cfg.optim, max_steps=self.cfg.trainer.max_steps)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1}}

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Clip by global norm. Lightning's AMP plugin refuses to clip for a fused optimizer (it assumes
        a grad scaler); with bf16/fp32 there is none, so the gradients are clipped here directly (after
        DDP's all-reduce, so the local norm is the global one)."""
        if gradient_clip_val and getattr(optimizer, "defaults", {}).get("fused"):
            torch.nn.utils.clip_grad_norm_(self.parameters(), gradient_clip_val)
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    # ------------------------------------------------------------------ images
    def image_tokenizer(self):
        """The frozen MAGVIT-v2 tokenizer (``data.image_tokenizer``) on this module's device, loaded once."""
        vq = self._image_tokenizer
        if vq is None:
            name = self.cfg.data.image_tokenizer
            if name is None:
                raise ConfigError("data.image_tokenizer: a batch needs image codes computed on the fly, but none is set")
            vq = load_tokenizer_model(name, tracking_uri=self.cfg.tracking.uri).eval().requires_grad_(False)
            if vq.codebook_size > self.model_config.codebook_size:
                raise ConfigError(f"data.image_tokenizer {name!r} has {vq.codebook_size} codes but the model's "
                                  f"codebook_size is {self.model_config.codebook_size}")
            object.__setattr__(self, "_image_tokenizer", vq)
        if vq.device != self.device:
            vq.to(self.device)
        return vq

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Check token ids while the batch is still on the host (the model checks them only on CPU:
        on an accelerator that check would be a device→host sync every step)."""
        if isinstance(batch, dict):
            for b in batch.values():
                if isinstance(b, dict) and isinstance(b.get("input_ids"), torch.Tensor):
                    check_ids(b["input_ids"], self.model.config.embedding_size)
        return batch

    def on_after_batch_transfer(self, batch: dict[str, Any], dataloader_idx: int) -> dict[str, Any]:
        """Encode ``pixel_values`` of rows without shard codes and write them into the image slots."""
        for task, b in batch.items():
            if not isinstance(b, dict) or "pixel_values" not in b:
                continue
            need = b.pop("needs_codes")
            pixels = b.pop("pixel_values")[need]  # (n, 3, R, R)
            codes = self.image_tokenizer().encode(pixels)  # (n, N)
            n_img = int(b["image_mask"][0].sum())
            if codes.shape[1] != n_img:
                raise ConfigError(
                    f"data.image_tokenizer gives {codes.shape[1]} codes per image at data.image_resolution="
                    f"{self.cfg.data.image_resolution}, but {task} rows have {n_img} image slots (model num_vq_tokens)"
                )
            ids = b["input_ids"]
            rows = need.nonzero().squeeze(1)
            slots = b["image_mask"][rows]  # (n, L)
            sub = ids[rows]
            sub[slots] = (codes + self.special.image_offset).reshape(-1)
            ids[rows] = sub
        return batch

    def write_data_trace(self, field: str, items: list) -> None:
        """``<output_dir>/data_trace/rank<r>.json``: which samples this rank saw (debugging / tests)."""
        write_json(self.cfg.out_dir / "data_trace" / f"rank{self.global_rank}.json",
                   {"rank": self.global_rank, "world_size": self.trainer.world_size,
                    "global_step": self.global_step, field: items}, indent=None)

    def sampler_view(self) -> _SamplerView:
        """An object the samplers can call like the model (routed through the strategy's wrapper)."""
        trainer = self._trainer
        root = trainer.strategy.model if trainer is not None and parallelize.is_sharded(trainer) else self
        return _SamplerView(root, self)


class _SamplerView:
    """``view(x, attention_mask=…, **cache_args).logits`` through the (possibly FSDP-wrapped) root module.

    The cache arguments must reach the model: the fast samplers' cached forwards return only the
    logits of the positions they ask for."""

    def __init__(self, root: torch.nn.Module, module: MMaDAModule) -> None:
        self._root, self._module = root, module
        self.config = module.model.config

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs: Any):
        return self._root(input_ids, attention_mask=attention_mask, **kwargs)

    def parameters(self):
        return self._module.parameters()


def to_sequence_batches(batch: dict[str, Any]) -> dict[str, SequenceBatch]:
    return {t: SequenceBatch(*(b[f] for f in BATCH_FIELDS)) for t, b in batch.items() if isinstance(b, dict)}


class DiffusionModule(MMaDAModule):
    """Stage ``pretrain`` (t2i + lm + mmu) or ``sft`` (reasoning chat + multimodal reasoning + t2i)."""

    def __init__(self, cfg: TrainConfig, **kwargs: Any) -> None:
        super().__init__(cfg, **kwargs)
        self.coeffs = cfg.coeffs
        self.val_tasks: list[str] = []
        self.last_batch_tokens = 0
        self._trace: list[dict[str, list[str]]] = []

    def _loss(self, batch: dict[str, Any], coeffs: dict[str, float], generator: torch.Generator | None = None):
        return unified_loss(
            self.model, to_sequence_batches(batch), mask_id=self.special.mask, coeffs=coeffs,
            image_schedule=self.cfg.loss.image_schedule, min_masking_rate=self.cfg.loss.min_masking_rate,
            generator=generator, per_task_forward=self.cfg.loss.per_task_forward,
        )

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        res = self._loss(batch, self.coeffs)
        rows = sum(b["input_ids"].shape[0] for b in batch.values())
        # a tensor: SpeedMonitor converts its window's sum once per log (no per-step device→host sync)
        self.last_batch_tokens = sum(b["attention_mask"].sum() for b in batch.values())
        self.log("train/loss", res.loss.detach(), prog_bar=True, batch_size=rows)
        for task, value in res.per_task.items():
            self.log(f"train/loss_{task}", value, batch_size=batch[task]["input_ids"].shape[0])
            self.log(f"train/acc_{task}", res.accuracy[task], batch_size=batch[task]["input_ids"].shape[0])
        opt = self.optimizers(use_pl_optimizer=False)
        self.log("train/lr", opt.param_groups[0]["lr"], batch_size=rows)
        if self.cfg.data.trace_keys:
            self._trace.append({t: list(b["keys"]) for t, b in batch.items()})
        return res.loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        (task,) = batch.keys()
        gen = torch.Generator(device=self.device).manual_seed(make_seed(self.cfg.seed, "val", task, batch_idx) % 2**62)
        res = self._loss(batch, {task: 1.0}, generator=gen)
        n = batch[task]["input_ids"].shape[0]
        self.log(f"val/loss_{task}", res.per_task[task], sync_dist=True, add_dataloader_idx=False, batch_size=n)
        acc = res.accuracy[task]
        if not math.isnan(float(acc)):
            self.log(f"val/acc_{task}", acc.to(self.device), sync_dist=True, add_dataloader_idx=False, batch_size=n)

    def on_train_end(self) -> None:
        if self.cfg.data.trace_keys:
            self.write_data_trace("batches", self._trace)
