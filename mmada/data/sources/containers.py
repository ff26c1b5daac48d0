"""Streaming readers for the file layouts sources come in (format-agnostic).

JSON Lines (byte-range chunks), JSON arrays (incremental decoding), Parquet (row-group chunks),
HF ``datasets`` ``save_to_disk`` directories (Arrow IPC streams, read with pyarrow — the
``datasets`` package is not needed), WebDataset/img2dataset tars (member groups) and IDX files
(MNIST layout). Each yields :class:`RawRecord` / :class:`RawReject` one record at a time, so a
100k-record source is never held in memory at once.
"""

from __future__ import annotations

import codecs
import contextlib
import gzip
import json
import re
import struct
import tarfile
from collections.abc import Iterator
from typing import IO, Any

import fsspec
import numpy as np

from mmada.data.errors import DataError
from mmada.data.io import fs_and_path, open_read
from mmada.data.sources.base import Chunk, RawRecord, RawReject, excerpt_of

COMPRESSED = (".gz", ".bz2", ".xz", ".zst", ".lz4")
_BLOCK = 1 << 22
BOM = codecs.BOM_UTF8  # a UTF-8 byte-order mark some editors write first: accepted, not part of the data


def basename(uri: str | None) -> str:
    return "" if uri is None else uri.rstrip("/").rsplit("/", 1)[-1]


def _seekable(uri: str) -> bool:
    return not uri.startswith("pipe:") and not uri.lower().endswith(COMPRESSED)


@contextlib.contextmanager
def open_decompressed(uri: str) -> Iterator[IO[bytes]]:
    """Open for reading, transparently decompressing .gz/.bz2/.xz/… (fsspec compression)."""
    if uri.startswith("pipe:"):
        with open_read(uri) as f:
            yield f
        return
    try:
        of = fsspec.open(uri, "rb", compression="infer")
        f = of.open()
    except FileNotFoundError as exc:
        raise DataError(f"source file not found: {uri!r}") from exc
    except IsADirectoryError as exc:
        raise DataError(f"{uri!r} is a directory, not a file") from exc
    try:
        yield f
    finally:
        f.close()


# ------------------------------------------------------------------------------------------------
# JSON Lines


def plan_jsonl(source: str, files: list[str], chunk_size: int, start_index: int = 0) -> list[Chunk]:
    """Cut each file into byte ranges of ``chunk_size`` lines (one pass counting newlines)."""
    chunks: list[Chunk] = []
    for fi, uri in enumerate(files):
        if not _seekable(uri):
            chunks.append(Chunk(source, start_index + len(chunks), uri, fi, 0, None, 1))
            continue
        bounds = [(0, 1)]  # (byte offset, line number) of each chunk start
        with open_read(uri) as f:
            pos, line, in_chunk = 0, 1, 0
            while block := f.read(_BLOCK):
                i = 0
                while True:
                    need = chunk_size - in_chunk
                    n = block.count(b"\n", i)
                    if n < need:
                        in_chunk += n
                        line += n
                        break
                    # advance to the `need`-th newline of the rest of this block
                    for _ in range(need):
                        i = block.index(b"\n", i) + 1
                    line += need
                    in_chunk = 0
                    bounds.append((pos + i, line))
                pos += len(block)
        # drop a trailing boundary at EOF (no records after it)
        if len(bounds) > 1 and bounds[-1][0] >= pos:
            bounds.pop()
        for k, (off, ln) in enumerate(bounds):
            stop = bounds[k + 1][0] if k + 1 < len(bounds) else None
            chunks.append(Chunk(source, start_index + len(chunks), uri, fi, off, stop, ln))
    return chunks


def iter_lines(f: IO[bytes], max_bytes: int, block: int = 1 << 20) -> Iterator[tuple[bytes | None, int, bytes]]:
    """Yield ``(line, n_bytes, head)`` per line; ``line`` is None for a line over ``max_bytes``.

    Works on any readable binary file (fsspec remote files have no ``readline(limit)``); an
    oversized line is skipped block by block, never held in memory whole.
    """
    buf, i = b"", 0
    while True:
        nl = buf.find(b"\n", i)
        if nl >= 0:
            line = buf[i:nl + 1]
            i = nl + 1
            yield line, len(line), b""
            continue
        if len(buf) - i > max_bytes + 2:  # oversized line: discard up to its newline
            head, total = buf[i:i + 800], len(buf) - i
            buf, i = b"", 0
            while True:
                more = f.read(block)
                if not more:
                    yield None, total, head
                    return
                nl = more.find(b"\n")
                if nl >= 0:
                    yield None, total + nl + 1, head
                    buf, i = more[nl + 1:], 0
                    break
                total += len(more)
            continue
        more = f.read(block)
        if not more:
            if i < len(buf):
                rest = buf[i:]
                yield rest, len(rest), b""
            return
        buf, i = buf[i:] + more, 0


def read_jsonl(chunk: Chunk, max_bytes: int) -> Iterator[RawRecord | RawReject]:
    """Yield one record per non-blank line of the chunk's byte range (parsed JSON objects)."""
    uri = chunk.file
    assert uri is not None
    name = basename(uri)
    seen_any = False
    with open_decompressed(uri) as f:
        if chunk.start:
            f.seek(chunk.start)
        pos, line_no = chunk.start, chunk.first
        for line, nbytes, head in iter_lines(f, max_bytes):
            if chunk.stop is not None and pos >= chunk.stop:
                break
            pos += nbytes
            uid, where = f"{chunk.file_index}-{line_no:09d}", f"line {line_no}"
            line_no += 1
            if line is None:
                seen_any = True
                yield RawReject(uid, where, uri, "record_too_large", f"{nbytes} bytes > {max_bytes}", excerpt_of(head))
                continue
            content = line.rstrip(b"\r\n")
            if pos == nbytes:  # the file's first line
                content = content.removeprefix(BOM)
            if not content.strip():
                continue  # blank lines hold no record
            seen_any = True
            if len(content) > max_bytes:
                yield RawReject(uid, where, uri, "record_too_large", f"{len(content)} bytes > {max_bytes}", excerpt_of(content))
                continue
            try:
                text = content.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield RawReject(uid, where, uri, "not_utf8", str(exc), excerpt_of(content))
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                yield RawReject(uid, where, uri, "bad_json", str(exc), excerpt_of(text))
                continue
            if not isinstance(obj, dict):
                yield RawReject(uid, where, uri, "wrong_type", f"line is a JSON {type(obj).__name__}, not an object", excerpt_of(text))
                continue
            yield RawRecord(uid, where, uri, obj, excerpt_of(text))
    if not seen_any and chunk.start == 0 and chunk.stop is None:
        yield RawReject(f"{chunk.file_index}-file", "file", uri, "empty_file", f"{name} has no records")


# ------------------------------------------------------------------------------------------------
# JSON arrays (LLaVA, Alpaca's alpaca_data.json) — decoded incrementally


def read_json_array(chunk: Chunk, max_bytes: int) -> Iterator[RawRecord | RawReject]:
    uri = chunk.file
    assert uri is not None
    name = basename(uri)
    dec = json.JSONDecoder()
    utf8 = codecs.getincrementaldecoder("utf-8-sig")()  # drops a leading byte-order mark
    buf, i, eof, item = "", 0, False, 0
    with open_decompressed(uri) as f:

        def more() -> bool:
            nonlocal buf, i, eof
            if eof:
                return False
            block = f.read(1 << 20)
            if not block:
                eof = True
                buf = buf[i:] + utf8.decode(b"", final=True)
                i = 0
                return False
            buf = buf[i:] + utf8.decode(block)
            i = 0
            return True

        def skip_ws() -> None:
            nonlocal i
            while True:
                while i < len(buf) and buf[i] in " \t\r\n":
                    i += 1
                if i < len(buf) or not more():
                    return

        try:
            skip_ws()
            if i >= len(buf):
                yield RawReject("0-file", "file", uri, "empty_file", f"{name} is empty")
                return
            if buf[i] != "[":
                yield RawReject("0-file", "file", uri, "wrong_type", f"{name}: top level is not a JSON array",
                                excerpt_of(buf[i:i + 200]))
                return
            i += 1
            while True:
                skip_ws()
                if i >= len(buf):
                    yield RawReject(f"0-{item:09d}", f"item {item}", uri, "bad_json", "file ends inside the array")
                    return
                if buf[i] == "]":
                    break
                uid, where = f"0-{item:09d}", f"item {item}"
                while True:
                    try:
                        obj, end = dec.raw_decode(buf, i)
                        break
                    except json.JSONDecodeError as exc:
                        if len(buf) - i > max_bytes:
                            yield RawReject(uid, where, uri, "record_too_large", f"item exceeds {max_bytes} bytes")
                            return  # cannot resynchronise inside an oversized value
                        if not more():
                            yield RawReject(uid, where, uri, "bad_json", str(exc), excerpt_of(buf[i:i + 200]))
                            return
                if end - i > max_bytes:
                    yield RawReject(uid, where, uri, "record_too_large", f"{end - i} chars > {max_bytes}")
                elif not isinstance(obj, dict):
                    yield RawReject(uid, where, uri, "wrong_type", f"item is a JSON {type(obj).__name__}, not an object")
                else:
                    yield RawRecord(uid, where, uri, obj, excerpt_of(buf[i:end]))
                i = end
                item += 1
                skip_ws()
                if i < len(buf) and buf[i] == ",":
                    i += 1
                elif i < len(buf) and buf[i] == "]":
                    break
                else:
                    yield RawReject(f"0-{item:09d}", f"item {item}", uri, "bad_json", "expected ',' or ']' between items",
                                    excerpt_of(buf[i:i + 200]))
                    return
        except UnicodeDecodeError as exc:
            yield RawReject(f"0-{item:09d}", f"item {item}", uri, "not_utf8", str(exc))


# ------------------------------------------------------------------------------------------------
# Parquet


def _approx_size(row: dict[str, Any]) -> int:
    n = 0
    for v in row.values():
        if isinstance(v, (bytes, str)):
            n += len(v)
        elif isinstance(v, dict):
            n += _approx_size(v)
        elif isinstance(v, list):
            n += sum(len(x) if isinstance(x, (bytes, str)) else 8 for x in v)
        else:
            n += 8
    return n


def plan_parquet(source: str, files: list[str], chunk_size: int) -> list[Chunk]:
    import pyarrow.parquet as pq

    chunks: list[Chunk] = []
    for fi, uri in enumerate(files):
        try:
            fs, path = fs_and_path(uri)
            with fs.open(path, "rb") as f:
                md = pq.ParquetFile(f).metadata
            groups = [md.row_group(g).num_rows for g in range(md.num_row_groups)]
        except FileNotFoundError as exc:
            raise DataError(f"source file not found: {uri!r}") from exc
        except Exception as exc:  # not a parquet file: one unreadable unit
            chunks.append(Chunk(source, len(chunks), uri, fi, 0, None, 0, {"error": f"{type(exc).__name__}: {exc}"}))
            continue
        if not groups or sum(groups) == 0:
            chunks.append(Chunk(source, len(chunks), uri, fi, 0, 0, 0, {"row_groups": []}))
            continue
        row, cur, cur_rows, first = 0, [], 0, 0
        for g, n in enumerate(groups):
            if not cur:
                first = row
            cur.append(g)
            cur_rows += n
            row += n
            if cur_rows >= chunk_size:
                chunks.append(Chunk(source, len(chunks), uri, fi, first, row, first, {"row_groups": cur}))
                cur, cur_rows = [], 0
        if cur:
            chunks.append(Chunk(source, len(chunks), uri, fi, first, row, first, {"row_groups": cur}))
    return chunks


def read_parquet(chunk: Chunk, max_bytes: int, columns: list[str] | None = None) -> Iterator[RawRecord | RawReject]:
    import pyarrow.parquet as pq

    uri = chunk.file
    assert uri is not None
    name = basename(uri)
    if "error" in chunk.extra:
        yield RawReject(f"{chunk.file_index}-file", "file", uri, "unreadable_file", chunk.extra["error"])
        return
    groups = chunk.extra.get("row_groups", [])
    if not groups:
        yield RawReject(f"{chunk.file_index}-file", "file", uri, "empty_file", f"{name} has no rows")
        return
    fs, path = fs_and_path(uri)
    with fs.open(path, "rb") as f:
        pf = pq.ParquetFile(f)
        cols = [c for c in (columns or []) if c in pf.schema_arrow.names] or None
        row = chunk.first
        for batch in pf.iter_batches(batch_size=512, row_groups=groups, columns=cols):
            for rec in batch.to_pylist():
                uid, where = f"{chunk.file_index}-{row:09d}", f"row {row}"
                row += 1
                size = _approx_size(rec)
                if size > max_bytes:
                    yield RawReject(uid, where, uri, "record_too_large", f"~{size} bytes > {max_bytes}")
                    continue
                yield RawRecord(uid, where, uri, rec, None)


# ------------------------------------------------------------------------------------------------
# HF `datasets` save_to_disk (Arrow IPC stream files + state.json)


def hf_disk_files(uri: str, split: str) -> list[str]:
    """Arrow files of a ``save_to_disk`` directory (a Dataset, or one split of a DatasetDict)."""
    fs, path = fs_and_path(uri)
    base = uri.rstrip("/")
    if fs.exists(f"{path.rstrip('/')}/dataset_dict.json"):
        with fs.open(f"{path.rstrip('/')}/dataset_dict.json", "rb") as f:
            splits = json.load(f).get("splits", [])
        if split not in splits:
            raise DataError(f"{uri!r} is a DatasetDict with splits {splits}; split {split!r} is not one of them")
        base, path = f"{base}/{split}", f"{path.rstrip('/')}/{split}"
    state = f"{path.rstrip('/')}/state.json"
    if not fs.exists(state):
        raise DataError(f"{uri!r} is not a `datasets` save_to_disk directory (no state.json / dataset_dict.json)")
    with fs.open(state, "rb") as f:
        files = [d["filename"] for d in json.load(f).get("_data_files", [])]
    for fn in files:
        if "/" in fn or ".." in fn:
            raise DataError(f"{state}: data file name {fn!r} is not a plain file name")
    return [f"{base}/{fn}" for fn in files]


def read_arrow_stream(chunk: Chunk, max_bytes: int) -> Iterator[RawRecord | RawReject]:
    import pyarrow as pa

    uri = chunk.file
    assert uri is not None
    name = basename(uri)
    row = 0
    try:
        with open_read(uri) as f:
            reader = pa.ipc.open_stream(f)
            for batch in reader:
                for rec in batch.to_pylist():
                    uid, where = f"{chunk.file_index}-{row:09d}", f"row {row}"
                    row += 1
                    if _approx_size(rec) > max_bytes:
                        yield RawReject(uid, where, uri, "record_too_large", f"> {max_bytes} bytes")
                        continue
                    yield RawRecord(uid, where, uri, rec, None)
    except (pa.ArrowInvalid, OSError) as exc:
        if isinstance(exc, DataError):
            raise
        yield RawReject(f"{chunk.file_index}-{row:09d}", f"row {row}", uri, "unreadable_file", f"{type(exc).__name__}: {exc}")
        return
    if row == 0:
        yield RawReject(f"{chunk.file_index}-file", "file", uri, "empty_file", f"{name} has no rows")


# ------------------------------------------------------------------------------------------------
# WebDataset / img2dataset tars: consecutive members sharing a key form one record

_KEY_RE = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")  # webdataset's base_plus_ext


def read_tar_groups(chunk: Chunk, max_bytes: int) -> Iterator[RawRecord | RawReject]:
    """Yield ``{ext: bytes}`` dicts per sample key; broken tars end with a ``truncated_tar`` reject."""
    uri = chunk.file
    assert uri is not None
    name = basename(uri)
    fi = chunk.file_index
    group_key: str | None = None
    group: dict[str, bytes] = {}
    too_large: list[str] = []
    n_groups = 0
    member_no = -1

    def flush() -> RawRecord | RawReject | None:
        nonlocal group_key, group, too_large, n_groups
        if group_key is None:
            return None
        uid, where = f"{fi}-{n_groups:09d}", f"sample {group_key!r}"
        n_groups += 1
        out: RawRecord | RawReject
        if too_large:
            out = RawReject(uid, where, uri, "record_too_large", f"members {too_large} exceed {max_bytes} bytes")
        else:
            out = RawRecord(uid, where, uri, {"__key__": group_key, **group}, None)
        group_key, group, too_large = None, {}, []
        return out

    try:
        with open_decompressed(uri) as f:
            try:
                tf = tarfile.open(fileobj=f, mode="r|")  # noqa: SIM115 - closed by the `with tf` below
            except tarfile.ReadError as exc:
                reason = "empty_file" if "empty" in str(exc).lower() else "unreadable_file"
                yield RawReject(f"{fi}-file", "file", uri, reason, f"{name}: {exc}")
                return
            with tf:
                for m in tf:
                    member_no += 1
                    if m.isdir():
                        continue
                    mname = m.name
                    if not m.isfile() or mname.startswith("/") or ".." in mname.split("/"):
                        kind = "link" if (m.issym() or m.islnk()) else ("special file" if not m.isfile() else "path")
                        yield RawReject(f"{fi}-m{member_no:09d}", f"member {member_no} ({mname!r})", uri, "unsafe_member",
                                        f"{kind} member refused")
                        continue
                    mt = _KEY_RE.match(mname)
                    if not mt:
                        yield RawReject(f"{fi}-m{member_no:09d}", f"member {member_no} ({mname!r})", uri, "missing_field",
                                        "member name has no extension (expected <key>.<ext>)")
                        continue
                    key, ext = mt.group(1), mt.group(2).lower()
                    if key != group_key:
                        done = flush()
                        if done is not None:
                            yield done
                        group_key = key
                    if m.size > max_bytes:
                        too_large.append(ext)
                        continue
                    fobj = tf.extractfile(m)
                    assert fobj is not None
                    data = fobj.read()
                    if len(data) != m.size:
                        raise tarfile.ReadError(f"unexpected end of data in member {mname!r}")
                    group[ext] = data
        done = flush()
        if done is not None:
            yield done
    except (tarfile.ReadError, EOFError, OSError, gzip.BadGzipFile) as exc:
        if isinstance(exc, DataError):
            raise
        where = f"sample {group_key!r}" if group_key is not None else f"member {member_no + 1}"
        yield RawReject(f"{fi}-{n_groups:09d}", where, uri, "truncated_tar", f"{name}: {type(exc).__name__}: {exc}")
        return
    if n_groups == 0 and member_no < 0:
        yield RawReject(f"{fi}-file", "file", uri, "empty_file", f"{name} has no members")


# ------------------------------------------------------------------------------------------------
# IDX (MNIST / Fashion-MNIST): magic (0, 0, dtype, ndim), ndim big-endian uint32 dims, raw data

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def idx_header(f: IO[bytes], uri: str) -> tuple[np.dtype, tuple[int, ...], int]:
    """(dtype, dims, header length) of an IDX file; :class:`DataError` if it is not one."""
    head = f.read(4)
    if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] not in _IDX_DTYPES:
        raise DataError(f"{uri!r} is not an IDX file (bad magic {head!r})")
    ndim = head[3]
    raw = f.read(4 * ndim)
    if len(raw) < 4 * ndim:
        raise DataError(f"{uri!r}: truncated IDX header")
    dims = struct.unpack(f">{ndim}I", raw)
    return np.dtype(_IDX_DTYPES[head[2]]), tuple(dims), 4 + 4 * ndim


def read_idx_records(uri: str, start: int, stop: int) -> Iterator[tuple[int, np.ndarray | None]]:
    """Yield (index, item) for items [start, stop); item None where the file is truncated."""
    with open_decompressed(uri) as f:
        dtype, dims, hlen = idx_header(f, uri)
        item_shape = dims[1:]
        item_bytes = int(np.prod(item_shape, dtype=np.int64)) * dtype.itemsize if item_shape else dtype.itemsize
        f.seek(hlen + start * item_bytes)
        truncated = False
        for i in range(start, stop):
            raw = b"" if truncated else f.read(item_bytes)
            if len(raw) < item_bytes:
                truncated = True
                yield i, None
                continue
            yield i, np.frombuffer(raw, dtype=dtype).reshape(item_shape)
