"""Young instances: sized from their peers at the same age, at the price their budget sets.

An instance with fewer than ``warmup`` periods of its own history cannot yet choose among its
own rules (``fpstream.selector``), but the fleet knows its kind. Every window of an instance's
first day that the fleet stage learns goes into pools (``AgePools``), one per evidence key (the
instance's cluster, its label values and label combination, its size bucket, the fleet: the
keys of ``fpstream.coldstart``) and per age of its instance (``AGES``: the first hour, hours
1-6, hours 6-24), in two forms:

- relative to its instance's size (absolute without one): what a deploy request, before any
  window of its own, is sized from, capped by the requested size;
- as growth over its instance's own history before the period: ``(u - mean) / spread``, with
  ``mean`` the instance's mean window so far and ``spread`` how far its peak so far rose above
  that mean (at least ``MIN_SPREAD`` of the peak). A young instance with windows of its own
  reserves ``mean + g * spread`` from its own mean and spread and its peers' growth ``g``: its
  own history sets the level and the scale, its peers how far an instance of its kind and age
  still goes beyond what it has shown.

Which ``g`` (or share of the size): the one whose expected ``spread * slack + price *
violations`` per window is least (``Hist.cheapest``), a violated window costing the price of
the instance's budget for young instances. That price is controlled online from what the
young instances' reserves in force realise, as the prices of ``fpstream.fleet.budget``, with
one period's error clipped at ``YOUNG_PRICE_CLIP`` times the budget: young instances sized alike
miss together, in bursts, and one burst must not send the price to its bound. So a bursty,
large instance is left more of the budget than a steady small one, and the first day's
violation rate tracks the budget whatever the fleet.

Which pool: the instance's cluster once its fingerprint has placed it, else the evidence the
cold-start ranking chose when it was deployed, else the fleet; the first of them with
``min_members`` instances and ``min_windows`` windows at that age, else at the nearest age
that has them.

Own history against the peers (``YoungChoice``): every young period, the peers' reserve and
the instance's own rules (its peak so far times each margin of ``fpstream.selector.MARGINS``,
twice its peak the warm-up rule among them) are scored on the period's windows as ``slack +
price * violations``, summed per resource and age over the fleet; the one that has cost least
so far at that age decides, until the instance's own rule selection takes over. Pooled over
the fleet, a dozen windows of each young instance are enough to tell at which age its own peak
is the better guide and with which margin, which no instance could tell from its own.

>>> pools = AgePools()
>>> for i in range(4):
...     for w in range(12):
...         pools.learn(("size:c4",), (f"vm-{i}", f"vm-{i}"), 300.0 * w,
...                     {"cpu_cores": 0.1 * (i + 1)}, {"cpu_cores": 4.0})
>>> found = pools.reserve(["size:c4"], 0.0, "cpu_cores", 100.0, 4.0)  # before any own window
>>> round(found[0], 2), found[1]
(0.4, 'size:c4')
>>> [round(x, 3) for x in pools.own(("vm-1", "vm-1"), "cpu_cores")]  # its mean and peak so far
[0.2, 0.2]
"""

from __future__ import annotations

import bisect
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from fpstream.coldstart import Hist
from fpstream.selector import MARGINS

__all__ = ["AGES", "AgePools", "YoungChoice", "age_bucket"]

#: Upper edges of the age buckets (seconds since an instance's first window); an instance
#: older than the last edge is no longer learned from, and reads the last bucket.
AGES: tuple[float, ...] = (3600.0, 6 * 3600.0, 86_400.0)
#: The least spread of an instance's windows, as a share of its peak, that its growth is
#: measured in (an instance that has been flat so far may still grow).
MIN_SPREAD = 0.05
#: How many times its budget one period's violation rate counts at most for the price of
#: young instances' violated windows (``fpstream.fleet.budget.PriceController``).
YOUNG_PRICE_CLIP = 3.0
#: Where the young instances' price of a violated window starts, per resource (cores, bytes):
#: a violated memory window costs as much as 16 GiB of a window's slack until the young
#: instances' outcomes say otherwise, since a new fleet's first hours of memory misses (OOM
#: kills) come before the price has learned anything.
YOUNG_PRICE_INITIAL: dict[str, float] = {"cpu_cores": 1.0, "mem_bytes": float(16 * 2**30)}
#: The margins over its peak so far of a young instance's own rules (``YoungChoice``).
OWN_MARGINS: tuple[float, ...] = MARGINS
#: The resources young instances are sized for from their peers.
YOUNG: tuple[str, ...] = ("cpu_cores", "mem_bytes")


def age_bucket(age_s: float) -> int:
    """The bucket of an age: 0 for the first hour, then hours 1-6, then the rest."""
    return min(bisect.bisect_right(AGES, max(age_s, 0.0)), len(AGES) - 1)


@dataclass(slots=True)
class _Bucket:
    """Peers' windows at one age: their peaks relative to their size (``rel``) or, for
    instances without a size, absolute (``abs``), and as growth over their instance's history
    before the period (``growth``: ``(u - mean) / spread``), per resource; and how many
    instances."""

    rel: dict[str, Hist] = field(default_factory=dict)
    abs: dict[str, Hist] = field(default_factory=dict)
    growth: dict[str, Hist] = field(default_factory=dict)
    members: int = 0


@dataclass(slots=True)
class _Level:
    """An instance's windows of one resource: their peak, sum and count."""

    peak: float = 0.0
    total: float = 0.0
    n: int = 0

    def add(self, u: float) -> None:
        self.peak, self.total, self.n = max(self.peak, u), self.total + u, self.n + 1

    def merge(self, other: _Level) -> None:
        self.peak, self.total, self.n = (max(self.peak, other.peak), self.total + other.total,
                                         self.n + other.n)

    @property
    def mean(self) -> float:
        return self.total / self.n if self.n else 0.0


@dataclass(slots=True)
class _Seen:
    first: float
    bucket: int = -1
    cluster: str | None = None
    period: float | None = None  # the period its latest windows belong to
    before: dict[str, _Level] = field(default_factory=dict)  # its windows before that period
    current: dict[str, _Level] = field(default_factory=dict)  # and within it


class AgePools:
    """Pooled first-day windows per evidence key and age (module docstring). Bounded: at most
    ``max_keys`` pools and ``max_instances`` instances, the least recently updated dropped."""

    def __init__(self, *, min_members: int = 3, min_windows: int = 12,
                 max_keys: int = 4096, max_instances: int = 100_000) -> None:
        self.min_members = min_members
        self.min_windows = min_windows
        self.max_keys = max_keys
        self.max_instances = max_instances
        self.pools: OrderedDict[str, list[_Bucket]] = OrderedDict()
        self.seen: OrderedDict[tuple[str, str], _Seen] = OrderedDict()

    def age(self, key: tuple[str, str], ts: float) -> float | None:
        """How old the instance was at ``ts`` (None if never seen)."""
        seen = self.seen.get(key)
        return None if seen is None else ts - seen.first

    def learn(self, keys: Sequence[str], instance: tuple[str, str], ts: float,
              peak: Mapping[str, float], capacity: Mapping[str, float],
              cluster: str | None = None, period: float | None = None) -> None:
        """One window of ``instance`` ending at ``ts``, of the decision period ``period`` (its
        end; default ``ts``): into the pools of ``keys`` and of its ``cluster`` key, at its
        age."""
        seen = self.seen.get(instance)
        if seen is None:
            seen = self.seen[instance] = _Seen(ts)
            while len(self.seen) > self.max_instances:
                self.seen.popitem(last=False)
        else:
            self.seen.move_to_end(instance)
        age = ts - seen.first
        if age >= AGES[-1]:
            return
        period = ts if period is None else period
        if period != seen.period:
            for r, level in seen.current.items():
                seen.before.setdefault(r, _Level()).merge(level)
            seen.period, seen.current = period, {}
        b = age_bucket(age)
        entered = b != seen.bucket
        moved = cluster is not None and cluster != seen.cluster
        seen.bucket, seen.cluster = b, cluster if cluster is not None else seen.cluster
        for key in (*keys, *(() if cluster is None else (cluster,))):
            bucket = self._pool(key)[b]
            if entered or (moved and key == cluster):
                bucket.members += 1
            for r in YOUNG:
                u = float(peak.get(r, 0.0))
                cap = float(capacity.get(r, 0.0) or 0.0)
                _add(*((bucket.rel, u / cap) if cap > 0 else (bucket.abs, u)), r)
                before = seen.before.get(r)
                if before is not None and before.peak > 0:
                    spread = _spread(before.mean, before.peak)
                    _add(bucket.growth, (u - before.mean) / spread, r)
        for r in YOUNG:
            seen.current.setdefault(r, _Level()).add(float(peak.get(r, 0.0)))

    def own(self, instance: tuple[str, str], resource: str) -> tuple[float, float] | None:
        """The mean and the peak of ``instance``'s windows so far (None before any)."""
        seen = self.seen.get(instance)
        if seen is None:
            return None
        level = _Level()
        for part in (seen.before.get(resource), seen.current.get(resource)):
            if part is not None:
                level.merge(part)
        return (level.mean, level.peak) if level.n else None

    def _pool(self, key: str) -> list[_Bucket]:
        pool = self.pools.get(key)
        if pool is None:
            pool = self.pools[key] = [_Bucket() for _ in AGES]
            while len(self.pools) > self.max_keys:
                self.pools.popitem(last=False)
        else:
            self.pools.move_to_end(key)
        return pool

    def reserve(self, keys: Sequence[str], age_s: float, resource: str, price: float,
                size: float, own: tuple[float, float] | None = None
                ) -> tuple[float, str] | None:
        """What a young instance should reserve of ``resource`` at ``age_s``, a violated window
        costing ``price``, from the first of ``keys`` whose pool has enough evidence at that
        age (else at the nearest age that has); with the key that answered.

        With its ``own`` mean and peak so far, the reserve is its mean plus the peers' growth
        (``Hist.cheapest``) times its spread: a size it has outgrown does not cap it. Before
        any window of its own, the peers' peaks relative to their size times ``size``, capped
        by it; without a size, the peers' absolute peaks."""
        want = age_bucket(age_s)
        by_distance = sorted(range(len(AGES)), key=lambda b: (abs(b - want), -b))
        mean, top = own if own is not None else (0.0, 0.0)
        grows = top > 0
        spread = _spread(mean, top) if grows else 0.0
        for key in keys:
            pool = self.pools.get(key)
            if pool is None:
                continue
            for b in by_distance:
                if pool[b].members < self.min_members:
                    continue
                hists, scale = ((pool[b].growth, spread) if grows
                                else (pool[b].rel, size) if size > 0 else (pool[b].abs, 1.0))
                hist = hists.get(resource)
                if hist is None or hist.n < self.min_windows:
                    continue
                q = hist.cheapest(scale, price)
                assert q is not None
                if grows:
                    return mean + q * spread, key
                return (min(q, 1.0) * size if size > 0 else q), key
        return None


def _spread(mean: float, peak: float) -> float:
    """How far an instance's peak so far rose above its mean (at least ``MIN_SPREAD`` of the
    peak)."""
    return max(peak - mean, MIN_SPREAD * peak)


def _add(hists: dict[str, Hist], x: float, resource: str) -> None:
    h = hists.get(resource)
    if h is None:
        h = hists[resource] = Hist()
    h.update(x)


class YoungChoice:
    """Per resource and age: what each young candidate (the peers' reserve, then the
    instance's peak so far times each of ``OWN_MARGINS``) would have cost so far (``slack +
    price * violations``), older periods fading by ``decay`` each, so that peers who were few
    or mixed when the fleet was new are judged again as their pools fill; to choose among
    them.

    >>> choice = YoungChoice()
    >>> candidates = choice.candidates(1.0, peak=0.8)  # the peers' 1.0, then 0.8 x margins
    >>> choice.learn("cpu_cores", 0, [0.85] * 12, candidates, price=10.0)
    >>> round(candidates[choice.best("cpu_cores", 0)], 2)  # the least own rule over 0.85
    0.88
    """

    __slots__ = ("cost", "decay")

    def __init__(self, decay: float = 0.97) -> None:
        self.cost: dict[tuple[str, int], list[float]] = {}
        self.decay = decay

    @staticmethod
    def candidates(peers: float, peak: float) -> tuple[float, ...]:
        """The peers' reserve, then the own rules of an instance whose peak so far is
        ``peak`` (none without one)."""
        return (peers, *(m * peak for m in OWN_MARGINS)) if peak > 0 else (peers,)

    def learn(self, resource: str, bucket: int, usage: Sequence[float],
              candidates: Sequence[float], price: float) -> None:
        """One young period's windows ``usage`` against each of ``candidates`` (as
        ``candidates`` orders them), a violated window costing ``price``. Without the own rules
        (no peak so far) there is nothing to compare: nothing is learned."""
        if len(candidates) != 1 + len(OWN_MARGINS):
            return
        cost = self.cost.get((resource, bucket))
        if cost is None or len(cost) != len(candidates):  # new, or of other candidates
            cost = self.cost[(resource, bucket)] = [0.0] * len(candidates)
        for i, reserve in enumerate(candidates):
            cost[i] = cost[i] * self.decay + sum(
                max(reserve - u, 0.0) + (price if u > reserve else 0.0) for u in usage)

    def best(self, resource: str, bucket: int, n: int | None = None) -> int:
        """Which of the first ``n`` candidates (default: all) has cost least so far at this
        age: the peers (0) until another has cost less; ties to the first."""
        cost = self.cost.get((resource, bucket))
        if cost is None or len(cost) != 1 + len(OWN_MARGINS):
            return 0
        n = len(cost) if n is None else min(n, len(cost))
        return min(range(n), key=lambda i: (cost[i], i))
