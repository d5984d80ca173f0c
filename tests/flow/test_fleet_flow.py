"""The real flow over TestingSource, under run_main and a 2-worker cluster_main."""

from __future__ import annotations

from collections import Counter

import pytest
from bytewax.testing import TestingSink, TestingSource, cluster_main, run_main

from flows.fleet import build_flow
from fpstream.events import RESOURCES
from fpstream.io.embedded import free_port
from fpstream.io.metrics import FlowMetrics
from fpstream.io.redis_sink import FLEET_KEY
from fpstream.settings import Settings
from fpstream.simulator import archetype_of

from .conftest import Outputs, kafka_messages

pytestmark = pytest.mark.flow

SIM = {"apps": 18, "minutes": 6 * 60, "seed": 7, "bad_share": 0.02}


def run_flow(settings: Settings, messages: list, workers: int = 1) -> tuple[Outputs, FlowMetrics]:
    out = Outputs()
    metrics = FlowMetrics()
    flow = build_flow(settings, source=TestingSource(messages, batch_size=50),
                      kafka_sink=TestingSink(out.kafka), redis_sink=TestingSink(out.redis_keyed),
                      metrics=metrics)
    if workers == 1:
        run_main(flow)
    else:
        cluster_main(flow, [f"127.0.0.1:{free_port()}"], 0, worker_count_per_proc=workers)
    return out, metrics


@pytest.fixture(scope="module")
def settings() -> Settings:
    return Settings(recluster_s=3600.0)


@pytest.fixture(scope="module")
def single(settings: Settings) -> tuple[Outputs, FlowMetrics, Counter]:
    messages, bad = kafka_messages(settings, **SIM)
    out, metrics = run_flow(settings, messages)
    return out, metrics, bad


def value(metrics: FlowMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def test_bad_messages_become_dead_letters_with_their_reason(single) -> None:
    out, metrics, bad = single
    assert sum(bad.values()) > 0
    got = Counter(d.reason for d in out.deadletters)
    assert got == bad
    for letter in out.deadletters:
        assert letter.topic == "fpstream.metrics" and letter.offset is not None
        assert letter.raw_b64
    for reason, n in bad.items():
        assert value(metrics, "fpstream_ingest_decode_errors_total", reason=reason) == n


def test_allocations_are_emitted_for_every_instance(single) -> None:
    out, metrics, _ = single
    allocations = out.allocations
    assert allocations, "no allocation emitted"
    ids = [a.id for a in allocations]
    assert len(ids) == len(set(ids))
    by_instance: dict[str, list[int]] = {}
    for a in allocations:
        by_instance.setdefault(f"{a.app}/{a.instance}", []).append(int(a.id.rsplit("/", 1)[1]))
        assert a.reserve["cpu_cores"] >= a.predicted["cpu_cores"]
        assert a.reserve["mem_bytes"] >= a.predicted["mem_bytes"]
        assert set(a.predicted) == set(RESOURCES)
    for a in allocations:  # the sequence is the decision's time: 0 before the first sample
        assert int(a.id.rsplit("/", 1)[1]) == (0 if a.kind == "proactive" else round(a.ts))
    for seqs in by_instance.values():
        assert len(seqs) == len(set(seqs))
    emitted = value(metrics, "fpstream_allocations_emitted_total", kind="resize") + value(
        metrics, "fpstream_allocations_emitted_total", kind="proactive")
    assert emitted == len(allocations)


def test_at_most_one_resize_per_decision_period(single, settings: Settings) -> None:
    out, _, _ = single
    periods = Counter((a.app, a.instance, a.ts // settings.decision_period_s)
                      for a in out.allocations if a.kind == "resize")
    assert max(periods.values()) == 1


def test_deploys_get_proactive_allocations(single) -> None:
    out, _, _ = single
    proactive = [a for a in out.allocations if a.kind == "proactive"]
    assert proactive
    first_seen = {}
    for a in out.allocations:
        first_seen.setdefault((a.app, a.instance), a)
    for a in proactive:
        assert first_seen[(a.app, a.instance)] == a  # the proactive one came first


def test_clusters_are_published_and_separate_archetypes(single) -> None:
    out, metrics, _ = single
    assert out.cluster_defs and out.snapshots
    members = out.snapshots[-1].apps
    assert len(members) >= SIM["apps"]
    by_cluster: dict[int, Counter] = {}
    for app, cid in members.items():
        by_cluster.setdefault(cid, Counter())[archetype_of(app)] += 1
    purity = sum(max(c.values()) for c in by_cluster.values()) / len(members)
    assert len(by_cluster) >= 3
    assert purity >= 0.6, by_cluster
    assert value(metrics, "fpstream_model_clusters") >= 3


def test_redis_outputs_are_routed_by_app_or_to_the_fleet_key(single) -> None:
    out, _, _ = single
    keys = {type(item).__name__: set() for _, item in out.redis_keyed}
    for key, item in out.redis_keyed:
        keys[type(item).__name__].add(key)
    assert keys.pop("Allocation") == {a.app for a in out.allocations}
    assert keys and all(k == {FLEET_KEY} for k in keys.values()), keys


def test_windows_and_samples_are_counted(single) -> None:
    _, metrics, _ = single
    assert value(metrics, "fpstream_ingest_samples_total") > 1000
    assert value(metrics, "fpstream_window_closed_total") > 100
    assert value(metrics, "fpstream_model_apps") >= SIM["apps"]
    for r in ("cpu_cores", "mem_bytes"):
        assert 0 < value(metrics, "fpstream_model_prediction_mae_ratio", resource=r) < 1


def test_same_allocations_on_two_workers(single, settings: Settings) -> None:
    out, _, _ = single
    messages, _ = kafka_messages(settings, **SIM)
    two, _ = run_flow(settings, messages, workers=2)

    def decided(o: Outputs) -> list:
        return sorted(o.allocations, key=lambda a: a.id)

    assert decided(two) == decided(out)  # proactive ones too: deploys are in event-time order
    assert Counter(d.reason for d in two.deadletters) == Counter(
        d.reason for d in out.deadletters)


def test_an_exception_in_a_step_is_contained_per_app(settings: Settings, monkeypatch) -> None:
    from fpstream.profile import AppProfile
    from fpstream.windows import AppWindows

    messages, _ = kafka_messages(settings, apps=8, minutes=120, seed=4, deploy_share=0.0)
    apps = sorted({m.key.decode() for m in messages if m.key})
    broken_windows, broken_profile = apps[0], apps[1]
    add_many, update = AppWindows.add_many, AppProfile.update

    def failing_add_many(self, batch):
        if batch.app == broken_windows and batch.ts_min % 600 < 60:
            raise RuntimeError("windows broke")
        return add_many(self, batch)

    def failing_update(self, wf):
        if wf.app == broken_profile and wf.end % 1800 == 0:
            raise RuntimeError("profile broke")
        return update(self, wf)

    monkeypatch.setattr(AppWindows, "add_many", failing_add_many)
    monkeypatch.setattr(AppProfile, "update", failing_update)
    out, metrics = run_flow(settings, messages)
    letters = [d for d in out.deadletters if d.reason == "model_error"]
    assert {x for d in letters for x in ("windows broke", "profile broke") if x in d.error} == {
        "windows broke", "profile broke"}
    assert all("step instance: RuntimeError" in d.error for d in letters)
    # one count per exception: a failed batch dead-letters each of its samples
    assert 0 < value(metrics, "fpstream_step_errors_total", step="instance") < len(letters)
    assert value(metrics, "fpstream_deadletters_total", reason="model_error") == len(letters)
    decided = {a.app for a in out.allocations if a.kind == "resize"}
    assert decided == set(apps)  # the broken apps too: each failure cost one item only


def test_late_samples_become_dead_letters(settings: Settings) -> None:
    from dataclasses import replace

    import orjson

    messages, _ = kafka_messages(settings, apps=6, minutes=60, seed=3, deploy_share=0.0)
    metrics_msgs = [m for m in messages if m.topic == settings.topic_metrics]
    # Replay one early message again at the end: its windows have long closed.
    early = metrics_msgs[3]
    late = replace(early, offset=10_000)
    expected = len(orjson.loads(early.value))
    out, metrics = run_flow(settings, [*messages, late])
    letters = [d for d in out.deadletters if d.reason == "late"]
    assert len(letters) == expected
    assert all(d.offset == 10_000 and "window had closed" in d.error for d in letters)
    assert value(metrics, "fpstream_window_late_samples_total") == expected
    assert value(metrics, "fpstream_deadletters_total", reason="late") == expected
