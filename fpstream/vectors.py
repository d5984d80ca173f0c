"""The model stage's inputs, built from a profile snapshot.

``profile_vector`` is what the fingerprint sees: the smoothed window features and the shape of
the app's history (periodicity, trend). ``predictor_features`` is what a need model sees for one
resource: scale-free numbers (ratios to the instance's recent peak, fingerprint coordinates,
cluster, time of day), plus the baseline the model's target is relative to.
"""

from __future__ import annotations

import math

import numpy as np

from fpstream.features import FEATURE_INDEX
from fpstream.predict import BASELINE, noise_floor
from fpstream.profile import ProfileSnapshot

DAY = 86_400.0
WEEK = 7 * DAY

#: Appended to the smoothed window features in ``profile_vector``.
SHAPE_FEATURES: tuple[str, ...] = ("period_strength", "period_days", "trend")


def smoothed_vector(snap: ProfileSnapshot) -> np.ndarray:
    return np.asarray(snap.smoothed, dtype=np.float64)


def profile_vector(snap: ProfileSnapshot) -> np.ndarray:
    """The fingerprint's input: smoothed features, then periodicity and trend."""
    shape = np.array([snap.period_strength, snap.period_s / DAY, snap.trend], dtype=np.float64)
    return np.nan_to_num(np.concatenate([smoothed_vector(snap), shape]), posinf=0.0, neginf=0.0)


def _log_ratio(value: float, base: float, floor: float) -> float:
    return math.log((max(value, 0.0) + floor) / (base + floor))


def predictor_features(snap: ProfileSnapshot, resource: str, fingerprint: np.ndarray,
                       cluster: int | None, at: float, baseline: float | None = None
                       ) -> dict[str, float]:
    """Features of ``resource``'s need in the period starting at event time ``at``.

    ``baseline`` is the level the model predicts a ratio to (default: the last period's
    peak); a steadier one, such as the peak over the last hour, gives steadier allocations.
    """
    floor = noise_floor(resource)
    last = float(snap.recent_peak.get(resource, 0.0))
    base = last if baseline is None else float(baseline)
    smoothed = smoothed_vector(snap)

    def stat(name: str) -> float:
        i = FEATURE_INDEX.get(f"{resource}.{name}")
        return float(smoothed[i]) if i is not None else 0.0

    x = {
        BASELINE: base,
        "last_period": _log_ratio(last, base, floor),
        "same_phase": _log_ratio(float(snap.same_time_last_period.get(resource, base)), base,
                                 floor),
        "smooth_max": _log_ratio(stat("max"), base, floor),
        "smooth_p95": _log_ratio(stat("p95"), base, floor),
        "smooth_mean": _log_ratio(stat("mean"), base, floor),
        "burstiness": min(stat("cv"), 10.0),
        "period_strength": float(snap.period_strength),
        "trend": max(-5.0, min(5.0, float(snap.trend))),
        "tod_sin": math.sin(2 * math.pi * (at % DAY) / DAY),
        "tod_cos": math.cos(2 * math.pi * (at % DAY) / DAY),
        "dow_sin": math.sin(2 * math.pi * (at % WEEK) / WEEK),
        "dow_cos": math.cos(2 * math.pi * (at % WEEK) / WEEK),
    }
    for i, value in enumerate(np.asarray(fingerprint, dtype=np.float64).tolist()):
        x[f"fp{i}"] = max(-10.0, min(10.0, value))
    if cluster is not None:
        x[f"cluster={cluster}"] = 1.0
    capacity = snap.capacity.get(resource)
    if capacity:
        x["of_capacity"] = min(base / capacity, 10.0)
    return x
