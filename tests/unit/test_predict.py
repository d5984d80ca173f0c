from __future__ import annotations

import math
import pickle
from collections.abc import Iterator

import numpy as np
import pytest

from fpstream.events import RESOURCES
from fpstream.predict import BASELINE, NeedPredictor, ResidualQuantile, log_ratio, noise_floor

Row = tuple[float, dict[str, float], float]


def fleet(n: int, seed: int = 0, apps: int = 200) -> Iterator[Row]:
    """(app scale, features, next peak): peaks are baseline * exp(signal + noise), with apps
    from 0.05 to 64 cores, so only a scale-free target can be learned by one global model."""
    rng = np.random.default_rng(seed)
    scales = np.exp(rng.uniform(math.log(0.05), math.log(64.0), apps))
    traits = rng.normal(size=(apps, 3))
    for _ in range(n):
        a = int(rng.integers(apps))
        f = traits[a] + 0.1 * rng.normal(size=3)
        base = float(scales[a] * math.exp(0.1 * rng.normal()))
        y = base * math.exp(0.3 + 0.8 * f[0] - 0.3 * f[1] + 0.15 * rng.normal())
        yield float(scales[a]), {BASELINE: base, "f0": f[0], "f1": f[1], "f2": f[2]}, y


def run(p: NeedPredictor, n: int, seed: int = 0) -> list[tuple[float, float, float]]:
    """(scale, y, prediction before learning) for each item."""
    out = []
    for scale, x, y in fleet(n, seed):
        out.append((scale, y, p.predict_one("cpu_cores", x)))
        p.learn_one("cpu_cores", x, y)
    return out


def test_fallback_before_learning_is_the_baseline() -> None:
    p = NeedPredictor()
    for r in RESOURCES:
        assert p.predict_one(r, {BASELINE: 3.5e6, "fp0": 1.0}) == 3.5e6
        assert p.predict_one(r, {BASELINE: 0.0}) == 0.0
    assert math.isnan(p.progressive_mae("cpu_cores")) or p.progressive_mae("cpu_cores") == 0


def test_coverage_approaches_target_across_app_sizes() -> None:
    p = NeedPredictor(resources=("cpu_cores",), quantile=0.9)
    rows = run(p, 12_000)[4000:]
    covered = np.array([y <= pred for _, y, pred in rows])
    small = np.array([scale < 1.0 for scale, _, _ in rows])
    assert covered.mean() == pytest.approx(0.9, abs=0.02)
    # One global model, calibrated for a 0.1-core app and a 40-core app alike.
    assert covered[small].mean() == pytest.approx(0.9, abs=0.03)
    assert covered[~small].mean() == pytest.approx(0.9, abs=0.03)
    assert p.coverage("cpu_cores") == pytest.approx(0.9, abs=0.03)


def test_error_decreases_with_training() -> None:
    p = NeedPredictor(resources=("cpu_cores",))
    rows = run(p, 8000)
    err = [abs(math.log(y + 0.01) - math.log(pred + 0.01)) for _, y, pred in rows]
    early, late = np.mean(err[:100]), np.mean(err[-2000:])
    assert late < 0.75 * early
    # And it beats the fallback (the baseline itself) on the same items.
    fallback = [abs(math.log(y + 0.01) - math.log(x[BASELINE] + 0.01)) for _, x, y in fleet(8000)]
    assert late < 0.75 * np.mean(fallback[-2000:])
    assert p.progressive_mae("cpu_cores") == pytest.approx(np.mean(err))
    assert p.n_learned("cpu_cores") == 8000


def test_progressive_validation_scores_the_prediction_made_before_learning() -> None:
    p = NeedPredictor(resources=("mem_bytes",))
    x = {BASELINE: 1e9}
    p.learn_one("mem_bytes", x, 2e9)  # predicted 1e9 (the baseline) before learning
    f = noise_floor("mem_bytes")
    assert p.progressive_mae("mem_bytes") == pytest.approx(math.log((2e9 + f) / (1e9 + f)))
    assert p.coverage("mem_bytes") == 0.0


def test_deterministic_and_pickle_round_trip() -> None:
    a, b = NeedPredictor(seed=3), NeedPredictor(seed=3)
    assert run(a, 500) == run(b, 500)
    clone = pickle.loads(pickle.dumps(a))
    assert run(a, 300, seed=1) == run(clone, 300, seed=1)
    assert a.progressive_mae("cpu_cores") == clone.progressive_mae("cpu_cores")


def test_predictions_never_nan_or_negative_on_extreme_inputs() -> None:
    p = NeedPredictor(resources=("net_rx_bps",))
    rng = np.random.default_rng(0)
    for _ in range(500):
        x = {BASELINE: float(rng.choice([0.0, 1.0, 1e12])), "f": float(rng.normal() * 1e3)}
        y = float(rng.choice([0.0, 1e3, 1e13]))
        pred = p.predict_one("net_rx_bps", x)
        assert math.isfinite(pred) and pred >= 0
        p.learn_one("net_rx_bps", x, y)


def test_input_checks_and_not_mutated() -> None:
    p = NeedPredictor()
    x = {BASELINE: 1.0, "f": 0.5}
    p.learn_one("cpu_cores", x, 2.0)
    assert x == {BASELINE: 1.0, "f": 0.5}
    with pytest.raises(ValueError, match="baseline"):
        p.predict_one("cpu_cores", {"f": 1.0})
    with pytest.raises(ValueError, match="unknown resource"):
        p.predict_one("gpu", x)
    with pytest.raises(ValueError, match="'f' must be finite"):
        p.predict_one("cpu_cores", {BASELINE: 1.0, "f": math.nan})
    with pytest.raises(ValueError, match="y must be"):
        p.learn_one("cpu_cores", x, -1.0)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [({"quantile": 1.0}, "quantile"), ({"resources": ()}, "resources"), ({"lr": 0}, "lr")],
)
def test_bad_settings(kwargs: dict[str, object], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        NeedPredictor(**kwargs)  # type: ignore[arg-type]


def test_residual_quantile_fleet_factor_matches_numpy_on_window() -> None:
    rq = ResidualQuantile(q=0.9, window=500)
    assert rq.factor("cpu_cores") == 1.0
    rng = np.random.default_rng(0)
    ratios = []
    for _ in range(2000):
        predicted = float(rng.uniform(0.5, 4.0))
        observed = predicted * float(np.exp(0.3 * rng.normal()))
        rq.update("cpu_cores", observed, predicted)
        ratios.append(log_ratio(observed, predicted, noise_floor("cpu_cores")))
    expected = math.exp(float(np.quantile(ratios[-500:], 0.9)))
    assert rq.factor("cpu_cores") == pytest.approx(expected, rel=0.02)
    # Multiplying predictions by the factor covers ~q of outcomes.
    covered = np.mean(np.exp(ratios[-500:]) <= rq.factor("cpu_cores") * 1.0001)
    assert covered == pytest.approx(0.9, abs=0.02)


def test_residual_quantile_per_key_after_min_count_with_fleet_fallback() -> None:
    rq = ResidualQuantile(q=0.9, min_count=50, lr=0.05)
    rng = np.random.default_rng(1)
    for i in range(3000):
        calm = float(np.exp(0.05 * rng.normal()))
        rq.update("mem_bytes", 1e9 * calm, 1e9, key=f"calm-{i % 10}")
        if i < 40:
            rq.update("mem_bytes", 1e9 * float(np.exp(rng.normal())), 1e9, key="bursty")
    calm = rq.factor("mem_bytes", key="calm-0")
    assert calm == pytest.approx(math.exp(0.05 * 1.2816), rel=0.05)
    # "bursty" has too few outcomes: it gets the fleet value.
    assert rq.factor("mem_bytes", key="bursty") == rq.factor("mem_bytes")
    rq.forget("calm-0")
    assert rq.factor("mem_bytes", key="calm-0") == rq.factor("mem_bytes")
    clone = pickle.loads(pickle.dumps(rq))
    assert clone.factor("mem_bytes", key="calm-1") == rq.factor("mem_bytes", key="calm-1")


def test_residual_quantile_bounded_keys() -> None:
    rq = ResidualQuantile(max_keys=5)
    for i in range(20):
        rq.update("cpu_cores", 1.0, 1.0, key=f"k{i}")
    assert len(rq._keys) == 5 and ("k19", "cpu_cores") in rq._keys
    with pytest.raises(ValueError, match="q must"):
        ResidualQuantile(q=0.0)
    with pytest.raises(ValueError, match="finite"):
        rq.update("cpu_cores", -1.0, 1.0)
