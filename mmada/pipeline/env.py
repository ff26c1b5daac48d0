"""Environment for processes the pipeline starts: offline, no telemetry, servers on 127.0.0.1.

Applied (as defaults, never overriding what the operator set) to ``dvc repro``, the stage
subprocesses, the Prefect server, the Prefect serve process, the MLflow server and the playground.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

OFFLINE_DEFAULTS = {
    "HF_HUB_OFFLINE": "1",
    "DO_NOT_TRACK": "1",
    "DVC_NO_ANALYTICS": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",          # MLflow checks DO_NOT_TRACK == "true" only
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT": "false",
    "PREFECT_CLOUD_ENABLE_ORCHESTRATION_TELEMETRY": "false",
    "PREFECT_SERVER_API_HOST": "127.0.0.1",
    "PREFECT_RUNNER_SERVER_HOST": "127.0.0.1",
    "PREFECT_WORKER_WEBSERVER_HOST": "127.0.0.1",
    "TOKENIZERS_PARALLELISM": "false",
    "GRADIO_ANALYTICS_ENABLED": "False",          # the playground (`mmada playground`)
}


def venv_bin() -> Path:
    return Path(sys.executable).parent


def child_env(extra: dict[str, str] | None = None, base: dict[str, str] | None = None) -> dict[str, str]:
    """``os.environ`` + offline defaults + this interpreter's bin dir first on PATH (so `python` is ours)."""
    env = dict(os.environ if base is None else base)
    for k, v in OFFLINE_DEFAULTS.items():
        env.setdefault(k, v)
    path = env.get("PATH", "")
    if not path.startswith(str(venv_bin()) + os.pathsep):
        env["PATH"] = f"{venv_bin()}{os.pathsep}{path}"
    env.update(extra or {})
    return env
