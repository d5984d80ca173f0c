"""What the instance stage tells the fleet stage, once per instance per decision period.

The instance stage (keyed by app, on any worker) sees every window; the fleet stage (one key)
sees only digests: what the instance used in each window of the period, what its app looks
like (the fingerprint's input), what it knows of itself, and how its own decision fared. A
digest is a few hundred bytes, and there is one per instance per period, not per window.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fpstream.events import RESOURCES

__all__ = ["Digest", "Outcome"]


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a decision of the instance's own fared over one period: the arm that made it,
    and over the period's windows the waste (``fpstream.scoring``), the windows that exceeded
    it on CPU or memory, and the windows scored."""

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
    counts the instance's own periods, this one included; ``own`` is what its own history
    says it needs next period, per resource; ``arm`` the experiment arm of its next period.
    With ``mature`` the instance stage decides the next period itself; otherwise the fleet
    stage does. ``outcome`` scores the instance's own decision in force over this period,
    if there was one; ``error`` is its forecast's relative error per resource (NaN where
    nothing was used or expected).
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
    arm: str
    mature: bool
    outcome: Outcome | None = None
    error: np.ndarray | None = None
    #: The guard rail moved the instance to the conservative arm at this period's end.
    guard_moved: bool = False
    #: The instance is pinned to the conservative arm (guard rail).
    pinned: bool = False

    @property
    def peak(self) -> dict[str, float]:
        """The period's peak per resource."""
        top = self.peaks.max(axis=0) if len(self.peaks) else np.zeros(len(RESOURCES))
        return dict(zip(RESOURCES, top.tolist(), strict=True))

    def window_peak(self, i: int) -> dict[str, float]:
        return dict(zip(RESOURCES, self.peaks[i].tolist(), strict=True))
