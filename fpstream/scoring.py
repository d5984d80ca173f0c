"""The evaluation protocol of DESIGN.md: waste, violations and shortfall of an allocation.

One object scores everything fpstream judges an allocation by: the backtest's methods, an A/B
arm's decision periods, a proactive allocation's first hour, the tuning of baselines. Over all
the steps (windows) a ``Score`` has seen, ``A`` the allocation in force and ``u`` the usage:

- ``waste`` = sum(max(A - u, 0)) / sum(A): relative slack, time-weighted;
- ``viol``  = share of steps with u > A;
- ``short`` = sum(max(u - A, 0)) / sum(u).

>>> s = Score()
>>> s.add([2.0, 2.0, 2.0, 2.0], [1.0, 2.0, 3.0, 0.0])
>>> s.get()
{'waste': 0.375, 'viol': 0.25, 'short': 0.1667}
>>> s.add(2.0, [2.5])  # one allocation held over several steps
>>> s.violations, s.steps
(2, 5)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["Score", "in_force"]

_FIELDS = ("slack", "allocated", "shortfall", "used", "violations", "steps")


class Score:
    """Running sums of one allocation rule's steps; mergeable with ``+=``, picklable."""

    __slots__ = _FIELDS

    def __init__(self) -> None:
        self.slack = 0.0
        self.allocated = 0.0
        self.shortfall = 0.0
        self.used = 0.0
        self.violations = 0
        self.steps = 0

    def add(self, allocation: float | Sequence[float] | np.ndarray,
            usage: float | Sequence[float] | np.ndarray) -> None:
        """Steps with ``usage`` under ``allocation`` (arrays of one shape, or one allocation
        held over every step of ``usage``)."""
        u = np.asarray(usage, dtype=np.float64).reshape(-1)
        a = np.broadcast_to(np.asarray(allocation, dtype=np.float64), u.shape) if np.ndim(
            allocation) == 0 else np.asarray(allocation, dtype=np.float64).reshape(-1)
        if a.shape != u.shape:
            raise ValueError(f"allocation and usage must have one shape, got {a.shape}, {u.shape}")
        if not (np.isfinite(a).all() and np.isfinite(u).all()):
            raise ValueError("allocation and usage must be finite")
        self.slack += float(np.maximum(a - u, 0.0).sum())
        self.allocated += float(a.sum())
        self.shortfall += float(np.maximum(u - a, 0.0).sum())
        self.used += float(u.sum())
        self.violations += int((u > a).sum())
        self.steps += len(u)

    def __iadd__(self, other: Score) -> Score:
        for name in _FIELDS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        return self

    @property
    def waste(self) -> float:
        """0 when nothing was allocated."""
        return self.slack / self.allocated if self.allocated > 0 else 0.0

    @property
    def viol(self) -> float:
        return self.violations / self.steps if self.steps else 0.0

    @property
    def short(self) -> float:
        return self.shortfall / self.used if self.used > 0 else 0.0

    def get(self, digits: int = 4) -> dict[str, float]:
        return {"waste": round(self.waste, digits), "viol": round(self.viol, digits),
                "short": round(self.short, digits)}


def in_force(decided_at: np.ndarray, values: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """Per step ``ts``, the value of the latest decision made strictly before it; NaN where
    there is none. Decisions (``decided_at`` ascending) hold until the next one.

    >>> in_force(np.array([3600.0, 7200.0]), np.array([1.0, 2.0]),
    ...          np.array([3500, 3600, 3700, 7200, 7300])).tolist()
    [nan, nan, 1.0, 1.0, 2.0]
    """
    decided_at = np.asarray(decided_at, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    i = np.searchsorted(decided_at, np.asarray(ts, dtype=np.float64), side="left") - 1
    out = np.full(len(i), np.nan)
    ok = i >= 0
    out[ok] = values[i[ok]]
    return out
