"""The flow's stateless steps: decoding messages, counting what goes out.

The stateful stages have their own adapters (``fpstream.io.instance_step``,
``fpstream.io.fleet_step``); the maths stays in the core modules.
"""

from __future__ import annotations

import time
from typing import TypeVar

from fpstream.events import Allocation, Anomaly, DeadLetter, DeployRequest, Kind
from fpstream.fleet.experiment import ExperimentSnapshot
from fpstream.ingest import Decoded, ProgressTracker, RawMessage, SampleBatch, decode_raw
from fpstream.io.metrics import FlowMetrics
from fpstream.settings import Settings

__all__ = ["Steps"]

T = TypeVar("T")


class Steps:
    """The stateless steps of the flow, bound to settings and metrics."""

    def __init__(self, settings: Settings, metrics: FlowMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.limits = settings.limits
        self.progress = ProgressTracker(settings.allowed_lateness_s, max_apps=settings.max_apps)
        # Bound once: a labelled child looked up per message costs more than the increment.
        self._messages = {k: metrics.messages.labels(k) for k in ("metric", "deploy")}

    def decode(self, msg: RawMessage) -> list[Decoded]:
        kind: Kind = "deploy" if msg.origin.topic == self.settings.topic_deploys else "metric"
        self._messages[kind].inc()
        # The wall clock only stands in for a message without a timestamp (``future``).
        now = time.time() if msg.origin.ts <= 0 else None
        items = decode_raw(msg, kind, self.limits, self.settings.max_future_s, now)
        batches = [i for i in items if isinstance(i, SampleBatch)]
        if len(batches) != len(items):  # a deploy request or refused objects
            deploys = []
            for item in items:
                if isinstance(item, DeployRequest):
                    self.metrics.deploys.inc()
                    deploys.append(item.ts)
                elif isinstance(item, DeadLetter):
                    self.metrics.decode_errors.labels(item.reason).inc()
            if deploys:  # the fleet stage orders deploy requests by event time too
                items.extend(self.progress.advance(msg.origin, max(deploys)))
        if batches:
            self.metrics.samples.inc(sum(len(b) for b in batches))
            items.extend(self.progress.observe(msg.origin, batches))
        return items

    def count_deadletter(self, letter: DeadLetter) -> DeadLetter:
        self.metrics.deadletters.labels(letter.reason).inc()
        return letter

    def count_output(self, item: T) -> T:
        if isinstance(item, Allocation):
            self.metrics.allocations.labels(item.kind).inc()
        elif isinstance(item, Anomaly):
            self.metrics.anomalies.labels(item.severity).inc()
        elif isinstance(item, ExperimentSnapshot):
            self.metrics.observe_experiment(item.summary)
        return item

