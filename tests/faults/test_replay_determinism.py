"""The same topic content gives the same allocations, ids and values, whatever happens to the
worker: a clean run and a run killed with SIGKILL and resumed from its recovery snapshots, over
the same metrics and deploy requests."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from fpstream.events import Allocation
from fpstream.ops.runner import init_recovery

from ..integration.helpers import fresh_settings, produce, read_topic, redis_allocations, sim
from .helpers import start_worker, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SIM = {"apps": 12, "minutes": 5 * 60, "seed": 31, "bad_share": 0.0, "deploy_share": 0.3}


def run_to_end(settings, tmp_path: Path, name: str, **command: object) -> None:
    proc, _ = start_worker(settings, tmp_path, name, tail=False, **command)
    try:
        code = proc.wait(240)
    finally:
        proc.stop()
    assert code == 0, (tmp_path / f"{name}.log").read_text()[-3000:]


def committed(recovery: Path) -> int:
    """The oldest epoch committed across the recovery partitions (0 before any)."""
    epochs = []
    for part in recovery.glob("part-*.sqlite3"):
        with sqlite3.connect(f"file:{part}?mode=ro", uri=True) as db:
            epochs.append(max((e for (e,) in db.execute("SELECT commit_epoch FROM commits")),
                              default=0))
    return min(epochs, default=0)


def allocations(settings) -> dict[str, Allocation]:
    """Every allocation on the topic by id; a repeat (after a resume) must be identical."""
    by_id: dict[str, Allocation] = {}
    for a in read_topic(settings, settings.topic_allocations):
        if isinstance(a, Allocation):
            assert by_id.setdefault(a.id, a) == a, f"{a.id} repeated with other contents"
    return by_id


def test_a_killed_and_resumed_run_decides_exactly_as_a_clean_one(
        services, make_topic, redis_prefix, redis_client, tmp_path: Path) -> None:
    messages = sim(**SIM)
    assert sum(m.topic == "deploys" for m in messages) >= 3

    clean = fresh_settings(services.brokers, services.redis_url,
                           lambda n, p: make_topic("clean-" + n, p), redis_prefix + "clean:")
    produce(clean, messages)
    run_to_end(clean, tmp_path, "clean")
    expected = allocations(clean)
    assert any(a.kind == "proactive" for a in expected.values())

    faulty = fresh_settings(services.brokers, services.redis_url, make_topic, redis_prefix)
    half = len(messages) // 2
    produce(faulty, messages[:half])
    recovery = tmp_path / "recovery"
    init_recovery(recovery, 2)
    worker, _ = start_worker(faulty, tmp_path, "first", recovery_dir=recovery, snapshot_s=1)
    try:
        wait_for(lambda: len(redis_allocations(redis_client, faulty)) >= 5 and
                 committed(recovery) >= 3, worker, tmp_path / "first.log",
                 what="allocations and committed snapshots")
    finally:
        worker.kill()  # SIGKILL: no chance to flush or snapshot
    produce(faulty, messages[half:])
    run_to_end(faulty, tmp_path, "resumed", recovery_dir=recovery, snapshot_s=1)
    got = allocations(faulty)

    differing = sorted(i for i in expected if expected[i] != got.get(i))
    extra = sorted(set(got) - set(expected))
    assert not differing and not extra, (
        f"{len(differing)} of {len(expected)} allocations differ "
        f"({len(extra)} only after the resume): {differing[:5]} {extra[:5]}")
