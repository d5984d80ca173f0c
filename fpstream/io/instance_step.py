"""Bytewax glue of the instance stage: one ``InstanceStage`` per app key.

The configuration (catalog, arms) is built once per worker and shared by every app's logic; a
snapshot holds only the app's own state (``AppState``). Late and over-capacity samples leave as
dead letters, never dropped. An ``Evict`` (the process's app budget) and a whole TTL of wall
time without samples close the app's open windows and drop its state.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from bytewax.operators import StatefulLogic

from fpstream.ingest import Evict, SampleBatch, sample_letters
from fpstream.instance.stage import AppState, InstanceConfig, InstanceStage, Output
from fpstream.io.metrics import FlowMetrics
from fpstream.io.stateful import Contained, Pickled
from fpstream.windows import AppWindows

__all__ = ["InstanceLogic"]


class InstanceLogic(Pickled[SampleBatch | Evict, Output]):
    """Per app: windows, profile and instances (``fpstream.instance.stage``)."""

    def __init__(self, config: InstanceConfig, metrics: FlowMetrics, ttl_s: float,
                 resume: bytes | None) -> None:
        self.metrics = metrics
        self.contained = Contained("instance", metrics)
        state: AppState | None = pickle.loads(resume) if resume is not None else None
        self.stage = InstanceStage(config, state, on_error=self.contained)
        self.idle = timedelta(seconds=ttl_s)
        self._touched = datetime.now(UTC)

    def snapshot_state(self) -> AppState:
        return self.stage.state

    def on_item(self, value: SampleBatch | Evict) -> tuple[Iterable[Output], bool]:
        self._touched = datetime.now(UTC)
        if isinstance(value, Evict):
            self.metrics.evictions.labels("instance").inc()
            return self._flush(), StatefulLogic.DISCARD
        try:
            emitted, windowed = self.stage.on_samples(value)
        except Exception as ex:  # noqa: BLE001 - no sample may stop the flow
            error = self.contained(f"{len(value)} samples of {value.app}", ex)
            state = self.stage.state
            state.windows = AppWindows(state.windows.window_s, state.windows.allowed_lateness_s)
            return sample_letters(value.to_samples(), value.origin, "model_error", error), \
                StatefulLogic.RETAIN
        out: list[Output] = list(emitted)
        if windowed.late:
            self.metrics.late.inc(len(windowed.late))
            detail = f"its window had closed (app watermark {self.stage.state.windows.watermark})"
            out.extend(sample_letters(windowed.late, value.origin, "late", detail))
        if windowed.dropped:
            detail = "the app has too many open instances or samples in one window"
            out.extend(sample_letters(windowed.dropped, value.origin, "over_capacity", detail))
        self.metrics.windows.inc(len(windowed.closed))
        return out, StatefulLogic.RETAIN

    def _flush(self) -> list[Output]:
        closed = self.stage.state.windows.flush()
        self.metrics.windows.inc(len(closed))
        return list(self.stage.on_windows(closed))

    def on_eof(self) -> tuple[Iterable[Output], bool]:
        return self._flush(), StatefulLogic.RETAIN

    def on_notify(self) -> tuple[Iterable[Output], bool]:
        # Idle in real time for the whole TTL: close what is open and free the state.
        self.metrics.expired.labels("app").inc()
        return self._flush(), StatefulLogic.DISCARD

    def notify_at(self) -> datetime | None:
        return self._touched + self.idle
