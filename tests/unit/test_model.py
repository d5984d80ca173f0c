from __future__ import annotations

import base64
import dataclasses
import math

import orjson

from fpstream.catalog import Catalog
from fpstream.events import Allocation, DeadLetter, DeployRequest, MetricSample
from fpstream.features import window_features
from fpstream.model import ModelConfig, ModelStage
from fpstream.policy import Policy
from fpstream.profile import AppProfile, ProfileSnapshot

T0 = 1_750_000_200.0  # a multiple of the 300 s decision period
WINDOW = 60.0


def snapshots(app: str, instance: str, cpu: float, windows: int,
              start: float = T0) -> list[ProfileSnapshot]:
    profile = AppProfile(decision_period_s=300.0)
    out = []
    for k in range(windows):
        end = start + WINDOW * (k + 1)
        sample = MetricSample(end, app, instance, {"cpu_cores": cpu * (1 + 0.1 * (k % 3)),
                                                   "mem_bytes": 2e9},
                              labels={"kind": app.split("-")[0]},
                              capacity={"cpu_cores": 4.0, "mem_bytes": 8e9})
        out.append(profile.update(window_features(app, instance, end - WINDOW, end, [sample])))
    return out


def stage(**config: object) -> ModelStage:
    return ModelStage(ModelConfig(**config), Catalog.load(), Policy())  # type: ignore[arg-type]


def in_time_order(*series: list[ProfileSnapshot]) -> list[ProfileSnapshot]:
    return sorted((s for one in series for s in one), key=lambda s: (s.ts, s.app, s.instance))


def test_an_exception_in_one_window_is_contained_and_the_stage_goes_on() -> None:
    st = stage()
    good = snapshots("api-1", "i-1", 1.0, 30)
    bad = snapshots("api-2", "i-1", 1.0, 30)
    # A peak no decoder lets through: the policy refuses an infinite need.
    poisoned = {12: dataclasses.replace(bad[12], peak={**bad[12].peak, "cpu_cores": math.inf})}
    out = []
    for snap in in_time_order(good, bad):
        if snap.app == "api-2" and snap.ts == bad[12].ts:
            snap = poisoned[12]
        out.extend(st.on_profile(snap))
    out.extend(st.flush())
    letters = [o for o in out if isinstance(o, DeadLetter)]
    assert [d.reason for d in letters] == ["model_error"]
    assert "api-2" in base64.b64decode(letters[0].raw_b64).decode()
    assert "step model" in letters[0].error
    assert st.stats.errors == 1
    allocations = [o for o in out if isinstance(o, Allocation)]
    late = [a for a in allocations if a.ts > bad[12].ts]
    # both apps keep being decided for after the poisoned window, the poisoned one afresh
    assert {a.app for a in late} == {"api-1", "api-2"}


def deploy(app: str, instance: str, ts: float) -> DeployRequest:
    return DeployRequest(ts, app, instance, labels={"kind": app.split("-")[0]},
                         requested={"cpu_cores": 4.0, "mem_bytes": 8e9})


Item = ProfileSnapshot | DeployRequest | tuple[str, float]


def run(items: list[Item]) -> list[Allocation]:
    """Feed a stage reading two input partitions, metrics ``m:0`` and deploys ``d:0``;
    ``(source, ts)`` says a partition has been read up to ``ts``."""
    st = ModelStage(ModelConfig(), Catalog.load(), Policy(), sources=("m:0", "d:0"))
    out = []
    for item in items:
        if isinstance(item, DeployRequest):
            out.extend(st.on_deploy(item))
        elif isinstance(item, tuple):
            out.extend(st.on_progress(*item))
        else:
            out.extend(st.on_profile(item))
    out.extend(st.flush())
    return [o for o in out if isinstance(o, Allocation)]


def read(windows: list[ProfileSnapshot]) -> list[Item]:
    """Windows as read from the metrics partition, its progress after each."""
    return [x for w in windows for x in (w, ("m:0", w.ts))]


def test_a_deploy_request_is_answered_in_event_time_order_whenever_it_arrives() -> None:
    fleet = in_time_order(*(snapshots(f"batch-{k}", "i-0", 1.6, 120) for k in range(3)))
    req = deploy("batch-9", "i-new", T0 + 3000.0)
    # read long before the windows around it, its partition then idle at its time
    early = run([req, ("d:0", req.ts), *read(fleet), ("d:0", math.inf)])
    before = read([s for s in fleet if s.ts <= req.ts])
    after = read([s for s in fleet if s.ts > req.ts])
    # read along with the windows of its time
    late = run([("d:0", T0), *before, req, ("d:0", math.inf), *after])
    proactive = [a for a in early if a.kind == "proactive"]
    assert proactive and proactive == [a for a in late if a.kind == "proactive"]
    assert early == late
    # and it was answered from what the fleet had shown by then, not from the request alone
    assert proactive[0].predicted["cpu_cores"] < 3.0


def test_a_deploy_is_answered_from_the_state_at_its_period_start() -> None:
    fleet = in_time_order(*(snapshots(f"batch-{k}", "i-0", 1.6, 120) for k in range(3)))
    req = deploy("batch-9", "i-new", T0 + 3000.0 + 10.0)  # 10 s into a period

    def answer(windows_before: float) -> list[Allocation]:
        st = stage()
        out = [o for s in fleet if s.ts <= windows_before for o in st.on_profile(s)]
        assert max(o.ts for o in out if isinstance(o, Allocation)) <= T0 + 3000.0
        return [a for a in st.on_deploy(req) if isinstance(a, Allocation)]

    # one window into the request's period, or four: the same answer, from the period start
    first, fourth = answer(T0 + 3060.0), answer(T0 + 3240.0)
    assert [a.kind for a in first] == ["proactive"] and first == fourth


def test_the_least_recently_active_app_is_evicted_beyond_the_budget() -> None:
    st = stage(max_apps=2)
    a, b, c = (snapshots(f"api-{k}", "i-0", 1.0, 12) for k in range(3))
    for snap in in_time_order(a, b):
        st.on_profile(snap)
    for snap in c:
        st.on_profile(dataclasses.replace(snap, ts=snap.ts + 3600.0))
    st.flush()
    assert len(st.apps) == 2 and "api-2" in st.apps
    assert st.stats.evicted_apps == 1
    assert orjson.dumps(st.summary())  # still reports
