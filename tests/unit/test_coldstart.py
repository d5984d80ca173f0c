"""ColdStart: fallbacks for unseen label values, confidence, determinism, first-hour feedback."""

from __future__ import annotations

import pickle

import pytest

from fpstream.coldstart import ColdStart

REQ = {"cpu_cores": 4.0}


def _train(cs: ColdStart) -> None:
    kinds = {"web": ("payments", 0.4), "batch": ("data", 2.0), "cache": ("payments", 0.8)}
    for image, (team, cpu) in kinds.items():
        for k in range(4):
            for w in range(20):
                cs.learn({"image": image, "team": team}, REQ, len(image) % 3,
                         {"cpu_cores": cpu * (1 + 0.01 * (w % 5))}, app=f"{image}-{k}",
                         instance="i0", ts=60.0 * w)


def test_known_app_uses_its_own_history() -> None:
    cs = ColdStart(min_windows=5)
    _train(cs)
    g = cs.predict({"image": "batch", "team": "data"}, REQ, app="batch-1")
    assert g.source == "app" and 1.9 <= g.need["cpu_cores"] <= 2.2
    assert g.confidence > 0.3


def test_known_labels_answer_an_unseen_app() -> None:
    cs = ColdStart(min_windows=5)
    _train(cs)
    g = cs.predict({"image": "batch", "team": "data"}, REQ, app="batch-new")
    assert g.source == "combo" and 1.9 <= g.need["cpu_cores"] <= 2.2


def test_unseen_label_value_falls_back_on_the_known_one() -> None:
    cs = ColdStart(min_windows=5)
    _train(cs)
    g = cs.predict({"image": "never-seen", "team": "data"}, REQ, app="x")
    assert (g.source, g.key) == ("label", "team=data")
    assert 1.9 <= g.need["cpu_cores"] <= 2.2
    # Nothing known of any label: the size bucket (all trained apps share it), then fleet.
    g2 = cs.predict({"image": "nope", "team": "nope"}, REQ, app="y")
    assert g2.source in ("size", "fleet") and g2.confidence < g.confidence


def test_relative_need_scales_with_requested_size() -> None:
    cs = ColdStart(min_windows=5)
    _train(cs)
    small = cs.predict({"image": "batch", "team": "data"}, {"cpu_cores": 2.0})
    large = cs.predict({"image": "batch", "team": "data"}, {"cpu_cores": 8.0})
    assert large.need["cpu_cores"] > 3.5 * small.need["cpu_cores"]


def test_nothing_known() -> None:
    cs = ColdStart()
    g = cs.predict({"image": "a"}, REQ)
    assert g.source == "requested" and g.need["cpu_cores"] == 4.0 and g.confidence <= 0.1
    g = cs.predict({}, {})
    assert g.source == "none" and g.confidence == 0.05


def test_deterministic_and_picklable() -> None:
    a, b = ColdStart(min_windows=5), ColdStart(min_windows=5)
    _train(a)
    _train(b)
    labels = {"image": "cache", "team": "payments"}
    assert a.predict(labels, REQ, app="n") == b.predict(labels, REQ, app="n")
    c = pickle.loads(pickle.dumps(a))
    assert c.predict(labels, REQ, app="n") == a.predict(labels, REQ, app="n")


def test_first_hour_feedback_lowers_confidence_after_violations() -> None:
    cs = ColdStart(min_windows=5)
    _train(cs)
    labels = {"image": "batch", "team": "data"}
    before = cs.predict(labels, REQ, app="new-0")
    for k in range(3):
        cs.track(f"new-{k}", "i0", {"cpu_cores": 0.5}, source=before.source)
        for w in range(61):  # 60 one-minute windows, then one past the hour
            cs.learn(labels, REQ, 0, {"cpu_cores": 2.0}, app=f"new-{k}", instance="i0",
                     ts=60.0 * w)
    s = cs.summary()
    assert s["instances"] == 3 and s["violations"]["cpu_cores"] == 180
    assert s["waste"]["cpu_cores"] == 0.0
    after = cs.predict(labels, REQ, app="other")
    assert after.confidence < before.confidence


def test_first_hour_quality_is_exported() -> None:
    from fpstream.io.metrics import FlowMetrics

    cs = ColdStart(min_windows=5)
    cs.track("a", "i0", {"cpu_cores": 1.0})
    for w in range(13):
        cs.learn({"team": "t"}, REQ, 0, {"cpu_cores": 0.5 if w % 2 else 1.5}, app="a",
                 instance="i0", ts=300.0 * w)
    m = FlowMetrics()
    m.observe_coldstart(cs.summary())
    m.observe_coldstart(cs.summary())  # totals, not increments: no double counting
    get = m.registry.get_sample_value
    assert get("fpstream_coldstart_first_hour_instances_total") == 1
    assert get("fpstream_coldstart_first_hour_windows_total") == 12
    assert get("fpstream_coldstart_first_hour_violations_total",
               {"resource": "cpu_cores"}) == 6
    assert abs(get("fpstream_coldstart_first_hour_waste_ratio",
                   {"resource": "cpu_cores"}) - 0.25) < 1e-9


def test_a_full_group_keeps_the_newest_members_whatever_their_names() -> None:
    """More instances than a group holds start together: which are kept must not follow
    their names or the order they are read in, and later starters replace the oldest."""
    def fleet(order: list[int]) -> ColdStart:
        cs = ColdStart(window=8, min_windows=1)
        for w in range(3):
            for k in order:  # 8-core vm-30..vm-39 busy, the rest idle
                cpu = 8.0 if k >= 30 else 0.08
                cs.learn({}, {"cpu_cores": 8.0}, 0, {"cpu_cores": cpu}, app=f"vm-{k}",
                         instance="i", ts=300.0 * w)
        return cs

    names = list(range(40))
    by_name = sorted(names, key=lambda k: f"vm-{k}")
    outcomes = [fleet(o).predict({}, {"cpu_cores": 8.0}, app="new")
                for o in (names, by_name, names[::-1])]
    assert outcomes[0] == outcomes[1] == outcomes[2]
    cs = fleet(names)
    held = {k[0] for k, v in cs.instances.items() if v in cs.index["fleet:"]}
    assert len(held) == 8
    # Not simply the last eight read (vm-32..39), nor the last eight by name (vm-4..vm-9).
    assert held != {f"vm-{k}" for k in names[-8:]}
    assert held != {f"vm-{k}" for k in by_name[-8:]}
    for k in range(40, 48):  # a later start pushes out the oldest members
        cs.learn({}, {"cpu_cores": 8.0}, 0, {"cpu_cores": 4.0}, app=f"vm-{k}", instance="i",
                 ts=900.0)
    assert [m.order[0] for m in cs.index["fleet:"]] == [900.0] * 8
    assert cs.predict({}, {"cpu_cores": 8.0}, app="new").need["cpu_cores"] == \
        pytest.approx(4.0, rel=0.025)  # within half a bin (4.4 %)
