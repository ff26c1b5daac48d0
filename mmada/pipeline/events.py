"""The typed channel from a stage process to the Prefect flow that started it: a file of JSON-lines events.

The ``pipeline`` flow runs each stage as ``python -m mmada pipeline stage NAME`` and names a file in
``MMADA_STAGE_EVENTS``; the stage's reporter appends one event per call to it (:class:`EventWriter`)
and the flow follows the file (:class:`EventFollower`), replaying each event into its own reporter
(Prefect artifacts). The stage's console output stays as it is, for people.

    {"kind": "progress", "fraction": 0.45, "message": "step 90/200 train/loss 4.1120"}
    {"kind": "link", "url": "http://127.0.0.1:5000/#/experiments/1/runs/…", "text": "MLflow run"}
    {"kind": "markdown", "text": "### sft: mmada-tiny version 2 …", "description": "sft summary"}
    {"kind": "table", "rows": [{"shard": "…", "samples": 950}], "description": "Shards of arithmetic …"}
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, TypeAdapter, ValidationError

from mmada.config import Strict, format_errors
from mmada.errors import MMaDAError
from mmada.pipeline.report import Reporter

EVENTS_ENV = "MMADA_STAGE_EVENTS"
"""The environment variable naming the events file of a stage process."""


class Progress(Strict):
    kind: Literal["progress"] = "progress"
    fraction: float
    message: str


class Link(Strict):
    kind: Literal["link"] = "link"
    url: str
    text: str


class Markdown(Strict):
    kind: Literal["markdown"] = "markdown"
    text: str
    description: str


class Table(Strict):
    kind: Literal["table"] = "table"
    rows: list[dict[str, Any]]
    description: str


Event = Annotated[Progress | Link | Markdown | Table, Field(discriminator="kind")]
_EVENT: TypeAdapter[Event] = TypeAdapter(Event)


def send(event: Event, reporter: Reporter) -> None:
    """Replay ``event`` as the :class:`Reporter` call that produced it."""
    if isinstance(event, Progress):
        reporter.progress(event.fraction, event.message)
    elif isinstance(event, Link):
        reporter.link(event.url, event.text)
    elif isinstance(event, Markdown):
        reporter.markdown(event.text, event.description)
    else:
        reporter.table(event.rows, event.description)


class EventWriter:
    """A :class:`Reporter` that appends each call as one JSON line to ``path`` (console lines are not events)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def _append(self, event: Progress | Link | Markdown | Table) -> None:
        with open(self.path, "a", encoding="utf-8") as f:  # one write per line: a reader never sees half of it
            f.write(event.model_dump_json() + "\n")

    def progress(self, fraction: float, message: str) -> None:
        self._append(Progress(fraction=fraction, message=message))

    def link(self, url: str, text: str) -> None:
        self._append(Link(url=url, text=text))

    def markdown(self, text: str, description: str) -> None:
        self._append(Markdown(text=text, description=description))

    def table(self, rows: list[dict[str, Any]], description: str) -> None:
        self._append(Table(rows=rows, description=description))

    def line(self, text: str) -> None:
        pass


class EventFollower:
    """Replays the events appended to ``path`` since the last :meth:`poll` into ``reporter``."""

    def __init__(self, path: str | os.PathLike, reporter: Reporter) -> None:
        self.path = Path(path)
        self.reporter = reporter
        self._offset = 0
        self._partial = b""
        self._lineno = 0

    def poll(self) -> None:
        if not self.path.is_file():
            return
        with open(self.path, "rb") as f:
            f.seek(self._offset)
            chunk = f.read()
            self._offset = f.tell()
        *complete, self._partial = (self._partial + chunk).split(b"\n")
        for raw in complete:
            self._lineno += 1
            try:
                event = _EVENT.validate_json(raw)
            except ValidationError as exc:
                raise MMaDAError(f"{self.path}:{self._lineno}: not a stage event: {format_errors(exc)}") from None
            send(event, self.reporter)
