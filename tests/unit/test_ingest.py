from __future__ import annotations

import base64

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fpstream.events import (
    DEFAULT_LIMITS,
    DeadLetter,
    DeployRequest,
    Limits,
    MetricSample,
    decode_columns,
    decode_message,
)
from fpstream.ingest import (
    AppSeen,
    Evict,
    Origin,
    Progress,
    ProgressTracker,
    RawMessage,
    SampleBatch,
    decode_raw,
)

TS = 1_750_000_000.0


def message(docs: list[dict], ts: float = TS, topic: str = "m") -> RawMessage:
    return RawMessage(Origin(topic, 0, 7, ts), None, orjson.dumps(docs))


def doc(app: str = "a", ts: float = TS, instance: str = "i") -> dict:
    return {"v": 1, "ts": ts, "app": app, "instance": instance, "metrics": {"cpu_cores": 1.0}}


def test_a_sample_far_ahead_of_its_message_is_a_future_dead_letter() -> None:
    out = decode_raw(message([doc(ts=TS - 60), doc(ts=4.0e9), doc(ts=TS + 300)]), "metric",
                     DEFAULT_LIMITS, max_future_s=300.0)
    letters = [x for x in out if isinstance(x, DeadLetter)]
    (batch,) = [x for x in out if isinstance(x, SampleBatch)]
    assert batch.ts.tolist() == [TS - 60, TS + 300]  # exactly the limit is fine
    (letter,) = letters
    assert letter.reason == "future" and letter.offset == 7
    assert "max_future_s=300" in letter.error and "a/i" in letter.error
    (refused,) = decode_message(base64.b64decode(letter.raw_b64)).events
    assert refused.ts == 4.0e9  # the letter holds the refused sample itself


def test_without_a_message_timestamp_the_callers_clock_is_the_reference() -> None:
    raw = message([doc(ts=TS + 1000)], ts=0.0)
    assert not [x for x in decode_raw(raw, "metric", DEFAULT_LIMITS, 300.0, now=TS)
                if isinstance(x, SampleBatch)]
    assert [x for x in decode_raw(raw, "metric", DEFAULT_LIMITS, 300.0, now=TS + 800)
            if isinstance(x, SampleBatch)]
    # no reference at all: nothing to compare with, nothing refused
    assert [x for x in decode_raw(raw, "metric", DEFAULT_LIMITS, 300.0, now=None)
            if isinstance(x, SampleBatch)]


def test_a_deploy_request_from_the_future_is_refused_too() -> None:
    req = {"v": 1, "ts": TS + 3600, "app": "a", "instance": "i", "requested": {"cpu_cores": 1}}
    out = decode_raw(message([req]), "deploy", DEFAULT_LIMITS, 300.0)
    assert [x.reason for x in out if isinstance(x, DeadLetter)] == ["future"]
    assert not [x for x in out if isinstance(x, DeployRequest)]


def batch(app: str, ts: float = TS) -> SampleBatch:
    (sample,) = decode_message(orjson.dumps(doc(app, ts))).events
    return SampleBatch.from_samples([sample], Origin("m", 0, 0, ts))  # type: ignore[list-item]


def test_the_tracker_evicts_the_least_recently_read_app_beyond_its_budget() -> None:
    tracker = ProgressTracker(lateness_s=0.0, max_apps=3)
    origin = Origin("m", 0, 0, TS)
    markers = [m for app in ("a", "b", "c") for m in tracker.observe(origin, [batch(app)])]
    assert [m.app for m in markers if isinstance(m, AppSeen)] == ["a", "b", "c"]
    assert not [m for m in markers if isinstance(m, Evict)]
    tracker.observe(origin, [batch("a")])  # a is read again: b is now the oldest
    out = tracker.observe(origin, [batch("d")])
    assert [m for m in out if isinstance(m, Evict)] == [Evict("b")]
    assert list(tracker.apps) == ["c", "a", "d"]
    # an evicted app that comes back is announced again, and pushes out the next oldest
    out = tracker.observe(origin, [batch("b")])
    assert [type(m).__name__ for m in out if not isinstance(m, Progress)] == ["AppSeen", "Evict"]
    assert [m.app for m in out if isinstance(m, Evict)] == ["c"]


def test_a_message_never_evicts_its_own_apps() -> None:
    tracker = ProgressTracker(lateness_s=0.0, max_apps=2)
    origin = Origin("m", 0, 0, TS)
    tracker.observe(origin, [batch("a"), batch("b")])
    out = tracker.observe(origin, [batch("c"), batch("a")])
    assert [m.app for m in out if isinstance(m, Evict)] == ["b"]


def test_progress_is_sent_per_partition_as_it_moves_on() -> None:
    tracker = ProgressTracker(lateness_s=30.0, step_s=30.0)
    origin = Origin("m", 1, 0, TS)
    assert tracker.advance(origin, TS) == [Progress("m:1", TS - 30.0)]
    assert tracker.advance(origin, TS + 10) == []  # less than a step further
    assert tracker.advance(origin, TS - 100) == []  # never backwards
    assert tracker.advance(origin, TS + 31) == [Progress("m:1", TS + 1.0)]


def test_the_budget_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_apps"):
        ProgressTracker(lateness_s=0.0, max_apps=0)


# The fast path (``decode_columns``) and the object-by-object path must agree on everything.

LIMITS = DEFAULT_LIMITS


def full(**over: object) -> dict:
    sample = {"v": 1, "ts": TS, "app": "api", "instance": "vm-1", "interval_s": 10,
              "labels": {"team": "t", "tier": "web"},
              "capacity": {"cpu_cores": 2, "mem_bytes": 8e9},
              "metrics": {"cpu_cores": 0.5, "mem_bytes": 1e9, "net_rx_bps": 10, "app.req_rate": 3}}
    sample.update(over)
    return sample


def reference(raw: bytes, limits: Limits = LIMITS) -> tuple[list[MetricSample], list[str]]:
    """What decode_raw must give: decode_message's samples, in order, and its reasons."""
    res = decode_message(raw, "metric", limits)
    return [e for e in res.events if isinstance(e, MetricSample)], [e.reason for e in res.errors]


def decoded(raw: bytes, limits: Limits = LIMITS) -> tuple[list[MetricSample], list[str]]:
    out = decode_raw(RawMessage(Origin("m", 0, 7, 0.0), None, raw), "metric", limits)
    samples = [s for x in out if isinstance(x, SampleBatch) for s in x.to_samples()]
    return samples, [x.reason for x in out if isinstance(x, DeadLetter)]


def assert_agree(raw: bytes, limits: Limits = LIMITS) -> None:
    got, want = decoded(raw, limits), reference(raw, limits)
    assert sorted(got[0], key=lambda s: (s.app, s.ts)) == sorted(want[0],
                                                                 key=lambda s: (s.app, s.ts))
    assert got[1] == want[1]


def test_a_regular_batch_takes_the_fast_path_and_keeps_its_values() -> None:
    docs = [full(instance=f"vm-{i}", ts=TS + i) for i in range(3)]
    raw = orjson.dumps(docs)
    columns = decode_columns(orjson.loads(raw), LIMITS)
    assert columns is not None and columns.names == tuple(docs[0]["metrics"])
    (batch,) = [x for x in decode_raw(RawMessage(Origin("m", 0, 7, TS), None, raw), "metric",
                                      LIMITS) if isinstance(x, SampleBatch)]
    assert len(batch) == 3 and batch.instance == ("vm-0", "vm-1", "vm-2")
    assert batch.values.dtype == np.float64 and batch.values.shape == (3, 4)
    assert batch.values[:, 2].tolist() == [10.0] * 3  # ints become floats
    assert (batch.ts_min, batch.ts_max) == (TS, TS + 2)
    assert batch.to_samples() == decode_message(raw, "metric").events
    assert_agree(raw)


@pytest.mark.parametrize("change", [
    {"metrics": {"cpu_cores": True, "mem_bytes": 1.0}},
    {"metrics": {"cpu_cores": "1", "mem_bytes": 1.0}},
    {"metrics": {"cpu_cores": None}},
    {"metrics": {"cpu_cores": -0.5}},
    {"metrics": {"cpu_cores": -0.0}},
    {"metrics": {"cpu_cores": 1e5}},
    {"metrics": {"cpu_cores": 1.0000001e5}},
    {"metrics": {"mem_bytes": 2.0**60}},
    {"metrics": {"mem_bytes": 2.0**61}},
    {"metrics": {"net_rx_bps": 1e15}},
    {"metrics": {"net_rx_bps": 1.1e15}},
    {"metrics": {"net_rx_bps": 18446744073709551615}},
    {"metrics": {"cpu_cores": 2001}},
    {"metrics": {"cpu_cores": 1999, "mem_bytes": 1.0}},
    {"metrics": {"bad name": 1.0}},
    {"metrics": {}},
    {"metrics": [1]},
    {"metrics": {f"m{i}": 1 for i in range(65)}},
    {"capacity": {"cpu_cores": -1}},
    {"capacity": {"cpu_cores": "2"}},
    {"capacity": {"cpu_cores": 0, "mem_bytes": 0}},
    {"capacity": {"x y": 1}},
    {"capacity": []},
    {"capacity": None},
    {"labels": None},
    {"labels": {"k": 1}},
    {"labels": {"k": "v" * 257}},
    {"labels": {"k" * 129: "v"}},
    {"labels": {f"k{i}": "v" for i in range(33)}},
    {"labels": ["a"]},
    {"ts": int(TS)},
    {"ts": True},
    {"ts": 4.2e9},
    {"ts": "now"},
    {"v": 2},
    {"v": True},
    {"v": 1.0},
    {"interval_s": 0},
    {"interval_s": 86_400},
    {"interval_s": None},
    {"app": "a b"},
    {"app": 7},
    {"instance": "x" * 129},
    {"instance": "a..b"},
    {"instance": "a/b"},
    {"app": "other"},
])
@pytest.mark.parametrize("where", [0, 2])
def test_every_unusual_object_gets_the_verdict_of_the_object_path(change: dict,
                                                                   where: int) -> None:
    docs = [full(instance=f"vm-{i}") for i in range(3)]
    for key, value in change.items():
        if key == "metrics" and isinstance(value, dict) and len(value) < 3 and value:
            docs[where]["metrics"] = {**docs[where]["metrics"], **value}
        else:
            docs[where][key] = value
    assert_agree(orjson.dumps(docs))
    assert_agree(orjson.dumps(docs[where]))


def test_objects_with_other_metric_names_or_order_are_decoded_too() -> None:
    docs = [full(instance="a"), full(instance="b", metrics={"mem_bytes": 1.0, "cpu_cores": 2.0}),
            full(instance="c", metrics={"cpu_cores": 1.0})]
    assert_agree(orjson.dumps(docs))
    (batch,) = [x for x in decode_raw(RawMessage(Origin("m", 0, 7, TS), None,
                                                 orjson.dumps(docs)), "metric", LIMITS)
                if isinstance(x, SampleBatch)]
    assert not batch.dense and np.isnan(batch.values).any()


def test_a_message_of_several_apps_gives_a_batch_per_app() -> None:
    docs = [full(app="a", instance="1"), full(app="b", instance="1"), full(app="a", instance="2")]
    raw = orjson.dumps(docs)
    out = decode_raw(RawMessage(Origin("m", 0, 7, TS), None, raw), "metric", LIMITS)
    batches = {x.app: x for x in out if isinstance(x, SampleBatch)}
    assert {a: b.instance for a, b in batches.items()} == {"a": ("1", "2"), "b": ("1",)}
    events = decode_message(raw, "metric").events
    assert batches["a"].to_samples() == [events[0], events[2]]
    assert batches["b"].to_samples() == [events[1]]


def test_limits_apply_on_the_fast_path() -> None:
    raw = orjson.dumps([full(instance="a"), full(instance="b")])
    for limits in (Limits(max_metrics=3), Limits(max_labels=1), Limits(max_id_len=3),
                   Limits(max_batch=1)):
        assert_agree(raw, limits)


json_values = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False, allow_infinity=False)
    | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=12,
)
fields = st.sampled_from(["v", "ts", "app", "instance", "metrics", "labels", "capacity",
                          "interval_s"])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.dictionaries(fields, json_values, max_size=3), min_size=1, max_size=4),
       st.booleans())
def test_fast_and_object_paths_agree_on_any_json(changes: list[dict], array: bool) -> None:
    docs = [{**full(instance=f"vm-{i}"), **change} for i, change in enumerate(changes)]
    try:
        raw = orjson.dumps(docs if array else docs[0])
    except orjson.JSONEncodeError:
        return
    assert_agree(raw)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["cpu_cores", "mem_bytes", "net_tx_bps", "app.x"]),
                          st.one_of(st.integers(0, 2**64 - 1), st.floats(0, 2e18))),
                min_size=1, max_size=4, unique_by=lambda t: t[0]), st.integers(1, 3))
def test_fast_and_object_paths_agree_on_values_near_bounds(metrics: list, rows: int) -> None:
    docs = [full(instance=f"vm-{i}", metrics=dict(metrics), capacity={"cpu_cores": 1e-3})
            for i in range(rows)]
    assert_agree(orjson.dumps(docs))


def test_rows_are_rebuilt_from_one_parse_of_the_message(monkeypatch: pytest.MonkeyPatch) -> None:
    docs = [full(instance=f"vm-{i}") for i in range(50)]
    raw = orjson.dumps(docs)
    (batch,) = [x for x in decode_raw(RawMessage(Origin("m", 0, 7, TS), None, raw), "metric",
                                      LIMITS) if isinstance(x, SampleBatch)]
    expected = decode_message(raw, "metric").events
    parses = []
    loads = orjson.loads
    monkeypatch.setattr(orjson, "loads", lambda b: parses.append(1) or loads(b))
    assert batch.to_samples() == expected
    assert batch.samples([3, 1]) == [expected[3], expected[1]]
    assert len(parses) == 2
