"""Helpers for flow tests: simulator output as the Kafka messages the flow would read."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from bytewax.connectors.kafka import KafkaSourceMessage

from fpstream.events import Allocation, Anomaly, DeadLetter, event_from_dict
from fpstream.fleet.stage import ClusterDef, ClusterSnapshot
from fpstream.settings import Settings
from fpstream.simulator import simulate


def kafka_messages(settings: Settings, **sim: Any) -> tuple[list[KafkaSourceMessage], Counter]:
    """Simulator messages wrapped as ``KafkaSourceMessage``; also the injected bad reasons."""
    offsets: Counter[str] = Counter()
    bad: Counter[str] = Counter()
    out = []
    for m in simulate(**sim):
        topic = settings.topic_metrics if m.topic == "metrics" else settings.topic_deploys
        out.append(KafkaSourceMessage(key=m.key, value=m.value, topic=topic, partition=0,
                                      offset=offsets[topic], timestamp=(1, int(m.ts * 1000))))
        offsets[topic] += 1
        if m.bad_reason:
            bad[m.bad_reason] += 1
    return out, bad


@dataclass
class Outputs:
    """What a flow run wrote to Kafka and Redis, decoded and sorted by kind."""

    kafka: list[Any] = field(default_factory=list)
    #: What reached the Redis output, as ``(routing key, item)``.
    redis_keyed: list[tuple[str, Any]] = field(default_factory=list)

    @property
    def redis(self) -> list[Any]:
        return [item for _, item in self.redis_keyed]

    def kafka_events(self) -> list[Any]:
        import orjson

        return [event_from_dict(orjson.loads(m.value)) for m in self.kafka]

    @property
    def allocations(self) -> list[Allocation]:
        return [e for e in self.kafka_events() if isinstance(e, Allocation)]

    @property
    def anomalies(self) -> list[Anomaly]:
        return [e for e in self.kafka_events() if isinstance(e, Anomaly)]

    @property
    def deadletters(self) -> list[DeadLetter]:
        return [e for e in self.kafka_events() if isinstance(e, DeadLetter)]

    @property
    def snapshots(self) -> list[ClusterSnapshot]:
        return [e for e in self.redis if isinstance(e, ClusterSnapshot)]

    @property
    def cluster_defs(self) -> list[ClusterDef]:
        return [c for snap in self.snapshots for c in snap.clusters]
