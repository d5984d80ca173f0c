"""Kafka adapters: the source of metrics and deploys, the sink of every output topic."""

from __future__ import annotations

import logging
import time
from typing import Any

from bytewax.connectors.kafka import KafkaError, KafkaSinkMessage, KafkaSourceMessage
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from confluent_kafka import KafkaError as ConfluentKafkaError
from confluent_kafka.admin import AdminClient, NewTopic

from fpstream.events import Allocation, Anomaly, DeadLetter, Event, encode
from fpstream.ingest import Origin, RawMessage
from fpstream.io.kafka_sink import KafkaOutput
from fpstream.io.kafka_source import KafkaInput
from fpstream.io.metrics import FlowMetrics
from fpstream.settings import Settings

log = logging.getLogger("fpstream.io.kafka")

#: librdkafka's default group session timeout makes some brokers slow to settle a group; 6 s
#: is a sound choice for any Kafka and keeps test and demo start-up quick.
CONSUMER_DEFAULTS: dict[str, Any] = {"session.timeout.ms": 6000}


def make_source(settings: Settings, tail: bool = True, batch_size: int = 500,
                metrics: FlowMetrics | None = None) -> KafkaInput:
    """Every partition of both input topics, positions in the snapshots; a position a
    partition no longer has is read again from the start (``fpstream.io.kafka_source``)."""
    return KafkaInput(settings.kafka_config(), [settings.topic_metrics, settings.topic_deploys],
                      metrics if metrics is not None else FlowMetrics(), tail=tail,
                      batch_size=batch_size)


def make_sink(settings: Settings, metrics: FlowMetrics | None = None) -> KafkaOutput:
    """One producer per worker; each message names its topic."""
    outputs = {settings.topic_allocations: "allocations", settings.topic_anomalies: "anomalies",
               settings.topic_deadletter: "deadletter"}
    return KafkaOutput({"linger.ms": "20", **settings.kafka_config()}, outputs,
                       metrics if metrics is not None else FlowMetrics())


def flow_topics(settings: Settings) -> list[str]:
    """The topics the flow reads and writes."""
    return [settings.topic_metrics, settings.topic_deploys, settings.topic_allocations,
            settings.topic_anomalies, settings.topic_deadletter]


def to_raw(msg: KafkaSourceMessage[bytes | None, bytes | None] | KafkaError[Any, Any]
           ) -> RawMessage:
    """A Kafka message as the core sees it; a consumer error keeps its origin for the DLQ."""
    if isinstance(msg, KafkaError):
        inner = msg.msg
        origin = Origin(inner.topic, inner.partition, inner.offset, _ts(inner.timestamp))
        return RawMessage(origin, inner.key, None)
    return RawMessage(Origin(msg.topic, msg.partition, msg.offset, _ts(msg.timestamp)),
                      msg.key, msg.value)


def _ts(timestamp: tuple[int, int] | None) -> float:
    # The broker/producer timestamp, in seconds: the only time a malformed message has, and
    # one that a replay of the topic reproduces.
    if not timestamp or timestamp[1] <= 0:
        return 0.0
    return timestamp[1] / 1000.0


def to_message(event: Event, settings: Settings) -> KafkaSinkMessage[bytes, bytes]:
    """Route an output event to its topic, keyed by app (dead letters by reason)."""
    if isinstance(event, Allocation):
        topic, key = settings.topic_allocations, event.app
    elif isinstance(event, Anomaly):
        topic, key = settings.topic_anomalies, event.app
    elif isinstance(event, DeadLetter):
        topic, key = settings.topic_deadletter, event.reason
    else:
        msg = f"no output topic for {type(event).__name__}"
        raise TypeError(msg)
    headers = [("fpstream-id", event.id.encode())] if hasattr(event, "id") else []
    return KafkaSinkMessage(key.encode(), encode(event), topic=topic, headers=headers)


def read_to_end(config: dict[str, Any], topic: str, timeout: float = 30.0) -> list[bytes]:
    """Every message value in ``topic``, read from the start to the end of each partition.

    Partitions are assigned directly (no group join), so this is quick on any broker. A topic
    that does not exist reads as empty; not reaching the end within ``timeout`` raises.
    """
    consumer = Consumer({**config, "group.id": config.get("group.id", "fpstream-reader"),
                         "enable.partition.eof": True, "enable.auto.commit": False})
    try:
        meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if meta is None or meta.error is not None:
            return []
        parts = [TopicPartition(topic, p, OFFSET_BEGINNING) for p in meta.partitions]
        consumer.assign(parts)
        done: set[int] = set()
        values: list[bytes] = []
        deadline = time.monotonic() + timeout
        while len(done) < len(parts):
            if time.monotonic() > deadline:
                raise TimeoutError(f"did not reach the end of {topic} within {timeout} s")
            for msg in consumer.consume(1000, 0.5):
                err = msg.error()
                if err is None:
                    values.append(msg.value() or b"")
                elif err.code() == ConfluentKafkaError._PARTITION_EOF:
                    done.add(msg.partition() or 0)
        return values
    finally:
        consumer.close()


def input_partitions(settings: Settings, timeout: float = 10.0) -> list[str]:
    """``topic:partition`` for every partition of the metrics and deploys topics."""
    admin = AdminClient(settings.kafka_config())
    meta = admin.list_topics(timeout=timeout).topics
    out: list[str] = []
    for name in (settings.topic_metrics, settings.topic_deploys):
        topic = meta.get(name)
        if topic is not None and topic.error is None:
            out.extend(f"{name}:{p}" for p in sorted(topic.partitions))
    return out


def missing_topics(settings: Settings, names: list[str], timeout: float = 10.0) -> list[str]:
    """Topics among ``names`` that the cluster does not have."""
    admin = AdminClient(settings.kafka_config())
    meta = admin.list_topics(timeout=timeout)
    return [n for n in names if n not in meta.topics]


def create_topics(settings: Settings, names: list[str], partitions: int,
                  timeout: float = 30.0) -> list[str]:
    """Create the missing ones among ``names`` (replication factor: the broker's default) and
    wait until the cluster lists them; returns those created."""
    admin = AdminClient(settings.kafka_config())
    todo = missing_topics(settings, names, timeout)
    if not todo:
        return []
    futures = admin.create_topics([NewTopic(n, num_partitions=partitions) for n in todo])
    for name, future in futures.items():
        try:
            future.result(timeout)
        except Exception as ex:  # noqa: BLE001 - a concurrent creator is fine
            if "TOPIC_ALREADY_EXISTS" not in str(ex):
                raise RuntimeError(f"cannot create topic {name}: {ex}") from ex
    deadline = time.monotonic() + timeout
    while left := missing_topics(settings, todo, timeout):
        if time.monotonic() > deadline:
            raise RuntimeError(f"topics {left} created but not listed within {timeout} s")
        time.sleep(0.1)
    log.info("created topics %s with %d partitions", todo, partitions)
    return todo
