"""Price a violation for a violation budget: ``fpstream backtest --target-viol``.

The flow reserves CPU and memory with ``fpstream.selector.RuleSelector``, whose one knob is the
price of a violated window (``violation_cost_cpu`` and ``violation_cost_mem`` settings). The
price that meets a budget depends on the fleet, so it is found on the trace: each series is
run through a ``RuleSelector`` (the flow's own class, fed the same hourly periods), scored by
the protocol, and the price is bisected (in log space) until the fleet's violation rate is at
most the target. Violations fall as the price rises, nearly monotonically; the search keeps the
cheapest price it saw that meets the target.

Tune on part of a trace and report the rest: ``fit_costs`` takes the series to tune on, and
``run_backtest`` its ``tune_series`` (by default every series: say so when reporting).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from fpstream.backtest.traces import Series
from fpstream.scoring import Score
from fpstream.selector import OFFSETS, RuleSelector

__all__ = ["fit_cost", "parse_range", "selector_score"]

HOUR = 3600.0
DAY = 86_400.0
METRIC = {"cpu": "cpu_cores", "mem": "mem_bytes"}

#: Search ranges of the price per resource, in its units (cores; bytes).
RANGES: dict[str, tuple[float, float]] = {"cpu": (1e-3, 1e3), "mem": (2.0**20, 2.0**50)}


def _usage(s: Series, res: str) -> np.ndarray | None:
    u = s.usage(res)
    return None if u is None else np.asarray(u, dtype=np.float64)


def parse_range(spec: str, n: int) -> list[int]:
    """``"1-125,200"`` -> 0-based positions (1-based, inclusive ranges, clipped to ``n``).

    >>> parse_range("1-3,7", 5)
    [0, 1, 2]
    """
    out: set[int] = set()
    for part in spec.split(","):
        a, _, b = part.strip().partition("-")
        try:
            lo, hi = int(a), int(b or a)
        except ValueError as ex:
            raise ValueError(f"bad series range {spec!r}: expected e.g. 1-125,200") from ex
        if lo < 1 or hi < lo:
            raise ValueError(f"bad series range {spec!r}: positions start at 1, low <= high")
        out.update(range(lo - 1, min(hi, n)))
    return sorted(out)


def selector_allocations(ts: np.ndarray, usage: np.ndarray, cost: float,
                         period_s: float = HOUR, resource: str = "cpu_cores") -> np.ndarray:
    """Per step, the allocation a ``RuleSelector`` with ``cost`` has in force (NaN before its
    first decision): decided at each period boundary from the periods before it."""
    sel = RuleSelector(cost, offsets=OFFSETS[resource])
    period = np.ceil(ts / period_s)
    out = np.full(len(ts), np.nan)
    ok = np.isfinite(usage)
    bounds = np.flatnonzero(np.diff(period)) + 1
    current = math.nan
    peak = 0.0
    for n, (a, b) in enumerate(zip(np.r_[0, bounds], np.r_[bounds, len(ts)], strict=True)):
        if n:
            current = sel.close(peak)
        u = usage[a:b][ok[a:b]]
        out[a:b] = np.where(ok[a:b], current, np.nan)
        sel.observe_many(u)
        peak = float(u.max()) if len(u) else 0.0
    return out


def selector_score(series: Sequence[Series], res: str, cost: float) -> Score:
    """The protocol's score (day 2 on) of the selector with ``cost`` over ``series``."""
    score = Score()
    for s in series:
        u = _usage(s, res)
        if u is None:
            continue
        ts = np.asarray(s.ts, dtype=np.float64)
        a = selector_allocations(ts, u, cost, resource=METRIC[res])
        mask = (ts > math.ceil(ts[0] / HOUR) * HOUR) & (ts >= ts[0] + DAY) & np.isfinite(a)
        mask &= np.isfinite(u)
        score.add(a[mask], u[mask])
    return score


def fit_cost(series: Sequence[Series], res: str, target_viol: float,
             steps: int = 14) -> tuple[float, dict[str, float]]:
    """The cheapest price found whose violation rate on ``series`` is at most
    ``target_viol``; with its score. The top of the range if none meets it."""
    if not 0.0 <= target_viol < 1.0:
        raise ValueError(f"target_viol must be in [0, 1), got {target_viol!r}")
    lo, hi = (math.log(v) for v in RANGES[res])
    best = (math.exp(hi), selector_score(series, res, math.exp(hi)).get())
    for _ in range(steps):
        mid = (lo + hi) / 2
        got = selector_score(series, res, math.exp(mid)).get()
        if got["viol"] <= target_viol:
            best = (math.exp(mid), got) if math.exp(mid) < best[0] else best
            hi = mid
        else:
            lo = mid
    return best
