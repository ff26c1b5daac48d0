"""Training callbacks: atomic checkpoints, throughput, periodic samples, and the MLflow run.

    AtomicModelCheckpoint  every N steps + ``last``; each save goes to a hidden partial name and is
                           renamed into place only when complete, so ``last.ckpt`` is never torn
    SpeedMonitor           ``perf/tokens_per_s`` (all ranks) and ``perf/step_time_s``
    SampleCallback         text answers + a grid of generated images, as MLflow artifacts
    TrackingCallback       starts/attaches the MLflow run on rank 0 (params, lineage tags, dataset
                           inputs), shares its id with every rank, runs system metrics per node
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import socket
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only
from PIL import Image

from mmada.data.images import image_grid
from mmada.files import save_png, write_json
from mmada.inference import LoadedModel, generate_answers, generate_image_codes
from mmada.models.vq import tensor_to_images
from mmada.tokenization import SequenceBuilder
from mmada.tracking import artifact_root_for
from mmada.tracking.client import Tracker
from mmada.training import parallelize

log = logging.getLogger("mmada.training")
PARTIAL_PREFIX = ".partial-"


# ---------------------------------------------------------------------------------------------
# Checkpoints


def _replace(src: str, dst: str) -> None:
    """Move a finished checkpoint (file or sharded directory) to its final name."""
    if os.path.isdir(src):
        old = os.path.join(os.path.dirname(dst), f"{PARTIAL_PREFIX}old-{os.path.basename(dst)}")
        if os.path.lexists(dst):
            shutil.rmtree(old, ignore_errors=True)
            os.replace(dst, old)  # a kill between these renames leaves `old` (complete) for resume
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)


class AtomicModelCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose saves (single files and FSDP sharded directories) are atomic."""

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        partial = os.path.join(os.path.dirname(filepath), PARTIAL_PREFIX + os.path.basename(filepath))
        if trainer.is_global_zero and os.path.lexists(partial):
            (shutil.rmtree if os.path.isdir(partial) else os.remove)(partial)
        trainer.strategy.barrier("checkpoint-start")
        trainer.save_checkpoint(partial, self.save_weights_only)
        trainer.strategy.barrier("checkpoint-written")
        if trainer.is_global_zero:
            _replace(partial, filepath)
        trainer.strategy.barrier("checkpoint-renamed")
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(self)


    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Save ``last`` at the final step too, so a finished run resumes as finished."""
        if self._last_global_step_saved != trainer.global_step and self.save_last:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


def clean_partials(directory: Path) -> list[str]:
    """Remove leftovers of interrupted saves; returns their names."""
    removed = []
    if directory.is_dir():
        for p in directory.iterdir():
            if p.name.startswith(PARTIAL_PREFIX) and not p.name.startswith(f"{PARTIAL_PREFIX}old-"):
                (shutil.rmtree if p.is_dir() else os.remove)(p)
                removed.append(p.name)
    return removed


@dataclass
class ResumePoint:
    """A checkpoint that loads: where training continues, and the MLflow run that wrote it."""

    path: Path
    global_step: int
    run_id: str | None = None
    """The run recorded in the checkpoint (:class:`TrackingCallback` state; None in older checkpoints)."""
    tracking_uri: str | None = None
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    """Newer checkpoints that did not load, with the reason."""


class UnreadableCheckpoint(Exception):
    """A checkpoint that does not load (truncated, corrupt, not a training checkpoint, or a refused pickle)."""


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:200]}"


def inspect_checkpoint(path: Path) -> ResumePoint:
    """Load ``path`` as a training checkpoint, without executing code (``weights_only``; tensors memory-mapped,
    not read) and return its step and run; raises :class:`UnreadableCheckpoint` saying why it does not load.

    A sharded (FSDP) checkpoint directory counts when its DCP ``.metadata`` (written last) is there; its
    step and run come from Lightning's ``meta.pt`` in it.
    """
    path = Path(path)
    target = path
    if path.is_dir():
        if not (path / ".metadata").is_file():
            raise UnreadableCheckpoint("sharded checkpoint directory without its .metadata (an interrupted save)")
        target = path / "meta.pt"
        if not target.is_file():
            return ResumePoint(path, -1)
    try:
        ckpt = torch.load(target, map_location="cpu", weights_only=True, mmap=not path.is_dir())
    except Exception as exc:  # truncated zip, bit rot, a pickle that is not plain tensors ...
        raise UnreadableCheckpoint(_reason(exc)) from None
    if not isinstance(ckpt, dict) or "global_step" not in ckpt or ("state_dict" not in ckpt and not path.is_dir()):
        raise UnreadableCheckpoint("not a Lightning training checkpoint (no global_step/state_dict)")
    run = (ckpt.get("callbacks") or {}).get(TrackingCallback.__qualname__) or {}
    return ResumePoint(path, int(ckpt["global_step"]), run_id=run.get("run_id"), tracking_uri=run.get("tracking_uri"))


def _candidates(directory: Path) -> list[tuple[int | None, Path]]:
    """``(step from the name or None, path)``: ``last`` (and its complete previous copy, if a directory swap
    was interrupted) first, then the step checkpoints, newest first."""
    found: list[tuple[int | None, Path]] = [(None, p) for p in (directory / "last.ckpt",
                                                                directory / f"{PARTIAL_PREFIX}old-last.ckpt")
                                            if p.exists()]
    steps = []
    for p in directory.glob("step*.ckpt") if directory.is_dir() else []:
        m = re.fullmatch(r"step(\d+)\.ckpt", p.name)
        if m:
            steps.append((int(m.group(1)), p))
    return found + sorted(steps, key=lambda item: item[0], reverse=True)


def find_resume_checkpoint(directory: Path, *, quiet: bool = False) -> ResumePoint | None:
    """The newest checkpoint in ``directory`` that loads (:func:`inspect_checkpoint`), or None.

    A newer one that does not load (e.g. ``last.ckpt`` cut short by a full disk) is skipped with a
    warning naming it and why; when checkpoints exist but none loads, a warning says training starts
    from scratch (nothing in them can be used; each unreadable file is replaced when training saves
    that name again). ``quiet``: no warnings (a launcher looking ahead at what its job will do).
    """
    best: ResumePoint | None = None
    skipped: list[tuple[Path, str]] = []
    for step, path in _candidates(Path(directory)):
        if best is not None and step is not None and step <= best.global_step:
            break  # the step files are newest first: nothing newer is left
        try:
            point = inspect_checkpoint(path)
        except UnreadableCheckpoint as exc:
            skipped.append((path, str(exc)))
            continue
        if best is None or point.global_step > best.global_step:
            best = point
    if best is not None:
        best.skipped = skipped
    if not quiet and rank_zero_only.rank == 0:
        for path, why in skipped:
            log.warning("checkpoint %s does not load (%s): skipped", path, why)
        if best is not None and best.skipped:
            log.warning("resuming from %s (step %d), the newest checkpoint that loads", best.path, best.global_step)
        elif best is None and skipped:
            log.warning("no checkpoint in %s loads (%d skipped): starting from scratch", directory, len(skipped))
    return best


# ---------------------------------------------------------------------------------------------
# Throughput


class SpeedMonitor(Callback):
    """Tokens per second over each logging window, summed over ranks (equal batches per rank)."""

    def __init__(self) -> None:
        self._t0: float | None = None
        self._tokens = 0
        self._steps = 0
        self.history: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._t0 is None:
            self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._tokens += getattr(pl_module, "last_batch_tokens", 0)
        if (batch_idx + 1) % trainer.accumulate_grad_batches:
            return
        self._steps += 1
        if self._steps % trainer.log_every_n_steps == 0 and self._t0 is not None:
            dt = time.perf_counter() - self._t0
            # last_batch_tokens may be a device tensor: summed without syncing, converted once per window
            rate = float(self._tokens) * trainer.world_size / max(dt, 1e-9)
            self.history.append(rate)
            pl_module.log("perf/tokens_per_s", rate, rank_zero_only=True)
            pl_module.log("perf/step_time_s", dt / trainer.log_every_n_steps, rank_zero_only=True)
            self._t0, self._tokens = time.perf_counter(), 0


# ---------------------------------------------------------------------------------------------
# Samples


def codes_image(codes: np.ndarray, codebook_size: int, scale: int = 4) -> Image.Image:
    """A code grid as a picture (when no image tokenizer is configured to decode it)."""
    side = math.isqrt(len(codes))
    grey = (codes[: side * side].reshape(side, side).astype(np.float64) * 255.0 / max(1, codebook_size - 1))
    return Image.fromarray(grey.astype(np.uint8), "L").convert("RGB").resize((side * scale, side * scale),
                                                                             Image.NEAREST)


class SampleCallback(Callback):
    """Generate from the model every ``samples.every_n_steps`` (and at the end); log to MLflow.

    Under FSDP every rank takes part in the forward passes; rank 0 writes and logs the files.
    """

    def __init__(self, tracker: Tracker | None, tokenizer, out_dir: Path) -> None:
        self.tracker = tracker
        self.tokenizer = tokenizer
        self.out_dir = out_dir
        self._done_at: int | None = None

    def _should_run(self, trainer) -> bool:
        return trainer.is_global_zero or parallelize.is_sharded(trainer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        n = pl_module.cfg.samples.every_n_steps
        step = trainer.global_step
        if n and step and step % n == 0 and self._done_at != step:
            self.generate(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        if self._done_at != trainer.global_step:
            self.generate(trainer, pl_module)

    @torch.no_grad()
    def generate(self, trainer, pl_module) -> Path | None:
        spec = pl_module.cfg.samples
        self._done_at = trainer.global_step
        if not (spec.prompts or spec.captions) or not self._should_run(trainer):
            return None
        was_training = pl_module.training
        pl_module.eval()
        try:
            lm = LoadedModel(pl_module.sampler_view(), self.tokenizer,
                             SequenceBuilder(self.tokenizer, pl_module.special))
            answers = images = None
            if spec.prompts:
                answers = generate_answers(lm, spec.prompts, spec.sampler, think=spec.think)
            if spec.captions:
                streams = pl_module.cfg.data.streams
                codes = generate_image_codes(lm, spec.captions, spec.image_sampler,
                                             max_text_len=streams["t2i"].max_text_len if "t2i" in streams else 32)
                images = self._render(pl_module, codes)
        finally:
            pl_module.train(was_training)
        if not trainer.is_global_zero:
            return None
        out = self.out_dir / "samples" / f"step_{trainer.global_step:08d}"
        if answers is not None:
            write_json(out / "answers.json", [{"prompt": p, "answer": a} for p, a in zip(spec.prompts, answers)],
                       indent=1)
        if images is not None:
            save_png(out / "t2i_grid.png", image_grid(images, ncol=4))
            write_json(out / "captions.json", spec.captions, indent=None)
        if self.tracker is not None:
            self.tracker.log_artifacts(out, f"samples/{out.name}")
        return out

    def _render(self, pl_module, codes: torch.Tensor) -> list[Image.Image]:
        cfg = pl_module.model_config
        if pl_module.cfg.data.image_tokenizer is not None:
            vq = pl_module.image_tokenizer()
            return tensor_to_images(vq.decode(codes.to(vq.device)).cpu())
        return [codes_image(c, cfg.codebook_size) for c in codes.cpu().numpy()]


# ---------------------------------------------------------------------------------------------
# MLflow run


class TrackingCallback(Callback):
    """Rank 0 starts (or re-attaches to) the MLflow run when the trainer first starts; every rank learns its id.

    Run id precedence: ``$MLFLOW_RUN_ID`` (a launcher created the run, or handed over the one the
    checkpoint names: :func:`mmada.training.harness.resumed_run`), the run recorded in the checkpoint
    training resumes from (this callback's state; in older checkpoints, ``<output_dir>/mlflow_run.json``),
    else a new run: one training, however often resumed, is one MLflow run. Logs the full config as
    params, lineage tags and the shard manifests as dataset inputs; local rank 0 of every node
    samples system metrics into the same run (node id ``node<k>``).
    """

    def __init__(self, tracker: Tracker, cfg, *, resume: ResumePoint | None, tags: dict[str, str],
                 inputs: list[dict[str, Any]]) -> None:
        self.tracker = tracker
        self.cfg = cfg
        self.resume = resume
        self.resuming = resume is not None
        self.tags = tags
        self.inputs = inputs
        self.run_id: str | None = None
        self._monitor = None
        self._opened = False

    @property
    def run_file(self) -> Path:
        return self.cfg.out_dir / "mlflow_run.json"

    def _start_run(self) -> str | None:
        t = self.tracker
        env_run = os.environ.get("MLFLOW_RUN_ID")
        if env_run:
            return t.attach(env_run)
        if self.resume is not None:
            rec = {"run_id": self.resume.run_id, "tracking_uri": self.resume.tracking_uri}
            if not rec["run_id"] and self.run_file.is_file():  # a checkpoint from before runs were recorded in it
                rec = json.loads(self.run_file.read_text())
            if rec.get("run_id") and rec.get("tracking_uri") == t.tracking_uri and t.attach(rec["run_id"]):
                t.set_tags({"resumed": "true"})
                return t.run_id
        return t.start_run(self.cfg.experiment, run_name=self.cfg.tracking.run_name or self.cfg.name,
                           tags=self.tags, artifact_location=artifact_root_for(t.tracking_uri))

    def setup(self, trainer, pl_module, stage: str) -> None:
        """Open the run when the trainer first starts (a fit, or the step-0 baseline validation before it)."""
        if self._opened:
            return
        self._opened = True
        run_id = None
        if trainer.is_global_zero:
            run_id = self._start_run()
            if run_id is not None:
                write_json(self.run_file, {"run_id": run_id, "tracking_uri": self.tracker.tracking_uri})
                self.tracker.log_params(self.cfg.flat())
                self.tracker.set_tags({**self.tags, "world_size": str(trainer.world_size),
                                       "num_nodes": str(trainer.num_nodes)})
                self._log_inputs()
        self.run_id = trainer.strategy.broadcast(run_id, src=0)
        if self.run_id and trainer.local_rank == 0:  # one process per node joins the run
            node = self.tracker
            if not trainer.is_global_zero:
                node = Tracker(self.tracker.tracking_uri, max_retries=self.cfg.tracking.max_retries)
                node.run_id = self.run_id
            node.set_tags({f"node{trainer.node_rank}.host": socket.gethostname()})
            if self.cfg.tracking.log_system_metrics:
                self._start_system_metrics(trainer.node_rank)

    def state_dict(self) -> dict[str, Any]:
        """Saved in every checkpoint: the run this training logs into (what a resume re-attaches to)."""
        return {"run_id": self.run_id, "tracking_uri": self.tracker.tracking_uri}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Nothing to restore: the run was chosen before the restore, from the same checkpoint (:func:`inspect_checkpoint`)."""

    def _log_inputs(self) -> None:
        """Each shard manifest as an MLflow dataset input (one row per shard; digest = manifest sha256)."""
        try:
            import mlflow.data
            import pandas as pd
            from mlflow.entities import DatasetInput, InputTag
        except ImportError:  # pandas is optional for mlflow
            return
        datasets = []
        with warnings.catch_warnings():  # MLflow's schema/source inference hints are noise here
            warnings.simplefilter("ignore", UserWarning)
            for d in self.inputs:
                df = pd.DataFrame([{k: s[k] for k in ("name", "split", "count", "bytes", "sha256")}
                                   for s in d["shards"]])
                ds = mlflow.data.from_pandas(df, source=d["root"], name=f"{d['task']}:{d['name']}",
                                             digest=d["digest"][:16])
                tags = [InputTag("mlflow.data.context", "training"), InputTag("task", d["task"]),
                        InputTag("kind", d["kind"])]
                datasets.append(DatasetInput(ds._to_mlflow_entity(), tags=tags))
        if datasets:
            self.tracker.call("log_inputs", self.tracker.client.log_inputs, self.tracker.run_id, datasets=datasets)

    def _start_system_metrics(self, node_rank: int) -> None:
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            self._monitor = SystemMetricsMonitor(
                self.run_id, sampling_interval=self.cfg.tracking.system_metrics_interval,
                node_id=f"node{node_rank}", tracking_uri=self.tracker.tracking_uri, resume_logging=self.resuming,
            )
            self._monitor.start()
        except Exception as exc:  # system metrics are best effort (psutil missing, server down …)
            log.warning("system metrics disabled: %s: %s", type(exc).__name__, exc)
            self._monitor = None

    def stop_system_metrics(self) -> None:
        if self._monitor is not None:
            try:
                self._monitor.finish()
            except Exception as exc:
                log.warning("system metrics did not stop cleanly: %s", exc)
            self._monitor = None

    def on_fit_end(self, trainer, pl_module) -> None:
        self.stop_system_metrics()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self.stop_system_metrics()
