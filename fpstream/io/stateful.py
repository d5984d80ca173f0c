"""What every stateful step of the flow shares: pickled snapshots and contained errors."""

from __future__ import annotations

import logging
import pickle
from typing import Any, Generic, TypeVar

from bytewax.operators import StatefulLogic

from fpstream.io.metrics import FlowMetrics

__all__ = ["Contained", "Pickled", "log"]

log = logging.getLogger("fpstream.flow")

V = TypeVar("V")
W = TypeVar("W")


class Pickled(StatefulLogic[V, W, bytes], Generic[V, W]):
    """Snapshots are pickled bytes of ``snapshot_state()``: an immutable copy, as Bytewax
    requires."""

    def snapshot_state(self) -> Any:
        raise NotImplementedError

    def snapshot(self) -> bytes:
        return pickle.dumps(self.snapshot_state(), protocol=pickle.HIGHEST_PROTOCOL)


class Contained:
    """Counts and logs an exception a step contained: the first few with their traceback,
    then one line in a thousand, so a stream of poison cannot flood the log."""

    def __init__(self, step: str, metrics: FlowMetrics) -> None:
        self.step = step
        self.counter = metrics.step_errors.labels(step)
        self.seen = 0

    def __call__(self, what: str, ex: BaseException) -> str:
        """Count and log ``ex``; the dead letter's error text."""
        error = f"step {self.step}: {type(ex).__name__}: {ex}"
        self.count(f"{error} ({what})", ex)
        return error

    def count(self, error: str, ex: BaseException | None = None) -> None:
        self.counter.inc()
        self.seen += 1
        if self.seen <= 10:
            log.error("%s; it goes to the dead-letter topic as model_error", error, exc_info=ex)
        elif self.seen % 1000 == 0:
            log.error("%s; %d contained so far", error, self.seen)
