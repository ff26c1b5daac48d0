"""Curation: turn a data spec into validated, reproducible WebDataset shards plus a manifest.

The work is split into stages whose inputs and outputs are small and plain (paths, counts,
hashes), so the same functions run one after another here (:func:`curate`, used by the CLI and
the benchmark) or as Prefect tasks on threads or a Dask cluster (``flows/curate.py``):

1. :func:`plan_curation` — fingerprint every source (sha256 of its files / object-store ETags)
   and cut it into chunks of ~``chunk_size`` records.
2. :func:`process_chunk` — per chunk: read, normalise to the canonical :class:`Sample`, render
   the chat/``<think>`` template, check images, verify answers, count tokens; kept samples go to
   a chunk tar under ``<out>/_work``, rejected ones to the chunk's quarantine lines.
3. :func:`plan_shards` — exact and near-duplicate removal over all chunks in a fixed order,
   deterministic train/val split, assignment of samples to shards.
4. :func:`build_shard` — per shard: copy its samples out of the chunk tars (optionally adding VQ
   codes), write the tar atomically, return its count/bytes/sha256.
5. :func:`finalize` — quarantine.jsonl, checks ``read = kept + rejected`` for every source
   (raises :class:`CountMismatchError` otherwise), data card, and ``manifest.json`` written last:
   a directory with a manifest is complete.

    from mmada.data.curate import curate
    from mmada.data.specs import load_spec
    manifest = curate(load_spec("data_specs/arithmetic.yaml"), out="runs/data/arithmetic")

Everything is a function of (spec hash, source fingerprints, code version), so reruns give
byte-identical shards, and a rerun over a complete output returns its manifest without work.
An output directory holds one dataset and is written by one curation at a time; a run first
takes its manifest away, so a failure (a crash, a full disk) never leaves a manifest beside shards
it does not describe (:mod:`mmada.data.output`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import statistics
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pydantic import BaseModel

import mmada
from mmada.data import io as dio
from mmada.data.answers import computed_answer, trace_computes
from mmada.data.dedup import MinHasher, NearDuplicateIndex, exact_key
from mmada.data.errors import CountMismatchError, DataError, RecordRejected, ShardError
from mmada.data.images import decode_png_rgb, prepare_image
from mmada.data.output import (
    DATACARD_NAME,
    QUARANTINE_NAME,
    claim_output,
    disk_errors,
    output_lock,
    remove_stale_shards,
    writes_output,
)
from mmada.data.schema import SCHEMA_VERSION, CodesInfo, ImageInfo, Message, Sample, sample_members
from mmada.data.shards import (
    MANIFEST_NAME,
    Counts,
    Manifest,
    QuarantineInfo,
    ShardInfo,
    SourceEntry,
    SplitInfo,
    TarStreamWriter,
    TokenStats,
    check_shard_size,
    codes_to_npy,
    iter_tar_samples,
    read_manifest,
    write_shard,
)
from mmada.data.sources import REASONS, Chunk, Normalized, RawRecord, RawReject, get_reader
from mmada.data.specs import CurationSpec, SourceBase, spec_hash
from mmada.data.templates import build_messages, final_text, render
from mmada.data.tokens import count_tokens, get_tokenizer, tokenizer_fingerprint
from mmada.data.vq import load_tokenizer_model
from mmada.files import atomic_write, remove_partials, write_bytes
from mmada.models.vq import encode_images

WORK_DIR = "_work"
SPLITS = ("train", "val")
_TOKEN_BATCH = 256


# Modules of mmada/data that do not change what curation writes (everything else counts).
_NOT_CURATION_CODE = {"loading.py", "cli.py"}


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """``<package version>+<hash of the curation code>``: changes whenever curation code changes."""
    root = Path(__file__).parent
    h = hashlib.sha256()
    for p in sorted(root.rglob("*.py")):
        if str(p.relative_to(root)) in _NOT_CURATION_CODE:
            continue
        h.update(str(p.relative_to(root)).encode() + b"\0" + p.read_bytes() + b"\0")
    return f"{mmada.__version__}+{h.hexdigest()[:12]}"


# ------------------------------------------------------------------------------------------------
# 1. plan


class SourcePlan(BaseModel):
    name: str
    type: str
    uri: str
    fingerprint: str
    chunks: list[dict[str, Any]]


class CurationPlan(BaseModel):
    """Fingerprints and chunks of every source: the content identity of a curation run."""

    name: str
    spec_hash: str
    code_version: str
    tokenizer_fingerprint: str | None
    vq_fingerprint: str | None = None
    output: str
    sources: list[SourcePlan]

    def content_key(self, *parts: object) -> str:
        """Cache key of a piece of work: spec hash + code version + source fingerprints + ``parts``."""
        h = hashlib.sha256()
        for x in (self.spec_hash, self.code_version, self.tokenizer_fingerprint, self.vq_fingerprint,
                  *(s.fingerprint for s in self.sources), *parts):
            h.update(str(x).encode() + b"\0")
        return h.hexdigest()

    @property
    def work(self) -> str:
        """Intermediate files of *this* content (spec + sources + code) below ``<out>/_work``."""
        return dio.join(dio.join(self.output, WORK_DIR), self.content_key("work")[:16])

    def chunk_ids(self) -> list[tuple[int, dict[str, Any]]]:
        return [(si, c) for si, s in enumerate(self.sources) for c in s.chunks]


def fingerprint_source(spec: CurationSpec, index: int) -> str:
    src = spec.sources[index]
    return get_reader(src).fingerprint(src)


# OSErrors that say a source path cannot be read at all (not transient I/O errors, which flows retry).
_UNREADABLE = (IsADirectoryError, NotADirectoryError, PermissionError, FileNotFoundError)


def source_error(src: SourceBase, exc: DataError | OSError) -> DataError:
    """A source that cannot be read at all (a directory, a missing file, no permission): one line naming it."""
    if isinstance(exc, DataError):
        return exc if f"{src.name!r}" in str(exc) else DataError(f"source {src.name!r}: {exc}")
    where = f": {exc.filename!r}" if exc.filename else ""
    return DataError(f"source {src.name!r} ({src.uri}): {exc.strerror or exc}{where}")


def plan_source(spec: CurationSpec, index: int) -> SourcePlan:
    """Fingerprint one source and cut it into chunks (raises DataError if it cannot be listed)."""
    src = spec.sources[index]
    reader = get_reader(src)
    try:
        chunks = reader.plan(src, spec.chunk_size)
        fingerprint = reader.fingerprint(src)
    except (DataError, *_UNREADABLE) as exc:
        raise source_error(src, exc) from exc
    return SourcePlan(name=src.name, type=src.type, uri=src.uri, fingerprint=fingerprint,
                      chunks=[c.to_dict() for c in chunks])


def make_plan(spec: CurationSpec, sources: list[SourcePlan], out: str | None = None) -> CurationPlan:
    output = out or spec.output_uri()
    dio.check_uri(output, field="output", allow_pipe=False)
    return CurationPlan(name=spec.name, spec_hash=spec_hash(spec), code_version=code_version(),
                        tokenizer_fingerprint=tokenizer_fingerprint(spec.tokenizer) if spec.tokenizer else None,
                        vq_fingerprint=vq_fingerprint(spec.vq.model) if spec.vq.enabled else None,
                        output=output.rstrip("/"), sources=sources)


def plan_curation(spec: CurationSpec, out: str | None = None) -> CurationPlan:
    return make_plan(spec, [plan_source(spec, i) for i in range(len(spec.sources))], out)


# ------------------------------------------------------------------------------------------------
# 2. chunks


def make_key(source: str, uid: str) -> str:
    """``<source>-<uid>`` with only [A-Za-z0-9_-]; long keys are shortened with a hash (tar names <= 100 B)."""
    key = "".join(c if (c.isalnum() and c.isascii()) or c in "-_" else "_" for c in f"{source}-{uid}")
    if len(key) > 80:
        key = f"{key[:60]}_{hashlib.sha256(key.encode()).hexdigest()[:16]}"
    return key


def split_of(group: str, val_fraction: float, salt: str) -> str:
    """Deterministic split: sha256(salt, group) as a fraction in [0, 1) below val_fraction -> val."""
    if val_fraction <= 0:
        return "train"
    x = int.from_bytes(hashlib.sha256(f"{salt}\0{group}".encode()).digest()[:8], "big") / 2.0**64
    return "val" if x < val_fraction else "train"


def _conversation(norm: Normalized) -> tuple[list[Message], str]:
    """(history before the last user turn, last user content) of a chat/LLaVA conversation."""
    msgs = norm.messages or []
    if len(msgs) < 2 or msgs[-2].role != "user":
        raise RecordRejected("bad_conversation", "the final assistant message must follow a user message")
    return msgs[:-2], msgs[-2].content


def build_sample(spec: CurationSpec, src: SourceBase, raw: RawRecord, norm: Normalized) -> tuple[Sample, bytes | None, str]:
    """Canonical sample (+ PNG bytes, + the text used for dedup) from a normalised record."""
    key = make_key(src.name, raw.uid)
    group = f"{src.name}/{norm.source_id}" if norm.source_id else key
    kind, tmpl, flt = spec.kind, spec.template, spec.filters
    meta = dict(norm.metadata)
    fields: dict[str, Any] = {}
    if kind in ("reasoning", "mmu"):
        history: list[Message] | None = None
        thinking = norm.thinking
        if norm.messages is not None:
            history, question = _conversation(norm)
            final = norm.response if norm.response is not None else norm.messages[-1].content
        elif kind == "mmu" and norm.question is None:  # captioning as understanding: describe the image
            if norm.caption is None:
                raise RecordRejected("missing_caption", "caption")
            question, final, thinking = tmpl.caption_question, norm.caption, None
            meta.setdefault("caption", norm.caption)
        else:
            if norm.question is None:
                raise RecordRejected("missing_field", "question")
            question = norm.question
            if norm.response is not None:
                final = norm.response
            elif norm.answer is not None:
                final = final_text(norm.answer, tmpl)
            else:
                raise RecordRejected("missing_field", "answer")
        if flt.verify_answer:  # the gold answer must be what the worked solution computes
            trace = norm.response if norm.response is not None else (norm.solution or norm.thinking or "")
            pred = computed_answer(trace)
            if pred is None:
                raise RecordRejected("no_final_answer", "the trace states no final answer")
            if norm.gold is None:
                raise RecordRejected("missing_field", "gold answer (needed by filters.verify_answer)")
            if not trace_computes(trace, norm.gold):
                raise RecordRejected("answer_mismatch", f"trace answer {pred!r} != gold {norm.gold!r}")
        messages = build_messages(history, question, thinking, final, tmpl)
        prompt, response = render(messages, tmpl)
        fields.update(messages=messages, prompt=prompt, response=response, question=question,
                      thinking=thinking, answer=norm.answer)
        dedup_text = "\n".join(m.content for m in messages)
    else:
        if norm.caption is None:
            raise RecordRejected("missing_caption", "caption")
        fields.update(caption=norm.caption)
        dedup_text = norm.caption
    png, image_info = None, None
    if kind != "reasoning":
        if norm.image is None:
            raise RecordRejected("missing_field", "image")
        img = prepare_image(norm.image, min_size=flt.min_image_size, max_pixels=flt.max_image_pixels,
                            size=spec.images.size)
        png, image_info = img.png, ImageInfo(width=img.width, height=img.height, sha256=img.sha256)
    position = f"{raw.file.rstrip('/').rsplit('/', 1)[-1]} {raw.position}" if raw.file else raw.position
    sample = Sample(key=key, kind=kind, source=src.name, source_id=norm.source_id, position=position,
                    split=split_of(group, spec.split.val_fraction, spec.split.salt),  # type: ignore[arg-type]
                    image=image_info, metadata=meta, **fields)
    return sample, png, dedup_text


def _reject_line(src: SourceBase, seq: int, key: str, position: str, file: str | None, reason: str, detail: str,
                 excerpt: str | None = None) -> dict[str, Any]:
    """One quarantine.jsonl line: where the record was, why it was rejected, and the start of it."""
    return {"source": src.name, "file": file, "position": position, "key": key, "seq": seq,
            "reason": reason, "detail": detail, "excerpt": excerpt}


def chunk_paths(plan: CurationPlan, source: str, index: int) -> dict[str, str]:
    base = f"{source}-{index:05d}"
    work = dio.join(plan.work, "chunks")
    return {"tar": dio.join(work, f"{base}.tar"), "meta": dio.join(work, f"{base}.meta.jsonl"),
            "rejects": dio.join(work, f"{base}.rejects.jsonl"), "minhash": dio.join(work, f"{base}.minhash.npy")}


def _records(reader: Any, src: SourceBase, chunk: Chunk, flt: Any) -> Iterator[RawRecord | RawReject]:
    """The chunk's records; a source that cannot be read at all is a :class:`DataError` naming it."""
    try:
        yield from reader.read(src, chunk, flt)
    except (DataError, *_UNREADABLE) as exc:
        raise source_error(src, exc) from exc


@writes_output
def process_chunk(spec: CurationSpec, plan: CurationPlan, source_index: int, chunk: dict[str, Any]) -> dict[str, Any]:
    """Curate one chunk; write its kept samples (tar), metadata and rejects below ``<out>/_work``.

    Returns a small JSON-able result: counts per reason and the paths written.
    """
    src = spec.sources[source_index]
    reader = get_reader(src)
    ch = Chunk.from_dict(chunk)
    flt = spec.filters
    tok = get_tokenizer(spec.tokenizer) if spec.tokenizer else None
    hasher = MinHasher(flt.near_dedup_num_perm, flt.near_dedup_ngram) if flt.near_dedup else None
    paths = chunk_paths(plan, src.name, ch.index)
    rejects: list[dict[str, Any]] = []
    pending: list[tuple[int, Sample, bytes | None, str, str | None]] = []  # (seq, sample, png, dedup text, file)
    metas: list[dict[str, Any]] = []
    sigs: list[np.ndarray] = []
    read = 0

    def flush(tar: TarStreamWriter) -> None:
        """Token filters on a batch of samples; the kept ones go straight into the chunk tar."""
        counts = count_tokens(tok, [p[1].text for p in pending]) if tok is not None else [None] * len(pending)
        for (seq, s, png, dtext, file), n in zip(pending, counts):
            if n is not None:
                s.num_tokens = n
                if flt.min_tokens is not None and n < flt.min_tokens:
                    rejects.append(_reject_line(src, seq, s.key, s.position, file, "too_few_tokens", f"{n} < {flt.min_tokens}"))
                    continue
                if flt.max_tokens is not None and n > flt.max_tokens:
                    rejects.append(_reject_line(src, seq, s.key, s.position, file, "too_many_tokens", f"{n} > {flt.max_tokens}"))
                    continue
            m = sample_members(s, png)
            tar.write(s.key, m)
            metas.append({"key": s.key, "split": s.split, "tokens": s.num_tokens, "nbytes": sum(len(v) for v in m.values()),
                          "exact": exact_key(dtext, s.image.sha256 if s.image else None), "position": s.position,
                          "file": file})
            if hasher is not None:
                sigs.append(hasher.signature(dtext))
        pending.clear()

    with atomic_write(paths["tar"]) as f:
        tar = TarStreamWriter(f)
        for item in _records(reader, src, ch, flt):
            seq = read
            read += 1
            key = make_key(src.name, item.uid)
            if isinstance(item, RawReject):
                rejects.append(_reject_line(src, seq, key, item.position, item.file, item.reason, item.detail, item.excerpt))
                continue
            try:
                norm = reader.normalize(src, item, spec)
                sample, png, dtext = build_sample(spec, src, item, norm)
            except RecordRejected as rej:
                rejects.append(_reject_line(src, seq, key, item.position, item.file, rej.reason, rej.detail, item.excerpt))
                continue
            except Exception as exc:
                raise DataError(f"source {src.name!r} {item.file or ''} {item.position}: unexpected "
                                f"{type(exc).__name__}: {exc}") from exc
            pending.append((seq, sample, png, dtext, item.file))
            if len(pending) >= _TOKEN_BATCH:
                flush(tar)
        flush(tar)
        tar.close()
    rejects.sort(key=lambda r: r["seq"])
    write_bytes(paths["meta"], "".join(json.dumps(m, sort_keys=True) + "\n" for m in metas).encode())
    write_bytes(paths["rejects"], "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n"
                                                      for r in rejects).encode())
    if hasher is not None:
        arr = np.stack(sigs) if sigs else np.zeros((0, flt.near_dedup_num_perm), np.uint32)
        with atomic_write(paths["minhash"]) as f:
            np.save(f, arr, allow_pickle=False)
    by_reason = Counter(r["reason"] for r in rejects)
    return {"source": src.name, "source_index": source_index, "chunk": ch.index, "read": read, "kept": len(metas),
            "rejected": len(rejects), "by_reason": dict(sorted(by_reason.items())), "paths": paths,
            "near_dedup": hasher is not None}


# ------------------------------------------------------------------------------------------------
# 3. dedup, split, shard assignment


def _read_lines(uri: str) -> Iterator[dict[str, Any]]:
    data = dio.read_bytes(uri)
    for line in data.splitlines():
        if line.strip():
            yield json.loads(line)


def _token_stats(values: list[int]) -> TokenStats | None:
    if not values:
        return None
    v = sorted(values)
    return TokenStats(count=len(v), total=sum(v), min=v[0], max=v[-1], mean=round(statistics.fmean(v), 3),
                      p50=v[(len(v) - 1) // 2], p95=v[min(len(v) - 1, int(0.95 * (len(v) - 1) + 0.5))])


@writes_output
def plan_shards(spec: CurationSpec, plan: CurationPlan, chunk_results: list[dict[str, Any]]) -> dict[str, Any]:
    """Dedup over all chunks (global order), split, and assign samples to shards.

    Writes ``_work/plan.json`` (shard -> (chunk, member index) items) and ``_work/dedup.jsonl``
    (quarantine lines of duplicates); returns a summary with the shard names and token stats.
    """
    results = sorted(chunk_results, key=lambda r: (r["source_index"], r["chunk"]))
    flt = spec.filters
    seen: dict[str, str] = {}
    near = NearDuplicateIndex(flt.near_dedup_threshold, flt.near_dedup_num_perm) if flt.near_dedup else None
    dedup_lines: list[dict[str, Any]] = []
    entries: dict[str, list[tuple[int, int, int, str]]] = {s: [] for s in SPLITS}  # (chunk pos, member, nbytes, source)
    tokens: dict[str, list[int]] = {s: [] for s in SPLITS}
    for pos, r in enumerate(results):
        src = spec.sources[r["source_index"]]
        sigs = None
        if near is not None:
            with dio.open_read(r["paths"]["minhash"]) as f:
                sigs = np.load(f, allow_pickle=False)
        for i, m in enumerate(_read_lines(r["paths"]["meta"])):
            if flt.exact_dedup and m["exact"] in seen:
                dedup_lines.append(_reject_line(src, -1, m["key"], m["position"], m["file"], "duplicate",
                                                f"of {seen[m['exact']]}"))
                continue
            if near is not None and sigs is not None:
                dup_of = near.check(m["key"], sigs[i])
                if dup_of is not None:
                    dedup_lines.append(_reject_line(src, -1, m["key"], m["position"], m["file"], "near_duplicate",
                                                    f"of {dup_of}"))
                    continue
            seen.setdefault(m["exact"], m["key"])
            entries[m["split"]].append((pos, i, m["nbytes"], src.name))
            if m["tokens"] is not None:
                tokens[m["split"]].append(m["tokens"])
    shards: list[dict[str, Any]] = []
    for split in SPLITS:
        cur: list[tuple[int, int, int, str]] = []
        size = 0
        for e in entries[split]:
            if cur and (len(cur) >= spec.shards.max_samples or size + e[2] > spec.shards.max_bytes):
                shards.append(_shard_entry(spec, split, sum(1 for s in shards if s["split"] == split), cur))
                cur, size = [], 0
            cur.append(e)
            size += e[2]
        if cur:
            shards.append(_shard_entry(spec, split, sum(1 for s in shards if s["split"] == split), cur))
    chunk_tars = [r["paths"]["tar"] for r in results]
    plan_uri, dedup_uri = dio.join(plan.work, "plan.json"), dio.join(plan.work, "dedup.jsonl")
    write_bytes(plan_uri, json.dumps({"chunk_tars": chunk_tars, "shards": shards}).encode())
    for k, line in enumerate(dedup_lines):
        line["seq"] = k
    write_bytes(dedup_uri, "".join(json.dumps(x, sort_keys=True, ensure_ascii=False) + "\n"
                                              for x in dedup_lines).encode())
    stats = {s: st.model_dump() for s in SPLITS if (st := _token_stats(tokens[s])) is not None}
    return {"plan": plan_uri, "dedup": dedup_uri,
            "shards": [{"name": s["name"], "split": s["split"], "count": len(s["items"])} for s in shards],
            "token_stats": stats}


def _shard_entry(spec: CurationSpec, split: str, index: int, items: list[tuple[int, int, int, str]]) -> dict[str, Any]:
    return {"name": f"{spec.name}-{split}-{index:06d}.tar", "split": split,
            "items": [[p, i] for p, i, _, _ in items], "sources": dict(sorted(Counter(s for *_, s in items).items()))}


# ------------------------------------------------------------------------------------------------
# 4. shards


def _vq_encode(spec: CurationSpec, pngs: list[bytes]) -> np.ndarray:
    """(N, h*w) codes (int16/int32) of RGB PNGs with the spec's image tokenizer."""
    model = _vq_model(spec.vq.model)
    images = [Image.fromarray(decode_png_rgb(p)) for p in pngs]  # RGB, any size (resized by encode_images)
    return encode_images(model, images, batch_size=spec.vq.batch_size, device=spec.vq.device,
                         resolution=spec.vq.resolution, mode=spec.vq.mode)


def _vq_model(name: str):
    """The image tokenizer, loaded once per process and name (a retrained one changes the fingerprint)."""
    if name not in _VQ_MODELS:
        _VQ_MODELS[name] = load_tokenizer_model(name)
    return _VQ_MODELS[name]


_VQ_MODELS: dict[str, Any] = {}


def vq_fingerprint(name: str) -> str:
    """sha256 of the image tokenizer's config and weights (so retraining it invalidates cached shards)."""
    model = load_tokenizer_model(name)  # fresh: the weights on disk now
    _VQ_MODELS[name] = model
    h = hashlib.sha256(json.dumps(model.config.model_dump(mode="json"), sort_keys=True).encode())
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode() + b"\0" + v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _planned_samples(chunk_tars: list[str], entry: dict[str, Any]) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Stream a shard's samples out of the chunk tars, in plan order (items are sorted by chunk, member)."""
    items = [tuple(x) for x in entry["items"]]
    if items != sorted(items):
        raise ShardError(f"shard {entry['name']}: plan items are not in (chunk, member) order")
    wanted: dict[int, set[int]] = defaultdict(set)
    for p, i in items:
        wanted[p].add(i)
    found = 0
    for p in sorted(wanted):
        need = wanted[p]
        with dio.open_read(chunk_tars[p]) as f:
            for i, sample in enumerate(iter_tar_samples(f)):
                if i in need:
                    found += 1
                    yield sample
    if found != len(items):
        raise ShardError(f"shard {entry['name']}: {len(items) - found} planned samples not found in the chunk files")


def _with_codes(spec: CurationSpec, samples: Iterator[tuple[str, dict[str, bytes]]]
                ) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Add ``codes.npy`` (VQ codes of the png) to every sample, encoding ``vq.batch_size`` at a time."""
    batch: list[tuple[str, dict[str, bytes]]] = []

    def encode() -> Iterator[tuple[str, dict[str, bytes]]]:
        codes = _vq_encode(spec, [m["png"] for _, m in batch])  # (B, h*w)
        for (key, m), c in zip(batch, codes):
            s = Sample.model_validate_json(m["json"])
            s.codes = CodesInfo(length=int(c.size), tokenizer=spec.vq.model, resolution=spec.vq.resolution)
            m = {**m, "json": s.json_bytes(), "codes.npy": codes_to_npy(c)}
            if not spec.vq.keep_png:
                del m["png"]
            yield key, m
        batch.clear()

    for sample in samples:
        batch.append(sample)
        if len(batch) >= spec.vq.batch_size:
            yield from encode()
    if batch:
        yield from encode()


@writes_output
def build_shard(spec: CurationSpec, plan: CurationPlan, plan_uri: str, shard_index: int) -> dict[str, Any]:
    """Write shard ``shard_index`` of the shard plan to the output; returns its :class:`ShardInfo` dict.

    Samples stream from the chunk files into the shard (memory stays bounded by one VQ batch).
    """
    sp = json.loads(dio.read_bytes(plan_uri))
    entry = sp["shards"][shard_index]
    samples = _planned_samples(sp["chunk_tars"], entry)
    if spec.vq.enabled:
        samples = _with_codes(spec, samples)
    written: Counter = Counter()  # what really went into the tar, per source (checked in finalize)

    def count(_key: str, members: dict[str, bytes]) -> None:
        written[json.loads(members["json"])["source"]] += 1

    n, nbytes, sha = write_shard(dio.join(plan.output, entry["name"]), samples, on_sample=count)
    return ShardInfo(name=entry["name"], split=entry["split"], count=n, bytes=nbytes, sha256=sha,
                     sources=dict(sorted(written.items()))).model_dump()


# ------------------------------------------------------------------------------------------------
# 5. finalize


def check_counts(per_source: dict[str, Counts]) -> None:
    """Raise :class:`CountMismatchError` unless read = kept + rejected for every source."""
    bad = [f"{name}: read {c.read} != kept {c.kept} + rejected {c.rejected}"
           for name, c in per_source.items() if c.read != c.kept + c.rejected]
    if bad:
        raise CountMismatchError("records lost or double counted — " + "; ".join(bad))


@writes_output
def finalize(spec: CurationSpec, plan: CurationPlan, chunk_results: list[dict[str, Any]], shard_plan: dict[str, Any],
             shard_infos: list[dict[str, Any]], *, keep_work: bool = False) -> Manifest:
    """Write quarantine.jsonl, datacard.md and manifest.json (last); check counts and shard sizes."""
    results = sorted(chunk_results, key=lambda r: (r["source_index"], r["chunk"]))
    shards = [ShardInfo.model_validate(s) for s in shard_infos]
    if [s.name for s in shards] != [s["name"] for s in shard_plan["shards"]]:
        raise ShardError("shard results do not match the shard plan")
    lines: list[bytes] = []
    per_reason: dict[str, Counter] = defaultdict(Counter)
    for path in [r["paths"]["rejects"] for r in results] + [shard_plan["dedup"]]:
        for rec in _read_lines(path):
            rec.pop("seq", None)
            per_reason[rec["source"]][rec["reason"]] += 1
            lines.append(json.dumps(rec, sort_keys=True, ensure_ascii=False).encode() + b"\n")
    quarantine = b"".join(lines)
    q_uri = dio.join(plan.output, QUARANTINE_NAME)
    write_bytes(q_uri, quarantine)

    kept_by_source: Counter = Counter()
    for s in shards:
        kept_by_source.update(s.sources)
    read_by_source: Counter = Counter()
    for r in results:
        read_by_source[r["source"]] += r["read"]
    per_source = {sp.name: Counts(read=read_by_source[sp.name], kept=kept_by_source[sp.name],
                                  rejected=sum(per_reason[sp.name].values())) for sp in plan.sources}
    check_counts(per_source)
    for s in shards:  # every shard is there with the size its task reported
        check_shard_size(plan.output, s)

    all_reasons: Counter = Counter()
    for c in per_reason.values():
        all_reasons.update(c)
    splits = {sp: SplitInfo(shards=sum(1 for s in shards if s.split == sp), samples=sum(s.count for s in shards if s.split == sp),
                            bytes=sum(s.bytes for s in shards if s.split == sp)) for sp in SPLITS}
    manifest = Manifest(
        name=spec.name, kind=spec.kind, spec_hash=plan.spec_hash, code_version=plan.code_version,
        schema_version=SCHEMA_VERSION, spec=spec.model_dump(mode="json", exclude={"output"}),
        sources=[SourceEntry(name=sp.name, type=sp.type, uri=sp.uri, fingerprint=sp.fingerprint,
                             counts=per_source[sp.name], rejected_by_reason=dict(sorted(per_reason[sp.name].items())))
                 for sp in plan.sources],
        shards=shards, splits=splits,
        counts=Counts(read=sum(c.read for c in per_source.values()), kept=sum(c.kept for c in per_source.values()),
                      rejected=sum(c.rejected for c in per_source.values())),
        rejected_by_reason=dict(sorted(all_reasons.items())), tokenizer=spec.tokenizer,
        tokenizer_fingerprint=plan.tokenizer_fingerprint,
        token_stats={k: TokenStats.model_validate(v) for k, v in shard_plan["token_stats"].items()},
        quarantine=QuarantineInfo(file=QUARANTINE_NAME, lines=len(lines), sha256=hashlib.sha256(quarantine).hexdigest()),
        vq={**spec.vq.model_dump(mode="json", exclude={"device", "batch_size"}), "fingerprint": plan.vq_fingerprint}
        if spec.vq.enabled else None,
    )
    write_bytes(dio.join(plan.output, DATACARD_NAME), datacard(manifest, _examples(plan.output, shards)).encode())
    remove_stale_shards(plan.output, keep={s.name for s in shards})  # before the manifest: it never sits beside an orphan
    write_bytes(dio.join(plan.output, MANIFEST_NAME), manifest.to_json())
    remove_partials(plan.output)
    if not keep_work:
        dio.remove_tree(dio.join(plan.output, WORK_DIR))
    return manifest


def _examples(root: str, shards: list[ShardInfo], n: int = 3) -> list[Sample]:
    out: list[Sample] = []
    for s in shards:
        if s.split != "train":
            continue
        with dio.open_read(dio.join(root, s.name)) as f:
            for _key, members in iter_tar_samples(f):
                out.append(Sample.model_validate_json(members["json"]))
                if len(out) >= n:
                    return out
    return out


def datacard(m: Manifest, examples: list[Sample]) -> str:
    """A markdown data card: counts per source, reject reasons, splits, token stats, examples."""
    lines = [f"# Data card: {m.name}", "", f"- kind: `{m.kind}`", f"- spec hash: `{m.spec_hash}`",
             f"- code version: `{m.code_version}`", f"- tokenizer: `{m.tokenizer}`", "",
             "## Counts (read = kept + rejected)", "", "| source | type | read | kept | rejected |", "|---|---|---:|---:|---:|"]
    for s in m.sources:
        lines.append(f"| {s.name} | {s.type} | {s.counts.read} | {s.counts.kept} | {s.counts.rejected} |")
    lines.append(f"| **total** | | {m.counts.read} | {m.counts.kept} | {m.counts.rejected} |")
    lines += ["", "## Reject reasons", ""]
    if m.rejected_by_reason:
        lines += ["| reason | count | meaning |", "|---|---:|---|"]
        lines += [f"| {r} | {c} | {REASONS.get(r, '')} |" for r, c in m.rejected_by_reason.items()]
    else:
        lines.append("No record was rejected.")
    lines += ["", "## Splits", "", "| split | shards | samples | bytes |", "|---|---:|---:|---:|"]
    lines += [f"| {k} | {v.shards} | {v.samples} | {v.bytes} |" for k, v in m.splits.items()]
    if m.token_stats:
        lines += ["", "## Tokens", "", "| split | samples | total | min | p50 | mean | p95 | max |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {k} | {t.count} | {t.total} | {t.min} | {t.p50} | {t.mean} | {t.p95} | {t.max} |"
                  for k, t in m.token_stats.items()]
    if examples:
        lines += ["", "## Examples", ""]
        for ex in examples:
            text = ex.text if len(ex.text) <= 600 else ex.text[:600] + "…"
            lines += [f"**{ex.key}** ({ex.position})", "", "```text", text.replace("```", "'''"), "```", ""]
    return "\n".join(lines).rstrip() + "\n"


# ------------------------------------------------------------------------------------------------


def existing_output(spec: CurationSpec, plan: CurationPlan) -> Manifest | None:
    """The manifest of a complete output of exactly this content, else None.

    Checks the content identity (spec hash, code version, tokenizer, image tokenizer, source
    fingerprints) and that every shard is present with its recorded size — cheap even for TBs of
    shards. Full sha256 checks are the loader's job (:meth:`ShardSet.verify`); ``force`` rebuilds.
    """
    try:
        m = read_manifest(plan.output)
    except ShardError:
        return None
    same = (m.spec_hash == plan.spec_hash and m.code_version == plan.code_version
            and m.tokenizer_fingerprint == plan.tokenizer_fingerprint
            and (m.vq or {}).get("fingerprint") == plan.vq_fingerprint
            and [s.fingerprint for s in m.sources] == [s.fingerprint for s in plan.sources])
    if not same:
        return None
    try:
        for s in m.shards:
            check_shard_size(plan.output, s)
    except ShardError:
        return None
    return m


def curate(spec: CurationSpec, *, out: str | None = None, force: bool = False, keep_work: bool = False,
           overwrite: bool = False, progress: Callable[[str, int, int], None] | None = None) -> Manifest:
    """Run all stages in this process (the flow runs the same stages as Prefect tasks).

    ``overwrite``: replace another dataset's output at ``out`` (refused otherwise, see :mod:`mmada.data.output`).
    """
    plan = plan_curation(spec, out)
    with output_lock(plan.output):
        if not force and (m := existing_output(spec, plan)) is not None:
            return m
        with disk_errors(plan.output):
            claim_output(spec.name, plan.output, overwrite=overwrite)
        chunks = plan.chunk_ids()
        results = []
        for k, (si, c) in enumerate(chunks):
            results.append(process_chunk(spec, plan, si, c))
            if progress:
                progress("chunks", k + 1, len(chunks))
        sp = plan_shards(spec, plan, results)
        infos = []
        for i in range(len(sp["shards"])):
            infos.append(build_shard(spec, plan, sp["plan"], i))
            if progress:
                progress("shards", i + 1, len(sp["shards"]))
        return finalize(spec, plan, results, sp, infos, keep_work=keep_work)
