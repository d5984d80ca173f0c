"""Shared steps of the tests that stop and restart the broker or Redis under a running flow
worker: its settings on the test's own services, its metrics, waiting with a deadline."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient

from fpstream.io.embedded import EmbeddedServices, create_topics, free_port
from fpstream.ops.demo import scrape
from fpstream.ops.runner import FlowProcess
from fpstream.settings import Settings


def topics_of(settings: Settings) -> list[str]:
    return [settings.topic_metrics, settings.topic_deploys, settings.topic_allocations,
            settings.topic_anomalies, settings.topic_deadletter]


def flow_settings(svc: EmbeddedServices, **over: Any) -> Settings:
    """Settings for a flow worker on ``svc``, its topics created, metrics on a free port.

    ``idle_s`` is short: an input partition with nothing to read (a deploys partition, most
    often) holds the model stage back for that long, and these tests wait for allocations.
    """
    settings = Settings(**{"brokers": svc.brokers, "redis_url": svc.redis_url, "partitions": 2,
                           "metrics_port": free_port(), "idle_s": 2.0, **over})
    create_topics(svc.brokers, topics_of(settings), settings.partitions)
    return settings


def partition_counts(settings: Settings) -> dict[str, int]:
    """Partitions of each of the flow's topics that exist on the broker."""
    topics = AdminClient({"bootstrap.servers": settings.brokers}).list_topics(timeout=10).topics
    return {t: len(topics[t].partitions) for t in topics_of(settings) if t in topics}


def log_tail(path: Path, chars: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"


def metric(settings: Settings, name: str) -> float:
    """A worker metric, summed over its labels (0 when absent or not scraped)."""
    return scrape(settings.metrics_port).get(name, 0.0)


def wait_until(condition: Callable[[], bool], worker: FlowProcess, log: Path, what: str,
               timeout: float = 90.0, status: Callable[[], str] | None = None) -> None:
    """Poll ``condition`` until it holds; fail if the worker exits or the deadline passes,
    saying where things stood (``status()``)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert worker.proc is not None
        code = worker.proc.poll()
        where = f" ({status()})" if status is not None else ""
        if code is not None:
            pytest.fail(f"the flow worker exited with code {code} while waiting for {what}"
                        f"{where}; log tail:\n{log_tail(log)}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} within {timeout:.0f} s{where}; log tail:\n{log_tail(log)}")
        time.sleep(0.25)


def wait_for_exit(worker: FlowProcess, timeout: float) -> int | None:
    """The worker's exit code, or None if it is still running after ``timeout`` seconds."""
    assert worker.proc is not None
    deadline = time.monotonic() + timeout
    while (code := worker.proc.poll()) is None and time.monotonic() < deadline:
        time.sleep(0.25)
    return code


def committed_epoch(recovery: Path) -> int:
    """The newest epoch every recovery partition has committed (0 before any)."""
    epochs = []
    for part in recovery.glob("part-*.sqlite3"):
        with sqlite3.connect(f"file:{part}?mode=ro", uri=True) as db:
            epochs.append(max((e for (e,) in db.execute("SELECT commit_epoch FROM commits")),
                              default=0))
    return min(epochs, default=0)


def quiet_and_committed(settings: Settings, recovery: Path) -> Callable[[], bool]:
    """A condition for ``wait_until``: two epochs committed to ``recovery`` since the worker
    last decided an allocation, so its snapshots hold everything it decided."""
    last = {"emitted": -1.0, "epoch": 0}

    def check() -> bool:
        emitted = metric(settings, "fpstream_allocations_emitted_total")
        epoch = committed_epoch(recovery)
        if emitted != last["emitted"]:
            last.update(emitted=emitted, epoch=epoch)
            return False
        return epoch >= last["epoch"] + 2

    return check
