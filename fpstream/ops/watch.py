"""``fpstream watch``: follow fpstream's output topics and print every event as one line.

Partitions are assigned directly, never through a consumer group: watching starts at once on
any broker, commits nothing and leaves every group's offsets where they are. It starts at the
end of each partition (``--from-beginning``: at the start), and reaches it before the line on
standard error says it is following, so an event produced after that line is always shown.
Registered by ``fpstream/cli.py``; imports nothing from the CLI.

>>> print(format_event({"ts": 1767571500.0, "id": "web-003/vm-1/2", "app": "web-003",
...     "instance": "vm-1", "kind": "resize", "instance_type": "m.large", "policy": "lean",
...     "cluster": 2, "reserve": {"cpu_cores": 1.375, "mem_bytes": 3 * 2**30}}))
2026-01-05 00:05:00Z resize    web-003/vm-1 #2 m.large cpu 1.38 mem 3.0GiB lean cluster 2
"""

from __future__ import annotations

import fnmatch
import itertools
import os
import shlex
import sys
import time
import typing
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

from fpstream.errors import FpstreamError
from fpstream.events import Allocation
from fpstream.settings import Settings, SettingsError, load_settings

#: Short names for fpstream's output topics: the setting that names each.
TOPIC_SETTINGS: dict[str, str] = {
    "allocations": "topic_allocations",
    "anomalies": "topic_anomalies",
    "deadletter": "topic_deadletter",
}
DEFAULT_TOPICS: tuple[str, ...] = ("allocations", "anomalies")
KINDS: tuple[str, ...] = typing.get_args(typing.get_type_hints(Allocation)["kind"])


class WatchError(FpstreamError):
    """The topics cannot be followed (unknown topic, unreachable broker)."""


def resolve_topics(settings: Settings, names: Iterable[str]) -> list[str]:
    """Topic names for short names (``allocations``, ``anomalies``, ``deadletter``) or names."""
    out: list[str] = []
    for name in names:
        topic = getattr(settings, TOPIC_SETTINGS[name]) if name in TOPIC_SETTINGS else name
        if topic not in out:
            out.append(topic)
    return out


@dataclass(frozen=True, slots=True)
class EventFilter:
    """Which events to show: apps by name or glob (``web-*``), allocations by kind."""

    apps: tuple[str, ...] = ()
    kinds: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        unknown = sorted(set(self.kinds) - set(KINDS))
        if unknown:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {', '.join(unknown)}")

    def keep(self, doc: dict[str, Any]) -> bool:
        if self.apps:
            app = doc.get("app")
            if not isinstance(app, str) or not any(fnmatch.fnmatchcase(app, p)
                                                   for p in self.apps):
                return False
        return not self.kinds or doc.get("kind") in self.kinds


def _when(ts: Any) -> str:
    if not isinstance(ts, int | float) or ts <= 0:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def human_bytes(n: float, suffix: str = "") -> str:
    """``human_bytes(3 * 2**30)`` is ``'3.0GiB'``: IEC units, a decimal below 100."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            digits = 1 if unit != "B" and abs(n) < 100 else 0
            return f"{n:.{digits}f}{unit}{suffix}"
        n /= 1024
    raise AssertionError("unreachable")


def human(metric: str, value: Any) -> str:
    """A resource amount in its unit: cores, bytes, bytes per second."""
    if not isinstance(value, int | float):
        return "?"
    if metric.endswith("_bytes"):
        return human_bytes(value)
    if metric.endswith("_bps"):
        return human_bytes(value, "/s")
    return f"{value:.3g}" if abs(value) >= 100 else f"{value:.2f}"


def format_event(doc: dict[str, Any]) -> str:
    """One compact line for an allocation, an anomaly or a dead letter."""
    when = _when(doc.get("ts"))
    where = f"{doc.get('app', '?')}/{doc.get('instance', '?')}"
    if "instance_type" in doc:
        seq = str(doc.get("id", "")).rsplit("/", 1)[-1]
        reserve = doc.get("reserve") or {}
        return (f"{when} {doc.get('kind', '?'):<9} {where} #{seq} {doc['instance_type']} "
                f"cpu {human('cpu_cores', reserve.get('cpu_cores'))} "
                f"mem {human('mem_bytes', reserve.get('mem_bytes'))} "
                f"{doc.get('policy', '?')} cluster {doc.get('cluster', '?')}")
    if "severity" in doc:
        metric = str(doc.get("metric", "?"))
        score = doc.get("score")
        scored = f"score {score:+.1f} " if isinstance(score, int | float) else ""
        return (f"{when} {'anomaly':<9} {where} {metric} "
                f"observed {human(metric, doc.get('observed'))} "
                f"predicted {human(metric, doc.get('predicted'))} {scored}{doc['severity']}")
    if "reason" in doc:
        origin = f"{doc.get('topic')}[{doc.get('partition')}]@{doc.get('offset')}"
        return f"{when} {'dead':<9} {doc['reason']} {origin}: {doc.get('error', '')}"
    return f"{when} {'event':<9} {orjson.dumps(doc).decode()}"


def watch_command(settings: Settings, program: str = "fpstream") -> str:
    """The shell command that watches ``settings``' broker and output topics."""
    args = [program, "watch", "--brokers", settings.brokers]
    defaults = Settings()
    for short in DEFAULT_TOPICS:
        name = TOPIC_SETTINGS[short]
        if getattr(settings, name) != getattr(defaults, name):
            args += ["--topic", getattr(settings, name)]
    return shlex.join(args)


def program_name() -> str:
    """How this process was started, if as ``fpstream``: a command that can be pasted back."""
    argv0 = sys.argv[0] if sys.argv else ""
    return argv0 if Path(argv0).name == "fpstream" else "fpstream"


def assign(consumer: Consumer, topics: Sequence[str], from_beginning: bool,
           timeout: float = 10.0) -> list[TopicPartition]:
    """Assign every partition of ``topics`` at its start or at the end offset the broker
    lists for it."""
    parts: list[TopicPartition] = []
    for topic in topics:
        try:
            meta = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
        except KafkaException as ex:
            raise WatchError(f"cannot read the metadata of {topic!r}: {ex}") from ex
        if meta is None or meta.error is not None or not meta.partitions:
            raise WatchError(f"topic {topic!r} does not exist")
        for p in sorted(meta.partitions):
            if from_beginning:
                parts.append(TopicPartition(topic, p, OFFSET_BEGINNING))
            else:
                _, high = consumer.get_watermark_offsets(TopicPartition(topic, p),
                                                         timeout=timeout)
                parts.append(TopicPartition(topic, p, high))
    consumer.assign(parts)
    return parts


def skip_to_end(consumer: Consumer, parts: Sequence[TopicPartition],
                timeout: float = 30.0) -> list[Message]:
    """Read every assigned partition up to its end, dropping what was already there; returns
    the messages that arrived after a partition's end was reached.

    On Kafka the listed end is the end and this takes one fetch. The embedded broker lists
    the offset after the first record of a partition's last batch instead; the rest of that
    batch is read and dropped here, so that "from the end" means the same on every broker.
    """
    waiting = {(p.topic, p.partition) for p in parts}
    after: list[Message] = []
    deadline = time.monotonic() + timeout
    while waiting:
        if time.monotonic() > deadline:
            names = ", ".join(f"{t}[{p}]" for t, p in sorted(waiting))
            raise WatchError(f"did not reach the end of {names} within {timeout:.0f} s")
        for msg in consumer.consume(500, 0.2):
            err = msg.error()
            where = (msg.topic(), msg.partition())
            if err is not None and err.code() == KafkaError._PARTITION_EOF:
                waiting.discard(where)
            elif err is not None and err.fatal():
                raise KafkaException(err)
            elif where not in waiting:
                after.append(msg)
    return after


def _consume(consumer: Consumer) -> Iterator[Message]:
    while True:
        yield from consumer.consume(500, 0.5)


def follow(settings: Settings, topics: Sequence[str], *, from_beginning: bool = False,
           event_filter: EventFilter | None = None, limit: int | None = None,
           emit: Callable[[bytes, dict[str, Any]], None],
           ready: Callable[[list[TopicPartition]], None] = lambda parts: None,
           warn: Callable[[str], None] = lambda text: None) -> int:
    """Call ``emit(value, event)`` for every event that passes the filter, until ``limit``
    events (forever if None); returns how many were emitted. ``ready`` is called once the
    start position is reached: from then on, nothing produced is missed."""
    consumer = Consumer(settings.kafka_config(**{
        "group.id": "fpstream-watch", "enable.auto.commit": False,
        "enable.auto.offset.store": False, "enable.partition.eof": True,
        "allow.auto.create.topics": False}))
    keep = (event_filter or EventFilter()).keep
    shown = 0
    try:
        parts = assign(consumer, topics, from_beginning)
        backlog = [] if from_beginning else skip_to_end(consumer, parts)
        ready(parts)
        for msg in itertools.chain(backlog, _consume(consumer)):
            err = msg.error()
            if err is not None:
                if err.fatal():
                    raise KafkaException(err)
                if err.code() != KafkaError._PARTITION_EOF:
                    warn(f"{msg.topic()}: {err.str()}")
                continue
            value = msg.value() or b""
            try:
                doc = orjson.loads(value)
            except orjson.JSONDecodeError:
                warn(f"{msg.topic()}[{msg.partition()}]@{msg.offset()} is not JSON")
                continue
            if isinstance(doc, dict) and keep(doc):
                emit(value, doc)
                shown += 1
                if limit is not None and shown >= limit:
                    break
    finally:
        consumer.close()
    return shown


def watch(
    topic: Annotated[list[str] | None, typer.Option(
        "--topic", "-t", help="Topic to follow, repeatable: allocations, anomalies, deadletter "
        "or a topic name. Default: allocations and anomalies.")] = None,
    app: Annotated[list[str] | None, typer.Option(
        "--app", help="Only this app (a name or a glob such as 'web-*'), repeatable.")] = None,
    kind: Annotated[list[str] | None, typer.Option(
        "--kind", help=f"Only allocations of this kind ({', '.join(KINDS)}), repeatable.")]
    = None,
    json_lines: Annotated[bool, typer.Option(
        "--json", help="Print each event's JSON as it is on the topic.")] = False,
    from_beginning: Annotated[bool, typer.Option(
        "--from-beginning", help="Start at the oldest retained event instead of the end.")]
    = False,
    limit: Annotated[int | None, typer.Option(
        "--limit", min=1, help="Exit after this many events.")] = None,
    brokers: Annotated[str | None, typer.Option(
        "--brokers", help="Kafka bootstrap servers (host:port,...).")] = None,
    config: Annotated[Path | None, typer.Option(
        "--config", help="TOML settings file (then FPSTREAM_* env, then flags).")] = None,
) -> None:
    """Follow fpstream's allocations and anomalies (or any of its topics) and print each event
    as a line: what fpstream decides, as it decides it."""
    try:
        settings = load_settings(config, overrides={"brokers": brokers})
        event_filter = EventFilter(tuple(app or ()), tuple(kind or ()))
    except (SettingsError, ValueError) as ex:
        typer.echo(f"fpstream watch: {ex}", err=True)
        raise typer.Exit(2) from ex
    topics = resolve_topics(settings, topic or DEFAULT_TOPICS)

    def emit(value: bytes, doc: dict[str, Any]) -> None:
        line = value.decode("utf-8", "replace").strip() if json_lines else format_event(doc)
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    def ready(parts: list[TopicPartition]) -> None:
        start = "the beginning" if from_beginning else "the end"
        typer.echo(f"fpstream watch: following {', '.join(topics)} ({len(parts)} partitions) "
                   f"at {settings.brokers} from {start}; Ctrl-C stops", err=True)

    try:
        follow(settings, topics, from_beginning=from_beginning, event_filter=event_filter,
               limit=limit, emit=emit, ready=ready,
               warn=lambda text: typer.echo(f"fpstream watch: {text}", err=True))
    except WatchError as ex:
        typer.echo(f"fpstream watch: {ex} at {settings.brokers}", err=True)
        raise typer.Exit(2) from ex
    except KafkaException as ex:
        typer.echo(f"fpstream watch: Kafka error: {ex}", err=True)
        raise typer.Exit(1) from ex
    except KeyboardInterrupt:
        typer.echo("fpstream watch: stopped", err=True)
        raise typer.Exit(130) from None
    except BrokenPipeError:
        # The reader went away (| head): stop quietly, and keep Python's exit flush quiet too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise typer.Exit(0) from None
