"""The fleet stage: what needs the whole fleet, fed one digest per instance per period.

The flow runs this stage under one key. It sees no windows, only what the instance stage sends
(``fpstream.digest``), deploy requests, and the input's progress, and it applies them in event
time order (``fpstream.ordering``) so that a replay gives the same allocations on one process
or several, after a crash and resume as in a clean run:

- **fingerprints and clusters**: every digest's profile vector is learned by the fleet's
  fingerprint (``fpstream.fingerprint``) and its app assigned a cluster (``fpstream.
  clustering``); every ``recluster_s`` of event time the fleet is re-clustered and published;
- **decisions**: every instance's next period is decided here, at the end of each of its
  periods. An instance with enough history reserves, for CPU and memory, the rule of its own
  that minimises ``slack + price * violations`` at the price of its violation budget, and the
  prices are controlled so that the budgets hold (``fpstream.fleet.budget``); a younger one
  reserves its own mean so far plus its spread times how far its peers at the same age grew
  beyond theirs (its cluster's once ``cluster_after_s`` of data has placed it), at the price of
  a violated window young instances' budget sets, or one of its own rules (its peak so far
  times a margin) where that has cost less at that age (``fpstream.fleet.young``). Its A/B arm
  (``fpstream.fleet.arms``) scales its budget and adds its headroom; the policy snaps the
  reserve to the catalog (``fpstream.policy``);
- **cold start**: the windows of every digest teach the evidence groups and the label
  classifier (``fpstream.coldstart``), and those of every instance's first day the pools its
  young peers are sized from; a deploy request is answered with a ``proactive`` allocation from
  them, from the fleet's state at the start of the request's decision period: for CPU and
  memory the share of the requested size that the chosen group's first hours make cheapest at
  the young instances' price, capped by that size, and never below the typical need the
  evidence predicts;
- **the experiment**: every decided period is scored against the reservation in force and
  summed per arm (``fpstream.fleet.experiment``).

Contained: an exception while one digest or deploy request is applied comes back as a
``model_error`` dead letter, the instance's fleet record is dropped, and the stage goes on.
Bounded: at most ``max_apps`` apps (the least recently active evicted first) and instances idle
for ``ttl_s`` of event time are dropped.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from river import stats

from fpstream.catalog import Catalog
from fpstream.clustering import FleetClusters
from fpstream.coldstart import ColdStart, evidence_labels, group_keys, guess_key
from fpstream.digest import SCORED, Digest
from fpstream.events import RESOURCES, Allocation, DeadLetter, DeployRequest
from fpstream.fingerprint import Fingerprinter
from fpstream.fleet.arms import ArmAssigner, GroupArms, InstanceArms
from fpstream.fleet.budget import PriceController, budget_of
from fpstream.fleet.experiment import Experiment, ExperimentSnapshot
from fpstream.fleet.young import (
    YOUNG,
    YOUNG_PRICE_CLIP,
    YOUNG_PRICE_INITIAL,
    AgePools,
    YoungChoice,
    age_bucket,
)
from fpstream.ingest import item_letter
from fpstream.ordering import EARLY, LATE, EventTimeOrder
from fpstream.policy import Decision, Policy, changed_materially
from fpstream.settings import Settings

__all__ = ["ClusterDef", "ClusterSnapshot", "FleetConfig", "FleetStage", "allocation",
           "rounded"]

#: How many distinct budgets (each with its price) the stage keeps; an app labelled with yet
#: another one runs at the configured budget.
MAX_BUDGETS = 256


def rounded(values: dict[str, float]) -> dict[str, float]:
    """Output precision: millicores and whole bytes, so the last bits of float sums (which
    depend on how numpy batched a computation) never show in an allocation."""
    return {k: round(v, 3) if k == "cpu_cores" else float(round(v)) for k, v in values.items()}


def allocation(app: str, instance: str, ts: float, kind: str, decision: Decision,
               need: dict[str, float], cluster: int, confidence: float,
               model_version: int) -> Allocation:
    """An allocation event; its sequence is the decision's event time in whole seconds (0
    for a proactive allocation, which precedes every other decision for the instance)."""
    seq = 0 if kind == "proactive" else round(ts)
    return Allocation(
        id=f"{app}/{instance}/{seq}", ts=ts, app=app, instance=instance,
        kind=kind,  # type: ignore[arg-type]
        instance_type=decision.instance_type.name, reserve=rounded(decision.reserve),
        predicted=rounded(need), cluster=int(cluster), confidence=round(confidence, 4),
        policy=decision.policy, model_version=model_version)


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


Output = Allocation | ClusterSnapshot | ExperimentSnapshot | DeadLetter


@dataclass(frozen=True)
class FleetConfig:
    catalog: Catalog
    arms: ArmAssigner
    decision_period_s: float = 300.0
    recluster_s: float = 3600.0
    idle_s: float = 30.0
    n_clusters: int = 6
    dims: int = 4
    seed: int = 42
    change_threshold: float = 0.10
    cluster_after_s: float = 900.0
    ttl_s: float = 86_400.0
    max_apps: int = 100_000
    #: The configured violation budget per selected resource.
    budgets: tuple[tuple[str, float], ...] = (("cpu_cores", 0.01), ("mem_bytes", 0.001))

    @classmethod
    def from_settings(cls, s: Settings) -> FleetConfig:
        return cls(catalog=Catalog.load(s.catalog_path), arms=ArmAssigner.from_settings(s),
                   decision_period_s=s.decision_period_s, recluster_s=s.recluster_s,
                   idle_s=s.idle_s, n_clusters=s.n_clusters, dims=s.fingerprint_dims,
                   seed=s.seed, change_threshold=s.change_threshold,
                   cluster_after_s=s.young_cluster_after_s, ttl_s=s.app_ttl_s,
                   max_apps=s.max_apps,
                   budgets=(("cpu_cores", s.violation_budget_cpu),
                            ("mem_bytes", s.violation_budget_mem)))


@dataclass(slots=True)
class FleetInstance:
    """What the fleet stage keeps of one instance: its latest own need, the decision in force
    (its reserve, type and arm, and the budgets whose prices chose it, if any), its guard
    rail, and how accurate its forecasts have been. While young: the group its deploy was
    answered from (``evidence``; "" when none), and per resource what its
    peers and its own rules proposed for the period in force (``young``: the candidates of
    ``young.YoungChoice``, the one in force, the age bucket, the budget)."""

    last_ts: float
    own: dict[str, float] = field(default_factory=dict)
    reserve: dict[str, float] | None = None
    instance_type: str | None = None
    arm: str | None = None
    budgets: dict[str, float] = field(default_factory=dict)
    proactive_sent: bool = False
    arms: InstanceArms = field(default_factory=InstanceArms)
    error: list[float] = field(default_factory=lambda: [0.0, 0.0])
    evidence: str | None = None
    young: dict[str, tuple[tuple[float, ...], int, int, float]] = field(default_factory=dict)


@dataclass(slots=True)
class StageStats:
    """Counters the flow turns into Prometheus metrics after each call."""

    expired_instances: int = 0
    expired_apps: int = 0
    evicted_apps: int = 0
    errors: int = 0  # exceptions contained (each item became a model_error dead letter)


class FleetStage:
    """Clusters, cold start and young instances' decisions (module docstring)."""

    def __init__(self, config: FleetConfig, sources: Sequence[str] = ()) -> None:
        self.config = config
        self.order: EventTimeOrder[Digest | DeployRequest] = EventTimeOrder(
            config.decision_period_s, config.idle_s, sources)
        self.fingerprinter = Fingerprinter(dims=config.dims)
        self.clusters = FleetClusters(k=config.n_clusters, seed=config.seed,
                                      max_keys=config.max_apps)
        self.coldstart = ColdStart(max_keys=config.max_apps, max_instances=config.max_apps)
        self.experiment = Experiment(config.arms)
        self.bandits: dict[int, GroupArms] = {}  # per cluster (mode bandit)
        self.prices: dict[tuple[str, float], PriceController] = {}
        self._realised: dict[tuple[str, float], list[int]] = {}  # this period's, per price
        self.pools = AgePools(max_instances=config.max_apps)
        self.choice = YoungChoice()
        # young instances' own prices per budget, and what the peers' reserves realised
        self.young_prices: dict[tuple[str, float, bool], PriceController] = {}
        self._young_realised: dict[tuple[str, float, bool], list[int]] = {}
        self.instances: dict[tuple[str, str], FleetInstance] = {}
        # app -> its instances, the least recently active app first
        self.apps: OrderedDict[str, set[str]] = OrderedDict()
        self.error = {r: stats.Mean() for r in RESOURCES}
        self.stats = StageStats()
        self._newest = -math.inf  # the newest digest applied
        self._next_recluster: float | None = None

    # -- entry points (``arrived``: the caller's clock, for the idleness rule only) --------

    def on_digest(self, digest: Digest, arrived: float = 0.0) -> list[Output]:
        self.order.heard(digest.app, digest.ts, arrived)
        self.order.push(digest, digest.ts, digest.app, digest.instance, LATE)
        return self._apply(self.order.release(arrived))

    def on_deploy(self, req: DeployRequest, arrived: float = 0.0) -> list[Output]:
        """Buffer a deploy request; it is answered from the fleet's state at the start of its
        decision period (``fpstream.ordering``)."""
        if req.app not in self.apps:
            # A new app joins the low watermark from its announcement, so that its first
            # digests are not overtaken by apps on a faster worker.
            self.order.heard(req.app, req.ts, arrived)
        self.order.push(req, req.ts, req.app, req.instance, EARLY)
        return self._apply(self.order.release(arrived))

    def on_progress(self, source: str, ts: float, arrived: float = 0.0) -> list[Output]:
        """An input partition has been read up to ``ts``."""
        self.order.progress(source, ts, arrived)
        return self._apply(self.order.release(arrived))

    def on_app_seen(self, app: str, ts: float, arrived: float = 0.0) -> list[Output]:
        """An app's first sample was read: hold the watermark for its first digests."""
        if not self.order.knows(app):
            self.order.heard(app, ts, arrived)
        return []

    def on_idle(self, now: float) -> list[Output]:
        """Called when nothing arrived for a while: idle apps stop holding others back."""
        return self._apply(self.order.release(now))

    def flush(self) -> list[Output]:
        """End of stream: apply everything buffered, then the experiment's summary as of the
        newest event time applied."""
        out = self._apply(self.order.flush())
        if math.isfinite(self._newest):
            out.append(self.experiment.snapshot(self._newest))
        return out

    def resumed(self, now: float) -> None:
        self.order.resumed(now)

    # -- applying, in event-time order -----------------------------------------------------

    def _apply(self, items: list[Digest | DeployRequest]) -> list[Output]:
        """Apply released items in order: each deploy request, and the digests of one period
        together, so that the cold-start evidence learns their windows in event-time order
        across instances, as they happened."""
        out: list[Output] = []
        period: list[Digest] = []
        for item in items:
            if period and (isinstance(item, DeployRequest) or
                           self.order.period_start(item.ts) !=
                           self.order.period_start(period[0].ts)):
                out.extend(self._period(period))
                period = []
            if isinstance(item, DeployRequest):
                try:
                    out.extend(self._answer(item))
                except Exception as ex:  # noqa: BLE001 - no item may stop the stage
                    out.append(self._contained(item, ex))
            else:
                period.append(item)
        if period:
            out.extend(self._period(period))
        return out

    def _period(self, digests: list[Digest]) -> list[Output]:
        out: list[Output] = []
        clustered: list[tuple[Digest, int]] = []
        for d in digests:
            self._newest = max(self._newest, d.ts)
            out.extend(self._maybe_recluster(d.ts))
            try:
                clustered.append((d, self._cluster(d)))
            except Exception as ex:  # noqa: BLE001 - no item may stop the stage
                out.append(self._contained(d, ex))
        windows = sorted((end, d.app, d.instance, i, d, cluster)
                         for d, cluster in clustered for i, end in enumerate(d.ends.tolist()))
        # each digest's evidence keys, once for all its windows
        keys = {id(d): (group_keys(evidence_labels(d.labels), d.capacity), f"cluster:{cluster}")
                for d, cluster in clustered}
        failed: set[tuple[str, str]] = set()
        for end, app, instance, i, d, cluster in windows:
            if (app, instance) in failed:
                continue
            try:
                peak = d.window_peak(i)
                self.coldstart.learn(d.labels, d.capacity, cluster, peak,
                                     app=app, instance=instance, ts=end)
                groups, placed = keys[id(d)]
                self.pools.learn(groups, (app, instance), end, peak, d.capacity, placed,
                                 period=d.ts)
            except Exception as ex:  # noqa: BLE001 - no item may stop the stage
                failed.add((app, instance))
                out.append(self._contained(d, ex))
        # What the period realised first, so that the decisions for the next one use prices
        # that have learned from it.
        scored = []
        for d, cluster in clustered:
            if (d.app, d.instance) in failed:
                continue
            try:
                self._learn(d, cluster)
                scored.append((d, cluster))
            except Exception as ex:  # noqa: BLE001 - no item may stop the stage
                out.append(self._contained(d, ex))
        for key, (violated, scored_windows) in sorted(self._realised.items()):
            self.prices[key].learn(violated, scored_windows)
        self._realised.clear()
        for (r, budget, deployed), (violated, scored_windows) in sorted(
                self._young_realised.items()):
            self._young_price(r, budget, deployed).learn(violated, scored_windows)
        self._young_realised.clear()
        for d, cluster in scored:
            try:
                out.extend(self._decide(d, cluster))
            except Exception as ex:  # noqa: BLE001 - no item may stop the stage
                out.append(self._contained(d, ex))
        return out

    def _contained(self, item: Digest | DeployRequest, ex: Exception) -> DeadLetter:
        self.stats.errors += 1
        self._drop_instance((item.app, item.instance))
        what = "deploy request" if isinstance(item, DeployRequest) else "digest"
        doc: dict[str, object] = {"app": item.app, "instance": item.instance, "ts": item.ts,
                                  "item": what}
        if isinstance(item, Digest):
            doc["peak"] = item.peak
        error = f"step fleet: {type(ex).__name__}: {ex} (the {what}'s instance starts afresh)"
        return item_letter(item.ts, "model_error", error, doc)

    def _cluster(self, d: Digest) -> int:
        """Learn the digest's fingerprint input; the cluster of its app."""
        self.fingerprinter.learn_one(d.vector)
        return self.clusters.assign(d.app, self.fingerprinter.transform_one(d.vector))

    def _learn(self, d: Digest, cluster: int) -> None:
        """What the period ``d`` closed says: forecasts' error, and how the decision in force
        fared."""
        fi = self._instance(d.app, d.instance, d.ts)
        fi.last_ts, fi.own = d.ts, d.own
        if fi.young and len(d.peaks):
            self._score_young(d, fi)
        if d.error is not None:
            for r, err in zip(RESOURCES, d.error.tolist(), strict=True):
                if not math.isnan(err):
                    self.error[r].update(err)
                    if r in SCORED:
                        fi.error[0] += err
                        fi.error[1] += 1
        if fi.reserve is not None and fi.arm is not None and len(d.peaks):
            self._score(d, fi, *self._group(cluster))

    def _decide(self, d: Digest, cluster: int) -> list[Output]:
        """The instance's next period: its arm, and its need from its rules at the price of its
        budget (its cautious rule while it warms up)."""
        fi = self.instances[(d.app, d.instance)]
        group, key = self._group(cluster)
        arm = self.config.arms.choose(group, fi.arms, key, d.app, d.instance)
        self.experiment.assigned(arm.name)
        need, budgets = dict(d.own), {}
        if d.warm and d.frontiers:
            fi.young = {}
            for r, frontier in sorted(d.frontiers.items()):
                budgets[r] = self._budget(r, d.labels, arm)
                need[r] = frontier.choose(self.prices[(r, budgets[r])].price)
        else:
            need.update(self._young(d, cluster, fi, arm))
        decision = arm.decide(need, self.config.catalog)
        resize = self._should_resize(fi, decision, arm)
        fi.budgets = budgets
        if not resize:
            return []
        fi.reserve = dict(decision.reserve)
        fi.instance_type = decision.instance_type.name
        fi.arm = arm.name
        confidence = (self._confidence(fi) if budgets else self._fleet_confidence())
        return [allocation(d.app, d.instance, d.ts, "resize", decision, need, cluster,
                           confidence, self.fingerprinter.version)]

    def _score(self, d: Digest, fi: FleetInstance, group: GroupArms, key: str) -> None:
        """The period ``d`` closed ran under ``fi``'s reservation: the experiment and the arm
        learn its outcome, and the prices that chose it what it realised."""
        assert fi.reserve is not None and fi.arm is not None
        outcome = d.outcome(fi.reserve, fi.arm)
        self.experiment.record(outcome)
        moved = self.config.arms.learn(group, fi.arms, key, outcome)
        self.experiment.pinned(d.app, d.instance, fi.arms.pinned, moved)
        for r, budget in fi.budgets.items():
            realised = self._realised.setdefault((r, budget), [0, 0])
            realised[0] += d.violations(r, fi.reserve.get(r, 0.0))
            realised[1] += len(d.peaks)

    def _young(self, d: Digest, cluster: int, fi: FleetInstance, arm: Policy
               ) -> dict[str, float]:
        """A young instance's next period, per resource: its peers' reserve at its age and
        budget (its cluster's once it has ``cluster_after_s`` of data, else its deploy's
        group's, else the fleet's) or one of its own rules (its peak so far times a margin),
        whichever has cost least at that age (``fpstream.fleet.young.YoungChoice``)."""
        if fi.evidence is None:  # never deployed through a request: its labels' best group
            guess = self.coldstart.predict(d.labels, d.capacity)
            fi.evidence = guess_key(guess) or ""
        placed = d.periods * self.config.decision_period_s >= self.config.cluster_after_s
        keys = [*([f"cluster:{cluster}"] if placed else []),
                *([fi.evidence] if fi.evidence else []), "fleet:"]
        # the age in the middle of the period being decided
        age = (self.pools.age((d.app, d.instance), d.ts) or 0.0) + self.config.decision_period_s / 2
        bucket = age_bucket(age)
        fi.young = {}
        out = {}
        for r in YOUNG:
            budget = self._budget(r, d.labels, arm)
            size = float(d.capacity.get(r, 0.0) or 0.0)
            own = self.pools.own((d.app, d.instance), r)
            found = self.pools.reserve(keys, age, r, self._young_price(r, budget).price, size,
                                       own=own)
            if found is None:
                continue
            candidates = self.choice.candidates(found[0], own[1] if own else 0.0)
            use = self.choice.best(r, bucket, len(candidates))
            fi.young[r] = (candidates, use, bucket, budget)
            out[r] = candidates[use]
        return out

    def _score_young(self, d: Digest, fi: FleetInstance) -> None:
        """The period ``d`` closed: what the peers' reserve and the own rules would each have
        cost, and what the one in force realised for the young price it was chosen at
        (bucket -1: a proactive reserve, before any window of its own)."""
        for r, (candidates, use, bucket, budget) in fi.young.items():
            usage = d.peaks[:, RESOURCES.index(r)].tolist()
            if bucket >= 0:
                self.choice.learn(r, bucket, usage, candidates,
                                  self._young_price(r, budget).price)
            realised = self._young_realised.setdefault((r, budget, bucket < 0), [0, 0])
            realised[0] += d.violations(r, candidates[use])
            realised[1] += len(usage)
        fi.young = {}

    def _young_price(self, resource: str, budget: float, deployed: bool = False
                     ) -> PriceController:
        """The price of a violated window young instances of ``budget`` are sized at: one for
        proactive reserves (``deployed``: from the peers alone), one for young instances with
        windows of their own."""
        key = (resource, budget, deployed)
        price = self.young_prices.get(key)
        if price is None:
            price = self.young_prices[key] = PriceController(
                resource, budget, clip=YOUNG_PRICE_CLIP, initial=YOUNG_PRICE_INITIAL[resource])
        return price

    def _budget(self, resource: str, labels: dict[str, str], arm: Policy) -> float:
        """The budget an instance's arm runs at, with its price; a new budget beyond
        ``MAX_BUDGETS`` falls back to the configured one."""
        default = dict(self.config.budgets)[resource]
        budget = round(min(budget_of(resource, labels, default) * arm.budget, 0.5), 9)
        if (resource, budget) not in self.prices:
            if len(self.prices) >= MAX_BUDGETS:
                budget = round(min(default * arm.budget, 0.5), 9)
            self.prices.setdefault((resource, budget), PriceController(resource, budget))
        return budget

    def _group(self, cluster: int) -> tuple[GroupArms, str]:
        """The bandit state of a cluster (mode ``bandit`` learns per cluster)."""
        group = self.bandits.get(cluster)
        if group is None:
            group = self.bandits[cluster] = GroupArms()
        return group, f"cluster-{cluster}"

    def _should_resize(self, fi: FleetInstance, decision: Decision, arm: Policy) -> bool:
        if fi.reserve is None or fi.instance_type is None or fi.arm != arm.name:
            return True
        short = any(decision.need.get(k, 0.0) > v for k, v in fi.reserve.items())
        return short or changed_materially(
            fi.reserve, decision.reserve, fi.instance_type, decision.instance_type.name,
            self.config.change_threshold)

    def _answer(self, req: DeployRequest) -> list[Output]:
        """Answer a deploy request with a ``proactive`` allocation (sequence 0: it precedes
        every other decision for the instance, so a redelivered request changes nothing)."""
        fi = self.instances.get((req.app, req.instance))
        if fi is not None and fi.proactive_sent:
            return []
        known = [self.instances[(req.app, i)] for i in sorted(self.apps.get(req.app, ()))]
        own = [k.own for k in known if k.own]
        # Cold start answers from the app's earlier instances first, then from its labels.
        guess = self.coldstart.predict(req.labels, req.requested, app=req.app)
        need, confidence = guess.need, guess.confidence
        cluster: int | None = guess.cluster
        if own and guess.source != "app":  # app known but no cold-start history (resumed)
            need = {r: max(o.get(r, 0.0) for o in own) for r in RESOURCES}
            cluster, confidence = self.clusters.cluster_of(req.app), 0.9
        if fi is None:
            fi = self._instance(req.app, req.instance, req.ts)
        fi.proactive_sent = True
        # The instance's arm, drawing nothing: the arm learns from its own periods.
        arm = self.config.arms.peek(req.app, req.instance)
        # CPU and memory: the chosen group's first-hour usage at the quantile of the budget,
        # capped by the requested size (an app's own earlier instances: its cluster's).
        evidence = guess_key(guess)
        if guess.source == "app" and cluster is not None and cluster >= 0:
            evidence = f"cluster:{cluster}"
        fi.evidence = evidence or ""
        keys = [*([evidence] if evidence else []), "fleet:"]
        # ``need`` stays the typical need the evidence predicts (the allocation's
        # ``predicted``); the reserve is the share of the size the group's first hours make
        # cheapest at the proactive price, and never less than that typical need.
        cover = dict(need)
        for r in YOUNG:
            budget = self._budget(r, req.labels, arm)
            size = float(req.requested.get(r, 0.0) or 0.0)
            price = self._young_price(r, budget, deployed=True).price
            found = self.pools.reserve(keys, 0.0, r, price, size)
            if found is not None:
                cover[r] = max(found[0], need.get(r, 0.0))
                fi.young[r] = ((cover[r],), 0, -1, budget)
        decision = arm.decide(cover, self.config.catalog)
        # Cold-start feedback: the proactive reserve is scored over the first hour.
        self.coldstart.track(req.app, req.instance, decision.reserve, guess.source)
        return [allocation(req.app, req.instance, req.ts, "proactive", decision, need,
                           -1 if cluster is None else cluster, confidence,
                           self.fingerprinter.version)]

    def _fleet_confidence(self) -> float:
        """Higher when the instances' forecasts have been accurate so far, fleet-wide."""
        errors = [m.get() for m in self.error.values() if m.n]
        return 0.5 if not errors else max(0.05, 1.0 - sum(errors) / len(errors))

    @staticmethod
    def _confidence(fi: FleetInstance) -> float:
        """Higher when the instance's own forecasts have been accurate so far."""
        total, n = fi.error
        return 0.5 if not n else max(0.05, 1.0 - total / n)

    # -- instances and apps ---------------------------------------------------------------

    def _instance(self, app: str, instance: str, ts: float) -> FleetInstance:
        fi = self.instances.get((app, instance))
        if fi is None:
            if app not in self.apps and len(self.apps) >= self.config.max_apps:
                self._evict_oldest_app()
            fi = self.instances[(app, instance)] = FleetInstance(ts)
            self.apps.setdefault(app, set()).add(instance)
        self.apps.move_to_end(app)
        return fi

    def _drop_instance(self, key: tuple[str, str]) -> bool:
        """Forget an instance; True if that was its app's last."""
        app, instance = key
        if self.instances.pop(key, None) is None:
            return False
        self.experiment.forget(app, instance)
        members = self.apps.get(app)
        if members is not None:
            members.discard(instance)
            if not members:
                del self.apps[app]
                self.clusters.forget(app)
                return True
        return False

    def _evict_oldest_app(self) -> None:
        oldest = next(iter(self.apps))  # the least recently active
        for instance in sorted(self.apps[oldest]):
            self._drop_instance((oldest, instance))
        self.stats.evicted_apps += 1

    def _expire(self, now: float) -> None:
        horizon = now - self.config.ttl_s
        for key in [k for k, fi in self.instances.items() if fi.last_ts < horizon]:
            self.stats.expired_apps += self._drop_instance(key)
            self.stats.expired_instances += 1

    # -- clusters ---------------------------------------------------------------------------

    def _maybe_recluster(self, ts: float) -> list[Output]:
        every = self.config.recluster_s
        if self._next_recluster is None:
            self._next_recluster = math.ceil(ts / every) * every
        if ts < self._next_recluster:
            return []
        self._next_recluster = (math.floor(ts / every) + 1) * every
        self._expire(ts)
        if not self.clusters.members():
            return []
        self.clusters.recluster()
        return [self.cluster_snapshot(ts), self.experiment.snapshot(ts)]

    def cluster_snapshot(self, ts: float) -> ClusterSnapshot:
        needs: dict[int, dict[str, list[float]]] = {}
        for (app, _), fi in sorted(self.instances.items()):
            cid = self.clusters.cluster_of(app)
            if cid is None or not fi.own:
                continue
            for r, v in fi.own.items():
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

    # -- observation ------------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        return {
            "apps": len(self.apps),
            "instances": len(self.instances),
            "clusters": len(self.clusters.centroids()),
            "mae": {r: round(m.get(), 4) for r, m in self.error.items()},
            "buffered": len(self.order),
            "prices": {f"{r}@{b:g}": c.price for (r, b), c in sorted(self.prices.items())},
        }
