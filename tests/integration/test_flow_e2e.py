"""The flow as production runs it (a bytewax.run worker) over the real broker and Redis."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import orjson
import pytest

from fpstream.events import Allocation, DeadLetter
from fpstream.ops.runner import FlowProcess, flow_command, init_recovery

from .helpers import fresh_settings, produce, read_topic, redis_allocations, sim

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SIM = {"apps": 12, "minutes": 5 * 60, "seed": 11, "bad_share": 0.03}


@pytest.fixture
def settings(services, make_topic, redis_prefix):
    return fresh_settings(services.brokers, services.redis_url, make_topic, redis_prefix)


def run_to_end(settings, tmp_path: Path, **kw) -> int:
    proc = FlowProcess(settings, flow_command(**kw), tail=False,
                       log_path=tmp_path / "flow.log").start()
    try:
        code = proc.wait(240)
    finally:
        proc.stop()
    assert code == 0, (tmp_path / "flow.log").read_text()[-3000:]
    return code


def seq(allocation_id: str) -> int:
    return int(allocation_id.rsplit("/", 1)[1])


def test_samples_in_allocations_out(settings, redis_client, tmp_path: Path) -> None:
    messages = sim(**SIM)
    injected = Counter(m.bad_reason for m in messages if m.bad_reason)
    produce(settings, messages)
    run_to_end(settings, tmp_path)

    kafka_allocs = [e for e in read_topic(settings, settings.topic_allocations)
                    if isinstance(e, Allocation)]
    assert kafka_allocs
    letters = read_topic(settings, settings.topic_deadletter)
    assert all(isinstance(d, DeadLetter) for d in letters)
    assert Counter(d.reason for d in letters) == injected
    assert all(d.topic == settings.topic_metrics and d.offset is not None for d in letters)

    stream = redis_allocations(redis_client, settings)
    in_stream = {a["id"] for a in stream}
    assert in_stream <= {a.id for a in kafka_allocs}
    newest: dict[tuple[str, str], Allocation] = {}
    for a in kafka_allocs:
        key = (a.app, a.instance)
        if key not in newest or seq(a.id) > seq(newest[key].id):
            newest[key] = a
    for a in kafka_allocs:  # only what a later decision for its instance superseded is left out
        assert a.id in in_stream or seq(a.id) < seq(newest[(a.app, a.instance)].id), a.id
    for (app, instance), latest in newest.items():
        desired = redis_client.hget(settings.key("desired", app), instance)
        assert desired is not None and orjson.loads(desired)["id"] == latest.id
    clusters = redis_client.hgetall(settings.key("clusters"))
    assert len(clusters) >= 2
    doc = orjson.loads(next(iter(clusters.values())))
    assert {"centroid", "members", "needs"} <= set(doc)
    assert redis_client.hlen(settings.key("app_cluster")) >= SIM["apps"]


def test_redelivered_allocations_are_written_once(settings, redis_client, tmp_path: Path) -> None:
    produce(settings, sim(**{**SIM, "minutes": 120, "bad_share": 0.0}))
    run_to_end(settings, tmp_path)
    first = redis_allocations(redis_client, settings)
    assert first
    run_to_end(settings, tmp_path)  # no recovery: everything is emitted a second time
    assert redis_allocations(redis_client, settings) == first
    kafka_ids = [e.id for e in read_topic(settings, settings.topic_allocations)]
    assert len(kafka_ids) == 2 * len(set(kafka_ids))  # Kafka holds both; ids tell them apart


def test_killed_worker_resumes_from_recovery(settings, services, make_topic, redis_prefix,
                                             redis_client, tmp_path: Path) -> None:
    messages = sim(**{**SIM, "bad_share": 0.0})
    half = len(messages) // 2
    produce(settings, messages[:half])
    recovery = tmp_path / "recovery"
    init_recovery(recovery, 2)
    cmd = flow_command(recovery_dir=recovery, snapshot_s=1)
    worker = FlowProcess(settings, cmd, tail=True, log_path=tmp_path / "flow1.log").start()
    try:
        deadline = time.monotonic() + 120
        while len(redis_allocations(redis_client, settings)) < 5:
            assert time.monotonic() < deadline, (tmp_path / "flow1.log").read_text()[-3000:]
            assert worker.proc.poll() is None, (tmp_path / "flow1.log").read_text()[-3000:]
            time.sleep(0.5)
        time.sleep(3)  # let a few snapshots land
    finally:
        worker.kill()
    produce(settings, messages[half:])
    run_to_end(settings, tmp_path, recovery_dir=recovery, snapshot_s=1)
    resumed = [e for e in read_topic(settings, settings.topic_allocations)
               if isinstance(e, Allocation)]

    # The same stream through a clean run, on fresh topics and keys.
    clean = fresh_settings(services.brokers, services.redis_url, lambda n, p: make_topic(
        "clean-" + n, p), redis_prefix + "clean:")
    produce(clean, messages)
    (tmp_path / "clean").mkdir()
    run_to_end(clean, tmp_path / "clean")
    expected = [e for e in read_topic(clean, clean.topic_allocations) if isinstance(e, Allocation)]

    def resizes(allocs: list[Allocation]) -> dict[str, tuple]:
        return {a.id: (a.ts, a.instance_type, a.reserve) for a in allocs if a.kind == "resize"}

    # Repeats after the resume carry the same ids and contents; nothing is missing.
    by_id: dict[str, Allocation] = {}
    for a in resumed:
        assert by_id.setdefault(a.id, a) == a, f"{a.id} repeated with other contents"
    assert resizes(resumed) == resizes(expected)
    assert {a.id for a in resumed} == {a.id for a in expected}
    stream_ids = [a["id"] for a in redis_allocations(redis_client, settings)]
    assert len(stream_ids) == len(set(stream_ids))
