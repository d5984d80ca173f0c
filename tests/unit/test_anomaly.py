from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
from river import stats

from fpstream.anomaly import ResidualDetector, log_ratio, noise_floor

KEY = ("billing-api/vm-1", "cpu_cores")


def test_constant_residuals_never_anomalous() -> None:
    d = ResidualDetector()
    for i in range(200):
        score, severity = d.score_one(KEY, observed=1.3, predicted=1.0)
        assert severity is None
        assert i == 0 or abs(score) < 1e-9  # a steady 30% bias is the app's normal
        d.learn_one(KEY, observed=1.3, predicted=1.0)
    assert d.score_one(KEY, 1.3, 1.0) == (pytest.approx(0.0, abs=1e-9), None)


def test_spike_is_critical_and_moderate_miss_is_warn() -> None:
    d = ResidualDetector(threshold=4.0, min_spread=0.1)
    rng = np.random.default_rng(0)
    for _ in range(50):
        d.learn_one(KEY, 1.0 * float(np.exp(0.02 * rng.normal())), 1.0)
    score, severity = d.score_one(KEY, 10.0, 1.0)
    assert severity == "critical" and score > 8
    assert d.score_one(KEY, 1.6, 1.0)[1] == "warn"
    # A collapse (observed far below the prediction) is graded too, with a negative score.
    score, severity = d.score_one(KEY, 0.05, 1.0)
    assert severity == "critical" and score < 0


def test_warmup_respected() -> None:
    d = ResidualDetector(warmup=10)
    for i in range(10):
        assert d.score_one(KEY, 10.0, 1.0)[1] is None, i
        d.learn_one(KEY, 1.0, 1.0)
    assert d.score_one(KEY, 10.0, 1.0)[1] == "critical"


def test_scored_against_own_spread() -> None:
    d = ResidualDetector()
    noisy, calm = ("noisy", "cpu_cores"), ("calm", "cpu_cores")
    rng = np.random.default_rng(1)
    for _ in range(300):
        d.learn_one(noisy, float(np.exp(0.8 * rng.normal())), 1.0)
        d.learn_one(calm, float(np.exp(0.02 * rng.normal())), 1.0)
    assert d.score_one(noisy, 3.0, 1.0)[1] is None  # a 3x miss is usual for this app
    assert d.score_one(calm, 3.0, 1.0)[1] == "critical"


def test_ew_statistics_match_river() -> None:
    d = ResidualDetector(fading_factor=0.1)
    mean, var = stats.EWMean(0.1), stats.EWVar(0.1)
    rng = np.random.default_rng(2)
    for _ in range(100):
        observed, predicted = float(rng.lognormal()), float(rng.lognormal())
        d.learn_one(KEY, observed, predicted)
        r = log_ratio(observed, predicted, noise_floor("cpu_cores"))
        mean.update(r)
        var.update(r)
        spread = d.spread(KEY)
        assert spread is not None
        assert spread[0] == pytest.approx(mean.get()) and spread[1] == pytest.approx(
            math.sqrt(var.get())
        )


def test_under_streak_counts_and_resets() -> None:
    d = ResidualDetector()
    assert d.under_streak(KEY) == 0
    for expected in (1, 2, 3):
        d.learn_one(KEY, 1.5, 1.0)
        assert d.under_streak(KEY) == expected
    d.learn_one(KEY, 0.9, 1.0)
    assert d.under_streak(KEY) == 0
    d.learn_one(KEY, 0.0, 0.0)  # idle and predicted idle is not an under-prediction
    assert d.under_streak(KEY) == 0


def test_noise_floor_keeps_idle_apps_quiet() -> None:
    d = ResidualDetector()
    key = ("idle", "cpu_cores")
    for _ in range(20):
        d.learn_one(key, 0.0, 0.0)
    assert d.score_one(key, 0.001, 0.0)[1] is None  # a thousandth of a core is noise
    assert math.isfinite(d.score_one(key, 5.0, 0.0)[0])


def test_bounded_keys_forget_and_pickle() -> None:
    d = ResidualDetector(max_keys=3)
    for i in range(5):
        d.learn_one((f"app{i}", "mem_bytes"), 1e9, 1e9)
    d.learn_one(("app2", "mem_bytes"), 1e9, 1e9)  # refreshed: app3 is now the oldest
    d.learn_one(("app5", "mem_bytes"), 1e9, 1e9)
    assert len(d) == 3 and d.spread(("app3", "mem_bytes")) is None
    assert d.spread(("app2", "mem_bytes")) is not None
    d.forget(("app2", "mem_bytes"))
    assert len(d) == 2
    clone = pickle.loads(pickle.dumps(d))
    assert clone.spread(("app4", "mem_bytes")) == d.spread(("app4", "mem_bytes"))


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"threshold": 0}, "threshold"),
        ({"warmup": -1}, "warmup"),
        ({"fading_factor": 0.0}, "fading_factor"),
        ({"min_spread": 0.0}, "min_spread"),
        ({"max_keys": 0}, "max_keys"),
    ],
)
def test_bad_settings(kwargs: dict[str, object], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        ResidualDetector(**kwargs)  # type: ignore[arg-type]


def test_bad_values_rejected() -> None:
    with pytest.raises(ValueError, match="finite"):
        ResidualDetector().score_one(KEY, math.nan, 1.0)
    with pytest.raises(ValueError, match="finite"):
        ResidualDetector().learn_one(KEY, 1.0, -1.0)
