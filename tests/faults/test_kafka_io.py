"""The flow's Kafka input and output on their own, against the real broker: a position the
partition no longer has, and a message Kafka does not take."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from bytewax.connectors.kafka import KafkaSinkMessage
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from fpstream.io.embedded import EmbeddedServices
from fpstream.io.kafka_sink import DeliveryError, KafkaOutput
from fpstream.io.kafka_source import KafkaInput
from fpstream.io.metrics import FlowMetrics

pytestmark = pytest.mark.integration


def test_a_position_beyond_the_end_is_read_again_from_the_start(
        services: EmbeddedServices, make_topic: Callable[..., str]) -> None:
    topic = make_topic("in", partitions=1)
    producer = Producer({"bootstrap.servers": services.brokers})
    for i in range(300):
        producer.produce(topic, value=str(i).encode())
    assert producer.flush(10) == 0
    metrics = FlowMetrics()
    source = KafkaInput({"bootstrap.servers": services.brokers}, [topic], metrics)
    # A position from before the topic was created again, kept without a topic id (as
    # Bytewax's KafkaSource kept it): only the partition's end can tell it is stale.
    part = source.build_part("read", f"0-{topic}", 5000)
    try:
        offsets: list[int] = []
        deadline = time.monotonic() + 30
        while len(offsets) < 300 and time.monotonic() < deadline:
            offsets += [m.offset for m in part.next_batch()]
            time.sleep(0.01)
        assert offsets == list(range(300))
        assert metrics.registry.get_sample_value(
            "fpstream_ingest_partition_resets_total", {"reason": "beyond_end"}) == 1
        offset, topic_id = part.snapshot()
        assert offset == 300 and topic_id
    finally:
        part.close()


def test_a_message_kafka_does_not_take_raises_and_is_counted(
        services: EmbeddedServices, topic_prefix: str) -> None:
    missing = topic_prefix + "gone"
    metrics = FlowMetrics()
    sink = KafkaOutput({"bootstrap.servers": services.brokers, "message.timeout.ms": 2000},
                       {missing: "deadletter"}, metrics)
    part = sink.build("fpstream.kafka", 0, 1)
    with pytest.raises(DeliveryError, match=f"2 messages to topic '{missing}' not delivered"):
        part.write_batch([KafkaSinkMessage(b"k", b"v", topic=missing)] * 2)
    assert metrics.registry.get_sample_value(
        "fpstream_kafka_delivery_errors_total", {"output": "deadletter"}) == 2
    # Not created by the producer with the broker's default partition count.
    assert missing not in AdminClient({"bootstrap.servers": services.brokers}).list_topics(
        timeout=10).topics
