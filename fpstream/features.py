"""Features of one closed window of one instance: per-metric statistics and cross-metric ratios.

Every closed window goes through here, so the maths is one pass of numpy over an
``(n samples, k metrics)`` matrix; the per-layout bookkeeping (feature names, column positions)
is computed once per distinct metric-name tuple and cached.

>>> from fpstream.events import MetricSample
>>> s = [MetricSample(60.0 * i, "a", "i", {"cpu_cores": float(i), "net_rx_bps": 2.0 * i})
...      for i in (1, 2, 3)]
>>> wf = window_features("a", "i", 0.0, 180.0, s)
>>> wf.features["cpu_cores.mean"], wf.features["corr.cpu_net"], wf.peak["cpu_cores"]
(2.0, 1.0, 3.0)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from itertools import repeat

import numpy as np

from fpstream.events import RESOURCES, MetricSample

#: Statistics computed for every metric, named ``"<metric>.<stat>"``; this order lets numpy
#: fill neighbouring statistics with one call each.
STATS: tuple[str, ...] = ("mean", "p50", "p95", "max", "std", "peak_to_mean", "cv")
_STAT_ROW = {stat: i for i, stat in enumerate(STATS)}

#: Cross-metric features; present in every window (0 when undefined).
CROSS: tuple[str, ...] = ("corr.cpu_net", "corr.cpu_req")

#: Resource per request; present only when ``app.req_rate`` is.
PER_REQUEST: tuple[str, ...] = ("per_req.cpu_cores", "per_req.mem_bytes")

#: The fixed, ordered feature names the fingerprint uses (missing ones read as 0).
FEATURE_ORDER: tuple[str, ...] = (
    tuple(f"{r}.{s}" for r in RESOURCES for s in STATS) + CROSS + PER_REQUEST
)
FEATURE_INDEX: dict[str, int] = {name: i for i, name in enumerate(FEATURE_ORDER)}

REQ_RATE = "app.req_rate"
_FLOAT_MAX = float(np.finfo(np.float64).max)


@dataclass(frozen=True, slots=True)
class WindowFeatures:
    """What one instance did in one window ``(start, end]``: the unit the profile learns from."""

    app: str
    instance: str
    start: float
    end: float
    n: int
    features: dict[str, float]
    peak: dict[str, float]
    mean: dict[str, float]
    labels: dict[str, str]
    capacity: dict[str, float]


def feature_vector(features: Mapping[str, float], dtype: type = np.float64) -> np.ndarray:
    """``features`` laid out over ``FEATURE_ORDER``; missing names are 0.

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
    it, and correlations use the samples that have both sides.
    """
    if not samples:
        msg = f"window ({start}, {end}] of {app}/{instance} has no samples"
        raise ValueError(msg)
    names = tuple(samples[0].metrics)
    if all(tuple(s.metrics) == names for s in samples):  # the usual case: one agent, one shape
        values = np.array([list(s.metrics.values()) for s in samples], dtype=np.float64)
    else:
        index: dict[str, int] = {}
        for s in samples:
            for name in s.metrics:
                index.setdefault(name, len(index))
        names = tuple(index)
        rows = []
        for s in samples:
            row = [math.nan] * len(names)
            for name, value in s.metrics.items():
                row[index[name]] = value
            rows.append(row)
        values = np.array(rows, dtype=np.float64)
    latest = samples[0]
    for s in samples:
        if s.ts >= latest.ts:
            latest = s
    meta = (app, instance, start, end, latest.labels, latest.capacity)
    return features_from_matrix(names, values, meta)


#: ``(app, instance, start, end, labels, capacity)`` of one window, what the matrix lacks.
WindowMeta = tuple[str, str, float, float, dict[str, str], dict[str, float]]


def features_from_matrix(
    names: tuple[str, ...], values: np.ndarray, meta: WindowMeta
) -> WindowFeatures:
    """``window_features`` over a ready ``(n, len(names))`` matrix; NaN marks an absent value.

    ``values`` may be reordered in place (it is sorted per column).
    """
    if values.ndim != 2 or values.shape[0] == 0 or values.shape[1] != len(names):
        msg = f"expected an (n >= 1, {len(names)}) matrix for {meta[:4]}, got {values.shape}"
        raise ValueError(msg)
    if np.isnan(values).any():
        return _features_with_gaps(names, values, meta)
    return features_batch(names, values[None], [meta])[0]


def features_batch(
    names: tuple[str, ...], values: np.ndarray, metas: Sequence[WindowMeta]
) -> list[WindowFeatures]:
    """Features of ``W`` windows with the same metric names and sample count, in one pass.

    ``values`` is ``(W, n, k)`` without NaN and is sorted in place. Numpy's per-call overhead,
    not the arithmetic, dominates windows of a few samples, so the number of numpy calls is
    small and fixed, and windows that close together (the instances of an app) share them.
    """
    lay = _layout(names)
    w, n, k = values.shape
    if n == 1:
        return _single_sample(lay, names, values, metas)
    pick = _pick(n)
    mean = values.sum(axis=1, keepdims=True)  # (W, 1, k)
    mean /= n
    dev = values - mean
    # one product gives every variance and every covariance the correlations need
    cov = np.matmul(dev.transpose(0, 2, 1), dev)
    values.sort(axis=1)
    # rows are statistics in STATS order, columns metrics: each statistic is one slice
    out = np.empty((w, len(STATS), k))
    out[:, 0:1] = mean
    np.matmul(pick, values, out=out[:, 1:4])  # p50, p95, max: fixed weights of sorted rows
    np.sqrt(cov.diagonal(0, 1, 2) / n, out=out[:, 4])
    if mean.min() > 0:
        np.divide(out[:, 3:5], mean, out=out[:, 5:7])  # max / mean, std / mean
    else:  # gauges are >= 0, so a mean of 0 means all zero: no spread, peak equals mean
        positive = mean > 0
        safe = np.where(positive, mean, 1.0)
        out[:, 5:7] = np.where(positive, out[:, 3:5] / safe, [[1.0], [0.0]])
    rows = out.reshape(w, len(STATS) * k).tolist()
    covs = cov.reshape(w, k * k).tolist() if lay.cpu is not None else [None] * w
    return [
        _assemble(lay, names, row, c, meta, n)
        for row, c, meta in zip(rows, covs, metas, strict=True)
    ]


def _single_sample(
    lay: _Layout, names: tuple[str, ...], values: np.ndarray, metas: Sequence[WindowMeta]
) -> list[WindowFeatures]:
    """Windows of one sample (the default 60 s agent interval and 60 s window): no numpy."""
    k = len(names)
    zeros = [0.0] * k
    out = []
    for vals, meta in zip(values.reshape(len(metas), k).tolist(), metas, strict=True):
        ones = [1.0] * k  # peak-to-mean: the peak is the mean
        row = vals + vals + vals + vals + zeros + ones + zeros
        out.append(_assemble(lay, names, row, None, meta, 1))
    return out


@lru_cache(maxsize=256)
def _pick(n: int) -> np.ndarray:
    """``(3, n)`` weights that read p50, p95 and the max off ``n`` sorted values
    (percentiles interpolated linearly, numpy's default method)."""
    pick = np.zeros((3, n))
    for row, q in enumerate((0.50, 0.95)):
        pos = q * (n - 1)
        lo = math.floor(pos)
        frac = pos - lo
        pick[row, lo] = 1.0 - frac
        if frac:
            pick[row, lo + 1] = frac
    pick[2, n - 1] = 1.0
    return pick


# Above this a square can overflow float64; real gauges are far below it.
_HUGE = 1e150


def _assemble(
    lay: _Layout,
    names: tuple[str, ...],
    row: list[float],
    cov: list[float] | None,
    meta: WindowMeta,
    n: int,
) -> WindowFeatures:
    """One window's dicts from its stat-major row and its flat ``k x k`` centred products."""
    if max(row) > _HUGE:  # means come first and are never NaN, so this sees any inf
        row = [x if math.isfinite(x) else (0.0 if math.isnan(x) else _FLOAT_MAX) for x in row]
    cpu_net = cpu_req = 0.0
    cpu = lay.cpu
    if cov is not None and cpu is not None:
        sxx = cov[lay.cov_cpu]
        fx = _CONST * row[cpu] * row[cpu] * n
        if lay.net_cols:
            # rx + tx: covariance and variance of a sum from those of its parts
            net_mean = sum([row[j] for j in lay.net_cols])
            cpu_net = _corr(
                sum([cov[i] for i in lay.cov_net_xy]),
                sxx,
                sum([cov[i] for i in lay.cov_net_yy]),
                fx,
                _CONST * net_mean * net_mean * n,
            )
        req = lay.req
        if req is not None:
            fy = _CONST * row[req] * row[req] * n
            cpu_req = _corr(cov[lay.cov_req_xy], sxx, cov[lay.cov_req_yy], fx, fy)
    feats = dict(zip(lay.out_names, [*row, cpu_net, cpu_req], strict=True))
    peak = dict(zip(lay.resources, [row[j] for j in lay.peak_pos], strict=True))
    mean = dict(zip(lay.resources, [row[j] for j in lay.resource_cols], strict=True))
    if lay.req is not None:
        req_mean = row[lay.req]
        for key, col in (("per_req.cpu_cores", cpu), ("per_req.mem_bytes", lay.mem)):
            if col is not None:
                ratio = row[col] / req_mean if req_mean > 0 else 0.0
                feats[key] = ratio if math.isfinite(ratio) else _FLOAT_MAX
    app, instance, start, end, labels, capacity = meta
    return WindowFeatures(app, instance, start, end, n, feats, peak, mean, labels, capacity)


# A series whose variance is below this share of its squared mean (cv < 1e-10) is constant up
# to rounding (a mean of identical floats need not equal them): it has no correlation.
_CONST = 1e-20


def _corr(sxy: float, sxx: float, syy: float, fx: float, fy: float) -> float:
    """Pearson r from centred sums; 0 where a side is constant (``s <= floor``) or n < 2."""
    if sxx <= fx or syy <= fy:
        return 0.0
    r = sxy / math.sqrt(sxx * syy)
    return min(1.0, max(-1.0, r)) if math.isfinite(r) else 0.0


def _features_with_gaps(
    names: tuple[str, ...], values: np.ndarray, meta: WindowMeta
) -> WindowFeatures:
    """Slow path for windows whose samples carry different metric sets (rare).

    Each metric's statistics use the samples that have it; correlations the samples with both.
    """
    lay = _layout(names)
    present = ~np.isnan(values)
    stats: list[list[float]] = []
    for j in range(len(names)):
        column = values[present[:, j], j : j + 1][None]
        one = features_batch((names[j],), column, [meta])[0]
        stats.append([one.features[f"{names[j]}.{stat}"] for stat in STATS])
    row = [stats[j][i] for i in range(len(STATS)) for j in range(len(names))]
    wf = _assemble(lay, names, row, None, meta, values.shape[0])
    if lay.cpu is not None:
        cpu = values[:, lay.cpu]
        if lay.net_cols:
            parts = values[:, list(lay.net_cols)]
            net = np.where(np.isnan(parts).all(axis=1), np.nan, np.nansum(parts, axis=1))
            wf.features["corr.cpu_net"] = _pairwise_corr(cpu, net)
        if lay.req is not None:
            wf.features["corr.cpu_req"] = _pairwise_corr(cpu, values[:, lay.req])
    return wf


def _pairwise_corr(x: np.ndarray, y: np.ndarray) -> float:
    both = ~(np.isnan(x) | np.isnan(y))
    x, y = x[both], y[both]
    n = x.shape[0]
    if n < 2:
        return 0.0
    dx = x - x.mean()
    dy = y - y.mean()
    mx, my = float(x.mean()), float(y.mean())
    fx = _CONST * mx * mx * n
    fy = _CONST * my * my * n
    return _corr(float(dx @ dy), float(dx @ dx), float(dy @ dy), fx, fy)


@dataclass(frozen=True, slots=True)
class _Layout:
    """Where things are for one metric-name tuple: output names, columns, flat cov indices."""

    out_names: tuple[str, ...]  # stat-major statistics, then CROSS
    resources: tuple[str, ...]
    resource_cols: tuple[int, ...]
    peak_pos: tuple[int, ...]
    cpu: int | None
    mem: int | None
    net_cols: tuple[int, ...]
    req: int | None
    cov_cpu: int
    cov_net_xy: tuple[int, ...]
    cov_net_yy: tuple[int, ...]
    cov_req_xy: int
    cov_req_yy: int


@lru_cache(maxsize=1024)
def _layout(names: tuple[str, ...]) -> _Layout:
    """Column positions and output names for one metric-name tuple (few distinct per fleet)."""
    k = len(names)
    pos = {name: j for j, name in enumerate(names)}
    out_names = tuple(f"{m}.{s}" for s in STATS for m in names) + CROSS
    resources = tuple(r for r in RESOURCES if r in pos)
    cols = tuple(pos[r] for r in resources)
    cpu = pos.get("cpu_cores")
    req = pos.get(REQ_RATE)
    net = tuple(pos[r] for r in ("net_rx_bps", "net_tx_bps") if r in pos)
    c = -1 if cpu is None else cpu
    r = -1 if req is None else req
    return _Layout(
        out_names=out_names,
        resources=resources,
        resource_cols=cols,
        peak_pos=tuple(_STAT_ROW["max"] * k + j for j in cols),
        cpu=cpu,
        mem=pos.get("mem_bytes"),
        net_cols=net,
        req=req,
        cov_cpu=c * k + c,
        cov_net_xy=tuple(c * k + j for j in net),
        cov_net_yy=tuple(i * k + j for i in net for j in net),
        cov_req_xy=c * k + r,
        cov_req_yy=r * k + r,
    )
