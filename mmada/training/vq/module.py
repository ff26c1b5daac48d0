"""Lightning module that trains a MAGVIT-v2 tokenizer, with its losses and metrics.

Loss = ``l1·|x̂−x| + l2·(x̂−x)² + entropy·(H_sample − H_batch) + commitment·(z − sign z)²``
(+ ``adversarial·hinge_G`` once ``adversarial_start_step`` is reached, with a PatchGAN trained
alongside). Optimisation is manual so the optional discriminator gets its own optimizer step; the
generator uses the platform's AdamW and LR schedule (:mod:`mmada.training.optim`) and is clipped here
to ``optim.max_grad_norm``.

Logged per step: ``train/loss`` and each term, ``train/lr`` (and ``perf/tokens_per_s`` from the
harness, counting the ``h·w`` codes of each training image); per validation (at the step reached):
``val/psnr`` (decode(encode(x)), the exact tokenizer path), ``val/l1``, ``val/mse``,
``val/codebook_usage``, ``val/perplexity``, ``val/codes_used``. No perceptual (LPIPS/VGG) term is
offered: it needs pretrained weights downloaded from a hub, which this platform does not fetch at run time.
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from mmada.data.vq import load_tokenizer_model, pixels_of
from mmada.errors import ConfigError, MMaDAError
from mmada.models.vq import MAGVITv2
from mmada.training.optim import build_optimizer, build_scheduler
from mmada.training.vq.config import VQTrainConfig


class PatchDiscriminator(nn.Module):
    """``(B, 3, H, W)`` → ``(B, 1, H/4, W/4)`` real/fake logits per patch."""

    def __init__(self, channels: int = 32, in_channels: int = 3):
        super().__init__()
        c = channels
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, c, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(c, 2 * c, 4, stride=2, padding=1),
            nn.GroupNorm(8 if (2 * c) % 8 == 0 else 1, 2 * c),
            nn.LeakyReLU(0.2),
            nn.Conv2d(2 * c, 2 * c, 3, padding=1),
            nn.GroupNorm(8 if (2 * c) % 8 == 0 else 1, 2 * c),
            nn.LeakyReLU(0.2),
            nn.Conv2d(2 * c, 1, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def hinge_g_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    return -logits_fake.mean()


def psnr(reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of ``(B, C, H, W)`` images in [-1, 1] (peak-to-peak range 2)."""
    mse = (reconstruction.float() - target.float()).pow(2).flatten(1).mean(1)  # (B,)
    return 10 * torch.log10(4.0 / mse.clamp_min(1e-10))


def codebook_stats(counts: torch.Tensor) -> dict[str, float]:
    """Usage and perplexity of a histogram of code indices (``counts[i]`` = uses of code i).

    ``usage``: fraction of codes used at least once; ``perplexity``: ``exp(H)`` of the empirical code
    distribution (1 = one code, ``len(counts)`` = uniform use of every code).
    """
    counts = counts.double()
    total = counts.sum()
    if total == 0:
        return {"usage": 0.0, "perplexity": 0.0, "codes_used": 0.0}
    p = counts[counts > 0] / total
    entropy = -(p * p.log()).sum().item()
    return {
        "usage": (counts > 0).sum().item() / counts.numel(),
        "perplexity": math.exp(entropy),
        "codes_used": float((counts > 0).sum().item()),
    }


def initial_model(cfg: VQTrainConfig) -> MAGVITv2:
    """Fresh weights of ``cfg.model``, or the tokenizer named by ``cfg.init_from`` (same architecture)."""
    if cfg.init_from is None:
        return MAGVITv2(cfg.model)
    model = load_tokenizer_model(cfg.init_from, tracking_uri=cfg.tracking.uri)
    if model.config != cfg.model:
        raise ConfigError(f"init_from={cfg.init_from!r} has a different architecture than the config's model section")
    return model.train()


class VQTokenizerModule(L.LightningModule):
    def __init__(self, cfg: VQTrainConfig):
        super().__init__()
        self.cfg = cfg
        with torch.random.fork_rng(devices=[]):  # the same initial weights whatever ran before
            torch.manual_seed(cfg.seed)
            self.model = initial_model(cfg)
            gan = cfg.loss.adversarial_weight > 0
            self.discriminator = PatchDiscriminator(cfg.loss.disc_channels) if gan else None
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.automatic_optimization = False
        self.d_opt: torch.optim.Optimizer | None = None
        self._d_opt_state: dict | None = None
        self._counts: torch.Tensor | None = None
        self._val_sums: dict[str, float] = {}
        self.last_val: dict[str, float] = {}
        self.last_batch_tokens = 0  # codes in the last training batch (SpeedMonitor's tokens/s)

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self):
        opt = build_optimizer(self.model, self.cfg.optim)
        sched = build_scheduler(opt, self.cfg.optim, max_steps=self.cfg.trainer.max_steps)
        if self.discriminator is not None:
            # A plain optimizer, not registered with Lightning: in manual optimisation every
            # registered optimizer step advances ``global_step``, which would halve max_steps.
            # Its state travels in the checkpoint under "discriminator_optimizer".
            self.d_opt = torch.optim.AdamW(self.discriminator.parameters(), lr=self.cfg.loss.disc_lr, betas=(0.5, 0.9))
            if self._d_opt_state is not None:
                self.d_opt.load_state_dict(self._d_opt_state)
        return [opt], [sched]

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.d_opt is not None:
            checkpoint["discriminator_optimizer"] = self.d_opt.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._d_opt_state = checkpoint.get("discriminator_optimizer")  # restored before configure_optimizers

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
        self.last_batch_tokens = x.shape[0] * math.prod(self.model.config.grid(*x.shape[-2:]))
        rec = out.reconstruction
        l1 = F.l1_loss(rec.float(), x.float())
        l2 = F.mse_loss(rec.float(), x.float())
        q = out.quant
        loss = w.l1_weight * l1 + w.l2_weight * l2 + w.entropy_weight * q.entropy_loss + w.commitment_weight * q.commitment_loss
        gan_on = self.discriminator is not None and self.global_step >= w.adversarial_start_step
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
        lr = opt.param_groups[0]["lr"]  # this step's learning rate
        opt.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        if self.cfg.optim.max_grad_norm:
            self.clip_gradients(opt, gradient_clip_val=self.cfg.optim.max_grad_norm, gradient_clip_algorithm="norm")
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
        self.log("train/lr", lr)
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
        if self.trainer.sanity_checking:
            return
        metrics = {f"val/{k}": v for k, v in self.last_val.items()}
        self.log_dict(metrics, logger=False)  # the run's result (callback_metrics)
        # Logged straight to the logger at ``global_step`` (optimizer steps taken so far), so the
        # step-0 baseline, in-fit validations and grid artifacts share one step axis.
        if self.logger is not None:
            self.logger.log_metrics(metrics, step=self.global_step)
