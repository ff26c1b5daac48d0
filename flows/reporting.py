"""Prefect artifacts for pipeline stages: a progress bar, the MLflow run link, summaries, tables.

:class:`PrefectReporter` implements :class:`mmada.pipeline.report.Reporter` for code that runs in
a flow or task run (artifacts attach to it). The ``pipeline`` flow also replays into it the typed
events a stage subprocess writes (:mod:`mmada.pipeline.events`), so it shows the live progress of
the stages it runs as subprocesses; their console output goes to the run's log as it is.
"""

from __future__ import annotations

import re
import threading
import time
from typing import Any

from prefect import get_run_logger
from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)


def artifact_key(*parts: str) -> str:
    """Prefect artifact keys: lowercase letters, digits and dashes."""
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", "-".join(parts).lower())).strip("-")


class PrefectReporter:
    """Reporter whose calls become artifacts of the current flow/task run (safe from a reader thread).

    Progress and links are also logged, unless ``log_events`` is off (a stage subprocess whose console
    lines, which say the same, go to the log already).
    """

    def __init__(self, stage: str, *, min_interval: float = 2.0, log_events: bool = True) -> None:
        self.stage = stage
        self.log_events = log_events
        self.log = get_run_logger()
        self.min_interval = min_interval
        self._lock = threading.Lock()
        self._links: set[str] = set()
        self._last = 0.0
        self._progress_id = create_progress_artifact(progress=0.0, key=artifact_key(stage, "progress"),
                                                     description=f"progress of stage {stage}")

    def progress(self, fraction: float, message: str) -> None:
        pct = round(min(max(fraction, 0.0), 1.0) * 100, 1)
        with self._lock:
            update_progress_artifact(self._progress_id, progress=pct)
            now = time.monotonic()
            if self.log_events and (pct >= 100 or now - self._last >= self.min_interval):
                self._last = now
                self.log.info("[%s] %d%% %s", self.stage, int(pct), message)

    def link(self, url: str, text: str) -> None:
        with self._lock:
            if url in self._links:
                return
            self._links.add(url)
        create_link_artifact(url, link_text=f"{text} ({self.stage})", key=artifact_key(self.stage, "mlflow-run"),
                             description=f"The MLflow run of stage {self.stage}")
        if self.log_events:
            self.log.info("[%s] %s: %s", self.stage, text, url)

    def markdown(self, text: str, description: str) -> None:
        create_markdown_artifact(text, key=artifact_key(self.stage, "summary"), description=description)

    def table(self, rows: list[dict[str, Any]], description: str) -> None:
        if rows:
            create_table_artifact(rows, key=artifact_key(self.stage, "table"), description=description)

    def line(self, text: str) -> None:
        if text.strip():
            self.log.info("%s", text)
