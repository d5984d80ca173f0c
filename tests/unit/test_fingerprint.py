from __future__ import annotations

import pickle
import subprocess
import sys
import time

import numpy as np
import pytest
from river import covariance

from fpstream.fingerprint import Fingerprinter, Moments, slog1p


def low_rank(n: int = 3000, d: int = 20, rank: int = 3, seed: int = 1) -> np.ndarray:
    """Data that is rank-3 plus small noise after the signed log, at wildly different scales."""
    rng = np.random.default_rng(seed)
    t = rng.normal(size=(n, rank)) @ rng.normal(size=(rank, d)) + 0.05 * rng.normal(size=(n, d))
    t += np.linspace(0.0, 20.0, d)  # columns from ~1 to ~1e9 once un-logged
    return np.sign(t) * np.expm1(np.abs(t))


def top_axes_numpy(X: np.ndarray, dims: int) -> np.ndarray:
    T = slog1p(X)
    S = (T - T.mean(0)) / T.std(0, ddof=1)
    values, vectors = np.linalg.eigh(np.cov(S.T))
    return vectors[:, np.argsort(values)[::-1][:dims]]


def max_angle_deg(A: np.ndarray, B: np.ndarray) -> float:
    cosines = np.linalg.svd(np.linalg.qr(A)[0].T @ np.linalg.qr(B)[0], compute_uv=False)
    return float(np.degrees(np.arccos(np.clip(cosines.min(), -1.0, 1.0))))


def test_moments_match_numpy_after_every_update() -> None:
    X = np.random.default_rng(0).normal(size=(40, 5)) * [1, 10, 100, 1e3, 1e4]
    m = Moments()
    for i, x in enumerate(X):
        m.update(x)
        assert np.allclose(m.mean, X[: i + 1].mean(0))
        if i >= 1:
            assert np.allclose(m.cov(), np.cov(X[: i + 1].T, ddof=1))


def test_moments_match_river_empirical_covariance() -> None:
    X = np.random.default_rng(1).normal(size=(60, 4))
    m, river_cov = Moments(), covariance.EmpiricalCovariance()
    for x in X:
        m.update(x)
        river_cov.update(dict(enumerate(x)))
    expected = np.array([[river_cov[i, j].get() for j in range(4)] for i in range(4)])
    assert np.allclose(m.cov(), expected)


def test_moments_merge_equals_one_pass() -> None:
    X = np.random.default_rng(2).normal(size=(50, 3))
    a, b, whole = Moments(), Moments(), Moments()
    for x in X[:20]:
        a.update(x)
    for x in X[20:]:
        b.update(x)
    for x in X:
        whole.update(x)
    a += b
    assert a.n == 50 and np.allclose(a.mean, whole.mean) and np.allclose(a.cov(), whole.cov())


def test_zeros_before_two_vectors() -> None:
    fp = Fingerprinter(dims=2)
    assert np.array_equal(fp.transform_one(np.ones(5)), np.zeros(2)) and fp.version == 0
    fp.learn_one(np.ones(5))
    assert np.array_equal(fp.transform_one(np.ones(5)), np.zeros(2)) and fp.version == 0
    fp.learn_one(np.arange(5.0))
    assert fp.transform_one(np.ones(5)).shape == (2,) and fp.version == 1


def test_projection_recovers_top_eigenspace_of_numpy_covariance() -> None:
    X = low_rank()
    fp = Fingerprinter(dims=3, refresh_every=500)
    for x in X:
        fp.learn_one(x)
        fp.transform_one(x)
    # The periodic projection (last refreshed before the end) is already close...
    assert fp.components is not None
    assert max_angle_deg(fp.components, top_axes_numpy(X, 3)) < 2.0
    # ...and a refresh on all the data matches numpy on all the data.
    fp.refresh()
    assert max_angle_deg(fp.components, top_axes_numpy(X, 3)) < 1e-4
    assert fp.explained is not None and fp.explained.sum() > 0.95


def test_transform_is_standardised_projection() -> None:
    X = low_rank(n=500, d=8)
    fp = Fingerprinter(dims=3)
    for x in X:
        fp.learn_one(x)
    fp.refresh()
    T = slog1p(X)
    S = (T - T.mean(0)) / T.std(0, ddof=1)
    Z = np.array([fp.transform_one(x) for x in X])
    assert fp.components is not None
    assert np.allclose(Z, S @ fp.components)
    assert np.allclose(Z.mean(0), 0.0, atol=1e-9)


def test_signs_are_fixed_and_refresh_schedule() -> None:
    X = low_rank(n=1200, d=10)
    fp = Fingerprinter(dims=3, refresh_every=200)
    versions = []
    for x in X:
        fp.learn_one(x)
        fp.transform_one(x)
        versions.append(fp.version)
        if fp.components is None:
            continue
        rows = np.argmax(np.abs(fp.components), axis=0)
        assert (fp.components[rows, np.arange(3)] > 0).all()
    # First use at 2 vectors, doubling (4, 8, ..., 128), then every 200 learns.
    refreshed_at = [i + 1 for i in range(1, len(versions)) if versions[i] > versions[i - 1]]
    assert refreshed_at[:8] == [2, 4, 8, 16, 32, 64, 128, 256]
    assert all(b - a == 200 for a, b in zip(refreshed_at[7:], refreshed_at[8:], strict=False))
    assert versions[0] == 0 and versions[-1] == len(refreshed_at)


def test_deterministic_and_pickle_round_trip() -> None:
    X = low_rank(n=300, d=6)
    a, b = Fingerprinter(dims=2, refresh_every=50), Fingerprinter(dims=2, refresh_every=50)
    for x in X[:200]:
        a.learn_one(x)
        b.learn_one(x)
        assert np.array_equal(a.transform_one(x), b.transform_one(x))
    c = pickle.loads(pickle.dumps(a))
    for x in X[200:]:
        a.learn_one(x)
        c.learn_one(x)
        assert np.array_equal(a.transform_one(x), c.transform_one(x))
    assert a.version == c.version


def test_input_not_mutated_and_bad_input_rejected() -> None:
    fp = Fingerprinter(dims=2)
    x = np.array([1.0, -2.0, 3e9])
    copy = x.copy()
    fp.learn_one(x)
    fp.learn_one(x * 2)
    fp.transform_one(x)
    assert np.array_equal(x, copy)
    with pytest.raises(ValueError, match="3 features"):
        fp.learn_one(np.ones(4))
    with pytest.raises(ValueError, match="finite"):
        fp.learn_one(np.array([1.0, np.nan, 0.0]))
    with pytest.raises(ValueError, match="at least dims=4"):
        Fingerprinter(dims=4).learn_one(np.ones(3))


@pytest.mark.parametrize(
    "kwargs", [{"dims": 0}, {"dims": 2.5}, {"refresh_every": 0}, {"refresh_every": True}]
)
def test_bad_settings(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        Fingerprinter(**kwargs)  # type: ignore[arg-type]


def test_constant_feature_is_harmless() -> None:
    fp = Fingerprinter(dims=2)
    rng = np.random.default_rng(3)
    for _ in range(50):
        fp.learn_one(np.array([5.0, *rng.normal(size=3)]))
    assert np.isfinite(fp.transform_one(np.array([5.0, 0.0, 0.0, 0.0]))).all()


def test_cost_per_item_is_small() -> None:
    X = np.random.default_rng(4).lognormal(0.0, 5.0, size=(2000, 50))
    fp = Fingerprinter(dims=4)
    t0 = time.perf_counter()
    for x in X:
        fp.learn_one(x)
        fp.transform_one(x)
    per_item = (time.perf_counter() - t0) / len(X)
    assert per_item < 1e-3  # ~30 us here; generous for slow CI machines


def test_core_modules_import_no_adapters() -> None:
    code = (
        "import sys\n"
        "import fpstream.fingerprint, fpstream.clustering, fpstream.anomaly\n"
        "import fpstream.anomaly, fpstream.catalog, fpstream.policy\n"
        "bad = {'bytewax', 'confluent_kafka', 'redis', 'prometheus_client'} & set(sys.modules)\n"
        "print(sorted(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
