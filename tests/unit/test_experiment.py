"""A/B experiment: stable split, a Thompson-sampling bandit, the guard rail and the summary."""

from __future__ import annotations

import hashlib
import math
import pickle
import random
from collections import Counter

import orjson
import pytest

from fpstream.experiment import Experiment, ExperimentSnapshot, score_period
from fpstream.io.metrics import FlowMetrics
from fpstream.policy import Policy
from fpstream.settings import DEFAULT_ARMS, Settings

GOOD = Policy("good", quantile=0.95, headroom=0.10)
BAD = Policy("bad", quantile=0.95, headroom=0.30)  # also the conservative arm (larger q + h)


def test_defaults_and_conservative_arm() -> None:
    ex = Experiment()
    assert [a.name for a in ex.arms] == ["conservative", "balanced", "lean"]
    assert ex.conservative.name == "conservative"
    assert Experiment("x", [GOOD, BAD]).conservative is BAD
    tie = [Policy("a", 0.9, 0.1), Policy("b", 0.9, 0.1)]
    assert Experiment("x", tie).conservative.name == "a"  # ties: the earliest arm


@pytest.mark.parametrize("kwargs", [
    {"arms": []}, {"arms": [GOOD, GOOD]}, {"mode": "random"}, {"violation_penalty": -1.0},
    {"guard_budget": 1.5}, {"guard_periods": 0}, {"name": ""},
])
def test_bad_parameters(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        Experiment(**kwargs)


def test_split_is_stable_and_roughly_uniform() -> None:
    ex = Experiment("split-test", DEFAULT_ARMS, mode="split")
    first = {i: ex.assign("app", f"i-{i}", cluster=i % 3).name for i in range(3000)}
    other = Experiment("split-test", DEFAULT_ARMS, mode="split", seed=7)
    # Same in another object (another process, a replay) whatever the seed or cluster.
    assert all(other.assign("app", f"i-{i}", cluster=0).name == a for i, a in first.items())
    counts = Counter(first.values())
    assert set(counts) == {"conservative", "balanced", "lean"}
    assert all(abs(n - 1000) < 120 for n in counts.values()), counts
    # Stable across periods too.
    for i in range(50):
        ex.record("app", f"i-{i}", 0, first[i], waste=0.2, violations=0, steps=12)
        assert ex.assign("app", f"i-{i}", 0).name == first[i]


def test_split_is_a_documented_sha256() -> None:
    # A hashlib digest, not Python's salted hash(): the same answer in every interpreter.
    ex = Experiment("default", DEFAULT_ARMS)
    for i in range(20):
        digest = hashlib.sha256(f"default:billing-api/vm-{i}".encode()).digest()
        expected = DEFAULT_ARMS[int.from_bytes(digest[:8], "big") % 3].name
        assert ex.assign("billing-api", f"vm-{i}", None).name == expected


def test_off_mode_uses_the_first_arm() -> None:
    ex = Experiment("off", [GOOD, BAD], mode="off")
    assert {ex.assign("a", f"i{i}", 0).name for i in range(20)} == {"good"}


def test_an_instance_keeps_its_arm_for_a_period() -> None:
    ex = Experiment("keep", [GOOD, BAD], mode="bandit", seed=3, burn_in=0)
    arm = ex.assign("a", "i", 1)
    assert all(ex.assign("a", "i", 1) is arm for _ in range(20))
    assert ex.summary()["assignments"] == 1


def simulate(seed: int, periods: int = 40, instances: int = 20) -> tuple[list[float], Experiment]:
    """Two arms, same violations (0 or 1 of 12 windows), ``good`` wastes 0.15 and ``bad`` 0.45
    on average, with period-to-period noise (sd 0.25) large enough that one reward of ``good``
    beats one of ``bad`` only about 80 % of the time."""
    ex = Experiment("sim", [GOOD, BAD], mode="bandit", seed=seed, guard_budget=1.0)
    env = random.Random(1)
    shares = []
    for _ in range(periods):
        chosen = {i: ex.assign("app", f"i{i}", 0).name for i in range(instances)}
        shares.append(sum(a == "good" for a in chosen.values()) / instances)
        for i, arm in chosen.items():
            waste = (0.15 if arm == "good" else 0.45) + env.gauss(0.0, 0.25)
            ex.record("app", f"i{i}", 0, arm, min(max(waste, 0.0), 1.0), env.randint(0, 1), 12)
    return shares, ex


def test_simulated_rewards_overlap() -> None:
    # The environment of simulate(): a bandit sampling single rewards (River's Gaussian reward
    # object, the earlier implementation) would settle near this share, well below 0.9.
    env = random.Random(3)

    def reward(mean: float) -> float:
        waste = min(max(mean + env.gauss(0.0, 0.25), 0.0), 1.0)
        return -waste - 2.0 * env.randint(0, 1) / 12

    wins = sum(reward(0.15) > reward(0.45) for _ in range(20000)) / 20000
    assert 0.7 < wins < 0.85, wins


def test_bandit_moves_assignments_to_the_better_arm() -> None:
    shares, ex = simulate(seed=11)
    assert shares[0] == 0.5  # burn-in: round-robin over the two arms
    assert sum(shares[-10:]) / 10 > 0.9, shares
    summary = ex.summary()
    assert summary["arms"]["good"]["share"] > 0.85
    assert summary["arms"]["good"]["waste"] < summary["arms"]["bad"]["waste"]
    # Reported rewards stay in real units (-waste - penalty * rate), not the bandit's [0, 1].
    assert summary["arms"]["good"]["reward"] == pytest.approx(-0.24, abs=0.04)
    assert summary["arms"]["bad"]["reward"] == pytest.approx(-0.52, abs=0.06)
    # Deterministic for a seed; another seed also concentrates.
    again, _ = simulate(seed=11)
    assert again == shares
    other, _ = simulate(seed=12)
    assert other != shares and sum(other[-10:]) / 10 > 0.9, other


def test_bandit_updates_beta_posteriors_with_bernoulli_draws() -> None:
    ex = Experiment("b", [GOOD, BAD], mode="bandit", seed=3, guard_budget=1.0, burn_in=0)
    policy = ex._bandit(0)
    for _ in range(200):
        ex.record("app", "i", 0, "good", waste=0.2, violations=0, steps=12)
        ex.record("app", "j", 0, "bad", waste=0.6, violations=0, steps=12)
    good, bad = policy._rewards["good"], policy._rewards["bad"]
    # One draw per period; success rates near the normalised rewards 0.8 and 0.4.
    assert good.n_samples == bad.n_samples == 200
    assert good.alpha / (good.alpha + good.beta) == pytest.approx(0.8, abs=0.06)
    assert bad.alpha / (bad.alpha + bad.beta) == pytest.approx(0.4, abs=0.07)
    # The posterior of the mean is narrow now: the better arm wins (almost) every pull.
    assert all(ex.assign("app", f"k{i}", 0).name == "good" for i in range(50))


def test_normalised_reward() -> None:
    ex = Experiment("n", [GOOD, BAD], violation_penalty=2.0)
    assert ex.normalised(0.0) == 1.0
    assert ex.normalised(-0.25) == pytest.approx(0.75)
    assert ex.normalised(-1.0) == 0.0
    assert ex.normalised(-3.0) == 0.0  # the worst reward at penalty 2: clipped


def test_burn_in_round_robins_arms_in_a_small_cluster() -> None:
    # Two instances that the split hash puts on the same arm: a hash burn-in would never give
    # the other arms a period, and the bandit would never start.
    ex = Experiment("tiny", DEFAULT_ARMS, mode="bandit", seed=1, guard_budget=1.0, burn_in=2)
    same = [f"i{i}" for i in range(200) if ex.peek("app", f"i{i}").name == "balanced"][:2]
    waste = {"conservative": 0.5, "balanced": 0.3, "lean": 0.1}
    seen = []
    for _ in range(3):
        chosen = [ex.assign("app", i, 7).name for i in same]
        seen += chosen
        for i, arm in zip(same, chosen, strict=True):
            ex.record("app", i, 7, arm, waste=waste[arm], violations=0, steps=12)
    # Round-robin in arm order, so after 3 periods of 2 instances every arm has 2 periods.
    assert seen == ["conservative", "balanced", "lean"] * 2
    policy = ex._bandit(7)
    assert all(policy._counts[a.name] == 2 for a in DEFAULT_ARMS)
    # The bandit chooses from now on (and learns: lean wastes least).
    for _ in range(40):
        chosen = [ex.assign("app", i, 7).name for i in same]
        for i, arm in zip(same, chosen, strict=True):
            ex.record("app", i, 7, arm, waste=waste[arm], violations=0, steps=12)
    assert sum(policy._counts.values()) == 6 + 80
    assert policy._counts["lean"] > 40


def test_burn_in_skips_arms_that_have_their_periods() -> None:
    ex = Experiment("skip", [GOOD, BAD], mode="bandit", seed=1, guard_budget=1.0, burn_in=1)
    ex.record("app", "x", 0, "good", waste=0.1, violations=0, steps=12)
    # Only "bad" lacks a period: every burn-in assignment goes there until it is recorded.
    assert [ex.assign("app", f"i{i}", 0).name for i in range(3)] == ["bad"] * 3


def test_bandit_is_per_cluster_and_seeded() -> None:
    def choices(seed: int) -> list[str]:
        ex = Experiment("c", DEFAULT_ARMS, mode="bandit", seed=seed, burn_in=0)
        for arm in DEFAULT_ARMS:  # one observation per arm in cluster 1 only
            ex.record("x", arm.name, 1, arm.name, waste=0.3, violations=0, steps=12)
        out = []
        for i in range(40):
            out.append(ex.assign("app", f"i{i}", i % 2).name)
        return out

    assert choices(5) == choices(5)
    ex = Experiment("c", DEFAULT_ARMS, mode="bandit", seed=5)
    ex.assign("a", "i", 0)
    ex.assign("a", "j", 1)
    assert ex.summary()["bandit_clusters"] == 2


def test_pickled_experiment_continues_identically() -> None:
    _, ex = simulate(seed=4, periods=5)
    copy = pickle.loads(pickle.dumps(ex))
    a = [ex.assign("app", f"new{i}", 0).name for i in range(30)]
    b = [copy.assign("app", f"new{i}", 0).name for i in range(30)]
    assert a == b
    # The Bernoulli draws continue identically too.
    for e, arms in ((ex, a), (copy, b)):
        for i, arm in enumerate(arms):
            e.record("app", f"new{i}", 0, arm, waste=0.3, violations=0, steps=12)
    assert [ex.assign("app", f"n{i}", 0).name for i in range(30)] == [
        copy.assign("app", f"n{i}", 0).name for i in range(30)]
    assert ex.summary() == copy.summary()


def test_restoring_a_snapshot_without_beta_bandits_restarts_the_bandits() -> None:
    _, ex = simulate(seed=4, periods=5)
    state = dict(ex.__dict__)
    del state["_coins"], state["_turns"]  # as pickled before the Beta bandits
    old = Experiment.__new__(Experiment)
    old.__setstate__(state)
    assert old._bandits == {} and old.summary()["periods"] == ex.summary()["periods"]
    assert old.assign("app", "fresh", 0).name == "good"  # burn-in again, round-robin


def test_reward_formula() -> None:
    ex = Experiment("r", [GOOD, BAD], violation_penalty=3.0, guard_budget=1.0)
    assert ex.record("a", "i", 0, "good", waste=0.25, violations=2, steps=8) == pytest.approx(
        -0.25 - 3.0 * 2 / 8)
    with pytest.raises(ValueError, match="no arm"):
        ex.record("a", "i", 0, "nope", waste=0.1, violations=0, steps=1)
    with pytest.raises(ValueError, match="violations"):
        ex.record("a", "i", 0, "good", waste=0.1, violations=3, steps=2)
    with pytest.raises(ValueError, match="waste"):
        ex.record("a", "i", 0, "good", waste=1.5, violations=0, steps=2)


def test_score_period() -> None:
    waste, violations, steps = score_period([2.0, 2.0, 4.0], [1.0, 3.0, 3.0])
    assert (waste, violations, steps) == (pytest.approx(2.0 / 8.0), 1, 3)
    assert score_period([0.0], [0.0]) == (0.0, 0, 1)


def test_guard_rail_moves_a_violating_instance_and_counts_it() -> None:
    ex = Experiment("g", [BAD, GOOD], mode="split", guard_budget=0.2, guard_periods=3)
    assert ex.conservative.name == "bad"
    # Find instances split onto the non-conservative arm.
    lean = [f"i{i}" for i in range(50) if ex.assign("app", f"i{i}", 0).name == "good"][:2]
    violator, fine = lean
    ex.record("app", fine, 0, "good", waste=0.1, violations=1, steps=12)
    ex.record("app", violator, 0, "good", waste=0.1, violations=1, steps=12)  # 8 % so far
    assert not ex.is_guarded("app", violator)
    assert ex.assign("app", violator, 0).name == "good"
    ex.record("app", violator, 0, "good", waste=0.1, violations=6, steps=12)  # 7/24 > 20 %
    assert ex.is_guarded("app", violator)
    assert ex.assign("app", violator, 0).name == "bad"  # at once, from the next period
    assert ex.assign("app", fine, 0).name == "good"
    assert ex.guard_moves == 1
    # Stays on the conservative arm, and is not counted again.
    ex.record("app", violator, 0, "bad", waste=0.4, violations=12, steps=12)
    assert ex.assign("app", violator, 0).name == "bad" and ex.guard_moves == 1
    summary = ex.summary()
    assert summary["guard_moves"] == 1 and summary["guarded"] == 1
    ex.forget("app", violator)
    assert not ex.is_guarded("app", violator)


def test_guard_rail_applies_in_bandit_mode_and_skips_the_bandit() -> None:
    ex = Experiment("g", [GOOD, BAD], mode="bandit", seed=1, guard_budget=0.1, burn_in=0)
    ex.record("app", "i", 0, "good", waste=0.0, violations=12, steps=12)
    assert ex.guard_moves == 1
    before = dict(ex._bandit(0)._counts)
    for _ in range(5):
        assert ex.assign("app", "i", 0).name == "bad"
        ex.record("app", "i", 0, "bad", waste=0.5, violations=0, steps=12)
    assert dict(ex._bandit(0)._counts) == before


def test_ci_of_a_clear_difference_excludes_zero() -> None:
    ex = Experiment("ci", [BAD, GOOD], guard_budget=1.0)
    rng = random.Random(0)
    for i in range(40):
        ex.record("a", f"b{i}", 0, "bad", waste=0.45 + rng.gauss(0, 0.05), violations=0,
                  steps=12)
        ex.record("a", f"g{i}", 0, "good", waste=0.15 + rng.gauss(0, 0.05), violations=0,
                  steps=12)
    summary = ex.summary()
    assert summary["baseline"] == "bad"
    d = summary["differences"]["good"]
    assert d["vs"] == "bad" and d["diff"] == pytest.approx(0.30, abs=0.05)
    lo, hi = d["ci95"]
    assert 0.0 < lo < d["diff"] < hi and d["significant"] is True
    lo, hi = summary["arms"]["good"]["reward_ci95"]
    assert lo < summary["arms"]["good"]["reward"] < hi


def test_ci_of_no_difference_includes_zero() -> None:
    ex = Experiment("ci", [BAD, GOOD], guard_budget=1.0)
    rng = random.Random(2)
    for i in range(40):
        for arm in ("bad", "good"):
            ex.record("a", f"{arm}{i}", 0, arm, waste=0.3 + rng.gauss(0, 0.05), violations=0,
                      steps=12)
    d = ex.summary()["differences"]["good"]
    assert d["ci95"][0] < 0.0 < d["ci95"][1] and d["significant"] is False


def test_summary_is_json_serialisable_before_and_after_data() -> None:
    ex = Experiment()
    empty = ex.summary()
    assert orjson.loads(orjson.dumps(empty)) == empty
    assert empty["arms"]["lean"]["reward"] is None
    assert empty["differences"]["lean"]["ci95"] is None
    arms = [ex.assign("a", f"i{i}", 0).name for i in range(30)]
    ex.record("a", "i", 0, "lean", waste=0.1, violations=0, steps=12)
    full = ex.summary()
    assert orjson.loads(orjson.dumps(full)) == full
    assert full["mode"] == "split" and full["name"] == "default"
    assert full["arms"]["lean"]["share"] == pytest.approx(arms.count("lean") / 30)
    assert full["arms"]["lean"]["periods"] == 1
    assert sum(a["share"] for a in full["arms"].values()) == pytest.approx(1.0)
    assert full["arms"]["lean"]["reward_ci95"] is None  # one period: no variance yet
    assert full["differences"]["lean"]["diff"] is None  # baseline has no period
    snap = ex.snapshot(100.0)
    assert isinstance(snap, ExperimentSnapshot) and snap.name == "default"
    assert snap.summary == full


def test_from_settings() -> None:
    s = Settings(experiment_name="q3", experiment_mode="bandit", violation_penalty=1.5,
                 guard_budget=0.3, guard_periods=4, seed=9)
    ex = Experiment.from_settings(s)
    assert (ex.name, ex.mode, ex.violation_penalty, ex.guard_budget, ex.guard_periods,
            ex.seed) == ("q3", "bandit", 1.5, 0.3, 4, 9)
    assert ex.arms == s.policies()


def sample(metrics: FlowMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels or None)


def test_observe_experiment_sets_metrics() -> None:
    _, ex = simulate(seed=2, periods=6)
    ex.guard_budget = 0.5
    ex.record("app", "x", 0, "good", waste=0.0, violations=12, steps=12)  # a guard move
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
    ex.record("app", "i1", 0, "good", waste=0.1, violations=2, steps=12)
    metrics.observe_experiment(ex.summary())
    assert sample(metrics, "fpstream_experiment_periods_total",
                  arm="good") == good["periods"] + 1
    assert sample(metrics, "fpstream_experiment_violations_total",
                  arm="good") == good["violations"] + 2
    # An arm without data shows NaN gauges, not a stale number.
    fresh = FlowMetrics()
    fresh.observe_experiment(Experiment().summary())
    assert math.isnan(sample(fresh, "fpstream_experiment_reward", arm="lean") or 0.0)


def test_peek_changes_nothing_and_matches_the_open_period() -> None:
    ex = Experiment("p", DEFAULT_ARMS, mode="bandit")
    before = pickle.dumps(ex)
    arms = {ex.peek("app", f"i{i}").name for i in range(30)}
    assert pickle.dumps(ex) == before and ex.summary()["assignments"] == 0
    assert arms == {a.name for a in DEFAULT_ARMS}  # the split hash, never the bandit
    arm = ex.assign("app", "i0", 0)
    assert ex.peek("app", "i0") is arm
