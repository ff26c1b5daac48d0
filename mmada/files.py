"""Atomic writes and content hashes: the one way the platform puts a file or a directory in place.

A file under its final name is always complete: it is written to a temporary sibling
(``.<name>.<random>.partial``) and renamed over the target (on object stores the finished object
appears under its key in one piece). A directory (a model export, a tokenizer, an evaluation
folder) is built under a temporary sibling and renamed into place. Every writer takes the
target first: ``write_json(path, obj)``.

    write_json("runs/pipeline/models/sft.json", ref)
    with atomic_dir("runs/export") as tmp:      # fill tmp; it becomes runs/export on success
        model.save_pretrained(tmp)
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import fsspec
from fsspec.core import url_to_fs

from mmada.errors import MMaDAError

PARTIAL_SUFFIX = ".partial"


def _fs(uri: str | os.PathLike) -> tuple[fsspec.AbstractFileSystem, str]:
    try:
        return url_to_fs(str(uri))
    except ImportError as exc:
        proto = str(uri).split("://", 1)[0] if "://" in str(uri) else "file"
        raise MMaDAError(f"{str(uri)!r}: the {proto!r} filesystem needs an extra package ({exc})") from exc


def _is_local(fs: fsspec.AbstractFileSystem) -> bool:
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return "file" in protocols


@contextlib.contextmanager
def atomic_write(uri: str | os.PathLike) -> Iterator[IO[bytes]]:
    """Write ``uri`` (a path or fsspec URL) in binary through a temporary sibling renamed on success.

    On any exception the temporary is removed and nothing appears under the final name.
    """
    fs, path = _fs(uri)
    parent, _, name = path.rpartition("/")
    tmp = f"{parent}/.{name}.{uuid.uuid4().hex[:12]}{PARTIAL_SUFFIX}" if parent else f".{name}.{uuid.uuid4().hex[:12]}{PARTIAL_SUFFIX}"
    if parent:
        fs.makedirs(parent, exist_ok=True)
    try:
        with fs.open(tmp, "wb") as f:
            yield f
        if _is_local(fs):
            os.replace(tmp, path)  # atomic on POSIX, also over an existing file
        else:
            fs.mv(tmp, path)  # object stores: the copy appears whole under the final key
    except BaseException:
        with contextlib.suppress(Exception):
            if fs.exists(tmp):
                fs.rm(tmp)
        raise


def write_bytes(uri: str | os.PathLike, data: bytes) -> str | os.PathLike:
    with atomic_write(uri) as f:
        f.write(data)
    return uri


def write_text(path: str | os.PathLike, text: str) -> Path:
    write_bytes(path, text.encode("utf-8"))
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 2) -> Path:
    return write_text(path, json.dumps(obj, indent=indent) + "\n")


def write_jsonl(path: str | os.PathLike, rows: Iterable[Mapping]) -> Path:
    return write_text(path, "".join(json.dumps(r, default=str) + "\n" for r in rows))


def write_csv(path: str | os.PathLike, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> Path:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return write_text(path, buf.getvalue())


def save_png(path: str | os.PathLike, image) -> Path:
    """A PIL image as PNG."""
    with atomic_write(path) as f:
        image.save(f, format="PNG")
    return Path(path)


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike, *, replace: bool = True) -> Iterator[Path]:
    """A temporary sibling directory that becomes ``target`` when the block succeeds.

    ``replace=False`` is for caches filled by several processes at once: when ``target`` already
    exists at the end (another process finished first), that copy is kept and this one dropped.
    The files get the usual permissions (``mkdtemp`` makes private ones): exports are shared.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=PARTIAL_SUFFIX, dir=target.parent))
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        for p in [tmp, *tmp.rglob("*")]:
            p.chmod((0o777 if p.is_dir() else 0o666) & ~umask)
        if not target.exists():
            try:
                os.replace(tmp, target)
                return
            except OSError:  # a non-empty directory appeared there meanwhile (another process)
                if not target.exists():
                    raise
        if replace:
            old = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.old")
            target.rename(old)  # the old copy leaves in one rename, the new one arrives in another
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def remove_partials(base: str | os.PathLike) -> int:
    """Delete leftover ``*.partial`` temporaries directly below ``base`` (after a crash)."""
    fs, path = _fs(base)
    if not fs.exists(path):
        return 0
    n = 0
    for p in fs.ls(path, detail=False):
        if p.rsplit("/", 1)[-1].endswith(PARTIAL_SUFFIX):
            fs.rm(p, recursive=True)
            n += 1
    return n


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sha256_dir(path: str | os.PathLike) -> str:
    """sha256 over (relative name, file sha256) of every file under ``path``, in sorted order."""
    root = Path(path)
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(f"{f.relative_to(root).as_posix()}\0{sha256_file(f)}\n".encode())
    return h.hexdigest()


def sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()
