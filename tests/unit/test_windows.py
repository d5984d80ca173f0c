"""Event-time windows: coverage, the late rule, order, bounds and pickling.

The property tests compare ``AppWindows`` with a direct transcription of the rules (assign
``(start, end]``, a sample is late when its end is at or below the watermark at arrival, a
window closes when the watermark reaches its end), fed the same samples one by one.
"""

from __future__ import annotations

import math
import pickle
import random
from collections import defaultdict
from dataclasses import dataclass, field

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fpstream.events import DEFAULT_LIMITS, MetricSample, decode_message
from fpstream.features import WindowFeatures, window_features
from fpstream.ingest import Origin, RawMessage, SampleBatch, decode_raw
from fpstream.windows import AppWindows, WindowsOut

T0 = 1_699_999_200.0  # a multiple of 60 and of 300


def sample(ts: float, instance: str = "i1", cpu: float = 1.0, **metrics: float) -> MetricSample:
    return MetricSample(ts, "app", instance, {"cpu_cores": cpu, **metrics})


@dataclass
class Reference:
    """The windowing rules, written as plainly as possible."""

    window_s: float
    lateness_s: float
    watermark: float = -math.inf
    open: dict[tuple[str, int], list[MetricSample]] = field(default_factory=dict)
    late: list[MetricSample] = field(default_factory=list)

    def add(self, s: MetricSample) -> list[tuple[str, int, list[MetricSample]]]:
        k = math.ceil(s.ts / self.window_s) - 1
        if (k + 1) * self.window_s <= self.watermark:
            self.late.append(s)
            return []
        self.open.setdefault((s.instance, k), []).append(s)
        self.watermark = max(self.watermark, s.ts - self.lateness_s)
        return self._close(self.watermark)

    def flush(self) -> list[tuple[str, int, list[MetricSample]]]:
        return self._close(math.inf)

    def _close(self, wm: float) -> list[tuple[str, int, list[MetricSample]]]:
        done = sorted((k, inst) for inst, k in self.open if (k + 1) * self.window_s <= wm)
        return [(inst, k, self.open.pop((inst, k))) for k, inst in done]


def run_one_by_one(w: AppWindows, samples: list[MetricSample]) -> list[WindowsOut]:
    return [w.add(s) for s in samples]


streams = st.tuples(
    st.sampled_from([1.0, 7.0, 60.0, 2.5, 300.0]),  # window_s
    st.sampled_from([0.0, 5.0, 60.0, 150.0]),  # allowed lateness
    st.lists(
        st.tuples(
            st.one_of(st.integers(0, 900).map(float), st.floats(0.0, 900.0)),  # ts offset
            st.sampled_from(["a", "b", "c.1", "d"]),
            st.floats(0.0, 8.0),
        ),
        max_size=60,
    ),
)


@settings(max_examples=300, deadline=None)
@given(streams)
def test_matches_the_rules_sample_by_sample(stream: tuple) -> None:
    window_s, lateness, raw = stream
    samples = [sample(T0 + off, inst, cpu) for off, inst, cpu in raw]
    w = AppWindows(window_s, lateness)
    ref = Reference(window_s, lateness)
    late: list[MetricSample] = []
    for s in samples:
        out = w.add(s)
        expected = ref.add(s)
        assert [(f.instance, f.start, f.end, f.n) for f in out.closed] == [
            (inst, k * window_s, (k + 1) * window_s, len(ss)) for inst, k, ss in expected
        ]
        for f, (_, _, ss) in zip(out.closed, expected, strict=True):
            assert f == window_features(f.app, f.instance, f.start, f.end, ss)
        late += out.late
        assert out.dropped == []
    assert late == ref.late
    closed = w.flush()
    expected = ref.flush()
    assert [(f.instance, f.start, f.n) for f in closed] == [
        (inst, k * window_s, len(ss)) for inst, k, ss in expected
    ]


@settings(max_examples=300, deadline=None)
@given(streams, st.integers(1, 20))
def test_every_sample_lands_in_exactly_one_window_or_is_late(stream: tuple, batch: int) -> None:
    window_s, lateness, raw = stream
    samples = [sample(T0 + off, inst, cpu) for off, inst, cpu in raw]
    w = AppWindows(window_s, lateness)
    closed: list[WindowFeatures] = []
    late: list[MetricSample] = []
    for i in range(0, len(samples), batch):
        out = w.add_many(samples[i : i + batch])
        closed += out.closed
        late += out.late
    closed += w.flush()
    assert w.open_windows == 0
    # counts add up: each sample is in one window or late, never both, never lost
    assert sum(f.n for f in closed) + len(late) == len(samples)
    # every non-late sample's ts falls inside exactly one closed window of its instance
    late_ids = {id(s) for s in late}
    for s in samples:
        if id(s) in late_ids:
            continue
        hits = [f for f in closed if f.instance == s.instance and f.start < s.ts <= f.end]
        assert len(hits) == 1
    # windows of one instance never overlap, and all are aligned to window_s
    by_instance: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for f in closed:
        assert f.end - f.start == pytest.approx(window_s)
        assert f.start / window_s == pytest.approx(round(f.start / window_s))
        by_instance[f.instance].append((f.start, f.end))
    for spans in by_instance.values():
        spans.sort()
        pairs = zip(spans, spans[1:], strict=False)
        assert all(a_end <= b_start for (_, a_end), (b_start, _) in pairs)
    # batches change nothing: same windows as one sample at a time
    w1 = AppWindows(window_s, lateness)
    one = [f for out in run_one_by_one(w1, samples) for f in out.closed] + w1.flush()
    assert one == closed


@settings(max_examples=200, deadline=None)
@given(streams)
def test_open_windows_stay_bounded(stream: tuple) -> None:
    window_s, lateness, raw = stream
    w = AppWindows(window_s, lateness)
    bound = math.ceil(lateness / window_s) + 1
    for off, inst, cpu in sorted(raw):  # in order: at most ceil(L/w) + 1 per instance
        w.add(sample(T0 + off, inst, cpu))
        assert all(n <= bound for n in w.open_per_instance.values())
    w = AppWindows(window_s, lateness)
    for off, inst, cpu in raw:  # any order: the same bound holds
        w.add(sample(T0 + off, inst, cpu))
        assert all(n <= bound for n in w.open_per_instance.values())


def test_a_boundary_timestamp_ends_its_window() -> None:
    w = AppWindows(60.0, 0.0)
    out = w.add_many([sample(T0 + 1), sample(T0 + 60), sample(T0 + 60.5)])
    # T0 is a multiple of 60: (T0, T0+60] holds T0+1 and T0+60, and closes at T0+60
    assert [(f.start, f.end, f.n) for f in out.closed] == [(T0, T0 + 60, 2)]
    assert [(f.start, f.n) for f in w.flush()] == [(T0 + 60, 1)]


def test_a_window_closes_when_the_watermark_reaches_its_end_not_before() -> None:
    w = AppWindows(60.0, 30.0)
    assert w.add(sample(T0 + 10)).closed == []
    assert w.add(sample(T0 + 89.999)).closed == []  # watermark T0+59.999 < T0+60
    out = w.add(sample(T0 + 90))  # watermark T0+60 = end
    assert [(f.start, f.n) for f in out.closed] == [(T0, 1)]
    assert w.watermark == T0 + 60


def test_late_samples_are_returned_exactly_per_the_rule() -> None:
    w = AppWindows(60.0, 30.0)
    w.add(sample(T0 + 100))  # watermark T0+70: (T0, T0+60] is closed
    out = w.add_many([
        sample(T0 + 60),  # end T0+60 <= T0+70: late
        sample(T0 + 60.001),  # end T0+120 > T0+70: on time
        sample(T0 + 5, "other"),  # closed for every instance: the watermark is the app's
        sample(T0 + 200),  # moves the watermark to T0+170
        sample(T0 + 110),  # (T0+60, T0+120] closed by the sample before it: late
    ])
    assert [s.ts - T0 for s in out.late] == [60, 5, 110]
    assert [(f.start - T0, f.n) for f in out.closed] == [(60, 2)]
    assert w.late_total == 3
    assert [(f.start - T0, f.n) for f in w.flush()] == [(180, 1)]


def test_closed_windows_come_out_by_end_then_instance_whatever_the_arrival_order() -> None:
    arrivals = [sample(T0 + 10, "z"), sample(T0 + 70, "b"), sample(T0 + 20, "a"),
                sample(T0 + 15, "m"), sample(T0 + 65, "a")]
    w = AppWindows(60.0, 120.0)
    w.add_many(arrivals)
    out = w.add(sample(T0 + 300, "q"))
    assert [(f.start - T0, f.instance) for f in out.closed] == [
        (0, "a"), (0, "m"), (0, "z"), (60, "a"), (60, "b")]
    w2 = AppWindows(60.0, 120.0)
    w2.add_many(list(reversed(arrivals)))
    assert w2.add(sample(T0 + 300, "q")).closed == out.closed


def test_pickling_mid_stream_gives_identical_subsequent_output() -> None:
    import random

    rng = random.Random(5)
    samples = [sample(T0 + t + rng.uniform(-40, 0), f"i{rng.randrange(4)}",
                      rng.uniform(0, 4), net_rx_bps=rng.uniform(0, 1e6))
               for t in range(0, 2000, 7)]
    for cut in (0, 1, 57, 150, len(samples)):
        a = AppWindows(60.0, 45.0)
        first = a.add_many(samples[:cut])
        b = pickle.loads(pickle.dumps(a))
        assert b.watermark == a.watermark and b.open_windows == a.open_windows
        rest_a = [a.add(s) for s in samples[cut:]]
        rest_b = [b.add(s) for s in samples[cut:]]
        assert rest_a == rest_b
        assert a.flush() == b.flush()
        assert bool(first.closed) == (cut >= 57)


def test_flush_closes_everything_and_later_samples_for_it_are_late() -> None:
    w = AppWindows(60.0, 600.0)
    w.add_many([sample(T0 + 10, "a"), sample(T0 + 130, "b")])
    assert [(f.start - T0, f.instance) for f in w.flush()] == [(0, "a"), (120, "b")]
    assert w.flush() == []
    out = w.add_many([sample(T0 + 20, "a"), sample(T0 + 181, "a")])
    assert [s.ts - T0 for s in out.late] == [20]
    assert [f.start - T0 for f in w.flush()] == [180]


def test_advance_closes_a_quiet_apps_windows() -> None:
    w = AppWindows(60.0, 30.0)
    w.add(sample(T0 + 10))
    assert w.advance(T0 + 80) == []
    assert [f.start for f in w.advance(T0 + 90)] == [T0]
    assert w.add(sample(T0 + 50)).late  # the watermark moved for samples too


def test_windows_of_mixed_metric_sets_match_window_features() -> None:
    ss = [sample(T0 + 1, cpu=1.0), sample(T0 + 2, cpu=2.0, net_rx_bps=10.0),
          MetricSample(T0 + 3, "app", "i1", {"net_rx_bps": 30.0, "mem_bytes": 5.0}),
          sample(T0 + 4, cpu=4.0, net_rx_bps=20.0)]
    w = AppWindows(60.0, 0.0)
    w.add_many(ss)
    [wf] = w.flush()
    assert wf == window_features("app", "i1", T0, T0 + 60, ss)
    assert wf.n == 4
    assert wf.feature("net_rx_bps.mean") == 20.0  # of the three samples that have it
    assert wf.feature("cpu_cores.max") == 4.0


def test_labels_and_capacity_are_the_latest_samples() -> None:
    w = AppWindows(60.0, 0.0)
    w.add_many([
        MetricSample(T0 + 30, "app", "i", {"cpu_cores": 1.0}, labels={"v": "2"},
                     capacity={"cpu_cores": 4.0}),
        MetricSample(T0 + 20, "app", "i", {"cpu_cores": 1.0}, labels={"v": "1"}),
    ])
    [wf] = w.flush()
    assert wf.labels == {"v": "2"} and wf.capacity == {"cpu_cores": 4.0}


def test_instances_beyond_the_cap_are_dropped_not_lost() -> None:
    w = AppWindows(60.0, 0.0, max_instances=2)
    out = w.add_many([sample(T0 + 1, "a"), sample(T0 + 2, "b"), sample(T0 + 3, "c"),
                      sample(T0 + 4, "a")])
    assert [s.instance for s in out.dropped] == ["c"]
    assert w.dropped_total == 1
    # the cap counts instances with open windows: once a's and b's close, c fits
    w.add(sample(T0 + 60, "a"))
    out = w.add(sample(T0 + 61, "c"))
    assert out.dropped == []
    assert {f.instance for f in w.flush()} == {"c"}


def test_samples_beyond_the_per_window_cap_are_dropped() -> None:
    w = AppWindows(60.0, 0.0, max_window_samples=3)
    out = w.add_many([sample(T0 + t) for t in (1, 2, 3, 4, 5)])
    assert [s.ts - T0 for s in out.dropped] == [4, 5]
    assert [f.n for f in w.flush()] == [3]


def test_one_state_holds_one_app() -> None:
    w = AppWindows(60.0, 0.0)
    w.add(sample(T0))
    assert w.app == "app"
    with pytest.raises(ValueError, match="key by app"):
        w.add(MetricSample(T0, "other", "i", {"cpu_cores": 1.0}))
    # a refused batch changes nothing, even where its first samples were fine
    before = pickle.dumps(w)
    with pytest.raises(ValueError, match="key by app"):
        w.add_many([sample(T0 + 500), MetricSample(T0 + 501, "other", "i", {"cpu_cores": 1.0})])
    assert pickle.dumps(w) == before
    assert w.add_many(iter([sample(T0 + 500)])).closed == []  # any iterable will do
    assert [(f.start, f.n) for f in w.flush()] == [(T0 + 480, 1)]


def test_idle_time_is_event_time() -> None:
    w = AppWindows(60.0, 0.0)
    assert w.last_ts is None and w.idle_for(T0) == math.inf
    w.add(sample(T0 + 5))
    assert w.last_ts == T0 + 5 and w.idle_for(T0 + 65) == 60.0


@pytest.mark.parametrize(
    "kwargs",
    [{"window_s": 0}, {"window_s": -1}, {"window_s": math.inf}, {"allowed_lateness_s": -1},
     {"max_instances": 0}, {"max_window_samples": 0}],
)
def test_bad_settings_are_rejected(kwargs: dict) -> None:
    args = {"window_s": 60.0, "allowed_lateness_s": 0.0, **kwargs}
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        AppWindows(**args)


def agent_batches(rng: random.Random, ticks: int, instances: int, interval: float,
                  ragged: bool = False) -> list[SampleBatch]:
    """What the decoder gives for an agent's messages: one sample per instance per tick,
    sometimes late, sometimes a tick twice, sometimes an instance missing."""
    out = []
    for k in range(ticks):
        ts = T0 + interval * (k + 1) - (rng.choice([0, 0, 0, 45, 130]) if k > 3 else 0)
        names = [f"i{j}" for j in range(instances) if not ragged or rng.random() < 0.8]
        docs = [{"v": 1, "ts": ts, "app": "app", "instance": name, "labels": {"k": str(k)},
                 "capacity": {"cpu_cores": 4}, "metrics": {
                     "cpu_cores": rng.uniform(0, 4), "mem_bytes": rng.uniform(0, 1e9),
                     "net_rx_bps": rng.uniform(0, 1e6), "proc.x": 1.0}} for name in names]
        if not docs:
            continue
        raw = orjson.dumps(docs)
        batches = [x for x in decode_raw(RawMessage(Origin("m", 0, k, 0.0), None, raw),
                                         "metric", DEFAULT_LIMITS) if isinstance(x, SampleBatch)]
        out += batches
    return out


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from([10.0, 15.0, 60.0]),
       st.sampled_from([0.0, 30.0, 90.0]), st.booleans(), st.integers(1, 4))
def test_batches_give_what_samples_one_by_one_give(seed: int, interval: float, lateness: float,
                                                    ragged: bool, instances: int) -> None:
    batches = agent_batches(random.Random(seed), 40, instances, interval, ragged)
    a, b = AppWindows(60.0, lateness), AppWindows(60.0, lateness)
    closed_a, late_a, closed_b, late_b = [], [], [], []
    for batch in batches:
        out = a.add_many(batch)
        closed_a += out.closed
        late_a += out.late
        for s in batch.to_samples():
            one = b.add(s)
            closed_b += one.closed
            late_b += one.late
        assert a.watermark == b.watermark and a.open_windows == b.open_windows
    closed_a += a.flush()
    closed_b += b.flush()
    assert closed_a == closed_b and late_a == late_b
    assert sum(f.n for f in closed_a) + len(late_a) == sum(len(x) for x in batches)


def test_a_late_sample_of_a_batch_comes_back_as_the_decoder_gave_it() -> None:
    w = AppWindows(60.0, 0.0)
    w.add(sample(T0 + 200))
    docs = [{"v": 1, "ts": T0 + 5, "app": "app", "instance": "i1", "metrics": {"cpu_cores": 2}},
            {"v": 1, "ts": T0 + 230, "app": "app", "instance": "i2", "interval_s": 5,
             "metrics": {"cpu_cores": 1}}]
    raw = orjson.dumps(docs)
    (batch,) = decode_raw(RawMessage(Origin("m", 0, 3, 0.0), None, raw), "metric",
                          DEFAULT_LIMITS)
    assert isinstance(batch, SampleBatch)
    out = w.add_many(batch)
    assert out.late == [decode_message(raw).events[0]]


def test_bounds_hold_inside_one_batch() -> None:
    docs = [{"v": 1, "ts": T0 + 1 + t, "app": "app", "instance": f"i{t % 3}",
             "metrics": {"cpu_cores": 1.0}} for t in range(9)]
    (batch,) = decode_raw(RawMessage(Origin("m", 0, 3, 0.0), None, orjson.dumps(docs)),
                          "metric", DEFAULT_LIMITS)
    assert isinstance(batch, SampleBatch)
    w = AppWindows(60.0, 0.0, max_instances=2, max_window_samples=2)
    out = w.add_many(batch)
    assert [(s.instance, s.ts - T0) for s in out.dropped] == [
        ("i2", 3), ("i2", 6), ("i0", 7), ("i1", 8), ("i2", 9)]
    assert w.dropped_total == 5
    one = AppWindows(60.0, 0.0, max_instances=2, max_window_samples=2)
    assert [s for x in batch.to_samples() for s in one.add(x).dropped] == out.dropped
    assert [(f.instance, f.n) for f in w.flush()] == [("i0", 2), ("i1", 2)]


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from([1.0, 5.0, 10.0]), st.integers(1, 12),
       st.integers(1, 3), st.integers(1, 8))
def test_bounds_in_batches_give_what_samples_one_by_one_give(seed: int, interval: float,
                                                              cap: int, max_instances: int,
                                                              instances: int) -> None:
    rng = random.Random(seed)
    batches = agent_batches(rng, 60, instances, interval, ragged=rng.random() < 0.5)
    a = AppWindows(60.0, 30.0, max_instances=max_instances, max_window_samples=cap)
    b = AppWindows(60.0, 30.0, max_instances=max_instances, max_window_samples=cap)
    got: tuple[list, list, list] = ([], [], [])
    want: tuple[list, list, list] = ([], [], [])
    for batch in batches:
        out = a.add_many(batch)
        for kept, more in zip(got, (out.closed, out.late, out.dropped), strict=True):
            kept += more
        for s in batch.to_samples():
            one = b.add(s)
            for kept, more in zip(want, (one.closed, one.late, one.dropped), strict=True):
                kept += more
    got[0].extend(a.flush())
    want[0].extend(b.flush())
    assert got == want
    assert (a.late_total, a.dropped_total) == (b.late_total, b.dropped_total)
