"""What a training run reads: one WebDataset stream of curated shard sets per task.

``DataSpec`` is the ``data`` section of a training config (``mmada.training.config.TrainConfig``);
``mmada.data.loading`` turns it into batches.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from mmada.config import MAX_COUNT, MAX_IMAGE_SIDE, MAX_STEPS, Strict

# r2i (reasoning to image) is a UniGRPO prompt stream (captions); the stages' STAGE_TASKS say which
# stage reads which task.
Task = Literal["t2i", "lm", "mmu", "chat", "r2i"]


class StreamSpec(Strict):
    """One task stream: curated shard sets and how many rows of them go into a batch."""

    manifests: list[str] = Field(min_length=1)
    """Shard-set directories (local paths or fsspec URLs), each holding a ``manifest.json``."""
    batch_size: int = Field(4, ge=1, le=MAX_COUNT)
    """Rows of this task per micro-batch (``data.mixing: batch_sizes``, the reference's per-task sizes)."""
    weight: float = Field(1.0, gt=0)
    """Relative share of rows (``data.mixing: weights``)."""
    max_text_len: int = Field(128, ge=8, le=MAX_COUNT)
    """Text token budget of a row (t2i: caption incl. bos/eos; mmu/chat: prompt + answer + EOS fill)."""
    val_batch_size: int | None = Field(None, ge=1, le=MAX_COUNT)
    """Validation rows per batch (default: ``batch_size``)."""


class DataSpec(Strict):
    """The training data: WebDataset pipelines over curated shards, one per task stream."""

    streams: dict[Task, StreamSpec]
    mixing: Literal["batch_sizes", "weights"] = "batch_sizes"
    """``batch_sizes``: every micro-batch holds ``streams.<task>.batch_size`` rows of each task.
    ``weights``: ``batch_size`` rows whose task is drawn by ``streams.<task>.weight``."""
    batch_size: int = Field(8, ge=1, le=MAX_COUNT)
    """Rows per micro-batch in ``weights`` mode."""
    batches_per_epoch: int | None = Field(None, ge=1, le=MAX_STEPS)
    """Nominal epoch length in micro-batches per rank (``with_epoch``); default: the whole run in one epoch."""
    shuffle_buffer: int = Field(1000, ge=1, le=MAX_COUNT)
    num_workers: int = Field(0, ge=0)
    seed: int = 0
    """Base seed of shard resampling, shuffling and mixing (combined with rank, worker and resume step)."""
    verify: Literal["sha256", "size"] = "sha256"
    """Check every shard against its manifest before reading it (``size`` only: cheaper for huge shards)."""
    cond_dropout_prob: float = Field(0.1, ge=0, le=1)
    """Probability of dropping a t2i caption (classifier-free guidance training)."""
    caption_prompt: str = "Please describe this image in detail."
    """User turn of captioning rows built from ``image_text``/``t2i`` samples in an ``mmu`` stream."""
    image_tokenizer: str | None = None
    """MAGVIT-v2 checkpoint dir or preset name, used when a shard has PNGs but no ``codes.npy``."""
    image_resolution: int = Field(256, ge=8, le=MAX_IMAGE_SIDE)
    """Resolution images are resized to before on-the-fly tokenization."""
    image_resize: Literal["crop", "squash"] = "crop"
    val_batches: int | None = Field(None, ge=0, le=MAX_STEPS)
    """Cap on validation batches per task (default: all of the validation split)."""
    trace_keys: bool = False
    """Record the sample keys each rank trains on (``<output_dir>/data_trace/rank<r>.json``; debugging)."""
