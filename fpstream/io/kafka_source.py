"""The flow's Kafka input: every partition of the input topics, positions in the snapshots.

Like Bytewax's ``KafkaSource`` (whose snapshots it resumes from), it assigns partitions itself
and keeps no consumer group. Unlike it, it does not trust a position blindly: a topic deleted
and created again (a broker that lost its data, an operator's mistake) starts again at offset
0, and a position kept from before would skip what the new topic holds, silently. So the input
notices a position beyond the end of its partition, or a new topic id (asked every
``TOPIC_CHECK_S`` and before the first messages after a quiet spell, so that messages of the
new topic are not read at the old position first), logs it, counts it
(``fpstream_ingest_partition_resets_total{reason}``: ``out_of_range`` when the broker refuses
the position, ``beyond_end`` when the partition's end is behind it, ``new_topic``) and reads
the partition again from the start of what it holds. ``auto.offset.reset`` is ``error``:
librdkafka's own reset would jump to the end.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any, cast

from bytewax.connectors.kafka import KafkaError, KafkaSourceMessage
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, TopicCollection, TopicPartition
from confluent_kafka import KafkaError as ConfluentKafkaError
from confluent_kafka.admin import AdminClient

from fpstream.errors import FpstreamError
from fpstream.io.metrics import FlowMetrics

log = logging.getLogger("fpstream.io.kafka")

Item = KafkaSourceMessage[bytes | None, bytes | None] | KafkaError[bytes | None, bytes | None]
#: A partition's snapshot: the next offset to read and the id of the topic it belongs to
#: (None where the broker gives no topic ids). Bytewax's ``KafkaSource`` kept the offset alone.
Position = tuple[int, str | None]

#: How often the input asks the cluster for its topics' ids.
TOPIC_CHECK_S = 2.0
#: Messages after this long without any are held until the topic's id is checked afresh.
QUIET_S = 1.0
_NO_ID = "AAAAAAAAAAAAAAAAAAAAAA"  # the all-zero id of brokers without topic ids


class KafkaInputError(FpstreamError, RuntimeError):
    """The input cannot read what it was told to: a topic is missing, or the recovery store
    holds a partition of a topic that is no longer an input."""


class TopicIds:
    """The current id of each input topic, asked of the cluster at most every ``every_s``.

    Nothing here blocks but ``wait``: a request starts when one is due and the answers come
    back on librdkafka's thread. An id is None while a topic is missing or its id unknown.
    One per process, shared by the partitions its workers read.
    """

    def __init__(self, config: dict[str, Any], topics: Sequence[str],
                 every_s: float = TOPIC_CHECK_S) -> None:
        self._admin = AdminClient(config)
        self.topics = list(topics)
        self.every_s = every_s
        self._ids: dict[str, str | None] = {}
        self._asked_at: dict[str, float] = {}  # when the request that answered was sent
        self._lock = threading.Lock()
        self._asked = -float("inf")
        self._waiting = 0
        self._answered = threading.Event()

    def current(self, topic: str) -> str | None:
        """The last id known (asking again when it is due)."""
        self._refresh()
        with self._lock:
            return self._ids.get(topic)

    def since(self, topic: str, moment: float) -> tuple[bool, str | None]:
        """``(True, id)`` once an answer asked at or after ``moment`` (monotonic) came back;
        ``(False, None)`` until then, asking for one."""
        with self._lock:
            if self._asked_at.get(topic, -float("inf")) >= moment:
                return True, self._ids.get(topic)
        self._refresh(now=True)
        return False, None

    def wait(self, timeout: float) -> None:
        """Block until a first answer came (or ``timeout`` passed)."""
        self._refresh()
        self._answered.wait(timeout)

    def _refresh(self, now: bool = False) -> None:
        asked = time.monotonic()
        with self._lock:
            if self._waiting or (not now and asked - self._asked < self.every_s):
                return
            self._asked = asked
            self._waiting = len(self.topics)
        try:
            futures = self._admin.describe_topics(TopicCollection(self.topics),
                                                  request_timeout=max(self.every_s, 5.0))
        except Exception:  # noqa: BLE001 - asked again next time
            with self._lock:
                self._waiting = 0
            return
        for topic, future in futures.items():
            future.add_done_callback(self._answer(topic, asked))

    def _answer(self, topic: str, asked: float) -> Callable[[Future[Any]], None]:
        def done(future: Future[Any]) -> None:
            try:
                found = str(future.result().topic_id)
                topic_id = None if found == _NO_ID else found
            except Exception:  # noqa: BLE001 - missing or unreachable: unknown for now
                topic_id = None
            with self._lock:
                self._ids[topic] = topic_id
                self._asked_at[topic] = asked
                self._waiting -= 1
            self._answered.set()

        return done


class _Partition(StatefulSourcePartition[Item, Position]):
    def __init__(self, config: dict[str, Any], topic: str, partition: int,
                 resume: Position | int | None, batch_size: int, ids: TopicIds,
                 metrics: FlowMetrics) -> None:
        offset, topic_id = _position(resume)
        self.topic = topic
        self.partition = partition
        self.batch_size = batch_size
        self.ids = ids
        self.metrics = metrics
        self._offset = offset
        self._topic_id = topic_id
        self._eof = False
        self._quiet_since: float | None = None
        self._held: list[Message] = []
        self._held_at = 0.0
        self._consumer = Consumer(config)
        self._check_topic(ids.current(topic))  # before the first fetch, if it answered in time
        self._consumer.assign([TopicPartition(topic, partition, self._offset)])

    @property
    def name(self) -> str:
        return f"{self.topic}[{self.partition}]"

    def next_batch(self) -> list[Item]:
        if self._eof:
            raise StopIteration()
        if self._held:
            answered, current = self.ids.since(self.topic, self._held_at)
            if not answered:
                return []
            messages, self._held = self._held, []
            if self._check_topic(current):
                return []  # read at a position of the old topic: read again from the start
        else:
            if self._check_topic(self.ids.current(self.topic)):
                return []
            messages = self._consumer.consume(self.batch_size, 0.001)
            if not messages:
                if self._quiet_since is None:
                    self._quiet_since = time.monotonic()
                self._check_end()
                return []
            quiet_since, self._quiet_since = self._quiet_since, None
            if quiet_since is not None and time.monotonic() - quiet_since >= QUIET_S:
                # The first messages after a quiet spell, which a broker restart also is: held
                # until the cluster says, since they came, whose topic they belong to.
                self._held, self._held_at = messages, time.monotonic()
                self.ids.since(self.topic, self._held_at)
                return []
        return self._read(messages)

    def _read(self, messages: list[Message]) -> list[Item]:
        batch: list[Item] = []
        for msg in messages:
            err = msg.error()
            if err is None:
                batch.append(_message(msg))
                offset = msg.offset()
                if offset is not None:  # always, for a message read
                    self._offset = offset + 1
            elif err.code() == ConfluentKafkaError._PARTITION_EOF:
                self._eof = True  # the end of a bounded run: stop after this batch
                break
            elif err.code() == ConfluentKafkaError._AUTO_OFFSET_RESET:
                # Beyond the end, or before the start once retention deleted it.
                self._reset("out_of_range", f"the broker has no offset {self._offset}: "
                            f"{err.str()}")
                break
            else:
                batch.append(KafkaError(err, _message(msg)))  # a dead letter downstream
        return batch

    def snapshot(self) -> Position:
        return (self._offset, self._topic_id)

    def close(self) -> None:
        self._consumer.close()

    def _check_topic(self, current: str | None) -> bool:
        """Take the topic's current id; True if that reset the partition."""
        if current is None or current == self._topic_id:
            return False
        known, self._topic_id = self._topic_id, current
        if known is None or self._offset == OFFSET_BEGINNING:
            return False
        self._reset("new_topic", f"topic id {known} is now {current}")
        return True

    def _check_end(self) -> None:
        # The high watermark of the last fetch: no broker request. A broker that answers a
        # position beyond the end with an empty fetch instead of an error is caught here.
        if self._offset < 0:
            return
        _, high = self._consumer.get_watermark_offsets(
            TopicPartition(self.topic, self.partition), cached=True)
        if 0 <= high < self._offset:
            self._reset("beyond_end", f"offset {self._offset} is beyond its end ({high})")

    def _reset(self, reason: str, detail: str) -> None:
        log.warning("Kafka input %s: %s; reading the partition again from its start",
                    self.name, detail)
        self.metrics.partition_resets.labels(reason).inc()
        self._offset = OFFSET_BEGINNING
        self._consumer.assign([TopicPartition(self.topic, self.partition, OFFSET_BEGINNING)])


def _position(resume: Position | int | None) -> Position:
    if resume is None:
        return (OFFSET_BEGINNING, None)
    if isinstance(resume, int):  # a snapshot of Bytewax's KafkaSource
        return (resume, None)
    return resume


def _message(msg: Message) -> KafkaSourceMessage[bytes | None, bytes | None]:
    # Bytewax types header values as bytes; librdkafka may give None (kept as it is).
    headers = cast(list[tuple[str, bytes]], msg.headers() or [])
    return KafkaSourceMessage(key=msg.key(), value=msg.value(), topic=msg.topic(),
                              headers=headers, latency=msg.latency(),
                              offset=msg.offset(), partition=msg.partition(),
                              timestamp=msg.timestamp())


class KafkaInput(FixedPartitionedSource[Item, Position]):
    """Every partition of ``topics``; ``tail=False`` ends at the end of each (bounded runs).

    Partitions are named ``<partition>-<topic>``, as Bytewax's ``KafkaSource`` names them, so
    that a flow resumes from the snapshots either wrote.
    """

    def __init__(self, config: dict[str, Any], topics: Sequence[str], metrics: FlowMetrics,
                 tail: bool = True, batch_size: int = 500) -> None:
        self.config = config
        self.topics = list(topics)
        self.metrics = metrics
        self.tail = tail
        self.batch_size = batch_size
        self._ids: TopicIds | None = None
        self._lock = threading.Lock()

    def list_parts(self) -> list[str]:
        admin = AdminClient(self.config)
        parts = []
        for topic in self.topics:
            meta = admin.list_topics(topic, timeout=10).topics.get(topic)
            if meta is None or meta.error is not None:
                error = meta.error if meta is not None else "missing"
                msg = f"input step: cannot list the partitions of topic {topic!r}: {error}"
                raise KafkaInputError(msg)
            parts += [f"{p}-{topic}" for p in sorted(meta.partitions)]
        return parts

    def build_part(self, step_id: str, for_part: str,
                   resume_state: Position | int | None) -> _Partition:
        index, topic = for_part.split("-", 1)
        if topic not in self.topics:
            msg = (f"{step_id}: the recovery store holds partition {for_part!r} of topic "
                   f"{topic!r}, which is not among the inputs {self.topics}")
            raise KafkaInputError(msg)
        config = {**self.config, "group.id": "fpstream-flow", "enable.auto.commit": False,
                  "enable.partition.eof": not self.tail,
                  # Positions live in the snapshots; one the broker does not have is ours to
                  # handle, never a silent jump to the end.
                  "auto.offset.reset": "error"}
        return _Partition(config, topic, int(index), resume_state, self.batch_size,
                          self._topic_ids(), self.metrics)

    def _topic_ids(self) -> TopicIds:
        with self._lock:
            if self._ids is None:
                self._ids = TopicIds(self.config, self.topics)
                self._ids.wait(5.0)
            return self._ids
