"""The experiment summary through the Redis sink, and ``fpstream status`` reading it back."""

from __future__ import annotations

import orjson
import pytest
from typer.testing import CliRunner

from fpstream.digest import Outcome
from fpstream.fleet.arms import ArmAssigner
from fpstream.fleet.experiment import Experiment, ExperimentSnapshot
from fpstream.io.redis_sink import RedisPublisher
from fpstream.ops.status import read_experiment, read_status
from fpstream.settings import DEFAULT_ARMS, Settings
from tests.integration.test_status import alloc, cli

pytestmark = pytest.mark.integration


@pytest.fixture
def settings(services, redis_prefix) -> Settings:
    return Settings(redis_url=services.redis_url, redis_prefix=redis_prefix.rstrip(":"),
                    experiment_name="ab-1")


def experiment(periods: int = 10) -> Experiment:
    arms = ArmAssigner("ab-1", DEFAULT_ARMS, mode="split", guard_budget=1.0)
    ex = Experiment(arms)
    waste = {"conservative": 0.40, "balanced": 0.25, "lean": 0.10}
    for i in range(periods * 3):
        arm = arms.peek("app", f"i{i}").name
        ex.assigned(arm)
        ex.record(Outcome(arm, waste[arm] + 0.01 * (i % 5), i % 2, 12))
    return ex


def test_snapshot_written_and_read_back(settings, redis_client) -> None:
    ex = experiment()
    snap = ex.snapshot(1500.0)
    publisher = RedisPublisher(redis_client, settings)
    allocation = alloc("web", "w-1", 0, 1400.0, 0)

    assert publisher.write([allocation, snap]) == 1  # allocations counted as before

    raw = redis_client.get(f"{settings.redis_prefix}:experiment:ab-1")
    assert raw is not None
    doc = orjson.loads(raw)
    assert doc == {**orjson.loads(orjson.dumps(snap.summary)), "name": "ab-1", "ts": 1500.0}
    assert read_experiment(redis_client, settings) == doc
    assert redis_client.hget(settings.key("desired", "web"), "w-1") is not None

    # Idempotent: the same snapshot again, or an older one replayed after a resume, changes
    # nothing; a newer one replaces it.
    assert publisher.write([snap]) == 0
    assert orjson.loads(redis_client.get(settings.key("experiment", "ab-1"))) == doc
    older = ExperimentSnapshot(1000.0, "ab-1", {"name": "ab-1", "arms": {}})
    assert publisher.publish_experiment(older) is False
    assert orjson.loads(redis_client.get(settings.key("experiment", "ab-1"))) == doc
    newer = experiment(periods=12).snapshot(1800.0)
    publisher.write([older, newer])  # within a batch only the newest counts
    stored = orjson.loads(redis_client.get(settings.key("experiment", "ab-1")))
    assert stored["ts"] == 1800.0 and stored["periods"] == 36


def test_status_shows_the_experiment(settings, redis_client) -> None:
    assert read_status(redis_client, settings)["experiment"] is None
    RedisPublisher(redis_client, settings).write([experiment().snapshot(1500.0)])

    report = read_status(redis_client, settings)
    exp = report["experiment"]
    assert exp["name"] == "ab-1" and exp["baseline"] == "conservative"
    assert set(exp["arms"]) == {"conservative", "balanced", "lean"}
    assert exp["differences"]["lean"]["significant"] is True

    env = {"FPSTREAM_REDIS_PREFIX": settings.redis_prefix, "FPSTREAM_EXPERIMENT_NAME": "ab-1"}
    runner = CliRunner()
    result = runner.invoke(cli(), ["status", "--redis-url", settings.redis_url, "--json"],
                           env=env)
    assert result.exit_code == 0, result.output
    assert orjson.loads(result.stdout)["experiment"] == exp

    tables = runner.invoke(cli(), ["status", "--redis-url", settings.redis_url], env=env)
    assert tables.exit_code == 0, tables.output
    out = tables.stdout
    assert "experiment 'ab-1': split, 30 periods, 0 guard moves" in out
    for arm in ("conservative", "balanced", "lean", "baseline"):
        assert arm in out
    lean = exp["differences"]["lean"]
    assert f"{lean['diff']:+.3f} *" in out
    assert f"{lean['ci95'][0]:+.3f}..{lean['ci95'][1]:+.3f}" in out
