"""The families' one-pass sweeps against the one-configuration baselines they generalise."""

from __future__ import annotations

import doctest
from collections import Counter

import numpy as np
import pytest

from fpstream.backtest import sweep
from fpstream.backtest.baselines import VPA, Crane, DecayingHistogram
from fpstream.backtest.frontier import QUANTILES, Sweep
from fpstream.backtest.run import baseline_decisions, new_scores, score_series
from fpstream.backtest.traces import Series

DAY = 86_400.0
HOUR = 3600.0
STEP = 300.0
MB = 2.0**20


def synthetic(seed: int, days: float = 12.0) -> Series:
    """A VM with outages (30 h, 2.5 h), steps off the hour grid, bursts and idle stretches."""
    rng = np.random.default_rng(seed)
    ts = 1_372_629_804 + np.arange(int(days * DAY / STEP)) * STEP
    gap = (ts > ts[0] + 3 * DAY) & (ts < ts[0] + 3 * DAY + 30 * HOUR)
    gap |= (ts > ts[0] + 7 * DAY) & (ts < ts[0] + 7 * DAY + 2.5 * HOUR)
    ts = ts[~gap]
    n = len(ts)
    daily = 1 + 0.5 * np.sin(2 * np.pi * (ts % DAY) / DAY)
    cpu = rng.lognormal(-1.0, 0.8, n) * daily * (rng.random(n) > 0.1)  # some exact zeros
    mem = 2e9 * daily + rng.lognormal(18, 1.5, n) * (rng.random(n) < 0.05)
    mem = np.round(mem / 5e7) * 5e7  # repeated values: a peak is first reached once
    return Series(name=f"vm-{seed}", ts=ts, cpu=cpu, cpu_cap=np.full(n, 4.0), mem=mem,
                  mem_cap=np.full(n, 8e9))


@pytest.fixture(scope="module", params=[1, 2, 3])
def series(request: pytest.FixtureRequest) -> Series:
    return synthetic(request.param)


def test_decisions_are_the_backtests_hour_boundaries(series: Series) -> None:
    rows, at = sweep.decision_points(series.ts.astype(np.float64))
    assert at.tolist() == baseline_decisions(series)["vpa"]["ts"].tolist()
    assert (series.ts[rows - 1] <= at).all() and (series.ts[rows] > at).all()


def object_decisions(s: Series, recommender: VPA | Crane) -> np.ndarray:
    """(cpu, mem) of ``recommender`` fed every row, asked at every hour boundary."""
    period = np.ceil(s.ts / HOUR)
    out = []
    for i, t in enumerate(s.ts.tolist()):
        if i and period[i] != period[i - 1]:
            out.append(recommender.recommend())
        recommender.update(t, float(s.cpu[i]), float(s.mem[i]))
    return np.array(out)


@pytest.mark.parametrize("q", QUANTILES)
def test_every_vpa_percentile_is_vpas(q: float) -> None:
    s = synthetic(6, days=10)
    ts = s.ts.astype(np.float64)
    rows, _ = sweep.decision_points(ts)
    want = object_decisions(s, VPA(target=q, margin=0.0, min_cpu=0.0, min_mem=0.0))
    assert sweep.vpa_cpu(ts, s.cpu, rows, [q])[:, 0].tolist() == want[:, 0].tolist()
    assert sweep.vpa_memory(ts, s.mem, rows, [q])[:, 0].tolist() == want[:, 1].tolist()


@pytest.mark.parametrize("q", QUANTILES)
def test_every_crane_quantile_is_cranes(q: float) -> None:
    s = synthetic(7, days=10)
    ts = s.ts.astype(np.float64)
    rows, _ = sweep.decision_points(ts)
    want = object_decisions(s, Crane(target=q, margin=0.0))
    assert sweep.crane(ts, s.cpu, rows, [q], DAY)[:, 0].tolist() == want[:, 0].tolist()
    got = sweep.crane(ts, s.mem, rows, [q], 2 * DAY, memory=True)[:, 0]
    assert got.tolist() == want[:, 1].tolist()


def test_vpa_at_p90_and_15_percent_is_vpa(series: Series) -> None:
    ts = series.ts.astype(np.float64)
    rows, _ = sweep.decision_points(ts)
    got = baseline_decisions(series)["vpa"]
    cpu = np.maximum(sweep.vpa_cpu(ts, series.cpu, rows, [0.9])[:, 0] * (1 + 0.15), 0.025)
    mem = np.maximum(sweep.vpa_memory(ts, series.mem, rows, [0.9])[:, 0] * (1 + 0.15),
                     250 * MB)
    assert cpu.tolist() == got["cpu"].tolist()
    assert mem.tolist() == got["mem"].tolist()


def test_crane_at_p99_and_15_percent_is_crane(series: Series) -> None:
    ts = series.ts.astype(np.float64)
    rows, _ = sweep.decision_points(ts)
    got = baseline_decisions(series)["crane"]
    cpu = sweep.crane(ts, series.cpu, rows, [0.99], DAY)[:, 0] * (1 + 0.15)
    mem = sweep.crane(ts, series.mem, rows, [0.99], 2 * DAY, memory=True)[:, 0] * (1 + 0.15)
    assert cpu.tolist() == got["cpu"].tolist()
    assert mem.tolist() == got["mem"].tolist()


def test_the_sweep_scores_vpa_and_crane_as_the_backtest_does(series: Series) -> None:
    scores = new_scores(["cpu", "mem"], {"cpu": ["vpa", "crane"], "mem": ["vpa", "crane"]})
    score_series(series, None, scores, Counter())
    sw = Sweep(["cpu", "mem"], families=("vpa", "crane"))
    sw.add(series)
    for res in ("cpu", "mem"):
        for family, params in (("vpa", {"percentile": 0.9, "margin": 1.15}),
                               ("crane", {"quantile": 0.99, "margin": 1.15})):
            combo = next(c for c in sw.combinations[res][family] if c.params == params)
            want = scores["rest"][res][family]
            for name in ("slack", "allocated", "shortfall", "used", "violations", "steps"):
                assert getattr(combo.score, name) == getattr(want, name), (res, family, name)


def test_peak_of_the_last_hours_by_hand() -> None:
    # Hours (0, 1 h], (1 h, 2 h], (2 h, 3 h] of 20-minute steps, a gap, then (5 h, 6 h]: the
    # decisions at 1 h, 2 h and 5 h hold the peak of the last 1, 2 or 500 hours with data.
    ts = np.array([1200, 2400, 3600, 4800, 6000, 7200, 8400, 9600, 10800, 19200, 20400, 21600.0])
    u = np.array([1.0, 5.0, 2.0, 3.0, 1.0, 1.0, 0.5, 0.2, 0.1, 9.0, 1.0, 1.0])
    rows, at = sweep.decision_points(ts)
    assert rows.tolist() == [3, 6, 9]
    assert at.tolist() == [3600.0, 7200.0, 18000.0]
    peaks = sweep.window_peaks(ts, u, rows, (1, 2, 500))
    assert peaks[:, 0].tolist() == [5.0, 3.0, 0.5]
    assert peaks[:, 1].tolist() == [5.0, 5.0, 3.0]
    assert peaks[:, 2].tolist() == [5.0, 5.0, 5.0]


def test_peak_family_at_one_hour_and_no_margin_is_scored_by_hand() -> None:
    s = synthetic(4, days=3)
    ts = s.ts.astype(np.float64)
    sw = Sweep(["cpu"], families=("peak",))
    sw.add(s)
    combo = next(c for c in sw.combinations["cpu"]["peak"]
                 if c.params == {"hours": 1, "margin": 1.0})
    # By hand: the peak of each hour with data, in force over the next hour's steps.
    hour = np.ceil(ts / HOUR)
    peaks = {h: s.cpu[hour == h].max() for h in np.unique(hour)}
    hours = sorted(peaks)
    alloc = np.array([peaks[hours[hours.index(h) - 1]] if h != hours[0] else np.nan
                      for h in hour])
    rest = (ts > np.ceil(ts[0] / HOUR) * HOUR) & (ts >= ts[0] + DAY)
    a, u = alloc[rest], s.cpu[rest]
    assert combo.score.steps == len(u)
    assert combo.score.violations == int((u > a).sum())
    assert combo.score.slack == pytest.approx(float(np.maximum(a - u, 0).sum()))
    assert combo.score.allocated == pytest.approx(float(a.sum()))


def test_a_series_within_one_hour_has_no_decision() -> None:
    ts = np.arange(1, 12) * STEP
    u = np.ones(len(ts))
    rows, at = sweep.decision_points(ts)
    assert len(rows) == len(at) == 0
    for got in (sweep.vpa_cpu(ts, u, rows, [0.9]), sweep.vpa_memory(ts, u, rows, [0.9]),
                sweep.crane(ts, u, rows, [0.9], DAY), sweep.window_peaks(ts, u, rows, (1, 3))):
        assert got.shape[0] == 0


@pytest.mark.parametrize("leave", [False, True])
def test_histogram_states_follow_the_object_across_reference_shifts(leave: bool) -> None:
    rng = np.random.default_rng(5)
    ts = np.cumsum(rng.integers(1, 4, 2000)) * STEP
    values = rng.lognormal(0, 1, len(ts))
    half_life, history = 1800.0, 40 * HOUR  # the reference moves every 50 h
    rows, _ = sweep.decision_points(ts)
    leave_at = np.searchsorted(ts - history, ts, side="left") if leave else None
    states = sweep.histogram_states(DecayingHistogram.cpu(half_life), values, ts, rows,
                                    leave_at)
    h = DecayingHistogram.cpu(half_life)
    window: list[tuple[float, float]] = []
    q = 0
    for i, t in enumerate(ts.tolist()):
        if q < len(rows) and rows[q] == i:
            assert states[q].tolist() == h.weights.tolist(), f"before row {i}"
            q += 1
        h.add(float(values[i]), t)
        if leave:
            window.append((t, float(values[i])))
            while window[0][0] <= t - history:
                old_t, old_v = window.pop(0)
                h.subtract(old_v, old_t)
    assert q == len(rows)


def test_percentiles_read_as_the_object_reads_them() -> None:
    h = DecayingHistogram.memory(DAY)
    for v, t in ((1e9, 0.0), (3e9, HOUR), (2e9, 2 * HOUR), (0.0, 3 * HOUR)):
        h.add(v, t)
    qs = [0.0, 0.25, 0.5, 0.9, 0.99, 1.0]
    got = sweep.read_percentiles(h, np.vstack([h.weights, np.zeros_like(h.weights)]), qs)
    assert got[0].tolist() == [h.percentile(q) for q in qs]
    assert got[1].tolist() == [0.0] * len(qs)  # empty


def test_doctests() -> None:
    assert doctest.testmod(sweep).failed == 0
