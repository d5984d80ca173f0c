"""Backtest: replay a trace through the real flow and score it against the baselines.

The flow runs as ``fpstream run`` runs it, over the trace's rows (``fpstream.backtest.replay``:
``decision_period_s`` 3600, ``window_s`` the trace's step, one process or a Bytewax cluster of
``--workers N``). The allocations it emits hold until the next one for the same VM; an
allocation stamped ``T`` (decided from the windows ending at or before ``T``) is scored on the
samples after ``T``.

The baselines see the same rows, one at a time, and decide at every hour boundary from the rows
before it. A series is scored from its first hour boundary on: steps before it have no decision
from anyone (``notes.unscored_steps``). Its first day (from its first sample) is scored apart
as cold start (``first_day``), and by the age of the series at each step
(``first_day_by_age``: the ages young instances are pooled by, ``fpstream.fleet.young.AGES``,
each with its scored ``steps``), which tells where a first day's violations and slack fall;
the headline figures are from day 2 on. A series with a provisioned size is announced by a
deploy request carrying it (``deploy_request``), an hour before its first sample: its first
hour runs on the flow's proactive allocation, scored in the ``cold_start`` section
(``fpstream.backtest.coldstart.series_coldstart``).

A resource the trace lacks (memory in PlanetLab) is omitted from the result, and so is
``manual`` for a resource when a series has no capacity for it (a recorded stream without
``capacity``).
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from fpstream.backtest.baselines import VPA, Crane, manual, oracle
from fpstream.backtest.frontier import baseline_frontier, check_budgets
from fpstream.backtest.replay import (
    DAY,
    HOUR,
    RESOURCES,
    FlowOutput,
    backtest_settings,
    deploy_request,
    flow_allocations,
    settings_doc,
)
from fpstream.backtest.report import ReportData
from fpstream.backtest.traces import FORMATS, PathLike, Series, parse_range, read_trace
from fpstream.fleet.young import AGES
from fpstream.scoring import Score, in_force
from fpstream.settings import Settings

__all__ = ["METHODS", "budget_runs", "flow_reserve", "fpstream_frontier", "run_backtest",
           "score_series"]

METHODS: tuple[str, ...] = ("fpstream", "vpa", "crane", "manual", "oracle")
#: The first day's ages (hours since a series' first sample) scored apart, as ``first_day_by_age``
#: names them: those young instances are pooled by.
AGE_SPANS: tuple[tuple[str, float, float], ...] = tuple(
    (f"{lo / HOUR:g}-{hi / HOUR:g}h", lo, hi) for lo, hi in zip((0.0, *AGES[:-1]), AGES,
                                                              strict=True))
EXPERIMENTS: tuple[str, ...] = ("split", "bandit")  # ``run_backtest(experiment=...)``
Progress = Callable[[str, int, int], None]  # (phase, done, total)

def baseline_decisions(s: Series) -> dict[str, dict[str, np.ndarray]]:
    """VPA and Crane, fed every row, asked at every hour boundary: per method, the decision
    times and the CPU and memory targets (memory 0 when the trace has none)."""
    vpa, crane = VPA(), Crane()
    at: list[float] = []
    got: dict[str, list[tuple[float, float]]] = {"vpa": [], "crane": []}
    ts = s.ts.astype(np.float64)
    period = np.ceil(ts / HOUR)
    cpu = s.cpu.tolist()
    mem = s.mem.tolist() if s.mem is not None else [0.0] * len(ts)
    prev = period[0]
    for i, t in enumerate(ts.tolist()):
        if period[i] != prev:
            at.append((period[i] - 1) * HOUR)  # the boundary just passed
            got["vpa"].append(vpa.recommend())
            got["crane"].append(crane.recommend())
            prev = period[i]
        vpa.update(t, cpu[i], mem[i])
        crane.update(t, cpu[i], mem[i])
    out = {}
    for name, values in got.items():
        v = np.array(values, dtype=np.float64).reshape(-1, 2)
        out[name] = {"ts": np.array(at), "cpu": v[:, 0], "mem": v[:, 1]}
    return out


Scores = dict[str, dict[str, dict[str, Score]]]


def new_scores(resources: Sequence[str], methods: Mapping[str, Sequence[str]]) -> Scores:
    """Empty ``scores[phase][resource][method]`` for the resources and methods to report:
    phases ``rest``, ``first_day`` and each of ``AGE_SPANS``."""
    return {phase: {res: {m: Score() for m in methods[res]} for res in resources}
            for phase in ("rest", "first_day", *(name for name, _, _ in AGE_SPANS))}


def score_series(s: Series, fp: dict[str, np.ndarray] | None, scores: Scores,
                 notes: Counter[str], keep: bool = False,
                 arm_scores: dict[str, dict[int, Score]] | None = None,
                 churn: dict[str, dict[str, list[int]]] | None = None,
                 ) -> dict[str, Any] | None:
    """Add one series to ``scores[phase][resource][method]`` (phases ``rest``,
    ``first_day`` and its ``AGE_SPANS``), for the resources and methods ``scores`` holds.

    With ``arm_scores`` (``[resource][arm index]``), also score the day-2-on steps under an
    allocation of the flow by the experiment arm of that allocation (``fp["arm"]``).

    With ``churn`` (``[resource][method]``: changed, periods), also count the first day's
    decision periods and changes (``frontier.count_changes``) of fpstream, VPA and Crane.

    With ``keep``, return what a report plots: ``ts``, and per resource the usage and every
    method's allocation per step (NaN where unscored).
    """
    from fpstream.backtest.frontier import count_changes

    ts = s.ts.astype(np.float64)
    first_boundary = math.ceil(ts[0] / HOUR) * HOUR
    scored = ts > first_boundary
    first_day = ts < ts[0] + DAY
    ages = [(name, (ts >= ts[0] + lo) & (ts < ts[0] + hi)) for name, lo, hi in AGE_SPANS]
    notes["unscored_steps"] += int((~scored).sum())
    decisions = baseline_decisions(s)
    kept: dict[str, Any] = {"ts": ts}
    for res, by_method in scores["rest"].items():
        usage, capacity = s.usage(res), s.capacity(res)
        if usage is None:
            notes[f"series_without_{res}"] += 1
            continue
        alloc: dict[str, np.ndarray] = {"oracle": oracle(ts, usage, HOUR)}
        if capacity is not None:
            alloc["manual"] = manual(capacity)
        for name, d in decisions.items():
            alloc[name] = in_force(d["ts"], d[res], ts)
        mine, ok = flow_reserve(s, fp, res, scored, notes)
        alloc["fpstream"] = mine
        for phase, mask in (("first_day", ok & first_day), ("rest", ok & ~first_day),
                            *((name, ok & at) for name, at in ages)):
            for name in by_method:
                scores[phase][res][name].add(alloc[name][mask], usage[mask])
        if churn is not None:
            made = {name: d for name, d in decisions.items() if name in by_method}
            if fp is not None and len(fp["ts"]):
                made["fpstream"] = fp
            for name, d in sorted(made.items()):
                changed, periods = count_changes(d["ts"], d[res], ts[ok & first_day])
                counts = churn.setdefault(res, {}).setdefault(name, [0, 0])
                counts[0] += int(changed[0])
                counts[1] += int(periods[0])
        if arm_scores is not None and fp is not None:
            arm = in_force(fp["ts"], fp["arm"], ts)  # NaN: no allocation of the flow yet
            for k in np.unique(arm[ok & ~first_day & ~np.isnan(arm)]).astype(int).tolist():
                mask = ok & ~first_day & (arm == k)
                arm_scores[res].setdefault(k, Score()).add(mine[mask], usage[mask])
        if keep:
            kept[res] = {"usage": usage, **{m: np.where(ok, a, np.nan) for m, a in alloc.items()}}
    return kept if keep else None


def _share(part: int, whole: int) -> float:
    return round(part / whole, 6) if whole else 0.0


def flow_reserve(s: Series, fp: dict[str, np.ndarray] | None, res: str, scored: np.ndarray,
                 notes: Counter[str]) -> tuple[np.ndarray, np.ndarray]:
    """The flow's reservation of ``res`` in force at each step of ``s`` and the steps of
    ``scored`` it is scored at. Before the flow's first allocation the VM runs with what it
    was given (its capacity, counted in ``notes``); without a capacity such steps are not
    scored, for any method."""
    ts = s.ts.astype(np.float64)
    capacity = s.capacity(res)
    mine = np.full(len(ts), np.nan) if fp is None else in_force(fp["ts"], fp[res], ts)
    missing = scored & np.isnan(mine)
    if not missing.any():
        return mine, scored
    if capacity is not None:
        notes[f"fpstream_fallback_manual_steps_{res}"] += int(missing.sum())
        return np.where(np.isnan(mine), capacity, mine), scored
    notes[f"unscored_steps_without_allocation_{res}"] += int(missing.sum())
    return mine, scored & ~missing


def budget_runs(budgets: Mapping[str, Sequence[float]],
                settings: Settings) -> list[dict[str, float]]:
    """The flow runs a frontier needs, as the budget of each resource per run: run ``i``
    runs every resource's ``i``-th budget (ascending) at once, and the settings' own budget
    for a resource with fewer.

    >>> budget_runs({"cpu": (0.01, 0.02), "mem": (0.001,)}, Settings())
    [{'cpu': 0.01, 'mem': 0.001}, {'cpu': 0.02, 'mem': 0.001}]
    """
    own = {"cpu": settings.violation_budget_cpu, "mem": settings.violation_budget_mem}
    ordered = {res: sorted(levels) for res, levels in budgets.items()}
    runs = max((len(levels) for levels in ordered.values()), default=0)
    return [{res: ordered[res][i] if i < len(ordered.get(res, ())) else own[res]
             for res in own} for i in range(runs)]


def fpstream_frontier(series: Sequence[Series], settings: Settings,
                      budgets: Mapping[str, Sequence[float]], frontier: dict[str, Any],
                      ran: FlowOutput, workers: int = 1,
                      on_progress: Callable[[int, int], None] | None = None,
                      first_day: dict[str, Any] | None = None) -> None:
    """Add fpstream's points to ``frontier``: the flow run at each of ``budgets``
    (``budget_runs``; ``ran``, the flow already run at the settings' own budgets, stands for
    the run at those), its allocations scored over every series' ``rest`` steps as
    ``score_series`` scores them, with their churn (``frontier.allocation_churn``). With
    ``first_day``, the same runs' points over every series' first day go there (the young
    instances' frontier: ``{res: {"fpstream": [...]}}``)."""
    from fpstream.backtest.frontier import (
        add_points,
        allocation_churn,
        count_changes,
        frontier_point,
    )

    points: dict[str, list[dict[str, Any]]] = {res: [] for res in budgets}
    young: dict[str, list[dict[str, Any]]] = {res: [] for res in budgets}
    runs = budget_runs(budgets, settings)
    deploys = any(deploy_request(s) is not None for s in series)
    for i, run in enumerate(runs):
        own = replace(settings, violation_budget_cpu=run["cpu"], violation_budget_mem=run["mem"])

        def report(done: int, total: int, i: int = i) -> None:
            if on_progress is not None:
                on_progress(i * total + done, len(runs) * total)

        flow = ran if own == settings else flow_allocations(series, own, report, deploys,
                                                            workers=workers)
        for res in budgets:
            if len(points[res]) >= len(budgets[res]) or all(s.usage(res) is None for s in series):
                continue
            score, early, unused = Score(), Score(), Counter[str]()
            early_churn = [0, 0]
            for s in series:
                usage = s.usage(res)
                if usage is None:
                    continue
                ts = s.ts.astype(np.float64)
                fp = flow.allocations.get(s.key)
                mine, ok = flow_reserve(s, fp, res, ts > math.ceil(ts[0] / HOUR) * HOUR, unused)
                day = ts < ts[0] + DAY
                score.add(mine[ok & ~day], usage[ok & ~day])
                early.add(mine[ok & day], usage[ok & day])
                if fp is not None and len(fp["ts"]):
                    changed_early, periods_early = count_changes(fp["ts"], fp[res], ts[ok & day])
                    early_churn[0] += int(changed_early[0])
                    early_churn[1] += int(periods_early[0])
            changed, periods = allocation_churn(series, flow.allocations, res)
            points[res].append(frontier_point(run[res], score, changed, periods))
            young[res].append(frontier_point(run[res], early, early_churn[0], early_churn[1]))
    for res, got in points.items():
        if got:
            add_points(frontier, "fpstream", res, got)
            if first_day is not None:
                add_points(first_day, "fpstream", res, young[res])


def first_day_of(kept: dict[str, Any]) -> dict[str, Any]:
    """What ``score_series`` kept of a series, over its first day only."""
    ts = np.asarray(kept["ts"], dtype=np.float64)
    day = ts < ts[0] + DAY
    return {"ts": ts[day], **{res: {k: np.asarray(v)[day] for k, v in doc.items()}
                              for res, doc in kept.items() if res != "ts"}}


def _app_figures(s: Series) -> dict[str, Any]:
    return {"app": s.key[0], "cpu_mean": float(np.mean(s.cpu)),
            "cpu_p95": float(np.percentile(s.cpu, 95)),
            "mem_mean": None if s.mem is None else float(np.mean(s.mem)),
            "slice": s.labels.get("slice")}


def experiment_result(mode: str, settings: Settings, flow: FlowOutput,
                      arm_scores: dict[str, dict[int, Score]]) -> dict[str, Any]:
    """The ``experiment`` section: per arm and resource, over the day-2-on steps under an
    allocation of that arm (the allocation in force carries its arm as ``policy``), the
    ``waste`` and ``viol`` of ``Score``, ``reward`` = -waste - violation_penalty * viol, and
    ``share`` (of the steps under any arm's allocation); waste, viol and reward are ``None``
    for an arm without steps.

    ``chosen``: among the arms with steps on every resource and a violation rate no higher
    than the conservative arm's (the smallest budget, the experiment's baseline) on
    every resource, the one with the highest reward averaged over the resources (ties: the
    earlier arm); ``None`` when no arm qualifies. ``flow`` is the flow's own experiment
    summary (per flow process): periods scored, guard-rail moves and assignment shares.
    """
    policies = settings.policies()
    penalty = settings.violation_penalty
    conservative = min(policies, key=lambda p: (p.budget, -p.headroom)).name
    arms: dict[str, dict[str, Any]] = {}
    for p in policies:
        k = flow.arms.index(p.name) if p.name in flow.arms else -1
        doc: dict[str, Any] = {}
        for res, by_arm in arm_scores.items():
            total = sum(sc.steps for sc in by_arm.values())
            sc = by_arm.get(k)
            if sc is None or not sc.steps:
                doc[res] = {"waste": None, "viol": None, "reward": None, "share": 0.0}
                continue
            fig = sc.get()
            doc[res] = {"waste": fig["waste"], "viol": fig["viol"],
                        "reward": round(-fig["waste"] - penalty * fig["viol"], 4),
                        "share": round(sc.steps / total, 4) if total else 0.0}
        arms[p.name] = doc

    def qualifies(name: str) -> bool:
        mine, base = arms[name], arms[conservative]
        return all(mine[r]["viol"] is not None and
                   (base[r]["viol"] is None or mine[r]["viol"] <= base[r]["viol"])
                   for r in arm_scores)

    eligible = [p.name for p in policies if qualifies(p.name)]
    chosen = max(eligible, default=None,
                 key=lambda n: sum(arms[n][r]["reward"] for r in arm_scores) / len(arm_scores))
    return {
        "mode": mode, "arms": arms, "chosen": chosen, "conservative": conservative,
        "violation_penalty": penalty,
        "flow": [{"periods": f.get("periods"), "guard_moves": f.get("guard_moves"),
                  "share": {n: a.get("share") for n, a in f.get("arms", {}).items()}}
                 for f in flow.experiments],
    }


def run_backtest(path: PathLike | Sequence[PathLike], limit_series: int | None = None, *,
                 settings: Settings | None = None, fmt: str = "bitbrains",
                 progress: Progress | None = None, report: PathLike | None = None,
                 report_series: int = 4, report_young: int = 3, score_on: str | None = None,
                 workers: int = 1, experiment: str | None = None,
                 budgets: Mapping[str, Sequence[float]] | None = None,
                 first_hours: float | None = None) -> dict[str, Any]:
    """Backtest ``limit_series`` series of the traces at ``path`` (one path or several, in
    format ``fmt``: one of ``FORMATS``); the ``--json`` document. With ``report``, also write
    the HTML report there, plotting ``report_series`` series, and the first day of
    ``report_young`` series deployed after the trace's first day.

    The flow runs ``settings`` (default: the shipped defaults) with the protocol's decision
    period and window (``backtest_settings``); only the series at ``score_on`` (``"126-250"``;
    default: all) run through the flow and are scored. ``workers`` > 1 runs the flow as one
    Bytewax cluster of that many processes over those series (``flow_allocations``).

    With ``experiment`` (``split`` or ``bandit``), the flow runs that A/B experiment over the
    settings' arms (default: ``DEFAULT_ARMS``) and the result gets an ``experiment`` section
    (``experiment_result``).

    With ``first_hours``, each series is cut to its first that many hours (at least 25)
    before it is replayed: its first day and cold start are scored as in the whole trace's
    run wherever the fleet's first day is the series' own (every series starting with the
    trace), in a fraction of the time; ``rest`` then covers only the hours after the first day.

    With ``budgets`` (violation budgets per resource), the result gets a ``frontier`` section:
    the flow run at each budget (``fpstream_frontier``) and the baseline families tuned
    in-sample on the scored series for each (``fpstream.backtest.frontier``)."""
    if budgets is not None:
        check_budgets(budgets)
    if fmt not in FORMATS:
        raise ValueError(f"unsupported trace format {fmt!r}, expected one of {', '.join(FORMATS)}")
    if limit_series is not None and limit_series < 1:
        raise ValueError(f"limit_series must be >= 1, got {limit_series!r}")
    paths = [path] if isinstance(path, str | Path) else list(path)
    if not paths:
        raise ValueError("no trace path given")
    notes: Counter[str] = Counter()
    t0 = time.perf_counter()
    series = list(read_trace(fmt, paths, limit_series, notes))
    if not series:
        raise ValueError(f"no usable series in {', '.join(map(str, paths))}")
    steps = sorted({s.step_s for s in series})
    if len(steps) > 1:
        notes["series_with_another_step"] = sum(s.step_s != steps[-1] for s in series)
    settings = backtest_settings(settings, steps[-1])
    if experiment is not None:
        if experiment not in EXPERIMENTS:
            raise ValueError(f"unsupported experiment mode {experiment!r}, expected one of "
                             f"{', '.join(EXPERIMENTS)}")
        settings = replace(settings, experiment_mode=experiment)
    if score_on is not None:
        series = [series[i] for i in parse_range(score_on, len(series))]
        if not series:
            raise ValueError(f"score_on {score_on!r} selects no series")
    if first_hours is not None:
        if not first_hours >= 25:
            raise ValueError(f"first_hours must be at least 25 (a first day and a decided "
                             f"hour after it), got {first_hours!r}")
        series = [s.head(first_hours * HOUR) for s in series]
        notes["first_hours"] = int(first_hours)
    t1 = time.perf_counter()
    # Series with a provisioned size are announced by a deploy request carrying it, so their
    # first hour runs on a proactive allocation and is scored as cold start.
    deploys = any(deploy_request(s) is not None for s in series)
    def flow_progress(done: int, total: int) -> None:
        if progress:
            progress("flow", done, total)

    flow = flow_allocations(series, settings, flow_progress, deploys, workers=workers)
    notes.update(flow.other)
    t2 = time.perf_counter()
    resources = [res for res in RESOURCES if any(s.usage(res) is not None for s in series)]
    methods: dict[str, list[str]] = {}
    for res in resources:
        no_capacity = sum(s.capacity(res) is None for s in series)
        if no_capacity:
            notes[f"manual_omitted_{res}_series_without_capacity"] = no_capacity
        methods[res] = [m for m in METHODS if m != "manual" or not no_capacity]
    scores = new_scores(resources, methods)
    arm_scores: dict[str, dict[int, Score]] | None = (
        {res: {} for res in resources} if experiment is not None else None)
    churn: dict[str, dict[str, list[int]]] = {}
    trace_start = min((float(s.ts[0]) for s in series if len(s.ts)), default=0.0)
    data = ReportData(fmt, [str(p) for p in paths], clusters=flow.clusters,
                      app_clusters=flow.app_clusters)
    for n, s in enumerate(series):
        if progress:
            progress("score", n, len(series))
        fp = flow.allocations.get(s.key)
        if fp is None:
            notes["series_without_allocation"] += 1
        plot = report is not None and fp is not None and len(data.plotted) < report_series
        # a few instances deployed once the fleet had a day of history: their first day
        young = (report is not None and fp is not None and len(data.young) < report_young
                 and float(s.ts[0]) >= trace_start + DAY)
        kept = score_series(s, fp, scores, notes, keep=plot or young, arm_scores=arm_scores,
                            churn=churn)
        if kept is not None and plot:
            data.plotted[s.name] = kept
        if kept is not None and young:
            data.young[s.name] = first_day_of(kept)
        if report is not None:
            data.apps[s.name] = _app_figures(s)
    t3 = time.perf_counter()
    frontier = None
    first_day_frontier: dict[str, Any] = {}
    if budgets is not None:
        frontier = baseline_frontier(
            series, budgets, None if progress is None else (
                lambda done, total: progress("frontier", done, total)))
        fpstream_frontier(series, settings, budgets, frontier, flow, workers,
                          None if progress is None else (
                              lambda done, total: progress("budgets", done, total)),
                          first_day=first_day_frontier)
    t4 = time.perf_counter()
    rest = scores["rest"]
    result: dict[str, Any] = {
        **{res: {m: rest[res][m].get() for m in methods[res]} for res in resources},
        "steps": rest["cpu"]["fpstream"].steps,
        "series": len(series),
        "first_day": {res: {m: {**scores["first_day"][res][m].get(),
                                **({"changes": _share(*churn[res][m])}
                                   if m in churn.get(res, {}) else {})}
                            for m in methods[res]}
                      for res in resources},
        "first_day_by_age": {res: {m: {name: {**scores[name][res][m].get(),
                                              "steps": scores[name][res][m].steps}
                                       for name, _, _ in AGE_SPANS}
                                   for m in methods[res]}
                             for res in resources},
        "notes": {
            "first_day_steps": scores["first_day"]["cpu"]["fpstream"].steps,
            "allocations": int(sum(len(a["ts"]) for a in flow.allocations.values())),
            "cluster_snapshots": flow.snapshots,
            **{k: int(v) for k, v in sorted(notes.items()) if v},
            "seconds": {"read": round(t1 - t0, 2), "flow": round(t2 - t1, 2),
                        "baselines_and_score": round(t3 - t2, 2),
                        **({"frontier": round(t4 - t3, 2)} if frontier is not None else {})},
            "settings": settings_doc(settings),
            "trace": {"format": fmt, "paths": [str(p) for p in paths]},
        },
    }
    if deploys:
        from fpstream.backtest.coldstart import series_coldstart

        result["cold_start"] = {**series_coldstart(series, flow.proactive, flow.allocations),
                                "flow_processes": flow.processes}
    if score_on is not None:
        result["notes"]["scored_on"] = score_on
    if frontier is not None:
        result["frontier"] = frontier
        result["first_day_frontier"] = first_day_frontier
    if experiment is not None and arm_scores is not None:
        result["experiment"] = experiment_result(experiment, settings, flow, arm_scores)
    if report is not None:
        from fpstream.backtest.report import write_report

        write_report(Path(report), result, data)
    return result
