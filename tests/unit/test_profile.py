"""App profile: smoothing against River, periodicity, trend, recent peaks, bounds, pickling."""

from __future__ import annotations

import math
import pickle
from collections.abc import Callable

import numpy as np
import pytest
from river import stats

from fpstream.events import RESOURCES
from fpstream.features import FEATURE_INDEX, FEATURE_ORDER, WindowFeatures, feature_vector
from fpstream.profile import DAY, HOUR, AppProfile, ProfileSnapshot

T0 = 1_699_920_000.0  # a midnight UTC: a multiple of a day
BASE = {"cpu_cores": 1.0, "mem_bytes": 4e9, "disk_read_bps": 1e5, "disk_write_bps": 5e4,
        "net_rx_bps": 1e6, "net_tx_bps": 4e5}


def window(instance: str, start: float, end: float, peak: dict[str, float],
           mean: dict[str, float] | None = None) -> WindowFeatures:
    mean = dict(peak) if mean is None else mean
    features = {}
    for r in peak:
        features[f"{r}.max"] = peak[r]
        features[f"{r}.p95"] = peak[r]
        features[f"{r}.mean"] = mean[r]
    return WindowFeatures("app", instance, start, end, 5, feature_vector(features),
                          resources(peak), resources(mean), {"team": "t"}, {"cpu_cores": 8.0})


def resources(values: dict[str, float]) -> np.ndarray:
    return np.array([values.get(r, 0.0) for r in RESOURCES])


def replay(profile: AppProfile, cpu: Callable[[float], float], days: float,
           window_s: float = 300.0, instances: tuple[str, ...] = ("i1", "i2", "i3"),
           mem: Callable[[float], float] | None = None) -> ProfileSnapshot:
    """Windows of every instance over ``days``; CPU follows ``cpu(t)``, the rest is flat."""
    snap = None
    for k in range(int(days * DAY / window_s)):
        start = T0 + k * window_s
        for inst in instances:
            peak = dict(BASE, cpu_cores=cpu(start))
            if mem is not None:
                peak["mem_bytes"] = mem(start)
            snap = profile.update(window(inst, start, start + window_s, peak))
    assert snap is not None
    return snap


def test_smoothing_matches_river_ewmean_after_every_update() -> None:
    rng = np.random.default_rng(0)
    profile = AppProfile(alpha=0.3)
    river_means = {name: stats.EWMean(fading_factor=0.3) for name in FEATURE_ORDER}
    for k in range(40):
        present = [n for n in FEATURE_ORDER if rng.random() < 0.8]
        feats = {n: float(rng.random() * 100) for n in present}
        one = resources({"cpu_cores": 1.0})
        wf = WindowFeatures("app", "i", T0 + 60 * k, T0 + 60 * (k + 1), 3, feature_vector(feats),
                            one, one, {}, {})
        snap = profile.update(wf)
        for name, mean in river_means.items():
            mean.update(feats.get(name, 0.0))
            got = snap.smoothed[FEATURE_INDEX[name]]
            assert got == pytest.approx(mean.get(), rel=1e-9, abs=1e-12)
        assert snap.windows == k + 1


def test_a_daily_sine_is_a_strong_24_hour_period() -> None:
    snap = replay(AppProfile(), lambda t: 2 + math.sin(2 * math.pi * t / DAY), days=4)
    assert snap.period_s == DAY
    assert snap.period_strength > 0.8


def test_a_half_daily_sine_is_a_12_hour_period_not_its_multiple() -> None:
    snap = replay(AppProfile(), lambda t: 2 + math.sin(2 * math.pi * t / (12 * HOUR)), days=4)
    assert snap.period_s == 12 * HOUR
    assert snap.period_strength > 0.8


def test_white_noise_has_low_period_strength() -> None:
    rng = np.random.default_rng(11)
    noise = {}

    def cpu(t: float) -> float:  # one value per hour, so the hourly buckets are white noise
        return noise.setdefault(t // HOUR, 2 + float(rng.normal()))

    snap = replay(AppProfile(), cpu, days=7)
    assert snap.period_strength < 0.3
    assert snap.period_s == 0.0


def test_noisy_daily_cycle_is_still_found() -> None:
    rng = np.random.default_rng(2)
    snap = replay(AppProfile(), lambda t: 3 + math.sin(2 * math.pi * t / DAY)
                  + 0.3 * rng.normal(), days=7)
    assert snap.period_s == DAY and snap.period_strength > 0.8


@pytest.mark.parametrize("slope", [0.2, -0.2])
def test_trend_has_the_sign_and_size_of_the_growth(slope: float) -> None:
    rng = np.random.default_rng(4)

    def cpu(t: float) -> float:
        return 5 + slope * (t - T0) / DAY + 0.05 * rng.normal()

    profile = AppProfile()
    snap = replay(profile, cpu, days=5)
    assert math.copysign(1, snap.trend) == math.copysign(1, slope)
    # relative to the mean of the completed buckets, per day: compare with numpy's fit
    newest = math.floor((T0 + 5 * DAY - 300) / HOUR)
    hours = np.arange(newest - 167, newest)
    hours = hours[hours >= T0 / HOUR]
    level = 5 + slope * (hours * HOUR - T0) / DAY
    expected = np.polyfit(hours / 24, level / level.mean(), 1)[0]
    assert snap.trend == pytest.approx(expected, rel=0.05)
    assert snap.resource_trend["cpu_cores"] == snap.trend
    assert snap.resource_trend["mem_bytes"] == 0.0


def test_flat_noise_has_no_trend_and_a_memory_leak_shows_per_resource() -> None:
    rng = np.random.default_rng(9)
    snap = replay(AppProfile(), lambda t: 2 + 0.1 * rng.normal(), days=4,
                  mem=lambda t: 1e9 * (1 + 0.5 * (t - T0) / DAY))
    assert abs(snap.trend) < 0.01
    assert snap.resource_trend["mem_bytes"] > 0.1


def test_pickling_mid_stream_gives_identical_subsequent_snapshots() -> None:
    rng = np.random.default_rng(8)
    wfs = []
    for k in range(int(2.5 * DAY / 600)):
        start = T0 + 600 * k + float(rng.integers(0, 3)) * 600  # some out of order
        inst = f"i{int(rng.integers(0, 3))}"
        cpu = 2 + math.sin(2 * math.pi * start / DAY) + 0.1 * float(rng.random())
        wfs.append(window(inst, start, start + 600, dict(BASE, cpu_cores=cpu)))
    for cut in (0, 1, 100, 250, len(wfs)):
        a = AppProfile()
        for wf in wfs[:cut]:
            a.update(wf)
        b = pickle.loads(pickle.dumps(a))
        assert [a.update(wf) for wf in wfs[cut:]] == [b.update(wf) for wf in wfs[cut:]]


def test_size_is_small_and_does_not_grow_with_instances() -> None:
    profile = AppProfile()
    rng = np.random.default_rng(1)
    replay(profile, lambda t: 2 + math.sin(2 * math.pi * t / DAY) + 0.1 * rng.normal(), days=7)
    week = len(pickle.dumps(profile))
    assert week < 6 * 1024  # the ring of means (168 x 6 float32) and counts, the features
    replay(profile, lambda t: 2.0, days=0.5, instances=tuple(f"i{k}" for k in range(50)))
    assert len(pickle.dumps(profile)) <= week + 64


def test_snapshot_carries_the_window_identity() -> None:
    snap = AppProfile().update(window("vm-7", T0, T0 + 60, {"cpu_cores": 0.5}))
    assert (snap.app, snap.instance, snap.ts) == ("app", "vm-7", T0 + 60)
    assert snap.labels == {"team": "t"} and snap.capacity == {"cpu_cores": 8.0}
    assert snap.peak == {r: (0.5 if r == "cpu_cores" else 0.0) for r in RESOURCES}
    assert snap.smoothed.shape == (len(FEATURE_ORDER),)


def test_one_profile_holds_one_app() -> None:
    profile = AppProfile()
    profile.update(window("i", T0, T0 + 60, BASE))
    zero = np.zeros(len(RESOURCES))
    other = WindowFeatures("other", "i", T0, T0 + 60, 1, feature_vector({}), zero, zero, {}, {})
    with pytest.raises(ValueError, match="holds app"):
        profile.update(other)


@pytest.mark.parametrize(
    "kwargs",
    [{"alpha": 0.0}, {"alpha": 1.5}, {"bucket_s": 0.0}, {"bucket_s": math.nan},
     {"history_buckets": 2}, {"min_strength": 2.0}],
)
def test_bad_settings_are_rejected(kwargs: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        AppProfile(**kwargs)
