"""Prefect artifacts for pipeline stages: a progress bar, the MLflow run link, summaries, tables.

:class:`PrefectReporter` implements :class:`mmada.pipeline.report.Reporter` for code that runs in
a flow or task run (artifacts attach to it); :func:`follow_stage_output` turns the console lines
of a stage subprocess (``[sft]  45% step 90/200 …``, ``[sft] MLflow run: http://…``) into the same
artifacts, so the ``pipeline`` flow shows live progress of stages it runs as subprocesses.
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

from mmada.pipeline.report import parse_progress

LINK_RE = re.compile(r"^\[(?P<stage>[A-Za-z0-9_-]+)\] (?P<text>MLflow run): (?P<url>https?://\S+)$")


def artifact_key(*parts: str) -> str:
    """Prefect artifact keys: lowercase letters, digits and dashes."""
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", "-".join(parts).lower())).strip("-")


class PrefectReporter:
    """Reporter whose calls become artifacts of the current flow/task run (safe from a reader thread)."""

    def __init__(self, stage: str, *, min_interval: float = 2.0) -> None:
        self.stage = stage
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
            if pct >= 100 or now - self._last >= self.min_interval:
                self._last = now
                self.log.info("[%s] %d%% %s", self.stage, int(pct), message)

    def link(self, url: str, text: str) -> None:
        with self._lock:
            if url in self._links:
                return
            self._links.add(url)
        create_link_artifact(url, link_text=f"{text} ({self.stage})", key=artifact_key(self.stage, "mlflow-run"),
                             description=f"The MLflow run of stage {self.stage}")
        self.log.info("[%s] %s: %s", self.stage, text, url)

    def markdown(self, text: str, description: str) -> None:
        create_markdown_artifact(text, key=artifact_key(self.stage, "summary"), description=description)

    def table(self, rows: list[dict[str, Any]], description: str) -> None:
        if rows:
            create_table_artifact(rows, key=artifact_key(self.stage, "table"), description=description)

    def line(self, text: str) -> None:
        if text.strip():
            self.log.info("%s", text)


def follow_stage_output(reporter: PrefectReporter):
    """A line callback for a stage subprocess: progress and link lines → artifacts, the rest → the log."""

    def on_line(line: str) -> None:
        if (p := parse_progress(line)) is not None:
            reporter.progress(p[1], p[2])
        elif (m := LINK_RE.match(line.strip())) is not None:
            reporter.link(m["url"], m["text"])
        else:
            reporter.line(line)

    return on_line
