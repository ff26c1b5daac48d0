"""An output directory belongs to one dataset, and to one curation at a time.

* :func:`output_lock` — one curation per (local) output directory at a time. The lock is an
  ``flock`` on ``<out>/.curate.lock``: the kernel releases it when its process dies, so a run killed
  with ``kill -9`` never blocks the rerun. Object-store outputs have no lock (no such primitive).
* :func:`claim_output` — before a curation writes anything: a directory whose manifest or shard
  files name another dataset is refused (naming both) unless ``overwrite``; then the directory
  stops looking complete (``manifest.json`` goes first, so a failure from here on never leaves a
  manifest that names a stale or partial shard) and, when overwriting, the other dataset's shards go.
* :func:`remove_stale_shards` — just before the new manifest is written: shard files it will not
  list are deleted (a rerun whose shard set shrank leaves no orphan tar).
* :func:`disk_errors` — a full disk, a quota or a read-only filesystem is one line naming the output.

Only files that curation itself names are ever deleted: ``<dataset>-<split>-<NNNNNN>.tar``,
``manifest.json``, ``datacard.md`` and ``quarantine.jsonl``; anything else in the directory is left alone.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import re
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from mmada.data import io as dio
from mmada.data.errors import OutputError, ShardError
from mmada.data.shards import MANIFEST_NAME, read_manifest

LOCK_NAME = ".curate.lock"
QUARANTINE_NAME = "quarantine.jsonl"
DATACARD_NAME = "datacard.md"
OUTPUT_FILES = (MANIFEST_NAME, DATACARD_NAME, QUARANTINE_NAME)  # what finalize writes besides the shards
SHARD_RE = re.compile(r"^(?P<dataset>[a-z0-9][a-z0-9_-]{0,63})-(?:train|val)-\d{6}\.tar$")
# errors that say the output cannot take more bytes (not transient I/O errors, which flows retry)
NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS})

F = TypeVar("F", bound=Callable[..., Any])


def _names(output: str) -> list[str]:
    fs, path = dio.fs_and_path(output)
    if not fs.isdir(path):
        return []
    return [p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False)]


def shard_files(output: str) -> dict[str, str]:
    """``{file name: dataset}`` of the shard files directly under ``output``."""
    return {n: m.group("dataset") for n in _names(output) if (m := SHARD_RE.match(n))}


def datasets_in(output: str) -> set[str]:
    """The datasets ``output`` holds: its manifest's name and the names in its shard files."""
    found = set(shard_files(output).values())
    with contextlib.suppress(ShardError):
        found.add(read_manifest(output).name)
    return found


def claim_output(name: str, output: str, *, overwrite: bool = False) -> None:
    """Make ``output`` the (incomplete) output of dataset ``name``; see the module docstring."""
    others = sorted(datasets_in(output) - {name})
    if others and not overwrite:
        held = ", ".join(repr(o) for o in others)
        raise OutputError(f"output {output} holds dataset {held}; curating {name!r} there would replace it: "
                          "choose another output, or pass --overwrite (flow: overwrite=true) to replace it")
    fs, _ = dio.fs_and_path(output)
    for f in OUTPUT_FILES:  # the manifest first: from here on the directory is not complete
        _, path = dio.fs_and_path(dio.join(output, f))
        if fs.exists(path):
            fs.rm(path)
    for f, dataset in shard_files(output).items():
        if dataset != name:
            fs.rm(dio.fs_and_path(dio.join(output, f))[1])


def remove_stale_shards(output: str, keep: set[str]) -> list[str]:
    """Delete the shard files under ``output`` that are not in ``keep``; returns their names."""
    stale = sorted(set(shard_files(output)) - keep)
    fs, _ = dio.fs_and_path(output)
    for f in stale:
        fs.rm(dio.fs_and_path(dio.join(output, f))[1])
    return stale


@contextlib.contextmanager
def output_lock(output: str) -> Iterator[None]:
    """Hold ``<output>/.curate.lock`` for the block; :class:`OutputError` if another run holds it."""
    if not dio.is_local(output):
        yield
        return
    import fcntl

    _, root = dio.fs_and_path(output)
    os.makedirs(root, exist_ok=True)
    lock = os.path.join(root, LOCK_NAME)
    for _attempt in range(3):
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            who = f" (pid {holder})" if holder.isdigit() else ""
            raise OutputError(f"output {output} is being curated by another run{who}; wait for it to finish "
                              "or choose another output") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the holder finished and removed the file between our open and flock: retry
    else:
        raise OutputError(f"output {output}: could not take {LOCK_NAME} (it keeps changing)")
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock)  # while still holding it: a waiting opener sees a different inode and retries
        os.close(fd)


def disk_error(output: str, exc: OSError) -> OutputError | OSError:
    """A full disk (or quota, or read-only filesystem) as one line naming ``output``; other errors as they are."""
    if exc.errno not in NO_SPACE:
        return exc
    what = exc.strerror or os.strerror(exc.errno or 0)
    return OutputError(f"output {output}: {what} (errno {errno.errorcode.get(exc.errno or 0, exc.errno)}); the "
                       f"curation stopped and left no manifest: free space and rerun")


@contextlib.contextmanager
def disk_errors(output: str) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        err = disk_error(output, exc)
        if err is exc:
            raise
        raise err from exc


def writes_output(fn: F) -> F:
    """Decorate a stage ``fn(spec, plan, ...)``: a full disk under ``plan.output`` is an :class:`OutputError`."""

    @functools.wraps(fn)
    def wrapper(spec: Any, plan: Any, *args: Any, **kwargs: Any) -> Any:
        with disk_errors(plan.output):
            return fn(spec, plan, *args, **kwargs)

    return wrapper  # type: ignore[return-value]
