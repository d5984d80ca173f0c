"""Replaying a trace through the real flow: the protocol's settings, the trace's rows as
wire-contract messages, and what the flow's sinks emitted, reduced to allocation rows.

The trace's rows become ``MetricSample`` messages on the metrics topic, in event-time order
(one slot of the trace's native step at a time, at most ``MAX_BATCH`` samples a message), fed
to ``flows.fleet.build_flow`` over a ``TestingSource`` and run by ``run_main``, or as one
Bytewax cluster of N processes (``flow_allocations``): the same code ``fpstream run`` runs on
Kafka, with ``decision_period_s`` 3600, ``window_s`` the trace's step and no allowed lateness.
The sinks consume what the flow writes as it comes: only the compact allocation rows and the
latest cluster snapshot are kept, never the messages. ``fpstream.backtest.run`` scores what
this returns; ``fpstream.backtest.coldstart`` replays PlanetLab days through it.
"""

from __future__ import annotations

import math
import pickle
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from fpstream.backtest.cluster import Member, run_cluster
from fpstream.backtest.traces import PathLike, Series
from fpstream.ingest import Origin
from fpstream.settings import Settings

__all__ = ["DAY", "DEPLOY_LEAD_S", "HOUR", "FlowOutput", "FlowReducer", "TraceMessages",
           "backtest_settings", "deploy_request", "flow_allocations", "settings_doc"]

HOUR = 3600.0
DAY = 86_400.0
STEP_S = 300.0
MAX_BATCH = 500
#: How long before its first sample a series's deploy request announces it.
DEPLOY_LEAD_S = 3600.0
#: The flow's epoch: the whole replay. Without recovery, an epoch's only effect is that its end
#: pickles the state of every stateful step that moved (``snapshot``), which nothing reads.
EPOCH = timedelta(days=1)
RESOURCES: dict[str, str] = {"cpu": "cpu_cores", "mem": "mem_bytes"}
_OPTIONAL_METRICS: dict[str, str] = {"mem": "mem_bytes", "disk_read": "disk_read_bps",
                                     "disk_write": "disk_write_bps", "net_rx": "net_rx_bps",
                                     "net_tx": "net_tx_bps"}

Key = tuple[str, str]  # (app, instance)


#: What the protocol sets, and nothing else: hourly decisions over the trace's native steps.
PROTOCOL_SETTINGS: tuple[str, ...] = ("decision_period_s", "window_s")


def backtest_settings(base: Settings | None = None, step_s: float = STEP_S) -> Settings:
    """``base`` (default: the shipped defaults, as ``fpstream run`` reads them) with the
    protocol's decision period (an hour) and window (the trace's native step): what is
    measured is what ships."""
    base = base if base is not None else Settings()
    return replace(base, decision_period_s=HOUR, window_s=step_s)


def settings_doc(settings: Settings) -> dict[str, Any]:
    """Every setting the flow ran with that bears on its decisions, for the result document
    (connections, topics and secrets left out)."""
    names = ("window_s", "decision_period_s", "allowed_lateness_s", "idle_s", "max_future_s",
             "seed", "change_threshold", "headroom", "recluster_s", "n_clusters",
             "fingerprint_dims", "anomaly_threshold", "violation_budget_cpu",
             "violation_budget_mem", "max_apps", "app_ttl_s", "experiment_name",
             "experiment_mode", "violation_penalty", "guard_budget", "guard_periods")
    doc: dict[str, Any] = {name: getattr(settings, name) for name in names}
    doc["arms"] = orjson.loads(str(settings.arms))
    doc["catalog_path"] = settings.catalog_path or "bundled"
    doc["protocol"] = list(PROTOCOL_SETTINGS)
    return doc


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

    ``series`` are the series, or a function that loads them when the messages are first
    iterated: in a cluster, only the process that reads the input loads the trace.

    ``deploys`` (deploy request documents) go to ``deploy_topic`` in event-time order among
    the samples, all those of one slot in one message before that slot's samples. The model
    stage answers each from the fleet's state at the start of its decision period, whenever
    it arrives among the windows (``fpstream.model``)."""

    def __init__(self, series: Sequence[Series] | Callable[[], Sequence[Series]], topic: str,
                 slot_s: float = STEP_S, max_batch: int = MAX_BATCH,
                 on_progress: Callable[[int, int], None] | None = None,
                 deploys: Sequence[dict[str, Any]] = (), deploy_topic: str = "") -> None:
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

    @property
    def sources(self) -> list[str]:
        """The input partitions (``topic:partition``) the messages come from."""
        topics = [self.topic, *([self.deploy_topic] if self.deploys else [])]
        return [Origin(topic, 0, None).source for topic in topics]

    def __iter__(self) -> Iterator[Any]:
        from bytewax.connectors.kafka import KafkaSourceMessage

        series = self.series() if callable(self.series) else self.series
        rows = [(int(math.ceil(t / self.slot_s)), float(t), k, i)
                for k, s in enumerate(series) for i, t in enumerate(s.ts)]
        rows.sort()
        start = 0
        offset = 0
        pending = list(self.deploys)
        while start < len(rows) or pending:
            slot = rows[start][0] if start < len(rows) else math.inf
            due = 0
            while due < len(pending) and math.ceil(pending[due]["ts"] / self.slot_s) <= slot:
                due += 1
            for i in range(0, due, self.max_batch):
                chunk = pending[i:min(due, i + self.max_batch)]
                yield KafkaSourceMessage(key=None, value=orjson.dumps(chunk),
                                         topic=self.deploy_topic, partition=0, offset=offset,
                                         timestamp=(1, int(chunk[-1]["ts"] * 1000)))
                offset += 1
            del pending[:due]
            if start >= len(rows):
                break
            end = start
            while (end < len(rows) and rows[end][0] == rows[start][0]
                   and end - start < self.max_batch):
                end += 1
            batch = [sample_dict(series[k], i) for _, _, k, i in rows[start:end]]
            newest = rows[end - 1][1]
            yield KafkaSourceMessage(key=None, value=orjson.dumps(batch), topic=self.topic,
                                     partition=0, offset=offset,
                                     timestamp=(1, int(newest * 1000)))
            offset += 1
            start = end
            if self.on_progress is not None and (offset % 200 == 0 or start == len(rows)):
                self.on_progress(start, len(rows))


def load_series(path: PathLike) -> list[Series]:
    """The series ``save_series`` wrote to ``path``."""
    with Path(path).open("rb") as f:
        series: list[Series] = pickle.load(f)  # noqa: S301 - written by this process's parent
    return series


def save_series(series: Sequence[Series], path: PathLike) -> None:
    """Write ``series`` to ``path`` for ``load_series`` in another process."""
    with Path(path).open("wb") as f:
        pickle.dump(list(series), f, protocol=pickle.HIGHEST_PROTOCOL)


@dataclass
class FlowOutput:
    """What the flow wrote, reduced as it came: per (app, instance) its allocations' ``ts``
    and reserves, the counts of everything else (dead letters by reason, anomalies), and the
    latest cluster snapshot (centroids and the app -> cluster map). A snapshot holds only the
    apps still active, so ``app_clusters`` keeps each app's cluster in the latest snapshot
    that held it. Each allocation's ``arm`` (its ``policy``) is kept as an index into
    ``arms``; ``experiments`` holds the flow's newest experiment summary (one, from the fleet
    stage; none without one); ``proactive`` the ``proactive`` allocation documents, per
    (app, instance); ``documents``, when asked for, every allocation document, by id;
    ``processes`` how many processes the flow ran in."""

    allocations: dict[Key, dict[str, np.ndarray]]
    other: Counter[str]
    proactive: dict[Key, dict[str, Any]] = field(default_factory=dict)
    clusters: Any | None = None
    snapshots: int = 0
    app_clusters: dict[str, int] = field(default_factory=dict)
    arms: list[str] = field(default_factory=list)
    experiments: list[dict[str, Any]] = field(default_factory=list)
    documents: list[dict[str, Any]] = field(default_factory=list)
    processes: int = 1

    @classmethod
    def merge(cls, parts: Sequence[FlowOutput]) -> FlowOutput:
        """One output from what the sinks of each process of one flow saw (in process order):
        ``processes`` is how many there were."""
        out = cls({}, Counter(), arms=list(parts[0].arms) if parts else [],
                  processes=len(parts))
        chunks: dict[Key, list[dict[str, np.ndarray]]] = {}
        for part in parts:
            for name in part.arms:
                if name not in out.arms:
                    out.arms.append(name)
            arm = np.array([out.arms.index(name) for name in part.arms], dtype=np.float64)
            for key, a in part.allocations.items():
                chunks.setdefault(key, []).append({**a, "arm": arm[a["arm"].astype(np.intp)]})
            for key, doc in part.proactive.items():
                out.proactive.setdefault(key, doc)
            out.other.update(part.other)
            out.snapshots += part.snapshots
            out.experiments += part.experiments
            out.documents += part.documents
        for key, got in chunks.items():
            if len(got) == 1:
                out.allocations[key] = got[0]
            else:  # a key's allocations come from the worker holding its state: never here
                order = np.argsort(np.concatenate([c["ts"] for c in got]), kind="stable")
                out.allocations[key] = {name: np.concatenate([c[name] for c in got])[order]
                                        for name in got[0]}
        clustered = [(p.clusters.ts, p.clusters.version, i, p) for i, p in enumerate(parts)
                     if p.clusters is not None]
        for *_, part in sorted(clustered, key=lambda c: c[:3]):
            out.app_clusters.update(part.app_clusters)
            out.clusters = part.clusters
        out.documents.sort(key=lambda d: d["id"])
        return out


class FlowReducer:
    """What the sinks of one flow process see, reduced as it comes: ``on_kafka`` and
    ``on_redis`` take the batches the flow writes, ``output()`` is the process's
    ``FlowOutput``. Only the compact allocation rows and the latest cluster snapshot are kept,
    never the messages (all allocation documents with ``keep_documents``)."""

    def __init__(self, settings: Settings, keep_documents: bool = False) -> None:
        self.settings = settings
        self.keep_documents = keep_documents
        self.rows: dict[Key, list[tuple[float, float, float, float]]] = {}
        self.out = FlowOutput({}, Counter(), arms=[p.name for p in settings.policies()])
        self.newest: Any | None = None  # the newest experiment snapshot

    def _arm(self, name: str) -> float:
        arms = self.out.arms
        if name not in arms:
            arms.append(name)  # mode off: the settings' own policy
        return float(arms.index(name))

    def on_kafka(self, items: list[Any]) -> None:
        out = self.out
        for msg in items:
            doc = orjson.loads(msg.value)
            if msg.topic == self.settings.topic_allocations:
                reserve = doc["reserve"]
                key = (doc["app"], doc["instance"])
                self.rows.setdefault(key, []).append(
                    (doc["ts"], reserve.get("cpu_cores", math.nan),
                     reserve.get("mem_bytes", math.nan), self._arm(doc["policy"])))
                if doc.get("kind") == "proactive":
                    out.proactive.setdefault(key, doc)
                if self.keep_documents:
                    out.documents.append(doc)
            elif msg.topic == self.settings.topic_deadletter:
                out.other[f"deadletter:{doc['reason']}"] += 1
            else:
                out.other["anomalies"] += 1

    def on_redis(self, items: list[tuple[str, Any]]) -> None:
        from fpstream.fleet.experiment import ExperimentSnapshot
        from fpstream.io.fleet_step import is_cluster_def

        out = self.out
        for _, item in items:  # (routing key, item)
            if is_cluster_def(item):
                out.clusters = item
                out.snapshots += 1
                out.app_clusters.update(item.apps)
            elif isinstance(item, ExperimentSnapshot) and (self.newest is None or
                                                         item.ts >= self.newest.ts):
                self.newest = item

    def output(self) -> FlowOutput:
        out = self.out
        for key, items in self.rows.items():
            items.sort()
            a = np.array(items, dtype=np.float64)
            out.allocations[key] = {"ts": a[:, 0], "cpu": a[:, 1], "mem": a[:, 2], "arm": a[:, 3]}
        out.experiments = [self.newest.summary] if self.newest is not None else []
        return out


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


def backtest_flow(settings: Settings, messages: TraceMessages,
                  on_kafka: Callable[[list[Any]], None],
                  on_redis: Callable[[list[Any]], None],
                  items: Iterable[Any] | None = None) -> Any:
    """``flows.fleet.build_flow`` over ``messages`` (or ``items``, ``messages`` wrapped), its
    sinks handing batches to ``on_kafka`` and ``on_redis``.

    The model stage waits for the messages' partitions from the start, as ``fpstream run``
    waits for its topics' partitions: within one Bytewax epoch the windows of a message can
    reach the model stage before the markers read with it (deploy requests, an app's first
    sample, the partition's progress), so a partition not yet heard of must hold it back."""
    from bytewax.testing import TestingSource

    from flows.fleet import build_flow
    from fpstream.io.metrics import FlowMetrics

    source = TestingSource(messages if items is None else items, batch_size=20)
    return build_flow(settings, source=source, kafka_sink=consuming_sink(on_kafka),
                      redis_sink=consuming_sink(on_redis), metrics=FlowMetrics(),
                      sources=messages.sources)


def flow_allocations(series: Sequence[Series], settings: Settings,
                     on_progress: Callable[[int, int], None] | None = None,
                     deploys: bool = False, lead_s: float = DEPLOY_LEAD_S, workers: int = 1,
                     keep_documents: bool = False) -> FlowOutput:
    """Run the real flow over the series and collect what it decided (``FlowOutput``);
    ``on_progress(samples sent, samples in all)`` as it goes. With ``deploys``, every series
    with a capacity is announced by a deploy request (``deploy_request``) ``lead_s`` before
    its first sample. With ``keep_documents``, the output also holds every allocation.

    ``workers`` > 1 runs the flow as one Bytewax cluster of that many processes
    (``fpstream.backtest.cluster``), as ``fpstream run`` runs on several: the process that
    owns the input reads the whole trace (it alone loads it, from a file this process
    writes), the per-app steps spread the apps over all processes, the fleet-wide stage sees
    every series, and each process's sinks reduce what it sees (``FlowReducer``) for this
    process to merge. The allocations are the same as on one process."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers!r}")
    requests = ([d for s in series if (d := deploy_request(s, lead_s)) is not None]
                if deploys else [])
    if workers == 1:
        from bytewax.testing import run_main

        reducer = FlowReducer(settings, keep_documents)
        messages = TraceMessages(series, settings.topic_metrics, settings.window_s,
                                 on_progress=on_progress, deploys=requests,
                                 deploy_topic=settings.topic_deploys)
        run_main(backtest_flow(settings, messages, reducer.on_kafka, reducer.on_redis),
                 epoch_interval=EPOCH)
        return FlowOutput.merge([reducer.output()])
    with tempfile.TemporaryDirectory(prefix="fpstream-backtest-") as tmp:
        path = Path(tmp) / "series.pickle"
        save_series(series, path)
        parts = run_cluster(_flow_process, (settings, str(path), requests, keep_documents),
                            workers, on_progress)
    return FlowOutput.merge(parts)


def _flow_process(member: Member, settings: Settings, path: str,
                  requests: list[dict[str, Any]], keep_documents: bool) -> FlowOutput:
    """One process of ``flow_allocations``'s cluster: its part of the flow, and what its
    sinks saw."""
    reducer = FlowReducer(settings, keep_documents)
    messages = TraceMessages(partial(load_series, path), settings.topic_metrics,
                             settings.window_s, on_progress=member.progress, deploys=requests,
                             deploy_topic=settings.topic_deploys)
    member.run(backtest_flow(settings, messages, member.guard("kafka", reducer.on_kafka),
                             member.guard("redis", reducer.on_redis),
                             items=member.guard_iter("read", messages)), EPOCH)
    return reducer.output()
