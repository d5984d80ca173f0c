"""Fault tests: each one runs its own broker and Redis, so it may stop and restart them.

The session's shared ``services`` are never used here: other tests rely on them staying up.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient

from fpstream.io.embedded import EmbeddedServices, create_topics, free_port
from fpstream.ops.demo import scrape
from fpstream.ops.runner import FlowProcess
from fpstream.settings import Settings


@pytest.fixture
def own_services(tmp_path: Path) -> Iterator[EmbeddedServices]:
    """A broker and a durable Redis (append-only file) of this test's own."""
    with EmbeddedServices(workdir=tmp_path / "services", durable_redis=True) as svc:
        yield svc


def topics_of(settings: Settings) -> list[str]:
    return [settings.topic_metrics, settings.topic_deploys, settings.topic_allocations,
            settings.topic_anomalies, settings.topic_deadletter]


def flow_settings(svc: EmbeddedServices, **over: Any) -> Settings:
    """Settings for a flow worker on ``svc``, its topics created, metrics on a free port."""
    settings = Settings(brokers=svc.brokers, redis_url=svc.redis_url, partitions=2,
                        metrics_port=free_port(), **over)
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
