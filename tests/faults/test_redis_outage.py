"""Redis goes away while the flow runs: the worker stays up, keeps what it could not write
(in its snapshots too), and every allocation reaches Redis, once, after Redis is back."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest
import redis

from fpstream.io.embedded import EmbeddedServices, free_port
from fpstream.ops.runner import FlowProcess, flow_command, init_recovery
from fpstream.settings import Settings

from ..integration.helpers import produce, read_topic, redis_allocations, sim
from .restarts import (
    flow_settings,
    log_tail,
    metric,
    quiet_and_committed,
    wait_for_exit,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SIM = {"apps": 12, "minutes": 4 * 60, "seed": 5, "bad_share": 0.0}
#: Failed writes, summed over the output's partitions, before Redis comes back: an outage of
#: several seconds with the output's backoff (50 ms doubling, 5 s at most).
RETRIES = 10


def start_worker(settings: Settings, recovery: Path, log: Path) -> FlowProcess:
    return FlowProcess(settings, flow_command(recovery_dir=recovery, snapshot_s=1),
                       log_path=log).start()


def seq(allocation_id: str) -> int:
    return int(allocation_id.rsplit("/", 1)[1])


def for_redis(settings: Settings) -> tuple[set[str], dict[tuple[str, str], str]]:
    """What Redis must hold after the allocations on the Kafka topic: the ids its script
    takes, and the newest id per instance (the desired one).

    An instance's allocations share its app's partition, so the topic holds them in the order
    they were decided, the order the output writes them in; the script takes each one whose
    sequence is newer than the instance's last (a decision the flow made late, about an older
    period, is refused, and a repeat after a resume has the same id).
    """
    newest: dict[tuple[str, str], str] = {}
    taken = set()
    for a in read_topic(settings, settings.topic_allocations):
        last = newest.get((a.app, a.instance))
        if last is None or seq(a.id) > seq(last):
            newest[(a.app, a.instance)] = a.id
            taken.add(a.id)
    return taken, newest


def desired(settings: Settings, client: redis.Redis, app: str, instance: str) -> str | None:
    doc = client.hget(settings.key("desired", app), instance)
    return None if doc is None else str(orjson.loads(doc)["id"])


def all_written(settings: Settings, client: redis.Redis, samples: int) -> bool:
    """Every sample read, nothing waiting for Redis, and Redis holds what it must: in the
    stream the allocations its script takes, as desired each instance's newest."""
    if (metric(settings, "fpstream_ingest_samples_total") < samples
            or metric(settings, "fpstream_redis_backlog_items") > 0):
        return False
    taken, newest = for_redis(settings)
    return (taken == {a["id"] for a in redis_allocations(client, settings)}
            and all(desired(settings, client, app, instance) == last
                    for (app, instance), last in newest.items()))


def progress(settings: Settings, client: redis.Redis) -> str:
    taken, _ = for_redis(settings)
    in_redis = {a["id"] for a in redis_allocations(client, settings)}
    missing, extra = sorted(taken - in_redis), sorted(in_redis - taken)
    return (f"{len(taken & in_redis)} of {len(taken)} allocations in Redis, "
            f"{metric(settings, 'fpstream_redis_backlog_items'):.0f} waiting"
            + (f", missing: {missing[:10]}" if missing else "")
            + (f", not expected: {extra[:10]}" if extra else ""))


def written_once(settings: Settings, client: redis.Redis) -> int:
    """How many allocations the stream holds, each once."""
    ids = [a["id"] for a in redis_allocations(client, settings)]
    assert len(ids) == len(set(ids)), "an allocation was written twice to the stream"
    return len(ids)


@pytest.fixture
def outage(own_services: EmbeddedServices, tmp_path: Path):
    """Settings, the simulated stream split in two, a recovery directory and a Redis client."""
    settings = flow_settings(own_services, redis_prefix="outage")
    messages = sim(**SIM)
    half = len(messages) // 2
    recovery = tmp_path / "recovery"
    init_recovery(recovery, 2)
    client = redis.Redis.from_url(settings.redis_url)
    yield settings, messages[:half], messages[half:], recovery, client
    client.close()


def test_allocations_made_while_redis_is_down_reach_it_once_it_is_back(
        own_services: EmbeddedServices, outage, tmp_path: Path) -> None:
    settings, first, later, recovery, client = outage
    produce(settings, first)
    log = tmp_path / "flow.log"
    worker = start_worker(settings, recovery, log)
    try:
        wait_until(lambda: client.xlen(settings.key("allocations")) > 0, worker, log,
                   "allocation in Redis")
        emitted = metric(settings, "fpstream_allocations_emitted_total")
        own_services.redis.stop()
        produce(settings, later)
        samples = sum(m.count for m in first + later)
        # The whole stream read and decided while Redis is away, writes failing and retried.
        wait_until(lambda: metric(settings, "fpstream_ingest_samples_total") >= samples
                   and metric(settings, "fpstream_redis_retries_total") >= RETRIES,
                   worker, log, "the stream read and Redis writes retried during the outage")
        assert metric(settings, "fpstream_allocations_emitted_total") > emitted
        assert metric(settings, "fpstream_redis_backlog_items") > 0
        own_services.redis.restart()
        wait_until(lambda: all_written(settings, client, samples), worker, log,
                   "every allocation in Redis after the outage", 120,
                   status=lambda: progress(settings, client))
    finally:
        worker.stop()
    assert written_once(settings, client) > 0


def test_a_worker_killed_during_the_outage_resumes_with_what_redis_has_not_got(
        own_services: EmbeddedServices, outage, tmp_path: Path) -> None:
    settings, first, later, recovery, client = outage
    produce(settings, first)
    log = tmp_path / "flow.log"
    worker = start_worker(settings, recovery, log)
    try:
        wait_until(lambda: client.xlen(settings.key("allocations")) > 0, worker, log,
                   "allocation in Redis")
        own_services.redis.stop()
        produce(settings, later)
        samples = sum(m.count for m in first + later)
        wait_until(lambda: metric(settings, "fpstream_ingest_samples_total") >= samples
                   and metric(settings, "fpstream_redis_retries_total") >= RETRIES,
                   worker, log, "the stream read and Redis writes retried during the outage")
        # Everything decided is in a committed snapshot (what waits for Redis with it), so
        # the run and its resume agree on what Redis must get; then the worker dies, and
        # its successor starts while Redis is still away.
        wait_until(quiet_and_committed(settings, recovery), worker, log,
                   "snapshots committed after the last allocation")
        assert metric(settings, "fpstream_redis_backlog_items") > 0
    finally:
        worker.kill()
    log = tmp_path / "resumed.log"
    worker = start_worker(settings, recovery, log)
    try:
        wait_until(lambda: metric(settings, "fpstream_redis_backlog_items") > 0, worker, log,
                   "the resumed worker holding outputs for Redis")
        own_services.redis.restart()
        # The resumed worker reads on from its snapshot's offsets: maybe nothing is left.
        wait_until(lambda: all_written(settings, client, 0), worker, log,
                   "every allocation in Redis after the outage", 120,
                   status=lambda: progress(settings, client))
    finally:
        worker.stop()
    assert written_once(settings, client) > 0


def test_a_full_backlog_holds_the_flow_back_and_drops_nothing(
        own_services: EmbeddedServices, tmp_path: Path) -> None:
    settings = flow_settings(own_services, redis_prefix="full", redis_backlog_max=8)
    messages = sim(**SIM)
    half = len(messages) // 2
    produce(settings, messages[:half])
    log = tmp_path / "flow.log"
    worker = FlowProcess(settings, flow_command(), log_path=log).start()
    client = redis.Redis.from_url(settings.redis_url)
    try:
        wait_until(lambda: client.xlen(settings.key("allocations")) > 0, worker, log,
                   "allocation in Redis")
        own_services.redis.stop()
        produce(settings, messages[half:])
        wait_until(lambda: metric(settings, "fpstream_redis_backpressure_seconds_total") >= 3,
                   worker, log, "the flow held back by its full Redis backlog")
        own_services.redis.restart()
        wait_until(lambda: all_written(settings, client, sum(m.count for m in messages)),
                   worker, log, "every allocation in Redis after the outage", 120,
                   status=lambda: progress(settings, client))
    finally:
        worker.stop()
    assert written_once(settings, client) > 0
    client.close()


def test_a_bounded_run_ending_while_redis_is_away_fails_instead_of_dropping(
        own_services: EmbeddedServices, tmp_path: Path) -> None:
    settings = flow_settings(own_services)
    produce(settings, sim(**{**SIM, "minutes": 90}))
    own_services.redis.stop()
    log = tmp_path / "flow.log"
    worker = FlowProcess(settings, flow_command(), tail=False, log_path=log).start()
    try:
        code = wait_for_exit(worker, 120)
    finally:
        worker.stop()
    assert code not in (None, 0), log_tail(log)
    assert "outputs not written to redis://127.0.0.1" in log_tail(log, 20_000)


def test_run_still_stops_at_start_on_a_redis_it_cannot_reach(
        own_services: EmbeddedServices, tmp_path: Path) -> None:
    settings = flow_settings(own_services)
    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    # A subprocess: a check that passed would exec the flow in its place.
    result = subprocess.run(
        [sys.executable, "-c", "from fpstream.cli import main; main()", "run",
         "--brokers", settings.brokers, "--redis-url", url, "--metrics-port", "0"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "cannot reach Redis at redis://:***@127.0.0.1" in result.stderr
    assert "hunter2" not in result.stderr + result.stdout
