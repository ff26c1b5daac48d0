"""The UniGRPO stage: reinforcement learning of the unified model on verifiable rewards.

    mmada train configs/train/tiny_grpo.yaml      # starts from models:/mmada-tiny@sft, ends as @grpo

One Lightning step = one policy update. Every ``grpo.num_iterations`` (μ) steps the module draws
a prompt batch per task stream (reasoning ``chat``, multimodal reasoning ``mmu``, ``t2i``), samples
``num_generations`` completions per prompt with the diffusion samplers, scores them with the
configured reward functions and computes group advantages; it also draws the μ structured masks
and evaluates π_old (and π_ref when β > 0) on each of them *before* any update. The following μ
steps each optimise the clipped surrogate on one of those masks (``mmada.rl``). Keeping one
backward per step keeps Lightning's automatic optimisation, precision, clipping and DDP/FSDP
gradient synchronisation unchanged. Under DDP every rank rolls out its own prompts (whole groups,
so advantages stay per group) and the gradients are all-reduced as usual.

Logged (TRL's names where they exist): ``reward``, ``reward_std``, ``rewards/<fn>/{mean,std}``,
``frac_reward_zero_std``, ``kl``, ``clip_ratio/{low_mean,high_mean,region_mean}``,
``completions/{mean,min,max}_length``, ``policy_loss``, ``perf/rollout_s``; prefixed by the task.
Every ``samples.every_n_steps``: a completions table (prompt, completion, rewards) and a grid of
generated images with their rewards, as MLflow artifacts.
"""

from __future__ import annotations

import io
import random
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset

from mmada.data.images import image_grid
from mmada.data.loading import make_seed, stream_inputs
from mmada.data.shards import ShardSet
from mmada.errors import ConfigError
from mmada.files import save_png, write_json
from mmada.models.vq.preprocess import images_to_tensor, tensor_to_images
from mmada.rl import (
    GRPOConfig,
    policy_loss,
    prepare_iterations,
    reward_metrics,
    rollout_r2i,
    rollout_t2i,
    rollout_text,
    score_rollout,
)
from mmada.tokenization import SequenceBuilder, load_text_tokenizer
from mmada.training.config import DataSpec, TrainConfig
from mmada.training.lora import adapters_disabled
from mmada.training.module import MMaDAModule

GRPO_TASKS = ("chat", "mmu", "t2i", "r2i")


# --------------------------------------------------------------------------------------------- data
def _prompt_record(task: str, sample: dict[str, Any]) -> dict[str, Any] | None:
    """The fields a rollout and its rewards need, from one decoded shard sample."""
    s = sample["json"]
    meta = dict(s.metadata)
    if task == "chat":
        if not s.question or s.answer is None:
            return None
        return {"task": task, "key": s.key, "prompt": s.question, "answer": s.answer}
    if task == "mmu":
        if not s.question or s.answer is None or ("png" not in sample and "codes" not in sample):
            return None
        return {"task": task, "key": s.key, "prompt": s.question, "answer": s.answer,
                "png": sample.get("png"), "codes": sample.get("codes")}
    caption = s.caption or meta.get("caption")
    if not caption:
        return None
    return {"task": task, "key": s.key, "caption": caption, "metadata": meta if "objects" in meta else None,
            "label": meta.get("label")}


def load_prompts(data: DataSpec, split: str = "train") -> dict[str, list[dict[str, Any]]]:
    """Prompt records per task stream, read (checksum-verified) from the curated shard sets."""
    out: dict[str, list[dict[str, Any]]] = {}
    for task, stream in data.streams.items():
        recs = []
        for root in stream.manifests:
            for sample in ShardSet.open(root).iter_samples(split, verify=data.verify == "sha256"):
                r = _prompt_record(task, sample)
                if r is not None:
                    recs.append(r)
        if not recs:
            raise ConfigError(f"data.streams.{task}: no usable {task} prompts in {stream.manifests} ({split} split)")
        out[task] = recs
    return out


class _StepPrompts(IterableDataset):
    """Yields ``{task: [prompt records]}`` per step; the draw depends on (seed, rank, step) only."""

    def __init__(self, prompts: dict[str, list[dict]], sizes: dict[str, int], steps: int, seed: int, start: int):
        self.prompts, self.sizes, self.steps, self.seed, self.start = prompts, sizes, steps, seed, start

    def __len__(self) -> int:
        return self.steps - self.start

    def __iter__(self):
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        for step in range(self.start, self.steps):
            rng = random.Random(make_seed(self.seed, "grpo", rank, step))
            yield {t: rng.sample(p, min(self.sizes[t], len(p))) for t, p in self.prompts.items()}


class GRPOPromptData(L.LightningDataModule):
    """Prompt batches for the UniGRPO stage (``data.streams.<task>.batch_size`` prompts per task)."""

    def __init__(self, cfg: TrainConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.prompts: dict[str, list[dict]] | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.prompts is None:
            self.prompts = load_prompts(self.cfg.data)

    def train_dataloader(self) -> DataLoader:
        sizes = {t: s.batch_size for t, s in self.cfg.data.streams.items()}
        start = self.trainer.global_step if self.trainer is not None else 0  # a resumed run continues the stream
        ds = _StepPrompts(self.prompts, sizes, self.cfg.trainer.max_steps, self.cfg.data.seed, start)
        return DataLoader(ds, batch_size=None, collate_fn=lambda x: x, num_workers=0)

    def dataset_inputs(self) -> list[dict[str, Any]]:
        """What the run reads, one entry per (task, manifest), as the pretrain/SFT data module reports it."""
        return stream_inputs(self.cfg.data.streams)

    def val_tasks(self) -> list[str]:
        return []  # rewards are the signal; held-out accuracy is the evaluate stage


# --------------------------------------------------------------------------------------------- module
class _BaseModelView:
    """The frozen reference policy of a LoRA run: the model called with every adapter switched off."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.config = model.config

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs: Any):
        with adapters_disabled(self.model):
            return self.model(input_ids, attention_mask=attention_mask, **kwargs)


class GRPOModule(MMaDAModule):
    """UniGRPO on the shared model/optimizer/registry machinery of :class:`MMaDAModule`."""

    def __init__(self, cfg: TrainConfig, **kwargs: Any) -> None:
        super().__init__(cfg, **kwargs)
        if cfg.grpo is None:
            raise ConfigError("stage 'grpo' needs a grpo: section (mmada.rl.GRPOConfig)")
        self.grpo: GRPOConfig = cfg.grpo
        self._cache: list[tuple[str, Any, list]] | None = None
        self._trace: list[dict[str, list[str]]] = []
        self.last_batch_tokens = 0
        object.__setattr__(self, "_reference", None)  # frozen π_ref: not a submodule (never optimised/saved)

    # ------------------------------------------------------------------ reference policy
    def on_model_built(self) -> None:
        """π_ref, made before sharding or compilation: with LoRA, the policy with its adapters off (no
        second copy of the weights); otherwise a frozen full copy of the initial weights."""
        if self.grpo.beta > 0 and self._reference is None and self.cfg.lora is not None:
            object.__setattr__(self, "_reference", _BaseModelView(self.model))
        elif self.grpo.beta > 0 and self._reference is None:
            ref = type(self.model)(self.model.config)
            ref.load_state_dict(self.model.state_dict())
            object.__setattr__(self, "_reference", ref.eval().requires_grad_(False))

    def _ref(self):
        ref = self._reference
        if isinstance(ref, _BaseModelView):
            return ref
        if ref is not None and next(ref.parameters()).device != self.device:
            ref.to(self.device)
        return ref

    # ------------------------------------------------------------------ rollouts
    def _builder(self) -> SequenceBuilder:
        b = getattr(self, "_sb", None)
        if b is None:
            tok = load_text_tokenizer(self.init_dir) if self.init_dir and Path(self.init_dir, "tokenizer.json").is_file() \
                else load_text_tokenizer(self.cfg.model.tokenizer or "builtin")
            b = SequenceBuilder(tok, self.special)
            object.__setattr__(self, "_sb", b)
        return b

    def _image_codes(self, recs: list[dict]) -> torch.Tensor:
        """(P, N) image codes of MMU prompts: shard codes, else the image tokenizer on the PNGs."""
        if all(r["codes"] is not None for r in recs):
            return torch.from_numpy(np.stack([np.asarray(r["codes"], dtype=np.int64) for r in recs]))

        imgs = [Image.open(io.BytesIO(r["png"])).convert("RGB") for r in recs]
        pixels = images_to_tensor(imgs, self.cfg.data.image_resolution, self.cfg.data.image_resize).to(self.device)
        return self.image_tokenizer().encode(pixels).cpu()

    def _decode_images(self, codes: torch.Tensor) -> list[Image.Image]:
        with torch.no_grad():
            return tensor_to_images(self.image_tokenizer().decode(codes.to(self.device)))  # (N, 3, H, W)

    @torch.no_grad()
    def _rollout_all(self, batch: dict[str, list[dict]]) -> list[tuple[str, Any, list]]:
        """Rollouts, rewards, advantages and the μ noised batches (with π_old/π_ref log-probs) per task."""
        g = self.grpo
        view = self.sampler_view()
        rank = self.global_rank
        gen = torch.Generator(device=self.device).manual_seed(make_seed(self.cfg.seed, "rollout", rank,
                                                                         self.global_step) % 2**62)
        sb = self._builder()
        was_training = self.model.training
        self.model.eval()
        out = []
        for task, recs in batch.items():
            t0 = time.perf_counter()
            if task == "r2i":  # reasoning to image: a description, then the image drawn from it
                caps = [r["caption"] for r in recs]
                r = rollout_r2i(view, sb, caps, g.num_generations, text=g.sampler, image=g.image_sampler,
                                decode=self._decode_images, num_image_tokens=self.model_config.num_vq_tokens,
                                codebook_size=self.model_config.codebook_size,
                                max_text_len=self.cfg.data.streams[task].max_text_len, generator=gen)
                prompts, cols = caps, {"caption": caps, "metadata": [x["metadata"] for x in recs],
                                       "label": [x["label"] for x in recs], "task": [task] * len(recs)}
            elif task == "t2i":
                caps = [r["caption"] for r in recs]
                r = rollout_t2i(view, sb, caps, g.num_generations, settings=g.image_sampler, decode=self._decode_images,
                                num_image_tokens=self.model_config.num_vq_tokens,
                                codebook_size=self.model_config.codebook_size,
                                max_text_len=self.cfg.data.streams[task].max_text_len, generator=gen)
                prompts, cols = caps, {"caption": caps, "metadata": [x["metadata"] for x in recs],
                                       "label": [x["label"] for x in recs], "task": [task] * len(recs)}
            else:
                codes = self._image_codes(recs) if task == "mmu" else None
                prompts = [x["prompt"] for x in recs]
                r = rollout_text(view, sb, prompts, g.num_generations, settings=g.sampler, image_codes=codes,
                                 think=g.think, generator=gen)
                cols = {"answer": [x["answer"] for x in recs], "task": [task] * len(recs)}
            scored = score_rollout(r, g, prompts, cols)
            its = prepare_iterations(view, self._ref(), r, g, mask_id=self.special.mask, generator=gen)
            out.append((task, scored, its, time.perf_counter() - t0, prompts))
        self.model.train(was_training)
        return out

    # ------------------------------------------------------------------ training
    def training_step(self, batch: dict[str, list[dict]], batch_idx: int) -> torch.Tensor:
        mu = self.global_step % self.grpo.num_iterations
        if mu == 0 or self._cache is None:
            self._cache = self._rollout_all(batch)
            self._log_rollouts(self._cache)
            if self.cfg.data.trace_keys:
                self._trace.append({t: [r["key"] for r in recs] for t, recs in batch.items()})
        view = self.sampler_view()
        total = None
        for task, scored, its, _, _ in self._cache:
            res = policy_loss(view, scored, its[mu], self.grpo)
            total = res.loss if total is None else total + res.loss
            n = len(scored.rollout.completions)
            self.log(f"{task}/policy_loss", res.loss.detach(), batch_size=n)
            self.log(f"{task}/kl", res.kl, batch_size=n)
            self.log(f"{task}/clip_ratio/low_mean", res.clip_ratio_low, batch_size=n)
            self.log(f"{task}/clip_ratio/high_mean", res.clip_ratio_high, batch_size=n)
            self.log(f"{task}/clip_ratio/region_mean", res.clip_ratio, batch_size=n)
        self.last_batch_tokens = sum(s.rollout.attention_mask.sum() for _, s, _, _, _ in self._cache)
        self.log("train/loss", total.detach(), prog_bar=True, batch_size=1)
        self.log("train/lr", self.optimizers(use_pl_optimizer=False).param_groups[0]["lr"], batch_size=1)
        return total

    def on_train_end(self) -> None:
        if self.cfg.data.trace_keys:  # which prompts each rank rolled out (debugging / tests)
            self.write_data_trace("rollouts", self._trace)

    def _log_rollouts(self, cache) -> None:
        rewards = []
        for task, scored, _, seconds, _prompts in cache:
            n = len(scored.rollout.completions)
            for k, v in reward_metrics(scored).items():
                self.log(f"{task}/{k}", float(v), batch_size=n)
            self.log(f"{task}/perf/rollout_s", seconds, batch_size=n)
            rewards.append(scored.rewards)
        self.log("train/reward", float(torch.cat(rewards).mean()), prog_bar=True, batch_size=1)
        every = self.cfg.samples.every_n_steps
        if self.global_rank == 0 and every and self.global_step % every == 0:
            self._write_samples(cache)

    def _write_samples(self, cache) -> None:
        """A completions table (JSON) and a t2i image grid with rewards, logged as run artifacts."""
        out = Path(self.cfg.out_dir) / "grpo_samples" / f"step{self.global_step:08d}"
        rows = []
        for task, scored, _, _, prompts in cache:
            r = scored.rollout
            for i, c in enumerate(r.completions):
                rows.append({"step": self.global_step, "task": task, "prompt": str(prompts[r.prompt_index[i]]),
                             "completion": c if isinstance(c, str) else f"<image {i}>",
                             **({"description": r.extra["answers"][i]} if task == "r2i" else {}),
                             "reward": float(scored.rewards[i]), "advantage": float(scored.advantages.advantages[i]),
                             **{f"reward/{k}": v[i] for k, v in scored.per_reward.items()}})
            if task in ("t2i", "r2i"):
                labels = [f"{x:.2f}" for x in scored.rewards.tolist()]
                save_png(out / f"{task}_grid.png", image_grid(r.completions, scale=3, labels=labels))
        write_json(out / "completions.json", rows, indent=1)
        tracker = getattr(self.logger, "tracker", None) if self.logger is not None else None
        if tracker is not None:
            tracker.log_artifacts(out, f"grpo_samples/step{self.global_step:08d}")


