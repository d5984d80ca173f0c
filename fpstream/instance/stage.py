"""The instance stage: one app's windows, profile and instances, and their own decisions.

The flow keys this stage by app, so any worker can run any app and N workers share the fleet.
Nothing fleet-wide goes in: what an instance decides here depends only on its app's own
samples, so the stage's output does not depend on which worker runs it.

For each closed window of an instance the app's profile learns it; the instance gathers the
window's peak into its decision period. When a period closes, the instance:

- scores its own decision in force over the period (``fpstream.scoring``), and the A/B arm that
  made it learns from that (``fpstream.instance.arms``);
- compares the period's peak with what it expected (the median of its recent period peaks)
  and reports anomalies against its own residual spread (``fpstream.anomaly``);
- lets its CPU and memory rule selectors (``fpstream.selector``) choose next period's need,
  and takes disk and network needs from its recent peaks;
- once it has more than ``warmup`` periods of history (``mature``), decides its next period
  itself: policy of its arm, instance type from the catalog, a ``resize`` allocation when the
  reserve no longer covers the need or changed materially;
- sends a ``Digest`` of the period to the fleet stage, which decides for instances still too
  young, learns fingerprints and clusters, and answers deploy requests.

An allocation's sequence is its decision's event time in whole seconds (the period's end), so
the two stages never share a counter and a later decision always supersedes an earlier one.
Its ``cluster`` is -1 and ``model_version`` 0 here: an instance's own decision uses no fleet
model (the app's cluster is in the fleet stage's cluster snapshots).

The configuration (``InstanceConfig``: catalog, arms, rule grids) is shared by every app of a
worker; an ``AppState`` is what one app holds and what a snapshot saves.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fpstream.anomaly import ResidualDetector
from fpstream.catalog import Catalog
from fpstream.digest import Digest, Outcome
from fpstream.events import RESOURCES, Allocation, Anomaly, DeadLetter, MetricSample
from fpstream.features import WindowFeatures
from fpstream.ingest import item_letter
from fpstream.instance.arms import AppArms, ArmAssigner, InstanceArms
from fpstream.policy import Decision, Policy, changed_materially
from fpstream.profile import AppProfile, ProfileSnapshot, profile_vector
from fpstream.scoring import Score
from fpstream.selector import OFFSETS, RuleSelector
from fpstream.settings import Settings
from fpstream.windows import AppWindows, WindowsOut

__all__ = ["AppState", "InstanceConfig", "InstanceStage", "InstanceState", "rounded"]

#: Resources the rule selectors reserve and the experiment scores (window peak against reserve).
SELECTED: tuple[str, ...] = ("cpu_cores", "mem_bytes")
_R = {r: i for i, r in enumerate(RESOURCES)}

Output = Allocation | Anomaly | Digest | DeadLetter

#: Told of every exception contained (what failed, the exception); returns the error text.
OnError = Callable[[str, BaseException], str]


def _error_text(what: str, ex: BaseException) -> str:
    return f"step instance: {type(ex).__name__}: {ex}"


def rounded(values: dict[str, float]) -> dict[str, float]:
    """Output precision: millicores and whole bytes, so the last bits of float sums (which
    depend on how numpy batched a computation) never show in an allocation."""
    return {k: round(v, 3) if k == "cpu_cores" else float(round(v)) for k, v in values.items()}


@dataclass(frozen=True)
class InstanceConfig:
    """What every app of a worker shares: settings, catalog, arms."""

    catalog: Catalog
    arms: ArmAssigner
    window_s: float = 60.0
    allowed_lateness_s: float = 30.0
    decision_period_s: float = 300.0
    change_threshold: float = 0.10
    anomaly_threshold: float = 4.0
    ttl_s: float = 86_400.0
    #: Price of a violated window per selected resource (``fpstream.selector``).
    violation_cost: tuple[tuple[str, float], ...] = (
        ("cpu_cores", 3.0), ("mem_bytes", float(2**40)))
    #: Periods of its own history before an instance decides for itself.
    warmup: int = 24
    #: Periods of peaks an instance remembers for its disk and network needs and forecasts.
    history: int = 12

    @classmethod
    def from_settings(cls, s: Settings) -> InstanceConfig:
        return cls(catalog=Catalog.load(s.catalog_path), arms=ArmAssigner.from_settings(s),
                   window_s=s.window_s, allowed_lateness_s=s.allowed_lateness_s,
                   decision_period_s=s.decision_period_s, change_threshold=s.change_threshold,
                   anomaly_threshold=s.anomaly_threshold, ttl_s=s.app_ttl_s,
                   violation_cost=(("cpu_cores", s.violation_cost_cpu),
                                   ("mem_bytes", s.violation_cost_mem)))


class InstanceState:
    """One instance: its open decision period, its rule selectors and recent peaks, the own
    decision in force (if any), its arm and its forecasts' error."""

    __slots__ = ("arm", "arms", "ends", "err", "history", "instance_type", "last_ts", "peaks",
                 "period_end", "periods", "reserve", "selectors")

    def __init__(self, config: InstanceConfig, ts: float) -> None:
        self.period_end: float | None = None
        self.ends: list[float] = []
        self.peaks: list[list[float]] = []
        self.selectors = {r: RuleSelector(cost, warmup=config.warmup,
                                          offsets=OFFSETS.get(r, (0.0,)))
                          for r, cost in config.violation_cost}
        #: The last ``history`` period peaks, oldest first.
        self.history = np.zeros((0, len(RESOURCES)), dtype=np.float32)
        self.reserve: dict[str, float] | None = None  # the own decision in force
        self.instance_type: str | None = None
        self.arm: str | None = None  # the arm of the own decision in force
        self.arms = InstanceArms()
        self.periods = 0
        self.last_ts = ts
        self.err = [0.0, 0]  # summed relative error of the CPU and memory forecasts, count


@dataclass
class AppState:
    """What one app holds: windows, profile, instances, its arms' learning, residuals."""

    windows: AppWindows
    profile: AppProfile
    instances: dict[str, InstanceState] = field(default_factory=dict)
    arms: AppArms = field(default_factory=AppArms)
    detector: ResidualDetector = field(default_factory=ResidualDetector)


class InstanceStage:
    """Decides for one app's instances (module docstring)."""

    def __init__(self, config: InstanceConfig, state: AppState | None = None,
                 on_error: OnError = _error_text) -> None:
        self.config = config
        self.on_error = on_error
        self.state = state if state is not None else AppState(
            AppWindows(config.window_s, config.allowed_lateness_s),
            AppProfile(decision_period_s=config.decision_period_s),
            detector=ResidualDetector(threshold=config.anomaly_threshold))

    # -- entry points ---------------------------------------------------------------------

    def on_samples(self, samples: Sequence[MetricSample]) -> tuple[list[Output], WindowsOut]:
        """Window a batch of the app's samples; decide for the windows it closed. Returns the
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
        """Score the period that ended, learn from it, decide the next one, digest it. The
        app's latest snapshot gives the digest its profile vector, labels and size."""
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

        outcome, moved = None, False
        if inst.reserve is not None and inst.arm is not None and len(peaks):
            outcome = score_period(inst.reserve, inst.arm, peaks)
            moved = config.arms.learn(self.state.arms, inst.arms, app, outcome)

        error = self._forecast(app, instance, inst, end, peak, out)
        inst.history = np.vstack([inst.history, peak.astype(np.float32)])[-config.history:]
        own = {r: float(inst.history[:, _R[r]].max()) for r in RESOURCES}
        for r, selector in inst.selectors.items():
            selector.observe_many(peaks[:, _R[r]])
            own[r] = selector.close(float(peak[_R[r]]))
        arm = config.arms.choose(self.state.arms, inst.arms, app, instance)
        mature = inst.selectors[SELECTED[0]].periods > config.warmup
        if mature:
            decision = arm.decide(own, config.catalog)
            if self._should_resize(inst, decision, arm):
                inst.reserve = dict(decision.reserve)
                inst.instance_type = decision.instance_type.name
                inst.arm = arm.name
                out.append(allocation(app, instance, end, "resize", decision, own, -1,
                                      self._confidence(inst), 0))
        else:  # the fleet stage decides this instance's next period
            inst.reserve = inst.instance_type = inst.arm = None
        out.append(Digest(app, instance, end, ends, peaks.astype(np.float32),
                          profile_vector(snap).astype(np.float32), snap.labels, snap.capacity,
                          inst.periods, own, arm.name, mature, outcome, error, moved,
                          inst.arms.pinned))
        return out

    def _forecast(self, app: str, instance: str, inst: InstanceState, end: float,
                  peak: np.ndarray, out: list[Output]) -> np.ndarray:
        """Judge the period's peak against what the instance expected (the median of its
        recent period peaks): anomalies, and the relative error per resource."""
        error = np.full(len(RESOURCES), np.nan)
        if not len(inst.history):
            return error
        expected = np.median(inst.history, axis=0)
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

    def _should_resize(self, inst: InstanceState, decision: Decision, arm: Policy) -> bool:
        """Resize when no own decision is in force, the arm changed, the reserve no longer
        covers the need, or the new one differs materially; at most once per period."""
        if inst.reserve is None or inst.instance_type is None or inst.arm != arm.name:
            return True
        short = any(decision.need.get(k, 0.0) > v for k, v in inst.reserve.items())
        return short or changed_materially(
            inst.reserve, decision.reserve, inst.instance_type, decision.instance_type.name,
            self.config.change_threshold)

    @staticmethod
    def _confidence(inst: InstanceState) -> float:
        """Higher when the instance's own forecasts have been accurate so far."""
        total, n = inst.err
        return 0.5 if not n else max(0.05, 1.0 - total / n)

    def summary(self) -> dict[str, Any]:
        return {"instances": len(self.state.instances)}


def score_period(reserve: dict[str, float], arm: str, peaks: np.ndarray) -> Outcome:
    """How a reserve fared over a period's windows (``peaks``: per window, per resource):
    ``waste`` is the mean of the CPU and memory wastes (a resource unused all period, such as
    memory a trace lacks, is left out unless all are), and a window counts as one violation
    when any of them exceeded its reserve."""
    scores, over = [], np.zeros(len(peaks), dtype=bool)
    used = [r for r in SELECTED if (peaks[:, _R[r]] > 0).any()] or list(SELECTED)
    for r in SELECTED:
        a, u = reserve.get(r, 0.0), peaks[:, _R[r]]
        over |= u > a
        if r in used:
            score = Score()
            score.add(a, u)
            scores.append(score.waste)
    return Outcome(arm, sum(scores) / len(scores), int(over.sum()), len(peaks))


def allocation(app: str, instance: str, ts: float, kind: str, decision: Decision,
               need: dict[str, float], cluster: int, confidence: float,
               model_version: int) -> Allocation:
    """An allocation event; its sequence is the decision's event time in whole seconds (0
    for a proactive allocation, which precedes every other decision for the instance)."""
    seq = 0 if kind == "proactive" else round(ts)
    return Allocation(
        id=f"{app}/{instance}/{seq}", ts=ts, app=app, instance=instance,
        kind=kind,  # type: ignore[arg-type]
        instance_type=decision.instance_type.name, reserve=rounded(decision.reserve),
        predicted=rounded(need), cluster=int(cluster), confidence=round(confidence, 4),
        policy=decision.policy, model_version=model_version)
