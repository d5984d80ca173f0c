"""A/B arms: stable split, a Thompson-sampling bandit per group (the fleet stage's are per
cluster), and the guard rail."""

from __future__ import annotations

import hashlib
import pickle
import random
from collections import Counter

import pytest

from fpstream.digest import Outcome
from fpstream.fleet.arms import ArmAssigner, GroupArms, InstanceArms
from fpstream.policy import Policy
from fpstream.settings import DEFAULT_ARMS, Settings

GOOD = Policy("good", budget=2.0)
BAD = Policy("bad", budget=0.5)  # also the conservative arm (the smallest budget)


class Rig:
    """An assigner with the state its groups and instances hold in the fleet stage (here a
    group per app)."""

    def __init__(self, assigner: ArmAssigner) -> None:
        self.assigner = assigner
        self.apps: dict[str, GroupArms] = {}
        self.instances: dict[tuple[str, str], InstanceArms] = {}

    def state(self, app: str, instance: str) -> tuple[GroupArms, InstanceArms]:
        return (self.apps.setdefault(app, GroupArms()),
                self.instances.setdefault((app, instance), InstanceArms()))

    def choose(self, app: str, instance: str) -> str:
        group, inst = self.state(app, instance)
        return self.assigner.choose(group, inst, app, app, instance).name

    def learn(self, app: str, instance: str, arm: str, waste: float, violations: int,
              steps: int = 12) -> bool:
        group, inst = self.state(app, instance)
        return self.assigner.learn(group, inst, app, Outcome(arm, waste, violations, steps))


def test_defaults_and_conservative_arm() -> None:
    arms = ArmAssigner(arms=DEFAULT_ARMS)
    assert arms.names == ["conservative", "balanced", "lean"]
    assert arms.conservative.name == "conservative"
    assert ArmAssigner("x", [GOOD, BAD]).conservative is BAD
    tie = [Policy("a", 0.5, 0.1), Policy("b", 0.5, 0.1)]
    assert ArmAssigner("x", tie).conservative.name == "a"  # ties: the earliest arm
    roomy = [Policy("a", 0.5, 0.0), Policy("b", 0.5, 0.2)]
    assert ArmAssigner("x", roomy).conservative.name == "b"  # then the larger headroom


@pytest.mark.parametrize("kwargs", [
    {"arms": []}, {"arms": [GOOD, GOOD]}, {"mode": "random"}, {"violation_penalty": -1.0},
    {"guard_budget": 1.5}, {"guard_periods": 0}, {"name": ""}, {"burn_in": -1},
])
def test_bad_parameters(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        ArmAssigner(**kwargs)


def test_split_is_stable_and_roughly_uniform() -> None:
    rig = Rig(ArmAssigner("split-test", DEFAULT_ARMS, mode="split"))
    first = {i: rig.choose("app", f"i-{i}") for i in range(3000)}
    other = Rig(ArmAssigner("split-test", DEFAULT_ARMS, mode="split", seed=7))
    # Same in another object (another process, a replay) whatever the seed.
    assert all(other.choose("app", f"i-{i}") == a for i, a in first.items())
    counts = Counter(first.values())
    assert set(counts) == {"conservative", "balanced", "lean"}
    assert all(abs(n - 1000) < 120 for n in counts.values()), counts
    for i in range(50):  # stable across periods too
        rig.learn("app", f"i-{i}", first[i], waste=0.2, violations=0)
        assert rig.choose("app", f"i-{i}") == first[i]


def test_split_is_a_documented_sha256() -> None:
    # A hashlib digest, not Python's salted hash(): the same answer in every interpreter.
    rig = Rig(ArmAssigner("default", DEFAULT_ARMS))
    for i in range(20):
        digest = hashlib.sha256(f"default:billing-api/vm-{i}".encode()).digest()
        expected = DEFAULT_ARMS[int.from_bytes(digest[:8], "big") % 3].name
        assert rig.choose("billing-api", f"vm-{i}") == expected


def test_off_mode_uses_the_first_arm() -> None:
    rig = Rig(ArmAssigner("off", [GOOD, BAD], mode="off"))
    assert {rig.choose("a", f"i{i}") for i in range(20)} == {"good"}


def simulate(seed: int, periods: int = 40, instances: int = 20) -> tuple[list[float], Rig]:
    """Two arms, same violations (0 or 1 of 12 windows), ``good`` wastes 0.15 and ``bad`` 0.45
    on average, with period-to-period noise (sd 0.25) large enough that one reward of ``good``
    beats one of ``bad`` only about 80 % of the time."""
    rig = Rig(ArmAssigner("sim", [GOOD, BAD], mode="bandit", seed=seed, guard_budget=1.0))
    env = random.Random(1)
    shares = []
    for _ in range(periods):
        chosen = {i: rig.choose("app", f"i{i}") for i in range(instances)}
        shares.append(sum(a == "good" for a in chosen.values()) / instances)
        for i, arm in chosen.items():
            waste = (0.15 if arm == "good" else 0.45) + env.gauss(0.0, 0.25)
            rig.learn("app", f"i{i}", arm, min(max(waste, 0.0), 1.0), env.randint(0, 1))
    return shares, rig


def test_bandit_moves_an_apps_assignments_to_the_better_arm() -> None:
    shares, _ = simulate(seed=11)
    assert shares[0] == 0.5  # burn-in: round-robin over the two arms
    assert sum(shares[-10:]) / 10 > 0.9, shares
    again, _ = simulate(seed=11)  # deterministic for a seed
    assert again == shares
    other, _ = simulate(seed=12)  # another seed also concentrates
    assert other != shares and sum(other[-10:]) / 10 > 0.9, other


def test_bandit_updates_beta_posteriors_with_bernoulli_draws() -> None:
    rig = Rig(ArmAssigner("b", [GOOD, BAD], mode="bandit", seed=3, guard_budget=1.0,
                          burn_in=0))
    for _ in range(200):
        rig.learn("app", "i", "good", waste=0.2, violations=0)
        rig.learn("app", "j", "bad", waste=0.6, violations=0)
    policy = rig.apps["app"].bandit
    assert policy is not None
    good, bad = policy._rewards["good"], policy._rewards["bad"]
    # One draw per period; success rates near the normalised rewards 0.8 and 0.4.
    assert good.n_samples == bad.n_samples == 200
    assert good.alpha / (good.alpha + good.beta) == pytest.approx(0.8, abs=0.06)
    assert bad.alpha / (bad.alpha + bad.beta) == pytest.approx(0.4, abs=0.07)
    # The posterior of the mean is narrow now: the better arm wins (almost) every pull.
    assert all(rig.choose("app", f"k{i}") == "good" for i in range(50))


def test_burn_in_round_robins_arms_in_a_small_app() -> None:
    # Two instances that the split hash puts on the same arm: a hash burn-in would never give
    # the other arms a period, and the bandit would never start.
    rig = Rig(ArmAssigner("tiny", DEFAULT_ARMS, mode="bandit", seed=1, guard_budget=1.0,
                          burn_in=2))
    same = [f"i{i}" for i in range(200) if rig.assigner.peek("app", f"i{i}").name ==
            "balanced"][:2]
    waste = {"conservative": 0.5, "balanced": 0.3, "lean": 0.1}
    seen = []
    for _ in range(3):
        chosen = [rig.choose("app", i) for i in same]
        seen += chosen
        for i, arm in zip(same, chosen, strict=True):
            rig.learn("app", i, arm, waste=waste[arm], violations=0)
    assert seen == ["conservative", "balanced", "lean"] * 2  # round-robin in arm order
    policy = rig.apps["app"].bandit
    assert policy is not None and all(policy._counts[a.name] == 2 for a in DEFAULT_ARMS)
    for _ in range(40):  # the bandit chooses from now on, and learns: lean wastes least
        chosen = [rig.choose("app", i) for i in same]
        for i, arm in zip(same, chosen, strict=True):
            rig.learn("app", i, arm, waste=waste[arm], violations=0)
    assert sum(policy._counts.values()) == 6 + 80
    assert policy._counts["lean"] > 40


def test_each_group_has_its_own_seeded_bandit() -> None:
    rig = Rig(ArmAssigner("c", [GOOD, BAD], mode="bandit", seed=5, burn_in=0, guard_budget=1))
    for _ in range(60):
        rig.learn("a", "i", "good", waste=0.1, violations=0)
        rig.learn("a", "i", "bad", waste=0.9, violations=0)
        rig.learn("b", "i", "good", waste=0.9, violations=0)
        rig.learn("b", "i", "bad", waste=0.1, violations=0)
    assert Counter(rig.choose("a", f"x{i}") for i in range(40))["good"] > 35
    assert Counter(rig.choose("b", f"x{i}") for i in range(40))["bad"] > 35


def test_pickled_state_continues_identically() -> None:
    _, rig = simulate(seed=4, periods=5)
    copy = pickle.loads(pickle.dumps(rig))
    assert [rig.choose("app", f"n{i}") for i in range(30)] == [
        copy.choose("app", f"n{i}") for i in range(30)]


def test_reward_and_bad_outcomes() -> None:
    arms = ArmAssigner("r", [GOOD, BAD], violation_penalty=3.0, guard_budget=1.0)
    assert arms.reward(Outcome("good", 0.25, 2, 8)) == pytest.approx(-0.25 - 3.0 * 2 / 8)
    with pytest.raises(ValueError, match="no arm"):
        arms.learn(GroupArms(), InstanceArms(), "g", Outcome("nope", 0.1, 0, 1))


def test_guard_rail_pins_a_violating_instance() -> None:
    rig = Rig(ArmAssigner("g", [BAD, GOOD], mode="split", guard_budget=0.2, guard_periods=3))
    assert rig.assigner.conservative.name == "bad"
    lean = [f"i{i}" for i in range(50) if rig.choose("app", f"i{i}") == "good"][:2]
    violator, fine = lean
    assert not rig.learn("app", fine, "good", waste=0.1, violations=1)
    assert not rig.learn("app", violator, "good", waste=0.1, violations=1)  # 8 % so far
    assert rig.choose("app", violator) == "good"
    assert rig.learn("app", violator, "good", waste=0.1, violations=6)  # 7/24 > 20 %: moved
    assert rig.instances[("app", violator)].pinned
    assert rig.choose("app", violator) == "bad"  # at once, from the next period
    assert rig.choose("app", fine) == "good"
    # Stays on the conservative arm, and is not moved again.
    assert not rig.learn("app", violator, "bad", waste=0.4, violations=12)
    assert rig.choose("app", violator) == "bad"


def test_guard_rail_applies_in_bandit_mode_and_skips_the_bandit() -> None:
    rig = Rig(ArmAssigner("g", [GOOD, BAD], mode="bandit", seed=1, guard_budget=0.1,
                          burn_in=0))
    assert rig.learn("app", "i", "good", waste=0.0, violations=12)
    policy = rig.apps["app"].bandit
    assert policy is not None
    before = dict(policy._counts)
    for _ in range(5):
        assert rig.choose("app", "i") == "bad"
        rig.learn("app", "i", "bad", waste=0.5, violations=0)
    assert dict(policy._counts) == before


def test_peek_draws_nothing() -> None:
    rig = Rig(ArmAssigner("p", DEFAULT_ARMS, mode="bandit"))
    before = pickle.dumps(rig)
    arms = {rig.assigner.peek("app", f"i{i}").name for i in range(30)}
    assert pickle.dumps(rig) == before
    assert arms == {a.name for a in DEFAULT_ARMS}  # the split hash, never the bandit


def test_from_settings() -> None:
    s = Settings(experiment_name="q3", experiment_mode="bandit", violation_penalty=1.5,
                 guard_budget=0.3, guard_periods=4, seed=9)
    arms = ArmAssigner.from_settings(s)
    assert (arms.name, arms.mode, arms.violation_penalty, arms.guard_budget,
            arms.guard_periods, arms.seed) == ("q3", "bandit", 1.5, 0.3, 4, 9)
    assert arms.arms == s.policies()
    off = ArmAssigner.from_settings(Settings(experiment_mode="off", headroom=0.2))
    assert [(a.budget, a.headroom) for a in off.arms] == [(1.0, 0.2)]
