"""Bytewax glue: the core's steps wrapped with their metrics and their state's lifecycle.

Each class here adapts one core object to Bytewax's ``StatefulLogic`` (snapshot for recovery,
end-of-stream flush, idle expiry); the maths stays in the core modules.
"""

from __future__ import annotations

import logging
import pickle
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from bytewax.operators import StatefulLogic

from fpstream.catalog import Catalog
from fpstream.events import RESOURCES, DeadLetter, DeployRequest, Kind
from fpstream.experiment import Experiment, ExperimentSnapshot
from fpstream.features import WindowFeatures
from fpstream.ingest import (
    AppSeen,
    Decoded,
    Evict,
    Progress,
    ProgressTracker,
    RawMessage,
    SampleBatch,
    decode_raw,
    item_letter,
    sample_letters,
)
from fpstream.io.metrics import FlowMetrics
from fpstream.model import ClusterSnapshot, ModelConfig, ModelStage
from fpstream.policy import Policy
from fpstream.profile import AppProfile, ProfileSnapshot
from fpstream.settings import Settings
from fpstream.windows import AppWindows

log = logging.getLogger("fpstream.flow")


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
            if deploys:  # the model stage orders deploy requests by event time too
                items.extend(self.progress.advance(msg.origin, max(deploys)))
        if batches:
            self.metrics.samples.inc(sum(len(b) for b in batches))
            items.extend(self.progress.observe(msg.origin, batches))
        return items

    def count_deadletter(self, letter: Any) -> DeadLetter:
        assert isinstance(letter, DeadLetter)  # the flow branches dead letters here
        self.metrics.deadletters.labels(letter.reason).inc()
        return letter

    def count_output(self, item: Any) -> Any:
        from fpstream.events import Allocation, Anomaly

        if isinstance(item, Allocation):
            self.metrics.allocations.labels(item.kind).inc()
        elif isinstance(item, Anomaly):
            self.metrics.anomalies.labels(item.severity).inc()
        elif isinstance(item, ExperimentSnapshot):
            self.metrics.observe_experiment(item.summary)
        return item


class _Pickled(StatefulLogic[Any, Any, bytes]):
    """Snapshots are pickled bytes: an immutable copy, as Bytewax requires."""

    state: Any

    def snapshot(self) -> bytes:
        return pickle.dumps(self.state, protocol=pickle.HIGHEST_PROTOCOL)


class _Contained:
    """Counts and logs an exception a step contained: the first few with their traceback,
    then one line in a thousand, so a stream of poison cannot flood the log."""

    def __init__(self, step: str, metrics: FlowMetrics) -> None:
        self.step = step
        self.counter = metrics.step_errors.labels(step)
        self.seen = 0

    def __call__(self, what: str, ex: BaseException) -> str:
        self.counter.inc()
        self.seen += 1
        error = f"step {self.step}: {type(ex).__name__}: {ex}"
        if self.seen <= 10:
            log.error("%s (%s); it goes to the dead-letter topic as model_error", error, what,
                      exc_info=ex)
        elif self.seen % 1000 == 0:
            log.error("%s (%s); %d contained so far", error, what, self.seen)
        return error


def _window_doc(wf: WindowFeatures) -> dict[str, object]:
    return {"app": wf.app, "instance": wf.instance, "start": wf.start, "end": wf.end,
            "n": wf.n, "peak": dict(zip(RESOURCES, wf.peak.tolist(), strict=True))}


class WindowLogic(_Pickled):
    """Per app: event-time windows; late samples leave as dead letters, never dropped.

    An ``Evict`` closes the app's open windows and drops its state. An exception while
    windowing a batch is contained: the batch's samples go to the dead-letter topic as
    ``model_error``, the app's window state starts afresh, and the flow goes on.
    """

    def __init__(self, settings: Settings, metrics: FlowMetrics, resume: bytes | None) -> None:
        self.metrics = metrics
        self.settings = settings
        self.idle = timedelta(seconds=settings.app_ttl_s)
        self.state: AppWindows = (pickle.loads(resume) if resume is not None else
                                  self._fresh())
        self._touched = datetime.now(UTC)
        self._contained = _Contained("window", metrics)

    def _fresh(self) -> AppWindows:
        return AppWindows(self.settings.window_s, self.settings.allowed_lateness_s)

    def on_item(self, value: SampleBatch | Evict) -> tuple[Iterable[Any], bool]:
        self._touched = datetime.now(UTC)
        if isinstance(value, Evict):
            closed = self.state.flush()
            self.metrics.windows.inc(len(closed))
            self.metrics.evictions.labels("window").inc()
            return [*closed, value], StatefulLogic.DISCARD
        try:
            out = self.state.add_many(value)
        except Exception as ex:  # noqa: BLE001 - no sample may stop the flow
            error = self._contained(f"{len(value)} samples of {value.app}", ex)
            self.state = self._fresh()
            return sample_letters(value.to_samples(), value.origin, "model_error", error), \
                StatefulLogic.RETAIN
        emitted: list[Any] = list(out.closed)
        if out.late:
            self.metrics.late.inc(len(out.late))
            detail = f"its window had closed (app watermark {self.state.watermark})"
            emitted.extend(sample_letters(out.late, value.origin, "late", detail))
        if out.dropped:
            detail = "the app has too many open instances or samples in one window"
            emitted.extend(sample_letters(out.dropped, value.origin, "over_capacity", detail))
        self.metrics.windows.inc(len(out.closed))
        return emitted, StatefulLogic.RETAIN

    def on_eof(self) -> tuple[Iterable[Any], bool]:
        closed = self.state.flush()
        self.metrics.windows.inc(len(closed))
        return closed, StatefulLogic.RETAIN

    def on_notify(self) -> tuple[Iterable[Any], bool]:
        # Idle in real time for the whole TTL: close what is open and free the state.
        closed = self.state.flush()
        self.metrics.windows.inc(len(closed))
        self.metrics.expired.labels("window_state").inc()
        return closed, StatefulLogic.DISCARD

    def notify_at(self) -> datetime | None:
        return self._touched + self.idle


class ProfileLogic(_Pickled):
    """Per app: the smoothed profile and its periodicity history.

    An ``Evict`` drops the app's profile. An exception while learning a window is contained:
    the window goes to the dead-letter topic as ``model_error`` and the profile starts afresh.
    """

    def __init__(self, settings: Settings, metrics: FlowMetrics, resume: bytes | None) -> None:
        self.metrics = metrics
        self.settings = settings
        self.idle = timedelta(seconds=settings.app_ttl_s)
        self.state: AppProfile = pickle.loads(resume) if resume is not None else self._fresh()
        self._touched = datetime.now(UTC)
        self._contained = _Contained("profile", metrics)

    def _fresh(self) -> AppProfile:
        return AppProfile(decision_period_s=self.settings.decision_period_s)

    def on_item(self, value: WindowFeatures | Evict) -> tuple[Iterable[Any], bool]:
        self._touched = datetime.now(UTC)
        if isinstance(value, Evict):
            self.metrics.evictions.labels("profile").inc()
            return [], StatefulLogic.DISCARD
        try:
            return [self.state.update(value)], StatefulLogic.RETAIN
        except Exception as ex:  # noqa: BLE001 - no window may stop the flow
            error = self._contained(f"window of {value.app}/{value.instance}", ex)
            self.state = self._fresh()
            return [item_letter(value.end, "model_error", error, _window_doc(value))], \
                StatefulLogic.RETAIN

    def on_notify(self) -> tuple[Iterable[ProfileSnapshot], bool]:
        return [], StatefulLogic.DISCARD

    def notify_at(self) -> datetime | None:
        return self._touched + self.idle


class ModelLogic(_Pickled):
    """The single fleet-wide model stage."""

    def __init__(self, settings: Settings, metrics: FlowMetrics, resume: bytes | None,
                 sources: Sequence[str] = ()) -> None:
        self.metrics = metrics
        if resume is not None:
            self.state: ModelStage = pickle.loads(resume)
            self.state.resumed(time.monotonic())
        else:
            catalog = Catalog.load(settings.catalog_path)
            policy = Policy(quantile=settings.target_quantile, headroom=settings.headroom)
            self.state = ModelStage(ModelConfig.from_settings(settings), catalog, policy,
                                    sources, experiment_of(settings, policy))
        self._reported = (0, 0, 0, 0)
        self._calls = 0
        self.idle_check = timedelta(seconds=max(1.0, settings.idle_s / 2))

    def on_item(self, value: ProfileSnapshot | DeployRequest | Progress | AppSeen
                ) -> tuple[Iterable[Any], bool]:
        now = time.monotonic()
        if isinstance(value, DeployRequest):
            out = self.state.on_deploy(value, now)
        elif isinstance(value, Progress):
            out = self.state.on_progress(value.source, value.ts, now)
        elif isinstance(value, AppSeen):
            out = self.state.on_app_seen(value.app, value.ts, now)
        else:
            out = self.state.on_profile(value, now)
        self._calls += 1
        if out or self._calls % 64 == 0:  # gauges move only when the stage does something
            self._observe()
        return out, StatefulLogic.RETAIN

    def on_notify(self) -> tuple[Iterable[Any], bool]:
        out = self.state.on_idle(time.monotonic())
        self._observe()
        return out, StatefulLogic.RETAIN

    def notify_at(self) -> datetime | None:
        # Wake up now and then so that apps gone quiet stop holding the others back.
        return datetime.now(UTC) + self.idle_check

    def on_eof(self) -> tuple[Iterable[Any], bool]:
        out = self.state.flush()
        self._observe()
        return out, StatefulLogic.RETAIN

    def _observe(self) -> None:
        m, stage = self.metrics, self.state
        summary = stage.summary()
        m.apps.set(summary["apps"])
        m.instances.set(summary["instances"])
        m.clusters.set(summary["clusters"])
        for resource, value in summary["mae"].items():
            m.mae.labels(resource).set(value)
        s = stage.stats
        now = (s.expired_instances, s.expired_apps, s.evicted_apps, s.errors)
        counters = (m.expired.labels("instance"), m.expired.labels("app"),
                    m.evictions.labels("model"), m.step_errors.labels("model"))
        for counter, new, old in zip(counters, now, self._reported, strict=True):
            if new > old:
                counter.inc(new - old)
        self._reported = now
        coldstart = getattr(stage, "coldstart", None)
        if coldstart is not None and hasattr(coldstart, "summary"):
            m.observe_coldstart(coldstart.summary())


def experiment_of(settings: Settings, policy: Policy) -> Experiment:
    """The configured experiment over ``settings.arms``; with ``experiment_mode`` ``off``, the
    settings' own policy (``target_quantile``, ``headroom``) is the only arm, as before there
    were experiments."""
    if settings.experiment_mode == "off":
        return Experiment(settings.experiment_name, [policy], mode="off", seed=settings.seed,
                          violation_penalty=settings.violation_penalty,
                          guard_budget=settings.guard_budget,
                          guard_periods=settings.guard_periods)
    return Experiment.from_settings(settings)


def is_cluster_def(item: Any) -> bool:
    """Cluster definitions and memberships go to Redis only, not to a Kafka topic."""
    return isinstance(item, ClusterSnapshot)


def is_redis_only(item: Any) -> bool:
    """Cluster snapshots and experiment summaries go to Redis only, not to a Kafka topic."""
    return isinstance(item, ClusterSnapshot | ExperimentSnapshot)


__all__ = ["ModelLogic", "ProfileLogic", "Steps", "WindowLogic", "experiment_of",
           "is_cluster_def", "is_redis_only"]
