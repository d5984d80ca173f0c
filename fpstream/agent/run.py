"""The agent loop: collect every interval, build samples, send one message per app per tick.

Samples go to a sink: ``StdoutSink`` (JSON lines) or ``KafkaSink``, which holds messages in a
bounded ``SendBuffer`` while the broker is unreachable and catches up when it returns. Delivery
is at least once: a message whose acknowledgement was lost in an outage is sent again.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Mapping
from typing import IO, Any, Protocol

import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge, ProcessCollector

from fpstream.agent.buffer import Message, SendBuffer
from fpstream.agent.collect import Collection, Collector, Reading, instance_id
from fpstream.agent.config import AgentConfig
from fpstream.agent.scrape import ScrapeError, Scraper
from fpstream.events import MetricSample, to_dict

log = logging.getLogger("fpstream.agent")

#: Samples per message: one app with thousands of per-process instances still fits the 1 MiB
#: message limit of the contract.
MAX_BATCH = 500

# Short timeouts so a failed delivery comes back to the buffer within a tick or two; no
# idempotence, because a restarted broker may not know the producer id and fence it for good.
KAFKA_DEFAULTS: dict[str, Any] = {
    "message.timeout.ms": 5000,
    "linger.ms": 20,
    "acks": "all",
    "enable.idempotence": False,
    "reconnect.backoff.ms": 100,
    "reconnect.backoff.max.ms": 1000,
}


class KafkaLog:
    """librdkafka's log, with each facility's errors shown at most once per ``every_s``.

    During an outage librdkafka reports every reconnect attempt (several a second); the agent
    states the outage itself, so one line with the reason is enough and the rest go to DEBUG."""

    def __init__(self, logger: logging.Logger, every_s: float = 60.0) -> None:
        self.logger = logger
        self.every_s = every_s
        self._last: dict[str, float] = {}

    def log(self, level: int, msg: str, *args: Any) -> None:
        facility = str(args[0]) if args else ""
        now = time.monotonic()
        if level >= logging.WARNING:
            last = self._last.get(facility)
            if last is not None and now - last < self.every_s:
                level = logging.DEBUG
            else:
                self._last[facility] = now
        self.logger.log(level, msg, *args)


class AgentMetrics:
    """The agent's own counters, on a registry passed in (never the global one)."""

    def __init__(self, registry: CollectorRegistry | None = None, process: bool = True) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.samples = Counter("fpstream_agent_samples_total", "Metric samples built.",
                               registry=r)
        self.messages = Counter("fpstream_agent_messages_total",
                                "Messages handed to the sink (one per app per tick).", registry=r)
        self.delivered = Counter("fpstream_agent_messages_delivered_total",
                                 "Messages acknowledged by the broker (or written out).",
                                 registry=r)
        self.delivery_errors = Counter("fpstream_agent_delivery_errors_total",
                                       "Failed deliveries, put back in the buffer.", registry=r)
        self.dropped_messages = Counter("fpstream_agent_dropped_messages_total",
                                        "Messages dropped, oldest first, from a full buffer.",
                                        registry=r)
        self.dropped_bytes = Counter("fpstream_agent_dropped_bytes_total",
                                     "Bytes dropped from a full buffer.", registry=r)
        self.buffer_bytes = Gauge("fpstream_agent_buffer_bytes",
                                  "Bytes waiting in the local buffer.", registry=r)
        self.buffer_messages = Gauge("fpstream_agent_buffer_messages",
                                     "Messages waiting in the local buffer.", registry=r)
        self.broker_up = Gauge("fpstream_agent_broker_up",
                               "1 if the last check reached the broker.", registry=r)
        self.scrape_errors = Counter("fpstream_agent_scrape_errors_total",
                                     "Failed scrapes of apps' /metrics endpoints.", registry=r)
        self.collect_seconds = Gauge("fpstream_agent_collect_seconds",
                                     "Time the last collection took.", registry=r)
        self.processes = Gauge("fpstream_agent_processes",
                               "Processes attributed to an app.", registry=r)
        if process:  # process_cpu_seconds_total, process_resident_memory_bytes, ...
            ProcessCollector(registry=r)
        self._seen = (0, 0)

    def observe_buffer(self, buffer: SendBuffer) -> None:
        self.buffer_bytes.set(buffer.bytes)
        self.buffer_messages.set(len(buffer))
        msgs, nbytes = self._seen
        self.dropped_messages.inc(buffer.dropped_messages - msgs)
        self.dropped_bytes.inc(buffer.dropped_bytes - nbytes)
        self._seen = (buffer.dropped_messages, buffer.dropped_bytes)


class Sink(Protocol):
    def submit(self, key: bytes, value: bytes) -> None: ...

    def pump(self) -> None:
        """Move what can be moved now; never blocks much longer than a tick."""

    def close(self, timeout: float) -> int:
        """Deliver what is left within ``timeout``; return how many messages were not."""


class StdoutSink:
    """JSON lines, one message (a JSON array of one app's samples) per line."""

    def __init__(self, stream: IO[bytes], metrics: AgentMetrics) -> None:
        self.stream = stream
        self.metrics = metrics

    def submit(self, key: bytes, value: bytes) -> None:
        self.stream.write(value + b"\n")
        self.metrics.delivered.inc()

    def pump(self) -> None:
        self.stream.flush()

    def close(self, timeout: float) -> int:
        self.stream.flush()
        return 0


class KafkaSink:
    """Produces from a bounded buffer; a failed delivery goes back to the buffer's front.

    Before draining the buffer it asks the broker for the topic's metadata (one cheap request),
    so that during an outage messages wait in our byte-bounded buffer, not in librdkafka's.
    """

    def __init__(self, kafka_config: Mapping[str, Any], topic: str, buffer: SendBuffer,
                 metrics: AgentMetrics, check_timeout: float = 1.0,
                 flush_timeout: float = 2.0) -> None:
        from confluent_kafka import Producer

        self.topic = topic
        self.buffer = buffer
        self.metrics = metrics
        self.check_timeout = check_timeout
        self.flush_timeout = flush_timeout
        config = {**KAFKA_DEFAULTS, **kafka_config}
        config.setdefault("logger", KafkaLog(logging.getLogger("fpstream.agent.kafka")))
        self._producer = Producer(config)
        self._failed: list[Message] = []
        self.up: bool | None = None

    def submit(self, key: bytes, value: bytes) -> None:
        self.buffer.push(key, value)
        self.metrics.observe_buffer(self.buffer)

    def pump(self) -> None:
        self._producer.poll(0)  # callbacks of earlier sends
        self._requeue()
        if self.buffer and self._reachable():
            self._drain()
            self._producer.flush(self.flush_timeout)
            self._requeue()
        self.metrics.observe_buffer(self.buffer)

    @property
    def pending(self) -> int:
        """Messages not yet acknowledged: buffered plus in flight."""
        return len(self.buffer) + len(self._producer) + len(self._failed)

    def close(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while True:
            self.pump()
            left = deadline - time.monotonic()
            self._producer.flush(min(max(left, 0.0), 1.0))  # wait for what is in flight
            self._requeue()
            if not self.pending or time.monotonic() >= deadline:
                break
            if self.buffer and not self.up:
                time.sleep(min(0.2, max(deadline - time.monotonic(), 0.0)))
        self.metrics.observe_buffer(self.buffer)
        return self.pending

    def _drain(self) -> None:
        from confluent_kafka import KafkaException

        while self.buffer:
            key, value = self.buffer.pop()
            try:
                self._producer.produce(self.topic, value=value, key=key,
                                       on_delivery=self._delivered)
            except BufferError:  # librdkafka's queue is full: the rest waits for next pump
                self.buffer.requeue([(key, value)])
                return
            except KafkaException as ex:  # e.g. larger than message.max.bytes: never sendable
                log.error("dropping a %d-byte message the producer refuses: %s", len(value), ex)
                self.metrics.delivery_errors.inc()
                self.metrics.dropped_messages.inc()
                self.metrics.dropped_bytes.inc(len(key) + len(value))

    def _delivered(self, err: Any, msg: Any) -> None:
        if err is None:
            self.metrics.delivered.inc()
            return
        self.metrics.delivery_errors.inc()
        self._failed.append((msg.key() or b"", msg.value() or b""))

    def _requeue(self) -> None:
        if self._failed:
            failed, self._failed = self._failed, []
            self.buffer.requeue(failed)

    def _reachable(self) -> bool:
        from confluent_kafka import KafkaException

        try:
            up = bool(self._producer.list_topics(self.topic, timeout=self.check_timeout).brokers)
        except KafkaException:
            up = False
        if up != self.up:
            if up:
                log.info("broker reachable; sending %d buffered messages", len(self.buffer))
            else:
                log.warning("broker unreachable; buffering up to %d bytes",
                            self.buffer.max_bytes)
        self.up = up
        self.metrics.broker_up.set(1 if up else 0)
        return up


def clean(values: Mapping[str, float]) -> dict[str, float]:
    """Only what the contract accepts: finite, non-negative numbers."""
    return {k: float(v) for k, v in values.items() if math.isfinite(v) and v >= 0}


def build_samples(collection: Collection, scraped: Mapping[str, dict[str, float]],
                  config: AgentConfig) -> list[MetricSample]:
    """Readings plus scraped ``app.*`` values as contract-valid samples.

    Scraped values join every reading of their app (config allows scraping only for apps with
    one instance per host); an app without match rules is scrape-only."""
    readings = list(collection.readings)
    for app in config.apps:
        if app.app in scraped and not app.match and scraped[app.app]:
            instance = instance_id(app.instance, hostname=config.hostname, app=app.app)
            readings.append(Reading(app.app, instance, dict(app.labels), {}))
    interval = max(round(collection.interval_s, 3), 0.001)
    samples = []
    for r in readings:
        metrics = clean({**r.metrics, **scraped.get(r.app, {})})
        if metrics:
            samples.append(MetricSample(round(collection.ts, 3), r.app, r.instance, metrics,
                                        interval, r.labels, clean(r.capacity)))
    return samples


def encode_batches(samples: list[MetricSample]) -> list[tuple[bytes, bytes]]:
    """``(key, value)`` per app: a JSON array of that app's samples, keyed by the app id."""
    by_app: dict[str, list[MetricSample]] = {}
    for s in samples:
        by_app.setdefault(s.app, []).append(s)
    out = []
    for app, batch in by_app.items():
        for i in range(0, len(batch), MAX_BATCH):
            chunk = batch[i:i + MAX_BATCH]
            out.append((app.encode(), orjson.dumps([to_dict(s) for s in chunk])))
    return out


class Agent:
    """Ties a collector, the apps' scrapers and a sink to a fixed-rate tick."""

    def __init__(self, config: AgentConfig, sink: Sink, interval_s: float = 10.0,
                 metrics: AgentMetrics | None = None,
                 collector: Collector | None = None) -> None:
        if not interval_s > 0:
            raise ValueError(f"interval_s must be > 0 seconds, got {interval_s!r}")
        self.config = config
        self.sink = sink
        self.interval_s = interval_s
        self.metrics = metrics if metrics is not None else AgentMetrics(process=False)
        self.collector = collector if collector is not None else Collector(config)
        self.scrapers = {a.app: Scraper(a.scrape) for a in config.apps if a.scrape is not None}
        self._failing: set[str] = set()

    def tick(self) -> int:
        """One collection; returns the number of samples sent (0 on the baseline tick)."""
        start = time.perf_counter()
        collection = self.collector.collect()
        scraped = self._scrape()
        self.metrics.collect_seconds.set(time.perf_counter() - start)
        self.metrics.processes.set(self.collector.tracked)
        sent = 0
        if collection is not None:
            samples = build_samples(collection, scraped, self.config)
            for key, value in encode_batches(samples):
                self.sink.submit(key, value)
                self.metrics.messages.inc()
            self.metrics.samples.inc(len(samples))
            sent = len(samples)
        self.sink.pump()
        return sent

    def run(self, stop: threading.Event | None = None, once: bool = False,
            close_timeout: float = 10.0) -> int:
        """Tick until ``stop`` is set (or once); returns messages left undelivered at exit."""
        stop = stop if stop is not None else threading.Event()
        try:
            self.tick()  # the baseline: rates need a previous reading
            deadline = time.monotonic() + self.interval_s
            while not stop.wait(max(deadline - time.monotonic(), 0.0)):
                self.tick()
                if once:
                    break
                deadline += self.interval_s
                late = time.monotonic() - deadline
                if late > 0:  # a slow tick: skip the missed slots instead of bursting
                    deadline += math.ceil(late / self.interval_s) * self.interval_s
        finally:
            left = self.sink.close(close_timeout)
        if left:
            log.warning("%d messages not delivered at exit", left)
        return left

    def _scrape(self) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for app, scraper in self.scrapers.items():
            try:
                out[app] = scraper.scrape(time.monotonic())
            except ScrapeError as ex:
                self.metrics.scrape_errors.inc()
                if app not in self._failing:
                    log.warning("app %s: %s", app, ex)
                self._failing.add(app)
                continue
            self._failing.discard(app)
        return out
