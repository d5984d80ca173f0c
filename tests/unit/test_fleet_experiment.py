"""The experiment's fleet-wide results: per-arm statistics, confidence intervals, metrics."""

from __future__ import annotations

import math
import random

import orjson
import pytest

from fpstream.digest import Outcome
from fpstream.fleet.arms import ArmAssigner
from fpstream.fleet.experiment import Experiment, ExperimentSnapshot
from fpstream.io.metrics import FlowMetrics
from fpstream.policy import Policy
from fpstream.settings import DEFAULT_ARMS

GOOD = Policy("good", budget=2.0)
BAD = Policy("bad", budget=0.5)


def experiment(*arms: Policy, **kwargs: object) -> Experiment:
    return Experiment(ArmAssigner("ci", arms or DEFAULT_ARMS, **kwargs))  # type: ignore[arg-type]


def test_record_checks_what_it_is_given() -> None:
    ex = experiment(GOOD, BAD, violation_penalty=3.0)
    assert ex.record(Outcome("good", 0.25, 2, 8)) == pytest.approx(-0.25 - 3.0 * 2 / 8)
    with pytest.raises(ValueError, match="no arm"):
        ex.record(Outcome("nope", 0.1, 0, 1))
    with pytest.raises(ValueError, match="violations"):
        ex.record(Outcome("good", 0.1, 3, 2))
    with pytest.raises(ValueError, match="waste"):
        ex.record(Outcome("good", 1.5, 0, 2))


def test_ci_of_a_clear_difference_excludes_zero() -> None:
    ex = experiment(BAD, GOOD)
    rng = random.Random(0)
    for _ in range(40):
        ex.record(Outcome("bad", 0.45 + rng.gauss(0, 0.05), 0, 12))
        ex.record(Outcome("good", 0.15 + rng.gauss(0, 0.05), 0, 12))
    summary = ex.summary()
    assert summary["baseline"] == "bad"
    d = summary["differences"]["good"]
    assert d["vs"] == "bad" and d["diff"] == pytest.approx(0.30, abs=0.05)
    lo, hi = d["ci95"]
    assert 0.0 < lo < d["diff"] < hi and d["significant"] is True
    lo, hi = summary["arms"]["good"]["reward_ci95"]
    assert lo < summary["arms"]["good"]["reward"] < hi


def test_ci_of_no_difference_includes_zero() -> None:
    ex = experiment(BAD, GOOD)
    rng = random.Random(2)
    for _ in range(40):
        for arm in ("bad", "good"):
            ex.record(Outcome(arm, 0.3 + rng.gauss(0, 0.05), 0, 12))
    d = ex.summary()["differences"]["good"]
    assert d["ci95"][0] < 0.0 < d["ci95"][1] and d["significant"] is False


def test_summary_is_json_serialisable_before_and_after_data() -> None:
    ex = Experiment(ArmAssigner(arms=DEFAULT_ARMS))
    empty = ex.summary()
    assert orjson.loads(orjson.dumps(empty)) == empty
    assert empty["arms"]["lean"]["reward"] is None
    assert empty["differences"]["lean"]["ci95"] is None
    arms = ["lean", "lean", "balanced", "conservative"] * 5
    for arm in arms:
        ex.assigned(arm)
    ex.record(Outcome("lean", 0.1, 0, 12))
    full = ex.summary()
    assert orjson.loads(orjson.dumps(full)) == full
    assert full["mode"] == "split" and full["name"] == "default"
    assert full["arms"]["lean"]["share"] == pytest.approx(0.5)
    assert full["arms"]["lean"]["periods"] == 1
    assert sum(a["share"] for a in full["arms"].values()) == pytest.approx(1.0)
    assert full["arms"]["lean"]["reward_ci95"] is None  # one period: no variance yet
    assert full["differences"]["lean"]["diff"] is None  # baseline has no period
    snap = ex.snapshot(100.0)
    assert isinstance(snap, ExperimentSnapshot) and snap.name == "default"
    assert snap.summary == full


def test_guard_moves_and_pins_are_counted() -> None:
    ex = experiment(GOOD, BAD)
    ex.pinned("a", "i", pinned=True, moved=True)
    ex.pinned("a", "i", pinned=True, moved=False)
    ex.pinned("a", "j", pinned=False, moved=False)
    assert (ex.summary()["guard_moves"], ex.summary()["guarded"]) == (1, 1)
    ex.forget("a", "i")
    assert ex.summary()["guarded"] == 0


def sample(metrics: FlowMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels or None)


def test_observe_experiment_sets_metrics() -> None:
    ex = experiment(GOOD, BAD)
    for i in range(6):
        ex.assigned("good")
        ex.record(Outcome("good", 0.1, i % 2, 12))
        ex.assigned("bad")
        ex.record(Outcome("bad", 0.4, 0, 12))
    ex.pinned("a", "x", pinned=True, moved=True)
    metrics = FlowMetrics()
    summary = ex.summary()
    metrics.observe_experiment(summary)
    good = summary["arms"]["good"]
    assert sample(metrics, "fpstream_experiment_periods_total", arm="good") == good["periods"]
    assert sample(metrics, "fpstream_experiment_violations_total",
                  arm="good") == good["violations"]
    assert sample(metrics, "fpstream_experiment_waste_ratio", arm="good") == pytest.approx(
        good["waste"])
    assert sample(metrics, "fpstream_experiment_reward", arm="bad") == pytest.approx(
        summary["arms"]["bad"]["reward"])
    assert sample(metrics, "fpstream_experiment_share_ratio", arm="good") == pytest.approx(
        good["share"])
    assert sample(metrics, "fpstream_experiment_guard_moves_total") == 1
    # Counters advance to the new totals, not by them.
    ex.record(Outcome("good", 0.1, 2, 12))
    metrics.observe_experiment(ex.summary())
    assert sample(metrics, "fpstream_experiment_periods_total",
                  arm="good") == good["periods"] + 1
    assert sample(metrics, "fpstream_experiment_violations_total",
                  arm="good") == good["violations"] + 2
    # An arm without data shows NaN gauges, not a stale number.
    fresh = FlowMetrics()
    fresh.observe_experiment(Experiment(ArmAssigner(arms=DEFAULT_ARMS)).summary())
    assert math.isnan(sample(fresh, "fpstream_experiment_reward", arm="lean") or 0.0)
