"""Where a running stage reports to: the console (``dvc repro``, ``mmada pipeline``) or Prefect artifacts.

Stage code calls a :class:`Reporter`; :class:`ConsoleReporter` prints lines such as

    [pretrain] 45% step 135/300 train/loss 4.112

which people read and which the Prefect ``pipeline`` flow parses (:func:`parse_progress`) into a
progress artifact while the stage runs as its subprocess. The Prefect reporter (in ``flows/``)
turns the same calls into progress, link, markdown and table artifacts.
"""

from __future__ import annotations

import re
import sys
import time
from typing import Any, Protocol

PROGRESS_RE = re.compile(r"^\[(?P<stage>[A-Za-z0-9_-]+)\] +(?P<pct>\d{1,3})% (?P<msg>.*)$")


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


def parse_progress(line: str) -> tuple[str, float, str] | None:
    """``(stage, fraction, message)`` from a :class:`ConsoleReporter` progress line, else None."""
    m = PROGRESS_RE.match(line.strip())
    if not m:
        return None
    return m["stage"], min(int(m["pct"]), 100) / 100.0, m["msg"]
