"""Per-instance statistics of reservation rules: what each rule would have cost so far.

An hourly allocation is a bet on the next period's usage. The rules that make it are simple and
cheap: the peak of the last ``k`` periods times a margin ``m`` plus an offset ``a``
(``max(peaks[-k:]) * m + a``, for ``k`` in ``LOOKBACKS``, ``m`` in ``MARGINS``, ``a`` in the
resource's ``OFFSETS``). Which rule suits an instance depends on the instance: a steady service
is served by last period's peak and a thin margin, a batch VM whose memory jumps a hundredfold
once a day needs its daily peak held all day. So every instance scores every rule,
counterfactually, on each of its windows: the slack ``max(allocation - usage, 0)`` (in the
resource's units) and whether the window exceeded it, summed with exponential forgetting per
period (``decay``).

What to reserve next is the rule that minimises ``slack + price * violations``: the Lagrangian
of "least slack at a violation budget". The price is not the instance's to set: one price per
budget, shared by every instance that has it, spends the budget where it saves the most slack
(a violation is worth more slack on a big instance than on a small one), and the fleet stage
controls it so that the violation rate those instances realise tracks their budget
(``fpstream.fleet.budget``). The instance only tells which rules could win at some price: the
lower convex hull of its rules' (violations, slack) points (``frontier``), a dozen points
rather than every rule.

Until an instance has ``warmup`` periods of history it gets a cautious rule: the peak of all
its history, doubled (``WARMUP_MARGIN``). Everything is indexed by the instance's own periods
and windows, so a replay gives the same statistics.

>>> s = RuleSelector(warmup=0, margins=(1.0, 1.1))
>>> for peak in (1.0, 1.0, 1.0):
...     s.observe_many([0.9] * 12)
...     s.close(peak)
>>> f = s.frontier()
>>> float(f.value[f.slack.argmin()]), s.choose(price=1.0)
(1.0, 1.0)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["LOOKBACKS", "MARGINS", "OFFSETS", "Frontier", "RuleGrid", "RuleSelector"]

#: Look-backs, in decision periods (hourly: an hour up to two weeks).
LOOKBACKS: tuple[int, ...] = (1, 2, 3, 6, 12, 24, 72, 168, 336)
#: Margins over the look-back's peak; below 1 for lax budgets, where a period may exceed part
#: of its reservation more often than not.
MARGINS: tuple[float, ...] = (0.8, 0.9, 1.0, 1.05, 1.1, 1.2, 1.35, 1.5, 2.0, 3.0)
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


@dataclass(frozen=True, slots=True, eq=False)
class Frontier:
    """The rules that win at some price: for each, its forgotten-weighted violated windows and
    slack so far, and its allocation for the next period; violations falling, slack rising.
    ``windows`` is the forgotten-weighted number of windows the sums cover."""

    violations: np.ndarray
    slack: np.ndarray
    value: np.ndarray
    windows: float

    def choose(self, price: float) -> float:
        """The allocation of the point minimising ``slack + price * violations``."""
        return float(self.value[int(np.argmin(self.slack + price * self.violations))])


class RuleSelector:
    """One instance's resource: its rules' forgotten-weighted slack and violations, and its
    recent period peaks (module docstring).

    Compact, since every instance holds two: sums and peaks are float32 (a stored peak rounded
    up, see ``_stored``), the rules' allocations are derived from the peaks when needed, and
    the grid is shared (``RuleGrid``).
    """

    __slots__ = ("decay", "warmup", "grid", "_slack", "_viol", "_windows", "_peaks",
                 "_periods")

    def __init__(
        self,
        decay: float = 0.99,
        warmup: int = 24,
        lookbacks: tuple[int, ...] = LOOKBACKS,
        margins: tuple[float, ...] = MARGINS,
        offsets: tuple[float, ...] = (0.0,),
    ) -> None:
        if not 0.0 < decay <= 1.0:
            raise ValueError(f"decay must be in (0, 1], got {decay!r}")
        if warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {warmup!r}")
        if not lookbacks or min(lookbacks) < 1 or not margins or min(margins) <= 0:
            raise ValueError("lookbacks must be >= 1 and margins > 0, both non-empty")
        if not offsets or min(offsets) < 0:
            raise ValueError("offsets must be >= 0 and non-empty")
        self.decay = decay
        self.warmup = warmup
        self.grid = RuleGrid.of(tuple(sorted(lookbacks)), tuple(sorted(margins)),
                                tuple(sorted(offsets)))
        self._slack = np.zeros(len(self.grid), dtype=np.float32)
        self._viol = np.zeros(len(self.grid), dtype=np.float32)
        self._windows = 0.0
        self._peaks = np.zeros(0, dtype=np.float32)  # the last periods' peaks, newest last
        self._periods = 0

    def observe_many(self, usage: np.ndarray | list[float]) -> None:
        """The windows (their peaks) of the period the current allocations are for; call
        before ``close``."""
        if not self._periods or not len(usage):
            return
        v = self.grid.values(self._peaks)[:, None]
        u = np.asarray(usage, dtype=np.float64)[None, :]
        self._slack += np.maximum(v - u, 0.0).sum(axis=1).astype(np.float32)
        self._viol += (u > v).sum(axis=1).astype(np.float32)
        self._windows += u.shape[1]

    def close(self, peak: float) -> None:
        """The period ended with ``peak``: older sums fade by ``decay``."""
        keep = self.grid.longest - 1  # the look-back of the longest rule, this period included
        self._peaks = np.append(self._peaks[max(0, len(self._peaks) - keep):] if keep else
                                self._peaks[:0], _stored(peak))
        self._periods += 1
        decay = np.float32(self.decay)
        self._slack *= decay
        self._viol *= decay
        self._windows *= self.decay

    @property
    def warm(self) -> bool:
        """Whether the instance has more than ``warmup`` periods of history."""
        return self._periods > self.warmup

    def cautious(self) -> float:
        """The warm-up rule's allocation for the next period: twice the history's peak."""
        if not self._periods:
            return 0.0
        return float(self.grid.values(self._peaks)[self.grid.warmup_rule])

    def frontier(self) -> Frontier:
        """The rules on the lower convex hull of (violations, slack): the only ones that
        minimise ``slack + price * violations`` at some price >= 0."""
        values = self.grid.values(self._peaks) if self._periods else np.zeros(len(self.grid))
        hull = _lower_hull(self._viol.astype(np.float64), self._slack.astype(np.float64))
        return Frontier(self._viol[hull], self._slack[hull], values[hull], self._windows)

    def choose(self, price: float) -> float:
        """The next period's allocation at ``price``: the warm-up rule while warming up."""
        if not self.warm:
            return self.cautious()
        return self.frontier().choose(price)

    @property
    def periods(self) -> int:
        return self._periods


def _lower_hull(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Indexes of the points on the lower convex hull that faces the origin, by x falling:
    from the least ``y`` (ties: least ``x``, then first) to the least ``x`` (ties: least
    ``y``, then first). Every argmin of ``y + p * x`` over ``p >= 0`` is one of them."""
    order = np.lexsort((np.arange(len(x)), y, x))  # by x, then y, then index
    # A point with no less slack than one before it (as many violations or fewer) is never
    # chosen: only those below the running minimum of ``y`` can be on the hull.
    ys = y[order]
    before = np.minimum.accumulate(np.concatenate(([np.inf], ys[:-1])))
    hull: list[int] = []
    for i in order[ys < before].tolist():
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            # b is above the segment a..i: no price makes it the minimum
            if (y[b] - y[a]) * (x[i] - x[a]) >= (y[i] - y[a]) * (x[b] - x[a]):
                hull.pop()
            else:
                break
        hull.append(i)
    return np.array(hull[::-1], dtype=np.int64)
