"""Hostile allocations put straight into the real Redis stream, past the flow's decoder: the
command actuator refuses a path traversal at once (nothing is created outside its directory,
the refusal is counted and dead-lettered), and dead-letters an unrepresentable reserve without
retrying it."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from prometheus_client import CollectorRegistry

from fpstream.actuate import Actuator, ActuatorMetrics, CommandBackend
from fpstream.events import Allocation, encode
from fpstream.io.embedded import EmbeddedServices
from fpstream.settings import Settings

pytestmark = pytest.mark.integration

# Creates every path it is given (the way `touch` would) and logs its argv.
TOUCH = """
import json, sys
log, *paths = sys.argv[1:]
for p in paths[1:]:
    open(p, "a").close()
open(log, "a").write(json.dumps(sys.argv[2:]) + "\\n")
"""


def allocation(app: str, instance: str, seq: int = 1, **reserve: float) -> Allocation:
    return Allocation(id=f"{app}/{instance}/{seq}", ts=1.7e9 + seq, app=app, instance=instance,
                      kind="resize", instance_type="m.large",
                      reserve=reserve or {"cpu_cores": 0.5, "mem_bytes": 2.0 * (1 << 30)},
                      predicted={}, cluster=1, confidence=0.9, policy="p95-h15",
                      model_version=1)


@pytest.fixture
def settings(services: EmbeddedServices, redis_prefix: str) -> Settings:
    return Settings(redis_url=services.redis_url, redis_prefix=redis_prefix.rstrip(":"),
                    metrics_port=0)


@pytest.fixture
def client(services: EmbeddedServices) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(services.redis_url)
    yield c
    c.close()


def xadd(client: redis.Redis, settings: Settings, alloc: Allocation) -> None:
    """Straight into the stream, as something that bypassed the decoder would."""
    client.xadd(settings.key("allocations"), {"id": alloc.id, "app": alloc.app,
                                               "instance": alloc.instance, "data": encode(alloc)})


def drain(act: Actuator, client: redis.Redis, settings: Settings, timeout: float = 20.0) -> None:
    """Step until every entry is acknowledged (applied or dead-lettered)."""
    deadline = time.monotonic() + timeout
    while True:
        act.step()
        [group] = client.xinfo_groups(settings.key("allocations"))
        if int(group["pending"]) == 0 and int(group["lag"] or 0) == 0:
            return
        assert time.monotonic() < deadline, f"entries still pending after {timeout} s"


def value(act: Actuator, name: str, **labels: str) -> float:
    return act.metrics.registry.get_sample_value(name, labels) or 0.0


def letters(client: redis.Redis, settings: Settings) -> dict[str, dict[str, Any]]:
    out = {}
    for _, fields in client.xrange(settings.key("actuator", "deadletter")):
        doc = {k.decode(): v.decode() for k, v in fields.items()}
        out[doc["id"]] = doc
    return out


def test_traversal_and_overflow_are_dead_lettered_at_once(
        redis_client: redis.Redis, client: redis.Redis, settings: Settings,
        tmp_path: Path) -> None:
    desired = tmp_path / "desired"
    desired.mkdir()
    script = tmp_path / "touch.py"
    script.write_text(TOUCH)
    log = tmp_path / "argv.log"
    before = set(tmp_path.iterdir()) | {log}
    backend = CommandBackend([sys.executable, str(script), str(log), "{cpu_millicores}",
                              f"{desired}/{{app}}.{{instance}}",
                              f"{desired}/{{app}}{{instance}}"])
    good = allocation("web", "vm-1")
    through_id = allocation("../escaped", "vm-1")            # breaks the id grammar
    deeper = allocation("web", "../../escaped-too")          # ditto, in the instance
    composed = allocation(".", ".")                           # valid ids that make ".."
    overflow = allocation("web", "vm-2", cpu_cores=1e308)     # 1e308 cores in millicores
    for a in (good, through_id, deeper, composed, overflow):
        xadd(redis_client, settings, a)
    act = Actuator(client, settings, backend, metrics=ActuatorMetrics(CollectorRegistry()),
                   block_ms=50, backoff_s=0.05, max_attempts=5)
    drain(act, redis_client, settings)

    # Nothing outside the directory, and only the good allocation's files inside it.
    assert set(tmp_path.iterdir()) == before, sorted(p.name for p in tmp_path.iterdir())
    assert sorted(p.name for p in desired.iterdir()) == ["web.vm-1", "webvm-1"]
    assert [orjson.loads(line) for line in log.read_text().splitlines()] == [
        ["500", f"{desired}/web.vm-1", f"{desired}/webvm-1"]]

    dead = letters(redis_client, settings)
    assert set(dead) == {through_id.id, deeper.id, composed.id, overflow.id}
    for doc in dead.values():
        assert doc["reason"] == "invalid", doc
        assert int(doc["attempts"]) <= 1, doc  # refused at once, never retried
    assert "leaves" in dead[composed.id]["error"]
    assert "too large" in dead[overflow.id]["error"]
    assert value(act, "fpstream_actuator_retried_total") == 0
    assert value(act, "fpstream_actuator_deadletters_total", reason="invalid") == 4
    assert value(act, "fpstream_actuator_deadletters_total", reason="failed") == 0
    assert value(act, "fpstream_actuator_applied_total") == 1
    assert redis_client.hlen(settings.key("actuator", "attempts", "fpstream-actuators")) == 0
    record = orjson.loads(redis_client.hget(settings.key("applied", "web"), "vm-2"))
    assert record["outcome"] == "deadlettered"


class Millicores:
    """A backend of one's own that turns cores into an integer the naive way."""

    name = "millicores"

    def __init__(self) -> None:
        self.calls = 0

    def apply(self, alloc: Allocation) -> str:
        self.calls += 1
        return f"{int(alloc.reserve['cpu_cores'] * 1000)}m"


def test_any_backend_overflowing_on_a_reserve_is_dead_lettered_at_once(
        redis_client: redis.Redis, client: redis.Redis, settings: Settings) -> None:
    xadd(redis_client, settings, allocation("web", "vm-3", cpu_cores=1e308))
    xadd(redis_client, settings, allocation("web", "vm-4", cpu_cores=2.0))
    backend = Millicores()
    act = Actuator(client, settings, backend, metrics=ActuatorMetrics(CollectorRegistry()),
                   block_ms=50, backoff_s=0.05, max_attempts=5)
    drain(act, redis_client, settings)
    [doc] = letters(redis_client, settings).values()
    assert (doc["id"], doc["reason"], doc["attempts"]) == ("web/vm-3/1", "invalid", "1")
    assert "OverflowError" in doc["error"]
    assert backend.calls == 2
    assert value(act, "fpstream_actuator_retried_total") == 0
    assert value(act, "fpstream_actuator_applied_total") == 1
