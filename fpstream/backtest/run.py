"""Backtest: replay a trace through the real flow and score it against the baselines.

The trace's rows become ``MetricSample`` messages on the metrics topic, in event-time order
(one message per 300 s slot, holding every VM's sample of that slot), fed to
``flows.fleet.build_flow`` over a ``TestingSource`` and run by ``run_main``: the same code
``fpstream run`` runs on Kafka, with ``decision_period_s`` 3600, ``window_s`` 300 (the trace's
step) and no allowed lateness. The allocations it emits (Kafka sink) hold until the next one
for the same VM; an allocation stamped ``T`` (decided from the windows ending at or before
``T``) is scored on the samples after ``T``.

The baselines see the same rows, one at a time, and decide at every hour boundary from the rows
before it. A series is scored from its first hour boundary on: steps before it have no decision
from anyone (``notes.unscored_steps``). Its first day (from its first sample) is scored apart
as cold start (``first_day``); the headline figures are from day 2 on.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from fpstream.backtest.baselines import VPA, Crane, manual, oracle
from fpstream.backtest.score import Score, in_force
from fpstream.backtest.traces import Series, read_bitbrains
from fpstream.settings import Settings

__all__ = ["METHODS", "backtest_settings", "flow_allocations", "run_backtest", "score_series"]

HOUR = 3600.0
DAY = 86_400.0
STEP_S = 300.0
METHODS: tuple[str, ...] = ("fpstream", "vpa", "crane", "manual", "oracle")
RESOURCES: dict[str, str] = {"cpu": "cpu_cores", "mem": "mem_bytes"}

Progress = Callable[[str, int, int], None]  # (phase, done, total)


def backtest_settings(base: Settings | None = None) -> Settings:
    """The protocol's settings: hourly decisions over the trace's native 300 s windows."""
    base = base if base is not None else Settings()
    return replace(base, decision_period_s=HOUR, window_s=STEP_S, allowed_lateness_s=0.0)


def sample_dict(s: Series, i: int) -> dict[str, Any]:
    """Row ``i`` of ``s`` as a wire-contract metric sample (app and instance: the VM)."""
    return {
        "v": 1, "ts": float(s.ts[i]), "app": s.name, "instance": s.name, "interval_s": STEP_S,
        "metrics": {"cpu_cores": float(s.cpu[i]), "mem_bytes": float(s.mem[i]),
                    "disk_read_bps": float(s.disk_read[i]),
                    "disk_write_bps": float(s.disk_write[i]),
                    "net_rx_bps": float(s.net_rx[i]), "net_tx_bps": float(s.net_tx[i])},
        "capacity": {"cpu_cores": float(s.cpu_cap[i]), "mem_bytes": float(s.mem_cap[i])},
    }


class TraceMessages:
    """The trace as Kafka messages, re-iterable and built lazily (a month of 250 VMs would not
    fit in memory as JSON): one message per slot, its samples in time order."""

    def __init__(self, series: Sequence[Series], topic: str, slot_s: float = STEP_S) -> None:
        self.series = series
        self.topic = topic
        self.slot_s = slot_s

    def __iter__(self) -> Iterator[Any]:
        from bytewax.connectors.kafka import KafkaSourceMessage

        rows = [(int(math.ceil(t / self.slot_s)), float(t), k, i)
                for k, s in enumerate(self.series) for i, t in enumerate(s.ts)]
        rows.sort()
        start = 0
        offset = 0
        while start < len(rows):
            end = start
            while end < len(rows) and rows[end][0] == rows[start][0]:
                end += 1
            batch = [sample_dict(self.series[k], i) for _, _, k, i in rows[start:end]]
            newest = rows[end - 1][1]
            yield KafkaSourceMessage(key=None, value=orjson.dumps(batch), topic=self.topic,
                                     partition=0, offset=offset,
                                     timestamp=(1, int(newest * 1000)))
            offset += 1
            start = end


def flow_allocations(series: Sequence[Series], settings: Settings
                     ) -> tuple[dict[str, dict[str, np.ndarray]], Counter[str]]:
    """Run the real flow over the series; per VM, its allocations' ``ts`` and reserves.

    Also counts what else the flow wrote to Kafka (dead letters by reason, anomalies).
    """
    from bytewax.testing import TestingSink, TestingSource, run_main

    from flows.fleet import build_flow
    from fpstream.io.metrics import FlowMetrics

    kafka: list[Any] = []
    redis: list[Any] = []
    source = TestingSource(TraceMessages(series, settings.topic_metrics), batch_size=20)
    flow = build_flow(settings, source=source, kafka_sink=TestingSink(kafka),
                      redis_sink=TestingSink(redis), metrics=FlowMetrics())
    run_main(flow)
    rows: dict[str, list[tuple[float, float, float]]] = {}
    other: Counter[str] = Counter()
    for msg in kafka:
        doc = orjson.loads(msg.value)
        if msg.topic == settings.topic_allocations:
            reserve = doc["reserve"]
            rows.setdefault(doc["app"], []).append(
                (doc["ts"], reserve["cpu_cores"], reserve["mem_bytes"]))
        elif msg.topic == settings.topic_deadletter:
            other[f"deadletter:{doc['reason']}"] += 1
        else:
            other["anomalies"] += 1
    out: dict[str, dict[str, np.ndarray]] = {}
    for app, items in rows.items():
        items.sort()
        a = np.array(items, dtype=np.float64)
        out[app] = {"ts": a[:, 0], "cpu": a[:, 1], "mem": a[:, 2]}
    return out, other


def baseline_decisions(s: Series) -> dict[str, dict[str, np.ndarray]]:
    """VPA and Crane, fed every row, asked at every hour boundary: per method, the decision
    times and the CPU and memory targets."""
    vpa, crane = VPA(), Crane()
    at: list[float] = []
    got: dict[str, list[tuple[float, float]]] = {"vpa": [], "crane": []}
    ts = s.ts.astype(np.float64)
    period = np.ceil(ts / HOUR)
    cpu, mem = s.cpu.tolist(), s.mem.tolist()
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


def score_series(s: Series, fp: dict[str, np.ndarray] | None,
                 scores: dict[str, dict[str, dict[str, Score]]], notes: Counter[str]) -> None:
    """Add one series to ``scores[phase][resource][method]`` (phases ``rest`` and
    ``first_day``)."""
    ts = s.ts.astype(np.float64)
    first_boundary = math.ceil(ts[0] / HOUR) * HOUR
    scored = ts > first_boundary
    first_day = ts < ts[0] + DAY
    notes["unscored_steps"] += int((~scored).sum())
    decisions = baseline_decisions(s)
    usage = {"cpu": s.cpu, "mem": s.mem}
    capacity = {"cpu": s.cpu_cap, "mem": s.mem_cap}
    for res in RESOURCES:
        alloc: dict[str, np.ndarray] = {
            "manual": manual(capacity[res]),
            "oracle": oracle(ts, usage[res], HOUR),
        }
        for name, d in decisions.items():
            alloc[name] = in_force(d["ts"], d[res], ts)
        if fp is None:
            mine = np.full(len(ts), np.nan)
        else:
            mine = in_force(fp["ts"], fp[res], ts)
        missing = scored & np.isnan(mine)
        if missing.any():
            # No allocation from the flow yet: the VM runs with what it was given.
            notes[f"fpstream_fallback_manual_steps_{res}"] += int(missing.sum())
            mine = np.where(np.isnan(mine), capacity[res], mine)
        alloc["fpstream"] = mine
        for phase, mask in (("first_day", scored & first_day), ("rest", scored & ~first_day)):
            for name in METHODS:
                scores[phase][res][name].add(alloc[name][mask], usage[res][mask])


def run_backtest(path: Path | str, limit_series: int | None = None, *,
                 settings: Settings | None = None, fmt: str = "bitbrains",
                 progress: Progress | None = None) -> dict[str, Any]:
    """Backtest ``limit_series`` series of the trace at ``path``; the ``--json`` document."""
    if fmt != "bitbrains":
        raise ValueError(f"unsupported trace format {fmt!r}, expected 'bitbrains'")
    if limit_series is not None and limit_series < 1:
        raise ValueError(f"limit_series must be >= 1, got {limit_series!r}")
    settings = backtest_settings(settings)
    notes: Counter[str] = Counter()
    t0 = time.perf_counter()
    series = list(read_bitbrains(path, limit_series, notes))
    if not series:
        raise ValueError(f"no usable series in {path}")
    t1 = time.perf_counter()
    if progress:
        progress("flow", 0, len(series))
    allocations, other = flow_allocations(series, settings)
    notes.update(other)
    t2 = time.perf_counter()
    scores = {phase: {res: {m: Score() for m in METHODS} for res in RESOURCES}
              for phase in ("rest", "first_day")}
    for n, s in enumerate(series):
        if progress:
            progress("score", n, len(series))
        if s.name not in allocations:
            notes["series_without_allocation"] += 1
        score_series(s, allocations.get(s.name), scores, notes)
    t3 = time.perf_counter()
    rest = scores["rest"]
    return {
        **{res: {m: rest[res][m].get() for m in METHODS} for res in RESOURCES},
        "steps": rest["cpu"]["fpstream"].steps,
        "series": len(series),
        "first_day": {res: {m: scores["first_day"][res][m].get() for m in METHODS}
                      for res in RESOURCES},
        "notes": {
            "first_day_steps": scores["first_day"]["cpu"]["fpstream"].steps,
            "allocations": int(sum(len(a["ts"]) for a in allocations.values())),
            **{k: int(v) for k, v in sorted(notes.items()) if v},
            "seconds": {"read": round(t1 - t0, 2), "flow": round(t2 - t1, 2),
                        "baselines_and_score": round(t3 - t2, 2)},
            "settings": {"decision_period_s": settings.decision_period_s,
                         "window_s": settings.window_s,
                         "allowed_lateness_s": settings.allowed_lateness_s},
        },
    }
