"""Anomalies: observed versus expected, scored against each (instance, resource)'s own spread.

The residual is the log-ratio ``log((observed + f) / (predicted + f))`` (``f`` the resource's
noise floor), so a 2x miss scores alike for a sidecar and a database. Its exponentially weighted
mean and variance per key follow River's ``stats.EWMean``/``stats.EWVar`` update exactly (Finch,
2009; a test compares them) but are kept as four floats per key: the River objects pickle to
~380 bytes per key, and every app's snapshot holds its instances' keys.

The score is signed (positive: observed above prediction) and measured in spreads from the key's
usual residual, so a model that is steadily 2x low for one app is not an anomaly; that bias is
what ``under_streak`` catches, counting consecutive under-predictions to trigger a resize.

>>> d = ResidualDetector(warmup=3)
>>> for _ in range(5):
...     d.learn_one(("api", "cpu_cores"), observed=1.0, predicted=1.0)
>>> d.score_one(("api", "cpu_cores"), observed=10.0, predicted=1.0)[1]
'critical'
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Literal

__all__ = ["NOISE_FLOOR", "ResidualDetector", "Severity", "log_ratio", "noise_floor"]

#: Levels below which a resource is noise (cores, bytes, bytes per second): a residual is a
#: ratio of ``level + floor``, so idle resources do not produce huge ratios.
NOISE_FLOOR: dict[str, float] = {
    "cpu_cores": 0.01,
    "mem_bytes": 16 * 2**20,
    "disk_read_bps": 4096.0,
    "disk_write_bps": 4096.0,
    "net_rx_bps": 4096.0,
    "net_tx_bps": 4096.0,
}


def noise_floor(resource: str) -> float:
    return NOISE_FLOOR.get(resource, 1e-6)


def log_ratio(observed: float, reference: float, floor: float) -> float:
    """``log((observed + floor) / (reference + floor))``, finite for zeros."""
    return math.log((observed + floor) / (reference + floor))


Severity = Literal["warn", "critical"]
Key = tuple[str, str]  # (app or app/instance, resource)


class ResidualDetector:
    """Per-key residual spread; ``score_one`` grades, ``learn_one`` updates, LRU-bounded keys."""

    def __init__(
        self,
        threshold: float = 4.0,
        warmup: int = 10,
        fading_factor: float = 0.05,
        min_spread: float = 0.1,
        max_keys: int = 100_000,
    ) -> None:
        if not (math.isfinite(threshold) and threshold > 0):
            raise ValueError(f"threshold must be a positive number, got {threshold!r}")
        for name, value, low in (("warmup", warmup, 0), ("max_keys", max_keys, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if not 0.0 < fading_factor <= 1.0:
            raise ValueError(f"fading_factor must be in (0, 1], got {fading_factor!r}")
        if not (math.isfinite(min_spread) and min_spread > 0):
            raise ValueError(f"min_spread must be a positive number, got {min_spread!r}")
        self.threshold = threshold
        self.warmup = warmup
        self.fading_factor = fading_factor
        self.min_spread = min_spread  # log units: 0.1 = residuals steadier than ~10% still count
        self.max_keys = max_keys
        # key -> [n, ew mean, ew variance, under-prediction streak]; least recent first.
        self._state: OrderedDict[Key, list[float]] = OrderedDict()

    @staticmethod
    def residual(key: Key, observed: float, predicted: float) -> float:
        if not (0 <= observed < math.inf and 0 <= predicted < math.inf):
            msg = f"{key}: observed and predicted must be finite and >= 0, got {observed!r}, "
            raise ValueError(msg + repr(predicted))
        return log_ratio(observed, predicted, noise_floor(key[1]))

    def score_one(
        self, key: Key, observed: float, predicted: float
    ) -> tuple[float, Severity | None]:
        """(score in spreads, severity); severity is None during warm-up or below threshold."""
        r = self.residual(key, observed, predicted)
        state = self._state.get(key)
        n, mean, var = (0.0, 0.0, 0.0) if state is None else state[:3]
        score = (r - mean) / max(math.sqrt(var), self.min_spread)
        if n < self.warmup or abs(score) < self.threshold:
            return score, None
        return score, "critical" if abs(score) >= 2 * self.threshold else "warn"

    def learn_one(self, key: Key, observed: float, predicted: float) -> None:
        r = self.residual(key, observed, predicted)
        state = self._state.get(key)
        if state is None:
            state = self._state[key] = [1.0, r, 0.0, 0.0]
            if len(self._state) > self.max_keys:
                self._state.popitem(last=False)
        else:
            self._state.move_to_end(key)
            diff = r - state[1]
            incr = self.fading_factor * diff
            state[0] += 1
            state[1] += incr
            state[2] = (1.0 - self.fading_factor) * (state[2] + diff * incr)
        state[3] = state[3] + 1 if r > 0 else 0.0

    def under_streak(self, key: Key) -> int:
        """Consecutive learned periods where the observed need exceeded the prediction."""
        state = self._state.get(key)
        return 0 if state is None else int(state[3])

    def spread(self, key: Key) -> tuple[float, float] | None:
        """(mean, standard deviation) of the key's log-residuals, or None if unseen."""
        state = self._state.get(key)
        return None if state is None else (state[1], math.sqrt(state[2]))

    def forget(self, key: Key) -> None:
        self._state.pop(key, None)

    def __len__(self) -> int:
        return len(self._state)
