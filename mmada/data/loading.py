"""Training batches from curated shards: one WebDataset pipeline per task stream, mixed per step.

    dm = ShardDataModule(cfg.data, tokenizer, num_vq_tokens=64, batches_per_epoch=1000)
    trainer.fit(module, datamodule=dm)

Training (every rank, every DataLoader worker):

    stream(task) = ResampledShards(train shards, seed) → verified tar reader → shuffle(buffer, seed)
                   → row (tokenized ids + image codes or pixels)
    MixedBatches = per step, ``batch_size`` rows of every task (``mixing: batch_sizes``, the
                   reference's per-task batch sizes) or ``data.batch_size`` rows whose task is drawn
                   by weight (``mixing: weights``) → padded tensors per task
    DataPipeline(MixedBatches).with_epoch(n)      every rank yields exactly n batches per epoch

Shards are drawn *with replacement* (``resampled``), so no rank ever runs out and every rank makes
the same number of steps (no DDP/FSDP hang at epoch end). The seed of every random choice is
``(data.seed, rank, worker, global step at (re)start)``: ranks and workers see different data,
runs are reproducible, and a resumed run re-seeds the stream by its step instead of replaying the
first batches.

Validation is exact: the val shards are split by node (``shards[rank::world]``), each sample is
read once, and every rank evaluates the same number of batches — the smallest rank's count from
the manifests — so sharded (FSDP) forwards cannot deadlock.

Image rows use the shard's ``codes.npy`` when present; otherwise the PNG is resized here and the
:class:`~mmada.training.module.DiffusionModule` encodes ``pixel_values`` with the image tokenizer on
the device (``data.image_tokenizer``).
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import lightning as L
import numpy as np
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from mmada.data.errors import DataError, ShardError
from mmada.data.io import fs_and_path, is_local, join
from mmada.data.shards import (
    Manifest,
    ShardInfo,
    check_shard_size,
    decode_sample,
    in_shard,
    iter_tar_samples,
    read_manifest,
)
from mmada.data.streams import DataSpec, StreamSpec
from mmada.errors import ConfigError, MMaDAError
from mmada.models.vq.preprocess import image_to_array
from mmada.tokenization import SequenceBuilder

# Which curated sample kinds feed which task (mmada.data.schema).
TASK_KINDS: dict[str, tuple[str, ...]] = {
    "t2i": ("t2i", "image_text"),  # caption → image
    "mmu": ("mmu", "image_text", "t2i"),  # image → answer (captioning for image_text/t2i)
    "chat": ("reasoning",),  # prompt → <think> trace + answer
    "lm": ("reasoning", "mmu", "image_text", "t2i"),  # plain text (the ``txt`` member)
}
IMAGE_TASKS = ("t2i", "mmu")
MAX_SKIPPED_IN_A_ROW = 200  # a stream whose rows never fit is a config error, not an endless loop
log = logging.getLogger("mmada.data")


def make_seed(*parts: object) -> int:
    """A 63-bit seed from any parts (stable across processes, unlike ``hash``)."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") >> 1


# ---------------------------------------------------------------------------------------------
# Shard plans


@dataclass(frozen=True)
class ShardRef:
    url: str
    root: str
    info: ShardInfo


@dataclass
class StreamPlan:
    """The shards of one task stream, from its manifests."""

    task: str
    spec: StreamSpec
    manifests: list[tuple[str, Manifest, str]]  # (root, manifest, sha256 of manifest.json)
    train: list[ShardRef]
    val: list[ShardRef]
    refs: dict[str, ShardRef] = field(default_factory=dict)


def manifest_digest(root: str) -> str:
    """sha256 of a shard set's ``manifest.json`` (which pins every shard's sha256)."""
    fs, path = fs_and_path(join(root, "manifest.json"))
    with fs.open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def stream_inputs(streams: Mapping[str, StreamSpec]) -> list[dict[str, Any]]:
    """What a run reads: one entry per (task, manifest) for MLflow dataset inputs and lineage tags."""
    out = []
    for task, spec in streams.items():
        for root in spec.manifests:
            m = read_manifest(root.rstrip("/"))
            out.append({"task": task, "root": root.rstrip("/"), "name": m.name, "kind": m.kind,
                        "digest": manifest_digest(root.rstrip("/")), "spec_hash": m.spec_hash,
                        "shards": [s.model_dump() for s in m.shards]})
    return out


def plan_stream(task: str, spec: StreamSpec) -> StreamPlan:
    """Read the stream's manifests; check that their sample kinds fit the task."""
    manifests, train, val = [], [], []
    for root in spec.manifests:
        root = root.rstrip("/")
        m = read_manifest(root)
        if m.kind not in TASK_KINDS[task]:
            raise ConfigError(
                f"data.streams.{task}.manifests: {root} holds {m.kind!r} samples; a {task} stream reads "
                f"{list(TASK_KINDS[task])}"
            )
        manifests.append((root, m, manifest_digest(root)))
        for s in m.shards:
            ref = ShardRef(join(root, s.name), root, s)
            (train if s.split == "train" else val).append(ref)
    if not train:
        raise ConfigError(f"data.streams.{task}: the manifests {spec.manifests} list no train shards")
    refs = {r.url: r for r in train + val}
    return StreamPlan(task, spec, manifests, train, val, refs)


# ---------------------------------------------------------------------------------------------
# Pipeline stages


def _open_shard(ref: ShardRef, verify: str):
    """Open a shard after checking it against the manifest (size; and sha256 unless ``verify='size'``)."""
    check_shard_size(ref.root, ref.info)
    fs, path = fs_and_path(ref.url)
    if verify == "sha256":
        h = hashlib.sha256()
        spool = None if is_local(ref.url) else io.BytesIO()
        with fs.open(path, "rb") as f:
            while block := f.read(1 << 22):
                h.update(block)
                if spool is not None:
                    spool.write(block)
        if h.hexdigest() != ref.info.sha256:
            raise ShardError(f"shard {ref.url} is corrupt: sha256 does not match its manifest")
        if spool is not None:  # remote: read the bytes we verified, not a second download
            spool.seek(0)
            return spool
    return fs.open(path, "rb")


def read_shards(refs: dict[str, ShardRef], verify: str):
    """WebDataset stage: ``{"url": …}`` → decoded samples (``mmada.data.shards.decode_sample``)."""

    def stage(src: Iterator[dict]) -> Iterator[dict[str, Any]]:
        for item in src:
            ref = refs[item["url"]]
            with _open_shard(ref, verify) as f:
                try:  # verify='size' lets changed bytes through: what does not decode names the shard
                    for key, members in iter_tar_samples(f):
                        sample = decode_sample(key, members)
                        sample["__shard__"] = ref.url
                        yield sample
                except ShardError as exc:
                    raise in_shard(ref.url, exc) from None

    return stage


def split_by_rank(rank: int, world: int):
    """Exact node split (``wds.split_by_node`` with an explicit rank): shard i goes to rank i % world."""

    def stage(src):
        for i, item in enumerate(src):
            if i % world == rank:
                yield item

    return stage


class RowMaker:
    """Sample → one row of a task: token ids (+ image codes, or resized pixels to encode later)."""

    def __init__(self, task: str, spec: StreamSpec, data: DataSpec, builder: SequenceBuilder, num_vq_tokens: int):
        self.task, self.spec, self.data, self.builder = task, spec, data, builder
        self.num_vq_tokens = num_vq_tokens
        self.skipped = 0
        self._skipped_in_a_row = 0
        self._caption_prompt: list[int] | None = None

    def __call__(self, sample: dict[str, Any], rng: random.Random) -> dict[str, Any] | None:
        s = sample["json"]
        key = sample["__key__"]
        b = self.builder
        row: dict[str, Any] = {"key": key}
        if self.task == "lm":
            row["text_ids"] = b.encode_rendered(sample["txt"])
            return row
        if self.task == "t2i":
            caption = "" if rng.random() < self.data.cond_dropout_prob else (s.caption or "")
            row["caption_ids"] = b.encode(caption) if caption else []
        else:  # chat, mmu: a prompt kept clean and an answer to denoise
            if s.prompt is not None and s.response is not None:
                prompt, answer = b.encode_rendered(s.prompt), b.encode_rendered(s.response)
            elif self.task == "mmu" and s.caption:
                if self._caption_prompt is None:
                    self._caption_prompt = b.chat_prompt(self.data.caption_prompt)
                prompt, answer = self._caption_prompt, b.encode(s.caption)
            else:
                raise DataError(f"sample {key} ({s.kind}) has no prompt/response for the {self.task} stream")
            if len(prompt) >= self.spec.max_text_len:
                return self._skip(key, len(prompt))  # the answer would not fit at all
            self._skipped_in_a_row = 0
            row["prompt_ids"], row["answer_ids"] = prompt, answer
        if self.task in IMAGE_TASKS:
            row.update(self._image(sample, key))
        return row

    def _skip(self, key: str, n_prompt: int) -> None:
        """Count a row whose prompt leaves no room for an answer; fail if nothing fits at all."""
        self.skipped += 1
        self._skipped_in_a_row += 1
        if self.skipped == 1:
            log.warning("data.streams.%s: skipping rows whose prompt does not fit max_text_len=%d "
                        "(first: %s, %d prompt tokens)", self.task, self.spec.max_text_len, key, n_prompt)
        if self._skipped_in_a_row >= MAX_SKIPPED_IN_A_ROW:
            raise ConfigError(
                f"data.streams.{self.task}.max_text_len={self.spec.max_text_len}: the last "
                f"{self._skipped_in_a_row} samples had prompts too long to leave room for an answer "
                f"(e.g. {key}: {n_prompt} tokens); raise max_text_len"
            )
        return None

    def _image(self, sample: dict[str, Any], key: str) -> dict[str, Any]:
        codes = sample.get("codes")
        if codes is not None:
            codes = np.asarray(codes).reshape(-1)
            if codes.size != self.num_vq_tokens:
                raise ConfigError(
                    f"sample {key}: its codes.npy holds {codes.size} image tokens but the model takes "
                    f"num_vq_tokens={self.num_vq_tokens}"
                )
            return {"codes": torch.from_numpy(codes.astype(np.int64))}
        if "png" not in sample:
            raise DataError(f"sample {key} has neither codes.npy nor png for the {self.task} stream")
        if self.data.image_tokenizer is None:
            raise ConfigError(
                f"data.image_tokenizer: sample {key} ({self.task} stream) has a PNG but no codes.npy; "
                "set data.image_tokenizer to encode images on the fly, or curate with vq.enabled"
            )

        try:
            with Image.open(io.BytesIO(sample["png"])) as im:
                arr = image_to_array(im, self.data.image_resolution, self.data.image_resize, name=f"sample {key}")
        except MMaDAError:
            raise
        except Exception as exc:  # PIL raises many types for bytes that changed after curation
            raise ShardError(f"shard {sample.get('__shard__', '?')}: sample {key!r}: member png does not decode "
                             f"({type(exc).__name__}: {exc})") from None
        return {"pixels": torch.from_numpy(arr)}  # (3, R, R) in [-1, 1]


def collate_task(task: str, rows: list[dict[str, Any]], builder: SequenceBuilder, spec: StreamSpec,
                 num_vq_tokens: int) -> dict[str, Any]:
    """Rows of one task → padded tensors: input_ids, attention_mask, prompt_mask, image_mask (B, L).

    Image rows without shard codes get placeholder codes, ``needs_codes`` (B,) and ``pixel_values``
    (B, 3, R, R); the module writes the encoded codes into the image slots.
    """
    n = spec.max_text_len
    codes = needs = None
    if task in IMAGE_TASKS:
        codes = torch.zeros((len(rows), num_vq_tokens), dtype=torch.long)
        needs = torch.zeros(len(rows), dtype=torch.bool)
        for i, r in enumerate(rows):
            if "codes" in r:
                codes[i] = r["codes"]
            else:
                needs[i] = True
    if task == "t2i":
        sb = builder.t2i_from_ids([r["caption_ids"] for r in rows], codes, max_text_len=n)
    elif task == "mmu":
        sb = builder.mmu_from_ids(codes, [r["prompt_ids"] for r in rows], [r["answer_ids"] for r in rows],
                                  max_text_len=n)
    elif task == "chat":
        sb = builder.chat_from_ids([r["prompt_ids"] for r in rows], [r["answer_ids"] for r in rows], max_text_len=n)
    else:
        sb = builder.lm_from_ids([r["text_ids"] for r in rows], max_text_len=n)
    out: dict[str, Any] = {"input_ids": sb.input_ids, "attention_mask": sb.attention_mask,
                           "prompt_mask": sb.prompt_mask, "image_mask": sb.image_mask,
                           "keys": [r["key"] for r in rows]}
    if needs is not None and bool(needs.any()):
        px = [r.get("pixels") for r in rows]
        shape = next(p for p in px if p is not None).shape
        out["needs_codes"] = needs
        out["pixel_values"] = torch.stack([p if p is not None else torch.zeros(shape) for p in px])
    return out


# ---------------------------------------------------------------------------------------------
# Datasets


class _StreamFactory:
    """Builds the (infinite, resampled) WebDataset pipeline of one task stream."""

    def __init__(self, plan: StreamPlan, data: DataSpec, builder: SequenceBuilder, num_vq_tokens: int):
        self.plan, self.data, self.builder, self.num_vq_tokens = plan, data, builder, num_vq_tokens

    def rows(self, seed: int, shards: list[ShardRef] | None = None, resampled: bool = True,
             rank: int = 0, world: int = 1) -> Iterator[dict[str, Any]]:
        p = self.plan
        urls = [r.url for r in (shards if shards is not None else p.train)]
        rng = random.Random(seed)
        maker = RowMaker(p.task, p.spec, self.data, self.builder, self.num_vq_tokens)
        if resampled:
            stages = [
                wds.ResampledShards(urls, seed=seed, deterministic=True, worker_seed=lambda: 0),
                read_shards(p.refs, self.data.verify),
                wds.shuffle(self.data.shuffle_buffer, initial=min(self.data.shuffle_buffer, 100), rng=rng),
            ]
        else:
            stages = [wds.SimpleShardList(urls), split_by_rank(rank, world), read_shards(p.refs, self.data.verify)]
        for sample in wds.DataPipeline(*stages):
            row = maker(sample, rng)
            if row is not None:
                yield row


class MixedBatches(IterableDataset):
    """Per step: rows of every task stream (by batch sizes or drawn by weight), collated per task."""

    def __init__(self, plans: dict[str, StreamPlan], data: DataSpec, builder: SequenceBuilder, num_vq_tokens: int,
                 *, rank: int = 0, world: int = 1, start_step: int = 0):
        super().__init__()
        self.plans, self.data, self.builder, self.num_vq_tokens = plans, data, builder, num_vq_tokens
        self.rank, self.world, self.start_step = rank, world, start_step

    def counts(self, rng: random.Random) -> dict[str, int]:
        tasks = list(self.plans)
        if self.data.mixing == "batch_sizes":
            return {t: self.plans[t].spec.batch_size for t in tasks}
        drawn = rng.choices(tasks, weights=[self.plans[t].spec.weight for t in tasks], k=self.data.batch_size)
        return {t: drawn.count(t) for t in tasks}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        base = make_seed(self.data.seed, self.rank, worker, self.start_step)
        streams = {t: _StreamFactory(p, self.data, self.builder, self.num_vq_tokens).rows(make_seed(base, t))
                   for t, p in self.plans.items()}
        rng = random.Random(base)
        while True:
            batch: dict[str, Any] = {}
            for t, n in self.counts(rng).items():
                if n:
                    rows = [next(streams[t]) for _ in range(n)]
                    batch[t] = collate_task(t, rows, self.builder, self.plans[t].spec, self.num_vq_tokens)
            yield batch


class ValBatches(IterableDataset):
    """One task's validation split: exact node split, each sample once, exactly ``limit`` batches."""

    def __init__(self, plan: StreamPlan, data: DataSpec, builder: SequenceBuilder, num_vq_tokens: int,
                 *, rank: int, world: int, limit: int):
        super().__init__()
        self.plan, self.data, self.builder, self.num_vq_tokens = plan, data, builder, num_vq_tokens
        self.rank, self.world, self.limit = rank, world, limit

    def __len__(self) -> int:
        return self.limit

    def __iter__(self) -> Iterator[dict[str, Any]]:
        bs = self.plan.spec.val_batch_size or self.plan.spec.batch_size
        factory = _StreamFactory(self.plan, self.data, self.builder, self.num_vq_tokens)
        made, rows = 0, []
        for _ in range(2):  # a second pass only if skipped rows left this rank short of `limit`
            for row in factory.rows(make_seed(self.data.seed, "val"), self.plan.val, resampled=False,
                                    rank=self.rank, world=self.world):
                rows.append(row)
                if len(rows) == bs:
                    yield {self.plan.task: collate_task(self.plan.task, rows, self.builder, self.plan.spec,
                                                        self.num_vq_tokens)}
                    made, rows = made + 1, []
                    if made == self.limit:
                        return
            if made == 0:
                return


def val_batches_per_rank(plan: StreamPlan, world: int, cap: int | None) -> int:
    """Batches every rank can fill from its node split (the smallest rank's count, from the manifests)."""
    bs = plan.spec.val_batch_size or plan.spec.batch_size
    per_rank = [sum(r.info.count for r in plan.val[k::world]) // bs for k in range(world)]
    n = min(per_rank) if per_rank else 0
    return n if cap is None else min(n, cap)


# ---------------------------------------------------------------------------------------------
# The LightningDataModule


class ShardDataModule(L.LightningDataModule):
    """Mixed task streams from curated shard manifests (see the module docstring).

    Args:
        data: the ``data`` section of the training config.
        tokenizer: the text tokenizer of the model being trained.
        num_vq_tokens: image tokens per image (the model's ``num_vq_tokens``).
        batches_per_epoch: micro-batches per rank per epoch (``with_epoch``).
    """

    def __init__(self, data: DataSpec, tokenizer, *, num_vq_tokens: int, batches_per_epoch: int):
        super().__init__()
        self.data = data
        self.tokenizer = tokenizer
        self.builder = SequenceBuilder(tokenizer)
        self.num_vq_tokens = num_vq_tokens
        self.batches_per_epoch = data.batches_per_epoch or batches_per_epoch
        self.plans: dict[str, StreamPlan] = {}

    # ------------------------------------------------------------------ setup
    def _rank_world(self) -> tuple[int, int]:
        t = self.trainer
        return (t.global_rank, t.world_size) if t is not None else (0, 1)

    def prepare_plans(self) -> dict[str, StreamPlan]:
        if not self.plans:
            self.plans = {task: plan_stream(task, spec) for task, spec in self.data.streams.items()}
        return self.plans

    def setup(self, stage: str | None = None) -> None:
        self.prepare_plans()

    def dataset_inputs(self) -> list[dict[str, Any]]:
        """What the run reads (:func:`stream_inputs`)."""
        return stream_inputs(self.data.streams)

    # ------------------------------------------------------------------ loaders
    def train_dataset(self, start_step: int = 0) -> wds.DataPipeline:
        rank, world = self._rank_world()
        nw = max(1, self.data.num_workers)
        mixed = MixedBatches(self.prepare_plans(), self.data, self.builder, self.num_vq_tokens,
                             rank=rank, world=world, start_step=start_step)
        return wds.DataPipeline(mixed).with_epoch(math.ceil(self.batches_per_epoch / nw))

    def train_dataloader(self) -> DataLoader:
        step = self.trainer.global_step if self.trainer is not None else 0
        return DataLoader(self.train_dataset(step), batch_size=None, num_workers=self.data.num_workers,
                          persistent_workers=False, pin_memory=torch.cuda.is_available())

    def val_dataloader(self) -> list[DataLoader]:
        rank, world = self._rank_world()
        loaders = []
        for plan in self.prepare_plans().values():
            limit = val_batches_per_rank(plan, world, self.data.val_batches)
            if limit:
                ds = ValBatches(plan, self.data, self.builder, self.num_vq_tokens, rank=rank, world=world, limit=limit)
                loaders.append(DataLoader(ds, batch_size=None, num_workers=0))
        return loaders

    def val_tasks(self) -> list[str]:
        """Task of each validation dataloader index."""
        _rank, world = self._rank_world()
        return [t for t, p in self.prepare_plans().items() if val_batches_per_rank(p, world, self.data.val_batches)]
