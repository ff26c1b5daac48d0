"""Experiment tracking (MLflow): tracking URI defaults, fault-tolerant runs, lineage tags, the registry.

    mmada.tracking.client     Tracker: retried/reported MLflow calls, background metric sender
    mmada.tracking.logger     TrackerLogger: the Lightning logger over a Tracker
    mmada.tracking.registry   register_export (HF export → model version + alias), resolve_model
    mmada.tracking.lineage    git commit, config hash, data digests, parent version tags

Here: the default tracking URI and artifact root, and the playground address of a model version.

Heavy imports (mlflow) stay inside those modules so ``import mmada.tracking`` is cheap.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import quote

DEFAULT_STORE_DIR = Path("runs")


def default_tracking_uri() -> str:
    """The MLflow tracking URI: ``$MLFLOW_TRACKING_URI`` if set, else a SQLite store in ``./runs``.

    MLflow ≥ 3.7 treats SQLite as the default backend (the file store is legacy), so the project
    keeps ``runs/mlflow.db`` beside its other run outputs.
    """
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    DEFAULT_STORE_DIR.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(DEFAULT_STORE_DIR / 'mlflow.db').resolve()}"


def artifact_root_for(tracking_uri: str) -> str | None:
    """Where new experiments keep artifacts: beside a SQLite store (``<db dir>/mlartifacts``).

    Without this MLflow puts them in ``./mlruns`` of whatever directory the process runs in. For
    a tracking server the server decides (None).
    """
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri[len("sqlite:///"):])
        return (db.parent / "mlartifacts").resolve().as_uri()
    return None


DEFAULT_PLAYGROUND_UI = "http://127.0.0.1:7860"


def playground_url(model_uri: str) -> str:
    """The playground page of a model (``models:/NAME/VERSION`` or a directory), e.g. for a version's
    description. The base is ``$MMADA_PLAYGROUND_UI`` (set by ``mmada serve``), else the default port."""
    base = os.environ.get("MMADA_PLAYGROUND_UI", DEFAULT_PLAYGROUND_UI).rstrip("/")
    return f"{base}/?model={quote(model_uri, safe=':/@')}"
