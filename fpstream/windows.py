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
from array import array
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from fpstream.events import MetricSample
from fpstream.features import WindowFeatures, WindowMeta, features_batch, features_from_matrix

_NAN = float("nan")


@dataclass(frozen=True, slots=True)
class WindowsOut:
    """What one call produced: closed windows in (end, instance) order, and refused samples.

    ``late`` missed their window (dead-letter them as ``late``); ``dropped`` exceeded a bound
    (``max_instances`` or ``max_window_samples``; dead-letter them as ``too_large``).
    """

    closed: list[WindowFeatures]
    late: list[MetricSample] = field(default_factory=list)
    dropped: list[MetricSample] = field(default_factory=list)


class _Bucket:
    """The open window of one instance: metric values row-major in one ``array('d')``.

    Keeping floats unboxed and contiguous costs one C-level ``extend`` per sample and turns
    into a numpy matrix at close without copying. Rows of samples that lack a metric hold NaN.
    """

    __slots__ = ("names", "values", "n", "last_ts", "labels", "capacity", "ragged")

    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = names
        self.values = array("d")
        self.n = 0
        self.last_ts = -math.inf
        self.labels: dict[str, str] = {}
        self.capacity: dict[str, float] = {}
        self.ragged = False

    def add_other(self, metrics: dict[str, float]) -> None:
        """Append a sample whose metric names differ from the window's (rare, slow)."""
        index = {name: j for j, name in enumerate(self.names)}
        new = [name for name in metrics if name not in index]
        if new:
            k = len(self.names)
            widened = array("d")
            pad = [_NAN] * len(new)
            for r in range(self.n):
                widened.extend(self.values[r * k : (r + 1) * k])
                widened.extend(pad)
            self.values = widened
            for name in new:
                index[name] = len(index)
            self.names = self.names + tuple(new)
        row = [_NAN] * len(self.names)
        for name, value in metrics.items():
            row[index[name]] = value
        self.values.extend(row)
        self.ragged = True


class AppWindows:
    """The window state of one app (all its instances); the flow keeps one per app key.

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
        # window index (start / window_s) -> instance -> bucket
        self._open: dict[int, dict[str, _Bucket]] = {}
        self._next_end = math.inf  # end of the earliest open window
        self._open_per_instance: dict[str, int] = {}

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
        return sum(len(per) for per in self._open.values())

    def add(self, sample: MetricSample) -> WindowsOut:
        """Add one sample; see ``add_many``."""
        return self.add_many((sample,))

    def add_many(self, samples: Iterable[MetricSample]) -> WindowsOut:
        """Add samples in arrival order; return the windows they closed and those refused.

        Windows closed anywhere in the batch are featurised together at the end, so a batch
        costs numpy calls per distinct window shape, not per window.
        """
        if not isinstance(samples, list | tuple):
            samples = list(samples)
        self._check_app(samples)  # before any change: a refused batch leaves no trace
        w = self.window_s
        lateness = self.allowed_lateness_s
        cap = self.max_window_samples
        wm = self._wm
        max_ts = self._max_ts
        opened = self._open
        counts = self._open_per_instance
        late: list[MetricSample] = []
        dropped: list[MetricSample] = []
        pending: list[tuple[int, str, _Bucket]] = []
        for s in samples:
            ts = s.ts
            idx = math.ceil(ts / w) - 1  # (start, end]: a boundary ts ends its window
            if (idx + 1) * w <= wm:
                late.append(s)
                continue
            per = opened.get(idx)
            bucket = None if per is None else per.get(s.instance)
            if bucket is None:
                inst = s.instance
                if inst not in counts and len(counts) >= self.max_instances:
                    dropped.append(s)
                    continue
                if per is None:
                    per = opened[idx] = {}
                    self._next_end = min(self._next_end, (idx + 1) * w)
                bucket = per[inst] = _Bucket(tuple(s.metrics))
                counts[inst] = counts.get(inst, 0) + 1
            elif bucket.n >= cap:
                dropped.append(s)
                continue
            metrics = s.metrics
            if tuple(metrics) == bucket.names:
                bucket.values.extend(metrics.values())
            else:
                bucket.add_other(metrics)
            bucket.n += 1
            if ts >= bucket.last_ts:
                bucket.last_ts = ts
                bucket.labels = s.labels
                bucket.capacity = s.capacity
            if ts > max_ts:
                max_ts = ts
                if ts - lateness > wm:
                    wm = ts - lateness
                    if self._next_end <= wm:
                        self._pop_closed(wm, pending)
        self._wm = wm
        self._max_ts = max_ts
        self.late_total += len(late)
        self.dropped_total += len(dropped)
        return WindowsOut(self._featurise(pending), late, dropped)

    def advance(self, ts: float) -> list[WindowFeatures]:
        """Move the watermark as if event time ``ts`` was seen (e.g. the flow's clock), so a
        quiet app's last windows close without waiting for its next sample."""
        pending: list[tuple[int, str, _Bucket]] = []
        if ts - self.allowed_lateness_s > self._wm:
            self._wm = ts - self.allowed_lateness_s
            self._pop_closed(self._wm, pending)
        return self._featurise(pending)

    def flush(self) -> list[WindowFeatures]:
        """Close every open window (end of stream, or an idle app about to expire).

        The watermark moves to the last closed end, so a later sample for a flushed window is
        late rather than a second window with the same bounds.
        """
        pending: list[tuple[int, str, _Bucket]] = []
        if self._open:
            last = max(self._open)
            self._wm = max(self._wm, (last + 1) * self.window_s)
            self._pop_closed(self._wm, pending)
        return self._featurise(pending)

    def _check_app(self, samples: list[MetricSample] | tuple[MetricSample, ...]) -> None:
        if not samples:
            return
        app = samples[0].app if self.app is None else self.app
        for s in samples:
            if s.app != app:
                msg = f"AppWindows holds app {app!r}, got a sample of {s.app!r}: key by app first"
                raise ValueError(msg)
        self.app = app

    def _pop_closed(self, wm: float, pending: list[tuple[int, str, _Bucket]]) -> None:
        """Move windows ending at or before ``wm`` to ``pending``, by end then instance."""
        w = self.window_s
        counts = self._open_per_instance
        for idx in sorted(i for i in self._open if (i + 1) * w <= wm):
            per = self._open.pop(idx)
            for inst in sorted(per):
                pending.append((idx, inst, per[inst]))
                left = counts[inst] - 1
                if left:
                    counts[inst] = left
                else:
                    del counts[inst]
        self._next_end = (min(self._open) + 1) * w if self._open else math.inf

    def _featurise(self, pending: list[tuple[int, str, _Bucket]]) -> list[WindowFeatures]:
        """Features of closed buckets, batched by (metric names, sample count), in order."""
        if not pending:
            return []
        w = self.window_s
        app = self.app or ""
        out: list[WindowFeatures | None] = [None] * len(pending)
        groups: dict[tuple[tuple[str, ...], int], list[int]] = {}
        for pos, (idx, inst, b) in enumerate(pending):
            if b.ragged:
                meta: WindowMeta = (app, inst, idx * w, (idx + 1) * w, b.labels, b.capacity)
                matrix = np.frombuffer(b.values).reshape(b.n, len(b.names)).copy()
                out[pos] = features_from_matrix(b.names, matrix, meta)
            else:
                groups.setdefault((b.names, b.n), []).append(pos)
        for (names, n), positions in groups.items():
            buf = array("d")
            metas: list[WindowMeta] = []
            for pos in positions:
                idx, inst, b = pending[pos]
                buf.extend(b.values)
                metas.append((app, inst, idx * w, (idx + 1) * w, b.labels, b.capacity))
            block = np.frombuffer(buf).reshape(len(positions), n, len(names))
            for pos, wf in zip(positions, features_batch(names, block, metas), strict=True):
                out[pos] = wf
        return out  # type: ignore[return-value]  # every slot was filled above
