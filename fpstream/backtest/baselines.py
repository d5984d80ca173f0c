"""Baseline recommenders for the backtest: Kubernetes VPA, Crane, and the manual and oracle
allocations.

``VPA`` and ``Crane`` are causal per-series objects: ``update(t, cpu, mem)`` every step,
``recommend()`` whenever a decision is due (every hour in the backtest); they see nothing else.
``manual`` (the capacity in the trace) and ``oracle`` (the next hour's real peak) are functions of
the whole series: they are references, not recommenders.

The histograms are those of the VPA recommender (``pkg/recommender/util/histogram.go``):
exponential buckets (first bucket 0.01 core or 1e7 bytes, each 5% wider than the last), sample
weights growing as ``2 ** (t / half_life)`` so that older samples count half as much per
half-life, and a percentile that is the *end* of the bucket it falls in.

>>> h = DecayingHistogram.cpu(half_life_s=86_400.0)
>>> for v in (0.1, 0.2, 0.3, 0.4, 1.0):
...     h.add(v, t=0.0)
>>> 0.4 < h.percentile(0.8) < 0.42, 1.0 < h.percentile(1.0) < 1.06
(True, True)
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np

__all__ = ["VPA", "Crane", "DecayingHistogram", "manual", "oracle"]

HOUR = 3600.0
DAY = 86_400.0
MB = 2.0**20


class DecayingHistogram:
    """A VPA-style exponentially bucketed histogram with exponentially decaying weights.

    ``percentile(q)`` is the end of the first bucket where the cumulative weight reaches
    ``q`` of the total; 0 when empty.
    """

    def __init__(self, first_bucket: float, max_value: float, half_life_s: float,
                 ratio: float = 1.05) -> None:
        if not (first_bucket > 0 and max_value > first_bucket and ratio > 1):
            msg = ("expected first_bucket > 0, max_value > first_bucket and ratio > 1, got "
                   f"{first_bucket!r}, {max_value!r}, {ratio!r}")
            raise ValueError(msg)
        if not half_life_s > 0:
            raise ValueError(f"half_life_s must be > 0, got {half_life_s!r}")
        self.first_bucket = first_bucket
        self.max_value = max_value
        self.ratio = ratio
        self.half_life_s = half_life_s
        n = math.ceil(math.log(max_value * (ratio - 1) / first_bucket + 1) / math.log(ratio)) + 1
        self.weights = np.zeros(n)
        self.ref_t: float | None = None

    @classmethod
    def cpu(cls, half_life_s: float) -> DecayingHistogram:
        return cls(0.01, 1000.0, half_life_s)

    @classmethod
    def memory(cls, half_life_s: float) -> DecayingHistogram:
        return cls(1e7, 1e12, half_life_s)

    def bucket(self, value: float) -> int:
        n = math.floor(math.log(max(value, 0.0) * (self.ratio - 1) / self.first_bucket + 1)
                       / math.log(self.ratio))
        return min(max(n, 0), len(self.weights) - 1)

    def bucket_start(self, n: int) -> float:
        return self.first_bucket * (self.ratio**n - 1) / (self.ratio - 1)

    def decay_factor(self, t: float) -> float:
        """The weight of a sample at ``t`` relative to one at the reference time."""
        if self.ref_t is None:
            self.ref_t = t
        exponent = (t - self.ref_t) / self.half_life_s
        if exponent > 100:  # move the reference forward before the weights overflow
            self.weights *= 2.0 ** (-exponent)
            self.ref_t, exponent = t, 0.0
        return 2.0**exponent

    def add(self, value: float, t: float, weight: float = 1.0) -> None:
        # The factor first: it may rescale every weight, the one added to included.
        w = weight * self.decay_factor(t)
        self.weights[self.bucket(value)] += w

    def subtract(self, value: float, t: float, weight: float = 1.0) -> None:
        w = weight * self.decay_factor(t)
        n = self.bucket(value)
        self.weights[n] = max(0.0, self.weights[n] - w)

    def percentile(self, q: float) -> float:
        total = self.weights.sum()
        if total <= 0:
            return 0.0
        n = int(np.searchsorted(np.cumsum(self.weights), q * total * (1 - 1e-12)))
        n = min(n, len(self.weights) - 1)
        return self.bucket_start(n + 1) if n < len(self.weights) - 1 else self.bucket_start(n)


class VPA:
    """Kubernetes VPA recommender's target for one container (here: one VM).

    CPU: every sample into a histogram decaying with a 24 h half-life; target its p90.
    Memory: the peak of each 24 h interval (from the first sample), the last 8 intervals, in a
    decaying histogram; target its p90. Both with a 15% safety margin, at least 0.025 cores
    and 250 MiB. Samples are weighted 1 (VPA weights CPU by the container's request, which a
    VM does not have).

    >>> v = VPA()
    >>> for i in range(12):
    ...     v.update(i * 300.0, cpu=1.0, mem=1e9)
    >>> cpu, mem = v.recommend()
    >>> 1.15 <= cpu <= 1.15 * 1.05, 1.15e9 <= mem <= 1.15e9 * 1.05
    (True, True)
    """

    def __init__(self, half_life_s: float = DAY, target: float = 0.9, margin: float = 0.15,
                 memory_interval_s: float = DAY, memory_intervals: int = 8,
                 min_cpu: float = 0.025, min_mem: float = 250 * MB) -> None:
        if not 0 < target <= 1:
            raise ValueError(f"target must be in (0, 1], got {target!r}")
        if memory_intervals < 1:
            raise ValueError(f"memory_intervals must be >= 1, got {memory_intervals!r}")
        self.half_life_s = half_life_s
        self.target = target
        self.margin = margin
        self.memory_interval_s = memory_interval_s
        self.memory_intervals = memory_intervals
        self.min_cpu = min_cpu
        self.min_mem = min_mem
        self.cpu = DecayingHistogram.cpu(half_life_s)
        # (interval index, peak, time of the peak) of the intervals kept, newest last.
        self.peaks: deque[list[float]] = deque(maxlen=memory_intervals)
        self.start: float | None = None

    def update(self, t: float, cpu: float, mem: float) -> None:
        if self.start is None:
            self.start = t
        self.cpu.add(cpu, t)
        k = (t - self.start) // self.memory_interval_s
        if self.peaks and self.peaks[-1][0] == k:
            if mem > self.peaks[-1][1]:
                self.peaks[-1][1:] = [mem, t]
        else:
            self.peaks.append([k, mem, t])

    def memory_histogram(self) -> DecayingHistogram:
        h = DecayingHistogram.memory(self.half_life_s)
        for _, peak, t in self.peaks:
            h.add(peak, t)
        return h

    def recommend(self) -> tuple[float, float]:
        """(cores, bytes): the target allocation now."""
        cpu = self.cpu.percentile(self.target) * (1 + self.margin)
        mem = self.memory_histogram().percentile(self.target) * (1 + self.margin)
        return max(cpu, self.min_cpu), max(mem, self.min_mem)


class Crane:
    """Crane's percentile recommender: p99 of the samples of the last 168 h, in decaying
    histograms (half-life 24 h for CPU, 48 h for memory), plus 15%.

    >>> c = Crane()
    >>> for i in range(100):
    ...     c.update(i * 300.0, cpu=0.5 if i else 4.0, mem=2e9)
    >>> cpu, mem = c.recommend()
    >>> 0.5 * 1.15 <= cpu < 0.5 * 1.15 * 1.06, 2e9 * 1.15 <= mem < 2e9 * 1.15 * 1.06
    (True, True)
    """

    def __init__(self, target: float = 0.99, margin: float = 0.15, cpu_half_life_s: float = DAY,
                 mem_half_life_s: float = 2 * DAY, history_s: float = 168 * HOUR) -> None:
        if not 0 < target <= 1:
            raise ValueError(f"target must be in (0, 1], got {target!r}")
        self.target = target
        self.margin = margin
        self.history_s = history_s
        self.cpu = DecayingHistogram.cpu(cpu_half_life_s)
        self.mem = DecayingHistogram.memory(mem_half_life_s)
        self.window: deque[tuple[float, float, float]] = deque()

    def update(self, t: float, cpu: float, mem: float) -> None:
        self.cpu.add(cpu, t)
        self.mem.add(mem, t)
        self.window.append((t, cpu, mem))
        while self.window and self.window[0][0] <= t - self.history_s:
            old_t, old_cpu, old_mem = self.window.popleft()
            self.cpu.subtract(old_cpu, old_t)
            self.mem.subtract(old_mem, old_t)

    def recommend(self) -> tuple[float, float]:
        k = 1 + self.margin
        return self.cpu.percentile(self.target) * k, self.mem.percentile(self.target) * k


def manual(capacity: np.ndarray) -> np.ndarray:
    """The allocation a person chose: the provisioned capacity, step by step."""
    return np.asarray(capacity, dtype=np.float64)


def oracle(ts: np.ndarray, usage: np.ndarray, period_s: float = HOUR) -> np.ndarray:
    """Per step, the real peak of its decision period ``(k * period_s, (k + 1) * period_s]``.

    >>> oracle(np.array([100, 3600, 3700, 7000]), np.array([1.0, 3.0, 2.0, 0.5])).tolist()
    [3.0, 3.0, 2.0, 2.0]
    """
    ts = np.asarray(ts, dtype=np.float64)
    usage = np.asarray(usage, dtype=np.float64)
    period = np.ceil(ts / period_s).astype(np.int64)
    keys, inverse = np.unique(period, return_inverse=True)
    peak = np.full(len(keys), -np.inf)
    np.maximum.at(peak, inverse, usage)
    return peak[inverse]
