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
from typing import Any

import numpy as np

__all__ = ["LOOKBACKS", "MARGINS", "OFFSETS", "RuleGrid", "RuleSelector"]

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


class RuleGrid:
    """The rules: every (look-back, margin, offset), shared by every selector that uses the
    same ones. It pickles as its arguments, so an instance's snapshot does not carry it."""

    _cache: dict[tuple[tuple[int, ...], tuple[float, ...], tuple[float, ...]], RuleGrid] = {}

    def __init__(self, lookbacks: tuple[int, ...], margins: tuple[float, ...],
                 offsets: tuple[float, ...]) -> None:
        grid = [(k, m, a) for k in lookbacks for m in margins for a in offsets]
        self.args = (lookbacks, margins, offsets)
        # Rule i: the peak of the last k[i] periods times m[i], plus a[i].
        self.k = np.array([k for k, _, _ in grid], dtype=np.int64)
        self.m = np.array([m for _, m, _ in grid], dtype=np.float64)
        self.a = np.array([a for _, _, a in grid], dtype=np.float64)
        self.longest = lookbacks[-1]
        # Warm-up rule: the longest look-back with the margin closest to WARMUP_MARGIN.
        self.warmup_rule = min((i for i, (k, _, a) in enumerate(grid)
                                if k == self.longest and a == 0),
                               key=lambda i: abs(grid[i][1] - WARMUP_MARGIN))

    @classmethod
    def of(cls, lookbacks: tuple[int, ...], margins: tuple[float, ...],
           offsets: tuple[float, ...]) -> RuleGrid:
        key = (lookbacks, margins, offsets)
        grid = cls._cache.get(key)
        if grid is None:
            grid = cls._cache[key] = cls(*key)
        return grid

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return RuleGrid.of, self.args

    def __len__(self) -> int:
        return len(self.k)

    def values(self, peaks: np.ndarray) -> np.ndarray:
        """Each rule's allocation given the period peaks so far, newest last."""
        running = np.maximum.accumulate(peaks[::-1].astype(np.float64))
        return running[np.minimum(self.k, len(running)) - 1] * self.m + self.a


def _stored(x: float) -> np.float32:
    """``x`` as the float32 at or just above it: a peak stored is never below the peak, so a
    later window of exactly that usage never counts as exceeding a rule built on it."""
    y = np.float32(x)
    return y if float(y) >= x else np.nextafter(y, np.float32(np.inf))


class RuleSelector:
    """One instance's resource: the rules' running costs and its recent period peaks.

    Compact, since every instance holds two: costs and peaks are float32 (a stored peak
    rounded up, see ``_stored``), the rules' allocations are derived from the peaks when
    needed, and the grid is shared (``RuleGrid``).
    """

    __slots__ = ("violation_cost", "decay", "warmup", "grid", "_cost", "_peaks", "_periods",
                 "_choice")

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
        self.grid = RuleGrid.of(tuple(sorted(lookbacks)), tuple(sorted(margins)),
                                tuple(sorted(offsets)))
        self._cost = np.zeros(len(self.grid), dtype=np.float32)
        self._peaks = np.zeros(0, dtype=np.float32)  # the last periods' peaks, newest last
        self._periods = 0
        self._choice = self.grid.warmup_rule

    def observe(self, usage: float) -> None:
        """One window's usage (its peak) in the period the current allocations are for."""
        self.observe_many(np.array([usage], dtype=np.float64))

    def observe_many(self, usage: np.ndarray) -> None:
        """``observe`` for each of the windows ``usage``, at once (before ``close``)."""
        if not self._periods or not len(usage):
            return
        v = self.grid.values(self._peaks)[:, None]
        u = np.asarray(usage, dtype=np.float64)[None, :]
        cost = np.maximum(v - u, 0.0).sum(axis=1)
        cost += self.violation_cost * (u > v).sum(axis=1)
        self._cost += cost.astype(np.float32)

    def close(self, peak: float) -> float:
        """The period ended with ``peak``: the next period's allocation. The costs of the
        period's windows (``observe_many``) are already in; older ones fade by ``decay``."""
        keep = self.grid.longest - 1  # the look-back of the longest rule, this period included
        self._peaks = np.append(self._peaks[max(0, len(self._peaks) - keep):] if keep else
                                self._peaks[:0], _stored(peak))
        self._periods += 1
        values = self.grid.values(self._peaks)
        if self._periods > self.warmup:
            self._choice = int(np.argmin(self._cost))
        self._cost *= np.float32(self.decay)
        return float(values[self._choice])

    @property
    def rule(self) -> tuple[int, float, float]:
        """The rule in force: (look-back in periods, margin, offset)."""
        c, g = self._choice, self.grid
        return int(g.k[c]), float(g.m[c]), float(g.a[c])

    @property
    def periods(self) -> int:
        return self._periods
