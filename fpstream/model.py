"""The model stage: fingerprint, cluster, predict, check and allocate, for the whole fleet.

One ``ModelStage`` sees every app (the flow routes it all under one key): it sees one event per
instance per closed window, far fewer than raw samples, and global models learn from every app.

Determinism. Windows of different apps reach this stage in an order that depends on how
partitions were spread over workers and how fast each worker went, but each app's own snapshots
arrive in event-time order (one worker owns an app). So the stage keeps every app's newest event
time and the progress of every input partition, and applies what it buffered in event-time
order only below the slowest of them (a low watermark, as in Flink or Beam), and everything at
end of stream. Windows are applied a decision period at a time, once the watermark has passed
the period's end: decisions are made at period ends anyway. A deploy request stamped within a
period is answered from the state at that period's start (every window up to it applied, none
after), as soon as the watermark has passed that start: usually on arrival, at most about the
watermark's lag (``allowed_lateness_s`` plus a window) after it. So a replay gives the same
allocations, proactive ones included, on one process or several, after a restart from a
snapshot, however far one worker runs ahead. An app joins the watermark when its first snapshot
or its deploy request arrives, or its first sample is read; a brand-new app that sends samples
without announcing itself may find the stage already past its first windows (those snapshots
are counted as ``out_of_order``). An app or partition that has sent nothing for ``idle_s``
seconds of arrival time stops holding the watermark back (the idleness rule of those systems),
so a dead agent does not stall the fleet; arrival time is passed in by the caller and decides
only when items are applied, never what is learned from them.

Containment. An exception while one window is learned from or decided on, or one deploy request
is answered, is contained: the item comes back as a ``model_error`` dead letter, the instance's
state is dropped (it starts afresh with its next window), and the stage goes on.

Bounded. At most ``max_apps`` apps are held; the least recently active one (in event-time
order) is evicted first.
"""

from __future__ import annotations

import heapq
import math
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from river import stats

from fpstream.anomaly import ResidualDetector
from fpstream.catalog import Catalog
from fpstream.clustering import FleetClusters
from fpstream.coldstart import ColdStart
from fpstream.events import RESOURCES, Allocation, Anomaly, DeadLetter, DeployRequest
from fpstream.experiment import Experiment, ExperimentSnapshot, score_period
from fpstream.fingerprint import Fingerprinter
from fpstream.ingest import item_letter
from fpstream.policy import Policy, changed_materially
from fpstream.predict import NeedPredictor
from fpstream.profile import ProfileSnapshot
from fpstream.selector import OFFSETS, RuleSelector
from fpstream.settings import Settings
from fpstream.vectors import predictor_features, profile_vector


def _rounded(values: dict[str, float]) -> dict[str, float]:
    """Output precision: millicores and whole bytes, so the last bits of float sums (which
    depend on how numpy batched a computation) never show in an allocation."""
    return {k: round(v, 3) if k == "cpu_cores" else float(round(v)) for k, v in values.items()}


@dataclass(frozen=True, slots=True)
class ClusterDef:
    """What Redis publishes about a cluster: where it is, how big, what its members need."""

    id: int
    ts: float
    version: int
    members: int
    centroid: tuple[float, ...]
    needs: dict[str, float]


@dataclass(frozen=True, slots=True)
class ClusterSnapshot:
    """The fleet's clusters after a re-clustering: definitions and each app's cluster.

    Published as a whole, so readers never see clusters that no longer exist."""

    ts: float
    version: int
    clusters: tuple[ClusterDef, ...]
    apps: dict[str, int]


Output = Allocation | Anomaly | ClusterSnapshot | ExperimentSnapshot | DeadLetter

# Within a decision period, deploy requests come before windows (see the module docstring).
_DEPLOY, _WINDOW = 0, 1

#: Resources an experiment period is scored on (window peak against the reserve in force).
SCORED_RESOURCES: tuple[str, ...] = ("cpu_cores", "mem_bytes")


@dataclass(slots=True)
class InstanceState:
    app: str
    instance: str
    period_end: float | None = None
    peak: dict[str, float] = field(default_factory=dict)
    predicted: dict[str, float] | None = None
    inputs: dict[str, dict[str, float]] | None = None
    last: ProfileSnapshot | None = None
    history: deque[dict[str, float]] = field(default_factory=lambda: deque(maxlen=12))
    seq: int = 0
    proactive_sent: bool = False
    reserve: dict[str, float] | None = None
    instance_type: str | None = None
    last_ts: float = 0.0
    selectors: dict[str, RuleSelector] = field(default_factory=dict)
    #: The experiment arm whose allocation is in force (``reserve``), if any.
    arm: str | None = None
    #: Per scored resource, the peak of each window of the period under ``reserve``.
    scored: dict[str, list[float]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ModelConfig:
    decision_period_s: float = 300.0
    recluster_s: float = 3600.0
    idle_s: float = 30.0
    n_clusters: int = 6
    dims: int = 4
    seed: int = 42
    change_threshold: float = 0.10
    anomaly_threshold: float = 4.0
    #: Price of a violated window per selected resource (``fpstream.selector``).
    violation_cost: tuple[tuple[str, float], ...] = (
        ("cpu_cores", 3.0), ("mem_bytes", float(2**40)))
    ttl_s: float = 86_400.0
    max_apps: int = 100_000

    @classmethod
    def from_settings(cls, s: Settings) -> ModelConfig:
        return cls(
            decision_period_s=s.decision_period_s, recluster_s=s.recluster_s,
            idle_s=s.idle_s, n_clusters=s.n_clusters, dims=s.fingerprint_dims,
            seed=s.seed, change_threshold=s.change_threshold,
            anomaly_threshold=s.anomaly_threshold, ttl_s=s.app_ttl_s, max_apps=s.max_apps,
            violation_cost=(("cpu_cores", s.violation_cost_cpu),
                            ("mem_bytes", s.violation_cost_mem)),
        )


@dataclass(slots=True)
class StageStats:
    """Counters the flow turns into Prometheus metrics after each call."""

    out_of_order: int = 0  # items that arrived after the stage had passed their time
    expired_instances: int = 0
    expired_apps: int = 0
    evicted_apps: int = 0
    errors: int = 0  # exceptions contained (each item became a model_error dead letter)


class ModelStage:
    def __init__(self, config: ModelConfig, catalog: Catalog, policy: Policy,
                 sources: Sequence[str] = (), experiment: Experiment | None = None) -> None:
        """``experiment`` chooses each instance's policy (arm) per decision period; without
        one, ``policy`` is the only arm (mode ``off``). ``policy.quantile`` is the quantile
        the need model learns, whatever the arms."""
        self.config = config
        self.catalog = catalog
        self.policy = policy
        self.experiment = (experiment if experiment is not None
                           else Experiment("default", [policy], mode="off"))
        self.fingerprinter = Fingerprinter(dims=config.dims, seed=config.seed)
        self.clusters = FleetClusters(k=config.n_clusters, seed=config.seed,
                                      max_keys=config.max_apps)
        self.predictor = NeedPredictor(quantile=policy.quantile, seed=config.seed, lr=0.003)
        self.detector = ResidualDetector(threshold=config.anomaly_threshold)
        self.coldstart = ColdStart(seed=config.seed, max_keys=config.max_apps,
                                   max_instances=config.max_apps)
        self.instances: dict[tuple[str, str], InstanceState] = {}
        # app -> its instances, the least recently active app first
        self.apps: OrderedDict[str, set[str]] = OrderedDict()
        self.error = {r: stats.Mean() for r in RESOURCES}
        self.stats = StageStats()
        # (period start, deploy or window, ts, app, instance, arrival, item)
        self._buffer: list[tuple[float, int, float, str, str, int,
                                 ProfileSnapshot | DeployRequest]] = []
        self._arrivals = 0
        self._app_ts: dict[str, float] = {}  # newest snapshot time per active app
        self._app_arrival: dict[str, float] = {}  # when it arrived (caller's clock)
        self._low: list[tuple[float, str]] = []  # (newest ts, app); stale entries skipped
        # Per input partition: how far it has been read, and when that was last heard.
        self._source_ts: dict[str, float] = dict.fromkeys(sources, -math.inf)
        self._source_arrival: dict[str, float | None] = dict.fromkeys(sources)
        self._first_arrival: float | None = None
        self._drained = -math.inf  # the newest window applied
        self._applied = -math.inf  # how far in event time the applied items reach
        self._next_recluster: float | None = None

    # -- entry points ---------------------------------------------------------------------

    def on_profile(self, snap: ProfileSnapshot, arrived: float = 0.0) -> list[Output]:
        """Buffer a snapshot; process every buffered one below the low watermark.

        ``arrived`` is the caller's clock (seconds), used only to tell idle apps.
        """
        self._heard(arrived)
        self._push(_WINDOW, snap)
        self._join(snap.app, snap.ts, arrived)
        return self._drain(self.low_watermark(arrived), inclusive=False)

    def _push(self, rank: int, item: ProfileSnapshot | DeployRequest) -> None:
        self._arrivals += 1
        start = self._period_start(item.ts)
        if start < self._applied:
            self.stats.out_of_order += 1
        heapq.heappush(self._buffer, (start, rank, item.ts, item.app, item.instance,
                                      self._arrivals, item))

    def _period_start(self, ts: float) -> float:
        """The start of the decision period ``(start, start + period]`` that holds ``ts``."""
        period = self.config.decision_period_s
        return (math.ceil(ts / period) - 1) * period

    def on_progress(self, source: str, ts: float, arrived: float = 0.0) -> list[Output]:
        """An input partition has been read up to ``ts``."""
        self._heard(arrived)
        self._source_ts[source] = max(self._source_ts.get(source, -math.inf), ts)
        self._source_arrival[source] = arrived
        return self._drain(self.low_watermark(arrived), inclusive=False)

    def on_app_seen(self, app: str, ts: float, arrived: float = 0.0) -> list[Output]:
        """An app's first sample was read: hold the watermark for its first windows."""
        self._heard(arrived)
        if app not in self._app_ts:
            self._join(app, ts, arrived)
        return []

    def _heard(self, arrived: float) -> None:
        if self._first_arrival is None:
            self._first_arrival = arrived

    def resumed(self, now: float) -> None:
        """After a restart from a snapshot: arrival times came from another process's clock
        (maybe another machine's), so every app and partition counts as just heard from."""
        self._app_arrival = dict.fromkeys(self._app_arrival, now)
        self._source_arrival = {src: None if at is None else now
                                for src, at in self._source_arrival.items()}
        if self._first_arrival is not None:
            self._first_arrival = now

    def on_idle(self, now: float) -> list[Output]:
        """Called when nothing arrived for a while: idle apps stop holding others back."""
        return self._drain(self.low_watermark(now), inclusive=False)

    def _join(self, app: str, ts: float, arrived: float) -> None:
        if self._app_ts.get(app, -math.inf) < ts:
            self._app_ts[app] = ts
            heapq.heappush(self._low, (ts, app))
        self._app_arrival[app] = arrived

    def low_watermark(self, now: float) -> float:
        """The event time below which no more snapshots are expected: the slowest active app's
        newest, and no further than any active input partition has been read."""
        start = now if self._first_arrival is None else self._first_arrival
        read = [ts for src, ts in self._source_ts.items()
                if now - (self._source_arrival[src] or start) <= self.config.idle_s]
        return min(self._apps_low(now), min(read, default=math.inf))

    def _apps_low(self, now: float) -> float:
        while self._low:
            ts, app = self._low[0]
            if self._app_ts.get(app) != ts:
                heapq.heappop(self._low)  # superseded by a newer snapshot of the app
            elif now - self._app_arrival[app] > self.config.idle_s:
                heapq.heappop(self._low)
                del self._app_ts[app]  # idle: it rejoins with its next snapshot
                del self._app_arrival[app]
            else:
                return ts
        return math.inf  # no active app: nothing can still arrive before what is buffered

    def flush(self) -> list[Output]:
        """End of stream: process everything still buffered, then the experiment's summary
        as of the newest event time processed."""
        out = self._drain(math.inf)
        if math.isfinite(self._drained):
            out.append(self.experiment.snapshot(self._drained))
        return out

    def on_deploy(self, req: DeployRequest, arrived: float = 0.0) -> list[Output]:
        """Buffer a deploy request; it is answered in event-time order (module docstring)."""
        self._heard(arrived)
        if req.app not in self.apps:
            # A new app joins the low watermark from its announcement, so that its first
            # windows are not overtaken by apps on a faster worker.
            self._join(req.app, req.ts, arrived)
        self._push(_DEPLOY, req)
        return self._drain(self.low_watermark(arrived), inclusive=False)

    def _answer(self, req: DeployRequest) -> list[Output]:
        """Answer a deploy request with a ``proactive`` allocation.

        Its id ends in ``/0``: a proactive allocation precedes every resize of the instance
        (sequence 1 on), so a late or redelivered request can never override a resize.
        """
        inst = self.instances.get((req.app, req.instance))
        if inst is not None and inst.proactive_sent:
            return []  # a redelivered request changes nothing
        known = [self.instances[(req.app, i)] for i in sorted(self.apps.get(req.app, ()))]
        own = [s.predicted for s in known if s.predicted]
        # Cold start answers from the app's earlier instances first, then from its labels.
        guess = self.coldstart.predict(req.labels, req.requested, app=req.app)
        need, confidence = guess.need, guess.confidence
        cluster: int | None = guess.cluster
        if own and guess.source != "app":  # app known but no cold-start history (resumed)
            need = {r: max(p.get(r, 0.0) for p in own) for r in RESOURCES}
            cluster, confidence = self.clusters.cluster_of(req.app), 0.9
        if inst is None:
            inst = self._instance(req.app, req.instance, req.ts)
        inst.proactive_sent = True
        # The instance's arm, looked up without drawing from the bandit: the bandit draws
        # when the instance's periods are decided.
        arm = self.experiment.peek(req.app, req.instance)
        decision = arm.decide(need, self.catalog)
        # Cold-start feedback: the proactive reserve is scored over the first hour.
        self.coldstart.track(req.app, req.instance, decision.reserve, guess.source)
        return [self._allocation(inst, 0, req.ts, "proactive", decision, need,
                                 -1 if cluster is None else cluster, confidence)]

    # -- ordered processing ---------------------------------------------------------------

    def _drain(self, until: float, inclusive: bool = True) -> list[Output]:
        """Apply buffered items in order: a deploy request once ``until`` has passed its
        period's start, a window once it has passed its period's end (everything with
        ``inclusive``)."""
        out: list[Output] = []
        period = self.config.decision_period_s
        buffer = self._buffer
        while buffer:
            start, rank, ts = buffer[0][:3]
            due = start if rank == _DEPLOY else start + period
            if not (inclusive or due < until):
                break
            item = heapq.heappop(buffer)[-1]
            self._applied = max(self._applied, start if rank == _DEPLOY else ts)
            if rank == _WINDOW:
                assert isinstance(item, ProfileSnapshot)
                self._drained = max(self._drained, ts)
                out.extend(self._maybe_recluster(ts))
            out.extend(self._contained(item))
        return out

    def _contained(self, item: ProfileSnapshot | DeployRequest) -> list[Output]:
        try:
            if isinstance(item, DeployRequest):
                return self._answer(item)
            return self._process(item)
        except Exception as ex:  # noqa: BLE001 - no item may stop the stage
            self.stats.errors += 1
            key = (item.app, item.instance)
            if key in self.instances:
                self._drop_instance(key)
            what = "deploy request" if isinstance(item, DeployRequest) else "window"
            doc: dict[str, object] = {"app": item.app, "instance": item.instance, "ts": item.ts,
                                      "item": what}
            if isinstance(item, ProfileSnapshot):
                doc["peak"] = item.peak
            error = f"step model: {type(ex).__name__}: {ex} (the {what}'s instance starts afresh)"
            return [item_letter(item.ts, "model_error", error, doc)]

    def _process(self, snap: ProfileSnapshot) -> list[Output]:
        x = profile_vector(snap)
        self.fingerprinter.learn_one(x)
        z = self.fingerprinter.transform_one(x)
        cluster = self.clusters.assign(snap.app, z)
        self.coldstart.learn(snap.labels, snap.capacity, cluster, snap.peak,
                             app=snap.app, instance=snap.instance, ts=snap.ts)
        inst = self.instances.get((snap.app, snap.instance))
        if inst is None:
            inst = self._instance(snap.app, snap.instance, snap.ts)
        else:
            self.apps.move_to_end(snap.app)
        inst.last_ts = snap.ts
        period = self.config.decision_period_s
        out: list[Output] = []
        if inst.period_end is None:
            inst.period_end = math.ceil(snap.ts / period) * period
        elif snap.ts > inst.period_end:
            # A gap in the instance's windows: close the period it left open.
            out.extend(self._close_period(inst, z, cluster))
            inst.period_end = math.ceil(snap.ts / period) * period
        for r in RESOURCES:
            inst.peak[r] = max(inst.peak.get(r, 0.0), snap.peak.get(r, 0.0))
        for r, selector in inst.selectors.items():
            selector.observe(snap.peak.get(r, 0.0))
        inst.last = snap
        if inst.reserve is not None:  # the experiment scores the window against it
            for r in SCORED_RESOURCES:
                inst.scored.setdefault(r, []).append(snap.peak.get(r, 0.0))
        if snap.ts >= inst.period_end:
            out.extend(self._close_period(inst, z, cluster))
            inst.period_end += period
        return out

    def _close_period(self, inst: InstanceState, z: Any, cluster: int) -> list[Output]:
        """Score the period that ended, learn from it, and decide the next one."""
        assert inst.last is not None and inst.period_end is not None
        out: list[Output] = []
        self._record_period(inst, cluster)
        if inst.predicted is not None and inst.inputs is not None:
            for r in RESOURCES:
                observed, expected = inst.peak.get(r, 0.0), inst.predicted[r]
                self.predictor.learn_one(r, inst.inputs[r], observed)
                if observed > 0 or expected > 0:
                    self.error[r].update(abs(expected - observed) / max(observed, expected))
                key = (f"{inst.app}/{inst.instance}", r)
                score, severity = self.detector.score_one(key, observed, expected)
                self.detector.learn_one(key, observed, expected)
                if severity is not None:
                    out.append(Anomaly(
                        f"{key[0]}/{r}/{int(inst.period_end)}", inst.period_end, inst.app,
                        inst.instance, r, observed, expected, float(score), severity))
        inst.history.append(dict(inst.peak) or dict(inst.last.recent_peak))
        inputs = {r: predictor_features(inst.last, r, z, cluster, inst.period_end,
                                        max(h.get(r, 0.0) for h in inst.history))
                  for r in RESOURCES}
        predicted = {r: max(0.0, self.predictor.predict_one(r, inputs[r])) for r in RESOURCES}
        # CPU and memory are reserved by the rule each instance's history favours; the
        # models' predictions stay the reference the anomaly detector and errors use.
        need = dict(predicted)
        for r, selector in inst.selectors.items():
            need[r] = selector.close(inst.peak.get(r, 0.0))
        inst.inputs, inst.predicted = inputs, predicted
        inst.peak = {}
        arm = self.experiment.assign(inst.app, inst.instance, cluster)
        decision = arm.decide(need, self.catalog)
        # A change of arm is a resize, so that the next period runs under the arm it is
        # assigned and scored for.
        if self._should_resize(inst, decision) or inst.arm != arm.name:
            inst.seq += 1
            inst.reserve = dict(decision.reserve)
            inst.instance_type = decision.instance_type.name
            inst.arm = arm.name
            out.append(self._allocation(inst, inst.seq, inst.period_end, "resize", decision,
                                        need, cluster, self._confidence(inst.app)))
        return out

    def _record_period(self, inst: InstanceState, cluster: int) -> None:
        """Report the period that ended to the experiment, for the arm whose allocation was
        in force (``inst.arm``): per window, its peak against that reserve (unchanged within a
        period), for CPU and memory. ``waste`` is the mean of the resources' ``score_period``
        waste (a resource unused all period, such as memory a trace lacks, is left out unless
        all are), and a window counts as one violation when any resource exceeded its
        reserve. A period with no window under an allocation (before the first resize) is not
        reported."""
        scored, inst.scored = inst.scored, {}
        windows = len(next(iter(scored.values()), ()))
        if inst.arm is None or inst.reserve is None or not windows:
            return
        reserve = {r: inst.reserve.get(r, 0.0) for r in scored}
        used = [r for r in SCORED_RESOURCES if any(u > 0 for u in scored.get(r, ()))]
        wastes = [score_period([reserve[r]] * windows, scored[r])[0]
                  for r in used or [r for r in SCORED_RESOURCES if r in scored]]
        violations = sum(1 for i in range(windows)
                         if any(scored[r][i] > reserve[r] for r in scored))
        self.experiment.record(inst.app, inst.instance, cluster, inst.arm,
                               waste=sum(wastes) / len(wastes), violations=violations,
                               steps=windows)

    def _should_resize(self, inst: InstanceState, decision: Any) -> bool:
        """Resize when the current reservation no longer covers the predicted need, or when
        the new one differs materially; at most once per period (this runs once per period)."""
        if inst.reserve is None or inst.instance_type is None:
            return True
        short = any(decision.need.get(k, 0.0) > v for k, v in inst.reserve.items())
        return short or changed_materially(
            inst.reserve, decision.reserve, inst.instance_type, decision.instance_type.name,
            self.config.change_threshold)

    def _allocation(self, inst: InstanceState, seq: int, ts: float, kind: str, decision: Any,
                    need: dict[str, float], cluster: int, confidence: float) -> Allocation:
        return Allocation(
            id=f"{inst.app}/{inst.instance}/{seq}", ts=ts, app=inst.app,
            instance=inst.instance, kind=kind,  # type: ignore[arg-type]
            instance_type=decision.instance_type.name, reserve=_rounded(decision.reserve),
            predicted=_rounded(need), cluster=int(cluster),
            confidence=round(confidence, 4), policy=decision.policy,  # the arm's name
            model_version=self.fingerprinter.version,
        )

    def _confidence(self, app: str) -> float:
        """Higher when the resource models have been accurate so far."""
        errors = [m.get() for m in self.error.values() if m.n]
        return 0.5 if not errors else max(0.05, 1.0 - sum(errors) / len(errors))

    def _instance(self, app: str, instance: str, ts: float) -> InstanceState:
        if app not in self.apps and len(self.apps) >= self.config.max_apps:
            self._evict_oldest_app()
        inst = InstanceState(app, instance, last_ts=ts)
        inst.selectors = {r: RuleSelector(cost, offsets=OFFSETS.get(r, (0.0,)))
                          for r, cost in self.config.violation_cost}
        self.instances[(app, instance)] = inst
        self.apps.setdefault(app, set()).add(instance)
        self.apps.move_to_end(app)
        return inst

    # -- housekeeping -----------------------------------------------------------------------

    def _maybe_recluster(self, ts: float) -> list[Output]:
        if self._next_recluster is None:
            self._next_recluster = math.ceil(ts / self.config.recluster_s) * self.config.recluster_s
        if ts < self._next_recluster:
            return []
        every = self.config.recluster_s
        self._next_recluster = (math.floor(ts / every) + 1) * every
        self._expire(ts)
        if not self.clusters.members():
            return []
        self.clusters.recluster()
        return [self.cluster_snapshot(ts), self.experiment.snapshot(ts)]

    def cluster_snapshot(self, ts: float) -> ClusterSnapshot:
        needs: dict[int, dict[str, list[float]]] = {}
        for (app, _), inst in sorted(self.instances.items()):
            cid = self.clusters.cluster_of(app)
            if cid is None or not inst.predicted:
                continue
            for r, v in inst.predicted.items():
                needs.setdefault(cid, {}).setdefault(r, []).append(v)
        members = self.clusters.members()
        centroids = self.clusters.centroids()
        defs: list[ClusterDef] = []
        for cid in sorted(centroids):
            typical = {r: float(sorted(vs)[len(vs) // 2]) for r, vs in needs.get(cid, {}).items()}
            self.coldstart.set_cluster_needs(cid, typical)
            defs.append(ClusterDef(cid, ts, self.clusters.version, members.get(cid, 0),
                                   tuple(float(v) for v in centroids[cid]), typical))
        apps = {app: cid for app in sorted(self.apps)
                if (cid := self.clusters.cluster_of(app)) is not None}
        return ClusterSnapshot(ts, self.clusters.version, tuple(defs), apps)

    def _expire(self, now: float) -> None:
        horizon = now - self.config.ttl_s
        for key in [k for k, s in self.instances.items() if s.last_ts < horizon]:
            self._drop_instance(key)
            self.stats.expired_instances += 1

    def _drop_instance(self, key: tuple[str, str]) -> None:
        app, instance = key
        del self.instances[key]
        self.experiment.forget(app, instance)
        for r in RESOURCES:
            self.detector.forget((f"{app}/{instance}", r))
        members = self.apps.get(app)
        if members is not None:
            members.discard(instance)
            if not members:
                del self.apps[app]
                self.clusters.forget(app)
                self.stats.expired_apps += 1

    def _evict_oldest_app(self) -> None:
        oldest = next(iter(self.apps))  # the least recently active
        for instance in sorted(self.apps[oldest]):
            self._drop_instance((oldest, instance))
        self.stats.evicted_apps += 1

    # -- observation ------------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        return {
            "apps": len(self.apps),
            "instances": len(self.instances),
            "clusters": len(self.clusters.centroids()),
            "mae": {r: round(m.get(), 4) for r, m in self.error.items()},
            "buffered": len(self._buffer),
        }
