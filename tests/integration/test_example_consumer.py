"""examples/apply_allocations.py, run as a user runs it, against the real broker: duplicates and
out-of-order redeliveries are each applied at most once, and the newest allocation wins."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition

from fpstream.events import Allocation
from fpstream.settings import Settings

from .test_watch import PREDICTED, RESERVE, TS, Lines, publish

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "apply_allocations.py"


def alloc(app: str, instance: str, seq: int, v: int = 1) -> Allocation:
    return Allocation(f"{app}/{instance}/{seq}", TS + 300 * seq, app, instance,
                      "proactive" if seq == 0 else "resize", "m.large",
                      {**RESERVE, "cpu_cores": 0.5 + seq}, PREDICTED, 1, 0.8, "balanced", 1, v=v)


def committed(settings: Settings, group: str, partitions: int = 2) -> int:
    """Offsets the group has committed, summed over the partitions (no group join)."""
    consumer = Consumer(settings.kafka_config(**{"group.id": group}))
    try:
        parts = consumer.committed([TopicPartition(settings.topic_allocations, p)
                                    for p in range(partitions)], timeout=10)
        return sum(max(tp.offset, 0) for tp in parts)
    finally:
        consumer.close()


def run_example(settings: Settings, group: str, state: Path, until: int) -> list[str]:
    """Start the example, wait until its group has committed ``until`` offsets, stop it with
    Ctrl-C; returns what it printed (one line per message it handled)."""
    proc = subprocess.Popen(
        [sys.executable, str(EXAMPLE), "--brokers", settings.brokers,
         "--topic", settings.topic_allocations, "--group", group, "--state", str(state)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stderr is not None
    out, err = Lines(proc.stdout), Lines(proc.stderr)
    try:
        deadline = time.monotonic() + 90
        while committed(settings, group) < until:
            assert time.monotonic() < deadline, f"committed {committed(settings, group)}"
            assert proc.poll() is None, err.rest()
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
    finally:
        proc.kill()
    assert err.rest()[-1] == "stopped"
    return out.rest()


def applied(lines: list[str]) -> list[str]:
    return [line.split()[1] for line in lines if line.startswith("applied ")]


def newest(state: Path) -> dict[str, str]:
    doc = json.loads(state.read_text())
    return {f"{app}/{inst}": a["id"] for app, insts in doc.items() for inst, a in insts.items()}


@pytest.fixture
def settings(services, make_topic) -> Settings:
    return Settings(brokers=services.brokers, topic_allocations=make_topic("allocations", 2))


def test_each_allocation_is_applied_once_and_the_newest_wins(settings: Settings,
                                                              tmp_path: Path) -> None:
    state = tmp_path / "applied.json"
    # What a flow that resumed from a snapshot, and redelivered, can put on the topic.
    first = [alloc("web-1", "vm-1", 0), alloc("web-1", "vm-1", 1), alloc("db-1", "vm-1", 0),
             alloc("web-1", "vm-1", 1), alloc("web-1", "vm-2", 2), alloc("web-1", "vm-1", 3),
             alloc("db-1", "vm-1", 0), alloc("web-1", "vm-1", 2), alloc("web-1", "vm-2", 1),
             alloc("db-1", "vm-1", 1), alloc("web-1", "vm-1", 9, v=2), alloc("web-1", "vm-1", 3)]
    publish(settings, first)
    lines = run_example(settings, "appliers", state, len(first))
    assert len(lines) == len(first)
    assert sorted(applied(lines)) == sorted(["web-1/vm-1/0", "web-1/vm-1/1", "web-1/vm-1/3",
                                             "db-1/vm-1/0", "db-1/vm-1/1", "web-1/vm-2/2"])
    # Each app's allocations stay in order: by partition, then by offset.
    assert [a for a in applied(lines) if a.startswith("web-1/vm-1/")] == [
        "web-1/vm-1/0", "web-1/vm-1/1", "web-1/vm-1/3"]
    expected = {"web-1/vm-1": "web-1/vm-1/3", "web-1/vm-2": "web-1/vm-2/2",
                "db-1/vm-1": "db-1/vm-1/1"}
    assert newest(state) == expected

    # Restarted in the same group: only what came after its commit, and only if newer.
    publish(settings, [alloc("web-1", "vm-1", 3), alloc("web-1", "vm-1", 4)])
    lines = run_example(settings, "appliers", state, len(first) + 2)
    assert len(lines) == 2 and applied(lines) == ["web-1/vm-1/4"]
    assert newest(state) == {**expected, "web-1/vm-1": "web-1/vm-1/4"}

    # A new group reads everything again: the saved state makes all of it a no-op.
    lines = run_example(settings, "appliers-2", state, len(first) + 2)
    assert len(lines) == len(first) + 2 and applied(lines) == []
    assert newest(state) == {**expected, "web-1/vm-1": "web-1/vm-1/4"}
