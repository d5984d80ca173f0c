"""The fleet simulator: same seed same bytes, a valid contract, shapes a model can tell apart."""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import pytest

from fpstream.events import REASONS, DeployRequest, MetricSample, decode_message
from fpstream.simulator import (
    ARCHETYPES,
    INJECTABLE_REASONS,
    START_TS,
    SimMessage,
    archetype_of,
    bad_message,
    simulate,
    summarize,
)

BRIEF_REASONS = {
    "malformed_json", "not_object", "missing_field", "bad_type", "bad_id", "non_finite",
    "negative", "out_of_range", "too_large", "too_many_metrics", "too_many_labels",
    "unsupported_version",
}  # fmt: skip


def _decode(m: SimMessage) -> list[MetricSample | DeployRequest]:
    res = decode_message(m.value, "metric" if m.topic == "metrics" else "deploy")
    assert res.errors == [], (m.key, res.errors)
    return res.events


@pytest.fixture(scope="module")
def day() -> list[SimMessage]:
    """A full day of a small fleet, so daily shapes show."""
    return list(simulate(apps=12, minutes=24 * 60, seed=7))


@pytest.fixture(scope="module")
def day_samples(day: list[SimMessage]) -> list[MetricSample]:
    return [e for m in day if m.topic == "metrics" for e in _decode(m)]  # type: ignore[misc]


def _by_hour(samples: list[MetricSample], arch: str, metric: str) -> dict[int, float]:
    """Mean of one metric per UTC hour of day over an archetype's instances."""
    acc: dict[int, list[float]] = defaultdict(list)
    for s in samples:
        if archetype_of(s.app) == arch and metric in s.metrics:
            acc[int(s.ts % 86_400 // 3600)].append(s.metrics[metric])
    return {h: float(np.mean(v)) for h, v in acc.items()}


def test_same_seed_gives_identical_bytes() -> None:
    a = list(simulate(apps=20, minutes=30, seed=11, bad_share=0.1))
    b = list(simulate(apps=20, minutes=30, seed=11, bad_share=0.1))
    assert a == b
    assert len(a) > 100


def test_different_seed_gives_different_messages() -> None:
    a = [m.value for m in simulate(apps=20, minutes=10, seed=1)]
    b = [m.value for m in simulate(apps=20, minutes=10, seed=2)]
    assert a != b


def test_good_messages_decode_and_counts_match() -> None:
    msgs = list(simulate(apps=30, minutes=30, seed=3))
    total = 0
    for m in msgs:
        events = _decode(m)
        assert m.bad_reason is None
        assert {e.app.encode() for e in events} == {m.key}
        if m.topic == "metrics":
            assert m.count == len(events) >= 1
            assert all(isinstance(e, MetricSample) for e in events)
            assert len({e.instance for e in events}) == len(events)  # one sample per instance
        else:
            assert m.count == 0 and len(events) == 1 and isinstance(events[0], DeployRequest)
        total += m.count
    summary = summarize(msgs)
    assert (summary.messages, summary.samples, summary.bad) == (len(msgs), total, {})
    assert summary.deploys == sum(m.topic == "deploys" for m in msgs) >= 2


def test_unbatched_mode_holds_the_same_samples_one_per_message() -> None:
    batched = [e for m in simulate(apps=15, minutes=20, seed=4) for e in _decode(m)]
    single = list(simulate(apps=15, minutes=20, seed=4, batch=False))
    assert all(m.count == 1 for m in single if m.topic == "metrics")
    assert [e for m in single for e in _decode(m)] == batched


def test_injectable_reasons_are_every_reason_asked_for() -> None:
    assert set(INJECTABLE_REASONS) == BRIEF_REASONS
    assert set(INJECTABLE_REASONS) <= set(REASONS)


@pytest.mark.parametrize("reason", INJECTABLE_REASONS)
def test_bad_message_decodes_to_exactly_its_reason(reason: str) -> None:
    sample = _template()
    res = decode_message(bad_message(reason, sample), "metric")
    assert res.events == []
    assert [e.reason for e in res.errors] == [reason]
    assert sample == _template()  # the template is not mutated


def _template() -> dict[str, object]:
    return {"ts": START_TS + 60, "app": "web-000", "instance": "web-000-0", "interval_s": 60.0,
            "metrics": {"cpu_cores": 0.5, "mem_bytes": 1e9}, "labels": {"image": "nginx-web:1.25"},
            "capacity": {"cpu_cores": 2.0, "mem_bytes": 4.0 * 2**30}, "v": 1}  # fmt: skip


def test_bad_message_rejects_a_reason_it_cannot_make() -> None:
    with pytest.raises(ValueError, match="late"):
        bad_message("late", _template())


def test_every_reason_is_injected_and_decodes_to_it() -> None:
    msgs = list(simulate(apps=20, minutes=30, seed=5, bad_share=0.2))
    bad = [m for m in msgs if m.bad_reason is not None]
    assert {m.bad_reason for m in bad} == set(INJECTABLE_REASONS)
    for m in bad:
        res = decode_message(m.value, "metric")
        assert res.events == [] and [e.reason for e in res.errors] == [m.bad_reason]
        assert m.topic == "metrics" and m.count == 0
    counts = summarize(msgs).bad
    assert max(counts.values()) - min(counts.values()) <= 1  # cycled evenly


@pytest.mark.parametrize("share", [0.02, 0.1, 0.5])
def test_share_of_bad_messages_is_close_to_bad_share(share: float) -> None:
    metrics = [m for m in simulate(apps=50, minutes=60, seed=6, bad_share=share)
               if m.topic == "metrics"]  # fmt: skip
    n = len(metrics)
    observed = sum(m.bad_reason is not None for m in metrics) / n
    assert abs(observed - share) <= 4 * math.sqrt(share * (1 - share) / n) + 1 / n


def test_all_or_no_bad_messages_at_the_extremes() -> None:
    msgs = simulate(apps=5, minutes=5, seed=1, bad_share=1.0)
    metrics = [m for m in msgs if m.topic == "metrics"]
    assert metrics and all(m.bad_reason for m in metrics)


def test_messages_are_in_event_time_order_at_the_tick_grid(day: list[SimMessage]) -> None:
    ts = [m.ts for m in day]
    assert ts == sorted(ts)
    assert ts[0] > START_TS and ts[-1] == START_TS + 24 * 3600
    assert all((t - START_TS) % 60 == 0 for t in ts)
    for m in day[:500]:
        assert all(e.ts == m.ts for e in _decode(m))


def test_values_are_finite_non_negative_and_within_capacity(
    day_samples: list[MetricSample],
) -> None:
    assert len(day_samples) > 10_000
    for s in day_samples:
        assert all(math.isfinite(v) and v >= 0 for v in s.metrics.values()), s
        assert s.metrics["cpu_cores"] <= s.capacity["cpu_cores"]
        assert s.metrics["mem_bytes"] <= s.capacity["mem_bytes"]
        assert set(s.labels) == {"image", "team", "tier"}


def test_apps_are_round_robin_and_look_alike_within_an_archetype(
    day_samples: list[MetricSample],
) -> None:
    apps = {s.app for s in day_samples}
    assert {archetype_of(a) for a in apps} == set(ARCHETYPES)
    tiers: dict[str, set[str]] = defaultdict(set)
    for s in day_samples:
        tiers[archetype_of(s.app)].add(s.labels["tier"])
    assert all(len(t) == 1 for t in tiers.values())
    assert len(set().union(*tiers.values())) == len(ARCHETYPES)
    first_six = {m.key.decode() for m in simulate(apps=6, minutes=1, seed=0, deploy_share=0)}
    assert sorted(map(archetype_of, first_six)) == sorted(ARCHETYPES)
    with pytest.raises(ValueError):
        archetype_of("billing-api")


def test_batch_is_busy_at_night_and_idle_by_day(day_samples: list[MetricSample]) -> None:
    cpu = _by_hour(day_samples, "batch", "cpu_cores")
    disk = _by_hour(day_samples, "batch", "disk_read_bps")
    assert cpu[2] > 20 * cpu[12]
    assert disk[2] > 100 * disk[12]


def test_web_requests_follow_the_day(day_samples: list[MetricSample]) -> None:
    req = _by_hour(day_samples, "web", "app.req_rate")
    cpu = _by_hour(day_samples, "web", "cpu_cores")
    assert req[15] > 3 * req[3] and cpu[15] > 2 * cpu[3]


def test_db_memory_grows_and_reports_query_time(day_samples: list[MetricSample]) -> None:
    mem = _by_hour(day_samples, "db", "mem_bytes")
    assert mem[23] > 1.05 * mem[0]
    assert all(s.metrics["app.db_query_ms"] > 0 for s in day_samples if s.app.startswith("db-"))


def test_cache_is_memory_and_network_heavy_with_flat_memory(
    day_samples: list[MetricSample],
) -> None:
    cache = [s for s in day_samples if archetype_of(s.app) == "cache"]
    web = [s for s in day_samples if archetype_of(s.app) == "web"]
    for inst in {s.instance for s in cache}:
        mem = np.array([s.metrics["mem_bytes"] for s in cache if s.instance == inst])
        assert mem.std() / mem.mean() < 0.02
    net_per_core = np.mean([s.metrics["net_tx_bps"] / s.metrics["cpu_cores"] for s in cache])
    web_net_per_core = np.mean([s.metrics["net_tx_bps"] / s.metrics["cpu_cores"] for s in web])
    assert net_per_core > 10 * web_net_per_core
    assert np.mean([s.metrics["mem_bytes"] for s in cache]) > 2 * np.mean(
        [s.metrics["mem_bytes"] for s in web]
    )


def test_queue_is_bursty_and_cpu_follows_the_backlog(day_samples: list[MetricSample]) -> None:
    queue = [s for s in day_samples if archetype_of(s.app) == "queue"]
    backlog = np.array([s.metrics["app.queue_len"] for s in queue])
    cpu = np.array([s.metrics["cpu_cores"] for s in queue])
    assert backlog.max() > 10 * max(np.median(backlog), 1.0)
    assert cpu[backlog > 0].mean() > 1.5 * cpu[backlog == 0].mean()


def test_idle_vms_are_nearly_idle(day_samples: list[MetricSample]) -> None:
    idle = [s for s in day_samples if archetype_of(s.app) == "idle"]
    assert idle and max(s.metrics["cpu_cores"] / s.capacity["cpu_cores"] for s in idle) < 0.1


def test_deploys_precede_their_instances_first_sample() -> None:
    msgs = list(simulate(apps=40, minutes=60, seed=8, deploy_share=0.1))
    initial_apps = {f"{ARCHETYPES[n % 6]}-{n:03d}" for n in range(40)}
    first_sample: dict[str, float] = {}
    for m in msgs:
        if m.topic == "metrics":
            for e in _decode(m):
                first_sample.setdefault(e.instance, e.ts)
    deploys = [e for m in msgs if m.topic == "deploys" for e in _decode(m)]
    assert len(deploys) >= 4
    new_apps = {d.app for d in deploys} - initial_apps
    assert len(new_apps) == 1 and archetype_of(new_apps.pop()) in ARCHETYPES
    for d in deploys:
        assert isinstance(d, DeployRequest)
        assert 60 <= first_sample[d.instance] - d.ts <= 360  # a few minutes later
        assert d.requested["cpu_cores"] > 0 and d.requested["mem_bytes"] > 0
        assert d.instance.startswith(f"{d.app}-")


def test_event_time_only_a_shift_by_whole_days_shifts_timestamps_only() -> None:
    a = [e for m in simulate(apps=12, minutes=30, seed=9) for e in _decode(m)]
    later = simulate(apps=12, minutes=30, seed=9, start_ts=START_TS + 7 * 86_400)
    b = [e for m in later for e in _decode(m)]
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert y.ts - x.ts == 7 * 86_400
        assert getattr(x, "metrics", None) == getattr(y, "metrics", None)


def test_short_runs_have_no_brand_new_app() -> None:
    apps = {m.key for m in simulate(apps=6, minutes=10, seed=1)}
    assert all(int(a.decode().rsplit("-", 1)[1]) < 6 for a in apps)


@pytest.mark.parametrize(
    "kwargs", [{"apps": -1}, {"minutes": -1}, {"interval_s": 0}, {"bad_share": 1.5}]
)
def test_bad_settings_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="expected|need"):
        next(simulate(**kwargs))  # type: ignore[arg-type]
