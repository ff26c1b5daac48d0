"""Experiment tracking (MLflow): tracking URI defaults, runs, lineage tags and the model registry."""

from __future__ import annotations

import os
from pathlib import Path

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
