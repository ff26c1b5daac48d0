"""Where a running stage reports to: the console (``dvc repro``, ``mmada pipeline``) or Prefect artifacts.

Stage code calls a :class:`Reporter`; :class:`ConsoleReporter` prints lines for people, such as

    [pretrain] 45% step 135/300 train/loss 4.112

The Prefect reporter (in ``flows/``) turns the same calls into progress, link, markdown and table
artifacts; a stage that runs as a subprocess of a flow also writes them as typed events to the file
the flow follows (:mod:`mmada.pipeline.events`).
"""

from __future__ import annotations

import sys
import time
from typing import Any, Protocol


class Reporter(Protocol):
    def progress(self, fraction: float, message: str) -> None: ...

    def link(self, url: str, text: str) -> None: ...

    def markdown(self, text: str, description: str) -> None: ...

    def table(self, rows: list[dict[str, Any]], description: str) -> None: ...

    def line(self, text: str) -> None: ...


class ConsoleReporter:
    """Prints progress (at most every ``min_interval`` s unless it moved by ≥10 %), links and summaries."""

    def __init__(self, stage: str, *, stream=None, min_interval: float = 2.0, echo_job_output: bool = False) -> None:
        self.stage = stage
        self.stream = stream or sys.stdout
        self.min_interval = min_interval
        self.echo = echo_job_output
        self._last = (-1.0, 0.0)
        self._links: set[str] = set()
        self._last_msg = ""

    def _print(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def progress(self, fraction: float, message: str) -> None:
        fraction = min(max(fraction, 0.0), 1.0)
        last_frac, last_t = self._last
        now = time.monotonic()
        if fraction < 1.0 and fraction - last_frac < 0.1 and now - last_t < self.min_interval and last_frac >= 0:
            return
        if message == self._last_msg and fraction == last_frac:
            return
        self._last_msg = message
        self._last = (fraction, now)
        self._print(f"[{self.stage}] {int(fraction * 100):3d}% {message}")

    def link(self, url: str, text: str) -> None:
        if url not in self._links:
            self._links.add(url)
            self._print(f"[{self.stage}] {text}: {url}")

    def markdown(self, text: str, description: str) -> None:
        pass  # summaries are printed by `mmada pipeline summary`; the console shows progress only

    def table(self, rows: list[dict[str, Any]], description: str) -> None:
        pass

    def line(self, text: str) -> None:
        if self.echo:
            self._print(f"  | {text}")


class TeeReporter:
    """Sends every call to each of ``reporters`` (the console and the event file of a flow's stage)."""

    def __init__(self, *reporters: Reporter) -> None:
        self.reporters = reporters

    def progress(self, fraction: float, message: str) -> None:
        for r in self.reporters:
            r.progress(fraction, message)

    def link(self, url: str, text: str) -> None:
        for r in self.reporters:
            r.link(url, text)

    def markdown(self, text: str, description: str) -> None:
        for r in self.reporters:
            r.markdown(text, description)

    def table(self, rows: list[dict[str, Any]], description: str) -> None:
        for r in self.reporters:
            r.table(rows, description)

    def line(self, text: str) -> None:
        for r in self.reporters:
            r.line(text)


# ------------------------------------------------------------------------------------------------
# markdown summaries (Prefect artifacts)


def fmt(v: Any) -> str:
    return "–" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)


def metrics_md(title: str, metrics: dict[str, Any], url: str, extra: list[str] | None = None) -> str:
    lines = [f"### {title}", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {fmt(v)} |" for k, v in metrics.items()]
    lines += ["", f"[MLflow run]({url})", *[f"- {e}" for e in extra or []]]
    return "\n".join(lines)
