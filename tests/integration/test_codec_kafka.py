"""Events survive a trip through the real broker and the codec unchanged."""

from __future__ import annotations

import pytest
from confluent_kafka import Consumer

from fpstream.events import Allocation, MetricSample, decode_message, encode, event_from_dict
from fpstream.io.embedded import CONSUMER_DEFAULTS
from fpstream.io.producer import MessageProducer
from fpstream.settings import Settings

pytestmark = pytest.mark.integration


def test_samples_round_trip_through_kafka(services, make_topic) -> None:
    topic = make_topic("codec", partitions=2)
    settings = Settings(brokers=services.brokers)
    samples = [MetricSample(1_750_000_000.0 + i, f"app-{i % 3}", f"vm-{i}",
                            {"cpu_cores": i / 10, "mem_bytes": 1e9 + i}, 60.0,
                            {"team": "t"}, {"cpu_cores": 4.0}) for i in range(30)]
    allocation = Allocation("app-0/vm-0/1", 1_750_000_000.0, "app-0", "vm-0", "resize",
                            "m.large", {"cpu_cores": 1.5}, {"cpu_cores": 1.2}, 2, 0.7,
                            "p95-h15", 3)
    producer = MessageProducer(settings)
    for s in samples:
        producer.send(topic, s.app.encode(), encode(s))
    producer.send(topic, b"app-0", encode(allocation))
    producer.flush()

    consumer = Consumer({"bootstrap.servers": services.brokers, "group.id": topic,
                         "auto.offset.reset": "earliest", **CONSUMER_DEFAULTS})
    consumer.subscribe([topic])
    got: list[bytes] = []
    try:
        for _ in range(60):
            got.extend(m.value() for m in consumer.consume(100, 1.0) if m.error() is None)
            if len(got) == len(samples) + 1:
                break
    finally:
        consumer.close()
    decoded = [e for raw in got if b'"metrics"' in raw for e in decode_message(raw).events]
    assert sorted(decoded, key=lambda s: s.ts) == samples
    import orjson

    (alloc_raw,) = [raw for raw in got if b'"instance_type"' in raw]
    assert event_from_dict(orjson.loads(alloc_raw)) == allocation
