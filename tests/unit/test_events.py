from __future__ import annotations

import math

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fpstream.events import (
    REASONS,
    Allocation,
    Anomaly,
    DeadLetter,
    DeployRequest,
    Limits,
    MetricSample,
    decode_message,
    encode,
    event_from_dict,
)

TS = 1_750_000_000.0


def sample(**over: object) -> dict:
    doc: dict = {
        "v": 1, "ts": TS, "app": "billing-api", "instance": "vm-17", "interval_s": 60,
        "labels": {"image": "billing:4.2", "team": "payments"},
        "capacity": {"cpu_cores": 2, "mem_bytes": 8589934592},
        "metrics": {"cpu_cores": 0.42, "mem_bytes": 1.06e9, "app.req_rate": 120.0},
    }
    doc.update(over)
    return doc


def reason_of(doc: object, limits: Limits | None = None) -> str:
    raw = doc if isinstance(doc, bytes) else orjson.dumps(doc)
    res = decode_message(raw, limits=limits or Limits())
    assert not res.events and len(res.errors) == 1, res
    assert res.errors[0].reason in REASONS
    assert res.errors[0].detail
    return res.errors[0].reason


def test_decodes_contract_example() -> None:
    res = decode_message(orjson.dumps(sample()))
    assert res.ok
    (ev,) = res.events
    assert isinstance(ev, MetricSample)
    assert ev.app == "billing-api" and ev.instance == "vm-17"
    assert ev.metrics["cpu_cores"] == 0.42
    assert ev.capacity["mem_bytes"] == 8589934592.0
    assert ev.labels["team"] == "payments"


def test_array_keeps_good_items_and_reports_bad_by_index() -> None:
    raw = orjson.dumps([sample(), sample(app="bad app"), sample(instance="vm-2")])
    res = decode_message(raw, "metric")
    assert [e.instance for e in res.events] == ["vm-17", "vm-2"]
    assert [(e.reason, e.index) for e in res.errors] == [("bad_id", 1)]


def test_deploy_request_inferred_from_requested() -> None:
    raw = orjson.dumps({"v": 1, "ts": TS, "app": "a", "instance": "i",
                        "requested": {"cpu_cores": 2, "mem_bytes": 4e9}})
    (ev,) = decode_message(raw).events
    assert isinstance(ev, DeployRequest) and ev.requested["cpu_cores"] == 2.0


@pytest.mark.parametrize(
    ("doc", "reason"),
    [
        (b'{"v":1,', "malformed_json"),
        (b"\xff\xfe", "malformed_json"),
        (b"[1]", "not_object"),
        (b'{"v":1,"ts":1750000000,"app":"a","instance":"i","metrics":{"cpu_cores":NaN}}',
         "non_finite"),
        (b'{"v":1,"ts":1750000000,"app":"a","instance":"i","metrics":{"x":-Infinity}}',
         "non_finite"),
        (b'"text"', "not_object"),
        (b"[]", "not_object"),
        ({k: v for k, v in sample().items() if k != "ts"}, "missing_field"),
        ({k: v for k, v in sample().items() if k != "app"}, "missing_field"),
        (sample(ts="now"), "bad_type"),
        (sample(metrics={"cpu_cores": "high"}), "bad_type"),
        (sample(metrics={"cpu_cores": True}), "bad_type"),
        (sample(labels={"team": 3}), "bad_type"),
        (sample(app="billing api"), "bad_id"),
        (sample(instance="x" * 129), "bad_id"),
        (sample(app=""), "bad_id"),
        (b'{"v":1,"ts":1750000000,"app":"a","instance":"i","metrics":{"cpu_cores":1e999}}',
         "non_finite"),
        (sample(metrics={"cpu_cores": -1}), "negative"),
        (sample(ts=1_750_000_000_000), "out_of_range"),
        (sample(interval_s=0), "out_of_range"),
        (sample(metrics={f"m{i}": 1 for i in range(65)}), "too_many_metrics"),
        (sample(labels={f"l{i}": "x" for i in range(33)}), "too_many_labels"),
        (sample(v=2), "unsupported_version"),
        ({"v": 1, "ts": TS, "app": "a", "instance": "i"}, "unknown_kind"),
    ],
)
def test_each_bad_input_has_its_reason(doc: object, reason: str) -> None:
    assert reason_of(doc) == reason


@pytest.mark.parametrize(
    ("field", "name", "value"),
    [
        ("metrics", "cpu_cores", 1e308),  # the value that crash-looped the flow
        ("metrics", "cpu_cores", 1.0001e5),
        ("metrics", "mem_bytes", 2.0**60 * 1.01),
        ("metrics", "disk_read_bps", 2e15),
        ("metrics", "app.req_rate", 1e16),
        ("metrics", "proc.open_files", 1e300),
        ("capacity", "cpu_cores", 1e6),
        ("capacity", "mem_bytes", 1e20),
    ],
)
def test_values_beyond_plausible_bounds_are_out_of_range(field: str, name: str,
                                                         value: float) -> None:
    doc = sample()
    doc[field] = {**doc[field], name: value}
    assert reason_of(doc) == "out_of_range"


def test_bounds_admit_the_largest_plausible_values() -> None:
    big = {"cpu_cores": 1e5, "mem_bytes": 2.0**60, "net_rx_bps": 1e15, "app.req_rate": 1e15}
    (ev,) = decode_message(orjson.dumps(sample(metrics=big, capacity={}))).events
    assert isinstance(ev, MetricSample) and ev.metrics == big


def test_usage_far_above_its_declared_capacity_is_out_of_range() -> None:
    # 2 cores declared: 1999 cores is still accepted (traces overshoot), 2001 is not.
    ok = decode_message(orjson.dumps(sample(metrics={"cpu_cores": 1999.0})))
    assert ok.events and not ok.errors
    assert reason_of(sample(metrics={"cpu_cores": 2001.0})) == "out_of_range"
    # without a capacity for the gauge (or a zero one) only the absolute bound applies
    assert decode_message(orjson.dumps(
        sample(metrics={"cpu_cores": 2001.0}, capacity={"cpu_cores": 0}))).events


def test_too_large_is_checked_before_parsing() -> None:
    raw = orjson.dumps(sample(labels={"pad": "x" * 200}))
    assert reason_of(raw, Limits(max_message_bytes=100)) == "too_large"


def test_limits_are_settings() -> None:
    doc = sample(metrics={"a": 1, "b": 2, "c": 3})
    assert reason_of(doc, Limits(max_metrics=2)) == "too_many_metrics"
    with pytest.raises(ValueError, match="max_metrics"):
        Limits(max_metrics=0)


def test_output_events_round_trip() -> None:
    events = [
        Allocation("a/i/1", TS, "a", "i", "resize", "m.large",
                   {"cpu_cores": 2.0}, {"cpu_cores": 1.5}, 3, 0.8, "p95-h15", 7),
        Anomaly("a/i/cpu_cores/1", TS, "a", "i", "cpu_cores", 9.0, 1.0, 7.5, "critical"),
        DeadLetter(TS, "bad_id", "app invalid", "fpstream.metrics", 1, 42, "eyJ9"),
        MetricSample(TS, "a", "i", {"cpu_cores": 1.0}),
    ]
    for event in events:
        assert event_from_dict(orjson.loads(encode(event))) == event


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=2048))
def test_decoding_arbitrary_bytes_never_raises(raw: bytes) -> None:
    res = decode_message(raw)
    assert res.events or res.errors
    for err in res.errors:
        assert err.reason in REASONS and err.detail


json_values = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False) | st.integers() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(json_values, st.dictionaries(
    st.sampled_from(["v", "ts", "app", "instance", "metrics", "labels", "capacity",
                     "interval_s", "requested"]), json_values))
def test_decoding_arbitrary_json_never_raises(value: object, fields: dict) -> None:
    for doc in (value, fields, {**sample(), **fields}, [fields, sample()]):
        try:
            raw = orjson.dumps(doc)
        except (TypeError, orjson.JSONEncodeError):
            continue
        res = decode_message(raw)
        assert res.events or res.errors
        for ev in res.events:
            assert all(math.isfinite(v) and v >= 0 for v in getattr(ev, "metrics", {}).values())
        for err in res.errors:
            assert err.reason in REASONS
