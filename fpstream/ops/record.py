"""Record a Kafka topic to a JSON-lines file and replay it into another topic, byte for byte.

A recording lets a user re-run the flow on exactly the stream it once saw: the same keys,
values, headers and event (Kafka) timestamps, in the same per-key order. Topics such as the
dead-letter one carry arbitrary bytes, so every key, value and header value is stored as JSON
text when it is valid UTF-8 and as base64 (``key_b64``, ``value_b64``) otherwise; a null key,
value or header value stays ``null``. One message per line::

    {"partition": 0, "offset": 7, "timestamp": 1767571260000, "timestamp_type": "CreateTime",
     "key": "web-001", "value": "{...}", "headers": [{"key": "fpstream-id", "value": "a1"}]}

Files ending in ``.gz`` are gzip, in ``.zst`` zstandard, anything else plain text. Lines are
written in timestamp order across partitions (each partition's own order kept), so a paced
replay releases messages as the topic received them. Used by ``fpstream record`` and
``fpstream replay`` in ``fpstream/cli.py``; the functions here work from Python as well.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import heapq
import io
import os
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal, cast

import orjson
import zstandard
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition
from confluent_kafka import KafkaError as ConfluentKafkaError

from fpstream.io.producer import MessageProducer
from fpstream.settings import Settings

#: Kafka's timestamp types by librdkafka's number, as the file spells them.
TIMESTAMP_TYPES: dict[int, str] = {0: "NotAvailable", 1: "CreateTime", 2: "LogAppendTime"}

Compression = Literal["gzip", "zstd", "none"]

#: Called now and then with (messages done, expected total or None when not yet known).
ProgressFn = Callable[[int, int | None], None]

_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_PROGRESS_EVERY_S = 0.1
# A partition that runs this far ahead of the slowest one is paused until the merge catches up,
# so that recording a skewed topic holds a bounded number of messages in memory.
_PAUSE_AT = 20_000
_RESUME_AT = 5_000


class RecordError(RuntimeError):
    """A topic cannot be recorded or replayed into (missing topic, unreachable or stuck broker)."""


class RecordFileError(ValueError):
    """A recording cannot be read; the message names the file and, for bad content, the line."""

    def __init__(self, path: str | os.PathLike[str], reason: str, line: int | None = None
                 ) -> None:
        self.path = str(path)
        self.line = line
        self.reason = reason
        where = f"{self.path} line {line}" if line is not None else self.path
        super().__init__(f"{where}: {reason}")


@dataclass(frozen=True, slots=True)
class Recorded:
    """One Kafka message as recorded: raw bytes plus where and when the topic had it."""

    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...] = ()
    timestamp_ms: int | None = None
    timestamp_type: str = "CreateTime"
    partition: int | None = None
    offset: int | None = None


# --- the line codec -------------------------------------------------------------------------


def _put_bytes(doc: dict[str, Any], name: str, data: bytes | None) -> None:
    if data is None:
        doc[name] = None
        return
    try:
        doc[name] = data.decode("utf-8")
    except UnicodeDecodeError:
        doc[f"{name}_b64"] = base64.b64encode(data).decode("ascii")


def encode_line(rec: Recorded) -> bytes:
    """One JSON line (with its newline) that ``decode_line`` turns back into ``rec``."""
    doc: dict[str, Any] = {"partition": rec.partition, "offset": rec.offset,
                           "timestamp": rec.timestamp_ms, "timestamp_type": rec.timestamp_type}
    _put_bytes(doc, "key", rec.key)
    _put_bytes(doc, "value", rec.value)
    headers = []
    for name, data in rec.headers:
        header: dict[str, Any] = {"key": name}
        _put_bytes(header, "value", data)
        headers.append(header)
    doc["headers"] = headers
    return orjson.dumps(doc) + b"\n"


def _get_bytes(doc: dict[str, Any], name: str, required: bool) -> bytes | None:
    b64 = f"{name}_b64"
    if name in doc and b64 in doc:
        raise ValueError(f"both {name!r} and {b64!r} given")
    if b64 in doc:
        text = doc[b64]
        if not isinstance(text, str):
            raise ValueError(f"{b64!r} must be a base64 string")
        try:
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError) as ex:
            raise ValueError(f"{b64!r} is not valid base64") from ex
    if name not in doc:
        if required:
            raise ValueError(f"missing {name!r} (or {b64!r})")
        return None
    text = doc[name]
    if text is None:
        return None
    if not isinstance(text, str):
        raise ValueError(f"{name!r} must be a string or null, got {type(text).__name__}")
    return text.encode("utf-8")


def _get_int(doc: dict[str, Any], name: str, minimum: int | None = None) -> int | None:
    value = doc.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name!r} must be an integer or null, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name!r} must be >= {minimum}, got {value}")
    return value


def decode_line(line: bytes) -> Recorded:
    """The message on one line; ``ValueError`` says what is wrong with a bad line.

    Only ``value`` (or ``value_b64``) is required, so hand-written files replay too: a missing
    key is null, missing headers are none, and a missing timestamp lets the producer stamp it.
    """
    try:
        doc = orjson.loads(line)
    except orjson.JSONDecodeError as ex:
        raise ValueError(f"not JSON ({ex})") from ex
    if not isinstance(doc, dict):
        raise ValueError(f"expected a JSON object, got {type(doc).__name__}")
    timestamp = _get_int(doc, "timestamp")
    ts_type = doc.get("timestamp_type")
    if ts_type is None:
        ts_type = "NotAvailable" if timestamp is None else "CreateTime"
    elif ts_type not in TIMESTAMP_TYPES.values():
        raise ValueError(f"'timestamp_type' must be one of {sorted(TIMESTAMP_TYPES.values())}, "
                         f"got {ts_type!r}")
    raw_headers = doc.get("headers") or []
    if not isinstance(raw_headers, list):
        raise ValueError("'headers' must be a list")
    headers: list[tuple[str, bytes | None]] = []
    for i, header in enumerate(raw_headers):
        if not isinstance(header, dict) or not isinstance(header.get("key"), str):
            raise ValueError(f"header {i} must be an object with a string 'key'")
        try:
            headers.append((header["key"], _get_bytes(header, "value", required=False)))
        except ValueError as ex:
            raise ValueError(f"header {i}: {ex}") from ex
    return Recorded(key=_get_bytes(doc, "key", required=False),
                    value=_get_bytes(doc, "value", required=True), headers=tuple(headers),
                    timestamp_ms=timestamp, timestamp_type=ts_type,
                    partition=_get_int(doc, "partition", 0), offset=_get_int(doc, "offset", 0))


# --- files ----------------------------------------------------------------------------------


def compression_for(path: str | os.PathLike[str]) -> Compression:
    """What a file's name says it holds: ``.gz`` gzip, ``.zst`` zstandard, else plain."""
    name = os.fspath(path).lower()
    if name.endswith(".gz"):
        return "gzip"
    if name.endswith((".zst", ".zstd")):
        return "zstd"
    return "none"


def _sniff(path: str | os.PathLike[str]) -> Compression | None:
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head.startswith(_GZIP_MAGIC):
        return "gzip"
    if head.startswith(_ZSTD_MAGIC):
        return "zstd"
    return None


class _ZstdReader(io.RawIOBase):
    """Decompresses every frame of a zstandard file and, unlike the library's stream reader,
    raises on a file that ends inside a frame, so a truncated recording is never taken whole."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self._dctx = zstandard.ZstdDecompressor()
        self._obj: Any = None  # the current frame's decompressor, None between frames
        self._pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        while not self._pending:
            chunk = self._raw.read(1 << 16)
            if not chunk:
                if self._obj is not None:
                    raise zstandard.ZstdError("file ends inside a zstandard frame (truncated)")
                return 0
            while chunk:
                if self._obj is None:
                    self._obj = self._dctx.decompressobj()
                self._pending += self._obj.decompress(chunk)
                chunk = b""
                if self._obj.eof:
                    chunk = self._obj.unused_data
                    self._obj = None
        size = min(len(view), len(self._pending))
        view[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        return size

    def close(self) -> None:
        if not self.closed:
            self._raw.close()
        super().close()


def open_records(path: str | os.PathLike[str], mode: Literal["rb", "wb"],
                 compression: Compression | None = None) -> BinaryIO:
    """A binary file that (de)compresses as ``compression`` or, if None, as the name says.

    Reading also recognises gzip and zstandard by their magic bytes, so a compressed file
    with a plain name still reads; a zstandard file of several frames reads as a whole, and
    a truncated one raises as a truncated gzip file does.
    """
    kind = compression or compression_for(path)
    if mode == "rb" and kind == "none":
        kind = _sniff(path) or "none"
    if kind == "gzip":
        return cast(BinaryIO, gzip.open(path, mode, compresslevel=6))
    if kind == "zstd":
        raw = open(path, mode)  # noqa: SIM115 - closed by the zstd stream
        try:
            if mode == "rb":
                return cast(BinaryIO, io.BufferedReader(_ZstdReader(raw), 1 << 16))
            writer = zstandard.ZstdCompressor(level=3).stream_writer(raw, closefd=True)
            return cast(BinaryIO, io.BufferedWriter(cast(Any, writer), 1 << 16))
        except BaseException:
            raw.close()
            raise
    return cast(BinaryIO, open(path, mode))  # noqa: SIM115 - the caller closes it


def read_records(path: str | os.PathLike[str]) -> Iterator[tuple[int, Recorded]]:
    """(line number, message) for each non-blank line; a problem raises ``RecordFileError``."""
    try:
        fh = open_records(path, "rb")
    except OSError as ex:
        raise RecordFileError(path, f"cannot read: {ex.strerror or ex}") from ex
    lineno = 0
    with fh:
        try:
            for lineno, line in enumerate(fh, 1):  # noqa: B007 - lineno is read after the loop
                if not line.strip():
                    continue
                try:
                    rec = decode_line(line)
                except ValueError as ex:
                    raise RecordFileError(path, str(ex), lineno) from ex
                yield lineno, rec
        except RecordFileError:
            raise
        except (OSError, EOFError, ValueError, zlib.error, zstandard.ZstdError) as ex:
            # Truncated or corrupt compressed data surfaces here, not at open.
            raise RecordFileError(path, f"unreadable after line {lineno}: {ex}") from ex


@dataclass(slots=True)
class FileSummary:
    """What a full pass over a recording found: it is valid, and this is its shape."""

    messages: int = 0
    max_partition: int | None = None
    unpartitioned: int = 0
    first_ts_ms: int | None = None
    last_ts_ms: int | None = None


def scan_records(path: str | os.PathLike[str]) -> FileSummary:
    """Check every line of a recording before anything is produced, and count its messages."""
    summary = FileSummary()
    for _, rec in read_records(path):
        summary.messages += 1
        if rec.partition is None:
            summary.unpartitioned += 1
        elif summary.max_partition is None or rec.partition > summary.max_partition:
            summary.max_partition = rec.partition
        if rec.timestamp_ms is not None:
            if summary.first_ts_ms is None:
                summary.first_ts_ms = rec.timestamp_ms
            summary.last_ts_ms = rec.timestamp_ms
    return summary


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
    origin: tuple[int, float] | None = None  # (first timestamp, when it was sent)
    for _, rec in read_records(path):
        if speed is not None and rec.timestamp_ms is not None:
            if origin is None:
                origin = (rec.timestamp_ms, time.monotonic())
            due = origin[1] + (rec.timestamp_ms - origin[0]) / 1000.0 / speed
            while (left := due - time.monotonic()) > 0:
                producer.wait(min(left, 0.2))
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
