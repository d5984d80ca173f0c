"""Features of closed windows: per-resource statistics and cross-metric ratios, as arrays.

Every closed window goes through here, so the maths is a fixed, small number of numpy calls
over a ``(windows, samples, columns)`` block whatever the number of windows: the windows of an
app that close together share them. A window keeps only ``COLUMNS`` (the six resources and the
request rate): nothing else reaches ``FEATURE_ORDER``.

>>> from fpstream.events import MetricSample
>>> s = [MetricSample(60.0 * i, "a", "i", {"cpu_cores": float(i), "net_rx_bps": 2.0 * i})
...      for i in (1, 2, 3)]
>>> wf = window_features("a", "i", 0.0, 180.0, s)
>>> float(wf.feature("cpu_cores.mean")), float(wf.feature("corr.cpu_net")), float(wf.peak[0])
(2.0, 1.0, 3.0)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from itertools import repeat
from typing import Any

import numpy as np

from fpstream.events import RESOURCES, MetricSample

#: Statistics computed for every resource, named ``"<resource>.<stat>"``.
STATS: tuple[str, ...] = ("mean", "p50", "p95", "max", "std", "peak_to_mean", "cv")

#: Cross-metric features; 0 when undefined (a constant side, fewer than two samples).
CROSS: tuple[str, ...] = ("corr.cpu_net", "corr.cpu_req")

#: Resource per request; 0 unless the window has ``app.req_rate``.
PER_REQUEST: tuple[str, ...] = ("per_req.cpu_cores", "per_req.mem_bytes")

#: The fixed, ordered feature names: ``WindowFeatures.features`` is laid out over these.
FEATURE_ORDER: tuple[str, ...] = (
    tuple(f"{r}.{s}" for r in RESOURCES for s in STATS) + CROSS + PER_REQUEST
)
FEATURE_INDEX: dict[str, int] = {name: i for i, name in enumerate(FEATURE_ORDER)}

REQ_RATE = "app.req_rate"

#: The metrics a window keeps, in this order: the six resources, then the request rate.
COLUMNS: tuple[str, ...] = (*RESOURCES, REQ_RATE)
COLUMN_INDEX: dict[str, int] = {name: j for j, name in enumerate(COLUMNS)}

_NS = len(STATS)
_NR = len(RESOURCES)
_CPU, _MEM, _RX, _TX, _REQ = (COLUMN_INDEX[c] for c in
                              ("cpu_cores", "mem_bytes", "net_rx_bps", "net_tx_bps", REQ_RATE))
_CROSS_AT = FEATURE_INDEX["corr.cpu_net"]
_PER_REQ_AT = FEATURE_INDEX["per_req.cpu_cores"]
_FLOAT_MAX = float(np.finfo(np.float64).max)
# A series whose variance is below this share of its squared mean (cv < 1e-10) is constant up
# to rounding (a mean of identical floats need not equal them): it has no correlation.
_CONST = 1e-20


@dataclass(frozen=True, slots=True, eq=False)
class WindowFeatures:
    """What one instance did in one window ``(start, end]``: the unit the profile learns from.

    ``features`` is laid out over ``FEATURE_ORDER``; ``peak`` (each resource's max) and
    ``mean`` over ``RESOURCES``; 0.0 where the window has no such metric. The arrays are
    float64 and shared: read them, copy before changing.
    """

    app: str
    instance: str
    start: float
    end: float
    n: int
    features: np.ndarray
    peak: np.ndarray
    mean: np.ndarray
    labels: dict[str, str]
    capacity: dict[str, float]

    def feature(self, name: str) -> float:
        """One feature by name (``KeyError`` for a name outside ``FEATURE_ORDER``)."""
        return float(self.features[FEATURE_INDEX[name]])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, WindowFeatures):
            return NotImplemented
        return all(
            np.array_equal(a, b) if isinstance(a, np.ndarray) else a == b
            for a, b in ((getattr(self, f), getattr(other, f)) for f in self.__slots__))

    __hash__ = None  # type: ignore[assignment]  # arrays and dicts inside


def feature_vector(features: Mapping[str, float], dtype: type = np.float64) -> np.ndarray:
    """Named features laid out over ``FEATURE_ORDER``; missing names are 0.

    >>> feature_vector({"corr.cpu_net": 0.5})[FEATURE_INDEX["corr.cpu_net"]]
    np.float64(0.5)
    """
    return np.fromiter(
        map(features.get, FEATURE_ORDER, repeat(0.0)), dtype=dtype, count=len(FEATURE_ORDER)
    )


def window_features(
    app: str,
    instance: str,
    start: float,
    end: float,
    samples: Sequence[MetricSample],
) -> WindowFeatures:
    """Features of ``samples`` (one instance, one window); labels and capacity of the latest.

    Samples may carry different metric sets: a metric's statistics use the samples that have
    it, and correlations use the samples that have both sides. Rows are taken in event-time
    order (arrival order among equal times), as ``AppWindows`` takes them, so both give the
    same floats.
    """
    if not samples:
        msg = f"window ({start}, {end}] of {app}/{instance} has no samples"
        raise ValueError(msg)
    order = sorted(range(len(samples)), key=lambda i: samples[i].ts)
    values = np.full((len(samples), len(COLUMNS)), np.nan)
    for row, i in enumerate(order):
        for name, value in samples[i].metrics.items():
            j = COLUMN_INDEX.get(name)
            if j is not None:
                values[row, j] = value
    feats, peak, mean = featurise(values[None])
    latest = samples[order[-1]]
    return WindowFeatures(app, instance, start, end, len(samples), feats[0], peak[0], mean[0],
                          latest.labels, latest.capacity)


def featurise(values: np.ndarray, columns: tuple[int, ...] | None = None
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features, peaks and means of ``W`` windows of ``n`` samples each, in one pass.

    ``values`` is ``(W, n, len(COLUMNS))`` with NaN where a sample lacks a metric; or, when
    ``columns`` is given, ``(W, n, len(columns))`` without NaN, holding those ``COLUMNS``
    positions (ascending) in every sample. Returns ``(W, len(FEATURE_ORDER))``,
    ``(W, len(RESOURCES))`` and ``(W, len(RESOURCES))`` float64 arrays.

    A window's floats depend on its own samples only, never on the others in the call.
    """
    if values.ndim != 3 or values.shape[1] == 0:
        msg = f"expected a (windows, n >= 1, columns) block, got shape {values.shape}"
        raise ValueError(msg)
    if columns is not None:
        return _dense(values, columns)
    present = ~np.isnan(values)
    has = present.any(axis=1)  # (W, C): the window has the metric at all
    full = present.all(axis=1)  # every sample of the window has it
    groups: dict[tuple[int, ...], list[int]] = {}
    sparse: list[int] = []
    for i, (dense, row) in enumerate(zip((has == full).all(axis=1).tolist(), full.tolist(),
                                         strict=True)):
        if dense:
            groups.setdefault(tuple(j for j, f in enumerate(row) if f), []).append(i)
        else:
            sparse.append(i)
    if not sparse and len(groups) == 1:
        (cols,) = groups
        return _dense(values[:, :, list(cols)], cols)
    parts = [(rows, _dense(values[rows][:, :, list(cols)], cols)) for cols, rows in groups.items()]
    if sparse:
        parts.append((sparse, _sparse(values[sparse], present[sparse])))
    return _merge(values.shape[0], parts)


def _merge(w: int, parts: list[tuple[list[int], tuple[np.ndarray, np.ndarray, np.ndarray]]]
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    feats = np.empty((w, len(FEATURE_ORDER)))
    peak = np.empty((w, _NR))
    mean = np.empty((w, _NR))
    for rows, (f, p, m) in parts:
        feats[rows], peak[rows], mean[rows] = f, p, m
    return feats, peak, mean


@lru_cache(maxsize=256)
def _quantiles(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``n`` sorted values and their weights whose pairwise sums are p50, p95 (each
    interpolated linearly between two neighbours, numpy's default method) and the max."""
    rows: list[int] = []
    weights: list[float] = []
    for q in (0.50, 0.95):
        pos = q * (n - 1)
        lo = math.floor(pos)
        frac = pos - lo
        rows += [lo, min(lo + 1, n - 1)]
        weights += [1.0 - frac, frac]
    rows += [n - 1, n - 1]
    weights += [1.0, 0.0]
    return np.array(rows), np.array(weights)[:, None]


def _dense(values: np.ndarray, columns: tuple[int, ...]
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Windows whose samples all carry the metrics ``columns`` and no other: no masks.

    Numpy's per-call overhead, not the arithmetic, dominates windows of a few samples, so
    the number of numpy calls is small and fixed; the cross features are a few scalars per
    window, cheaper in Python than in more numpy calls.
    """
    w, n, p = values.shape
    if not columns:  # samples without any of COLUMNS
        return np.zeros((w, len(FEATURE_ORDER))), np.zeros((w, _NR)), np.zeros((w, _NR))
    lay = _layout(columns)
    stats = np.empty((w, _NS, p))
    if n == 1:  # one sample: every statistic is the value, no spread
        stats[:, 0:4] = values
        stats[:, 4:7] = _ONE_SAMPLE
        return _assemble(stats, lay, None, 1)
    mean = values.sum(axis=1)
    mean /= n
    dev = values - mean[:, None]
    if lay.both_net:  # received plus sent, centred: a column of its own for the correlation
        rx, tx = lay.net
        dev = np.concatenate((dev, dev[:, :, rx : rx + 1] + dev[:, :, tx : tx + 1]), axis=2)
    # the centred sums of squares (the first p) and of the products the correlations use
    sums = (dev[:, :, lay.left] * dev[:, :, lay.right]).sum(axis=1)
    rows, weights = _quantiles(n)
    picked = np.sort(values, axis=1)[:, rows]
    picked *= weights
    stats[:, 0] = mean
    np.add(picked[:, 0::2], picked[:, 1::2], out=stats[:, 1:4])
    np.sqrt(sums[:, :p] / n, out=stats[:, 4])
    _ratios(stats, mean)
    return _assemble(stats, lay, sums, n)


_ONE_SAMPLE = np.array([[0.0], [1.0], [0.0]])  # std, peak-to-mean, cv of a single sample
_NO_SPREAD = np.array([[1.0], [0.0]])  # peak-to-mean and cv of an all-zero metric


def _ratios(stats: np.ndarray, mean: np.ndarray) -> None:
    """Peak-to-mean and cv; gauges are >= 0, so a mean of 0 means all zero: no spread."""
    if mean.min() > 0:
        np.divide(stats[:, 3:5], mean[:, None], out=stats[:, 5:7])
    else:
        stats[:, 5:7] = _NO_SPREAD
        np.divide(stats[:, 3:5], mean[:, None], out=stats[:, 5:7], where=mean[:, None] > 0)


def _assemble(stats: np.ndarray, lay: _Layout, sums: np.ndarray | None, n: int
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lay ``(W, stats, columns)`` out over ``FEATURE_ORDER``, with the cross features from
    the centred sums of squares and products (``_Layout.left``/``right``; ``None``: the
    correlations are undefined)."""
    w = stats.shape[0]
    if not stats.max() < _HUGE:  # only values near float64's limits get here
        np.nan_to_num(stats, copy=False, nan=0.0, posinf=_FLOAT_MAX, neginf=_FLOAT_MAX)
    # features, peaks and means side by side, filled with one gather
    out = np.zeros((w, _WIDTH))
    out[:, lay.out_at] = stats.reshape(w, -1)[:, lay.stat_at]
    if (sums is not None and lay.cpu is not None) or lay.req is not None:
        means = stats[:, 0].tolist()
        products: list[Any] = sums.tolist() if sums is not None else [None] * w
        out[:, _CROSS_AT:_NF] = [_cross(lay, m, s, n)
                                 for m, s in zip(means, products, strict=True)]
    return out[:, :_NF], out[:, _NF : _NF + _NR], out[:, _NF + _NR :]


_NF = len(FEATURE_ORDER)
_WIDTH = _NF + 2 * _NR


# Above this a square can overflow float64; real gauges are far below it.
_HUGE = 1e150


def _cross(lay: _Layout, m: list[float], s: list[float] | None, n: int) -> list[float]:
    """``CROSS`` and ``PER_REQUEST`` of one window from its column means ``m`` and centred
    sums of squares and products ``s``."""
    cpu_net = cpu_req = per_cpu = per_mem = 0.0
    cpu, req = lay.cpu, lay.req
    if s is not None and cpu is not None and n > 1:
        sxx = s[cpu]
        fx = _CONST * m[cpu] * m[cpu] * n
        if lay.net:
            net_mean = sum([m[j] for j in lay.net])
            cpu_net = _corr(s[lay.cpu_net], sxx, s[lay.net_net], fx,
                            _CONST * net_mean * net_mean * n)
        if req is not None:
            cpu_req = _corr(s[lay.cpu_req], sxx, s[req], fx, _CONST * m[req] * m[req] * n)
    if req is not None and m[req] > 0:
        if cpu is not None:
            per_cpu = _ratio(m[cpu], m[req])
        if lay.mem is not None:
            per_mem = _ratio(m[lay.mem], m[req])
    return [cpu_net, cpu_req, per_cpu, per_mem]


def _ratio(a: float, b: float) -> float:
    r = a / b
    return r if math.isfinite(r) else _FLOAT_MAX


def _corr(sxy: float, sxx: float, syy: float, fx: float, fy: float) -> float:
    """Pearson r from centred sums; 0 where a side is constant (``s <= floor``)."""
    if not (sxx > fx and syy > fy):
        return 0.0
    r = sxy / math.sqrt(sxx * syy)
    return min(1.0, max(-1.0, r)) if math.isfinite(r) else 0.0


def _sparse(values: np.ndarray, present: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Windows whose samples carry different metric sets (rare): each metric's statistics use
    the samples that have it, each correlation the samples that have both sides."""
    w = values.shape[0]
    count = present.sum(axis=1)  # (W, C)
    has = count > 0
    safe = np.maximum(count, 1)
    mean = np.where(present, values, 0.0).sum(axis=1) / safe
    dev = np.where(present, values - mean[:, None], 0.0)
    stats = np.empty((w, _NS, len(COLUMNS)))
    stats[:, 0] = mean
    np.sqrt((dev * dev).sum(axis=1) / safe, out=stats[:, 4])
    srt = np.sort(values, axis=1)  # NaN last
    last = safe - 1
    for row, q in ((1, 0.50), (2, 0.95)):
        pos = q * last
        lo = np.floor(pos).astype(np.intp)
        frac = pos - lo
        v_lo = np.take_along_axis(srt, lo[:, None], axis=1)[:, 0]
        v_hi = np.take_along_axis(srt, np.minimum(lo + 1, last)[:, None], axis=1)[:, 0]
        stats[:, row] = np.where(frac > 0, v_lo * (1.0 - frac) + v_hi * frac, v_lo)
    stats[:, 3] = np.take_along_axis(srt, last[:, None], axis=1)[:, 0]
    _ratios(stats, mean)
    stats = np.where(has[:, None], stats, 0.0)  # a metric absent from a window reads 0
    feats, peak, means = _assemble(stats, _layout(tuple(range(len(COLUMNS)))), None, 1)
    # the cross features need the pairs each window really has
    cpu = values[:, :, _CPU]
    feats[:, _CROSS_AT] = _pair_corr(cpu, _net(values, present))
    feats[:, _CROSS_AT + 1] = _pair_corr(cpu, values[:, :, _REQ])
    feats[~has[:, _CPU], _PER_REQ_AT] = 0.0
    feats[~has[:, _MEM], _PER_REQ_AT + 1] = 0.0
    return feats, peak, means


def _net(values: np.ndarray, present: np.ndarray) -> np.ndarray:
    """Received plus sent per sample; NaN where a sample has neither."""
    either = present[:, :, _RX] | present[:, :, _TX]
    total = np.where(present[:, :, _RX], values[:, :, _RX], 0.0) + \
        np.where(present[:, :, _TX], values[:, :, _TX], 0.0)
    return np.where(either, total, np.nan)


def _pair_corr(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson r per window over the samples that have both ``x`` and ``y`` (``(W, n)``)."""
    both = ~(np.isnan(x) | np.isnan(y))
    k = both.sum(axis=1)
    safe = np.maximum(k, 1)
    mx = np.where(both, x, 0.0).sum(axis=1) / safe
    my = np.where(both, y, 0.0).sum(axis=1) / safe
    dx = np.where(both, x - mx[:, None], 0.0)
    dy = np.where(both, y - my[:, None], 0.0)
    sums = zip((dx * dy).sum(axis=1).tolist(), (dx * dx).sum(axis=1).tolist(),
               (dy * dy).sum(axis=1).tolist(), mx.tolist(), my.tolist(), k.tolist(), strict=True)
    return np.array([_corr(sxy, sxx, syy, _CONST * a * a * c, _CONST * b * b * c) if c >= 2
                     else 0.0 for sxy, sxx, syy, a, b, c in sums])


@dataclass(frozen=True, slots=True)
class _Layout:
    """Where things are for one set of present columns (positions within ``columns``)."""

    # Where each statistic of a resource goes in the features, peaks and means side by side
    # (``_assemble``), and where it is in the flattened (stats, columns) block.
    out_at: np.ndarray
    stat_at: np.ndarray
    cpu: int | None
    mem: int | None
    net: list[int]
    req: int | None
    both_net: bool  # rx + tx is the extra column p of the centred samples
    # The centred sums of products computed, as column pairs (``left``, ``right``): each
    # column with itself (the first p), cpu with net, net with itself, cpu with req; and
    # where the correlations find theirs.
    left: np.ndarray
    right: np.ndarray
    cpu_net: int
    net_net: int
    cpu_req: int


@lru_cache(maxsize=256)
def _layout(columns: tuple[int, ...]) -> _Layout:
    p = len(columns)
    pos = {c: j for j, c in enumerate(columns)}
    resources = [j for j, c in enumerate(columns) if c < _NR]
    cpu, req = pos.get(_CPU), pos.get(_REQ)
    net = [pos[c] for c in (_RX, _TX) if c in pos]
    pairs = [(j, j) for j in range(p)]  # the squares first, at each column's position
    cpu_net = net_net = cpu_req = -1
    if cpu is not None:
        if net:  # rx + tx, when both, is the extra column p
            j = p if len(net) == 2 else net[0]
            cpu_net = len(pairs)
            pairs.append((cpu, j))
            net_net = j
            if len(net) == 2:
                net_net = len(pairs)
                pairs.append((p, p))
        if req is not None:
            cpu_req = len(pairs)
            pairs.append((cpu, req))
    out_at = [columns[j] * _NS + s for j in resources for s in range(_NS)]
    stat_at = [s * p + j for j in resources for s in range(_NS)]
    for j in resources:  # the peak is the max, the mean the mean
        out_at += [_NF + columns[j], _NF + _NR + columns[j]]
        stat_at += [3 * p + j, j]

    def index(values: list[int]) -> np.ndarray:
        return np.array(values, dtype=np.intp)

    return _Layout(
        out_at=index(out_at),
        stat_at=index(stat_at),
        cpu=cpu,
        mem=pos.get(_MEM),
        net=net,
        both_net=cpu is not None and len(net) == 2,
        req=req,
        left=index([a for a, _ in pairs]),
        right=index([b for _, b in pairs]),
        cpu_net=cpu_net,
        net_net=net_net,
        cpu_req=cpu_req,
    )
