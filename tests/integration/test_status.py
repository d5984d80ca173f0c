"""``fpstream status`` over a real Redis written by the flow's own publisher."""

from __future__ import annotations

import orjson
import pytest
import typer
from typer.testing import CliRunner

from fpstream.events import Allocation
from fpstream.fleet.stage import ClusterDef, ClusterSnapshot
from fpstream.io.redis_sink import RedisPublisher
from fpstream.ops.status import read_status, status
from fpstream.settings import Settings

pytestmark = pytest.mark.integration

GROUP = "fpstream-actuators"


def alloc(app: str, instance: str, seq: int, ts: float, cluster: int) -> Allocation:
    return Allocation(
        id=f"{app}/{instance}/{seq}", ts=ts, app=app, instance=instance,
        kind="proactive" if seq == 0 else "resize", instance_type="m.large",
        reserve={"cpu_cores": 1.5 + seq, "mem_bytes": 4.0 * 2**30}, predicted={"cpu_cores": 1.2},
        cluster=cluster, confidence=0.8, policy="p95-h15", model_version=1)


@pytest.fixture
def settings(services, redis_prefix) -> Settings:
    return Settings(redis_url=services.redis_url, redis_prefix=redis_prefix.rstrip(":"))


@pytest.fixture
def published(settings, redis_client) -> list[Allocation]:
    allocations = [alloc("web", "w-1", 0, 1000.0, 0), alloc("web", "w-1", 1, 1300.0, 0),
                   alloc("db", "d-1", 0, 1100.0, 1), alloc("db", "d-1", 1, 1400.0, 1),
                   alloc("batch", "b-1", 1, 1500.0, 1)]
    snap = ClusterSnapshot(ts=1500.0, version=3, clusters=(
        ClusterDef(0, 1500.0, 3, 1, (0.1, 0.2), {"cpu_cores": 0.5, "mem_bytes": 2.0 * 2**30}),
        ClusterDef(1, 1500.0, 3, 2, (0.9, -0.3), {"cpu_cores": 3.0, "mem_bytes": 16.0 * 2**30}),
    ), apps={"web": 0, "db": 1, "batch": 1, "orphan": 7})
    publisher = RedisPublisher(redis_client, settings)
    assert publisher.write([*allocations, snap]) == len(allocations)
    return allocations


def test_read_status_without_actuators(settings, redis_client, published) -> None:
    report = read_status(redis_client, settings, limit=3)

    assert report["prefix"] == settings.redis_prefix
    assert report["clusters_version"] == 3
    assert [(c["id"], c["size"], c["apps"], c["example_apps"]) for c in report["clusters"]] == [
        (0, 1, 1, ["web"]), (1, 2, 2, ["batch", "db"])]
    assert report["clusters"][1]["needs"] == {"cpu_cores": 3.0, "mem_bytes": 16.0 * 2**30}
    assert (report["apps"], report["unclustered_apps"]) == (4, 1)
    assert report["stream_length"] == len(published)
    # Newest first, whole allocation documents.
    assert [a["id"] for a in report["allocations"]] == [a.id for a in published[::-1][:3]]
    assert report["allocations"][0]["reserve"] == published[-1].reserve
    assert report["actuators"] == {"groups": [], "pending": 0, "lag": 0, "backlog": 0}


def test_backlog_counts_pending_and_undelivered(settings, redis_client, published) -> None:
    stream = settings.key("allocations")
    redis_client.xgroup_create(stream, GROUP, id="0")
    redis_client.xreadgroup(GROUP, "a-1", {stream: ">"}, count=2)  # delivered, not acked

    act = read_status(redis_client, settings)["actuators"]

    assert act["groups"] == [{"name": GROUP, "consumers": 1, "pending": 2,
                              "lag": len(published) - 2}]
    assert (act["pending"], act["lag"], act["backlog"]) == (2, len(published) - 2, len(published))


def test_empty_prefix(settings, redis_client) -> None:
    report = read_status(redis_client, settings)
    assert report["clusters"] == [] and report["allocations"] == []
    assert report["clusters_version"] is None and report["stream_length"] == 0
    assert report["actuators"]["backlog"] == 0
    assert report["experiment"] is None


def cli() -> typer.Typer:
    app = typer.Typer()
    app.command()(status)

    @app.callback()
    def _root() -> None:
        """Keep ``status`` a subcommand, as under ``fpstream``."""

    return app


def test_cli_json_and_tables(settings, redis_client, published) -> None:
    env = {"FPSTREAM_REDIS_PREFIX": settings.redis_prefix}
    runner = CliRunner()

    result = runner.invoke(cli(), ["status", "--redis-url", settings.redis_url, "--json",
                                   "--limit", "2"], env=env)
    assert result.exit_code == 0, result.output
    doc = orjson.loads(result.stdout)
    assert doc == orjson.loads(orjson.dumps(read_status(redis_client, settings, limit=2)))
    assert [a["id"] for a in doc["allocations"]] == ["batch/b-1/1", "db/d-1/1"]

    tables = runner.invoke(cli(), ["status", "--redis-url", settings.redis_url], env=env)
    assert tables.exit_code == 0, tables.output
    assert "latest allocations" in tables.stdout and "batch/b-1/1" in tables.stdout


def test_cli_unreachable_redis_exits_2() -> None:
    result = CliRunner().invoke(cli(), ["status", "--redis-url", "redis://127.0.0.1:1/0"])
    assert result.exit_code == 2
    assert "cannot reach Redis" in result.output
