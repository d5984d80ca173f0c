"""Cold start: what a never-seen instance will need, from what is known before it runs.

Two things are learned online from every window the model stage processes:

- **cluster**: a River multinomial naive Bayes from the tokens of an app's labels and size to
  the fingerprint cluster it falls in (DESIGN.md, learning path step 6). It names the cluster
  of a deploy request and, when nothing closer is known, lends that cluster's typical need.
- **need**: per instance, the 95th percentile of its window peaks (a sparse log-binned
  histogram, bins 4.4 % wide), per resource, both absolute and relative to its size
  (``capacity``). Instances
  are indexed by *evidence keys*: the app, the full label combination, each label value, and the
  size bucket. A deploy request is answered from the most specific key that has evidence:

  1. ``app``: the app's most recent earlier instance (its own history, the strongest signal);
  2. ``combo``: instances with exactly the same labels (at least ``min_support``);
  3. ``label`` / ``size`` / ``fleet``: among the single label values (``team=payments``), the
     size bucket and the fleet, each with at least ``min_support`` instances (of at least
     ``min_windows`` windows), the one whose *name* (``label:team``, ``size``, ``fleet``) has
     guessed best so far, its ``group_quantile``. Which labels predict need is learned: every
     new instance records what each group would have guessed for it, judged against its own
     need once it has ``judge_windows`` windows (mean absolute log error). Until a name has
     been judged 5 times, groups rank by their spread (inter-quartile range over median), the
     fleet last;
  4. ``cluster``: the classifier's most likely cluster and that cluster's typical need;
  5. ``requested``: the requested size itself, then nothing at all (zero need).

  Relative needs are scaled by the request's ``requested`` size where both are known, so a
  small and a large instance of one kind get proportionate guesses; otherwise absolute needs.
  Unknown label values simply have no evidence, so they fall through to what is known.

Confidence is the level's prior (0.9 for the app's own history, down to 0.05 for nothing),
shrunk by how much evidence there is and how spread it is, then calibrated by feedback: the
quality of each proactive allocation over its instance's first hour of windows (event time),
``waste = sum(max(A - u, 0)) / sum(A)`` and the share of windows with ``u > A`` (``u`` the
window peak, ``A`` the proactive reserve), is tracked per level, and a level's confidence is
multiplied by its (smoothed) share of first-hour windows without violation. ``quality`` holds
the fleet totals that the flow exports as Prometheus metrics.

Everything is deterministic: no wall clock, no randomness; ties break on sorted keys, and
instances that start at the same event time join a group in the order of a stable hash of their
names. Memory is bounded: ``max_instances`` instance summaries (least recently updated dropped
first), ``max_keys`` evidence keys of at most ``window`` instances each, the newest by first
window.
"""

from __future__ import annotations

import bisect
import math
import zlib
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any

from river import naive_bayes

from fpstream.events import RESOURCES
from fpstream.scoring import Score

__all__ = ["LEVELS", "ColdStart", "FirstHour", "Guess", "Hist", "Quality", "group_keys",
           "guess_key", "tokens"]

#: Evidence levels, most specific first, with their prior confidence.
LEVELS: dict[str, float] = {"app": 0.9, "combo": 0.75, "label": 0.6, "size": 0.5,
                            "cluster": 0.4, "fleet": 0.25, "requested": 0.1, "none": 0.05}
FIRST_HOUR_S = 3600.0
_EPS = 1e-9


@dataclass(frozen=True, slots=True)
class Guess:
    need: dict[str, float]
    cluster: int
    confidence: float
    #: Which evidence answered (one of ``LEVELS``), and the key (``slice=x``) when a label.
    source: str = "none"
    key: str = ""
    support: int = 0


def evidence_labels(labels: Mapping[str, str]) -> Mapping[str, str]:
    """The labels that say what an app is: fpstream's own (``fpstream.*``, such as a violation
    budget) say what it is given, and are no evidence."""
    if not any(k.startswith("fpstream.") for k in labels):
        return labels
    return {k: v for k, v in labels.items() if not k.startswith("fpstream.")}


def tokens(labels: Mapping[str, str], size: Mapping[str, float]) -> dict[str, int]:
    """Label and size tokens; sizes are bucketed by powers of two so near sizes share one."""
    out = {f"{k}={v}": 1 for k, v in labels.items()}
    for key in ("cpu_cores", "mem_bytes"):
        value = size.get(key)
        if value and value > 0:
            out[f"{key}~{round(math.log2(value))}"] = 1
    return out


def size_key(size: Mapping[str, float]) -> str | None:
    """The size bucket of a request or a capacity (cpu and memory, powers of two)."""
    parts = [t for t in tokens({}, size)]
    return ",".join(sorted(parts)) or None


def group_keys(labels: Mapping[str, str], size: Mapping[str, float]) -> list[str]:
    """The evidence keys of an instance's groups: the fleet, its label combination and each
    label value (of ``evidence_labels``), its size bucket."""
    keys = ["fleet:"]
    if labels:
        keys.append("combo:" + ",".join(f"{k}={v}" for k, v in sorted(labels.items())))
        keys.extend(f"label:{k}={v}" for k, v in sorted(labels.items()))
    sk = size_key(size)
    if sk is not None:
        keys.append(f"size:{sk}")
    return keys


def guess_key(guess: Guess) -> str | None:
    """The evidence key of the group that answered a guess (None for an app's own history or
    no evidence)."""
    if guess.source in ("combo", "label", "size"):
        return f"{guess.source}:{guess.key}"
    if guess.source == "fleet":
        return "fleet:"
    if guess.source == "cluster" and guess.cluster >= 0:
        return f"cluster:{guess.cluster}"
    return None


class Hist:
    """A sparse log-binned histogram (bins 2^(1/16) wide, about 4.4 %): quantiles within a
    bin's width, bounded memory, deterministic, cheap to update."""

    __slots__ = ("bins", "n", "zeros")
    SCALE = 16.0

    def __init__(self) -> None:
        self.bins: dict[int, int] = {}
        self.zeros = 0
        self.n = 0

    def update(self, x: float) -> None:
        self.n += 1
        if x <= 0 or not math.isfinite(x):
            self.zeros += 1
            return
        b = math.floor(math.log2(x) * self.SCALE)
        self.bins[b] = self.bins.get(b, 0) + 1

    def quantile(self, q: float, upper: bool = False) -> float | None:
        """The ``q`` quantile: its bin's middle, or its upper edge (``upper``: a value no
        smaller than any in the bin, for a reservation)."""
        if not self.n:
            return None
        rank = q * (self.n - 1)
        seen = self.zeros
        if rank < seen:
            return 0.0
        at = 1.0 if upper else 0.5
        for b in sorted(self.bins):
            seen += self.bins[b]
            if rank < seen:
                return float(2.0 ** ((b + at) / self.SCALE))
        return float(2.0 ** ((max(self.bins) + at) / self.SCALE))


    def cheapest(self, scale: float, price: float) -> float | None:
        """The bin edge ``q`` that costs least per window when ``scale * q`` is reserved for a
        value drawn from the histogram times ``scale``: ``scale * E[max(q - x, 0)]`` of slack
        plus ``price * P(x > q)``, a violated window costing ``price`` (in the units of
        ``scale``). A higher price buys a higher edge; None when empty.

        >>> h = Hist()
        >>> for x in [1.0] * 98 + [4.0] * 2:
        ...     h.update(x)
        >>> round(h.cheapest(1.0, 0.5), 2), round(h.cheapest(1.0, 200.0), 2)
        (1.04, 4.18)
        """
        if not self.n:
            return None
        edges = sorted(self.bins)
        # candidates: 0 (every positive value above it) and each bin's upper edge
        best_q, best_cost = 0.0, price * (self.n - self.zeros) / self.n
        below, below_sum = self.zeros, 0.0  # values at or under the candidate, their sum
        for b in edges:
            below += self.bins[b]
            below_sum += self.bins[b] * 2.0 ** ((b + 0.5) / self.SCALE)
            q = 2.0 ** ((b + 1) / self.SCALE)
            cost = (scale * (q * below - below_sum) + price * (self.n - below)) / self.n
            if cost < best_cost:
                best_q, best_cost = q, cost
        return best_q


class InstanceNeed:
    """One instance's 95th percentile of window peaks per resource, absolute and relative to
    its size, and what each evidence key would have guessed for it (``guesses``, judged once
    the instance has ``judge_windows`` windows). ``order`` places it among a group's members:
    the event time of its first window, then a stable hash of its name."""

    __slots__ = ("abs", "guesses", "n", "order", "rel")

    def __init__(self, order: tuple[float, int] = (0.0, 0)) -> None:
        self.abs: dict[str, Hist] = {}
        self.rel: dict[str, Hist] = {}
        self.guesses: dict[str, float] = {}
        self.n = 0
        self.order = order

    def update(self, peak: Mapping[str, float], size: Mapping[str, float]) -> None:
        self.n += 1
        for r in RESOURCES:
            u = float(peak.get(r, 0.0))
            h = self.abs.get(r)
            if h is None:
                h = self.abs[r] = Hist()
            h.update(u)
            cap = float(size.get(r, 0.0) or 0.0)
            if cap > 0:
                q = self.rel.get(r)
                if q is None:
                    q = self.rel[r] = Hist()
                q.update(u / cap)

    def need(self, r: str) -> float:
        h = self.abs.get(r)
        value = None if h is None else h.quantile(0.95)
        return 0.0 if value is None else value

    def ratio(self, r: str) -> float | None:
        h = self.rel.get(r)
        return None if h is None else h.quantile(0.95)


@dataclass(slots=True)
class FirstHour:
    """A proactive reserve being scored over its instance's first hour of windows."""

    reserve: dict[str, float]
    source: str
    start: float | None = None
    scores: dict[str, Score] = field(default_factory=dict)
    windows: int = 0


@dataclass(slots=True)
class Quality:
    """Fleet totals of first-hour quality of proactive allocations, per resource."""

    instances: int = 0
    windows: int = 0
    scores: dict[str, Score] = field(default_factory=dict)

    def waste(self, r: str) -> float | None:
        score = self.scores.get(r)
        return None if score is None or score.allocated <= 0 else score.waste


# The reserve fields a need resource is scored against (disk and net are summed in a reserve).
_SCORED: dict[str, str] = {"cpu_cores": "cpu_cores", "mem_bytes": "mem_bytes"}


class ColdStart:
    def __init__(self, alpha: float = 0.5, *, group_quantile: float = 0.4,
                 min_support: int = 3, window: int = 256, max_keys: int = 100_000,
                 max_instances: int = 100_000, judge_windows: int = 144,
                 min_windows: int = 12) -> None:
        self.classifier = naive_bayes.MultinomialNB(alpha=alpha)
        self.cluster_needs: dict[int, dict[str, float]] = {}
        self.learned = 0
        self.group_quantile = group_quantile
        self.min_support = min_support
        self.window = window
        self.max_keys = max_keys
        self.max_instances = max_instances
        self.instances: OrderedDict[tuple[str, str], InstanceNeed] = OrderedDict()
        self.index: OrderedDict[str, list[InstanceNeed]] = OrderedDict()
        self._last_cluster: dict[tuple[str, str], int] = {}
        self.tracking: dict[tuple[str, str], FirstHour] = {}
        self.quality = Quality()
        #: Per evidence level: first-hour windows scored and those violated (calibration).
        self.level_windows: dict[str, int] = {}
        self.level_viol: dict[str, int] = {}
        #: Per evidence name (``label:slice``, ``size``, ``fleet``): the summed log error of
        #: its guesses for new instances, and how many were judged.
        self.judge_windows = judge_windows
        self.min_windows = min_windows
        self.key_error: dict[str, list[float]] = {}

    # -- learning ---------------------------------------------------------------------------

    def learn(self, labels: Mapping[str, str], capacity: Mapping[str, float], cluster: int,
              observed: Mapping[str, float], app: str | None = None,
              instance: str | None = None, ts: float | None = None) -> None:
        """One window of an instance: its labels, size, cluster and observed peak.

        Without ``app`` and ``instance`` only the cluster classifier learns (the old call)."""
        labels = evidence_labels(labels)
        key = None if app is None or instance is None else (app, instance)
        x = tokens(labels, capacity)
        # The classifier learns an instance's cluster when it changes, not every window, so
        # long-lived instances do not drown the rest (and it costs far less).
        if x and (key is None or self._last_cluster.get(key) != cluster):
            self.classifier.learn_one(x, cluster)
            self.learned += 1
            if key is not None:
                self._last_cluster[key] = cluster
        if key is None:
            return
        inst = self.instances.get(key)
        if inst is None:
            inst = self._new_instance(key, labels, capacity, 0.0 if ts is None else ts)
        else:
            self.instances.move_to_end(key)
        inst.update(observed, capacity)
        if inst.n == self.judge_windows and inst.guesses:
            self._judge(inst, capacity)
        if ts is not None and key in self.tracking:
            self._score_first_hour(key, ts, observed)

    def _new_instance(self, key: tuple[str, str], labels: Mapping[str, str],
                      capacity: Mapping[str, float], ts: float) -> InstanceNeed:
        inst = InstanceNeed((ts, zlib.crc32(f"{key[0]}\0{key[1]}".encode())))
        inst.guesses = {name: self._primary(members, capacity)
                        for name, _, members in self._groups(labels, capacity)}
        self.instances[key] = inst
        while len(self.instances) > self.max_instances:
            old, _ = self.instances.popitem(last=False)
            self._last_cluster.pop(old, None)
            self.tracking.pop(old, None)
        for k in self._keys(key[0], labels, capacity):
            members = self.index.get(k)
            if members is None:
                members = self.index[k] = []
            else:
                self.index.move_to_end(k)
            # The newest ``window`` members, oldest first. Instances that start together (a
            # fleet coming up, a trace's first slot) are ordered by the hash of their name, so
            # which of them a full group keeps does not follow their names or arrival order.
            bisect.insort(members, inst, key=attrgetter("order"))
            if len(members) > self.window:
                del members[0]
        while len(self.index) > self.max_keys:
            self.index.popitem(last=False)
        return inst

    @staticmethod
    def _keys(app: str, labels: Mapping[str, str], size: Mapping[str, float]) -> list[str]:
        return [f"app:{app}", *group_keys(labels, size)]

    def set_cluster_needs(self, cluster: int, need: Mapping[str, float]) -> None:
        if need:
            self.cluster_needs[cluster] = dict(need)

    # -- prediction -------------------------------------------------------------------------

    def predict(self, labels: Mapping[str, str], requested: Mapping[str, float],
                app: str | None = None) -> Guess:
        labels = evidence_labels(labels)
        cluster, p_cluster = self._cluster(labels, requested)
        found = self._evidence(labels, requested, app)
        if found is not None:
            level, key, members = found
            need = self._need(members, requested, latest=level == "app")
            spread = 0.0 if level == "app" else self._spread(members)
            n = len(members)
            conf = LEVELS[level] * (n / (n + 1.0)) / (1.0 + spread)
            return Guess(need, cluster, self._calibrated(level, conf), level, key, n)
        if cluster >= 0 and cluster in self.cluster_needs:
            return Guess(dict(self.cluster_needs[cluster]), cluster,
                         self._calibrated("cluster", LEVELS["cluster"] * p_cluster), "cluster")
        if requested:
            need = {r: float(requested.get(r, 0.0)) for r in RESOURCES}
            return Guess(need, cluster, self._calibrated("requested", LEVELS["requested"]),
                         "requested")
        return Guess(self.fleet_prior(), cluster, LEVELS["none"], "none")

    def _cluster(self, labels: Mapping[str, str], requested: Mapping[str, float]
                 ) -> tuple[int, float]:
        x = tokens(labels, requested)
        proba = self.classifier.predict_proba_one(x) if x and self.learned else {}
        ranked = sorted(((p, c) for c, p in proba.items()), key=lambda t: (-t[0], t[1]))
        if not ranked:
            return -1, 0.0
        p, c = ranked[0]
        return int(c), float(p)

    def _evidence(self, labels: Mapping[str, str], requested: Mapping[str, float],
                  app: str | None) -> tuple[str, str, list[InstanceNeed]] | None:
        if app is not None:
            members = self._members(f"app:{app}")
            if members:
                return "app", app, members
        if labels:
            combo = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
            members = self._members(f"combo:{combo}")
            if len(members) >= self.min_support:
                return "combo", combo, members
        groups = self._groups(labels, requested)
        if groups:
            name, key, members = min(groups, key=lambda g: self._rank(g[0], g[2]))
            level = name.split(":", 1)[0]
            return level, key, members
        return None

    def _groups(self, labels: Mapping[str, str], size: Mapping[str, float]
                ) -> list[tuple[str, str, list[InstanceNeed]]]:
        """(evidence name, key, members) of every group with at least ``min_support``
        instances: each label value, the size bucket and the fleet."""
        out = []
        for k, v in sorted(labels.items()):
            members = self._members(f"label:{k}={v}")
            if len(members) >= self.min_support:
                out.append((f"label:{k}", f"{k}={v}", members))
        sk = size_key(size)
        if sk is not None:
            members = self._members(f"size:{sk}")
            if len(members) >= self.min_support:
                out.append(("size", sk, members))
        members = self._members("fleet:")
        if len(members) >= self.min_support:
            out.append(("fleet", "", members))
        return out

    def _rank(self, name: str, members: list[InstanceNeed]) -> tuple[int, float, str]:
        """Names whose guesses have been judged often enough rank first, by their mean error
        (learned: which labels predict need); the others by the group's spread, the fleet
        last."""
        err = self.key_error.get(name)
        if err is not None and err[1] >= 5:
            return (0, err[0] / err[1], name)
        return (1 if name != "fleet" else 2, self._spread(members), name)

    @staticmethod
    def _primary(members: list[InstanceNeed], size: Mapping[str, float]) -> float:
        """A group's guess of the CPU need, relative to ``size`` when it has CPU."""
        if float(size.get("cpu_cores", 0.0) or 0.0) > 0:
            ratios = [x for m in members if (x := m.ratio("cpu_cores")) is not None]
            if ratios:
                return _quantile(ratios, 0.5)
        return _quantile([m.need("cpu_cores") for m in members], 0.5)

    def _judge(self, inst: InstanceNeed, size: Mapping[str, float]) -> None:
        """Score what each evidence name guessed for this instance against what it used."""
        ratio = inst.ratio("cpu_cores") if float(size.get("cpu_cores", 0.0) or 0.0) > 0 else None
        actual = inst.need("cpu_cores") if ratio is None else ratio
        delta = 0.01 if ratio is not None else 0.01 * max(actual, _EPS)
        for name, guess in sorted(inst.guesses.items()):
            err = self.key_error.setdefault(name, [0.0, 0.0])
            err[0] += abs(math.log((guess + delta) / (actual + delta)))
            err[1] += 1
        inst.guesses = {}

    def _members(self, key: str) -> list[InstanceNeed]:
        """The key's instances with at least ``min_windows`` windows (an hour of 5-minute
        windows by default: a need from fewer is noise); an app's own with any."""
        members = self.index.get(key)
        if not members:
            return []
        least = 1 if key.startswith("app:") else self.min_windows
        return [m for m in members if m.n >= least]

    def _need(self, members: list[InstanceNeed], requested: Mapping[str, float],
              latest: bool) -> dict[str, float]:
        """Per resource: relative to ``requested`` where both are known, else absolute; the
        latest member (an app's own history) or the group's ``group_quantile``."""
        chosen = members[-1:] if latest else members
        out: dict[str, float] = {}
        for r in RESOURCES:
            req = float(requested.get(r, 0.0) or 0.0)
            ratios = [x for m in chosen if (x := m.ratio(r)) is not None] if req > 0 else []
            if ratios:
                out[r] = req * _quantile(ratios, self.group_quantile)
            else:
                out[r] = _quantile([m.need(r) for m in chosen], self.group_quantile)
        return out

    @staticmethod
    def _spread(members: list[InstanceNeed]) -> float:
        """Relative spread of the members' CPU (or first non-zero resource) need: the
        inter-quartile range over the median, so tight groups are preferred."""
        for r in RESOURCES:
            values = [m.ratio(r) if m.ratio(r) is not None else m.need(r) for m in members]
            vals = [float(v) for v in values if v is not None]
            if any(v > 0 for v in vals):
                q1, q2, q3 = (_quantile(vals, q) for q in (0.25, 0.5, 0.75))
                return (q3 - q1) / max(q2, _EPS)
        return 0.0

    def _calibrated(self, level: str, confidence: float) -> float:
        """Scale by the level's smoothed share of first-hour windows without violation."""
        n = self.level_windows.get(level, 0)
        ok = (n - self.level_viol.get(level, 0) + 9.0) / (n + 10.0)  # prior: 90 % of 10
        return float(min(1.0, max(0.0, confidence * ok)))

    def fleet_prior(self) -> dict[str, float]:
        """The median typical need over clusters: a guess for an instance nothing is known of."""
        out = {}
        for r in RESOURCES:
            values = sorted(n.get(r, 0.0) for n in self.cluster_needs.values())
            out[r] = values[len(values) // 2] if values else 0.0
        return out

    # -- first-hour quality (feedback) ------------------------------------------------------

    def track(self, app: str, instance: str, reserve: Mapping[str, float],
              source: str = "none") -> None:
        """Score the proactive ``reserve`` of a new instance over its first hour of windows."""
        self.tracking[(app, instance)] = FirstHour(
            {r: float(reserve[f]) for r, f in _SCORED.items() if f in reserve}, source)

    def _score_first_hour(self, key: tuple[str, str], ts: float,
                          observed: Mapping[str, float]) -> None:
        fh = self.tracking[key]
        if fh.start is None:
            fh.start = ts
        if ts >= fh.start + FIRST_HOUR_S:
            self._finish(key, fh)
            return
        fh.windows += 1
        for r, a in fh.reserve.items():
            u = float(observed.get(r, 0.0))
            if r == "mem_bytes" and u <= 0:
                continue  # not reported: nothing to score
            score = fh.scores.get(r)
            if score is None:
                score = fh.scores[r] = Score()
            score.add(a, u)

    def _finish(self, key: tuple[str, str], fh: FirstHour) -> None:
        del self.tracking[key]
        q = self.quality
        q.instances += 1
        q.windows += fh.windows
        for r, score in fh.scores.items():
            total = q.scores.get(r)
            if total is None:
                total = q.scores[r] = Score()
            total += score
        cpu = fh.scores.get("cpu_cores")
        violated = 0 if cpu is None else cpu.violations
        self.level_windows[fh.source] = self.level_windows.get(fh.source, 0) + fh.windows
        self.level_viol[fh.source] = self.level_viol.get(fh.source, 0) + violated

    def summary(self) -> dict[str, Any]:
        q = self.quality
        return {"instances": q.instances, "windows": q.windows,
                "waste": {r: q.waste(r) for r in sorted(q.scores)},
                "violations": {r: q.scores[r].violations for r in sorted(q.scores)},
                "levels": {lv: {"windows": n, "violations": self.level_viol.get(lv, 0)}
                           for lv, n in sorted(self.level_windows.items())}}


def _quantile(values: list[float], q: float) -> float:
    """Linear-interpolated quantile of a small list (deterministic, no numpy)."""
    if not values:
        return 0.0
    xs = sorted(values)
    pos = q * (len(xs) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return float(xs[lo] + (xs[hi] - xs[lo]) * (pos - lo))
