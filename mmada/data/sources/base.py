"""Reader interface shared by all source types.

A reader does three things for one :class:`~mmada.data.specs.SourceBase`:

``plan(src, chunk_size) -> list[Chunk]``
    Cheap pass that cuts the source into chunks of about ``chunk_size`` records (byte ranges of a
    JSONL file, row groups of a Parquet file, one tar, an index range …). Chunks are small, plain
    data: they are what a Prefect task receives.
``read(src, chunk, filters) -> Iterator[RawRecord | RawReject]``
    Streams the chunk's records; a record that cannot even be parsed comes out as a
    :class:`RawReject` with its position and reason. Nothing is skipped silently: every record
    unit the reader sees is yielded exactly once (this is the ``read`` count).
``normalize(src, raw, spec) -> Normalized``
    Maps the format's fields onto canonical ones, raising :class:`RecordRejected` for a missing
    field, a wrong type, a GSM8K answer without ``#### N`` …

Record ids (``uid``) depend only on where the record is (file index, line/row/member), never on
the chunking, so keys and outputs do not change with ``chunk_size``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

from mmada.data.errors import RecordRejected
from mmada.data.io import expand, fs_and_path, sha256_uri
from mmada.data.schema import Message
from mmada.data.specs import CurationSpec, FilterSpec, SourceBase

# Quarantine reasons (the ``reason`` field of quarantine.jsonl lines).
REASONS = {
    "bad_json": "not valid JSON",
    "not_utf8": "not valid UTF-8",
    "wrong_type": "a field or the record has the wrong type",
    "missing_field": "a required field is absent or null",
    "empty_field": "a required text field is empty",
    "bad_conversation": "messages are not a user/assistant conversation ending with the assistant",
    "no_final_answer": "no final answer found (GSM8K '#### N', MATH \\boxed{})",
    "answer_mismatch": "the gold answer is not what the trace computes (its stated result or last calculation)",
    "record_too_large": "the raw record exceeds filters.max_record_bytes",
    "empty_file": "the file holds no records",
    "unreadable_file": "the file cannot be opened as its format",
    "truncated_file": "the file ends before the records its header announces",
    "truncated_tar": "the tar ends in the middle of a member",
    "unsafe_member": "a tar member is a link/device or its name is absolute or contains '..'",
    "undecodable_image": "the image bytes cannot be decoded",
    "image_too_small": "an image side is below filters.min_image_size",
    "image_too_large": "the image has more than filters.max_image_pixels pixels",
    "missing_image": "the referenced image file does not exist",
    "missing_caption": "an image without a caption",
    "unknown_label": "a class label outside class_names",
    "path_escape": "an image path (or a symlink) points outside the source folder",
    "too_few_tokens": "shorter than filters.min_tokens",
    "too_many_tokens": "longer than filters.max_tokens",
    "duplicate": "exact duplicate of an earlier sample",
    "near_duplicate": "near-duplicate (MinHash) of an earlier sample",
}


@dataclass
class Chunk:
    """One unit of curation work: plain data, JSON-serialisable (a Prefect task argument)."""

    source: str
    index: int  # chunk number within the source (0, 1, …)
    file: str | None = None  # the file this chunk reads (None for generators)
    file_index: int = 0  # index of `file` in the source's sorted file list
    start: int = 0  # byte offset / row / record index where the chunk starts
    stop: int | None = None  # exclusive end (None: to the end of the file)
    first: int = 0  # position number (line, row, record) of the chunk's first record
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Chunk:
        return cls(**d)

    @property
    def id(self) -> str:
        return f"{self.source}-{self.index:05d}"


@dataclass
class RawRecord:
    uid: str  # unique within the source, [A-Za-z0-9_-]
    position: str  # human-readable: "line 17", "row 3", "member 000012"
    file: str | None
    data: Any
    excerpt: str | None = None  # the raw text, for quarantine lines


@dataclass
class RawReject:
    uid: str
    position: str
    file: str | None
    reason: str
    detail: str = ""
    excerpt: str | None = None


@dataclass
class Normalized:
    """Canonical fields extracted from one record (before kind-specific rendering)."""

    source_id: str | None = None
    question: str | None = None
    thinking: str | None = None
    answer: str | None = None  # short final answer (e.g. "72") when the format has one
    response: str | None = None  # the final response text after </think>; None: built from `answer`
    gold: str | None = None  # gold answer for verification
    solution: str | None = None  # the worked solution as written (GSM8K: with <<calc>> notes), for verification
    messages: list[Message] | None = None  # conversations (chat, llava)
    caption: str | None = None
    image: Any = None  # bytes | PIL.Image | numpy array | {"bytes": …} (HF image struct)
    metadata: dict[str, Any] = field(default_factory=dict)


def excerpt_of(raw: bytes | str | None, n: int = 200) -> str | None:
    if raw is None:
        return None
    if isinstance(raw, bytes):
        raw = raw[: n * 4].decode("utf-8", errors="replace")
    return raw if len(raw) <= n else raw[:n] + "…"


_MISSING = object()


def get_field(data: Any, path: str, *, field_name: str, types: tuple[type, ...] | type | None = str,
              required: bool = True) -> Any:
    """``data[path]`` (dotted paths reach into nested objects) with record-level errors.

    Raises ``RecordRejected("missing_field")`` when absent/null and required, and
    ``RecordRejected("wrong_type")`` when the value is not of ``types``.
    """
    cur: Any = data
    for part in path.split("."):
        if isinstance(cur, dict) and part in cur:
            cur = cur[part]
        else:
            cur = _MISSING
            break
    if cur is _MISSING or cur is None:
        if required:
            raise RecordRejected("missing_field", f"{field_name} (column {path!r})")
        return None
    if types is not None:
        tt = types if isinstance(types, tuple) else (types,)
        bad_bool = bool not in tt and isinstance(cur, bool)
        if bad_bool or not isinstance(cur, tt):
            names = "/".join(t.__name__ for t in tt)
            raise RecordRejected("wrong_type", f"{field_name} (column {path!r}) must be {names}, got {type(cur).__name__}")
    return cur


def nonempty(text: str, field_name: str) -> str:
    if not text.strip():
        raise RecordRejected("empty_field", field_name)
    return text


class Reader:
    """Base class; subclasses register themselves for a ``type`` with :func:`register`."""

    type: ClassVar[str]

    def files(self, src: SourceBase) -> list[str]:
        return expand(src.uri)

    def fingerprint(self, src: SourceBase) -> str:
        """Content fingerprint of the source (sha256 of the files; object-store ETags for remote)."""
        h = hashlib.sha256(f"{src.type}:".encode())  # type: ignore[attr-defined]
        for uri in self.fingerprint_files(src):
            h.update(uri.rsplit("/", 1)[-1].encode() + b"\0")
            h.update(file_fingerprint(uri).encode() + b"\0")
        return h.hexdigest()

    def fingerprint_files(self, src: SourceBase) -> list[str]:
        return self.files(src)

    def plan(self, src: SourceBase, chunk_size: int) -> list[Chunk]:
        raise NotImplementedError

    def read(self, src: SourceBase, chunk: Chunk, filters: FilterSpec) -> Iterator[RawRecord | RawReject]:
        raise NotImplementedError

    def normalize(self, src: SourceBase, raw: RawRecord, spec: CurationSpec) -> Normalized:
        raise NotImplementedError


def file_fingerprint(uri: str) -> str:
    """sha256 of a local/memory file; for remote object stores the ETag/checksum from ``info``."""
    if uri.startswith("pipe:"):
        return sha256_uri(uri)[0]
    fs, path = fs_and_path(uri)
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    if not {"file", "local", "memory"} & set(protocols):
        try:
            info = fs.info(path)
        except FileNotFoundError:
            return "missing"
        for k in ("ETag", "etag", "md5Hash", "crc32c", "sha256", "lfs", "blob_id", "sha"):
            if info.get(k):
                return f"{k}:{info[k]}:{info.get('size')}"
    try:
        return sha256_uri(uri)[0]
    except Exception:  # missing/unreadable: the reader reports it; the fingerprint just differs
        return "missing"


READERS: dict[str, Reader] = {}


def register(cls: type[Reader]) -> type[Reader]:
    READERS[cls.type] = cls()
    return cls


def get_reader(src: SourceBase) -> Reader:
    return READERS[src.type]  # type: ignore[attr-defined]


__all__ = [
    "READERS",
    "REASONS",
    "Chunk",
    "Normalized",
    "RawRecord",
    "RawReject",
    "Reader",
    "RecordRejected",
    "excerpt_of",
    "get_field",
    "get_reader",
    "nonempty",
    "register",
]
