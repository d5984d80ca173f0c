"""The Bitbrains-style cold-start section: deploy requests among the trace's messages, and the
scoring of proactive allocations against the first day and first hour of each series."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pytest

from fpstream.backtest.coldstart import FIRST_HOUR_STEPS, series_coldstart
from fpstream.backtest.replay import (
    DAY,
    DEPLOY_LEAD_S,
    TraceMessages,
    deploy_request,
    load_series,
    save_series,
)
from fpstream.backtest.traces import Series

STEP = 300.0
T0 = 1_372_629_600.0  # an hour boundary


def vm(name: str, start: float, cores: float, load: float, days: float = 2.0,
       mem_gib: float | None = 4.0) -> Series:
    n = int(days * DAY / STEP)
    ts = start + STEP * np.arange(1, n + 1)
    cpu = np.full(n, load * cores)
    mem = None if mem_gib is None else np.full(n, 0.5 * mem_gib * 2**30)
    return Series(name=name, ts=ts, cpu=cpu, cpu_cap=np.full(n, cores), mem=mem,
                  mem_cap=None if mem_gib is None else np.full(n, mem_gib * 2**30))


def proactive(s: Series, cpu: float, mem: float | None = None) -> dict[str, Any]:
    reserve = {"cpu_cores": cpu, **({"mem_bytes": mem} if mem is not None else {})}
    return {"kind": "proactive", "app": s.key[0], "instance": s.key[1],
            "predicted": {"cpu_cores": cpu}, "reserve": reserve}


def test_a_deploy_request_carries_the_provisioned_size_an_hour_ahead() -> None:
    s = vm("vm-1", T0, 4.0, 0.1)
    req = deploy_request(s)
    assert req is not None
    assert req["ts"] == s.ts[0] - DEPLOY_LEAD_S
    assert req["requested"] == {"cpu_cores": 4.0, "mem_bytes": 4.0 * 2**30}
    assert (req["app"], req["instance"]) == s.key
    no_capacity = Series(name="x", ts=s.ts, cpu=s.cpu)
    assert deploy_request(no_capacity) is None


def test_deploys_precede_the_samples_of_their_slot() -> None:
    early, late = vm("a", T0, 2.0, 0.1, days=0.5), vm("b", T0 + 3 * 3600, 2.0, 0.1, days=0.5)
    deploys = [d for s in (early, late) if (d := deploy_request(s)) is not None]
    messages = TraceMessages([early, late], "metrics", STEP, deploys=deploys,
                             deploy_topic="deploys")
    items = list(messages)
    sent = [(item.topic, max(d["ts"] for d in orjson.loads(item.value))) for item in items]
    topics = [t for t, _ in sent]
    assert topics.count("deploys") == 2
    for i, (topic, ts) in enumerate(sent):
        if topic == "deploys":
            # the samples before the request are of earlier slots, those after of its slot on
            slot = np.ceil(ts / STEP)
            assert all(np.ceil(t / STEP) < slot for top, t in sent[:i] if top == "metrics")
            assert all(np.ceil(t / STEP) >= slot for top, t in sent[i + 1:] if top == "metrics")
    samples = sum(len(orjson.loads(it.value)) for it in items if it.topic == "metrics")
    assert samples == len(early) + len(late)
    # the partitions the model stage waits for: the deploys' only when there are some
    assert messages.sources == ["metrics:0", "deploys:0"]
    assert TraceMessages([early], "metrics").sources == ["metrics:0"]
    with pytest.raises(ValueError, match="deploy_topic"):
        TraceMessages([early], "metrics", deploys=deploys)


def test_the_series_can_be_loaded_where_the_messages_are_read(tmp_path: Any) -> None:
    series = [vm("a", T0, 2.0, 0.1, days=0.5), vm("b", T0, 1.0, 0.5, days=0.5)]
    save_series(series, tmp_path / "series.pickle")
    loads = []

    def load() -> list[Series]:
        loads.append(1)
        return load_series(tmp_path / "series.pickle")

    lazy = TraceMessages(load, "metrics", STEP)
    assert not loads  # nothing is loaded before the messages are read
    got = [m.value for m in lazy]
    assert loads == [1]
    assert got == [m.value for m in TraceMessages(series, "metrics", STEP)]


def test_series_coldstart_scores_buckets_first_hours_and_baselines() -> None:
    # Day 1: three 4-core VMs at 10 % (bucket 0) and one 1-core VM at 90 % (bucket 3).
    first = [vm(f"vm-{i}", T0, 4.0, 0.1) for i in range(3)] + [vm("vm-3", T0, 1.0, 0.9)]
    # Two days later: a 4-core VM at 60 % (bucket 2) and a 4-core one at 10 % (bucket 0).
    late = [vm("vm-4", T0 + 2 * DAY, 4.0, 0.6), vm("vm-5", T0 + 2 * DAY, 4.0, 0.1)]
    series = first + late
    mine = {s.key: proactive(s, 0.2 * 4.0, 2.5 * 2**30) for s in series[:3]}
    mine[series[3].key] = proactive(series[3], 0.95, 2.5 * 2**30)
    mine[late[0].key] = proactive(late[0], 2.0, 2.5 * 2**30)  # bucket 2, but reserve 2 < 2.4
    # late[1] has no proactive allocation: it runs on its provisioned size, and misses.
    doc = series_coldstart(series, mine)
    assert doc["deployments"] == doc["new_pairs"] == 6
    assert doc["with_history"] == 2
    assert doc["notes"]["without_proactive_allocation"] == 1
    fp = doc["fpstream"]
    assert fp["bucket_accuracy"] == pytest.approx(5 / 6, abs=1e-4)
    assert fp["with_history"]["bucket_accuracy"] == 0.5
    # First hour of late[0]: 12 steps at 2.4 cores against 2.0 -> all violated.
    hour = fp["with_history"]["first_hour"]["cpu"]
    assert hour["viol"] == 0.5  # late[0] violated, late[1] on 4 cores not
    slack = (4.0 - 0.4) * FIRST_HOUR_STEPS
    assert hour["waste"] == pytest.approx(slack / ((2.0 + 4.0) * FIRST_HOUR_STEPS), abs=1e-4)
    assert fp["first_hour"]["mem"]["viol"] == 0.0
    # Baselines: with history the fleet's bucket is 0 (3 of 4), the 4-core VMs' bucket 0.
    assert doc["global"]["with_history"]["bucket_accuracy"] == 0.5
    assert doc["size"]["with_history"]["bucket_accuracy"] == 0.5
    # Day 1 has no history: global and size have no answer and run on the provisioned size.
    assert doc["global"]["bucket_accuracy"] == pytest.approx(1 / 6, abs=1e-4)
    assert doc["manual"]["first_hour"]["cpu"]["viol"] == 0.0
    assert doc["manual"]["bucket_accuracy"] == pytest.approx(1 / 6, abs=1e-4)
    # The baselines reserve their bucket's upper edge of the cores: 25 % of 4 cores = 1.0.
    g = doc["global"]["with_history"]["first_hour"]["cpu"]
    assert g["viol"] == 0.5  # late[0] uses 2.4 > 1.0


def test_the_size_baseline_keeps_its_peers_idle_bucket_over_a_busy_fleet() -> None:
    # Day 1: three busy 1-core VMs and one idle 4-core VM; day 3: a new idle 4-core VM.
    first = [vm(f"busy-{i}", T0, 1.0, 0.9) for i in range(3)] + [vm("idle", T0, 4.0, 0.1)]
    new = vm("new", T0 + 2 * DAY, 4.0, 0.1)
    doc = series_coldstart([*first, new], {})
    assert doc["global"]["with_history"]["bucket_accuracy"] == 0.0  # the fleet's bucket: 3
    assert doc["size"]["with_history"]["bucket_accuracy"] == 1.0  # its peers': 0


def test_the_first_day_follows_the_decisions_after_the_proactive_one() -> None:
    series = [vm("vm-0", T0, 4.0, 0.5, days=1.0)]
    s = series[0]
    mine = {s.key: proactive(s, 1.0, 2.5 * 2**30)}  # 1 core against 2: every step violated
    # then, from the second hour, 2.5 cores (never violated)
    decided = {s.key: {"ts": np.array([T0 - DEPLOY_LEAD_S, T0 + 3600.0]),
                       "cpu": np.array([1.0, 2.5]), "mem": np.array([2.5 * 2**30] * 2)}}
    alone = series_coldstart(series, mine)["fpstream"]
    held = series_coldstart(series, mine, decided)["fpstream"]
    assert alone["first_hour"] == held["first_hour"]
    assert alone["first_day"]["cpu"]["viol"] == 1.0
    steps = len(s.ts)
    hour = int((s.ts <= T0 + 3600.0).sum())
    assert held["first_day"]["cpu"]["viol"] == pytest.approx(hour / steps, abs=1e-4)
    slack = 0.5 * (steps - hour)
    assert held["first_day"]["cpu"]["waste"] == pytest.approx(
        slack / (1.0 * hour + 2.5 * (steps - hour)), abs=1e-4)
    # a baseline holds its one answer all day: the provisioned size, never violated
    assert series_coldstart(series, mine, decided)["manual"]["first_day"]["cpu"] == {
        "waste": 0.5, "viol": 0.0}
