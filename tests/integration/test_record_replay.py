"""A topic recorded to a file and replayed into a fresh topic arrives byte for byte the same."""

from __future__ import annotations

import heapq
import random
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import orjson
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from confluent_kafka import KafkaError as ConfluentKafkaError
from typer.testing import CliRunner

from fpstream.cli import app
from fpstream.ops.record import record_topic, replay_file
from fpstream.records import read_records
from fpstream.settings import Settings
from fpstream.simulator import simulate

pytestmark = pytest.mark.integration

PARTITIONS = 3
BASE_MS = 1_767_571_200_000


class Msg(NamedTuple):
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...]
    ts_type: int
    ts: int

    @property
    def content(self) -> tuple[Any, ...]:
        return self.key, self.value, self.headers, self.ts


def produce_mix(brokers: str, topic: str) -> int:
    """JSON samples (some malformed) keyed by app, binary garbage, null and empty keys,
    tombstones, headers with binary, null and repeated values, explicit and producer times."""
    producer = Producer({"bootstrap.servers": brokers, "enable.idempotence": True,
                         "linger.ms": 5, "message.max.bytes": 8 << 20})
    rng = random.Random(7)
    count = 0

    def send(**kwargs: Any) -> None:
        nonlocal count
        producer.produce(topic, **kwargs)
        count += 1

    for m in simulate(apps=8, minutes=6, seed=3, bad_share=0.1, deploy_share=0.0):
        send(key=m.key, value=m.value, timestamp=int(m.ts * 1000),
             headers=[("fpstream-id", m.key), ("source", b"sim")])
    for i in range(30):
        garbage = b"\xff\xfe" + rng.randbytes(rng.randint(0, 64))
        ts = BASE_MS + 60_000 + i * 7_919
        if i % 3 == 0:
            send(key=None, value=garbage, timestamp=ts, partition=i % PARTITIONS)
        elif i % 3 == 1:
            send(key=bytes([0xC3, 0x28, i % 4]), value=garbage, timestamp=ts,
                 headers=[("bin", b"\x00\xff"), ("none", None), ("bin", b"again")])
        else:
            send(key=b"web-000", value=garbage[:5], timestamp=ts)
    send(key=b"", value=b"", timestamp=BASE_MS + 1)
    send(key=b"gone", value=None, timestamp=BASE_MS + 2)
    send(key=b"now", value=b"stamped by the producer")
    assert producer.flush(30) == 0
    return count


def read_all(brokers: str, topic: str, timeout: float = 30.0) -> list[Msg]:
    """Every message of every partition, in partition then offset order."""
    consumer = Consumer({"bootstrap.servers": brokers, "group.id": "test-read",
                         "enable.partition.eof": True, "enable.auto.commit": False})
    try:
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        done: set[int] = set()
        got: list[Msg] = []
        deadline = time.monotonic() + timeout
        while len(done) < len(parts):
            assert time.monotonic() < deadline, f"did not reach the end of {topic}"
            for m in consumer.consume(1000, 0.5):
                err = m.error()
                if err is None:
                    ts_type, ts = m.timestamp()
                    got.append(Msg(m.partition(), m.offset(), m.key(), m.value(),
                                   tuple(m.headers() or ()), ts_type, ts))
                elif err.code() == ConfluentKafkaError._PARTITION_EOF:
                    done.add(m.partition())
        return sorted(got, key=lambda m: (m.partition, m.offset))
    finally:
        consumer.close()


def per_key(msgs: list[Msg]) -> dict[bytes, list[tuple[Any, ...]]]:
    out: dict[bytes, list[tuple[Any, ...]]] = defaultdict(list)
    for m in msgs:
        if m.key is not None:
            out[m.key].append(m.content)
    return dict(out)


def assert_same_stream(source: list[Msg], replayed: list[Msg]) -> None:
    assert Counter(m.content for m in replayed) == Counter(m.content for m in source)
    assert per_key(replayed) == per_key(source)
    assert {m.ts_type for m in replayed} == {1}  # CreateTime, the recorded time
    # The same partitioner places keyed messages alike; it spreads null and empty keys.
    where = {m.content: m.partition for m in source if m.key}
    assert all(where[m.content] == m.partition for m in replayed if m.key)


@pytest.fixture
def source(services: Any, make_topic: Callable[..., str]) -> tuple[str, list[Msg]]:
    topic = make_topic("a", partitions=PARTITIONS)
    sent = produce_mix(services.brokers, topic)
    msgs = read_all(services.brokers, topic)
    assert len(msgs) == sent
    assert {m.partition for m in msgs} == set(range(PARTITIONS))
    assert any(m.key is None for m in msgs) and any(m.value is None for m in msgs)
    return topic, msgs


def test_record_then_replay_in_every_format(services: Any, make_topic: Callable[..., str],
                                            source: tuple[str, list[Msg]],
                                            tmp_path: Path) -> None:
    topic, original = source
    settings = Settings(brokers=services.brokers)
    recordings = []
    for suffix in (".jsonl", ".jsonl.gz", ".jsonl.zst"):
        out = tmp_path / f"a{suffix}"
        seen: list[tuple[int, int | None]] = []
        stats = record_topic(settings, topic, out, progress=lambda d, t, seen=seen: seen.append(
            (d, t)))
        assert stats.messages == len(original) and seen[-1] == (len(original), len(original))
        assert not list(tmp_path.glob(".*partial"))
        recs = [rec for _, rec in read_records(out)]
        recordings.append(recs)
        # Each partition's order, merged across partitions by timestamp (ties by partition).
        parts = [[m for m in original if m.partition == p] for p in range(PARTITIONS)]
        merged = heapq.merge(*parts, key=lambda m: m.ts)
        assert [(r.partition, r.offset) for r in recs] == [(m.partition, m.offset) for m in merged]

        target = make_topic(f"b{suffix.replace('.', '-')}", partitions=PARTITIONS)
        replayed = replay_file(settings, out, target)
        assert replayed.messages == len(original)
        assert_same_stream(original, read_all(services.brokers, target))
    assert recordings[0] == recordings[1] == recordings[2]


def test_keep_partitions_limit_and_pacing(services: Any, make_topic: Callable[..., str],
                                          source: tuple[str, list[Msg]],
                                          tmp_path: Path) -> None:
    topic, original = source
    settings = Settings(brokers=services.brokers)
    out = tmp_path / "a.jsonl.zst"
    record_topic(settings, topic, out)
    target = make_topic("exact", partitions=PARTITIONS)
    replay_file(settings, out, target, keep_partitions=True)
    exact = read_all(services.brokers, target)
    assert [(m.partition, m.offset, *m.content) for m in exact] == \
        [(m.partition, m.offset, *m.content) for m in original]

    first = tmp_path / "first.jsonl"
    assert record_topic(settings, topic, first, limit=12).messages == 12
    recs = [rec for _, rec in read_records(first)]
    parts = [[m for m in original if m.partition == p] for p in range(PARTITIONS)]
    merged = list(heapq.merge(*parts, key=lambda m: m.ts))[:12]
    assert [(r.partition, r.offset) for r in recs] == [(m.partition, m.offset) for m in merged]

    paced = tmp_path / "paced.jsonl"
    paced.write_bytes(b"".join(
        orjson.dumps({"key": "k", "value": f"v{i}", "timestamp": BASE_MS + i * 500}) + b"\n"
        for i in range(5)))
    target = make_topic("paced", partitions=1)
    replay_file(settings, paced, target)
    replay_file(settings, paced, target, speed=50.0)
    values = [m.value for m in read_all(services.brokers, target)]
    assert values == [f"v{i}".encode() for i in range(5)] * 2


def test_commands(services: Any, make_topic: Callable[..., str],
                  source: tuple[str, list[Msg]], topic_prefix: str, tmp_path: Path) -> None:
    topic, original = source
    runner = CliRunner()
    out = tmp_path / "cli.jsonl.gz"
    result = runner.invoke(app, ["record", "--topic", topic, "--out", str(out),
                                 "--brokers", services.brokers])
    assert result.exit_code == 0, result.output
    summary = orjson.loads(result.stderr.strip().splitlines()[-1])
    assert summary["messages"] == len(original) and out.is_file()

    target = topic_prefix + "cli-out"
    args = ["replay", str(out), "--to-topic", target, "--brokers", services.brokers]
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "--create-topic" in result.stderr
    result = runner.invoke(app, [*args, "--create-topic", "--max"])
    assert result.exit_code == 0, result.output
    assert orjson.loads(result.stderr.strip().splitlines()[-1])["messages"] == len(original)
    replayed = read_all(services.brokers, target)
    assert len({m.partition for m in replayed}) == PARTITIONS
    assert_same_stream(original, replayed)

    result = runner.invoke(app, ["record", "--topic", topic_prefix + "missing", "--out",
                                 str(tmp_path / "x.jsonl"), "--brokers", services.brokers])
    assert result.exit_code == 2 and "does not exist" in result.stderr
    assert not (tmp_path / "x.jsonl").exists()
