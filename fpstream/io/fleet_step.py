"""Bytewax glue of the fleet stage: one ``FleetStage`` under a single key."""

from __future__ import annotations

import pickle
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from bytewax.operators import StatefulLogic

from fpstream.digest import Digest
from fpstream.events import DeadLetter, DeployRequest
from fpstream.fleet.experiment import ExperimentSnapshot
from fpstream.fleet.stage import ClusterSnapshot, FleetConfig, FleetStage, Output
from fpstream.ingest import AppSeen, Progress
from fpstream.io.metrics import FlowMetrics
from fpstream.io.stateful import Contained, Pickled

__all__ = ["FleetLogic", "is_cluster_def", "is_redis_only"]


class FleetLogic(Pickled[Digest | DeployRequest | Progress | AppSeen, Output]):
    """The single fleet-wide stage (``fpstream.fleet.stage``)."""

    def __init__(self, config: FleetConfig, metrics: FlowMetrics, resume: bytes | None,
                 sources: Sequence[str] = ()) -> None:
        self.metrics = metrics
        self.contained = Contained("fleet", metrics)
        if resume is not None:
            self.stage: FleetStage = pickle.loads(resume)
            self.stage.config = config
            self.stage.resumed(time.monotonic())
        else:
            self.stage = FleetStage(config, sources)
        self._reported = (0, 0, 0)
        self._calls = 0
        self.idle_check = timedelta(seconds=max(1.0, config.idle_s / 2))

    def snapshot_state(self) -> FleetStage:
        return self.stage

    def on_item(self, value: Digest | DeployRequest | Progress | AppSeen
                ) -> tuple[Iterable[Output], bool]:
        now = time.monotonic()
        if isinstance(value, Digest):
            out = self.stage.on_digest(value, now)
        elif isinstance(value, DeployRequest):
            out = self.stage.on_deploy(value, now)
        elif isinstance(value, Progress):
            out = self.stage.on_progress(value.source, value.ts, now)
        else:
            out = self.stage.on_app_seen(value.app, value.ts, now)
        self._calls += 1
        if out or self._calls % 64 == 0:  # gauges move only when the stage does something
            self._observe(out)
        return out, StatefulLogic.RETAIN

    def on_notify(self) -> tuple[Iterable[Output], bool]:
        out = self.stage.on_idle(time.monotonic())
        self._observe(out)
        return out, StatefulLogic.RETAIN

    def notify_at(self) -> datetime | None:
        # Wake up now and then so that apps gone quiet stop holding the others back.
        return datetime.now(UTC) + self.idle_check

    def on_eof(self) -> tuple[Iterable[Output], bool]:
        out = self.stage.flush()
        self._observe(out)
        return out, StatefulLogic.RETAIN

    def _observe(self, out: list[Output]) -> None:
        m, stage = self.metrics, self.stage
        for item in out:
            if isinstance(item, DeadLetter):
                self.contained.count(item.error)
        summary = stage.summary()
        m.apps.set(summary["apps"])
        m.instances.set(summary["instances"])
        m.clusters.set(summary["clusters"])
        for resource, value in summary["mae"].items():
            m.mae.labels(resource).set(value)
        s = stage.stats
        now = (s.expired_instances, s.expired_apps, s.evicted_apps)
        counters = (m.expired.labels("instance"), m.expired.labels("app"),
                    m.evictions.labels("fleet"))
        for counter, new, old in zip(counters, now, self._reported, strict=True):
            if new > old:
                counter.inc(new - old)
        self._reported = now
        m.observe_coldstart(stage.coldstart.summary())


def is_cluster_def(item: Any) -> bool:
    """Cluster definitions and memberships go to Redis only, not to a Kafka topic."""
    return isinstance(item, ClusterSnapshot)


def is_redis_only(item: Any) -> bool:
    """Cluster snapshots and experiment summaries go to Redis only, not to a Kafka topic."""
    return isinstance(item, ClusterSnapshot | ExperimentSnapshot)
