"""Young instances: sized from their peers at the same age, at the quantile their budget sets.

An instance with fewer than ``warmup`` periods of its own history cannot yet choose among its
own rules (``fpstream.selector``), but the fleet knows its kind. Every window of an instance's
first day that the fleet stage learns goes into pools (``AgePools``), one per evidence key (the
instance's cluster, its label values and label combination, its size bucket, the fleet: the
keys of ``fpstream.coldstart``) and per age of its instance (``AGES``: the first hour, hours
1-6, hours 6-24), relative to its instance's size where it has one. A deploy request, or a young
instance at the end of a period, reserves per resource the pool's ``1 - tail`` quantile times
its size, capped by that size and never below its own peak so far: a share ``tail`` of its
peers' windows at that age exceeded that much.

``tail`` starts at the instance's violation budget and is controlled online
(``TailController``, as the prices of ``fpstream.fleet.budget``) from what the young instances
reserved from their peers realise, so the first day's violation rate tracks the budget whatever
the fleet.

Which pool: the instance's cluster once its fingerprint has placed it (its first digest), else
the evidence the cold-start ranking chose when it was deployed, else the fleet; the first of
them with ``min_members`` instances and ``min_windows`` windows at that age, else at the nearest
age that has them.

Own history against the peers (``YoungChoice``): every young period, both the peers' reserve
and the instance's own cautious rule (twice its peak so far) are scored on the period's windows
as ``slack + price * violations`` at the price of its budget, summed per resource and age over
the fleet; the one that has cost less so far at that age decides, until the instance's own
rules take over.

>>> pools = AgePools()
>>> for i in range(4):
...     for w in range(12):
...         pools.learn(("size:c4",), (f"vm-{i}", f"vm-{i}"), 300.0 * w,
...                     {"cpu_cores": 0.1 * (i + 1)}, {"cpu_cores": 4.0})
>>> found = pools.reserve(["size:c4"], 0.0, "cpu_cores", 0.01, 4.0)
>>> round(found[0], 2), found[1]
(0.4, 'size:c4')
"""

from __future__ import annotations

import bisect
import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from fpstream.coldstart import Hist

__all__ = ["AGES", "AgePools", "TailController", "YoungChoice", "age_bucket"]

#: Upper edges of the age buckets (seconds since an instance's first window); an instance
#: older than the last edge is no longer learned from, and reads the last bucket.
AGES: tuple[float, ...] = (3600.0, 6 * 3600.0, 86_400.0)
#: The resources young instances are sized for from their peers.
YOUNG: tuple[str, ...] = ("cpu_cores", "mem_bytes")


def age_bucket(age_s: float) -> int:
    """The bucket of an age: 0 for the first hour, then hours 1-6, then the rest."""
    return min(bisect.bisect_right(AGES, max(age_s, 0.0)), len(AGES) - 1)


@dataclass(slots=True)
class _Bucket:
    """Peers' windows at one age: their peaks relative to their size (``rel``) or, for
    instances without a size, absolute (``abs``), per resource, and how many instances."""

    rel: dict[str, Hist] = field(default_factory=dict)
    abs: dict[str, Hist] = field(default_factory=dict)
    members: int = 0


@dataclass(slots=True)
class _Seen:
    first: float
    bucket: int = -1
    cluster: str | None = None


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
              cluster: str | None = None) -> None:
        """One window of ``instance`` ending at ``ts``: into the pools of ``keys`` and of its
        ``cluster`` key, at its age."""
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
                hists, x = (bucket.rel, u / cap) if cap > 0 else (bucket.abs, u)
                h = hists.get(r)
                if h is None:
                    h = hists[r] = Hist()
                h.update(x)

    def _pool(self, key: str) -> list[_Bucket]:
        pool = self.pools.get(key)
        if pool is None:
            pool = self.pools[key] = [_Bucket() for _ in AGES]
            while len(self.pools) > self.max_keys:
                self.pools.popitem(last=False)
        else:
            self.pools.move_to_end(key)
        return pool

    def reserve(self, keys: Sequence[str], age_s: float, resource: str, tail: float,
                size: float) -> tuple[float, str] | None:
        """The ``1 - tail`` quantile of the first of ``keys`` whose pool has enough evidence at
        ``age_s`` (else at the nearest age that has), times ``size`` and capped by it where the
        size is known (absolute otherwise); with the key that answered."""
        want = age_bucket(age_s)
        by_distance = sorted(range(len(AGES)), key=lambda b: (abs(b - want), -b))
        for key in keys:
            pool = self.pools.get(key)
            if pool is None:
                continue
            for b in by_distance:
                hist = (pool[b].rel if size > 0 else pool[b].abs).get(resource)
                if (hist is None or pool[b].members < self.min_members
                        or hist.n < self.min_windows):
                    continue
                q = hist.quantile(1.0 - tail, upper=True)
                assert q is not None
                return (min(q, 1.0) * size if size > 0 else q), key
        return None


class TailController:
    """The share of peers' windows a young instance's reserve leaves above it, for the young
    instances sharing one budget: ``log tail -= eta * (r - budget) / budget`` after every
    period in which they realised a rate ``r`` (``eta`` settling as the prices' does)."""

    __slots__ = ("budget", "eta", "eta0", "log_tail", "updates")

    def __init__(self, budget: float, eta: float = 0.05, eta0: float = 1.0) -> None:
        if not 0.0 < budget < 1.0:
            raise ValueError(f"budget must be a share of windows in (0, 1), got {budget!r}")
        self.budget = budget
        self.eta = eta
        self.eta0 = eta0
        self.log_tail = math.log(budget)
        self.updates = 0

    @property
    def tail(self) -> float:
        return math.exp(self.log_tail)

    def learn(self, violations: int, windows: int) -> None:
        if windows <= 0:
            return
        self.updates += 1
        eta = max(self.eta, self.eta0 / math.sqrt(self.updates))
        self.log_tail -= eta * (violations / windows - self.budget) / self.budget
        self.log_tail = min(max(self.log_tail, math.log(1e-5)), math.log(0.5))


class YoungChoice:
    """Per resource and age: what the peers' reserves and the instances' own cautious rule
    would have cost so far (``slack + price * violations``), older periods fading by
    ``decay`` each, so that peers who were few or mixed when the fleet was new are judged
    again as their pools fill; to choose between them."""

    __slots__ = ("cost", "decay")

    def __init__(self, decay: float = 0.97) -> None:
        self.cost: dict[tuple[str, int], list[float]] = {}  # [peers, own]
        self.decay = decay

    def learn(self, resource: str, bucket: int, usage: Sequence[float], peers: float,
              own: float, price: float) -> None:
        cost = self.cost.setdefault((resource, bucket), [0.0, 0.0])
        for i, reserve in enumerate((peers, own)):
            cost[i] = cost[i] * self.decay + sum(
                max(reserve - u, 0.0) + (price if u > reserve else 0.0) for u in usage)

    def peers(self, resource: str, bucket: int) -> bool:
        """Whether the peers decide at this age (they do until they have cost more)."""
        peers, own = self.cost.get((resource, bucket), (0.0, 0.0))
        return peers <= own
