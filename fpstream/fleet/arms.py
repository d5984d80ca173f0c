"""A/B arms: which arm decides each period of an instance, and a guard rail.

An arm is a :class:`~fpstream.policy.Policy`: a multiple of the configured violation budget
and a headroom. Every decision period of an instance runs under one arm, chosen when the
period before it closes:

``split``   a stable hash: SHA-256 of ``"<experiment name>:<app>/<instance>"`` (hashlib, never
            Python's salted ``hash()``), first 8 bytes modulo the number of arms. The same
            instance gets the same arm in every process, run and replay.
``bandit``  a River :class:`~river.bandit.ThompsonSampling` bandit with
            :class:`~river.proba.Beta` posteriors per group of instances (the fleet stage uses
            one per cluster), learning from the group's periods (the Bernoulli trick below),
            seeded from SHA-256 of ``"<seed>/<group>"``. Until every arm has ``burn_in``
            periods, the next arm in arm order that still lacks them.
``off``     the first arm.

A period's reward is ``-waste - violation_penalty * violations / steps`` (``fpstream.scoring``
over its windows). The bandit learns a Bernoulli draw of success probability
``min(max(1 + reward, 0), 1)`` (Agrawal & Goyal 2012), from a ``random.Random`` per app seeded
from SHA-256 of ``"<seed>/<group>/bernoulli"``: deterministic and picklable.

Guard rail: the **conservative arm** has the smallest budget (ties: the largest headroom, then
the earliest).
When an instance's violation rate over its last ``guard_periods`` periods exceeds
``guard_budget``, it is pinned to the conservative arm from its next period on, whatever the
mode; the bandit does not learn from pinned periods.

The configuration is an :class:`ArmAssigner`; what a group's bandit learns lives in an
:class:`GroupArms`, what each instance's guard remembers in its :class:`InstanceArms`.

>>> from fpstream.policy import Policy
>>> arms = ArmAssigner("demo", [Policy("safe", budget=0.5), Policy("lean", budget=2.0)])
>>> group, inst = GroupArms(), InstanceArms()
>>> arms.choose(group, inst, "cluster-3", "web", "w-1").name
'safe'
"""

from __future__ import annotations

import hashlib
import math
import random
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal, get_args

from river import bandit, proba

from fpstream.digest import Outcome
from fpstream.policy import Policy

if TYPE_CHECKING:
    from fpstream.settings import Settings

__all__ = ["MODES", "GroupArms", "ArmAssigner", "InstanceArms", "Mode", "digest_int"]

Mode = Literal["split", "bandit", "off"]
MODES: tuple[str, ...] = get_args(Mode)


def digest_int(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


class InstanceArms:
    """One instance's guard-rail memory: its last periods' (violations, steps), and its pin."""

    __slots__ = ("history", "pinned")

    def __init__(self) -> None:
        self.history: deque[tuple[int, int]] = deque()
        self.pinned = False


class GroupArms:
    """What the bandit of one group of instances has learned (mode ``bandit`` only)."""

    __slots__ = ("bandit", "coin", "turn")

    def __init__(self) -> None:
        self.bandit: bandit.ThompsonSampling | None = None
        self.coin: random.Random | None = None
        self.turn = 0


class ArmAssigner:
    """The experiment's arms and how instances are assigned to them (module docstring)."""

    def __init__(
        self,
        name: str = "default",
        arms: Sequence[Policy] = (Policy(),),
        mode: Mode | str = "split",
        seed: int = 42,
        violation_penalty: float = 2.0,
        guard_budget: float = 0.2,
        guard_periods: int = 6,
        burn_in: int = 2,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"experiment name must be a non-empty string, got {name!r}")
        arms = tuple(arms)
        if not arms:
            raise ValueError("an experiment needs at least one arm")
        if not all(isinstance(a, Policy) for a in arms):
            raise ValueError(f"arms must be Policy objects, got {arms!r}")
        names = [a.name for a in arms]
        if len(set(names)) != len(names):
            raise ValueError(f"arm names must be unique, got {names}")
        if mode not in MODES:
            raise ValueError(f"experiment mode must be one of {list(MODES)}, got {mode!r}")
        if not (math.isfinite(violation_penalty) and violation_penalty >= 0):
            raise ValueError(f"violation_penalty must be a finite number >= 0, "
                             f"got {violation_penalty!r}")
        if not 0.0 <= guard_budget <= 1.0:
            raise ValueError(f"guard_budget must be in [0, 1], got {guard_budget!r}")
        if int(guard_periods) != guard_periods or guard_periods < 1:
            raise ValueError(f"guard_periods must be an integer >= 1, got {guard_periods!r}")
        if int(burn_in) != burn_in or burn_in < 0:
            raise ValueError(f"burn_in must be an integer >= 0, got {burn_in!r}")
        self.name = name
        self.mode: str = mode
        self.seed = int(seed)
        self.violation_penalty = float(violation_penalty)
        self.guard_budget = float(guard_budget)
        self.guard_periods = int(guard_periods)
        self.burn_in = int(burn_in)
        self.arms: tuple[Policy, ...] = arms
        self.names = names
        self._by_name = {a.name: a for a in arms}
        # min() keeps the first of equal keys, so ties go to the earliest arm.
        self.conservative = min(arms, key=lambda a: (a.budget, -a.headroom))

    @classmethod
    def from_settings(cls, settings: Settings) -> ArmAssigner:
        """The configured arms; with mode ``off``, the configured budget itself with the
        settings' ``headroom`` is the only arm."""
        arms = settings.policies()
        if settings.experiment_mode == "off":
            arms = (Policy(headroom=settings.headroom),)
        return cls(name=settings.experiment_name, arms=arms, mode=settings.experiment_mode,
                   seed=settings.seed, violation_penalty=settings.violation_penalty,
                   guard_budget=settings.guard_budget, guard_periods=settings.guard_periods)

    def arm(self, name: str) -> Policy:
        try:
            return self._by_name[name]
        except KeyError:
            raise ValueError(f"experiment {self.name!r} has no arm {name!r}, "
                             f"expected one of {self.names}") from None

    def reward(self, outcome: Outcome) -> float:
        """``-waste - violation_penalty * violations / steps`` of one period."""
        return -outcome.waste - self.violation_penalty * outcome.violations / outcome.steps

    # -- assignment ---------------------------------------------------------------------------

    def choose(self, group: GroupArms, inst: InstanceArms, key: str, app: str,
               instance: str) -> Policy:
        """The arm of the instance's next period (call once per period); ``group`` is the
        bandit state of the instance's group, named ``key``."""
        if inst.pinned:
            return self.conservative
        if self.mode == "off":
            return self.arms[0]
        if self.mode == "bandit":
            return self._by_name[self._pull(group, key)]
        return self.peek(app, instance)

    def peek(self, app: str, instance: str) -> Policy:
        """The ``split`` hash's arm (the first in mode ``off``), drawing nothing: for an answer
        that must not change what the bandit learns, such as a proactive allocation."""
        if self.mode == "off":
            return self.arms[0]
        return self.arms[digest_int(f"{self.name}:{app}/{instance}") % len(self.arms)]

    def _pull(self, app_arms: GroupArms, key: str) -> str:
        policy = self._bandit(app_arms, key)
        names = self.names
        lacking = [policy._counts[n] < self.burn_in for n in names]
        if not any(lacking):
            return str(policy.pull(list(names)))
        # Burn-in: the next arm (in arm order, cyclically) that still lacks periods.
        for step in range(len(names)):
            i = (app_arms.turn + step) % len(names)
            if lacking[i]:
                app_arms.turn = (i + 1) % len(names)
                return names[i]
        raise AssertionError("unreachable: some arm lacks periods")

    def _bandit(self, app_arms: GroupArms, key: str) -> bandit.ThompsonSampling:
        if app_arms.bandit is None:
            app_arms.bandit = bandit.ThompsonSampling(
                reward_obj=proba.Beta(), seed=digest_int(f"{self.seed}/{key}"))
            app_arms.coin = random.Random(digest_int(f"{self.seed}/{key}/bernoulli"))
        return app_arms.bandit

    # -- outcomes -----------------------------------------------------------------------------

    def learn(self, group: GroupArms, inst: InstanceArms, key: str, outcome: Outcome) -> bool:
        """The instance's period ran on ``outcome.arm``: its group's bandit (unless the
        instance is pinned) and the guard rail learn. True if the guard rail pins the instance
        now, moving it off another arm."""
        self.arm(outcome.arm)  # an unknown arm raises a descriptive ValueError
        app_arms = group
        if self.mode == "bandit" and not inst.pinned:
            policy = self._bandit(app_arms, key)
            assert app_arms.coin is not None
            x = min(max(1.0 + self.reward(outcome), 0.0), 1.0)
            policy.update(outcome.arm, app_arms.coin.random() < x)
        inst.history.append((outcome.violations, outcome.steps))
        while len(inst.history) > self.guard_periods:
            inst.history.popleft()
        if inst.pinned:
            return False
        recent = sum(v for v, _ in inst.history) / sum(s for _, s in inst.history)
        if recent > self.guard_budget:
            inst.pinned = True
            return outcome.arm != self.conservative.name
        return False
