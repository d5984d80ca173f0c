"""Shared steps of the end-to-end tests: fresh topics, simulator in, outputs read back."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import redis

from fpstream.events import event_from_dict
from fpstream.io.kafka import read_to_end
from fpstream.io.producer import MessageProducer
from fpstream.settings import Settings
from fpstream.simulator import SimMessage, simulate


def fresh_settings(brokers: str, redis_url: str, make_topic: Callable[..., str],
                   redis_prefix: str, partitions: int = 2, **over: Any) -> Settings:
    names = {f"topic_{n}": make_topic(n, partitions) for n in
             ("metrics", "deploys", "allocations", "anomalies", "deadletter")}
    return Settings(brokers=brokers, redis_url=redis_url, redis_prefix=redis_prefix.rstrip(":"),
                    partitions=partitions, metrics_port=0, **names, **over)


def produce(settings: Settings, messages: list[SimMessage]) -> None:
    producer = MessageProducer(settings)
    topics = {"metrics": settings.topic_metrics, "deploys": settings.topic_deploys}
    for m in messages:
        producer.send(topics[m.topic], m.key, m.value, int(m.ts * 1000))
    producer.flush()


def sim(**kwargs: Any) -> list[SimMessage]:
    return list(simulate(**kwargs))


def read_topic(settings: Settings, topic: str, timeout: float = 30.0) -> list[Any]:
    """Every event in ``topic``, decoded, read to the end of each partition."""
    return [event_from_dict(orjson.loads(v))
            for v in read_to_end(settings.kafka_config(), topic, timeout)]


def redis_allocations(client: redis.Redis, settings: Settings) -> list[dict[str, Any]]:
    return [orjson.loads(f[b"data"]) for _, f in client.xrange(settings.key("allocations"))]
