"""WebDataset shards and their manifest: byte-reproducible writing and checksum-verified reading.

Writing (:func:`write_shard`): POSIX ustar headers with fixed metadata (mtime 0, uid/gid 0, no
owner names, mode 0444) and a fixed member order, so the same samples always give the same bytes — which is what lets DVC dedupe and what the Dask-vs-default equality test checks.
Member names are ``<key>.<ext>`` with a validated key and a known extension, so nothing written
can land outside the shard's own namespace. Each shard goes through a temporary name and is
renamed into place (:func:`mmada.files.atomic_write`), while its sha256 is computed on the fly.

Reading (:class:`ShardSet`): opens ``manifest.json``, checks every shard's size and sha256 before
yielding its samples, and raises :class:`~mmada.data.errors.ShardError` naming the shard that is
missing, truncated or corrupt.

    shards = ShardSet.open("runs/data/arithmetic")
    shards.verify()                                 # all shards, by name
    for s in shards.iter_samples("train"):          # {"__key__", "json": Sample, "txt", "png", "codes"}
        ...
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any, Literal

import numpy as np
from pydantic import Field, ValidationError

from mmada.config import Strict
from mmada.data.errors import ShardError
from mmada.data.io import fs_and_path, is_local, join
from mmada.data.schema import KEY_PATTERN, MEMBER_ORDER, Sample
from mmada.files import atomic_write

MANIFEST_FORMAT = "mmada-shards/1"
MANIFEST_NAME = "manifest.json"
_EXTS = set(MEMBER_ORDER)
_MEMBER_RE = re.compile(r"^([A-Za-z0-9_-]+)\.(.+)$")


# ------------------------------------------------------------------------------------------------
# Manifest


class Counts(Strict):
    read: int = 0
    kept: int = 0
    rejected: int = 0


class SourceEntry(Strict):
    name: str
    type: str
    uri: str
    fingerprint: str
    counts: Counts
    rejected_by_reason: dict[str, int] = Field(default_factory=dict)


class ShardInfo(Strict):
    name: str
    split: Literal["train", "val"]
    count: int
    bytes: int
    sha256: str
    sources: dict[str, int] = Field(default_factory=dict, description="samples per source in this shard")


class SplitInfo(Strict):
    shards: int
    samples: int
    bytes: int


class TokenStats(Strict):
    count: int
    total: int
    min: int
    max: int
    mean: float
    p50: int
    p95: int


class QuarantineInfo(Strict):
    file: str
    lines: int
    sha256: str


class Manifest(Strict):
    """``manifest.json``: what a shard set holds and how to check it (no timestamps: reproducible)."""

    format: str = MANIFEST_FORMAT
    name: str
    kind: str
    spec_hash: str
    code_version: str
    schema_version: int
    spec: dict[str, Any]
    sources: list[SourceEntry]
    shards: list[ShardInfo]
    splits: dict[str, SplitInfo]
    counts: Counts
    rejected_by_reason: dict[str, int]
    tokenizer: str | None
    tokenizer_fingerprint: str | None = None
    token_stats: dict[str, TokenStats]
    quarantine: QuarantineInfo
    datacard: str = "datacard.md"
    vq: dict[str, Any] | None = None

    def to_json(self) -> bytes:
        return (json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


def read_manifest(root: str) -> Manifest:
    uri = join(root, MANIFEST_NAME)
    fs, path = fs_and_path(uri)
    if not fs.exists(path):
        raise ShardError(f"no {MANIFEST_NAME} under {root!r} (curation did not finish there)")
    with fs.open(path, "rb") as f:
        raw = f.read()
    try:
        return Manifest.model_validate_json(raw)
    except ValidationError as exc:
        raise ShardError(f"{uri}: not a valid manifest: {exc.errors()[0].get('msg')}") from None


# ------------------------------------------------------------------------------------------------
# Writing


class _HashingWriter(io.RawIOBase):
    def __init__(self, f: IO[bytes]):
        self.f, self.h, self.n = f, hashlib.sha256(), 0

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:  # type: ignore[override]
        b = bytes(b)
        self.h.update(b)
        self.n += len(b)
        self.f.write(b)
        return len(b)


_BLOCK = 512
_END = b"\0" * (2 * _BLOCK)
_RECORD = 20 * _BLOCK  # tar files are padded to whole 10 KiB records (as GNU tar and tarfile do)


def _ustar_header(name: bytes, size: int) -> bytes:
    """A POSIX ustar header with fixed metadata (mtime 0, uid/gid 0, mode 0444, no owner names)."""
    if len(name) > 100:
        raise ShardError(f"tar member name {name!r} is longer than 100 bytes")
    h = bytearray(_BLOCK)
    h[0:len(name)] = name
    h[100:108] = b"0000444\0"  # mode
    h[108:116] = b"0000000\0"  # uid
    h[116:124] = b"0000000\0"  # gid
    h[124:136] = b"%011o\0" % size
    h[136:148] = b"00000000000\0"  # mtime
    h[148:156] = b" " * 8  # checksum placeholder
    h[156:157] = b"0"  # regular file
    h[257:263] = b"ustar\0"
    h[263:265] = b"00"
    h[148:156] = b"%06o\0 " % sum(h)
    return bytes(h)


def member_name(key: str, ext: str) -> str:
    if not KEY_PATTERN.match(key):
        raise ShardError(f"refusing tar member for key {key!r}: keys are [A-Za-z0-9_-]+")
    if ext not in _EXTS:
        raise ShardError(f"refusing tar member extension {ext!r}; known: {sorted(_EXTS)}")
    return f"{key}.{ext}"


class TarStreamWriter:
    """Append samples to a deterministic ustar tar one at a time (bounded memory); ``close`` ends it.

    Members come in :data:`MEMBER_ORDER`; the archive ends with two zero blocks and is padded to a
    10 KiB record, so any tar reader (tarfile, GNU tar, webdataset) reads it.
    """

    def __init__(self, f: IO[bytes]):
        self.f, self.count, self.written = f, 0, 0

    def write(self, key: str, members: dict[str, bytes]) -> None:
        extra = set(members) - _EXTS
        if extra:
            raise ShardError(f"sample {key!r}: unknown member(s) {sorted(extra)}")
        for ext in MEMBER_ORDER:
            if ext in members:
                data = members[ext]
                pad = -len(data) % _BLOCK
                self.f.write(_ustar_header(member_name(key, ext).encode(), len(data)))
                self.f.write(data)
                if pad:
                    self.f.write(b"\0" * pad)
                self.written += _BLOCK + len(data) + pad
        self.count += 1

    def close(self) -> None:
        self.written += len(_END)
        self.f.write(_END + b"\0" * (-self.written % _RECORD))


def write_tar(f: IO[bytes], samples: Iterable[tuple[str, dict[str, bytes]]],
              on_sample: Callable[[str, dict[str, bytes]], None] | None = None) -> int:
    """Write ``(key, {ext: bytes})`` samples as a deterministic tar to ``f``; returns the sample count.

    ``on_sample`` is called after each sample is written (to count what really went into the shard).
    """
    w = TarStreamWriter(f)
    for key, members in samples:
        w.write(key, members)
        if on_sample is not None:
            on_sample(key, members)
    w.close()
    return w.count


def write_shard(uri: str, samples: Iterable[tuple[str, dict[str, bytes]]],
                on_sample: Callable[[str, dict[str, bytes]], None] | None = None) -> tuple[int, int, str]:
    """Atomically write a shard to ``uri``; returns (samples, bytes, sha256)."""
    with atomic_write(uri) as raw:
        hw = _HashingWriter(raw)
        n = write_tar(hw, samples, on_sample)  # type: ignore[arg-type]
    return n, hw.n, hw.h.hexdigest()


def codes_to_npy(codes: np.ndarray) -> bytes:
    """``.npy`` bytes of a 1-D code array (int16 kept for codebooks <= 32768, else int32)."""
    dtype = np.int16 if codes.dtype == np.int16 else np.int32
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(codes.reshape(-1), dtype=dtype), allow_pickle=False)
    return buf.getvalue()


def npy_to_codes(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


# ------------------------------------------------------------------------------------------------
# Reading


def iter_tar_members(f: IO[bytes]) -> Iterator[tuple[str, bytes]]:
    """Stream ``(name, data)`` of the regular members of a tar written by :func:`write_tar`.

    A strict, fast reader for our own ustar shards (checksums verified, no extraction to disk);
    anything else (links, long-name extensions, a truncated member) raises :class:`ShardError`.
    """
    while True:
        h = f.read(_BLOCK)
        if len(h) < _BLOCK:
            if h:
                raise ShardError("truncated tar header")
            return  # no end-of-archive marker; tolerate
        if h == b"\0" * _BLOCK:
            return
        try:
            size = int(h[124:136].rstrip(b"\0 ") or b"0", 8)
            chk = int(h[148:156].rstrip(b"\0 ") or b"0", 8)
        except ValueError:
            raise ShardError("corrupt tar header (bad size/checksum field)") from None
        if chk != sum(h[:148]) + 256 + sum(h[156:]):
            raise ShardError("corrupt tar header (checksum mismatch)")
        if h[156:157] not in (b"0", b"\0"):
            raise ShardError(f"unexpected tar member type {h[156:157]!r}")
        name = h[0:100].split(b"\0", 1)[0]
        prefix = h[345:500].split(b"\0", 1)[0] if h[257:262] == b"ustar" else b""
        if prefix:
            name = prefix + b"/" + name
        data = f.read(size)
        if len(data) < size:
            raise ShardError(f"tar member {name!r} is truncated")
        pad = -size % _BLOCK
        if pad:
            f.read(pad)
        yield name.decode("utf-8"), data


def iter_tar_samples(f: IO[bytes]) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Group a shard's members into ``(key, {ext: bytes})`` (streaming; members are never extracted)."""
    key: str | None = None
    group: dict[str, bytes] = {}
    for name, data in iter_tar_members(f):
        mt = _MEMBER_RE.match(name)
        if not mt:
            raise ShardError(f"unexpected member name {name!r}")
        k, ext = mt.group(1), mt.group(2)
        if k != key:
            if key is not None:
                yield key, group
            key, group = k, {}
        group[ext] = data
    if key is not None:
        yield key, group


def decode_sample(key: str, members: dict[str, bytes]) -> dict[str, Any]:
    """``{"__key__", "json": Sample, "txt": str, "png"?, "codes"?}``; :class:`ShardError` naming the
    sample and member when a member does not decode (a shard whose bytes changed)."""
    member = "json"
    try:
        if "json" not in members:
            raise ValueError("the member is missing")
        out: dict[str, Any] = {"__key__": key, "json": Sample.model_validate_json(members["json"])}
        member = "txt"
        out["txt"] = members.get("txt", b"").decode("utf-8")
        if "png" in members:
            out["png"] = members["png"]
        if "codes.npy" in members:
            member = "codes.npy"
            out["codes"] = npy_to_codes(members["codes.npy"])
    except (ValueError, ValidationError) as exc:  # UnicodeDecodeError is a ValueError
        detail = exc.errors()[0].get("msg") if isinstance(exc, ValidationError) else str(exc)
        raise ShardError(f"sample {key!r}: member {member} does not decode ({type(exc).__name__}: {detail})") from None
    return out


def in_shard(name: str, exc: ShardError) -> ShardError:
    """``exc`` with the shard's name in front (unless it names it already)."""
    return exc if name in str(exc) else ShardError(f"shard {name}: {exc}")


def check_shard_size(root: str, shard: ShardInfo) -> None:
    """Raise :class:`ShardError` if the shard is missing or its size differs from the manifest."""
    fs, path = fs_and_path(join(root, shard.name))
    if not fs.exists(path):
        raise ShardError(f"shard {shard.name} is missing from {root}")
    size = fs.size(path)
    if size != shard.bytes:
        raise ShardError(f"shard {shard.name} has {size} bytes, manifest says {shard.bytes} (truncated or replaced)")


def verify_shard(root: str, shard: ShardInfo) -> None:
    """Raise :class:`ShardError` naming the shard if it is missing, resized or its sha256 differs."""
    check_shard_size(root, shard)
    h = hashlib.sha256()
    fs, path = fs_and_path(join(root, shard.name))
    with fs.open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    if h.hexdigest() != shard.sha256:
        raise ShardError(f"shard {shard.name} is corrupt: sha256 {h.hexdigest()[:16]}… != manifest {shard.sha256[:16]}…")


class ShardSet:
    """A curated dataset directory (any fsspec URL): manifest + shards, read with verification."""

    def __init__(self, root: str, manifest: Manifest):
        self.root = root.rstrip("/")
        self.manifest = manifest

    @classmethod
    def open(cls, root: str) -> ShardSet:
        return cls(root, read_manifest(root))

    def shards(self, split: str | None = None) -> list[ShardInfo]:
        return [s for s in self.manifest.shards if split is None or s.split == split]

    def urls(self, split: str | None = None) -> list[str]:
        return [join(self.root, s.name) for s in self.shards(split)]

    def check_size(self, shard: ShardInfo) -> None:
        check_shard_size(self.root, shard)

    def verify_shard(self, shard: ShardInfo) -> None:
        verify_shard(self.root, shard)

    def verify(self, split: str | None = None) -> None:
        """Check every shard's presence, size and sha256; the error names all bad shards."""
        bad = []
        for s in self.shards(split):
            try:
                self.verify_shard(s)
            except ShardError as exc:
                bad.append(str(exc))
        if bad:
            raise ShardError("; ".join(bad))

    def _open_verified(self, shard: ShardInfo) -> IO[bytes]:
        """A readable file of the shard whose sha256 matched (local: re-opened; remote: spooled copy)."""
        self.check_size(shard)
        uri = join(self.root, shard.name)
        fs, path = fs_and_path(uri)
        if is_local(uri):
            self.verify_shard(shard)
            return fs.open(path, "rb")
        spool: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=256 << 20)  # noqa: SIM115 - returned open
        h = hashlib.sha256()
        with fs.open(path, "rb") as f:
            while block := f.read(1 << 22):
                h.update(block)
                spool.write(block)
        if h.hexdigest() != shard.sha256:
            spool.close()
            raise ShardError(f"shard {shard.name} is corrupt: sha256 does not match the manifest")
        spool.seek(0)
        return spool

    def iter_raw(self, split: str | None = None, *, verify: bool = True) -> Iterator[tuple[str, str, dict[str, bytes]]]:
        """Yield ``(shard name, key, {ext: bytes})`` for every sample of ``split``."""
        for s in self.shards(split):
            if verify:
                f = self._open_verified(s)
            else:
                fs, path = fs_and_path(join(self.root, s.name))
                f = fs.open(path, "rb")
            with f:
                n = 0
                try:
                    for key, members in iter_tar_samples(f):
                        n += 1
                        yield s.name, key, members
                except ShardError as exc:
                    raise in_shard(s.name, exc) from None
            if verify and n != s.count:
                raise ShardError(f"shard {s.name} holds {n} samples, manifest says {s.count}")

    def iter_samples(self, split: str | None = None, *, verify: bool = True) -> Iterator[dict[str, Any]]:
        """Decoded samples: ``{"__key__", "__shard__", "json": Sample, "txt": str, "png"?, "codes"?}``."""
        for shard, key, members in self.iter_raw(split, verify=verify):
            try:
                d = decode_sample(key, members)
            except ShardError as exc:
                raise in_shard(shard, exc) from None
            d["__shard__"] = shard
            yield d
