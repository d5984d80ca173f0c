"""The instance stage: one app's windows, profile and instances, and what their own history says.

The flow keys this stage by app, so any worker can run any app and N workers share the fleet.
Nothing fleet-wide goes in: what an instance reports depends only on its app's own samples,
so the stage's output does not depend on which worker runs it.

For each closed window of an instance the app's profile learns it; the instance gathers the
window's peak into its decision period. When a period closes, the instance:

- compares the period's peak with what it expected (the median of its recent period peaks)
  and reports anomalies against its own residual spread (``fpstream.anomaly``);
- lets its CPU and memory rule selectors (``fpstream.selector``) score every reservation rule
  on the period's windows, and takes disk and network needs from its recent peaks;
- sends a ``Digest`` of the period to the fleet stage: its windows' peaks, its app's profile
  vector, and, once it has more than ``warmup`` periods of history, the frontier of rules
  that win at some price of a violated window. The fleet stage, which controls those prices
  so that violation budgets hold, decides every instance's next period from it.

The configuration (``InstanceConfig``) is shared by every app of a worker; an ``AppState`` is
what one app holds and what a snapshot saves.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fpstream.anomaly import ResidualDetector
from fpstream.digest import Digest
from fpstream.events import RESOURCES, Anomaly, DeadLetter, MetricSample
from fpstream.features import WindowFeatures
from fpstream.ingest import SampleBatch, item_letter
from fpstream.profile import AppProfile, ProfileSnapshot, profile_vector
from fpstream.selector import OFFSETS, RuleSelector
from fpstream.settings import Settings
from fpstream.windows import AppWindows, WindowsOut

__all__ = ["SELECTED", "AppState", "InstanceConfig", "InstanceStage", "InstanceState"]

#: Resources the rule selectors reserve, under a violation budget.
SELECTED: tuple[str, ...] = ("cpu_cores", "mem_bytes")
_R = {r: i for i, r in enumerate(RESOURCES)}

Output = Anomaly | Digest | DeadLetter

#: Told of every exception contained (what failed, the exception); returns the error text.
OnError = Callable[[str, BaseException], str]


def _error_text(what: str, ex: BaseException) -> str:
    return f"step instance: {type(ex).__name__}: {ex}"


@dataclass(frozen=True)
class InstanceConfig:
    """What every app of a worker shares."""

    window_s: float = 60.0
    allowed_lateness_s: float = 30.0
    decision_period_s: float = 300.0
    anomaly_threshold: float = 4.0
    ttl_s: float = 86_400.0
    #: Periods of its own history before an instance's rules are weighed by a price.
    warmup: int = 24
    #: Periods of peaks an instance remembers for its disk and network needs and forecasts.
    history: int = 12

    @classmethod
    def from_settings(cls, s: Settings) -> InstanceConfig:
        return cls(window_s=s.window_s, allowed_lateness_s=s.allowed_lateness_s,
                   decision_period_s=s.decision_period_s,
                   anomaly_threshold=s.anomaly_threshold, ttl_s=s.app_ttl_s)


class InstanceState:
    """One instance: its open decision period, its rule selectors, recent peaks and its
    forecasts' error."""

    __slots__ = ("ends", "err", "history", "last_ts", "peaks", "period_end", "periods",
                 "selectors")

    def __init__(self, config: InstanceConfig, ts: float) -> None:
        self.period_end: float | None = None
        self.ends: list[float] = []
        self.peaks: list[list[float]] = []
        self.selectors = {r: RuleSelector(warmup=config.warmup, offsets=OFFSETS.get(r, (0.0,)))
                          for r in SELECTED}
        #: The last ``history`` period peaks, oldest first.
        self.history = np.zeros((0, len(RESOURCES)), dtype=np.float32)
        self.periods = 0
        self.last_ts = ts
        self.err = [0.0, 0]  # summed relative error of the CPU and memory forecasts, count


@dataclass
class AppState:
    """What one app holds: windows, profile, instances, residuals."""

    windows: AppWindows
    profile: AppProfile
    instances: dict[str, InstanceState] = field(default_factory=dict)
    detector: ResidualDetector = field(default_factory=ResidualDetector)


class InstanceStage:
    """Decides for one app's instances (module docstring)."""

    def __init__(self, config: InstanceConfig, state: AppState | None = None,
                 on_error: OnError = _error_text) -> None:
        self.config = config
        self.on_error = on_error
        self.state = state if state is not None else AppState(
            AppWindows(config.window_s, config.allowed_lateness_s),
            AppProfile(),
            detector=ResidualDetector(threshold=config.anomaly_threshold))

    # -- entry points ---------------------------------------------------------------------

    def on_samples(self, samples: SampleBatch | Iterable[MetricSample]
                   ) -> tuple[list[Output], WindowsOut]:
        """Window a batch of the app's samples; learn from the windows it closed. Returns the
        outputs and the windowing result (its ``late`` and ``dropped`` samples are the
        caller's to dead-letter)."""
        out = self.state.windows.add_many(samples)
        return self.on_windows(out.closed), out

    def on_windows(self, closed: Iterable[WindowFeatures]) -> list[Output]:
        """Learn and decide from closed windows. An exception while one window is learned
        from or decided on is contained: that window comes back as a ``model_error`` dead
        letter, the instance starts afresh, and the others go on."""
        outputs: list[Output] = []
        for wf in closed:
            try:
                outputs.extend(self._window(self.state.profile.update(wf)))
            except Exception as ex:  # noqa: BLE001 - no window may stop the stage
                self.drop(wf.instance)
                error = self.on_error(f"window of {wf.app}/{wf.instance} at {wf.end}", ex)
                doc = {"app": wf.app, "instance": wf.instance, "start": wf.start,
                       "end": wf.end, "n": wf.n, "item": "window"}
                outputs.append(item_letter(wf.end, "model_error",
                                           f"{error} (the instance starts afresh)", doc))
        return outputs

    def flush(self) -> list[Output]:
        """Close every open window (end of stream, an evicted or idle app)."""
        return self.on_windows(self.state.windows.flush())

    # -- one window -------------------------------------------------------------------------

    def _window(self, snap: ProfileSnapshot) -> list[Output]:
        st, period = self.state, self.config.decision_period_s
        inst = st.instances.get(snap.instance)
        if inst is None:
            inst = st.instances[snap.instance] = InstanceState(self.config, snap.ts)
            self._expire(snap.ts)
        inst.last_ts = snap.ts
        out: list[Output] = []
        if inst.period_end is None:
            inst.period_end = math.ceil(snap.ts / period) * period
        elif snap.ts > inst.period_end:
            # A gap in the instance's windows: close the period it left open, if it has any
            # window (a period without one tells nothing to decide from).
            if inst.ends:
                out.extend(self._close(snap, inst))
            inst.period_end = math.ceil(snap.ts / period) * period
        inst.ends.append(snap.ts)
        inst.peaks.append([snap.peak.get(r, 0.0) for r in RESOURCES])
        if snap.ts >= inst.period_end:
            out.extend(self._close(snap, inst))
            inst.period_end += period
        return out

    def _expire(self, now: float) -> None:
        horizon = now - self.config.ttl_s
        for name in [n for n, i in self.state.instances.items() if i.last_ts < horizon]:
            self.drop(name)

    def drop(self, instance: str) -> None:
        """Forget an instance (idle beyond the TTL, or its state failed)."""
        self.state.instances.pop(instance, None)
        for r in RESOURCES:
            self.state.detector.forget((instance, r))

    # -- one period -------------------------------------------------------------------------

    def _close(self, snap: ProfileSnapshot, inst: InstanceState) -> list[Output]:
        """Learn from the period that ended and digest it. The app's latest snapshot gives
        the digest its profile vector, labels and size."""
        config = self.config
        app, instance = snap.app, snap.instance
        assert inst.period_end is not None
        end = inst.period_end
        peaks = np.array(inst.peaks, dtype=np.float64).reshape(-1, len(RESOURCES))
        ends = np.array(inst.ends, dtype=np.float64)
        inst.peaks, inst.ends = [], []
        peak = peaks.max(axis=0)
        inst.periods += 1
        out: list[Output] = []
        error = self._forecast(app, instance, inst, end, peak, out)
        inst.history = np.vstack([inst.history, peak.astype(np.float32)])[-config.history:]
        own = {r: float(inst.history[:, _R[r]].max()) for r in RESOURCES}
        for r, selector in inst.selectors.items():
            selector.observe_many(peaks[:, _R[r]])
            selector.close(float(peak[_R[r]]))
            own[r] = selector.cautious()
        warm = all(selector.warm for selector in inst.selectors.values())
        frontiers = ({r: selector.frontier() for r, selector in inst.selectors.items()}
                     if warm else {})
        out.append(Digest(app, instance, end, ends, peaks,
                          profile_vector(snap).astype(np.float32), snap.labels, snap.capacity,
                          inst.periods, own, warm, frontiers, error))
        return out

    def _forecast(self, app: str, instance: str, inst: InstanceState, end: float,
                  peak: np.ndarray, out: list[Output]) -> np.ndarray:
        """Judge the period's peak against what the instance expected (the median of its
        recent period peaks): anomalies, and the relative error per resource."""
        error = np.full(len(RESOURCES), np.nan)
        if not len(inst.history):
            return error
        ordered = np.sort(inst.history, axis=0)
        n = len(ordered)
        expected = (ordered[(n - 1) // 2] + ordered[n // 2]) / 2  # the median, per resource
        detector = self.state.detector
        for r in RESOURCES:
            i = _R[r]
            observed, guess = float(peak[i]), float(expected[i])
            if observed > 0 or guess > 0:
                error[i] = abs(guess - observed) / max(observed, guess)
            key = (instance, r)
            score, severity = detector.score_one(key, observed, guess)
            detector.learn_one(key, observed, guess)
            if severity is not None:
                out.append(Anomaly(f"{app}/{instance}/{r}/{int(end)}", end, app, instance, r,
                                   observed, guess, float(score), severity))
        for r in SELECTED:
            if not math.isnan(error[_R[r]]):
                inst.err[0] += float(error[_R[r]])
                inst.err[1] += 1
        return error

    def summary(self) -> dict[str, Any]:
        return {"instances": len(self.state.instances)}
