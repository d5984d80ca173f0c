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
as cold start (``first_day``); the headline figures are from day 2 on. A series with a
provisioned size is announced by a deploy request carrying it (``deploy_request``), an hour
before its first sample: its first hour runs on the flow's proactive allocation, scored in the
``cold_start`` section (``fpstream.backtest.coldstart.series_coldstart``).

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
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from fpstream.backtest.baselines import VPA, Crane, manual, oracle
from fpstream.backtest.traces import FORMATS, PathLike, Series, read_trace
from fpstream.backtest.tune import fit_cost, parse_range
from fpstream.scoring import Score, in_force
from fpstream.settings import Settings

__all__ = ["METHODS", "FlowOutput", "ReportData", "backtest_settings", "flow_allocations",
           "run_backtest", "score_series"]

HOUR = 3600.0
DAY = 86_400.0
STEP_S = 300.0
MAX_BATCH = 500
#: How long before its first sample a series's deploy request announces it.
DEPLOY_LEAD_S = 3600.0
#: The flow's epoch when deploy requests are sent: the input pauses a little longer after each.
DEPLOY_EPOCH = timedelta(seconds=2)
METHODS: tuple[str, ...] = ("fpstream", "vpa", "crane", "manual", "oracle")
EXPERIMENTS: tuple[str, ...] = ("split", "bandit")  # ``run_backtest(experiment=...)``
RESOURCES: dict[str, str] = {"cpu": "cpu_cores", "mem": "mem_bytes"}
_OPTIONAL_METRICS: dict[str, str] = {"mem": "mem_bytes", "disk_read": "disk_read_bps",
                                     "disk_write": "disk_write_bps", "net_rx": "net_rx_bps",
                                     "net_tx": "net_tx_bps"}

Progress = Callable[[str, int, int], None]  # (phase, done, total)
Key = tuple[str, str]  # (app, instance)


def backtest_settings(base: Settings | None = None, step_s: float = STEP_S) -> Settings:
    """The protocol's settings: hourly decisions over the trace's native ``step_s`` windows,
    reserving exactly what the CPU and memory rules choose (their margins are the headroom),
    re-decided every hour (no change threshold), as the protocol has it. Instances are kept
    a week without samples (traces have outages of more than a day: a VM that comes back
    keeps its history)."""
    base = base if base is not None else Settings()
    return replace(base, decision_period_s=HOUR, window_s=step_s, allowed_lateness_s=0.0,
                   headroom=0.0, change_threshold=0.0, experiment_mode="off",
                   app_ttl_s=max(base.app_ttl_s, 7 * DAY))


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


def deploy_request(s: Series, lead_s: float = DEPLOY_LEAD_S) -> dict[str, Any] | None:
    """The deploy request announcing ``s`` ``lead_s`` before its first sample, with what is
    known in advance: its labels and its provisioned size (``None`` without a capacity)."""
    requested = {metric: float(cap[0]) for res, metric in RESOURCES.items()
                 if (cap := s.capacity(res)) is not None and len(cap) and cap[0] > 0}
    if not requested or not len(s.ts):
        return None
    return {"v": 1, "ts": float(s.ts[0]) - lead_s, "app": s.key[0], "instance": s.key[1],
            "labels": dict(s.labels), "requested": requested}


class TraceMessages:
    """The trace as Kafka messages, re-iterable and built lazily (a month of 250 VMs would not
    fit in memory as JSON): the samples of one slot in time order, at most ``max_batch`` a
    message (a slot of thousands of VMs would exceed the decoder's message size limit).

    ``deploys`` (deploy request documents) go to ``deploy_topic`` in event-time order among
    the samples, all those of one slot in one message before that slot's samples, followed by
    a ``pause`` of the input: longer than an epoch, it puts the requests in an epoch of their
    own, and the flow's stateful steps take epochs in order, so the model stage answers them
    before it sees any window of the samples that follow (within one epoch, the deploy path
    and the windows' path may interleave)."""

    def __init__(self, series: Sequence[Series], topic: str, slot_s: float = STEP_S,
                 max_batch: int = MAX_BATCH,
                 on_progress: Callable[[int, int], None] | None = None,
                 deploys: Sequence[dict[str, Any]] = (), deploy_topic: str = "",
                 pause: timedelta | None = None) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch!r}")
        if deploys and not deploy_topic:
            raise ValueError("deploy requests need a deploy_topic")
        self.series = series
        self.topic = topic
        self.slot_s = slot_s
        self.max_batch = max_batch
        self.on_progress = on_progress  # (samples sent, samples in all)
        self.deploys = sorted(deploys, key=lambda d: (d["ts"], d["app"], d["instance"]))
        self.deploy_topic = deploy_topic
        self.pause = pause

    def __iter__(self) -> Iterator[Any]:
        from bytewax.connectors.kafka import KafkaSourceMessage
        from bytewax.testing import TestingSource

        rows = [(int(math.ceil(t / self.slot_s)), float(t), k, i)
                for k, s in enumerate(self.series) for i, t in enumerate(s.ts)]
        rows.sort()
        start = 0
        offset = 0
        pending = list(self.deploys)
        while start < len(rows) or pending:
            slot = rows[start][0] if start < len(rows) else math.inf
            due = 0
            while due < len(pending) and math.ceil(pending[due]["ts"] / self.slot_s) <= slot:
                due += 1
            if due:
                for i in range(0, due, self.max_batch):
                    chunk = pending[i:min(due, i + self.max_batch)]
                    yield KafkaSourceMessage(key=None, value=orjson.dumps(chunk),
                                             topic=self.deploy_topic, partition=0,
                                             offset=offset,
                                             timestamp=(1, int(chunk[-1]["ts"] * 1000)))
                    offset += 1
                del pending[:due]
                if self.pause is not None:
                    yield TestingSource.PAUSE(self.pause)
            if start >= len(rows):
                break
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
            if self.on_progress is not None and (offset % 200 == 0 or start == len(rows)):
                self.on_progress(start, len(rows))


@dataclass
class FlowOutput:
    """What the flow wrote, reduced as it came: per (app, instance) its allocations' ``ts``
    and reserves, the counts of everything else (dead letters by reason, anomalies), and the
    latest cluster snapshot (centroids and the app -> cluster map). A snapshot holds only the
    apps still active, so ``app_clusters`` keeps each app's cluster in the latest snapshot
    that held it. Each allocation's ``arm`` (its ``policy``) is kept as an index into
    ``arms``; ``experiments`` holds the newest experiment summary of each flow process;
    ``proactive`` the ``proactive`` allocation documents, per (app, instance); ``processes``
    how many flow processes shared the series."""

    allocations: dict[Key, dict[str, np.ndarray]]
    other: Counter[str]
    proactive: dict[Key, dict[str, Any]] = field(default_factory=dict)
    clusters: Any | None = None
    snapshots: int = 0
    app_clusters: dict[str, int] = field(default_factory=dict)
    arms: list[str] = field(default_factory=list)
    experiments: list[dict[str, Any]] = field(default_factory=list)
    processes: int = 1


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


def flow_allocations(series: Sequence[Series], settings: Settings,
                     on_progress: Callable[[int, int], None] | None = None,
                     deploys: bool = False, lead_s: float = DEPLOY_LEAD_S,
                     epoch: timedelta = DEPLOY_EPOCH) -> FlowOutput:
    """Run the real flow over the series and collect what it decided (``FlowOutput``);
    ``on_progress(samples sent, samples in all)`` as it goes. With ``deploys``, every series
    with a capacity is announced by a deploy request (``deploy_request``) ``lead_s`` before
    its first sample, and the flow runs in epochs of ``epoch``."""
    from bytewax.testing import TestingSource, run_main

    from flows.fleet import build_flow
    from fpstream.fleet.experiment import ExperimentSnapshot
    from fpstream.io.fleet_step import is_cluster_def
    from fpstream.io.metrics import FlowMetrics

    rows: dict[Key, list[tuple[float, float, float, float]]] = {}
    out = FlowOutput({}, Counter(), arms=[p.name for p in settings.policies()])
    newest: list[ExperimentSnapshot] = []

    def arm_index(name: str) -> float:
        if name not in out.arms:
            out.arms.append(name)  # mode off: the settings' own policy
        return float(out.arms.index(name))

    def on_kafka(items: list[Any]) -> None:
        for msg in items:
            doc = orjson.loads(msg.value)
            if msg.topic == settings.topic_allocations:
                reserve = doc["reserve"]
                rows.setdefault((doc["app"], doc["instance"]), []).append(
                    (doc["ts"], reserve.get("cpu_cores", math.nan),
                     reserve.get("mem_bytes", math.nan), arm_index(doc["policy"])))
                if doc.get("kind") == "proactive":
                    out.proactive.setdefault((doc["app"], doc["instance"]), doc)
            elif msg.topic == settings.topic_deadletter:
                out.other[f"deadletter:{doc['reason']}"] += 1
            else:
                out.other["anomalies"] += 1

    def on_redis(items: list[tuple[str, Any]]) -> None:
        for _, item in items:  # (routing key, item)
            if is_cluster_def(item):
                out.clusters = item
                out.snapshots += 1
                out.app_clusters.update(item.apps)
            elif isinstance(item, ExperimentSnapshot) and (not newest or
                                                         item.ts >= newest[0].ts):
                newest[:] = [item]

    requests = ([d for s in series if (d := deploy_request(s, lead_s)) is not None]
                if deploys else [])
    source = TestingSource(TraceMessages(series, settings.topic_metrics, settings.window_s,
                                         on_progress=on_progress, deploys=requests,
                                         deploy_topic=settings.topic_deploys,
                                         pause=epoch * 1.2), batch_size=20)
    flow = build_flow(settings, source=source, kafka_sink=consuming_sink(on_kafka),
                      redis_sink=consuming_sink(on_redis), metrics=FlowMetrics())
    run_main(flow, epoch_interval=epoch if requests else None)
    for key, items in rows.items():
        items.sort()
        a = np.array(items, dtype=np.float64)
        out.allocations[key] = {"ts": a[:, 0], "cpu": a[:, 1], "mem": a[:, 2], "arm": a[:, 3]}
    out.experiments = [newest[0].summary] if newest else []
    return out


def _shard_main(shard: int, series: Sequence[Series], settings: Settings, queue: Any,
                deploys: bool) -> None:
    """A worker process of ``sharded_flow_allocations``: run the flow, report through
    ``queue``."""
    try:
        out = flow_allocations(series, settings,
                               lambda done, total: queue.put(("progress", shard, done, total)),
                               deploys)
        queue.put(("result", shard, out, None))
    except BaseException as ex:  # reported to the parent, which raises
        queue.put(("error", shard, f"{type(ex).__name__}: {ex}", None))


def sharded_flow_allocations(series: Sequence[Series], settings: Settings, workers: int,
                             progress: Progress | None = None,
                             deploys: bool = False) -> FlowOutput:
    """``flow_allocations`` over ``workers`` processes, the series dealt round-robin.

    Each process runs the whole flow over its share, so the fleet-wide models (clusters, the
    global need model) see only that share; CPU and memory reservations are chosen per
    instance (``fpstream.selector``) and do not depend on the sharing. Cluster ids of shard
    ``i`` are offset by ``1000 * i`` in the merged output.
    """
    def report(done: int, total: int) -> None:
        if progress:
            progress("flow", done, total)

    if workers <= 1 or len(series) < 2:
        return flow_allocations(series, settings, report, deploys)
    import multiprocessing as mp
    import queue as queue_mod

    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    shards = [list(series[i::workers]) for i in range(workers)]
    procs = [ctx.Process(target=_shard_main, args=(i, shard, settings, q, deploys),
                         daemon=True)
             for i, shard in enumerate(shards) if shard]
    for proc in procs:
        proc.start()
    results: dict[int, FlowOutput] = {}
    sent = [0] * len(procs)
    totals = [sum(len(s) for s in shard) for shard in shards if shard]
    try:
        while len(results) < len(procs):
            try:
                kind, shard, payload, extra = q.get(timeout=5.0)
            except queue_mod.Empty:
                dead = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
                if dead:
                    raise RuntimeError(f"a backtest flow process died (exit {dead[0]})") from None
                continue
            if kind == "progress":
                sent[shard] = payload
                report(sum(sent), sum(totals))
            elif kind == "result":
                results[shard] = payload
            else:
                raise RuntimeError(f"backtest flow shard {shard} failed: {payload}")
    finally:
        for proc in procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
    merged = FlowOutput({}, Counter(), processes=len(results))
    cluster_defs: list[Any] = []
    for shard in sorted(results):
        got = results[shard]
        merged.allocations.update(got.allocations)
        merged.proactive.update(got.proactive)
        merged.other.update(got.other)
        merged.snapshots += got.snapshots
        merged.experiments += got.experiments
        if len(got.arms) > len(merged.arms):  # the same settings: one list, maybe extended
            merged.arms = got.arms
        merged.app_clusters.update({a: c + 1000 * shard for a, c in got.app_clusters.items()})
        if got.clusters is not None:
            cluster_defs += [replace(c, id=c.id + 1000 * shard) for c in got.clusters.clusters]
            merged.clusters = replace(got.clusters, clusters=tuple(cluster_defs),
                                      apps=dict(merged.app_clusters))
    return merged


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
                 notes: Counter[str], keep: bool = False,
                 arm_scores: dict[str, dict[int, Score]] | None = None,
                 ) -> dict[str, Any] | None:
    """Add one series to ``scores[phase][resource][method]`` (phases ``rest`` and
    ``first_day``), for the resources and methods ``scores`` holds.

    With ``arm_scores`` (``[resource][arm index]``), also score the day-2-on steps under an
    allocation of the flow by the experiment arm of that allocation (``fp["arm"]``).

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
        if arm_scores is not None and fp is not None:
            arm = in_force(fp["ts"], fp["arm"], ts)  # NaN: no allocation of the flow yet
            for k in np.unique(arm[ok & ~first_day & ~np.isnan(arm)]).astype(int).tolist():
                mask = ok & ~first_day & (arm == k)
                arm_scores[res].setdefault(k, Score()).add(mine[mask], usage[mask])
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


def experiment_result(mode: str, settings: Settings, flow: FlowOutput,
                      arm_scores: dict[str, dict[int, Score]]) -> dict[str, Any]:
    """The ``experiment`` section: per arm and resource, over the day-2-on steps under an
    allocation of that arm (the allocation in force carries its arm as ``policy``), the
    ``waste`` and ``viol`` of ``Score``, ``reward`` = -waste - violation_penalty * viol, and
    ``share`` (of the steps under any arm's allocation); waste, viol and reward are ``None``
    for an arm without steps.

    ``chosen``: among the arms with steps on every resource and a violation rate no higher
    than the conservative arm's (largest quantile + headroom, the experiment's baseline) on
    every resource, the one with the highest reward averaged over the resources (ties: the
    earlier arm); ``None`` when no arm qualifies. ``flow`` is the flow's own experiment
    summary (per flow process): periods scored, guard-rail moves and assignment shares.
    """
    policies = settings.policies()
    penalty = settings.violation_penalty
    conservative = max(policies, key=lambda p: p.quantile + p.headroom).name
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


def parse_target(spec: float | str) -> dict[str, float]:
    """``0.02`` or ``"cpu=0.023,mem=0.0008"`` -> a violation target per resource (``"vpa"``,
    VPA's own rate on the tuning series, is resolved by ``run_backtest``).

    >>> parse_target("cpu=0.023,mem=0.0008"), parse_target(0.02)
    ({'cpu': 0.023, 'mem': 0.0008}, {'cpu': 0.02, 'mem': 0.02})
    """
    try:
        if isinstance(spec, str) and "=" in spec:
            out = {k.strip(): float(v) for k, v in (p.split("=", 1) for p in spec.split(","))}
        else:
            out = dict.fromkeys(RESOURCES, float(spec))
    except ValueError as ex:
        raise ValueError(f"bad target violation {spec!r}: a rate or cpu=R,mem=R") from ex
    for k, v in out.items():
        if k not in RESOURCES or not 0.0 <= v < 1.0:
            raise ValueError(f"bad target violation {spec!r}: resources {list(RESOURCES)}, "
                             "rates in [0, 1)")
    return out


def vpa_violation(series: Sequence[Series]) -> dict[str, float]:
    """VPA's violation rate per resource, day 2 on, over ``series`` (unrounded)."""
    resources = [r for r in RESOURCES if any(s.usage(r) is not None for s in series)]
    scores = new_scores(resources, {r: ["vpa"] for r in resources})
    for s in series:
        score_series(s, None, scores, Counter())
    return {r: scores["rest"][r]["vpa"].violations / max(scores["rest"][r]["vpa"].steps, 1)
            for r in resources}


def _tune(series: Sequence[Series], settings: Settings, target_viol: float | str,
          tune_on: str | None, progress: Progress | None,
          workers: int = 1) -> tuple[Settings, dict[str, Any]]:
    """Fit the violation prices on the ``tune_on`` series; the settings that use them. With
    ``workers`` > 1, the resources are fitted in parallel processes."""
    chosen = (list(series) if tune_on is None
              else [series[i] for i in parse_range(tune_on, len(series))])
    if not chosen:
        raise ValueError(f"tune_on {tune_on!r} selects no series")
    fitted: dict[str, Any] = {}
    costs: dict[str, float] = {}
    if target_viol == "vpa":
        targets = vpa_violation(chosen)
    else:
        targets = parse_target(target_viol)
    todo = [r for r in targets if any(s.usage(r) is not None for s in chosen)]
    if progress:
        progress("tune", 0, len(todo))
    pool = None
    if workers > 1 and len(todo) > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        pool = ProcessPoolExecutor(min(workers, len(todo)), mp_context=mp.get_context("spawn"))
    try:
        futures = {res: pool.submit(fit_cost, chosen, res, targets[res]) if pool else None
                   for res in todo}
        for n, res in enumerate(todo):
            future = futures[res]
            cost, got = (future.result() if future is not None
                         else fit_cost(chosen, res, targets[res]))
            costs[res] = cost
            fitted[res] = {"cost": cost, **got}
            if progress:
                progress("tune", n + 1, len(todo))
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    settings = replace(settings, violation_cost_cpu=costs.get("cpu", settings.violation_cost_cpu),
                       violation_cost_mem=costs.get("mem", settings.violation_cost_mem))
    return settings, {"target_viol": targets, "tuned_on": tune_on or "all",
                      "tuned_series": len(chosen), "fit": fitted}


def run_backtest(path: PathLike | Sequence[PathLike], limit_series: int | None = None, *,
                 settings: Settings | None = None, fmt: str = "bitbrains",
                 progress: Progress | None = None, report: PathLike | None = None,
                 report_series: int = 4, target_viol: float | str | None = None,
                 tune_on: str | None = None, score_on: str | None = None,
                 workers: int = 1, experiment: str | None = None) -> dict[str, Any]:
    """Backtest ``limit_series`` series of the traces at ``path`` (one path or several, in
    format ``fmt``: one of ``FORMATS``); the ``--json`` document. With ``report``, also write
    the HTML report there, plotting ``report_series`` series.

    With ``target_viol``, the violation prices are first fitted (``fpstream.backtest.tune``)
    on the series at positions ``tune_on`` (``"1-125"``; default: all) to that violation
    rate; only the series at ``score_on`` (default: all) then run through the flow and are
    scored, so tuning on one part and reporting the untouched rest is two ranges.
    ``workers`` > 1 runs the flow in that many processes (``sharded_flow_allocations``).

    With ``experiment`` (``split`` or ``bandit``), the flow runs that A/B experiment over the
    settings' arms (default: ``DEFAULT_ARMS``) and the result gets an ``experiment`` section
    (``experiment_result``)."""
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
    tuning: dict[str, Any] | None = None
    if target_viol is not None:
        settings, tuning = _tune(series, settings, target_viol, tune_on, progress, workers)
    if score_on is not None:
        series = [series[i] for i in parse_range(score_on, len(series))]
        if not series:
            raise ValueError(f"score_on {score_on!r} selects no series")
    t1 = time.perf_counter()
    # Series with a provisioned size are announced by a deploy request carrying it, so their
    # first hour runs on a proactive allocation and is scored as cold start.
    deploys = any(deploy_request(s) is not None for s in series)
    flow = sharded_flow_allocations(series, settings, workers, progress, deploys)
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
    data = ReportData(fmt, [str(p) for p in paths], clusters=flow.clusters,
                      app_clusters=flow.app_clusters)
    for n, s in enumerate(series):
        if progress:
            progress("score", n, len(series))
        fp = flow.allocations.get(s.key)
        if fp is None:
            notes["series_without_allocation"] += 1
        keep = report is not None and fp is not None and len(data.plotted) < report_series
        kept = score_series(s, fp, scores, notes, keep=keep, arm_scores=arm_scores)
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
            "violation_cost": {"cpu_cores": settings.violation_cost_cpu,
                               "mem_bytes": settings.violation_cost_mem},
        },
    }
    if deploys:
        from fpstream.backtest.coldstart import series_coldstart

        # With several flow processes each learns from its share of the fleet only, while
        # the baselines know all of it: the section says so.
        result["cold_start"] = {**series_coldstart(series, flow.proactive),
                                "flow_processes": flow.processes}
    if tuning is not None:
        result["tuning"] = {**tuning, "scored_on": score_on or "all"}
    if experiment is not None and arm_scores is not None:
        result["experiment"] = experiment_result(experiment, settings, flow, arm_scores)
    if report is not None:
        from fpstream.backtest.report import write_report

        write_report(Path(report), result, data)
    return result
