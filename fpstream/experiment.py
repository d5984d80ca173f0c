"""A/B testing of allocation policies: arms, assignment, rewards, a guard rail and a summary.

An arm is a :class:`~fpstream.policy.Policy` (name, target quantile, headroom, instance-family
preference). :class:`Experiment` assigns every instance (``app/instance``) to an arm for one
decision period, learns from the outcome of each closed period and summarises per-arm results.

Modes
    ``split``   the arm is chosen by a stable hash: SHA-256 of
                ``"<experiment name>:<app>/<instance>"`` (hashlib, never Python's salted
                ``hash()``), first 8 bytes modulo the number of arms. The same instance
                gets the same arm in every process, run and replay; the experiment
                name salts the hash so a new experiment reshuffles the fleet.
    ``bandit``  one River :class:`~river.bandit.ThompsonSampling` bandit with
                :class:`~river.proba.Beta` posteriors per cluster (Bernoulli trick, below),
                seeded from SHA-256 of ``"<seed>/<cluster>"``, so a replay makes the same
                choices. Until every arm of a cluster has ``burn_in`` recorded periods, the
                cluster is in burn-in: each assignment goes to the next arm, round-robin in
                arm order, among the arms that still lack periods, so every arm gets its
                burn-in periods even in a cluster of one or two instances (a hash split could
                leave an arm without any instance, and the bandit would never start).
    ``off``     no experiment: every instance gets the first arm (stats are still kept, and the
                guard rail still applies).

An instance keeps its arm for a decision period: the first :meth:`Experiment.assign` after the
previous :meth:`Experiment.record` for that instance chooses (and counts one assignment), later
calls in the same period return the same arm.

Reward of a closed period (:meth:`Experiment.record`)::

    waste  = sum(max(A - u, 0)) / sum(A)     over the period's windows (see ``score_period``)
    reward = -waste - violation_penalty * violations / steps

where ``violations`` is the number of windows with ``u > A`` and ``steps`` the number of windows
in the period. Both terms are in [0, 1] (times the penalty), so a reward is in
``[-1 - violation_penalty, 0]``. The statistics and the summary report rewards in these units.

Bandit update (Bernoulli trick, Agrawal & Goyal 2012, "Analysis of Thompson Sampling for the
Multi-armed Bandit Problem"): the reward is mapped to [0, 1] by::

    x = min(max(1 + reward, 0), 1) = max(1 - waste - violation_penalty * violations / steps, 0)

(1 for a period without waste or violations, 0 for one whose waste plus penalised violation
rate reaches 1), and the arm's Beta posterior (River :class:`~river.proba.Beta`, prior
Beta(1, 1)) is updated with one Bernoulli draw of success probability ``x``. The Beta then is
the posterior of the arm's *mean* ``x`` and narrows as periods accumulate, so Thompson sampling
concentrates on the better arm (a Gaussian fitted to the rewards themselves keeps sampling from
their spread, so the better arm's share settles near P(one reward beats another)). The map is
monotone; it only merges periods at least that bad (waste + penalised rate >= 1, e.g. half the
windows violated at the default penalty 2), which the guard rail handles anyway. It is not
``1 + reward / (1 + violation_penalty)``, which covers the full reward range but divides the
differences between realistic periods by ``1 + violation_penalty``, so the Bernoulli draws'
noise would swamp them for that much longer. The draws come from a ``random.Random`` per
cluster seeded from SHA-256 of ``"<seed>/<cluster>/bernoulli"``: deterministic and picklable.

Guard rail: the **conservative arm** is the arm with the largest ``quantile + headroom`` (ties:
the earliest in the list). When an instance's violation rate over its last ``guard_periods``
recorded periods (sum of violations / sum of steps) exceeds ``guard_budget``, the instance is
pinned to the conservative arm from its next assignment on, whatever the mode, until
:meth:`Experiment.forget`. ``guard_moves`` counts instances moved off another arm this way (an
instance already on the conservative arm is pinned but not counted). Periods of pinned instances
count in the per-arm statistics of the arm they ran on, but do not update the bandit, since the
bandit did not choose them.

The conservative arm is also the baseline of the comparison: :meth:`Experiment.summary` gives,
for every other arm, the difference of mean reward (arm minus baseline) with a 95 % confidence
interval from the Welch normal approximation,
``diff +- 1.96 * sqrt(var_arm / n_arm + var_base / n_base)`` (sample variances, ``None`` until
both arms have two periods).

Deterministic: no wall clock, no global random state; the object pickles (Bytewax snapshots) and
continues identically after a restore.

>>> from fpstream.policy import Policy
>>> ex = Experiment("demo", [Policy("safe", 0.99, 0.25), Policy("lean", 0.9, 0.05)])
>>> arm = ex.assign("web", "w-1", 0)
>>> arm is ex.assign("web", "w-1", 0)
True
>>> round(ex.record("web", "w-1", 0, arm.name, waste=0.3, violations=1, steps=12), 4)
-0.4667
"""

from __future__ import annotations

import hashlib
import math
import random
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, get_args

from river import bandit, proba, stats

from fpstream.policy import Policy
from fpstream.settings import DEFAULT_ARMS

if TYPE_CHECKING:
    from fpstream.settings import Settings

__all__ = ["MODES", "Experiment", "ExperimentSnapshot", "Mode", "score_period"]

Mode = Literal["split", "bandit", "off"]
MODES: tuple[str, ...] = get_args(Mode)
Z95 = 1.959963984540054


@dataclass(frozen=True, slots=True)
class ExperimentSnapshot:
    """An output of the flow: the experiment's :meth:`Experiment.summary` at event time ``ts``.

    The Redis sink keeps the newest one per experiment under ``<prefix>:experiment:<name>``.
    """

    ts: float
    name: str
    summary: dict[str, Any]

    def __post_init__(self) -> None:
        if not math.isfinite(self.ts):
            raise ValueError(f"experiment snapshot ts must be finite, got {self.ts!r}")


def score_period(allocated: Sequence[float], used: Sequence[float]) -> tuple[float, int, int]:
    """``(waste, violations, steps)`` of one period from its windows' allocation and use.

    ``waste = sum(max(A - u, 0)) / sum(A)`` (0 when nothing was allocated), ``violations`` the
    windows with ``u > A``, ``steps`` the number of windows.

    >>> score_period([2.0, 2.0, 2.0], [1.0, 2.0, 3.0])
    (0.16666666666666666, 1, 3)
    """
    if len(allocated) != len(used):
        raise ValueError(f"allocated and used differ in length: {len(allocated)} != {len(used)}")
    total = sum(allocated)
    slack = sum(max(a - u, 0.0) for a, u in zip(allocated, used, strict=True))
    violations = sum(1 for a, u in zip(allocated, used, strict=True) if u > a)
    return (slack / total if total > 0 else 0.0), violations, len(allocated)


class _ArmStats:
    """Running statistics of one arm over its recorded periods."""

    __slots__ = ("assignments", "periods", "reward", "steps", "viol", "violations", "waste")

    def __init__(self) -> None:
        self.assignments = 0
        self.periods = 0
        self.violations = 0
        self.steps = 0
        self.waste = stats.Mean()
        self.viol = stats.Mean()  # per-period violation rate
        self.reward = stats.Var(ddof=1)  # .mean is the mean reward

    @property
    def reward_mean(self) -> float | None:
        return self.reward.mean.get() if self.periods else None

    @property
    def reward_var(self) -> float | None:
        return self.reward.get() if self.periods >= 2 else None


def _digest_int(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def _opt(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


class Experiment:
    """Assigns instances to arms and compares the arms; see the module docstring."""

    def __init__(
        self,
        name: str = "default",
        arms: Sequence[Policy] = DEFAULT_ARMS,
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
        self._arms: tuple[Policy, ...] = arms
        self._by_name = {a.name: a for a in arms}
        self._names = names
        # max() keeps the first of equal keys, so ties go to the earliest arm.
        self._conservative = max(arms, key=lambda a: a.quantile + a.headroom)
        self._stats = {n: _ArmStats() for n in names}
        self._bandits: dict[str, bandit.ThompsonSampling] = {}
        self._coins: dict[str, random.Random] = {}  # cluster -> Bernoulli-trick draws
        self._turns: dict[str, int] = {}  # cluster -> burn-in round-robin position
        self._open: dict[str, str] = {}  # instance -> arm of its open decision period
        self._history: dict[str, deque[tuple[int, int]]] = {}  # instance -> (violations, steps)
        self._guarded: set[str] = set()
        self.guard_moves = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> Experiment:
        return cls(
            name=settings.experiment_name, arms=settings.policies(),
            mode=settings.experiment_mode, seed=settings.seed,
            violation_penalty=settings.violation_penalty, guard_budget=settings.guard_budget,
            guard_periods=settings.guard_periods)

    # -- arms ---------------------------------------------------------------------------------

    @property
    def arms(self) -> tuple[Policy, ...]:
        return self._arms

    @property
    def conservative(self) -> Policy:
        """The guard rail's arm and the comparison baseline: largest ``quantile + headroom``."""
        return self._conservative

    def arm(self, name: str) -> Policy:
        try:
            return self._by_name[name]
        except KeyError:
            raise ValueError(f"experiment {self.name!r} has no arm {name!r}, "
                             f"expected one of {self._names}") from None

    def is_guarded(self, app: str, instance: str) -> bool:
        return f"{app}/{instance}" in self._guarded

    # -- assignment ---------------------------------------------------------------------------

    def assign(self, app: str, instance: str, cluster: int | str | None) -> Policy:
        """The arm of the instance's current decision period (chosen on the first call)."""
        key = f"{app}/{instance}"
        chosen = self._open.get(key)
        if chosen is None:
            chosen = self._choose(key, cluster)
            self._open[key] = chosen
            self._stats[chosen].assignments += 1
        return self._by_name[chosen]

    def peek(self, app: str, instance: str) -> Policy:
        """The instance's arm without choosing or counting anything: the arm of its open
        period if it has one, else the conservative arm if pinned, the first arm in mode
        ``off``, otherwise the ``split`` hash's arm (never the bandit's, whose draw would
        depend on when this is asked). For answers that must not change the experiment, such
        as a proactive allocation made on arrival rather than in event-time order."""
        key = f"{app}/{instance}"
        chosen = self._open.get(key)
        if chosen is None:
            if key in self._guarded:
                chosen = self._conservative.name
            elif self.mode == "off":
                chosen = self._names[0]
            else:
                chosen = self._split(key)
        return self._by_name[chosen]

    def _choose(self, key: str, cluster: int | str | None) -> str:
        if key in self._guarded:
            return self._conservative.name
        if self.mode == "off":
            return self._names[0]
        if self.mode == "bandit":
            policy = self._bandit(cluster)
            names = self._names
            lacking = [policy._counts[n] < self.burn_in for n in names]
            if not any(lacking):
                return str(policy.pull(list(names)))
            # Burn-in: the next arm (in arm order, cyclically) that still lacks periods.
            cid = str(cluster)
            turn = self._turns.get(cid, 0)
            for step in range(len(names)):
                i = (turn + step) % len(names)
                if lacking[i]:
                    self._turns[cid] = (i + 1) % len(names)
                    return names[i]
        return self._split(key)

    def _split(self, key: str) -> str:
        return self._names[_digest_int(f"{self.name}:{key}") % len(self._names)]

    def _bandit(self, cluster: int | str | None) -> bandit.ThompsonSampling:
        cid = str(cluster)
        policy = self._bandits.get(cid)
        if policy is None:
            policy = bandit.ThompsonSampling(
                reward_obj=proba.Beta(), seed=_digest_int(f"{self.seed}/{cid}"))
            self._bandits[cid] = policy
        return policy

    def _coin(self, cluster: int | str | None) -> random.Random:
        cid = str(cluster)
        coin = self._coins.get(cid)
        if coin is None:
            coin = self._coins[cid] = random.Random(_digest_int(f"{self.seed}/{cid}/bernoulli"))
        return coin

    @staticmethod
    def normalised(reward: float) -> float:
        """A reward mapped to [0, 1] for the bandit's Bernoulli draw: ``1 + reward``, clipped
        (see the module docstring)."""
        return min(max(1.0 + reward, 0.0), 1.0)

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Snapshots taken before the Beta bandits: drop their Gaussian bandits (they learned
        # rewards in other units); the clusters go through burn-in again.
        if "_coins" not in state:
            state["_bandits"] = {}
            state["_coins"] = {}
            state["_turns"] = {}
        self.__dict__.update(state)

    # -- outcomes -----------------------------------------------------------------------------

    def record(
        self,
        app: str,
        instance: str,
        cluster: int | str | None,
        arm_name: str,
        waste: float,
        violations: int,
        steps: int,
    ) -> float:
        """Close the instance's decision period run on ``arm_name``; returns its reward.

        ``waste`` in [0, 1] and ``violations`` (windows with u > A) out of ``steps`` windows, as
        :func:`score_period` computes them. Updates the arm's statistics, the bandit of
        ``cluster`` (mode ``bandit``, unless the instance was pinned by the guard rail) and the
        guard rail. The next :meth:`assign` of the instance chooses again.
        """
        self.arm(arm_name)  # an unknown arm raises a descriptive ValueError
        stats_ = self._stats[arm_name]
        if not (math.isfinite(waste) and 0.0 <= waste <= 1.0):
            raise ValueError(f"waste must be in [0, 1], got {waste!r}")
        if int(steps) != steps or steps < 1:
            raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
        if int(violations) != violations or not 0 <= violations <= steps:
            raise ValueError(f"violations must be an integer in [0, steps={steps}], "
                             f"got {violations!r}")
        violations, steps = int(violations), int(steps)
        rate = violations / steps
        reward = -float(waste) - self.violation_penalty * rate

        stats_.periods += 1
        stats_.violations += violations
        stats_.steps += steps
        stats_.waste.update(float(waste))
        stats_.viol.update(rate)
        stats_.reward.update(reward)

        key = f"{app}/{instance}"
        pinned = key in self._guarded
        if self.mode == "bandit" and not pinned:
            # Bernoulli trick: one success/failure draw with probability the normalised reward.
            success = self._coin(cluster).random() < self.normalised(reward)
            self._bandit(cluster).update(arm_name, success)

        history = self._history.get(key)
        if history is None:
            history = self._history[key] = deque(maxlen=self.guard_periods)
        history.append((violations, steps))
        if not pinned:
            recent = sum(v for v, _ in history) / sum(s for _, s in history)
            if recent > self.guard_budget:
                self._guarded.add(key)
                if arm_name != self._conservative.name:
                    self.guard_moves += 1
        self._open.pop(key, None)
        return reward

    def forget(self, app: str, instance: str) -> None:
        """Drop an expired instance's state (open period, guard history, pin)."""
        key = f"{app}/{instance}"
        self._open.pop(key, None)
        self._history.pop(key, None)
        self._guarded.discard(key)

    # -- reporting ----------------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        """Per-arm results and differences against the conservative arm; JSON-serialisable.

        ``arms[name]``: ``quantile``, ``headroom``, ``families``, ``assignments``, ``share`` (of
        assignments), ``periods``, ``steps``, ``violations`` (windows), ``waste`` (mean per
        period), ``viol`` (mean per-period violation rate), ``reward`` (mean), ``reward_sd``,
        ``reward_ci95`` (``[lo, hi]`` of the mean). ``differences[name]`` for each non-baseline
        arm: ``diff`` (mean reward of the arm minus the baseline's), ``ci95`` and
        ``significant`` (the interval excludes 0). Undefined values are ``None``.
        """
        total = sum(s.assignments for s in self._stats.values())
        arms: dict[str, Any] = {}
        for a in self._arms:
            s = self._stats[a.name]
            mean, var = s.reward_mean, s.reward_var
            mean_ci: list[float] | None = None
            if mean is not None and var is not None:
                half = Z95 * math.sqrt(var / s.periods)
                mean_ci = [mean - half, mean + half]
            arms[a.name] = {
                "quantile": a.quantile, "headroom": a.headroom,
                "families": list(a.families) if a.families is not None else None,
                "assignments": s.assignments,
                "share": s.assignments / total if total else None,
                "periods": s.periods, "steps": s.steps, "violations": s.violations,
                "waste": _opt(s.waste.get()) if s.periods else None,
                "viol": _opt(s.viol.get()) if s.periods else None,
                "reward": _opt(mean),
                "reward_sd": _opt(math.sqrt(var)) if var is not None else None,
                "reward_ci95": mean_ci,
            }
        base_name = self._conservative.name
        base = self._stats[base_name]
        differences: dict[str, Any] = {}
        for a in self._arms:
            if a.name == base_name:
                continue
            s = self._stats[a.name]
            diff: float | None = None
            ci: list[float] | None = None
            significant: bool | None = None
            if s.periods and base.periods:
                diff = s.reward.mean.get() - base.reward.mean.get()
                va, vb = s.reward_var, base.reward_var
                if va is not None and vb is not None:
                    half = Z95 * math.sqrt(va / s.periods + vb / base.periods)
                    ci = [diff - half, diff + half]
                    significant = not ci[0] <= 0.0 <= ci[1]
            differences[a.name] = {"vs": base_name, "diff": _opt(diff), "ci95": ci,
                                   "significant": significant}
        return {
            "name": self.name,
            "mode": self.mode,
            "baseline": base_name,
            "violation_penalty": self.violation_penalty,
            "guard_budget": self.guard_budget,
            "guard_periods": self.guard_periods,
            "assignments": total,
            "periods": sum(s.periods for s in self._stats.values()),
            "arms": arms,
            "differences": differences,
            "guard_moves": self.guard_moves,
            "guarded": len(self._guarded),
            "bandit_clusters": len(self._bandits),
        }

    def snapshot(self, ts: float) -> ExperimentSnapshot:
        """The summary as a flow output at event time ``ts``."""
        return ExperimentSnapshot(ts=float(ts), name=self.name, summary=self.summary())
