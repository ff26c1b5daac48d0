"""Errors raised by the data platform (specs, sources, curation, shards).

All are :class:`mmada.errors.MMaDAError` subclasses, so the CLI prints them as ``error: …`` and exits
with status 2. Record-level problems are *not* errors: they become quarantine lines (see
:class:`RecordRejected`), and only a broken invariant (counts that do not add up, a corrupt shard)
stops a run.
"""

from __future__ import annotations

from mmada.errors import ConfigError, MMaDAError


class SpecError(ConfigError):
    """A data spec is invalid; the message names the field (e.g. ``sources.0.uri``)."""


class DataError(MMaDAError):
    """A data source cannot be read at all (missing file, unreadable directory)."""


class ShardError(MMaDAError):
    """A shard is missing, truncated or does not match the sha256 recorded in its manifest."""


class CountMismatchError(MMaDAError):
    """``read = kept + rejected`` does not hold for a source: a record was lost or double counted."""


class RecordRejected(Exception):
    """Raised inside normalisers/filters to send one record to quarantine with ``reason``."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class OutputError(MMaDAError):
    """The output directory cannot take this curation: it holds another dataset, another curation is
    writing it, or it is full (no space, quota, read-only)."""
