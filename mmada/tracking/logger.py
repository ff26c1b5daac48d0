"""A Lightning logger that writes through :class:`~mmada.tracking.client.Tracker` (never raises).

Lightning's ``MLFlowLogger`` calls MLflow synchronously from the training loop, so a tracking
server outage raises inside ``training_step`` bookkeeping; this logger queues metrics for the
tracker's sender thread instead. Only global rank 0 holds a tracker; the other ranks get a logger
without one (Lightning calls loggers on rank 0 only).
"""

from __future__ import annotations

from argparse import Namespace
from typing import Any

from lightning.pytorch.loggers.logger import Logger, rank_zero_experiment
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from mmada.tracking.client import Tracker


class TrackerLogger(Logger):
    def __init__(self, tracker: Tracker | None, experiment_name: str) -> None:
        super().__init__()
        self.tracker = tracker
        self._experiment_name = experiment_name

    @property
    def name(self) -> str:
        return self._experiment_name

    @property
    def version(self) -> str:
        return (self.tracker.run_id if self.tracker is not None else None) or "offline"

    @property
    @rank_zero_experiment
    def experiment(self) -> Tracker | None:
        return self.tracker

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if self.tracker is None:
            return
        clean = {k: float(v) for k, v in metrics.items()}
        self.tracker.log_metrics(clean, step=step or 0)

    @rank_zero_only
    def log_hyperparams(self, params: dict[str, Any] | Namespace, *args: Any, **kwargs: Any) -> None:
        # The full training config is logged as params when the run starts (mmada.training.callbacks).
        return None

    @rank_zero_only
    def finalize(self, status: str) -> None:
        if self.tracker is not None:
            self.tracker.flush()
