"""The embedded broker and Redis work, and their processes never outlive their owner."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest
import redis
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient

from fpstream.io.embedded import (
    CONSUMER_DEFAULTS,
    EmbeddedError,
    EmbeddedServices,
    RedisServer,
    create_topics,
)

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _wait_gone(pids: Iterable[int], timeout: float = 10.0) -> list[int]:
    """The pids still running after up to ``timeout`` seconds (empty when all are gone)."""
    deadline = time.monotonic() + timeout
    while (alive := [p for p in pids if _running(p)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    return alive


def _consume(brokers: str, topic: str, count: int, timeout: float = 30.0) -> list:
    consumer = Consumer({**CONSUMER_DEFAULTS, "bootstrap.servers": brokers,
                         "group.id": f"g-{uuid.uuid4().hex}", "auto.offset.reset": "earliest",
                         "enable.auto.commit": False})
    consumer.subscribe([topic])
    got = []
    deadline = time.monotonic() + timeout
    try:
        while len(got) < count and time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is None:
                continue
            assert msg.error() is None, msg.error()
            got.append(msg)
    finally:
        consumer.close()
    return got


def test_kafka_roundtrip_is_byte_exact_over_two_partitions(
    services: EmbeddedServices, make_topic: Callable[..., str]
) -> None:
    topic = make_topic("in", partitions=2)
    meta = AdminClient({"bootstrap.servers": services.brokers}).list_topics(topic, timeout=5)
    assert len(meta.topics[topic].partitions) == 2

    rng = random.Random(7)
    sent = [(f"app-{i % 17}".encode(), bytes(rng.randrange(256) for _ in range(rng.randrange(64))))
            for i in range(300)]
    failures: list = []
    producer = Producer({"bootstrap.servers": services.brokers, "enable.idempotence": True})
    for key, value in sent:
        producer.produce(topic, value, key,
                         on_delivery=lambda err, _msg: failures.append(err) if err else None)
    assert producer.flush(10) == 0
    assert failures == []

    got = _consume(services.brokers, topic, len(sent))
    assert sorted((m.key(), m.value()) for m in got) == sorted(sent)
    assert {m.partition() for m in got} == {0, 1}
    # Order is kept per key, the guarantee every consumer of ours relies on.
    for key in {k for k, _ in sent}:
        assert [m.value() for m in got if m.key() == key] == [v for k, v in sent if k == key]


def test_create_topics_is_idempotent_and_reports_a_partition_mismatch(
    services: EmbeddedServices, topic_prefix: str
) -> None:
    topic = topic_prefix + "x"
    create_topics(services.brokers, [topic], partitions=3)
    create_topics(services.brokers, [topic], partitions=3)
    with pytest.raises(EmbeddedError, match="expected 2 partitions"):
        create_topics(services.brokers, [topic], partitions=2, timeout=1.0)


def test_redis_strings_and_streams_roundtrip(redis_client: redis.Redis, redis_prefix: str) -> None:
    blob = bytes(range(256))
    redis_client.set(redis_prefix + "k", blob)
    assert redis_client.get(redis_prefix + "k") == blob

    stream = redis_prefix + "allocations"
    ids = [redis_client.xadd(stream, {b"id": f"a/i/{n}".encode(), b"raw": blob}) for n in range(3)]
    entries = redis_client.xrange(stream)
    assert [entry_id for entry_id, _ in entries] == ids
    assert [fields for _, fields in entries] == [
        {b"id": f"a/i/{n}".encode(), b"raw": blob} for n in range(3)
    ]


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()])
def test_servers_stop_when_the_with_block_raises(error: BaseException) -> None:
    with pytest.raises(type(error)):
        with EmbeddedServices(["t"], partitions=1) as svc:
            pids, workdir = list(svc.pids.values()), svc.workdir
            assert len(pids) == 2 and all(_running(p) for p in pids)
            raise error
    assert _wait_gone(pids, timeout=0) == []
    assert not workdir.exists()


def test_a_server_that_dies_at_start_is_reported_with_its_log(tmp_path: Path) -> None:
    class BadRedis(RedisServer):
        def command(self, port: int) -> list[str]:
            return [*super().command(port), "--no-such-directive", "yes"]

    server = BadRedis(tmp_path)
    server.launch()
    with pytest.raises(EmbeddedError, match="redis exited with code") as info:
        server.wait_ready(timeout=10)
    assert "no-such-directive" in str(info.value)


def _start_in_child(args: list[str]) -> tuple[subprocess.Popen[str], dict]:
    """Run a Python that starts EmbeddedServices, prints its pids and workdir, then waits."""
    script = (
        "import json, sys, time\n"
        "from pathlib import Path\n"
        "from fpstream.io.embedded import EmbeddedServices\n"
        "workdir = Path(sys.argv[1]) if len(sys.argv) > 1 else None\n"
        "with EmbeddedServices(workdir=workdir) as svc:\n"
        "    print(json.dumps({'pids': svc.pids, 'workdir': str(svc.workdir)}), flush=True)\n"
        "    time.sleep(120)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *sys.path])}
    # Its own session, so that the SIGINT below reaches its group the way a terminal's would.
    child = subprocess.Popen([sys.executable, "-c", script, *args], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    line = child.stdout.readline() if child.stdout else ""
    if not line:
        child.kill()
        pytest.fail(f"child did not start the services:\n{child.communicate()[1]}")
    return child, json.loads(line)


@pytest.mark.slow
def test_servers_die_when_their_parent_is_killed(tmp_path: Path) -> None:
    child, info = _start_in_child([str(tmp_path)])
    pids = list(info["pids"].values())
    try:
        assert all(_running(p) for p in pids)
        child.send_signal(signal.SIGKILL)  # no atexit, no finally: only PDEATHSIG can help
        child.wait(10)
        assert _wait_gone(pids) == []
    finally:
        for pid in pids:
            if _running(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
def test_ctrl_c_stops_servers_cleanly(tmp_path: Path) -> None:
    child, info = _start_in_child([])
    pids = list(info["pids"].values())
    try:
        os.killpg(child.pid, signal.SIGINT)  # what Ctrl-C does to the foreground group
        _, stderr = child.communicate(timeout=15)
        assert "KeyboardInterrupt" in stderr
        assert _wait_gone(pids) == []
        # PDEATHSIG would also kill them; a removed workdir proves stop() itself ran.
        assert not Path(info["workdir"]).exists()
    finally:
        for pid in pids:
            if _running(pid):
                os.kill(pid, signal.SIGKILL)
