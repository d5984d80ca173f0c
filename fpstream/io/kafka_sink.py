"""The flow's Kafka output: every message delivered, or the worker stops.

Each batch is flushed before ``write_batch`` returns, so Kafka has acknowledged an epoch's
messages before Bytewax commits the epoch's snapshot. A message Kafka does not take (its topic
is gone, the broker stayed away past ``message.timeout.ms``, it is too large) is logged,
counted (``fpstream_kafka_delivery_errors_total{output}``) and raised: the worker exits
non-zero and, restarted, resumes from its last snapshot and writes the message again. Nothing
is dropped silently.

The producer never creates a topic (``allow.auto.create.topics=false``): a broker would give
it its own default partition count. The flow creates its topics at start instead.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any, cast

from bytewax.connectors.kafka import KafkaSinkMessage
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from confluent_kafka import KafkaException, Message, Producer

from fpstream.errors import FpstreamError
from fpstream.io.metrics import FlowMetrics

log = logging.getLogger("fpstream.io.kafka")

Item = KafkaSinkMessage[bytes | None, bytes | None]


class DeliveryError(FpstreamError, RuntimeError):
    """Kafka did not take an output message; the worker must resume from its snapshot."""


class _Partition(StatelessSinkPartition[Item]):
    def __init__(self, step_id: str, producer: Producer, outputs: dict[str, str],
                 metrics: FlowMetrics) -> None:
        self.step_id = step_id
        self.producer = producer
        self.outputs = outputs
        self.metrics = metrics
        self._failed: list[tuple[str, str]] = []

    def write_batch(self, items: list[Item]) -> None:
        for msg in items:
            self._produce(msg)
        self.producer.flush()
        self._check()

    def close(self) -> None:
        self.producer.flush()
        self._check()

    def _produce(self, msg: Item) -> None:
        topic = msg.topic or ""
        headers = cast(list[tuple[str, str | bytes | None]], msg.headers)
        while True:
            try:
                self.producer.produce(topic, value=msg.value, key=msg.key, headers=headers,
                                      timestamp=msg.timestamp, on_delivery=self._delivered)
                break
            except BufferError:
                self.producer.poll(0.1)  # the local queue is full: let deliveries drain it
            except KafkaException as ex:
                self._failed.append((topic, str(ex.args[0])))
                self._check()
        self.producer.poll(0)

    def _delivered(self, err: Any, msg: Message) -> None:
        if err is not None:
            self._failed.append((msg.topic() or "", err.str()))

    def _check(self) -> None:
        if not self._failed:
            return
        failed, self._failed = self._failed, []
        by_topic = Counter(topic for topic, _ in failed)
        for topic, count in by_topic.items():
            first = next(error for t, error in failed if t == topic)
            self.metrics.delivery_errors.labels(self.outputs.get(topic, "other")).inc(count)
            log.error("%s: %d messages to topic %r not delivered: %s", self.step_id, count,
                      topic, first)
        topic, count = by_topic.most_common(1)[0]
        first = next(error for t, error in failed if t == topic)
        msg = (f"{self.step_id}: {count} messages to topic {topic!r} not delivered ({first}); "
               f"stopping so that the worker resumes from its last snapshot")
        raise DeliveryError(msg)


class KafkaOutput(DynamicSink[Item]):
    """One producer per worker; each message names its topic. ``outputs`` maps a topic to the
    output it carries (``allocations``, ``anomalies``, ``deadletter``), for the metric."""

    def __init__(self, config: dict[str, Any], outputs: dict[str, str],
                 metrics: FlowMetrics) -> None:
        self.config = config
        self.outputs = outputs
        self.metrics = metrics

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _Partition:
        producer = Producer({**self.config, "allow.auto.create.topics": False})
        return _Partition(step_id, producer, self.outputs, self.metrics)
