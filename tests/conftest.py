"""Shared fixtures: one real broker and one real Redis per session, fresh names per test.

The servers start only when a test asks for ``services`` (so unit runs stay fast), and a failure
to start them is an error in every test that needs them, never a skip. After the session,
``pytest_sessionfinish`` fails the run if any of them is still alive.
"""

from __future__ import annotations

import re
import sys
import uuid
from collections.abc import Callable, Iterator

import psutil
import pytest
import redis

from fpstream.io.embedded import EmbeddedServices, create_topics

# name -> (pid, create time), so a recycled pid is not mistaken for our server.
_SESSION_SERVERS: dict[str, tuple[int, float]] = {}


def pytest_configure(config: pytest.Config) -> None:
    for line in (
        "integration: needs the embedded Kafka-compatible broker and Redis",
        "flow: runs a real Bytewax dataflow",
        "slow: takes more than a few seconds",
    ):
        config.addinivalue_line("markers", line)


def running(pid: int, created: float | None = None) -> bool:
    """True if ``pid`` is a live (not zombie) process, and the same one if ``created`` is given."""
    try:
        proc = psutil.Process(pid)
        if created is not None and abs(proc.create_time() - created) > 0.01:
            return False
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.hookimpl(trylast=True)  # after the runner has torn down the session fixtures
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    alive = {name: pid for name, (pid, created) in _SESSION_SERVERS.items()
             if running(pid, created)}
    if alive:
        print(f"\nERROR: embedded servers still running after the session: {alive}",
              file=sys.stderr)
        if session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session")
def services() -> Iterator[EmbeddedServices]:
    """The session's broker (``.brokers``) and Redis (``.redis_url``); no topics yet."""
    with EmbeddedServices() as svc:
        for name, pid in svc.pids.items():
            _SESSION_SERVERS[name] = (pid, psutil.Process(pid).create_time())
        yield svc


def _slug(request: pytest.FixtureRequest) -> str:
    """The test's name, readable in broker and Redis listings, plus a uuid for uniqueness."""
    name = re.sub(r"[^A-Za-z0-9]+", "-", request.node.name).strip("-")[:40]
    return f"{name}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def topic_prefix(request: pytest.FixtureRequest) -> str:
    """A topic-name prefix no other test uses, e.g. ``t.test-roundtrip-1a2b3c4d.``."""
    return f"t.{_slug(request)}."


@pytest.fixture
def make_topic(services: EmbeddedServices, topic_prefix: str) -> Callable[..., str]:
    """``make_topic("in", partitions=2)`` creates ``<topic_prefix>in`` and returns its name."""

    def make(name: str = "in", partitions: int = 2) -> str:
        topic = topic_prefix + name
        create_topics(services.brokers, [topic], partitions)
        return topic

    return make


@pytest.fixture
def redis_prefix(request: pytest.FixtureRequest) -> str:
    """A Redis key prefix no other test uses; ``redis_client`` deletes keys under it after."""
    return f"test:{_slug(request)}:"


@pytest.fixture
def redis_client(services: EmbeddedServices, redis_prefix: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(services.redis_url, decode_responses=False)
    try:
        yield client
    finally:
        keys = list(client.scan_iter(match=redis_prefix + "*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()
