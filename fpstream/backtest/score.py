"""The evaluation protocol of DESIGN.md: waste, violations and shortfall of an allocation.

Over all the series-steps a ``Score`` has seen (``A`` the allocation in force, ``u`` the usage):

- ``waste`` = sum(max(A - u, 0)) / sum(A): relative slack, time-weighted over the fleet;
- ``viol``  = share of steps with u > A;
- ``short`` = sum(max(u - A, 0)) / sum(u).

>>> s = Score()
>>> s.add(np.array([2.0, 2.0, 2.0, 2.0]), np.array([1.0, 2.0, 3.0, 0.0]))
>>> s.get()
{'waste': 0.375, 'viol': 0.25, 'short': 0.1667}
"""

from __future__ import annotations

import numpy as np

__all__ = ["Score", "in_force"]


class Score:
    """Running sums of one method on one resource; mergeable with ``+=``."""

    def __init__(self) -> None:
        self.slack = 0.0
        self.allocated = 0.0
        self.shortfall = 0.0
        self.used = 0.0
        self.violations = 0
        self.steps = 0

    def add(self, allocation: np.ndarray, usage: np.ndarray) -> None:
        a = np.asarray(allocation, dtype=np.float64)
        u = np.asarray(usage, dtype=np.float64)
        if a.shape != u.shape:
            raise ValueError(f"allocation and usage must have one shape, got {a.shape}, {u.shape}")
        if not (np.isfinite(a).all() and np.isfinite(u).all()):
            raise ValueError("allocation and usage must be finite")
        self.slack += float(np.maximum(a - u, 0.0).sum())
        self.allocated += float(a.sum())
        self.shortfall += float(np.maximum(u - a, 0.0).sum())
        self.used += float(u.sum())
        self.violations += int((u > a).sum())
        self.steps += len(a)

    def __iadd__(self, other: Score) -> Score:
        for name in ("slack", "allocated", "shortfall", "used", "violations", "steps"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        return self

    def get(self, digits: int = 4) -> dict[str, float]:
        def ratio(a: float, b: float) -> float:
            return round(a / b, digits) if b > 0 else 0.0

        return {"waste": ratio(self.slack, self.allocated),
                "viol": ratio(self.violations, self.steps),
                "short": ratio(self.shortfall, self.used)}


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
