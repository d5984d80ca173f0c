"""Waste/violation frontiers: baseline families tuned in-sample per violation budget.

A single operating point flatters whoever chose it; the fair comparison is the whole
trade-off. Each family is swept over its knobs on the backtest's protocol (a decision at every
hour boundary from the rows before it, held until the next; the steps from day 2 of each
series on scored with ``Score``, as ``run.score_series`` scores ``rest``):

- ``vpa``: VPA's recommender (``baselines.VPA``: CPU samples in a decaying histogram, 24 h
  half-life; memory from the per-day peaks kept 8 days) read at ``percentile`` x ``margin``,
  at least 0.025 cores and 250 MiB;
- ``crane``: Crane's decaying histograms of the last 168 h (``baselines.Crane``) read at
  ``quantile`` x ``margin``;
- ``peak``: the peak of the last ``hours`` hours with samples (clock hours where the trace
  has no gap) x ``margin``.

``Sweep`` accumulates one ``Score`` and the churn (``count_changes``) per family, parameters
and resource over the series it is given; ``tuned`` keeps, per budget, each family's least
waste within it. ``add_points`` is how fpstream's own points (one flow run per budget) join
the section.

>>> parse_budgets(["cpu=0.01,0.005", "mem=0.001"])
{'cpu': (0.005, 0.01), 'mem': (0.001,)}
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fpstream.backtest import sweep
from fpstream.backtest.baselines import DAY, HOUR, MB
from fpstream.backtest.traces import Series
from fpstream.scoring import Score

__all__ = ["FAMILIES", "Combination", "Sweep", "add_points", "allocation_churn",
           "baseline_frontier", "check_budgets", "count_changes", "frontier_point",
           "frontier_table", "parse_budgets", "rest_mask", "tuned"]

RESOURCES: tuple[str, ...] = ("cpu", "mem")
FAMILIES: tuple[str, ...] = ("vpa", "crane", "peak")
QUANTILES: tuple[float, ...] = (*(round(0.5 + 0.05 * i, 2) for i in range(10)), 0.99, 1.0)
#: ``1 + x`` as ``VPA`` and ``Crane`` compute ``1 + margin``, so a grid point is their value.
MARGINS: tuple[float, ...] = tuple(1 + round(0.05 * i, 2) for i in range(21))
PEAK_HOURS: tuple[int, ...] = (1, 2, 3, 6, 12, 24, 48, 72, 168, 336)
#: A decision period changes when its value moves by more than this share of the last one.
CHANGE = 0.1

Key = tuple[str, str]


def rest_mask(ts: np.ndarray) -> np.ndarray:
    """The steps the protocol scores as ``rest``: after the series' first hour boundary and
    from a day after its first sample on."""
    ts = np.asarray(ts, dtype=np.float64)
    return (ts > math.ceil(ts[0] / HOUR) * HOUR) & ~(ts < ts[0] + DAY)


def count_changes(decided_at: np.ndarray, values: np.ndarray,
                  ts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Churn of a series' decisions over its scored steps ``ts``: ``(changed, periods)``.

    A decision (made at ``decided_at``, in force until the next, as ``in_force`` has it)
    counts as a decision period when it is in force at one step of ``ts`` at least and has a
    previous decision; it *changed* when ``|v - previous| > 0.1 * |previous|``, ``v`` and
    ``previous`` its value and the previous decision's. Periods where either is NaN are not
    counted. ``values`` holds one decision per row, one rule per column (a 1-D array is one
    rule); the counts are per column. Over a fleet, ``changes`` = the sum of ``changed`` over
    the sum of ``periods``: every such change is an eviction or an in-place resize.

    >>> changed, periods = count_changes(np.array([0.0, 3600, 7200, 10800]),
    ...                                  np.array([1.0, 1.05, 1.5, 1.5]), np.array([9000.0]))
    >>> int(changed[0]), int(periods[0])  # only the decision at 7200 is in force
    (1, 1)
    """
    v = np.asarray(values, dtype=np.float64)
    # one column per rule (an empty array too: a series with no decision changes nothing)
    v = v.reshape(len(v), int(np.prod(v.shape[1:])))
    k = np.unique(np.searchsorted(np.asarray(decided_at, dtype=np.float64),
                                  np.asarray(ts, dtype=np.float64), side="left") - 1)
    k = k[k >= 1]
    now, before = v[k], v[k - 1]
    counted = np.isfinite(now) & np.isfinite(before)
    with np.errstate(invalid="ignore"):
        changed = counted & (np.abs(now - before) > CHANGE * np.abs(before))
    return changed.sum(axis=0), counted.sum(axis=0)


def allocation_churn(series: Iterable[Series],
                     allocations: Mapping[Key, Mapping[str, np.ndarray]],
                     resource: str) -> tuple[int, int]:
    """``(changed, periods)`` of the flow's allocations (``FlowOutput.allocations``: per
    series key, ``ts`` and one array per resource) over every series' ``rest`` steps."""
    changed = periods = 0
    for s in series:
        fp = allocations.get(s.key)
        if fp is None or not len(fp["ts"]):
            continue
        ts = np.asarray(s.ts, dtype=np.float64)
        c, p = count_changes(fp["ts"], fp[resource], ts[rest_mask(ts)])
        changed += int(c[0])
        periods += int(p[0])
    return changed, periods


@dataclass(slots=True)
class Combination:
    """One family's parameters on one resource, and what they scored."""

    params: dict[str, float]
    score: Score = field(default_factory=Score)
    changed: int = 0
    periods: int = 0

    @property
    def changes(self) -> float:
        return self.changed / self.periods if self.periods else 0.0


def grid(family: str) -> list[dict[str, float]]:
    """The parameters a family is swept over, in the column order of its decisions."""
    if family == "vpa":
        return [{"percentile": q, "margin": m} for q in QUANTILES for m in MARGINS]
    if family == "crane":
        return [{"quantile": q, "margin": m} for q in QUANTILES for m in MARGINS]
    if family == "peak":
        return [{"hours": k, "margin": m} for k in PEAK_HOURS for m in MARGINS]
    raise ValueError(f"unknown family {family!r}, expected one of {', '.join(FAMILIES)}")


def family_decisions(family: str, resource: str, ts: np.ndarray, usage: np.ndarray,
                     rows: np.ndarray) -> np.ndarray:
    """Per decision (before each of ``rows``), the value of every combination of
    ``grid(family)``: one row per decision, one column per combination."""
    margins = np.asarray(MARGINS)
    if family == "peak":
        base = sweep.window_peaks(ts, usage, rows, PEAK_HOURS)
        return (base[:, :, None] * margins).reshape(len(rows), -1)
    if family == "vpa":
        if resource == "cpu":
            base, floor = sweep.vpa_cpu(ts, usage, rows, QUANTILES), 0.025
        else:
            base, floor = sweep.vpa_memory(ts, usage, rows, QUANTILES), 250 * MB
        return np.maximum(base[:, :, None] * margins, floor).reshape(len(rows), -1)
    if family == "crane":
        half_life = DAY if resource == "cpu" else 2 * DAY
        base = sweep.crane(ts, usage, rows, QUANTILES, half_life, memory=resource == "mem")
        return (base[:, :, None] * margins).reshape(len(rows), -1)
    raise ValueError(f"unknown family {family!r}, expected one of {', '.join(FAMILIES)}")


class Sweep:
    """Every combination of every family on ``resources``, scored over the series added.

    >>> s = Sweep(["cpu"])
    >>> len(s.combinations["cpu"]["vpa"]), len(s.combinations["cpu"]["peak"])
    (252, 210)
    """

    __slots__ = ("combinations", "series")

    def __init__(self, resources: Sequence[str], families: Sequence[str] = FAMILIES) -> None:
        for res in resources:
            if res not in RESOURCES:
                raise ValueError(f"unknown resource {res!r}, expected one of "
                                 f"{', '.join(RESOURCES)}")
        self.combinations: dict[str, dict[str, list[Combination]]] = {
            res: {f: [Combination(p) for p in grid(f)] for f in families} for res in resources}
        self.series = 0

    def add(self, s: Series) -> None:
        """Score every combination on ``s``'s ``rest`` steps (a resource ``s`` lacks is
        skipped)."""
        ts = np.asarray(s.ts, dtype=np.float64)
        rest = rest_mask(ts)
        rows, at = sweep.decision_points(ts)
        if not rest.any() or not len(rows):
            return
        self.series += 1
        in_force = np.searchsorted(at, ts[rest], side="left") - 1
        for res, families in self.combinations.items():
            usage = s.usage(res)
            if usage is None:
                continue
            usage = np.asarray(usage, dtype=np.float64)
            used = usage[rest]
            for family, combos in families.items():
                values = family_decisions(family, res, ts, usage, rows)
                changed, periods = count_changes(at, values, ts[rest])
                allocated = values.T[:, in_force]
                for c, combo in enumerate(combos):
                    combo.score.add(allocated[c], used)
                    combo.changed += int(changed[c])
                    combo.periods += int(periods[c])


def frontier_point(budget: float, score: Score, changed: int, periods: int,
                   params: Mapping[str, float] | None = None) -> dict[str, Any]:
    """One point of a frontier: the rule tuned for (or run at) ``budget``, its ``Score`` over
    the ``rest`` steps and its churn (``count_changes``); ``within_budget`` says whether its
    violation rate is at most the budget."""
    point: dict[str, Any] = {
        "budget": budget, "waste": round(score.waste, 6), "viol": round(score.viol, 6),
        "changes": round(changed / periods, 6) if periods else 0.0,
        "within_budget": score.viol <= budget}
    if params is not None:
        point["params"] = dict(params)
    return point


def tuned(scores: Mapping[str, Mapping[str, Sequence[Combination]]],
          budgets: Mapping[str, Sequence[float]]) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """Per resource of ``budgets`` (and of ``scores``), family and budget, the combination
    with the least waste among those whose violation rate is at most the budget (ties: the
    lower violation rate, then the earlier in the grid), as a ``frontier_point`` with its
    ``params``. When none is within the budget, the one with the lowest violation rate
    (ties: the least waste, then the earlier) is reported, with ``within_budget`` false.

    >>> a, b = Combination({"k": 1}), Combination({"k": 2})
    >>> a.score.add(1.0, [0.5, 2.0]); b.score.add(4.0, [0.5, 2.0])
    >>> [p["params"] for p in tuned({"cpu": {"x": [a, b]}}, {"cpu": [0.1, 0.5]})["cpu"]["x"]]
    [{'k': 2}, {'k': 1}]
    """
    out: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for res, levels in budgets.items():
        if res not in scores:
            continue
        out[res] = {}
        for family, combos in scores[res].items():
            points = []
            for budget in sorted(levels):
                order = range(len(combos))
                within = [i for i in order if combos[i].score.viol <= budget]
                if within:
                    i = min(within, key=lambda i: (combos[i].score.waste, combos[i].score.viol, i))
                else:
                    i = min(order, key=lambda i: (combos[i].score.viol, combos[i].score.waste, i))
                best = combos[i]
                points.append(frontier_point(budget, best.score, best.changed, best.periods,
                                             best.params))
            out[res][family] = points
    return out


def add_points(frontier: dict[str, dict[str, list[dict[str, Any]]]], method: str,
               resource: str, points: Sequence[Mapping[str, Any]]) -> None:
    """Add a method's points (``frontier_point``s, one per budget) to ``frontier`` under
    ``resource``: how fpstream's own runs, one per budget, join the baselines. ``fpstream``
    goes first.

    Per budget: run the flow at it, take the ``rest`` ``Score`` of its allocations
    (``run.score_series``) and their churn (``allocation_churn(series, flow.allocations,
    resource)``), and make ``frontier_point(budget, score, changed, periods)``; then add the
    points to ``result["frontier"]`` before the report is written."""
    doc = frontier.setdefault(resource, {})
    doc[method] = sorted((dict(p) for p in points), key=lambda p: p["budget"])
    if method == "fpstream":
        frontier[resource] = {"fpstream": doc.pop("fpstream"), **doc}


def baseline_frontier(series: Sequence[Series], budgets: Mapping[str, Sequence[float]],
                      on_progress: Callable[[int, int], None] | None = None
                      ) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """The ``frontier`` section for the baseline families: swept over ``series``, tuned on
    them for ``budgets`` (per resource; a resource no series has is left out);
    ``on_progress(done, total)`` per series."""
    check_budgets(budgets)
    present = [r for r in budgets if any(s.usage(r) is not None for s in series)]
    sw = Sweep(present)
    for n, s in enumerate(series):
        sw.add(s)
        if on_progress is not None:
            on_progress(n + 1, len(series))
    return tuned(sw.combinations, budgets)


def check_budgets(budgets: Mapping[str, Sequence[float]]) -> None:
    """Refuse budgets for an unknown resource or outside [0, 1), with a ``ValueError``."""
    for res, levels in budgets.items():
        if res not in RESOURCES:
            raise ValueError(f"unknown resource {res!r} in budgets, expected one of "
                             f"{', '.join(RESOURCES)}")
        for b in levels:
            if not 0.0 <= b < 1.0:
                raise ValueError(f"a violation budget is a rate in [0, 1), got {b!r} for {res}")


def parse_budgets(specs: Sequence[str]) -> dict[str, tuple[float, ...]]:
    """``["cpu=0.005,0.01", "mem=0.001"]`` -> the budgets per resource, ascending. Strict:
    a resource once, each budget a rate in [0, 1) given once."""
    out: dict[str, tuple[float, ...]] = {}
    for spec in specs:
        res, sep, rest = spec.partition("=")
        res = res.strip()
        if not sep or res not in RESOURCES:
            raise ValueError(f"{spec!r}: expected RES=b1,b2,... with RES one of "
                             f"{', '.join(RESOURCES)}")
        if res in out:
            raise ValueError(f"{spec!r}: budgets for {res} are given twice")
        levels: list[float] = []
        for part in rest.split(","):
            try:
                b = float(part)
            except ValueError:
                raise ValueError(f"{spec!r}: {part.strip()!r} is not a number") from None
            if not 0.0 <= b < 1.0:
                raise ValueError(f"{spec!r}: {part.strip()} is not a violation rate in [0, 1)")
            if b in levels:
                raise ValueError(f"{spec!r}: {part.strip()} is given twice")
            levels.append(b)
        out[res] = tuple(sorted(levels))
    return out


def frontier_table(frontier: dict[str, Any]) -> Any:
    """The ``frontier`` section as a rich table: one row per resource and budget, per method
    its waste, violation rate and churn (``*``: no setting of the family is within the
    budget, its lowest violation rate is shown)."""
    from rich.table import Table

    methods = list(dict.fromkeys(m for doc in frontier.values() for m in doc))
    table = Table(title="frontier: least waste within each violation budget (day 2 on)")
    table.add_column("resource")
    table.add_column("budget", justify="right")
    for m in methods:
        table.add_column(f"{m} waste / viol / changes", justify="right")
    for res, doc in frontier.items():
        budgets = sorted({p["budget"] for points in doc.values() for p in points})
        for b in budgets:
            cells = []
            for m in methods:
                p = next((p for p in doc.get(m, []) if p["budget"] == b), None)
                cells.append("-" if p is None else
                             f"{p['waste']:.3f} / {p['viol']:.4f} / {p['changes']:.3f}"
                             + ("" if p.get("within_budget", True) else " *")
                             + (f" ({_params(p['params'])})" if "params" in p else ""))
            table.add_row(res, f"{b:g}", *cells)
    return table


def _params(params: dict[str, Any]) -> str:
    """``p0.9 x1.15`` (percentile), ``q0.99 x1.15`` (quantile), ``24h x1.05`` (hours)."""
    if "hours" in params:
        head = f"{params['hours']}h"
    else:
        head = ("p" if "percentile" in params else "q") + ", ".join(
            f"{v:g}" for k, v in params.items() if k != "margin")
    return f"{head} x{params['margin']:g}"
