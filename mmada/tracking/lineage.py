"""Lineage facts recorded on runs and model versions: code commit, config hash, data digests, parent.

    tags = lineage_tags(cfg, data_inputs, parent={"name": "mmada-tiny", "version": "3"})

Tag names (on the run and on the registered model version):

    git_commit            ``git rev-parse HEAD`` (+ ``-dirty`` when the tree has local changes)
    config_hash           sha256 of the training config (``TrainConfig.config_hash``)
    stage                 pretrain | sft | …
    data.<task>.<name>    sha256 of that stream's ``manifest.json`` (what exactly was trained on)
    parent_model_version  ``NAME/VERSION`` of the registered version the run started from (if any)
"""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path
from typing import Any


@functools.lru_cache(maxsize=4)
def git_commit(cwd: str | None = None) -> str:
    """The current commit (``-dirty`` if tracked files changed), or ``unknown`` outside a git tree."""
    where = cwd or str(Path.cwd())
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head}-dirty" if dirty else head


def data_tags(inputs: list[dict[str, Any]]) -> dict[str, str]:
    return {f"data.{d['task']}.{d['name']}": d["digest"] for d in inputs}


def lineage_tags(*, stage: str, config_hash: str, inputs: list[dict[str, Any]],
                 parent: dict[str, Any] | None = None, init: str | None = None) -> dict[str, str]:
    tags = {"git_commit": git_commit(), "config_hash": config_hash, "stage": stage, **data_tags(inputs)}
    if parent:
        tags["parent_model_version"] = f"{parent['name']}/{parent['version']}"
    if init:
        tags["init"] = init
    return tags
