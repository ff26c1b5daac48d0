"""Lightning module that trains a MAGVIT-v2 tokenizer.

Loss = ``l1·|x̂−x| + l2·(x̂−x)² + entropy·(H_sample − H_batch) + commitment·(z − sign z)²``
(+ ``adversarial·hinge_G`` once ``adversarial_start_step`` is reached, with a PatchGAN trained
alongside). Optimisation is manual so the optional discriminator gets its own optimizer step.

Logged per step: ``train/loss`` and each term, ``train/lr``; per validation: ``val/psnr``
(decode(encode(x)), the exact tokenizer path), ``val/l1``, ``val/mse``, ``val/codebook_usage``,
``val/perplexity``. Batches are ``(B, 3, H, W)`` tensors in [-1, 1], a one-tensor tuple/list, or a
dict with ``"pixels"``.
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F

from mmada.errors import MMaDAError
from mmada.models.vq import MAGVITv2
from mmada.vq.config import VQTrainConfig
from mmada.vq.losses import PatchDiscriminator, hinge_d_loss, hinge_g_loss
from mmada.vq.metrics import codebook_stats, psnr


def pixels_of(batch: Any) -> torch.Tensor:
    """The pixel tensor of a batch (tensor, ``(tensor,)`` or ``{"pixels": tensor}``)."""
    if isinstance(batch, dict):
        if "pixels" not in batch:
            raise MMaDAError(f"batch dict has no 'pixels' entry (keys: {sorted(batch)})")
        batch = batch["pixels"]
    elif isinstance(batch, list | tuple):
        batch = batch[0]
    if not isinstance(batch, torch.Tensor) or batch.dim() != 4:
        raise MMaDAError(f"expected a (B, 3, H, W) pixel batch, got {getattr(batch, 'shape', type(batch))}")
    return batch


def lr_lambda(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warmup to 1, then cosine decay to ``min_ratio`` at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t))


class VQTokenizerModule(L.LightningModule):
    def __init__(self, cfg: VQTrainConfig, model: MAGVITv2 | None = None):
        super().__init__()
        self.cfg = cfg
        self.model = model if model is not None else MAGVITv2(cfg.model)
        if self.model.config != cfg.model:
            raise MMaDAError("the model passed in does not have the architecture in cfg.model")
        self.use_gan = cfg.loss.adversarial_weight > 0
        self.discriminator = PatchDiscriminator(cfg.loss.disc_channels) if self.use_gan else None
        self.automatic_optimization = False
        self._counts: torch.Tensor | None = None
        self._val_sums: dict[str, float] = {}
        self.last_val: dict[str, float] = {}
        self.save_hyperparameters({"config": cfg.model_dump(mode="json")})

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self):
        o = self.cfg.optim
        opt = torch.optim.AdamW(self.model.parameters(), lr=o.lr, betas=o.betas, weight_decay=o.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: lr_lambda(s, o.warmup_steps, self.cfg.max_steps, o.min_lr_ratio)
        )
        if self.use_gan:
            # A plain optimizer, not registered with Lightning: in manual optimisation every
            # registered optimizer step advances ``global_step``, which would halve max_steps.
            self.d_opt = torch.optim.AdamW(self.discriminator.parameters(), lr=self.cfg.loss.disc_lr, betas=(0.5, 0.9))
        return [opt], [sched]

    def _prepare(self, batch: Any) -> torch.Tensor:
        x = pixels_of(batch)
        if self.cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        w = self.cfg.loss
        x = self._prepare(batch)
        opt = self.optimizers()
        sched = self.lr_schedulers()
        out = self.model(x)
        rec = out.reconstruction
        l1 = F.l1_loss(rec.float(), x.float())
        l2 = F.mse_loss(rec.float(), x.float())
        q = out.quant
        loss = w.l1_weight * l1 + w.l2_weight * l2 + w.entropy_weight * q.entropy_loss + w.commitment_weight * q.commitment_loss
        gan_on = self.use_gan and self.global_step >= w.adversarial_start_step
        logs = {"train/l1": l1, "train/mse": l2, "train/entropy_loss": q.entropy_loss,
                "train/commitment_loss": q.commitment_loss, "train/batch_entropy": q.batch_entropy}
        if gan_on:
            self.discriminator.requires_grad_(False)
            g_loss = hinge_g_loss(self.discriminator(rec))
            self.discriminator.requires_grad_(True)
            loss = loss + w.adversarial_weight * g_loss
            logs["train/g_loss"] = g_loss
        if not torch.isfinite(loss):
            raise MMaDAError(f"non-finite training loss at step {self.global_step}; lower optim.lr")
        opt.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        if self.cfg.optim.grad_clip:
            self.clip_gradients(opt, gradient_clip_val=self.cfg.optim.grad_clip, gradient_clip_algorithm="norm")
        opt.step()
        sched.step()
        if gan_on:
            d_loss = hinge_d_loss(self.discriminator(x), self.discriminator(rec.detach()))
            self.d_opt.zero_grad(set_to_none=True)
            self.manual_backward(d_loss)
            self.d_opt.step()
            logs["train/d_loss"] = d_loss
        self.log("train/loss", loss, prog_bar=True)
        self.log_dict(logs)
        self.log("train/lr", sched.get_last_lr()[0])
        return loss.detach()

    # ------------------------------------------------------------------ validation
    def on_validation_epoch_start(self) -> None:
        self._counts = torch.zeros(self.model.codebook_size, dtype=torch.long, device=self.device)
        self._val_sums = {"psnr": 0.0, "l1": 0.0, "mse": 0.0, "n": 0.0}

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x = self._prepare(batch)
        codes = self.model.encode(x)  # (B, h·w)
        grid = self.model.config.grid(*x.shape[-2:])
        rec = self.model.decode(codes, grid)  # (B, 3, H, W) in [-1, 1]
        self._counts += torch.bincount(codes.flatten(), minlength=self.model.codebook_size)
        s = self._val_sums
        s["psnr"] += psnr(rec, x).sum().item()
        s["l1"] += (rec - x.float()).abs().flatten(1).mean(1).sum().item()
        s["mse"] += (rec - x.float()).pow(2).flatten(1).mean(1).sum().item()
        s["n"] += x.shape[0]

    def on_validation_epoch_end(self) -> None:
        s, n = self._val_sums, max(self._val_sums.get("n", 0.0), 1.0)
        stats = codebook_stats(self._counts.cpu())
        self.last_val = {"psnr": s["psnr"] / n, "l1": s["l1"] / n, "mse": s["mse"] / n,
                         "codebook_usage": stats["usage"], "perplexity": stats["perplexity"],
                         "codes_used": stats["codes_used"]}
        # Logged straight to the logger at ``global_step`` (optimizer steps taken so far), so the
        # step-0 baseline, in-fit validations and grid artifacts share one step axis.
        if self.logger is not None and not self.trainer.sanity_checking:
            self.logger.log_metrics({f"val/{k}": v for k, v in self.last_val.items()}, step=self.global_step)
