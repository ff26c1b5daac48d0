"""URIs and files for the data platform: scheme checks, fsspec access.

Every path in a data spec is a local path or an fsspec URL (``file://``, ``s3://``, ``gs://``,
``hf://``, ``memory://`` …). Specs can arrive from the Prefect UI, so URLs that run shell commands
(WebDataset's ``pipe:``) are refused unless the *operator* sets ``MMADA_ALLOW_PIPE_URLS=1`` in the
environment of the process that curates — a spec field cannot turn it on. Outputs are always
written atomically (:mod:`mmada.files`); names written below an output URI are checked so they
cannot leave it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import subprocess
from collections.abc import Iterator
from typing import IO

import braceexpand  # installed with webdataset
import fsspec
from fsspec.core import url_to_fs

from mmada.data.errors import DataError, SpecError

PIPE_ENV = "MMADA_ALLOW_PIPE_URLS"
# fsspec protocols a spec may name. Others (ftp, ssh, sftp, …) are refused so that a spec from the
# UI cannot reach arbitrary services; add one here after review if a deployment needs it.
ALLOWED_PROTOCOLS = frozenset(
    {"file", "local", "memory", "s3", "s3a", "gs", "gcs", "hf", "az", "abfs", "abfss", "http", "https",
     "simplecache", "filecache", "blockcache"}
)
# Pseudo-URIs of the built-in sources (see mmada.data.sources.builtin).
BUILTIN_URIS = frozenset({"builtin:arithmetic", "builtin:shapes", "sklearn:digits"})
SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")


def pipe_urls_allowed() -> bool:
    """Whether the operator allowed ``pipe:`` source URLs (``MMADA_ALLOW_PIPE_URLS=1``)."""
    return os.environ.get(PIPE_ENV, "").strip().lower() in {"1", "true", "yes"}


def check_uri(uri: str, *, field: str, allow_pipe: bool = True, allow_builtin: bool = False) -> str:
    """Validate one URI from a spec; raise :class:`SpecError` naming ``field`` if it is refused."""
    if not isinstance(uri, str) or not uri.strip():
        raise SpecError(f"{field}: empty URI")
    if uri.startswith("pipe:"):
        if not allow_pipe:
            raise SpecError(f"{field}: 'pipe:' URLs cannot be used here (outputs must be fsspec URLs)")
        if not pipe_urls_allowed():
            raise SpecError(
                f"{field}: 'pipe:' URLs run shell commands and are refused; an operator can allow them "
                f"by setting {PIPE_ENV}=1 in the environment (not in the spec)"
            )
        return uri
    if uri in BUILTIN_URIS:
        if not allow_builtin:
            raise SpecError(f"{field}: {uri!r} is a built-in source; use it with `type: builtin`")
        return uri
    for part in uri.split("::"):
        if "://" in part:
            scheme = part.split("://", 1)[0].lower()
        else:
            m = _SCHEME.match(part)
            scheme = m.group(1).lower() if m else None
            if scheme is not None and len(scheme) == 1:  # a Windows drive letter: C:\data
                scheme = None
            if scheme is not None:
                raise SpecError(
                    f"{field}: unsupported URI scheme {scheme!r} in {uri!r}; use a local path or one of "
                    f"{sorted(ALLOWED_PROTOCOLS)}"
                )
        if scheme is not None and scheme not in ALLOWED_PROTOCOLS:
            raise SpecError(
                f"{field}: unsupported URI scheme {scheme!r} in {uri!r}; use a local path or one of "
                f"{sorted(ALLOWED_PROTOCOLS)}"
            )
    return uri


def join(base: str, name: str) -> str:
    """``base/name`` where ``name`` is one plain file name that cannot leave ``base``."""
    if not SAFE_NAME.match(name) or ".." in name:
        raise DataError(f"refusing to write {name!r} below {base!r}: not a plain file name")
    return base.rstrip("/") + "/" + name


def join_under(root: str, relative: str, *, what: str) -> str:
    """Resolve ``relative`` (a path from a captions/LLaVA file) below ``root``, refusing escapes.

    Raises :class:`ValueError` (turned into a ``path_escape`` quarantine line by readers) for
    absolute paths, URLs and ``..`` segments that would leave ``root``.
    """
    rel = relative.replace("\\", "/")
    if rel.startswith("/") or "://" in rel or _SCHEME.match(rel):
        raise ValueError(f"{what} {relative!r} is absolute; only paths below the source root are allowed")
    parts: list[str] = []
    for seg in rel.split("/"):
        if seg in ("", "."):
            continue
        if seg == "..":
            if not parts:
                raise ValueError(f"{what} {relative!r} escapes the source root")
            parts.pop()
        else:
            parts.append(seg)
    if not parts:
        raise ValueError(f"{what} {relative!r} is empty")
    return root.rstrip("/") + "/" + "/".join(parts)


def check_no_link_out(root: str, uri: str, *, what: str) -> None:
    """Raise :class:`ValueError` if local ``uri`` below ``root`` is (or lies under) a symlink leading
    outside ``root``: a folder of data must not hand out files from elsewhere (``path_escape``).

    Links that stay inside ``root`` are fine; object stores have no links (nothing to check).
    """
    fs, path = fs_and_path(uri)
    if not _is_local_fs(fs):
        return
    real_root = os.path.realpath(fs_and_path(root)[1])
    real = os.path.realpath(path)
    if os.path.commonpath([real_root, real]) != real_root:
        raise ValueError(f"{what} {uri.removeprefix(root.rstrip('/') + '/')!r} is a link to {real!r}, "
                         "outside the source folder")


def fs_and_path(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem and path of ``uri`` (a missing protocol package is a clear DataError)."""
    try:
        fs, path = url_to_fs(uri)
    except ImportError as exc:
        proto = uri.split("://", 1)[0] if "://" in uri else "file"
        raise DataError(f"{uri!r}: the {proto!r} filesystem needs an extra package ({exc})") from exc
    return fs, path


def expand(uri: str) -> list[str]:
    """Expand braces (``{000..009}``) and globs (``*.jsonl``) into a sorted list of file URIs.

    A URI without patterns is returned as is (whether or not it exists; readers report missing
    files). Directories are not expanded here; readers that take a directory list it themselves.
    """
    if uri.startswith("pipe:"):
        return [uri]

    out: list[str] = []
    for one in braceexpand.braceexpand(uri):
        if any(c in one for c in "*?["):
            fs, path = fs_and_path(one)
            matches = sorted(fs.glob(path))
            if not matches:
                raise DataError(f"no files match {one!r}")
            out.extend(_unstrip(fs, one, m) for m in matches)
        else:
            out.append(one)
    return out


def _unstrip(fs: fsspec.AbstractFileSystem, original: str, path: str) -> str:
    if "://" not in original:
        return path
    return fs.unstrip_protocol(path)


def exists(uri: str) -> bool:
    fs, path = fs_and_path(uri)
    return fs.exists(path)


@contextlib.contextmanager
def open_read(uri: str) -> Iterator[IO[bytes]]:
    """Open a source for binary reading; ``pipe:CMD`` runs CMD (only where the operator allows it)."""
    if uri.startswith("pipe:"):
        if not pipe_urls_allowed():  # re-checked at use, not only at spec validation
            raise SpecError(f"'pipe:' URL refused ({PIPE_ENV} is not set): {uri!r}")
        # WebDataset semantics: the rest of the URL is a shell command (the operator opted in)
        proc = subprocess.Popen(uri[len("pipe:"):], shell=True, stdout=subprocess.PIPE)
        assert proc.stdout is not None
        try:
            yield proc.stdout
        finally:
            proc.stdout.close()
            rc = proc.wait()
            if rc != 0:
                raise DataError(f"{uri!r} exited with status {rc}")
        return
    fs, path = fs_and_path(uri)
    try:
        f = fs.open(path, "rb")
    except FileNotFoundError as exc:
        raise DataError(f"source file not found: {uri!r}") from exc
    except IsADirectoryError as exc:
        raise DataError(f"{uri!r} is a directory, not a file") from exc
    with f:
        yield f


def read_bytes(uri: str) -> bytes:
    with open_read(uri) as f:
        return f.read()


def sha256_uri(uri: str, block: int = 1 << 22) -> tuple[str, int]:
    """(sha256 hex, size in bytes) of a file, streamed."""
    h, n = hashlib.sha256(), 0
    with open_read(uri) as f:
        while chunk := f.read(block):
            h.update(chunk)
            n += len(chunk)
    return h.hexdigest(), n


def remove_tree(uri: str) -> None:
    fs, path = fs_and_path(uri)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def _is_local_fs(fs: fsspec.AbstractFileSystem) -> bool:
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return "file" in protocols


def is_local(uri: str) -> bool:
    return _is_local_fs(fs_and_path(uri)[0])
