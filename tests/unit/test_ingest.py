from __future__ import annotations

import base64

import orjson
import pytest

from fpstream.events import DEFAULT_LIMITS, DeadLetter, DeployRequest, decode_message
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
    assert [s.ts for s in batch.samples] == [TS - 60, TS + 300]  # exactly the limit is fine
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
    return SampleBatch(app, [sample], Origin("m", 0, 0, ts))  # type: ignore[list-item]


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
