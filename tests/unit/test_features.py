"""Window features, checked against numpy on the same data."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fpstream.events import RESOURCES, MetricSample
from fpstream.features import (
    COLUMN_INDEX,
    COLUMNS,
    CROSS,
    FEATURE_INDEX,
    FEATURE_ORDER,
    PER_REQUEST,
    REQ_RATE,
    STATS,
    WindowFeatures,
    feature_vector,
    featurise,
    window_features,
)

NAMES = (*RESOURCES, "app.req_rate", "proc.open_files")


def samples_of(values: np.ndarray, names: tuple[str, ...] = NAMES) -> list[MetricSample]:
    return [
        MetricSample(1000.0 + i, "app", "vm-1", dict(zip(names, row, strict=True)))
        for i, row in enumerate(values.tolist())
    ]


def numpy_stats(column: np.ndarray) -> dict[str, float]:
    mean = column.mean()
    return {
        "mean": mean,
        "p50": np.percentile(column, 50),
        "p95": np.percentile(column, 95),
        "max": column.max(),
        "std": column.std(),
        "cv": column.std() / mean if mean > 0 else 0.0,
        "peak_to_mean": column.max() / mean if mean > 0 else 1.0,
    }


def numpy_corr(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson r; 0 when a side is constant up to rounding (cv < 1e-10), the documented rule."""
    if len(x) < 2 or any(v.std() <= 1e-10 * abs(v.mean()) for v in (x, y)):
        return 0.0
    return float(np.corrcoef(x, y)[0, 1])


def assert_matches_numpy(wf: WindowFeatures, values: np.ndarray, names: tuple[str, ...]) -> None:
    for j, name in enumerate(names):
        if name not in RESOURCES:  # other metrics only feed the cross features
            continue
        column = values[:, j]
        for stat, expected in numpy_stats(column).items():
            got = wf.feature(f"{name}.{stat}")
            # absolute slack relative to the data: the std of a constant column is 0 only up
            # to the rounding of its mean, in numpy as here
            scale = 1.0 if stat in ("cv", "peak_to_mean") else float(column.max())
            assert got == pytest.approx(expected, rel=1e-9, abs=1e-12 * scale), (name, stat)
    col = {name: values[:, j] for j, name in enumerate(names)}
    net = col["net_rx_bps"] + col["net_tx_bps"]
    assert wf.feature("corr.cpu_net") == pytest.approx(
        numpy_corr(col["cpu_cores"], net), abs=1e-9)
    assert wf.feature("corr.cpu_req") == pytest.approx(
        numpy_corr(col["cpu_cores"], col["app.req_rate"]), abs=1e-9)
    req = col["app.req_rate"].mean()
    for key, r in (("per_req.cpu_cores", "cpu_cores"), ("per_req.mem_bytes", "mem_bytes")):
        expected = col[r].mean() / req if req > 0 else 0.0
        assert wf.feature(key) == pytest.approx(expected, rel=1e-12)
    assert wf.peak.tolist() == pytest.approx([col[r].max() for r in RESOURCES])
    assert wf.mean.tolist() == pytest.approx([col[r].mean() for r in RESOURCES])
    for array, size in ((wf.features, len(FEATURE_ORDER)), (wf.peak, 6), (wf.mean, 6)):
        assert array.dtype == np.float64 and array.shape == (size,)


SCALES = np.array([4.0, 8e9, 1e6, 1e6, 1e8, 1e8, 500.0, 1e4])


@pytest.mark.parametrize("n", [1, 2, 3, 5, 6, 12, 20, 59, 60, 61])
def test_statistics_match_numpy(n: int) -> None:
    rng = np.random.default_rng(n)
    values = rng.random((n, len(NAMES))) * SCALES
    wf = window_features("app", "vm-1", 960.0, 1080.0, samples_of(values))
    assert (wf.app, wf.instance, wf.start, wf.end, wf.n) == ("app", "vm-1", 960.0, 1080.0, n)
    assert_matches_numpy(wf, values, NAMES)


@settings(max_examples=150, deadline=None)
@given(
    hnp.arrays(
        np.float64,
        st.tuples(st.integers(1, 30), st.just(len(NAMES))),
        elements=st.one_of(
            st.just(0.0),
            st.floats(1e-6, 1e12),
            st.sampled_from([0.1, 0.2, 1.0, 3.0]),
        ),
    )
)
def test_statistics_match_numpy_on_any_gauges(values: np.ndarray) -> None:
    wf = window_features("app", "vm-1", 0.0, 60.0, samples_of(values))
    assert_matches_numpy(wf, values, NAMES)
    assert np.isfinite(wf.features).all()
    assert -1.0 <= wf.feature("corr.cpu_net") <= 1.0


def test_correlations_have_the_sign_of_the_relation() -> None:
    t = np.linspace(0.0, 1.0, 30)
    values = np.column_stack([
        1 + t, 1e9 + 0 * t, 0 * t, 0 * t, 1e6 * (2 - t), 1e5 * (2 - t), 100 * (1 + t), 3 + 0 * t,
    ])
    wf = window_features("app", "vm-1", 0.0, 60.0, samples_of(values))
    assert wf.feature("corr.cpu_net") == pytest.approx(-1.0)
    assert wf.feature("corr.cpu_req") == pytest.approx(1.0)


def test_the_net_correlation_survives_opposite_rx_and_tx() -> None:
    # rx and tx move against each other, so their sum barely moves: the variance of the sum
    # from those of its parts would be all rounding error
    values = np.array([[0.0, 0.5, 0.5, 0.5, 0.5, 1e-6, 0.5, 0.5],
                       [0.5, 0.5, 0.5, 0.5, 0.0, 0.5, 0.5, 0.5]])
    wf = window_features("app", "vm-1", 0.0, 60.0, samples_of(values))
    assert wf.feature("corr.cpu_net") == pytest.approx(-1.0, abs=1e-9)


def test_constant_or_missing_sides_give_zero_correlation() -> None:
    values = np.tile([0.1, 1e9, 0.0, 0.0, 0.3, 0.3, 7.0, 1.0], (10, 1))
    values[:, 6] = np.arange(10)  # req varies, cpu (0.1, not exact in binary) does not
    wf = window_features("app", "vm-1", 0.0, 60.0, samples_of(values))
    assert wf.feature("corr.cpu_net") == 0.0
    assert wf.feature("corr.cpu_req") == 0.0
    only_cpu = [MetricSample(float(i), "a", "i", {"cpu_cores": float(i)}) for i in range(1, 5)]
    wf = window_features("a", "i", 0.0, 60.0, only_cpu)
    assert wf.feature("corr.cpu_net") == 0.0 and wf.feature("corr.cpu_req") == 0.0
    assert all(wf.feature(key) == 0.0 for key in PER_REQUEST)
    assert wf.peak.tolist() == [4.0, 0, 0, 0, 0, 0] and wf.mean.tolist() == [2.5, 0, 0, 0, 0, 0]
    # a resource the window lacks reads 0 throughout
    assert not wf.features[len(STATS):FEATURE_INDEX["corr.cpu_net"]].any()


def test_all_zero_metric_has_no_spread_and_peak_equal_to_mean() -> None:
    values = np.zeros((4, len(NAMES)))
    wf = window_features("a", "i", 0.0, 60.0, samples_of(values))
    for name in RESOURCES:
        assert wf.feature(f"{name}.cv") == 0.0
        assert wf.feature(f"{name}.peak_to_mean") == 1.0
    assert wf.feature("per_req.cpu_cores") == 0.0  # no requests: ratio undefined, reads 0


def test_single_sample_window() -> None:
    s = [MetricSample(60.0, "a", "i", {"cpu_cores": 2.0, "net_rx_bps": 0.0, "app.x": 0.0})]
    wf = window_features("a", "i", 0.0, 60.0, s)
    f = wf.feature
    assert f("cpu_cores.mean") == f("cpu_cores.p95") == f("cpu_cores.max") == 2.0
    assert f("cpu_cores.std") == 0.0 and f("cpu_cores.cv") == 0.0
    assert f("cpu_cores.peak_to_mean") == 1.0 and f("net_rx_bps.peak_to_mean") == 1.0
    assert f("corr.cpu_net") == 0.0


def test_samples_with_different_metric_sets_use_what_each_has() -> None:
    rng = np.random.default_rng(7)
    cpu = rng.random(8)
    rx = rng.random(8) * 1e6
    samples = []
    for i in range(8):
        metrics = {"cpu_cores": float(cpu[i])}
        if i % 3:
            metrics["net_rx_bps"] = float(rx[i])
        if i == 5:
            metrics["app.queue_len"] = 4.0
        samples.append(MetricSample(float(i), "a", "i", metrics))
    wf = window_features("a", "i", 0.0, 60.0, samples)
    has = np.array([i % 3 != 0 for i in range(8)])
    for stat, expected in numpy_stats(rx[has]).items():
        assert wf.feature(f"net_rx_bps.{stat}") == pytest.approx(expected), stat
    for stat, expected in numpy_stats(cpu).items():
        assert wf.feature(f"cpu_cores.{stat}") == pytest.approx(expected), stat
    assert wf.feature("corr.cpu_net") == pytest.approx(numpy_corr(cpu[has], rx[has]))
    assert wf.n == 8


def test_labels_and_capacity_come_from_the_latest_sample() -> None:
    samples = [
        MetricSample(30.0, "a", "i", {"cpu_cores": 1.0}, labels={"v": "new"},
                     capacity={"cpu_cores": 4.0}),
        MetricSample(10.0, "a", "i", {"cpu_cores": 1.0}, labels={"v": "old"},
                     capacity={"cpu_cores": 2.0}),
    ]
    wf = window_features("a", "i", 0.0, 60.0, samples)
    assert wf.labels == {"v": "new"} and wf.capacity == {"cpu_cores": 4.0}


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning")
def test_huge_values_still_give_finite_features() -> None:
    values = np.array([[1e300, 1e300, 0, 0, 1e300, 1e300, 1e300, 1.0],
                       [1e308, 0.0, 0, 0, 0.0, 1e308, 1.0, 2.0]])
    wf = window_features("a", "i", 0.0, 60.0, samples_of(values))
    assert np.isfinite(wf.features).all()
    assert np.isfinite(wf.peak).all() and np.isfinite(wf.mean).all()


def test_no_samples_is_an_error() -> None:
    with pytest.raises(ValueError, match="no samples"):
        window_features("a", "i", 0.0, 60.0, [])


def window_block(rng: np.random.Generator, w: int, n: int) -> np.ndarray:
    """``w`` windows of ``n`` samples over ``COLUMNS``: dense ones, ones lacking a metric
    throughout, and ones with gaps (NaN where a sample lacks a metric)."""
    block = rng.random((w, n, len(COLUMNS))) * SCALES[: len(COLUMNS)]
    for k in range(w):
        kind = k % 4
        if kind == 1:  # no request rate, no tx: as most apps send
            block[k, :, [COLUMN_INDEX[REQ_RATE], COLUMN_INDEX["net_tx_bps"]]] = np.nan
        elif kind == 2:  # gaps
            block[k][rng.random((n, len(COLUMNS))) < 0.3] = np.nan
        elif kind == 3:  # only cpu
            block[k, :, 1:] = np.nan
    return block


@pytest.mark.parametrize("n", [1, 2, 5, 7, 9, 20])
def test_a_window_gives_the_same_floats_alone_or_with_others(n: int) -> None:
    block = window_block(np.random.default_rng(n), 9, n)
    feats, peak, mean = featurise(block.copy())
    for k in range(len(block)):
        f1, p1, m1 = featurise(block[k : k + 1].copy())
        assert np.array_equal(feats[k], f1[0]) and np.array_equal(peak[k], p1[0])
        assert np.array_equal(mean[k], m1[0])
        # and the same as window_features over the window's samples
        rows = [{c: v for c, v in zip(COLUMNS, row, strict=True) if not math.isnan(v)}
                for row in block[k].tolist()]
        samples = [MetricSample(1000.0 + i, "a", "i", m) for i, m in enumerate(rows)]
        assert np.array_equal(window_features("a", "i", 0.0, 60.0, samples).features, feats[k])


def test_the_columns_hint_gives_what_detection_gives() -> None:
    block = np.random.default_rng(2).random((4, 6, len(COLUMNS))) * SCALES[: len(COLUMNS)]
    columns = (0, 1, 4, 6)
    block[:, :, [c for c in range(len(COLUMNS)) if c not in columns]] = np.nan
    detected = featurise(block.copy())
    hinted = featurise(block[:, :, list(columns)].copy(), columns)
    assert all(np.array_equal(a, b) for a, b in zip(detected, hinted, strict=True))


def test_feature_order_is_fixed_and_complete() -> None:
    assert len(FEATURE_ORDER) == len(set(FEATURE_ORDER)) == len(RESOURCES) * len(STATS) + 4
    assert FEATURE_ORDER[: len(STATS)] == tuple(f"cpu_cores.{s}" for s in STATS)
    assert FEATURE_ORDER[-4:] == CROSS + PER_REQUEST
    assert all(FEATURE_ORDER[i] == name for name, i in FEATURE_INDEX.items())
    values = np.random.default_rng(1).random((6, len(NAMES))) * SCALES
    wf = window_features("a", "i", 0.0, 60.0, samples_of(values))
    assert wf.features.shape == (len(FEATURE_ORDER),)
    assert wf.features.all()  # a window with every metric has every feature
    assert [wf.feature(name) for name in FEATURE_ORDER] == wf.features.tolist()


def test_feature_vector_defaults_missing_names_to_zero() -> None:
    vec = feature_vector({"cpu_cores.mean": 1.5, "app.other.mean": 9.0})
    assert vec[FEATURE_INDEX["cpu_cores.mean"]] == 1.5
    assert vec.sum() == 1.5
