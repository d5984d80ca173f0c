"""The instance stage: one app's windows, periods, digests and own decisions."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from fpstream.digest import Digest
from fpstream.events import RESOURCES, Anomaly, DeadLetter, MetricSample
from fpstream.instance.stage import InstanceConfig, InstanceStage

T0 = 1_750_000_200.0  # a multiple of the 300 s decision period
GIB = 2.0**30


def config(**over: object) -> InstanceConfig:
    base = {"window_s": 60.0, "allowed_lateness_s": 30.0, "decision_period_s": 300.0,
            "warmup": 4}
    return InstanceConfig(**{**base, **over})  # type: ignore[arg-type]


def samples(app: str, instance: str, minutes: int, cpu: float = 1.0, start: float = T0,
            spike_at: int | None = None) -> list[MetricSample]:
    out = []
    for k in range(1, minutes + 1):
        c = cpu * (1.0 + 0.05 * (k % 3)) * (20.0 if k == spike_at else 1.0)
        out.append(MetricSample(start + 60.0 * k, app, instance,
                                {"cpu_cores": c, "mem_bytes": 2.0 * GIB},
                                capacity={"cpu_cores": 64.0, "mem_bytes": 256.0 * GIB}))
    return out


def run(stage: InstanceStage, batch: list[MetricSample]) -> list:
    out = []
    for s in sorted(batch, key=lambda s: s.ts):  # one sample a message, as agents send them
        emitted, windowed = stage.on_samples([s])
        assert not windowed.late and not windowed.dropped
        out.extend(emitted)
    return out


def test_a_closed_period_is_digested_with_its_windows() -> None:
    stage = InstanceStage(config())
    out = run(stage, samples("api", "i-0", 10))
    digests = [d for d in out if isinstance(d, Digest)]
    # a window closes once a sample 30 s past its end arrives: the second period stays open
    assert [d.ts for d in digests] == [T0 + 300.0]
    d = digests[0]
    assert d.ends.tolist() == [T0 + 60.0 * k for k in range(1, 6)]
    assert d.peaks.shape == (5, len(RESOURCES))
    assert d.peak["cpu_cores"] == pytest.approx(max(s.metrics["cpu_cores"]
                                                    for s in samples("api", "i-0", 5)))
    assert d.periods == 1 and not d.warm and not d.frontiers
    assert d.own["cpu_cores"] == pytest.approx(2.0 * d.peak["cpu_cores"])  # warm-up rule
    assert d.vector.ndim == 1 and np.isfinite(d.vector).all()


def test_once_warm_an_instance_tells_which_rules_win_at_which_price() -> None:
    stage = InstanceStage(config(warmup=4))
    out = run(stage, samples("api", "i-0", 60))
    digests = [d for d in out if isinstance(d, Digest)]
    assert [d.warm for d in digests[:5]] == [False] * 4 + [True]
    warm = digests[-1]
    assert set(warm.frontiers) == {"cpu_cores", "mem_bytes"}
    cpu = warm.frontiers["cpu_cores"]
    # dear violations reserve at least as much as cheap ones
    assert cpu.choose(1e6) >= cpu.choose(1e-6) > 0
    assert cpu.choose(1e6) >= 0.8 * warm.peak["cpu_cores"]
    assert not [x for x in out if not isinstance(x, Digest | Anomaly)]  # no decisions here


def test_a_sudden_change_is_an_anomaly_against_the_instances_own_spread() -> None:
    stage = InstanceStage(config())
    out = run(stage, samples("api", "i-0", 300, spike_at=280))
    anomalies = [a for a in out if isinstance(a, Anomaly)]
    assert [(a.metric, a.severity) for a in anomalies] == [("cpu_cores", "critical")]
    a = anomalies[0]
    assert a.observed > 10 * a.predicted and a.id == f"api/i-0/cpu_cores/{int(a.ts)}"


def test_an_exception_costs_one_window_and_the_instance_starts_afresh() -> None:
    stage = InstanceStage(config())
    out = run(stage, samples("api", "i-0", 30) + samples("api", "i-1", 30))
    stage.state.instances["i-0"].selectors["cpu_cores"]._slack = None  # type: ignore[assignment]
    later = run(stage, samples("api", "i-0", 30, start=T0 + 1800.0)
                + samples("api", "i-1", 30, start=T0 + 1800.0))
    letters = [d for d in later if isinstance(d, DeadLetter)]
    assert [d.reason for d in letters] == ["model_error"]
    assert "step instance: TypeError" in letters[0].error
    # the broken instance goes on afresh, the other as before
    assert {d.instance for d in later if isinstance(d, Digest)} == {"i-0", "i-1"}
    assert stage.state.instances["i-0"].periods < stage.state.instances["i-1"].periods
    assert out


def test_a_pickled_state_continues_identically() -> None:
    stage = InstanceStage(config())
    run(stage, samples("api", "i-0", 50))
    copy = InstanceStage(stage.config, pickle.loads(pickle.dumps(stage.state)))
    more = samples("api", "i-0", 50, start=T0 + 3000.0)

    def comparable(out: list) -> list:
        return [(type(x).__name__, x.ts, getattr(x, "own", None), getattr(x, "id", None),
                 x.frontiers["cpu_cores"].choose(1.0) if getattr(x, "frontiers", None) else 0)
                for x in out]

    assert comparable(run(stage, more)) == comparable(run(copy, more))


def test_an_apps_snapshot_is_small() -> None:
    stage = InstanceStage(config())
    run(stage, samples("api", "i-0", 120))
    blob = pickle.dumps(stage.state)
    assert b"RuleGrid" in blob and len(blob) < 24 * 1024, len(blob)  # the grid by reference
