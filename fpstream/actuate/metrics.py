"""Prometheus metrics of an actuator, on a registry passed in (never the global one)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

SKIP_REASONS: tuple[str, ...] = ("duplicate", "stale", "superseded")
DEADLETTER_REASONS: tuple[str, ...] = ("invalid", "failed")
_LATENCY_BUCKETS = (1e-3, 5e-3, 1e-2, 5e-2, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ActuatorMetrics:
    """Every metric ``fpstream actuate`` exports; label values come from small fixed sets."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.applied = Counter(
            "fpstream_actuator_applied_total", "Allocations applied by the backend.",
            registry=r)
        self.skipped = Counter(
            "fpstream_actuator_skipped_total",
            "Allocations not applied because the same or a newer one was already applied "
            "(duplicate, stale) or a newer one is queued (superseded).", ["reason"], registry=r)
        self.failed = Counter(
            "fpstream_actuator_failed_total", "Backend apply attempts that failed.", registry=r)
        self.retried = Counter(
            "fpstream_actuator_retried_total", "Failed applies scheduled for another attempt.",
            registry=r)
        self.deadletters = Counter(
            "fpstream_actuator_deadletters_total",
            "Entries written to the actuator dead-letter stream, by reason.", ["reason"],
            registry=r)
        self.pending = Gauge(
            "fpstream_actuator_pending",
            "Entries delivered to the group but not yet acknowledged (all consumers).",
            registry=r)
        self.paused = Gauge(
            "fpstream_actuator_paused", "1 while the global pause switch is set.", registry=r)
        self.latency = Histogram(
            "fpstream_actuator_apply_latency_seconds", "Time one successful backend apply took.",
            buckets=_LATENCY_BUCKETS, registry=r)
        # Zeros from the start, so alert rules see a series instead of nothing.
        for reason in SKIP_REASONS:
            self.skipped.labels(reason)
        for reason in DEADLETTER_REASONS:
            self.deadletters.labels(reason)
