"""What the instance stage tells the fleet stage, once per instance per decision period.

The instance stage (keyed by app, on any worker) sees every window; the fleet stage (one key)
sees only digests: what the instance used in each window of the period, what its app looks
like (the fingerprint's input), and what its own history says of its next period: which
reservation rules would win at which price of a violation. A digest is a few hundred bytes,
and there is one per instance per period, not per window.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fpstream.events import RESOURCES
from fpstream.scoring import Score
from fpstream.selector import Frontier

__all__ = ["SCORED", "Digest", "Outcome"]

#: The resources a reservation is scored on, window by window: a window counts as one
#: violation when any of them exceeded its reserve.
SCORED: tuple[str, ...] = ("cpu_cores", "mem_bytes")
_R = {r: i for i, r in enumerate(RESOURCES)}


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a decision fared over one period: the arm that made it, and over the period's
    windows the waste (``fpstream.scoring``), the windows that exceeded it on CPU or memory,
    and the windows scored."""

    arm: str
    waste: float
    violations: int
    steps: int


@dataclass(frozen=True, slots=True, eq=False)
class Digest:
    """One instance's decision period ``(ts - period, ts]``.

    ``ends`` and ``peaks`` are the period's windows (their end times, and each window's peak
    per resource laid out over ``RESOURCES``); ``vector`` is the app's profile vector at the
    period's end (``fpstream.profile.profile_vector``), the fingerprint's input. ``periods``
    counts the instance's own periods, this one included. ``own`` is what its history alone
    says it needs next period, per resource: the cautious warm-up rule for CPU and memory,
    the recent peaks for disk and network. Once ``warm``, ``frontiers`` (CPU and memory) say
    which of its reservation rules win at which price of a violated window. ``error`` is its
    forecast's relative error per resource (NaN where nothing was used or expected).
    """

    app: str
    instance: str
    ts: float
    ends: np.ndarray
    peaks: np.ndarray
    vector: np.ndarray
    labels: dict[str, str]
    capacity: dict[str, float]
    periods: int
    own: dict[str, float]
    warm: bool
    frontiers: dict[str, Frontier]
    error: np.ndarray | None = None

    @property
    def peak(self) -> dict[str, float]:
        """The period's peak per resource."""
        top = self.peaks.max(axis=0) if len(self.peaks) else np.zeros(len(RESOURCES))
        return dict(zip(RESOURCES, top.tolist(), strict=True))

    def window_peak(self, i: int) -> dict[str, float]:
        return dict(zip(RESOURCES, self.peaks[i].tolist(), strict=True))

    def violations(self, resource: str, reserve: float) -> int:
        """The period's windows whose ``resource`` exceeded ``reserve``."""
        return int((self.peaks[:, _R[resource]] > reserve).sum())

    def outcome(self, reserve: dict[str, float], arm: str) -> Outcome:
        """How ``reserve`` fared over the period: ``waste`` is the mean of the CPU and memory
        wastes (a resource unused all period, such as memory a trace lacks, is left out unless
        all are), and a window counts as one violation when any of them exceeded its
        reserve."""
        peaks = self.peaks.astype(np.float64)
        wastes, over = [], np.zeros(len(peaks), dtype=bool)
        used = [r for r in SCORED if (peaks[:, _R[r]] > 0).any()] or list(SCORED)
        for r in SCORED:
            a, u = reserve.get(r, 0.0), peaks[:, _R[r]]
            over |= u > a
            if r in used:
                score = Score()
                score.add(a, u)
                wastes.append(score.waste)
        return Outcome(arm, sum(wastes) / len(wastes), int(over.sum()), len(peaks))

