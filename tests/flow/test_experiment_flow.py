"""The A/B experiment inside the real flow: arms on allocations, summaries to Redis, a bandit
per app that moves its instances to the cheaper of two equally safe arms, deterministically."""

from __future__ import annotations

from typing import Any

import pytest

from fpstream.fleet.arms import ArmAssigner
from fpstream.fleet.experiment import ExperimentSnapshot
from fpstream.io.metrics import FlowMetrics
from fpstream.settings import Settings

from .conftest import Outputs, kafka_messages
from .test_fleet_flow import run_flow, value

pytestmark = pytest.mark.flow

# Two arms that differ only in headroom; guard rail off so that only the bandit moves anyone.
# An instance's own periods (after 24 of warm-up, decided by the fleet) teach its app's bandit.
BANDIT = {"experiment_mode": "bandit", "arms": "fat:1:0.6,lean:1:0.05",
          "guard_budget": 1.0, "decision_period_s": 300.0, "recluster_s": 3600.0,
          "experiment_name": "headroom"}
BANDIT_SIM = {"apps": 18, "minutes": 10 * 60, "seed": 7, "bad_share": 0.0}


def experiment_snapshots(out: Outputs) -> list[ExperimentSnapshot]:
    return sorted((x for x in out.redis if isinstance(x, ExperimentSnapshot)),
                  key=lambda x: x.ts)


def lean_share(snaps: list[ExperimentSnapshot], start: int, end: int) -> float:
    """The lean arm's share of the assignments made between snapshots ``start`` and ``end``
    (``start`` -1: from the beginning)."""
    def assigned(i: int) -> dict[str, int]:
        if i < 0:
            return {"fat": 0, "lean": 0}
        return {n: a["assignments"] for n, a in snaps[i].summary["arms"].items()}

    before, after = assigned(start), assigned(end)
    made = {n: after[n] - before[n] for n in after}
    return made["lean"] / sum(made.values())


@pytest.fixture(scope="module")
def bandit() -> tuple[Outputs, FlowMetrics, Settings]:
    settings = Settings(**BANDIT)  # type: ignore[arg-type]
    messages, _ = kafka_messages(settings, **BANDIT_SIM)
    out, metrics = run_flow(settings, messages)
    return out, metrics, settings


def test_bandit_moves_assignments_to_the_lean_arm(bandit: Any) -> None:
    out, metrics, _ = bandit
    snaps = experiment_snapshots(out)
    assert len(snaps) >= 6  # one an hour and one at the end of the stream
    summary = snaps[-1].summary
    assert summary["mode"] == "bandit" and summary["name"] == "headroom"
    arms = summary["arms"]
    # Both arms are (nearly) violation-free; the lean one wastes less.
    assert arms["fat"]["viol"] < 0.05 and arms["lean"]["viol"] < 0.05, arms
    assert arms["lean"]["waste"] < arms["fat"]["waste"]
    assert summary["differences"]["lean"]["significant"] is True
    assert summary["differences"]["lean"]["diff"] > 0
    early = lean_share(snaps, -1, 0)  # the first hour: burn-in, then the first lessons
    late = lean_share(snaps, 6, len(snaps) - 1)  # hours 8 to 10
    print(f"lean share of assignments: first hour {early:.3f}, hours 8-10 {late:.3f}")
    assert late > 0.85 and late >= early, (early, late)  # a split would stay near 0.5
    # The allocations carry their arm, and the late ones are mostly lean.
    resizes = sorted((a for a in out.allocations if a.kind == "resize"), key=lambda a: a.ts)
    assert {a.policy for a in out.allocations} <= {"fat", "lean"}
    last = resizes[len(resizes) // 2:]
    assert sum(a.policy == "lean" for a in last) / len(last) > 0.6
    assert value(metrics, "fpstream_experiment_share_ratio", arm="lean") == pytest.approx(
        arms["lean"]["share"])


def test_bandit_replays_identically_on_two_workers(bandit: Any) -> None:
    out, _, settings = bandit
    messages, _ = kafka_messages(settings, **BANDIT_SIM)
    again, _ = run_flow(settings, messages, workers=2)

    def resizes(o: Outputs) -> list[tuple[Any, ...]]:
        return sorted((a.id, a.policy, a.reserve["cpu_cores"], a.reserve["mem_bytes"])
                      for a in o.allocations if a.kind == "resize")

    assert resizes(again) == resizes(out)
    assert experiment_snapshots(again)[-1].summary == experiment_snapshots(out)[-1].summary


def test_split_mode_allocations_carry_an_arm_and_the_summary_reaches_redis() -> None:
    settings = Settings(recluster_s=3600.0, experiment_mode="split", experiment_name="ab")
    messages, _ = kafka_messages(settings, apps=8, minutes=3 * 60, seed=5, bad_share=0.0)
    out, metrics = run_flow(settings, messages)
    names = {p.name for p in settings.policies()}
    assert out.allocations
    assert {a.policy for a in out.allocations} <= names
    # A stable hash: every instance runs on its hashed arm, unless the guard rail moved it to
    # the conservative one; the fleet uses every arm.
    hashed = ArmAssigner("ab", settings.policies(), mode="split")
    conservative = hashed.conservative.name
    moved = set()
    for a in out.allocations:
        if a.policy != hashed.peek(a.app, a.instance).name:
            assert a.policy == conservative, a
            moved.add((a.app, a.instance))
    assert {a.policy for a in out.allocations} == names
    snaps = experiment_snapshots(out)
    assert snaps, "no experiment summary reached the Redis sink"
    summary = snaps[-1].summary
    assert summary["mode"] == "split" and summary["name"] == "ab"
    assert set(summary["arms"]) == names
    assert len(moved) <= summary["guard_moves"]
    assert summary["periods"] > 0
    assert not any(isinstance(e, ExperimentSnapshot) for e in out.kafka_events())
    periods = sum(value(metrics, "fpstream_experiment_periods_total", arm=n) for n in names)
    assert periods == summary["periods"]
