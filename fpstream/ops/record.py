"""Record a Kafka topic to a JSON-lines file and replay it into another topic, byte for byte.

A recording lets a user re-run the flow on exactly the stream it once saw: the same keys,
values, headers and event (Kafka) timestamps, in the same per-key order. The file format is
``fpstream.records``. Lines are written in timestamp order across partitions (each partition's
own order kept), so a paced replay releases messages as the topic received them. Used by
``fpstream record`` and ``fpstream replay`` in ``fpstream/cli.py``; the functions here work
from Python as well.
"""

from __future__ import annotations

import heapq
import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition
from confluent_kafka import KafkaError as ConfluentKafkaError

from fpstream.errors import FpstreamError
from fpstream.io.producer import MessageProducer
from fpstream.records import (
    TIMESTAMP_TYPES,
    FileSummary,
    Recorded,
    compression_for,
    encode_line,
    open_records,
    read_records,
    scan_records,
)
from fpstream.settings import Settings

#: Called now and then with (messages done, expected total or None when not yet known).
ProgressFn = Callable[[int, int | None], None]

_PROGRESS_EVERY_S = 0.1
# A partition that runs this far ahead of the slowest one is paused until the merge catches up,
# so that recording a skewed topic holds a bounded number of messages in memory.
_PAUSE_AT = 20_000
_RESUME_AT = 5_000


class RecordError(FpstreamError, RuntimeError):
    """A topic cannot be recorded or replayed into (missing topic, unreachable or stuck broker)."""


# --- record ---------------------------------------------------------------------------------


@dataclass(slots=True)
class RecordStats:
    """What ``record_topic`` wrote."""

    topic: str
    out: str
    messages: int = 0
    per_partition: dict[int, int] = field(default_factory=dict)
    seconds: float = 0.0


def _from_message(msg: Any) -> Recorded:
    ts_type, ts = msg.timestamp()
    return Recorded(key=msg.key(), value=msg.value(), headers=tuple(msg.headers() or ()),
                    timestamp_ms=ts if ts_type != 0 else None,
                    timestamp_type=TIMESTAMP_TYPES.get(ts_type, "CreateTime"),
                    partition=msg.partition(), offset=msg.offset())


class _Ticker:
    """Calls a progress function at most every ``_PROGRESS_EVERY_S`` seconds (and on close)."""

    def __init__(self, progress: ProgressFn | None) -> None:
        self._progress = progress
        self._next = 0.0

    def __call__(self, done: int, total: int | None, force: bool = False) -> None:
        if self._progress is None:
            return
        now = time.monotonic()
        if force or now >= self._next:
            self._next = now + _PROGRESS_EVERY_S
            self._progress(done, total)


def _consumer(settings: Settings) -> Consumer:
    return Consumer(settings.kafka_config(**{
        "group.id": "fpstream-record", "enable.auto.commit": False,
        "enable.auto.offset.store": False, "enable.partition.eof": True,
        "auto.offset.reset": "earliest", "allow.auto.create.topics": False}))


def record_topic(settings: Settings, topic: str, out: str | os.PathLike[str], *,
                 limit: int | None = None, timeout: float = 30.0,
                 progress: ProgressFn | None = None) -> RecordStats:
    """Write every message of ``topic``, from the start to its end, to ``out``.

    Partitions are assigned directly (no consumer group, no committed offsets), so recording
    never disturbs the flow's consumers. Each partition ends where it ended when recording
    reached it: at the high watermark of its first fetch, or at end-of-partition, whichever
    comes first, so a topic that keeps growing still finishes. Lines are merged across
    partitions by timestamp (ties by partition), each partition's order kept. ``limit`` stops
    after that many messages. The file appears only when complete (written beside it first);
    no progress for ``timeout`` seconds raises ``RecordError``.
    """
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    started = time.monotonic()
    out_path = Path(out)
    stats = RecordStats(topic=topic, out=str(out_path))
    consumer = _consumer(settings)
    tmp = out_path.with_name(f".{out_path.name}.partial")
    try:
        try:
            meta = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
        except KafkaException as ex:
            raise RecordError(f"cannot reach Kafka at {settings.brokers}: {ex}") from ex
        if meta is None or meta.error is not None:
            raise RecordError(f"topic {topic!r} does not exist at {settings.brokers}")
        partitions = sorted(meta.partitions)
        with open_records(tmp, "wb", compression_for(out_path)) as fh:
            _record_into(consumer, topic, partitions, fh, stats, limit, timeout, progress)
        os.replace(tmp, out_path)
    finally:
        consumer.close()
        with suppress(FileNotFoundError):
            tmp.unlink()
    stats.seconds = time.monotonic() - started
    return stats


def _record_into(consumer: Consumer, topic: str, partitions: list[int], fh: BinaryIO,
                 stats: RecordStats, limit: int | None, timeout: float,
                 progress: ProgressFn | None) -> None:
    queues: dict[int, deque[Recorded]] = {p: deque() for p in partitions}
    heads: list[tuple[int, int]] = []  # (timestamp, partition) of every non-empty queue's head
    waiting = set(partitions)  # not finished and nothing buffered: the merge must wait for them
    done: set[int] = set()
    throttled: set[int] = set()
    end: dict[int, int | None] = {}  # first offset past the partition's end, if known
    first: dict[int, int] = {}
    last_offset: dict[int, int] = {}
    received: dict[int, int] = dict.fromkeys(partitions, 0)
    tick = _Ticker(progress)

    def total() -> int | None:
        """The expected message count, once every partition's end is known."""
        expected = 0
        for p in partitions:
            stop = end.get(p)
            if stop is not None:
                expected += stop - first[p]
            elif p in done:
                expected += received[p]
            else:
                return None
        return min(expected, limit) if limit is not None else expected

    def finish(p: int) -> None:
        done.add(p)
        waiting.discard(p)
        throttled.discard(p)
        consumer.pause([TopicPartition(topic, p)])

    def push_head(p: int) -> None:
        rec = queues[p][0]
        heapq.heappush(heads, (rec.timestamp_ms if rec.timestamp_ms is not None else -1, p))

    def emit() -> None:
        while heads and not waiting and (limit is None or stats.messages < limit):
            _, p = heapq.heappop(heads)
            fh.write(encode_line(queues[p].popleft()))
            stats.messages += 1
            stats.per_partition[p] = stats.per_partition.get(p, 0) + 1
            if queues[p]:
                push_head(p)
            elif p not in done:
                waiting.add(p)
            if p in throttled and len(queues[p]) <= _RESUME_AT:
                throttled.discard(p)
                consumer.resume([TopicPartition(topic, p)])

    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
    idle_since = time.monotonic()
    while len(done) < len(partitions) and (limit is None or stats.messages < limit):
        batch = consumer.consume(1000, 0.5)
        if batch:
            idle_since = time.monotonic()
        elif time.monotonic() - idle_since > timeout:
            missing = sorted(set(partitions) - done)
            raise RecordError(f"no progress on {topic} partitions {missing} for {timeout:.0f} s")
        for msg in batch:
            p = msg.partition()
            err = msg.error()
            if err is not None:
                if err.code() == ConfluentKafkaError._PARTITION_EOF:
                    if p is not None and p not in done:
                        finish(p)
                elif not err.retriable():
                    where = f"partition {p}" if p is not None else "topic"
                    raise RecordError(f"cannot read {topic} {where}: {err}")
                continue
            offset = msg.offset()
            if p is None or offset is None or p in done or offset <= last_offset.get(p, -1):
                continue  # a finished partition, or refetched after a resume
            if p not in end:
                high = consumer.get_watermark_offsets(TopicPartition(topic, p), cached=True)[1]
                end[p] = high if high > offset else None
                first[p] = offset
            stop = end[p]
            if stop is not None and offset >= stop:
                finish(p)
                continue
            last_offset[p] = offset
            received[p] += 1
            queues[p].append(_from_message(msg))
            if len(queues[p]) == 1:
                push_head(p)
            waiting.discard(p)
            if stop is not None and offset >= stop - 1:
                finish(p)
            elif len(queues[p]) >= _PAUSE_AT and p not in throttled:
                throttled.add(p)
                consumer.pause([TopicPartition(topic, p)])
        emit()
        tick(stats.messages, total())
    emit()
    tick(stats.messages, stats.messages, force=True)


# --- replay ---------------------------------------------------------------------------------


@dataclass(slots=True)
class ReplayStats:
    """What ``replay_file`` produced."""

    topic: str
    messages: int = 0
    seconds: float = 0.0
    first_ts_ms: int | None = None
    last_ts_ms: int | None = None


class _RecordProducer(MessageProducer):
    """The project's producer (idempotent, so retries keep order), sending whole messages."""

    def send_recorded(self, topic: str, rec: Recorded, partition: int | None) -> None:
        kwargs: dict[str, Any] = {"key": rec.key, "value": rec.value,
                                  "on_delivery": self._delivered}
        if rec.headers:
            kwargs["headers"] = list(rec.headers)
        if rec.timestamp_ms is not None and rec.timestamp_type != "NotAvailable":
            kwargs["timestamp"] = rec.timestamp_ms
        if partition is not None:
            kwargs["partition"] = partition
        while True:
            try:
                self._producer.produce(topic, **kwargs)
                break
            except BufferError:
                self._producer.poll(0.05)
        self.sent += 1
        self._producer.poll(0)

    def wait(self, seconds: float) -> None:
        """Sleep while serving delivery reports."""
        self._producer.poll(seconds)


def partition_count(settings: Settings, topic: str, timeout: float = 10.0) -> int | None:
    """How many partitions ``topic`` has, or None if the cluster does not have it."""
    from confluent_kafka.admin import AdminClient

    try:
        # All topics: asking for one by name lets a broker with auto-creation create it.
        meta = AdminClient(settings.kafka_config()).list_topics(timeout=timeout)
    except KafkaException as ex:
        raise RecordError(f"cannot reach Kafka at {settings.brokers}: {ex}") from ex
    found = meta.topics.get(topic)
    if found is None or found.error is not None:
        return None
    return len(found.partitions)


def _prepare_topic(settings: Settings, topic: str, summary: FileSummary, keep_partitions: bool,
                   create_topic: bool, partitions: int | None) -> None:
    from fpstream.io.kafka import create_topics

    count = partition_count(settings, topic)
    if count is None:
        if not create_topic:
            raise RecordError(f"topic {topic!r} does not exist; create it or pass --create-topic")
        want = partitions or (summary.max_partition + 1 if summary.max_partition is not None
                              else settings.partitions)
        try:
            create_topics(settings, [topic], want)
        except (KafkaException, RuntimeError) as ex:
            raise RecordError(str(ex)) from ex
        deadline = time.monotonic() + 10.0
        while (count := partition_count(settings, topic)) is None:
            if time.monotonic() > deadline:
                raise RecordError(f"topic {topic!r} was created but does not show in metadata")
            time.sleep(0.1)
    if keep_partitions:
        if summary.unpartitioned:
            raise RecordError(f"{summary.unpartitioned} recorded messages have no partition; "
                              "replay them without keeping partitions")
        if summary.max_partition is not None and summary.max_partition >= count:
            raise RecordError(f"topic {topic!r} has {count} partitions, the recording uses "
                              f"partition {summary.max_partition}")


class Pacer:
    """Holds each message back until its recorded time, ``speed`` times faster than recorded.

    The first timestamp seen is sent at once; a later one waits until its offset from the first,
    divided by ``speed``, has passed on ``clock``. ``wait`` is how the time is spent (the producer
    serves delivery reports meanwhile), in slices of at most ``slice_s``.
    """

    def __init__(self, speed: float, wait: Callable[[float], None],
                 clock: Callable[[], float] = time.monotonic, slice_s: float = 0.2) -> None:
        if speed <= 0:
            raise ValueError(f"speed must be > 0, got {speed}")
        self.speed = speed
        self._wait = wait
        self._clock = clock
        self._slice = slice_s
        self._origin: tuple[int, float] | None = None  # (first timestamp, when it was sent)

    def due(self, timestamp_ms: int) -> float:
        """The clock reading at which a message with this timestamp may be sent."""
        if self._origin is None:
            self._origin = (timestamp_ms, self._clock())
        return self._origin[1] + (timestamp_ms - self._origin[0]) / 1000.0 / self.speed

    def until(self, timestamp_ms: int) -> None:
        """Wait until a message with this timestamp is due."""
        due = self.due(timestamp_ms)
        while (left := due - self._clock()) > 0:
            self._wait(min(left, self._slice))


def replay_file(settings: Settings, path: str | os.PathLike[str], topic: str, *,
                speed: float | None = None, keep_partitions: bool = False,
                create_topic: bool = False, partitions: int | None = None,
                progress: ProgressFn | None = None) -> ReplayStats:
    """Produce a recording's messages to ``topic`` in file order, as they were recorded.

    Each message keeps its key, value, headers and timestamp (sent as CreateTime, so the flow
    sees the recorded event times; a target topic configured for LogAppendTime overrides it,
    and a recorded timestamp of 0 is stamped anew by the client). The producer's partitioner
    places messages by key, keeping per-key order (librdkafka's default spreads null and empty
    keys at random; set ``partitioner`` in ``kafka_options`` to match other clients);
    ``keep_partitions`` sends each to its recorded partition instead. ``speed`` paces by the
    recorded timestamps, that many times faster than recorded (1 = real time); None sends as
    fast as possible. The whole file is
    checked first, so a bad line stops the replay before anything is sent.
    """
    if speed is not None and speed <= 0:
        raise ValueError(f"speed must be > 0, got {speed}")
    summary = scan_records(path)
    _prepare_topic(settings, topic, summary, keep_partitions, create_topic, partitions)
    stats = ReplayStats(topic=topic, first_ts_ms=summary.first_ts_ms,
                        last_ts_ms=summary.last_ts_ms)
    tick = _Ticker(progress)
    started = time.monotonic()
    producer = _RecordProducer(settings)
    pacer = Pacer(speed, wait=producer.wait) if speed is not None else None
    for _, rec in read_records(path):
        if pacer is not None and rec.timestamp_ms is not None:
            pacer.until(rec.timestamp_ms)
        producer.send_recorded(topic, rec, rec.partition if keep_partitions else None)
        stats.messages += 1
        tick(stats.messages, summary.messages)
    producer.flush()
    tick(stats.messages, summary.messages, force=True)
    stats.seconds = time.monotonic() - started
    return stats


# --- progress -------------------------------------------------------------------------------


@contextmanager
def progress_bar(description: str) -> Iterator[ProgressFn]:
    """A rich progress bar on standard error, fed through the returned function."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), TimeRemainingColumn(),
                   console=Console(stderr=True), transient=False)
    with bar:
        task = bar.add_task(description, total=None)

        def update(done: int, total: int | None) -> None:
            bar.update(task, completed=done, total=total)

        yield update
