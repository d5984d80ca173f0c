"""Backtest: replay a trace through the real flow and score it against the baselines.

The trace's rows become ``MetricSample`` messages on the metrics topic, in event-time order
(one slot of the trace's native step at a time, at most ``MAX_BATCH`` samples a message), fed
to ``flows.fleet.build_flow`` over a ``TestingSource`` and run by ``run_main``: the same code
``fpstream run`` runs on Kafka, with ``decision_period_s`` 3600, ``window_s`` the trace's step
(300 s for Bitbrains and PlanetLab) and no allowed lateness. The allocations it emits (Kafka
sink) hold until the next one for the same VM; an allocation stamped ``T`` (decided from the
windows ending at or before ``T``) is scored on the samples after ``T``. The sinks consume what
the flow writes as it comes: only the compact allocation rows and the latest cluster snapshot
are kept, never the messages.

The baselines see the same rows, one at a time, and decide at every hour boundary from the rows
before it. A series is scored from its first hour boundary on: steps before it have no decision
from anyone (``notes.unscored_steps``). Its first day (from its first sample) is scored apart
as cold start (``first_day``); the headline figures are from day 2 on.

A resource the trace lacks (memory in PlanetLab) is omitted from the result, and so is
``manual`` for a resource when a series has no capacity for it (a recorded stream without
``capacity``).
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from fpstream.backtest.baselines import VPA, Crane, manual, oracle
from fpstream.backtest.score import Score, in_force
from fpstream.backtest.traces import FORMATS, PathLike, Series, read_trace
from fpstream.settings import Settings

__all__ = ["METHODS", "FlowOutput", "ReportData", "backtest_settings", "flow_allocations",
           "run_backtest", "score_series"]

HOUR = 3600.0
DAY = 86_400.0
STEP_S = 300.0
MAX_BATCH = 500
METHODS: tuple[str, ...] = ("fpstream", "vpa", "crane", "manual", "oracle")
RESOURCES: dict[str, str] = {"cpu": "cpu_cores", "mem": "mem_bytes"}
_OPTIONAL_METRICS: dict[str, str] = {"mem": "mem_bytes", "disk_read": "disk_read_bps",
                                     "disk_write": "disk_write_bps", "net_rx": "net_rx_bps",
                                     "net_tx": "net_tx_bps"}

Progress = Callable[[str, int, int], None]  # (phase, done, total)
Key = tuple[str, str]  # (app, instance)


def backtest_settings(base: Settings | None = None, step_s: float = STEP_S) -> Settings:
    """The protocol's settings: hourly decisions over the trace's native ``step_s`` windows."""
    base = base if base is not None else Settings()
    return replace(base, decision_period_s=HOUR, window_s=step_s, allowed_lateness_s=0.0)


def sample_dict(s: Series, i: int) -> dict[str, Any]:
    """Row ``i`` of ``s`` as a wire-contract metric sample, with only what the trace has."""
    metrics = {"cpu_cores": float(s.cpu[i])}
    for attr, metric in _OPTIONAL_METRICS.items():
        values = getattr(s, attr)
        if values is not None:
            metrics[metric] = float(values[i])
    doc: dict[str, Any] = {"v": 1, "ts": float(s.ts[i]), "app": s.key[0], "instance": s.key[1],
                           "interval_s": s.step_s, "metrics": metrics}
    capacity = {metric: float(cap[i]) for res, metric in RESOURCES.items()
                if (cap := s.capacity(res)) is not None}
    if capacity:
        doc["capacity"] = capacity
    if s.labels:
        doc["labels"] = s.labels
    return doc


class TraceMessages:
    """The trace as Kafka messages, re-iterable and built lazily (a month of 250 VMs would not
    fit in memory as JSON): the samples of one slot in time order, at most ``max_batch`` a
    message (a slot of thousands of VMs would exceed the decoder's message size limit)."""

    def __init__(self, series: Sequence[Series], topic: str, slot_s: float = STEP_S,
                 max_batch: int = MAX_BATCH) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch!r}")
        self.series = series
        self.topic = topic
        self.slot_s = slot_s
        self.max_batch = max_batch

    def __iter__(self) -> Iterator[Any]:
        from bytewax.connectors.kafka import KafkaSourceMessage

        rows = [(int(math.ceil(t / self.slot_s)), float(t), k, i)
                for k, s in enumerate(self.series) for i, t in enumerate(s.ts)]
        rows.sort()
        start = 0
        offset = 0
        while start < len(rows):
            end = start
            while (end < len(rows) and rows[end][0] == rows[start][0]
                   and end - start < self.max_batch):
                end += 1
            batch = [sample_dict(self.series[k], i) for _, _, k, i in rows[start:end]]
            newest = rows[end - 1][1]
            yield KafkaSourceMessage(key=None, value=orjson.dumps(batch), topic=self.topic,
                                     partition=0, offset=offset,
                                     timestamp=(1, int(newest * 1000)))
            offset += 1
            start = end


@dataclass
class FlowOutput:
    """What the flow wrote, reduced as it came: per (app, instance) its allocations' ``ts``
    and reserves, the counts of everything else (dead letters by reason, anomalies), and the
    latest cluster snapshot (centroids and the app -> cluster map). A snapshot holds only the
    apps still active, so ``app_clusters`` keeps each app's cluster in the latest snapshot
    that held it."""

    allocations: dict[Key, dict[str, np.ndarray]]
    other: Counter[str]
    clusters: Any | None = None
    snapshots: int = 0
    app_clusters: dict[str, int] = field(default_factory=dict)


def consuming_sink(fn: Callable[[list[Any]], None]) -> Any:
    """A bytewax sink that hands every batch to ``fn`` instead of keeping it (bytewax is
    imported here, not at module import, so reading the package stays light)."""
    from bytewax.outputs import DynamicSink, StatelessSinkPartition

    class Part(StatelessSinkPartition[Any]):
        def write_batch(self, items: list[Any]) -> None:
            fn(items)

    class Sink(DynamicSink[Any]):
        def build(self, step_id: str, worker_index: int, worker_count: int) -> Part:
            return Part()

    return Sink()


def flow_allocations(series: Sequence[Series], settings: Settings) -> FlowOutput:
    """Run the real flow over the series and collect what it decided (``FlowOutput``)."""
    from bytewax.testing import TestingSource, run_main

    from flows.fleet import build_flow
    from fpstream.io.metrics import FlowMetrics
    from fpstream.io.steps import is_cluster_def

    rows: dict[Key, list[tuple[float, float, float]]] = {}
    out = FlowOutput({}, Counter())

    def on_kafka(items: list[Any]) -> None:
        for msg in items:
            doc = orjson.loads(msg.value)
            if msg.topic == settings.topic_allocations:
                reserve = doc["reserve"]
                rows.setdefault((doc["app"], doc["instance"]), []).append(
                    (doc["ts"], reserve.get("cpu_cores", math.nan),
                     reserve.get("mem_bytes", math.nan)))
            elif msg.topic == settings.topic_deadletter:
                out.other[f"deadletter:{doc['reason']}"] += 1
            else:
                out.other["anomalies"] += 1

    def on_redis(items: list[Any]) -> None:
        for item in items:
            if is_cluster_def(item):
                out.clusters = item
                out.snapshots += 1
                out.app_clusters.update(item.apps)

    source = TestingSource(TraceMessages(series, settings.topic_metrics, settings.window_s),
                           batch_size=20)
    flow = build_flow(settings, source=source, kafka_sink=consuming_sink(on_kafka),
                      redis_sink=consuming_sink(on_redis), metrics=FlowMetrics())
    run_main(flow)
    for key, items in rows.items():
        items.sort()
        a = np.array(items, dtype=np.float64)
        out.allocations[key] = {"ts": a[:, 0], "cpu": a[:, 1], "mem": a[:, 2]}
    return out


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
    """Empty ``scores[phase][resource][method]`` for the resources and methods to report."""
    return {phase: {res: {m: Score() for m in methods[res]} for res in resources}
            for phase in ("rest", "first_day")}


def score_series(s: Series, fp: dict[str, np.ndarray] | None, scores: Scores,
                 notes: Counter[str], keep: bool = False) -> dict[str, Any] | None:
    """Add one series to ``scores[phase][resource][method]`` (phases ``rest`` and
    ``first_day``), for the resources and methods ``scores`` holds.

    With ``keep``, return what a report plots: ``ts``, and per resource the usage and every
    method's allocation per step (NaN where unscored).
    """
    ts = s.ts.astype(np.float64)
    first_boundary = math.ceil(ts[0] / HOUR) * HOUR
    scored = ts > first_boundary
    first_day = ts < ts[0] + DAY
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
        mine = np.full(len(ts), np.nan) if fp is None else in_force(fp["ts"], fp[res], ts)
        ok = scored
        missing = scored & np.isnan(mine)
        if missing.any():
            if capacity is not None:
                # No allocation from the flow yet: the VM runs with what it was given.
                notes[f"fpstream_fallback_manual_steps_{res}"] += int(missing.sum())
                mine = np.where(np.isnan(mine), capacity, mine)
            else:
                # Nothing to fall back on: such steps are scored for no method.
                notes[f"unscored_steps_without_allocation_{res}"] += int(missing.sum())
                ok = scored & ~missing
        alloc["fpstream"] = mine
        for phase, mask in (("first_day", ok & first_day), ("rest", ok & ~first_day)):
            for name in by_method:
                scores[phase][res][name].add(alloc[name][mask], usage[mask])
        if keep:
            kept[res] = {"usage": usage, **{m: np.where(ok, a, np.nan) for m, a in alloc.items()}}
    return kept if keep else None


@dataclass
class ReportData:
    """What ``report.write_report`` draws, kept small: the plotted series' usage and
    allocations, a few figures per series (for the cluster map), the latest clusters and each
    app's latest cluster."""

    fmt: str
    paths: list[str]
    plotted: dict[str, dict[str, Any]] = field(default_factory=dict)
    apps: dict[str, dict[str, Any]] = field(default_factory=dict)
    clusters: Any | None = None
    app_clusters: dict[str, int] = field(default_factory=dict)


def _app_figures(s: Series) -> dict[str, Any]:
    return {"app": s.key[0], "cpu_mean": float(np.mean(s.cpu)),
            "cpu_p95": float(np.percentile(s.cpu, 95)),
            "mem_mean": None if s.mem is None else float(np.mean(s.mem)),
            "slice": s.labels.get("slice")}


def run_backtest(path: PathLike | Sequence[PathLike], limit_series: int | None = None, *,
                 settings: Settings | None = None, fmt: str = "bitbrains",
                 progress: Progress | None = None, report: PathLike | None = None,
                 report_series: int = 4) -> dict[str, Any]:
    """Backtest ``limit_series`` series of the traces at ``path`` (one path or several, in
    format ``fmt``: one of ``FORMATS``); the ``--json`` document. With ``report``, also write
    the HTML report there, plotting ``report_series`` series."""
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
    t1 = time.perf_counter()
    if progress:
        progress("flow", 0, len(series))
    flow = flow_allocations(series, settings)
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
    data = ReportData(fmt, [str(p) for p in paths], clusters=flow.clusters,
                      app_clusters=flow.app_clusters)
    for n, s in enumerate(series):
        if progress:
            progress("score", n, len(series))
        fp = flow.allocations.get(s.key)
        if fp is None:
            notes["series_without_allocation"] += 1
        keep = report is not None and fp is not None and len(data.plotted) < report_series
        kept = score_series(s, fp, scores, notes, keep=keep)
        if kept is not None:
            data.plotted[s.name] = kept
        if report is not None:
            data.apps[s.name] = _app_figures(s)
    t3 = time.perf_counter()
    rest = scores["rest"]
    result: dict[str, Any] = {
        **{res: {m: rest[res][m].get() for m in methods[res]} for res in resources},
        "steps": rest["cpu"]["fpstream"].steps,
        "series": len(series),
        "first_day": {res: {m: scores["first_day"][res][m].get() for m in methods[res]}
                      for res in resources},
        "notes": {
            "first_day_steps": scores["first_day"]["cpu"]["fpstream"].steps,
            "allocations": int(sum(len(a["ts"]) for a in flow.allocations.values())),
            "cluster_snapshots": flow.snapshots,
            **{k: int(v) for k, v in sorted(notes.items()) if v},
            "seconds": {"read": round(t1 - t0, 2), "flow": round(t2 - t1, 2),
                        "baselines_and_score": round(t3 - t2, 2)},
            "settings": {"decision_period_s": settings.decision_period_s,
                         "window_s": settings.window_s,
                         "allowed_lateness_s": settings.allowed_lateness_s},
            "trace": {"format": fmt, "paths": [str(p) for p in paths]},
        },
    }
    if report is not None:
        from fpstream.backtest.report import write_report

        write_report(Path(report), result, data)
    return result
