"""Need prediction: one global online quantile model per resource, shared by every app.

The target is scale-free, so one model serves a 0.1-core sidecar and a 64-core database alike:
the log-ratio of the next period's peak to the app's own recent level (``x["baseline"]``, e.g.
the last period's peak), ``log((y + f) / (baseline + f))`` with ``f`` the resource's noise floor
(``NOISE_FLOOR``, which keeps idle apps from producing huge ratios). Learning how much a peak
exceeds its recent level, as a function of fingerprint, cluster and time features, transfers
across apps of any size; raw units would let the biggest apps dominate the loss.

The regressor is ``StandardScaler | LinearRegression`` with the pinball (quantile) loss and
SGD: ~20 us per item, a few kB pickled, and its zero start predicts exactly the baseline, which
is the fallback before any learning. Features should be O(1) numbers (fingerprint coordinates,
one-hot ``cluster=3`` style keys, time of day); ``log_baseline`` is added automatically.

>>> p = NeedPredictor(resources=("cpu_cores",))
>>> p.predict_one("cpu_cores", {"baseline": 2.0, "fp0": 0.3})
2.0
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from river import compose, linear_model, metrics, optim, preprocessing, stats

from fpstream.events import RESOURCES

__all__ = ["BASELINE", "NOISE_FLOOR", "NeedPredictor", "log_ratio", "noise_floor"]

BASELINE = "baseline"

#: Levels below which a resource is noise (cores, bytes, bytes per second).
NOISE_FLOOR: dict[str, float] = {
    "cpu_cores": 0.01,
    "mem_bytes": 16 * 2**20,
    "disk_read_bps": 4096.0,
    "disk_write_bps": 4096.0,
    "net_rx_bps": 4096.0,
    "net_tx_bps": 4096.0,
}

_MAX_LOG_RATIO = math.log(1000.0)  # a prediction never leaves [baseline / 1000, baseline * 1000]


def noise_floor(resource: str) -> float:
    return NOISE_FLOOR.get(resource, 1e-6)


def log_ratio(observed: float, reference: float, floor: float) -> float:
    """``log((observed + floor) / (reference + floor))``, finite for zeros."""
    return math.log((observed + floor) / (reference + floor))


class NeedPredictor:
    """Predict-then-learn quantile models of each resource's next-period need."""

    def __init__(
        self,
        resources: Sequence[str] = RESOURCES,
        quantile: float = 0.95,
        seed: int = 0,
        lr: float = 0.02,
    ) -> None:
        if not resources or len(set(resources)) != len(resources):
            raise ValueError(f"resources must be non-empty and distinct, got {resources!r}")
        if not 0.0 < quantile < 1.0:
            raise ValueError(f"quantile must be in (0, 1), got {quantile!r}")
        if not 0.0 < lr <= 1.0:
            raise ValueError(f"lr must be in (0, 1], got {lr!r}")
        self.resources = tuple(resources)
        self.quantile = quantile
        self.seed = seed  # kept for a uniform constructor: SGD from zeros is deterministic
        self.lr = lr
        self.models = {r: self._model() for r in self.resources}
        self._mae = {r: metrics.MAE() for r in self.resources}
        self._coverage = {r: stats.Mean() for r in self.resources}

    def _model(self) -> compose.Pipeline:
        return preprocessing.StandardScaler() | linear_model.LinearRegression(
            optimizer=optim.SGD(self.lr),
            loss=optim.losses.Quantile(self.quantile),
            intercept_lr=self.lr,
        )

    def _features(self, resource: str, x: Mapping[str, float]) -> tuple[dict[str, float], float]:
        if resource not in self.models:
            raise ValueError(f"unknown resource {resource!r}, expected one of {self.resources}")
        features: dict[str, float] = {}
        for key, value in x.items():
            if not math.isfinite(value):
                raise ValueError(f"feature {key!r} must be finite, got {value!r}")
            features[key] = float(value)
        base = features.pop(BASELINE, None)
        if base is None or base < 0:
            msg = f"x must hold {BASELINE!r}: the app's recent {resource} level (>= 0), got {base}"
            raise ValueError(msg)
        features["log_baseline"] = math.log1p(base / noise_floor(resource))
        return features, base

    def _predict(self, resource: str, features: dict[str, float], base: float) -> float:
        raw = self.models[resource].predict_one(features)
        r = min(max(raw, -_MAX_LOG_RATIO), _MAX_LOG_RATIO) if math.isfinite(raw) else 0.0
        floor = noise_floor(resource)
        return max(base + (base + floor) * math.expm1(r), 0.0)  # exactly base when r == 0

    def predict_one(self, resource: str, x: Mapping[str, float]) -> float:
        """The ``quantile`` of ``resource``'s next-period peak, in the resource's units."""
        return self._predict(resource, *self._features(resource, x))

    def learn_one(self, resource: str, x: Mapping[str, float], y: float) -> None:
        """Score the prediction made before learning (progressive validation), then learn."""
        if not math.isfinite(y) or y < 0:
            raise ValueError(f"y must be a finite need >= 0, got {y!r}")
        features, base = self._features(resource, x)
        floor = noise_floor(resource)
        before = self._predict(resource, features, base)
        self._mae[resource].update(math.log(y + floor), math.log(before + floor))
        self._coverage[resource].update(float(y <= before))
        self.models[resource].learn_one(features, log_ratio(y, base, floor))

    def progressive_mae(self, resource: str) -> float:
        """Mean absolute log error before learning: 0.1 means predictions ~10% off."""
        return float(self._mae[resource].get())

    def coverage(self, resource: str) -> float:
        """Share of outcomes at or below the prediction made before them (target: quantile)."""
        return float(self._coverage[resource].get())

    def n_learned(self, resource: str) -> int:
        return int(self._coverage[resource].n)


class ResidualQuantile:
    """Online upper quantile of observed / predicted: multiply a prediction by ``factor``.

    Per resource over the fleet, from ``river.stats.RollingQuantile`` over the last ``window``
    outcomes; per key (app or instance) too, once a key has ``min_count`` outcomes, by a
    stochastic-approximation tracker started from the fleet value (two floats per key, drifts
    with the app). Keys beyond ``max_keys`` evict the least recently updated.
    """

    def __init__(
        self,
        q: float = 0.95,
        window: int = 1000,
        min_count: int = 20,
        max_keys: int = 100_000,
        lr: float = 0.05,
    ) -> None:
        if not 0.0 < q < 1.0:
            raise ValueError(f"q must be in (0, 1), got {q!r}")
        for name, value in (("window", window), ("min_count", min_count), ("max_keys", max_keys)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not 0.0 < lr <= 1.0:
            raise ValueError(f"lr must be in (0, 1], got {lr!r}")
        self.q = q
        self.window = window
        self.min_count = min_count
        self.max_keys = max_keys
        self.lr = lr
        self._fleet: dict[str, stats.RollingQuantile] = {}
        self._keys: dict[tuple[str, str], list[float]] = {}  # (key, resource) -> [n, log q]

    def update(
        self, resource: str, observed: float, predicted: float, key: str | None = None
    ) -> None:
        if not (0 <= observed < math.inf and 0 <= predicted < math.inf):
            msg = f"observed and predicted must be finite and >= 0, got {observed!r}, {predicted!r}"
            raise ValueError(msg)
        r = log_ratio(observed, predicted, noise_floor(resource))
        fleet_log = self._fleet_log(resource)
        self._fleet.setdefault(resource, stats.RollingQuantile(self.q, self.window)).update(r)
        if key is None:
            return
        state = self._keys.pop((key, resource), None) or [0.0, fleet_log]
        state[0] += 1
        # Up by lr*q when exceeded, down by lr*(1-q) otherwise: settles where P(r > est) = 1-q.
        state[1] += self.lr * (self.q if r > state[1] else self.q - 1.0)
        self._keys[key, resource] = state  # re-inserted last: dict order is recency
        if len(self._keys) > self.max_keys:
            del self._keys[next(iter(self._keys))]

    def _fleet_log(self, resource: str) -> float:
        rq = self._fleet.get(resource)
        value = None if rq is None else rq.get()
        return 0.0 if value is None else float(value)

    def factor(self, resource: str, key: str | None = None) -> float:
        """``observed / predicted`` at quantile ``q``; 1.0 before any outcome."""
        state = None if key is None else self._keys.get((key, resource))
        log_q = state[1] if state and state[0] >= self.min_count else self._fleet_log(resource)
        return math.exp(min(max(log_q, -_MAX_LOG_RATIO), _MAX_LOG_RATIO))

    def forget(self, key: str) -> None:
        for resource in self._fleet:
            self._keys.pop((key, resource), None)
