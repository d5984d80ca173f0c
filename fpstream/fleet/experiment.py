"""The A/B experiment's results, fleet-wide: per-arm statistics and their comparison.

Each instance's own decision periods are scored where they are decided (the instance stage,
``fpstream.fleet.arms``) and reach the fleet stage in digests: the arm, the period's waste
and violations. :class:`Experiment` sums them per arm and compares every arm with the
conservative one (the smallest budget): the difference of mean reward (arm minus
baseline) with a 95 % confidence interval from the Welch normal approximation,
``diff +- 1.96 * sqrt(var_arm / n_arm + var_base / n_base)`` (sample variances, ``None`` until
both arms have two periods). A period's reward is ``-waste - violation_penalty * violations /
steps``, in ``[-1 - violation_penalty, 0]``.

>>> from fpstream.digest import Outcome
>>> from fpstream.fleet.arms import ArmAssigner
>>> from fpstream.policy import Policy
>>> ex = Experiment(ArmAssigner("demo", [Policy("safe", 0.99, 0.25), Policy("lean", 0.9, 0.05)]))
>>> ex.assigned("lean")
>>> round(ex.record(Outcome("lean", waste=0.3, violations=1, steps=12)), 4)
-0.4667
>>> ex.summary()["arms"]["lean"]["periods"]
1
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from river import stats

from fpstream.digest import Outcome
from fpstream.fleet.arms import ArmAssigner

__all__ = ["Experiment", "ExperimentSnapshot"]

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


def _opt(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


class Experiment:
    """Per-arm results of the instances' own decision periods (module docstring)."""

    def __init__(self, assigner: ArmAssigner) -> None:
        self.assigner = assigner
        self.name = assigner.name
        self.mode = assigner.mode
        self.arms = assigner.arms
        self.conservative = assigner.conservative
        self.violation_penalty = assigner.violation_penalty
        self.guard_budget = assigner.guard_budget
        self.guard_periods = assigner.guard_periods
        self._stats = {a.name: _ArmStats() for a in self.arms}
        self.guard_moves = 0
        self.guarded: set[tuple[str, str]] = set()
        self.bandit_apps: set[str] = set()

    def assigned(self, arm: str) -> None:
        """An instance's next period runs on ``arm``."""
        self._stats[self.assigner.arm(arm).name].assignments += 1

    def record(self, outcome: Outcome) -> float:
        """A period run on ``outcome.arm`` closed; returns its reward."""
        s = self._stats[self.assigner.arm(outcome.arm).name]
        if not (math.isfinite(outcome.waste) and 0.0 <= outcome.waste <= 1.0):
            raise ValueError(f"waste must be in [0, 1], got {outcome.waste!r}")
        if outcome.steps < 1 or not 0 <= outcome.violations <= outcome.steps:
            raise ValueError(f"violations must be in [0, steps], steps >= 1, got "
                             f"{outcome.violations!r} of {outcome.steps!r}")
        reward = self.assigner.reward(outcome)
        s.periods += 1
        s.violations += outcome.violations
        s.steps += outcome.steps
        s.waste.update(outcome.waste)
        s.viol.update(outcome.violations / outcome.steps)
        s.reward.update(reward)
        return reward

    def pinned(self, app: str, instance: str, pinned: bool, moved: bool) -> None:
        """The guard rail's state of an instance, as its latest digest says."""
        if moved:
            self.guard_moves += 1
        if pinned:
            self.guarded.add((app, instance))
        else:
            self.guarded.discard((app, instance))
        if self.mode == "bandit":
            self.bandit_apps.add(app)

    def forget(self, app: str, instance: str) -> None:
        self.guarded.discard((app, instance))

    # -- reporting ----------------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        """Per-arm results and differences against the conservative arm; JSON-serialisable.

        ``arms[name]``: ``budget``, ``headroom``, ``families``, ``assignments``, ``share`` (of
        assignments), ``periods``, ``steps``, ``violations`` (windows), ``waste`` (mean per
        period), ``viol`` (mean per-period violation rate), ``reward`` (mean), ``reward_sd``,
        ``reward_ci95`` (``[lo, hi]`` of the mean). ``differences[name]`` for each non-baseline
        arm: ``diff`` (mean reward of the arm minus the baseline's), ``ci95`` and
        ``significant`` (the interval excludes 0). Undefined values are ``None``.
        """
        total = sum(s.assignments for s in self._stats.values())
        arms: dict[str, Any] = {}
        for a in self.arms:
            s = self._stats[a.name]
            mean, var = s.reward_mean, s.reward_var
            mean_ci: list[float] | None = None
            if mean is not None and var is not None:
                half = Z95 * math.sqrt(var / s.periods)
                mean_ci = [mean - half, mean + half]
            arms[a.name] = {
                "budget": a.budget, "headroom": a.headroom,
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
        base_name = self.conservative.name
        base = self._stats[base_name]
        differences: dict[str, Any] = {}
        for a in self.arms:
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
            "guarded": len(self.guarded),
            "bandit_apps": len(self.bandit_apps),
        }

    def snapshot(self, ts: float) -> ExperimentSnapshot:
        """The summary as a flow output at event time ``ts``."""
        return ExperimentSnapshot(ts=float(ts), name=self.name, summary=self.summary())
