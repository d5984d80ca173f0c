"""Producing raw messages to Kafka, for the simulator, replays and tests."""

from __future__ import annotations

from typing import Any

from confluent_kafka import KafkaException, Producer

from fpstream.settings import Settings

# Malformed or oversized messages are part of what fpstream must handle, so the producer lets
# them through; the flow's limits, not the producer's, decide what is refused.
_PRODUCER_DEFAULTS: dict[str, Any] = {
    "linger.ms": 20,
    "message.max.bytes": 8 << 20,
    "enable.idempotence": True,
}


class MessageProducer:
    """A thin producer that fails loudly: every delivery error is raised at ``flush``."""

    def __init__(self, settings: Settings, **config: Any) -> None:
        self._producer = Producer({**_PRODUCER_DEFAULTS, **settings.kafka_config(), **config})
        self._errors: list[str] = []
        self.sent = 0

    def _delivered(self, err: Any, msg: Any) -> None:
        if err is not None:
            self._errors.append(f"{msg.topic()}: {err}")

    def send(self, topic: str, key: bytes | None, value: bytes,
             timestamp_ms: int | None = None) -> None:
        kwargs: dict[str, Any] = {"key": key, "value": value, "on_delivery": self._delivered}
        if timestamp_ms is not None:
            kwargs["timestamp"] = timestamp_ms
        while True:
            try:
                self._producer.produce(topic, **kwargs)
                break
            except BufferError:
                self._producer.poll(0.05)  # the local queue is full: let it drain
        self.sent += 1
        self._producer.poll(0)

    def flush(self, timeout: float = 60.0) -> None:
        left = self._producer.flush(timeout)
        if left:
            self._errors.append(f"{left} messages not delivered within {timeout} s")
        if self._errors:
            errors, self._errors = self._errors, []
            msg = f"{len(errors)} delivery errors, first: {errors[0]}"
            raise KafkaException(msg)
