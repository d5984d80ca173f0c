"""Event-time tumbling windows of one app's samples, per instance, with an app watermark.

A window is ``(start, end]`` with ``start`` a multiple of ``window_s`` (epoch aligned): a
sample's ``ts`` is the *end* of the interval it measured, so a sample stamped exactly on a
boundary describes the window that boundary ends, not the next one.

The watermark of an app is the largest event time seen for it minus ``allowed_lateness_s``; a
window closes once the watermark reaches its end. A sample whose window ends at or before the
watermark when it arrives would land in a window already closed (or one that will never open):
it is *late* and comes back in ``WindowsOut.late`` for the dead-letter topic, never dropped
silently. The watermark is per app, not per instance: an instance that lags its siblings by more
than the allowed lateness has its samples counted late, as a lagging Kafka partition would.

>>> from fpstream.events import MetricSample
>>> w = AppWindows(window_s=60, allowed_lateness_s=0)
>>> out = w.add_many([MetricSample(t, "a", "i", {"cpu_cores": 1.0}) for t in (30, 60, 90, 120)])
>>> [(f.start, f.end, f.n) for f in out.closed], out.late
([(0.0, 60.0, 2), (60.0, 120.0, 2)], [])
>>> [s.ts for s in w.add(MetricSample(45, "a", "i", {"cpu_cores": 1.0})).late]
[45]
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import chain, repeat

import numpy as np

from fpstream.events import RESOURCES, MetricSample
from fpstream.features import COLUMNS, FEATURE_ORDER, WindowFeatures, featurise
from fpstream.ingest import SampleBatch


@dataclass(frozen=True, slots=True)
class WindowsOut:
    """What one call produced: closed windows in (end, instance) order, and refused samples.

    ``late`` missed their window (dead-letter them as ``late``); ``dropped`` exceeded a bound
    (``max_instances`` or ``max_window_samples``; dead-letter them as ``too_large``).
    """

    closed: list[WindowFeatures]
    late: list[MetricSample] = field(default_factory=list)
    dropped: list[MetricSample] = field(default_factory=list)


@dataclass(slots=True)
class _Rows:
    """Rows stored for open windows: a batch's columns, or what a close left of them.

    ``regular`` rows (the usual batch: one sample per instance, all at one event time) are
    all in one window and need no sorting; ``first_end`` and ``last_end`` bound the ends of
    the windows the rows are in; ``load`` is the most samples the rows can add to one
    instance's window (1 when no instance repeats).
    """

    ts: np.ndarray
    instance: tuple[str, ...]
    names: tuple[str, ...]
    values: np.ndarray
    labels: tuple[dict[str, str] | None, ...]
    capacity: tuple[dict[str, float] | None, ...]
    dense: bool
    regular: bool
    first_ts: float
    first_end: float
    last_end: float
    load: int


class AppWindows:
    """The window state of one app (all its instances); the flow keeps one per app key.

    Samples arrive in batches (``SampleBatch``) and are stored as they came, columns and all:
    no work per sample until their windows close, when the closing windows of every instance
    are grouped and featurised together (``features.featurise``).

    Memory is bounded: an instance holds samples only for its open windows, and at most
    ``ceil(allowed_lateness_s / window_s) + 1`` windows are open at once. At most
    ``max_instances`` instances may have open windows together, each at most
    ``max_window_samples`` samples per window; beyond that samples are returned in
    ``dropped``. Dropping the newcomer, rather than evicting an idle instance, is deliberate: an
    instance without open windows already costs nothing, so the cap only bites when that many
    instances are active at once, where evicting would split windows and thrash.
    """

    def __init__(
        self,
        window_s: float,
        allowed_lateness_s: float,
        max_instances: int = 256,
        max_window_samples: int = 4096,
    ) -> None:
        if not (window_s > 0 and math.isfinite(window_s)):
            msg = f"window_s must be a positive number of seconds, got {window_s!r}"
            raise ValueError(msg)
        if not (allowed_lateness_s >= 0 and math.isfinite(allowed_lateness_s)):
            msg = f"allowed_lateness_s must be >= 0 seconds, got {allowed_lateness_s!r}"
            raise ValueError(msg)
        for name, value in (("max_instances", max_instances),
                            ("max_window_samples", max_window_samples)):
            if not isinstance(value, int) or value < 1:
                msg = f"{name} must be a positive integer, got {value!r}"
                raise ValueError(msg)
        self.window_s = float(window_s)
        self.allowed_lateness_s = float(allowed_lateness_s)
        self.max_instances = max_instances
        self.max_window_samples = max_window_samples
        self.app: str | None = None
        self.late_total = 0
        self.dropped_total = 0
        self._max_ts = -math.inf
        self._wm = -math.inf
        self._stored: list[_Rows] = []  # the samples of the open windows, in arrival order
        # per open window (its end), a bound on the samples of any one instance in it
        self._load: dict[float, int] = {}
        self._rows = 0  # samples stored, a bound for batches over several windows
        self._instances: set[str] = set()  # instances with an open window
        self._first_end = math.inf  # ends of the earliest and latest open windows
        self._last_end = -math.inf

    @property
    def watermark(self) -> float:
        """Windows ending at or before this are closed; samples for them are late."""
        return self._wm

    @property
    def last_ts(self) -> float | None:
        """The largest sample event time seen, ``None`` before the first sample."""
        return None if self._max_ts == -math.inf else self._max_ts

    def idle_for(self, now_ts: float) -> float:
        """Event-time seconds since the last sample (``inf`` if none): the flow expires idle
        apps with ``flush()`` once this passes its TTL."""
        return now_ts - self._max_ts

    @property
    def open_windows(self) -> int:
        """Open (instance, window) pairs: what this state holds samples for."""
        return sum(self.open_per_instance.values())

    @property
    def open_per_instance(self) -> dict[str, int]:
        """Open windows of each instance that has any."""
        w = self.window_s
        pairs = {(inst, end) for rows in self._stored
                 for inst, end in zip(rows.instance, np.ceil(rows.ts / w).tolist(), strict=True)}
        return dict(Counter(inst for inst, _ in pairs))

    def add(self, sample: MetricSample) -> WindowsOut:
        """Add one sample; see ``add_many``."""
        return self.add_many((sample,))

    def add_many(self, batch: SampleBatch | Iterable[MetricSample]) -> WindowsOut:
        """Add samples in arrival order; return the windows they closed and those refused.

        ``batch`` is what the decoder gives (``SampleBatch``), or samples of this app. Windows
        closed anywhere in the batch are featurised together at the end.
        """
        if not isinstance(batch, SampleBatch):
            samples = list(batch)
            if not samples:
                return WindowsOut([])
            for s in samples:  # before any change: a refused batch leaves no trace
                self._check_app(s.app)
            batch = SampleBatch.from_samples(samples)
        if batch.app != self.app:
            self._check_app(batch.app)
            self.app = batch.app
        n = len(batch.instance)
        if n == 0:
            return WindowsOut([])
        w = self.window_s
        high = batch.ts_max - self.allowed_lateness_s
        if high < self._wm:
            high = self._wm
        instances = batch.instance
        first = math.ceil(batch.ts_min / w) * w
        load = 1 if len(set(instances)) == n else n
        cap = self.max_window_samples
        if first > high and (
                self._load.get(first, 0) + load <= cap
                if first == math.ceil(batch.ts_max / w) * w else self._rows + n <= cap) \
                and (self._instances.issuperset(instances) or self._fits(instances)):
            # the usual case: no sample can be late or over a bound
            self._store(batch.ts, instances, batch.names, batch.values, batch.labels,
                        batch.capacity, batch.dense, batch.ts_min, batch.ts_max, load)
            if batch.ts_max > self._max_ts:
                self._max_ts = batch.ts_max
            self._wm = high
            return WindowsOut(self._close() if self._first_end <= high else [])
        accepted, late_rows, dropped_rows = self._admit(batch)
        if accepted:
            ts = batch.ts[accepted]
            kept = tuple(instances[i] for i in accepted)
            self._store(ts, kept, batch.names, batch.values[accepted],
                        tuple(batch.labels[i] for i in accepted),
                        tuple(batch.capacity[i] for i in accepted), batch.dense,
                        float(ts.min()), float(ts.max()),
                        1 if len(set(kept)) == len(kept) else len(kept))
        late = batch.samples(late_rows) if late_rows else []
        dropped = batch.samples(dropped_rows) if dropped_rows else []
        self.late_total += len(late)
        self.dropped_total += len(dropped)
        closed = self._close() if self._first_end <= self._wm else []
        return WindowsOut(closed, late, dropped)

    def advance(self, ts: float) -> list[WindowFeatures]:
        """Move the watermark as if event time ``ts`` was seen (e.g. the flow's clock), so a
        quiet app's last windows close without waiting for its next sample."""
        if ts - self.allowed_lateness_s > self._wm:
            self._wm = ts - self.allowed_lateness_s
            if self._first_end <= self._wm:
                return self._close()
        return []

    def flush(self) -> list[WindowFeatures]:
        """Close every open window (end of stream, or an idle app about to expire).

        The watermark moves to the last closed end, so a later sample for a flushed window is
        late rather than a second window with the same bounds.
        """
        if not self._stored:
            return []
        self._wm = max(self._wm, self._last_end)
        return self._close()

    def _check_app(self, app: str) -> None:
        if self.app is not None and app != self.app:
            msg = f"AppWindows holds app {self.app!r}, got a sample of {app!r}: key by app first"
            raise ValueError(msg)

    def _fits(self, instances: tuple[str, ...]) -> bool:
        """No instance of ``instances`` would be dropped for ``max_instances``."""
        return len(self._instances.union(instances)) <= self.max_instances

    def _store(self, ts: np.ndarray, instance: tuple[str, ...], names: tuple[str, ...],
               values: np.ndarray, labels: tuple[dict[str, str] | None, ...],
               capacity: tuple[dict[str, float] | None, ...], dense: bool, ts_min: float,
               ts_max: float, load: int) -> None:
        w = self.window_s
        first, last = math.ceil(ts_min / w) * w, math.ceil(ts_max / w) * w
        rows = _Rows(ts, instance, names, values, labels, capacity, dense,
                     dense and ts_min == ts_max and load == 1, ts_min, first, last, load)
        self._stored.append(rows)
        self._rows += len(instance)
        _add_load(self._load, rows, w)
        self._instances.update(instance)
        if first < self._first_end:
            self._first_end = first
        if last > self._last_end:
            self._last_end = last

    def _admit(self, batch: SampleBatch) -> tuple[list[int], list[int], list[int]]:
        """Sample by sample, as the rules say: which rows are kept, late or dropped. The
        watermark moves with each kept sample; windows it passes close (for the bounds' sake)
        before the next sample, and leave the store at the end of the batch."""
        w = self.window_s
        lateness = self.allowed_lateness_s
        cap = self.max_window_samples
        wm = self._wm
        max_ts = self._max_ts
        counts: dict[tuple[int, str], int] = {}  # samples per open (window, instance)
        for rows in self._stored:
            for ts, inst in zip(rows.ts.tolist(), rows.instance, strict=True):
                key = (math.ceil(ts / w), inst)
                counts[key] = counts.get(key, 0) + 1
        per_instance = Counter(inst for _, inst in counts)
        next_end = self._first_end
        accepted: list[int] = []
        late: list[int] = []
        dropped: list[int] = []
        for i, (ts, inst) in enumerate(zip(batch.ts.tolist(), batch.instance, strict=True)):
            k = math.ceil(ts / w)
            end = k * w
            if end <= wm:
                late.append(i)
                continue
            n = counts.get((k, inst))
            if n is None:
                if inst not in per_instance and len(per_instance) >= self.max_instances:
                    dropped.append(i)
                    continue
                counts[(k, inst)] = 1
                per_instance[inst] += 1
                next_end = min(next_end, end)
            elif n >= cap:
                dropped.append(i)
                continue
            else:
                counts[(k, inst)] = n + 1
            accepted.append(i)
            if ts > max_ts:
                max_ts = ts
                if ts - lateness > wm:
                    wm = ts - lateness
                    if next_end <= wm:
                        for key in [key for key in counts if key[0] * w <= wm]:
                            del counts[key]
                            per_instance[key[1]] -= 1
                            if not per_instance[key[1]]:
                                del per_instance[key[1]]
                        next_end = min((key[0] * w for key in counts), default=math.inf)
        self._wm = wm
        self._max_ts = max_ts
        return accepted, late, dropped

    def _close(self) -> list[WindowFeatures]:
        """Featurise the windows ending at or before the watermark, by end then instance."""
        wm = self._wm
        involved: list[_Rows] = []
        left: list[_Rows] = []
        for r in self._stored:
            (involved if r.first_end <= wm else left).append(r)
        first = involved[0]
        if all(r.regular and r.instance == first.instance and r.names == first.names
               for r in involved):
            out = self._close_regular(involved)
        else:
            out, left = self._close_rows()
        self._stored = left
        self._load = {}
        self._rows = sum([len(r.instance) for r in left])
        if left:
            for r in left:
                _add_load(self._load, r, self.window_s)
            self._instances = set(chain.from_iterable([r.instance for r in left]))
            self._first_end = min([r.first_end for r in left])
            self._last_end = max([r.last_end for r in left])
        else:
            self._instances = set()
            self._first_end, self._last_end = math.inf, -math.inf
        return out

    def _close_regular(self, involved: list[_Rows]) -> list[WindowFeatures]:
        """The usual close: batches of one sample per instance at one time, the same
        instances and metrics in each, so a window's samples are one column of a block."""
        w = self.window_s
        instance = involved[0].instance
        columns, src = _selection(involved[0].names)
        by_window: dict[float, list[_Rows]] = {}
        for r in involved:
            by_window.setdefault(r.first_end, []).append(r)
        order = sorted(range(len(instance)), key=instance.__getitem__)
        shuffled = order != list(range(len(instance)))
        app = self.app or ""
        out = []
        for end in sorted(by_window):
            rows = by_window[end]
            if len(rows) > 1:
                rows.sort(key=_time_of)  # stable: arrival order among equal times
            values = rows[0].values if len(rows) == 1 else \
                np.concatenate([r.values for r in rows])
            block = values.reshape(len(rows), len(instance), -1).transpose(1, 0, 2)
            if shuffled:
                block = block[order]
            feats, peak, mean = featurise(np.ascontiguousarray(block[:, :, src]), columns)
            latest = rows[-1]
            idx = round(end / w) - 1
            for k, i in enumerate(order):
                out.append(_window(app, instance[i], idx, w, len(rows), feats[k], peak[k],
                                   mean[k], latest.labels[i], latest.capacity[i]))
        return out

    def _close_rows(self) -> tuple[list[WindowFeatures], list[_Rows]]:
        """Any close: sort the rows of the stored batches that hold closing windows by
        window, instance and time; the rest of those batches stays, in its place."""
        w = self.window_s
        wm = self._wm
        stored = self._stored
        involved = [r for r in stored if r.first_end <= wm]
        ts = involved[0].ts if len(involved) == 1 else np.concatenate([r.ts for r in involved])
        instance = list(chain.from_iterable(r.instance for r in involved))
        values, columns = _window_values(involved)
        ceil = np.ceil(ts / w)  # a window's index + 1
        closing = ceil * w <= wm
        pick = np.flatnonzero(closing)
        names = sorted({instance[i] for i in pick.tolist()})
        rank = {name: r for r, name in enumerate(names)}
        codes = np.fromiter(map(rank.get, instance, repeat(0)), np.float64, len(instance))
        first = float(ceil[pick].min())
        # one key per (window, instance), windows first; small integers, exact in float64
        key = (ceil[pick] - first) * len(names) + codes[pick]
        # by window, instance, then event time; equal times keep their arrival order
        order = pick[np.lexsort((ts[pick], key))]
        rows = order.tolist()
        keys = ((ceil[order] - first) * len(names) + codes[order]).tolist()
        n = len(rows)
        starts = [i for i in range(n) if i == 0 or keys[i] != keys[i - 1]]
        sizes = [b - a for a, b in zip(starts, [*starts[1:], n], strict=True)]
        feats, peak, mean = _featurise(np.ascontiguousarray(values[order]), starts, sizes,
                                       columns)
        labels = list(chain.from_iterable(r.labels for r in involved))
        capacity = list(chain.from_iterable(r.capacity for r in involved))
        app = self.app or ""
        out = []
        for k, (start, size) in enumerate(zip(starts, sizes, strict=True)):
            last = rows[start + size - 1]  # the latest sample of the window
            idx, inst = divmod(int(keys[start]), len(names))
            out.append(_window(app, names[inst], idx + int(first) - 1, w, size, feats[k],
                               peak[k], mean[k], labels[last], capacity[last]))
        # what stays: untouched batches as they are, the open rest of the others in place
        left = []
        at = 0
        stays = ~closing
        for r in stored:
            if r.first_end > wm:
                left.append(r)
                continue
            m = len(r.instance)
            keep = np.flatnonzero(stays[at : at + m]).tolist()
            at += m
            if keep:
                kept_ts = r.ts[keep]
                low, high = float(kept_ts.min()), float(kept_ts.max())
                left.append(_Rows(kept_ts, tuple(r.instance[i] for i in keep), r.names,
                                  r.values[keep], tuple(r.labels[i] for i in keep),
                                  tuple(r.capacity[i] for i in keep), r.dense, False, low,
                                  math.ceil(low / w) * w, math.ceil(high / w) * w,
                                  min(r.load, len(keep))))
        return out, left


def _add_load(load: dict[float, int], rows: _Rows, w: float) -> None:
    """Count ``rows`` against the windows they are in (``AppWindows._load``)."""
    if rows.first_end == rows.last_end:
        load[rows.first_end] = load.get(rows.first_end, 0) + rows.load
    else:  # rows spread over windows (rare): each window's share is at most all of them
        for end in set((np.ceil(rows.ts / w) * w).tolist()):
            load[end] = load.get(end, 0) + rows.load


def _time_of(rows: _Rows) -> float:
    return rows.first_ts


def _window(app: str, instance: str, idx: int, w: float, n: int, features: np.ndarray,
            peak: np.ndarray, mean: np.ndarray, labels: dict[str, str] | None,
            capacity: dict[str, float] | None) -> WindowFeatures:
    return WindowFeatures(app, instance, idx * w, (idx + 1) * w, n, features, peak, mean,
                          labels or {}, {m: float(v) for m, v in capacity.items()}
                          if capacity else {})


def _window_values(stored: list[_Rows]) -> tuple[np.ndarray, tuple[int, ...] | None]:
    """The stored rows' values over the window ``COLUMNS``: ``(rows, len(columns))`` with the
    columns every row has when all rows have the same ones (the usual case), else
    ``(rows, len(COLUMNS))`` with NaN where a row lacks a metric and ``None``."""
    names = stored[0].names
    if all(r.names is names or r.names == names for r in stored) and \
            all(r.dense for r in stored):  # the usual case: one agent, one shape
        columns, src = _selection(names)
        values = stored[0].values if len(stored) == 1 else \
            np.concatenate([r.values for r in stored])
        return values[:, src], columns
    first = _selection(names)[0]
    if all(r.dense and _selection(r.names)[0] == first for r in stored):
        return np.concatenate([r.values[:, _selection(r.names)[1]] for r in stored]), first
    out = np.full((sum(len(r.instance) for r in stored), len(COLUMNS)), np.nan)
    at = 0
    for r in stored:
        columns, src = _selection(r.names)
        out[at : at + len(r.instance), list(columns)] = r.values[:, src]
        at += len(r.instance)
    return out, None


@lru_cache(maxsize=1024)
def _selection(names: tuple[str, ...]) -> tuple[tuple[int, ...], slice | list[int]]:
    """The ``COLUMNS`` positions that ``names`` has (ascending), and where each is in it (a
    slice when they are neighbours in order, as an agent that sends the resources first has)."""
    pos = {name: j for j, name in enumerate(names)}
    columns = tuple(c for c, name in enumerate(COLUMNS) if name in pos)
    src = [pos[COLUMNS[c]] for c in columns]
    if src and src == list(range(src[0], src[0] + len(src))):
        return columns, slice(src[0], src[0] + len(src))
    return columns, src


def _featurise(values: np.ndarray, starts: list[int], sizes: list[int],
               columns: tuple[int, ...] | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features of the windows whose sorted rows start at ``starts``, by sample count."""
    first = sizes[0]
    if all(size == first for size in sizes):
        return featurise(values.reshape(len(sizes), first, values.shape[1]), columns)
    by_size: dict[int, list[int]] = {}
    for k, size in enumerate(sizes):
        by_size.setdefault(size, []).append(k)
    w = len(sizes)
    feats = np.empty((w, len(FEATURE_ORDER)))
    peak = np.empty((w, len(RESOURCES)))
    mean = np.empty((w, len(RESOURCES)))
    for size, windows in by_size.items():
        rows = [starts[k] + i for k in windows for i in range(size)]
        f, p, m = featurise(values[rows].reshape(len(windows), size, values.shape[1]), columns)
        feats[windows], peak[windows], mean[windows] = f, p, m
    return feats, peak, mean

