"""Per-instance choice of a reservation rule, by what each rule would have cost so far.

An hourly allocation is a bet on the next period's usage. The rules that make it are simple and
cheap: the peak of the last ``k`` periods times a margin ``m`` (``max(peaks[-k:]) * m``, for
``k`` in ``LOOKBACKS`` and ``m`` in ``MARGINS``). Which rule suits an instance depends on the
instance: a steady service is served by last period's peak and a thin margin, a batch VM whose
memory jumps a hundredfold once a day needs its daily peak held all day. So every instance
scores every rule, counterfactually, on each of its windows:

    cost(rule) = slack + violation_cost * [usage > allocation]

(slack = ``max(allocation - usage, 0)`` in the resource's units), summed with exponential
forgetting per period (``decay``), and reserves, for the next period, what the cheapest rule
says. This is the Lagrangian of "least slack at a violation budget": ``violation_cost`` is the
price, in resource units, of one violated window. It is absolute on purpose: the fleet's waste
is a sum of slack in cores or bytes, so a violation is worth more slack on a big instance than
on a small one, and the same price everywhere spends a fleet-wide violation budget where it
saves the most. A higher price gives fewer violations and more slack (``fpstream backtest
--target-viol`` finds the price for a budget).

Until an instance has ``warmup`` periods of history it gets a cautious rule: the peak of all
its history, doubled (``WARMUP_MARGIN``). Everything is indexed by the instance's own periods
and windows, so a replay gives the same choices.

>>> s = RuleSelector(violation_cost=1.0, warmup=0)
>>> for peak in (1.0, 1.0, 1.0):
...     for _ in range(12):
...         s.observe(0.9)
...     value = s.close(peak)
>>> value
1.0
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np

__all__ = ["LOOKBACKS", "MARGINS", "OFFSETS", "RuleSelector"]

#: Look-backs, in decision periods (hourly: an hour up to two weeks).
LOOKBACKS: tuple[int, ...] = (1, 2, 3, 6, 12, 24, 72, 168, 336)
#: Margins over the look-back's peak.
MARGINS: tuple[float, ...] = (1.0, 1.05, 1.1, 1.2, 1.35, 1.5, 2.0, 3.0)
#: Absolute additions per resource (cores; bytes): a small instance's spikes are cheapest to
#: cover with a fixed cushion, a big one's with a margin.
OFFSETS: dict[str, tuple[float, ...]] = {
    "cpu_cores": (0.0, 0.05, 0.25),
    "mem_bytes": (0.0, float(2**28), float(2**30)),
}
#: The margin over the history's peak while an instance warms up.
WARMUP_MARGIN = 2.0


class RuleSelector:
    """One instance's resource: the rules' running costs and its recent period peaks."""

    __slots__ = ("violation_cost", "decay", "warmup", "lookbacks", "margins", "offsets",
                 "_k", "_m", "_a",
                 "_peaks", "_values", "_cost", "_period_cost", "_periods", "_choice")

    def __init__(
        self,
        violation_cost: float,
        decay: float = 0.99,
        warmup: int = 24,
        lookbacks: tuple[int, ...] = LOOKBACKS,
        margins: tuple[float, ...] = MARGINS,
        offsets: tuple[float, ...] = (0.0,),
    ) -> None:
        if not (math.isfinite(violation_cost) and violation_cost >= 0):
            raise ValueError(f"violation_cost must be a finite number >= 0, got {violation_cost!r}")
        if not 0.0 < decay <= 1.0:
            raise ValueError(f"decay must be in (0, 1], got {decay!r}")
        if warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {warmup!r}")
        if not lookbacks or min(lookbacks) < 1 or not margins or min(margins) <= 0:
            raise ValueError("lookbacks must be >= 1 and margins > 0, both non-empty")
        if not offsets or min(offsets) < 0:
            raise ValueError("offsets must be >= 0 and non-empty")
        self.violation_cost = float(violation_cost)
        self.decay = decay
        self.warmup = warmup
        self.lookbacks = tuple(sorted(lookbacks))
        self.margins = tuple(sorted(margins))
        self.offsets = tuple(sorted(offsets))
        # Rule i: the peak of the last _k[i] periods times _m[i], plus _a[i].
        grid = [(k, m, a) for k in self.lookbacks for m in self.margins for a in self.offsets]
        self._k = np.array([k for k, _, _ in grid], dtype=np.int64)
        self._m = np.array([m for _, m, _ in grid], dtype=np.float64)
        self._a = np.array([a for _, _, a in grid], dtype=np.float64)
        self._peaks: deque[float] = deque(maxlen=self.lookbacks[-1])
        self._values: np.ndarray | None = None  # each rule's allocation for this period
        self._cost = np.zeros(len(grid))
        self._period_cost = np.zeros(len(grid))
        self._periods = 0
        # Warm-up rule: the longest look-back with the margin closest to WARMUP_MARGIN.
        k_max = self.lookbacks[-1]
        self._choice = min((i for i, (k, _, a) in enumerate(grid) if k == k_max and a == 0),
                           key=lambda i: abs(grid[i][1] - WARMUP_MARGIN))

    def observe(self, usage: float) -> None:
        """One window's usage (its peak) in the period the current allocations are for."""
        if self._values is None:
            return
        v = self._values
        self._period_cost += np.maximum(v - usage, 0.0)
        self._period_cost += self.violation_cost * (usage > v)

    def observe_many(self, usage: np.ndarray) -> None:
        """``observe`` for each of the windows ``usage``, at once."""
        if self._values is None or not len(usage):
            return
        v = self._values[:, None]
        u = np.asarray(usage, dtype=np.float64)[None, :]
        self._period_cost += np.maximum(v - u, 0.0).sum(axis=1)
        self._period_cost += self.violation_cost * (u > v).sum(axis=1)

    def close(self, peak: float) -> float:
        """The period ended with ``peak``: fold its costs in; the next period's allocation."""
        self._cost *= self.decay
        self._cost += self._period_cost
        self._period_cost[:] = 0.0
        self._peaks.append(float(peak))
        self._periods += 1
        peaks = np.fromiter(reversed(self._peaks), dtype=np.float64, count=len(self._peaks))
        running = np.maximum.accumulate(peaks)  # running[j]: max of the last j + 1 peaks
        self._values = running[np.minimum(self._k, len(running)) - 1] * self._m + self._a
        if self._periods > self.warmup:
            self._choice = int(np.argmin(self._cost))
        return float(self._values[self._choice])

    @property
    def rule(self) -> tuple[int, float, float]:
        """The rule in force: (look-back in periods, margin, offset)."""
        c = self._choice
        return int(self._k[c]), float(self._m[c]), float(self._a[c])

    @property
    def periods(self) -> int:
        return self._periods
