"""Prometheus metrics of a flow process, on a registry passed in (never the global one)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, ParamSpec, TypeVar
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from fpstream.events import REASONS, RESOURCES

P = ParamSpec("P")
R = TypeVar("R")

#: The stateful steps, as the eviction and error counters label them.
STATE_STEPS: tuple[str, ...] = ("instance", "fleet")

_LATENCY_BUCKETS = (1e-5, 5e-5, 1e-4, 5e-4, 1e-3, 5e-3, 1e-2, 5e-2, 0.1, 0.5, 1.0, 5.0)

#: Why an input partition was read again from its start (``..._partition_resets_total``).
RESET_REASONS = ("out_of_range", "beyond_end", "new_topic")
#: The Kafka outputs (``fpstream_kafka_delivery_errors_total{output}``).
KAFKA_OUTPUTS = ("allocations", "anomalies", "deadletter")
#: Why a write to Redis failed (``fpstream_redis_write_errors_total{kind}``).
REDIS_ERROR_KINDS = ("connection", "timeout", "loading", "auth", "readonly", "oom", "other")


class FlowMetrics:
    """Every metric a flow process exports; label values come from small fixed sets."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.messages = Counter(
            "fpstream_ingest_messages_total", "Kafka messages read, by topic kind.",
            ["kind"], registry=r)
        self.samples = Counter(
            "fpstream_ingest_samples_total", "Metric samples accepted.", registry=r)
        self.deploys = Counter(
            "fpstream_ingest_deploys_total", "Deploy requests accepted.", registry=r)
        self.partition_resets = Counter(
            "fpstream_ingest_partition_resets_total",
            "Input partitions read again from their start because their position was gone "
            "(the topic was created again, or the broker lost it), by reason.",
            ["reason"], registry=r)
        self.decode_errors = Counter(
            "fpstream_ingest_decode_errors_total", "Objects refused by the decoder, by reason.",
            ["reason"], registry=r)
        self.deadletters = Counter(
            "fpstream_deadletters_total", "Dead letters written, by reason.",
            ["reason"], registry=r)
        self.late = Counter(
            "fpstream_window_late_samples_total",
            "Samples older than the allowed lateness (dead-lettered).", registry=r)
        self.windows = Counter(
            "fpstream_window_closed_total", "Windows closed (one per instance and window).",
            registry=r)
        self.evictions = Counter(
            "fpstream_state_evictions_total",
            "Apps whose state a step dropped to stay within max_apps (least recently seen "
            "first), by step.", ["step"], registry=r)
        self.step_errors = Counter(
            "fpstream_step_errors_total",
            "Exceptions contained in a step: the item went to the dead-letter topic as "
            "model_error and the flow went on, by step.", ["step"], registry=r)
        self.apps = Gauge(
            "fpstream_model_apps", "Applications tracked by the model stage.", registry=r)
        self.instances = Gauge(
            "fpstream_model_instances", "Instances tracked by the model stage.", registry=r)
        self.expired = Counter(
            "fpstream_model_expired_total", "Idle applications or instances expired, by what.",
            ["what"], registry=r)
        self.clusters = Gauge(
            "fpstream_model_clusters", "Fingerprint clusters currently defined.", registry=r)
        self.mae = Gauge(
            "fpstream_model_prediction_mae_ratio",
            "Progressive-validation mean absolute error of the need prediction, relative to "
            "the observed need, by resource.", ["resource"], registry=r)
        self.allocations = Counter(
            "fpstream_allocations_emitted_total", "Allocation events emitted, by kind.",
            ["kind"], registry=r)
        self.anomalies = Counter(
            "fpstream_anomalies_emitted_total", "Anomaly events emitted, by severity.",
            ["severity"], registry=r)
        self.delivery_errors = Counter(
            "fpstream_kafka_delivery_errors_total",
            "Output messages Kafka did not take (the worker stops on them), by output.",
            ["output"], registry=r)
        # Redis output: what waits for Redis while it is away, and how writing to it goes.
        self.redis_backlog = Gauge(
            "fpstream_redis_backlog_items",
            "Outputs waiting to be written to Redis (kept in snapshots).", registry=r)
        self.redis_write_errors = Counter(
            "fpstream_redis_write_errors_total", "Writes to Redis that failed, by kind.",
            ["kind"], registry=r)
        self.redis_retries = Counter(
            "fpstream_redis_retries_total", "Writes to Redis attempted again after a failure.",
            registry=r)
        self.redis_backpressure = Counter(
            "fpstream_redis_backpressure_seconds_total",
            "Time the flow stood still because its Redis backlog was full.", registry=r)
        self.latency = Histogram(
            "fpstream_step_latency_seconds", "Time spent in one call of a flow step.",
            ["step"], buckets=_LATENCY_BUCKETS, registry=r)
        # A/B experiment, per arm (arm names come from the settings: a handful).
        self.experiment_periods = Counter(
            "fpstream_experiment_periods_total", "Decision periods closed and scored, by arm.",
            ["arm"], registry=r)
        self.experiment_violations = Counter(
            "fpstream_experiment_violations_total",
            "Windows whose use exceeded the allocation (u > A), by arm.", ["arm"], registry=r)
        self.experiment_waste = Gauge(
            "fpstream_experiment_waste_ratio",
            "Mean normalised waste per decision period, sum(max(A-u,0))/sum(A), by arm.",
            ["arm"], registry=r)
        self.experiment_reward = Gauge(
            "fpstream_experiment_reward",
            "Mean reward per decision period (-waste - penalty * violation rate), by arm.",
            ["arm"], registry=r)
        self.experiment_share = Gauge(
            "fpstream_experiment_share_ratio", "Share of instance assignments, by arm.",
            ["arm"], registry=r)
        self.experiment_guard_moves = Counter(
            "fpstream_experiment_guard_moves_total",
            "Instances moved to the conservative arm by the violation guard rail.", registry=r)
        self._experiment_seen: dict[str, int] = {}
        # Cold start: quality of proactive allocations over their instance's first hour.
        self.coldstart_instances = Counter(
            "fpstream_coldstart_first_hour_instances_total",
            "Proactive allocations scored over their instance's first hour.", registry=r)
        self.coldstart_windows = Counter(
            "fpstream_coldstart_first_hour_windows_total",
            "Windows scored against a proactive reserve (first hour of an instance).",
            registry=r)
        self.coldstart_violations = Counter(
            "fpstream_coldstart_first_hour_violations_total",
            "First-hour windows whose peak exceeded the proactive reserve (u > A), by resource.",
            ["resource"], registry=r)
        self.coldstart_waste = Gauge(
            "fpstream_coldstart_first_hour_waste_ratio",
            "First-hour waste of proactive reserves, sum(max(A-u,0))/sum(A), by resource.",
            ["resource"], registry=r)
        for resource in ("cpu_cores", "mem_bytes"):
            self.coldstart_violations.labels(resource)
            self.coldstart_waste.labels(resource).set(float("nan"))
        # Make every fixed label value visible from the start, so dashboards and alert rules
        # see zeros instead of missing series.
        for reason in REASONS:
            self.decode_errors.labels(reason)
            self.deadletters.labels(reason)
        for resource in RESOURCES:
            self.mae.labels(resource)
        for step in STATE_STEPS:
            self.evictions.labels(step)
            self.step_errors.labels(step)
        for kind in ("proactive", "resize"):
            self.allocations.labels(kind)
        for severity in ("warn", "critical"):
            self.anomalies.labels(severity)
        for kind in REDIS_ERROR_KINDS:
            self.redis_write_errors.labels(kind)
        for reason in RESET_REASONS:
            self.partition_resets.labels(reason)
        for output in KAFKA_OUTPUTS:
            self.delivery_errors.labels(output)

    def observe_experiment(self, summary: Mapping[str, Any]) -> None:
        """Export an ``Experiment.summary()``: gauges are set, counters advance to its totals.

        The summary's totals are cumulative; counters are increased by the growth since the
        previous call (a total that went down means a fresh experiment, counted from zero).
        """
        arms: Mapping[str, Mapping[str, Any]] = summary.get("arms", {})
        for arm, doc in arms.items():
            for gauge, field in ((self.experiment_waste, "waste"),
                                 (self.experiment_reward, "reward"),
                                 (self.experiment_share, "share")):
                value = doc.get(field)
                gauge.labels(arm).set(float("nan") if value is None else float(value))
            self._advance(self.experiment_periods.labels(arm), f"periods/{arm}",
                          int(doc.get("periods", 0)))
            self._advance(self.experiment_violations.labels(arm), f"violations/{arm}",
                          int(doc.get("violations", 0)))
        self._advance(self.experiment_guard_moves, "guard_moves",
                      int(summary.get("guard_moves", 0)))

    def observe_coldstart(self, summary: Mapping[str, Any]) -> None:
        """Export a ``ColdStart.summary()``: cumulative totals advance the counters, the
        waste ratios set the gauges."""
        self._advance(self.coldstart_instances, "coldstart/instances",
                      int(summary.get("instances", 0)))
        self._advance(self.coldstart_windows, "coldstart/windows", int(summary.get("windows", 0)))
        for resource, total in summary.get("violations", {}).items():
            self._advance(self.coldstart_violations.labels(resource),
                          f"coldstart/violations/{resource}", int(total))
        for resource, waste in summary.get("waste", {}).items():
            if waste is not None:
                self.coldstart_waste.labels(resource).set(float(waste))

    def _advance(self, counter: Counter, key: str, total: int) -> None:
        last = self._experiment_seen.get(key, 0)
        delta = total - last if total >= last else total
        if delta > 0:
            counter.inc(delta)
        self._experiment_seen[key] = total

    def timed(self, step: str, fn: Callable[P, R]) -> Callable[P, R]:
        """Wrap a step function so each call is observed in the latency histogram."""
        histogram = self.latency.labels(step)

        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                histogram.observe(time.perf_counter() - start)

        wrapper.__name__ = getattr(fn, "__name__", step)
        return wrapper

    def serve(self, port: int, host: str = "127.0.0.1") -> WSGIServer | None:
        """Expose ``/metrics`` on ``host:port`` (the ``metrics_host`` setting; loopback unless
        told otherwise); port 0 means no exposition. Returns the server, to shut it down."""
        if not port:
            return None
        server, _ = start_http_server(port, addr=host, registry=self.registry)
        return server
