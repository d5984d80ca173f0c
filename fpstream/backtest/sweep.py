"""Every parameter combination of a baseline family from one pass over a series.

The backtest decides at every hour boundary from the rows before it
(``run.baseline_decisions``): ``decision_points`` gives those decisions, and the functions
below give, per decision, a family's statistic at every value of its grid at once, in numpy:

- ``vpa_cpu`` and ``vpa_memory``: the percentiles of ``VPA``'s histograms (every CPU sample,
  24 h half-life; the per-day memory peaks of the last 8 intervals);
- ``crane``: the quantiles of ``Crane``'s 168 h decaying histogram of one resource;
- ``window_peaks``: the peak of the last ``k`` hours of data, for every ``k``.

The histograms' states are those of ``DecayingHistogram`` to the last bit: each bucket's weights
are summed in the order the object sums them (``np.cumsum`` is a sequential sum), the decay
factors are Python's ``2.0 ** x`` as the object's are, and the reference time moves as the
object moves it. Read at VPA's or Crane's own settings, a family gives the values
``VPA.recommend`` and ``Crane.recommend`` give.

>>> ts = np.arange(1, 25) * 300.0  # two hours of 5-minute steps
>>> rows, at = decision_points(ts)
>>> rows.tolist(), at.tolist()
([12], [3600.0])
>>> window_peaks(ts, np.arange(24.0), rows, (1, 2)).tolist()
[[11.0, 11.0]]
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from fpstream.backtest.baselines import DAY, HOUR, DecayingHistogram

__all__ = ["crane", "decision_points", "histogram_states", "read_percentiles", "vpa_cpu",
           "vpa_memory", "window_peaks"]

#: ``DecayingHistogram.decay_factor`` moves its reference time past this many half-lives.
_REFERENCE_SHIFT = 100


def decision_points(ts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(rows, at)``: a decision is made before each row that opens a new hour
    ``(k * 3600, (k + 1) * 3600]`` (``rows``), at the boundary just passed (``at``), from the
    rows before it, as ``run.baseline_decisions`` makes them."""
    period = np.ceil(np.asarray(ts, dtype=np.float64) / HOUR)
    rows = np.flatnonzero(np.diff(period)) + 1
    return rows, (period[rows] - 1) * HOUR


def _buckets(h: DecayingHistogram, values: np.ndarray) -> np.ndarray:
    """``h.bucket`` of every value. numpy's log may differ from ``math.log`` in the last bit,
    so values whose bucket index lands within rounding of an integer are redone by ``h``
    (not 0, whose log is 0 exactly either way)."""
    x = np.log(np.maximum(values, 0.0) * (h.ratio - 1) / h.first_bucket + 1) / math.log(h.ratio)
    out = np.clip(np.floor(x), 0, len(h.weights) - 1).astype(np.int64)
    for i in np.flatnonzero((np.abs(x - np.round(x)) < 1e-9) & (values > 0)):
        out[i] = h.bucket(float(values[i]))
    return out


def _epochs(ts: np.ndarray, half_life_s: float) -> tuple[list[int], list[float], list[float]]:
    """Where ``DecayingHistogram.decay_factor`` moves the reference time when rows are added
    in order: (first rows, reference times, the factor the weights are then multiplied by)."""
    starts, refs, scales = [0], [float(ts[0])], [1.0]
    while True:
        exponent = (ts[starts[-1]:] - refs[-1]) / half_life_s
        over = np.flatnonzero(exponent > _REFERENCE_SHIFT)
        if not len(over):
            return starts, refs, scales
        scales.append(2.0 ** -float(exponent[over[0]]))
        starts.append(starts[-1] + int(over[0]))
        refs.append(float(ts[starts[-1]]))


def histogram_states(h: DecayingHistogram, values: np.ndarray, ts: np.ndarray,
                     queries: np.ndarray, leave_at: np.ndarray | None = None) -> np.ndarray:
    """The weights of ``h`` (empty; its geometry and half-life) right before row ``q`` is
    added, for every ``q`` of ``queries`` (ascending, >= 1): one row per query.

    Row ``i`` is added (``h.add(values[i], ts[i])``) at row ``i``; with ``leave_at``, row
    ``j`` is subtracted at row ``leave_at[j]`` (never when ``>= len(ts)``), right after that
    row is added, rows leaving at one row in order, as ``Crane.update`` does."""
    n, nb = len(ts), len(h.weights)
    buckets = _buckets(h, values)
    op_src = np.arange(n)
    op_row = np.arange(n)
    sign = np.ones(n)
    if leave_at is not None:
        gone = np.flatnonzero(leave_at < n)
        op_src = np.r_[op_src, gone]
        op_row = np.r_[op_row, leave_at[gone]]
        sign = np.r_[sign, -np.ones(len(gone))]
    order = np.lexsort((op_src, sign < 0, op_row))
    op_src, op_row, sign = op_src[order], op_row[order], sign[order]
    starts, refs, scales = _epochs(ts, h.half_life_s)
    op_epoch = np.searchsorted(starts, op_row, side="right") - 1
    exponent = (ts[op_src] - np.asarray(refs)[op_epoch]) / h.half_life_s
    weights = np.array([2.0**x for x in exponent.tolist()]) * sign
    op_bucket = buckets[op_src]
    q_epoch = np.searchsorted(starts, queries - 1, side="right") - 1
    out = np.empty((len(queries), nb))
    state = np.zeros(nb)
    bounds = np.searchsorted(op_row, starts + [n], side="left")
    for e, scale in enumerate(scales):
        state = state * scale
        lo, hi = bounds[e], bounds[e + 1]
        qs = np.flatnonzero(q_epoch == e)
        out[qs] = state
        by_bucket = lo + np.argsort(op_bucket[lo:hi], kind="stable")
        cut = np.flatnonzero(np.diff(op_bucket[by_bucket])) + 1
        for ops in np.split(by_bucket, cut) if hi > lo else ():
            b = op_bucket[ops[0]]
            sums = np.cumsum(np.r_[state[b], weights[ops]])
            if (sums < 0).any():  # a subtraction left rounding below 0: the object clamps
                sums = _clamped_sums(float(state[b]), weights[ops])
            out[qs, b] = sums[np.searchsorted(op_row[ops], queries[qs], side="left")]
            state[b] = sums[-1]
    return out


def _clamped_sums(start: float, weights: np.ndarray) -> np.ndarray:
    x = start
    sums = [x]
    for w in weights.tolist():
        x = x + w if w >= 0 else max(0.0, x + w)
        sums.append(x)
    return np.array(sums)


def read_percentiles(h: DecayingHistogram, states: np.ndarray,
                     quantiles: Sequence[float]) -> np.ndarray:
    """``h.percentile(q)`` of every row of ``states`` (weights of ``h``'s geometry), for every
    ``q``: one column per quantile."""
    nb = states.shape[1]
    total = states.sum(axis=1)
    cumulative = np.cumsum(states, axis=1)
    ends = np.array([h.bucket_start(k) for k in range(nb)])
    out = np.empty((len(states), len(quantiles)))
    for j, q in enumerate(quantiles):
        threshold = q * total * (1 - 1e-12)
        k = np.minimum((cumulative < threshold[:, None]).sum(axis=1), nb - 1)
        value = np.where(k < nb - 1, ends[np.minimum(k + 1, nb - 1)], ends[k])
        out[:, j] = np.where(total > 0, value, 0.0)
    return out


def vpa_cpu(ts: np.ndarray, cpu: np.ndarray, rows: np.ndarray, quantiles: Sequence[float],
            half_life_s: float = DAY) -> np.ndarray:
    """Per decision (before each of ``rows``), ``VPA``'s CPU histogram at every quantile."""
    h = DecayingHistogram.cpu(half_life_s)
    return read_percentiles(h, histogram_states(h, cpu, ts, rows), quantiles)


def vpa_memory(ts: np.ndarray, mem: np.ndarray, rows: np.ndarray, quantiles: Sequence[float],
               half_life_s: float = DAY, interval_s: float = DAY,
               intervals: int = 8) -> np.ndarray:
    """Per decision, ``VPA``'s memory histogram at every quantile: the peak of each
    ``interval_s`` from the first row (and the time it was first reached) of the last
    ``intervals`` intervals with rows, the current one up to the decision, weighted from the
    oldest one kept."""
    interval = (ts - ts[0]) // interval_s
    first = np.r_[0, np.flatnonzero(np.diff(interval)) + 1]
    group = np.cumsum(np.r_[0, np.diff(interval) != 0])
    peak = np.empty(len(ts))
    peak_t = np.empty(len(ts))
    for a, b in zip(first, np.r_[first[1:], len(ts)], strict=True):
        m = mem[a:b]
        running = np.maximum.accumulate(m)
        record = np.r_[True, m[1:] > running[:-1]]  # the object keeps the first time reached
        peak[a:b] = running
        peak_t[a:b] = ts[a:b][np.maximum.accumulate(np.where(record, np.arange(b - a), 0))]
    last = np.r_[first[1:], len(ts)] - 1  # each interval's last row: its final peak
    h = DecayingHistogram.memory(half_life_s)
    states = np.zeros((len(rows), len(h.weights)))
    now = rows - 1
    g = group[now]
    # Weights are relative to the oldest peak kept, the histogram's first sample.
    oldest = np.maximum(g - (intervals - 1), 0)
    ref = peak_t[np.where(oldest == g, now, last[oldest])]
    for slot in range(intervals - 1, -1, -1):
        k = g - slot
        sel = np.flatnonzero(k >= 0)
        at = np.where(k[sel] == g[sel], now[sel], last[k[sel]])
        exponent = (peak_t[at] - ref[sel]) / half_life_s
        weights = np.array([2.0**x for x in exponent.tolist()])
        cols = _buckets(h, peak[at])
        states[sel, cols] += weights
    return read_percentiles(h, states, quantiles)


def crane(ts: np.ndarray, values: np.ndarray, rows: np.ndarray, quantiles: Sequence[float],
          half_life_s: float, history_s: float = 168 * HOUR,
          memory: bool = False) -> np.ndarray:
    """Per decision, ``Crane``'s histogram of one resource (the rows of the last
    ``history_s``) at every quantile."""
    h = DecayingHistogram.memory(half_life_s) if memory else DecayingHistogram.cpu(half_life_s)
    leave_at = np.searchsorted(ts - history_s, ts, side="left")
    return read_percentiles(h, histogram_states(h, values, ts, rows, leave_at), quantiles)


def window_peaks(ts: np.ndarray, values: np.ndarray, rows: np.ndarray,
                 hours: Sequence[int]) -> np.ndarray:
    """Per decision, the peak of the last ``k`` hours with rows (clock hours where the trace
    has no gap), for every ``k`` of ``hours``: one column each."""
    out = np.empty((len(rows), len(hours)))
    if not len(rows):
        return out
    hourly = np.maximum.reduceat(np.asarray(values, dtype=np.float64), np.r_[0, rows])
    for j, k in enumerate(hours):
        padded = np.r_[np.full(k - 1, -np.inf), hourly[:len(rows)]]
        out[:, j] = sliding_window_view(padded, k).max(axis=1)
    return out
