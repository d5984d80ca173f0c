"""Event-time order: a buffer released below a low watermark, a period at a time."""

from __future__ import annotations

import math
import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fpstream.ordering import EARLY, LATE, EventTimeOrder

P = 300.0


def test_late_items_wait_for_their_period_to_end() -> None:
    order: EventTimeOrder[str] = EventTimeOrder(P, idle_s=30.0)
    order.heard("a", 310.0, arrived=0.0)
    order.push("a@310", 310.0, "a", "i", LATE)
    assert order.release(now=1.0) == []  # its period ends at 600
    order.heard("a", 600.0, arrived=2.0)
    assert order.release(now=2.0) == []  # "a" may still send another item at 600
    order.heard("a", 660.0, arrived=3.0)
    assert order.release(now=3.0) == ["a@310"]


def test_an_early_item_goes_at_its_period_start_before_the_late_ones() -> None:
    order: EventTimeOrder[str] = EventTimeOrder(P, idle_s=30.0)
    order.push("b@600", 600.0, "b", "i", LATE)  # period (300, 600]
    order.push("deploy@610", 610.0, "c", "i", EARLY)  # period (600, 900]: after (300, 600]
    order.push("a@600", 600.0, "a", "i", LATE)
    order.push("deploy@350", 350.0, "d", "i", EARLY)  # period (300, 600]: before its digests
    order.heard("x", 601.0, arrived=0.0)
    assert order.release(now=0.0) == ["deploy@350", "a@600", "b@600", "deploy@610"]


def test_input_partitions_hold_the_watermark_until_idle() -> None:
    order: EventTimeOrder[str] = EventTimeOrder(P, idle_s=30.0, sources=["m:0", "m:1"])
    order.push("x", 100.0, "a", "i", LATE)
    order.progress("m:0", 1000.0, arrived=0.0)
    assert order.release(now=1.0) == []  # m:1 has not been heard from
    assert order.release(now=31.0) == ["x"]  # it never was: after idle_s it stops holding
    order.push("y", 700.0, "a", "i", LATE)
    order.progress("m:1", 650.0, arrived=40.0)
    assert order.release(now=40.0) == []  # m:1 is back and only read to 650
    order.progress("m:1", 1000.0, arrived=41.0)
    assert order.release(now=41.0) == ["y"]


def test_an_idle_app_stops_holding_the_watermark() -> None:
    order: EventTimeOrder[str] = EventTimeOrder(P, idle_s=30.0)
    order.heard("slow", 100.0, arrived=0.0)
    order.heard("fast", 2000.0, arrived=0.0)
    order.push("fast@600", 600.0, "fast", "i", LATE)
    assert order.release(now=10.0) == []
    assert order.knows("slow")
    assert order.release(now=31.0) == ["fast@600"]
    assert not order.knows("slow")


def test_items_behind_what_was_released_are_counted_out_of_order() -> None:
    order: EventTimeOrder[str] = EventTimeOrder(P, idle_s=30.0)
    order.push("a", 600.0, "a", "i", LATE)
    assert order.flush() == ["a"]
    order.push("b", 590.0, "b", "i", LATE)  # the same period, after it was released
    order.push("c", 610.0, "c", "i", EARLY)  # a later period: in time
    assert order.out_of_order == 1


def test_resumed_forgets_the_other_clock() -> None:
    order: EventTimeOrder[str] = EventTimeOrder(P, idle_s=30.0, sources=["m:0"])
    order.heard("a", 100.0, arrived=1e9)  # another machine's monotonic clock
    order.progress("m:0", 100.0, arrived=1e9)
    copy = pickle.loads(pickle.dumps(order))
    copy.resumed(now=5.0)
    copy.push("x", 50.0, "b", "i", LATE)
    assert copy.release(now=6.0) == []  # both still hold, as just heard from
    assert copy.release(now=40.0) == ["x"]


@pytest.mark.parametrize(("period", "idle"), [(0.0, 1.0), (math.inf, 1.0), (1.0, -1.0)])
def test_bad_parameters(period: float, idle: float) -> None:
    with pytest.raises(ValueError):
        EventTimeOrder(period, idle)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 30), st.sampled_from([EARLY, LATE]),
                          st.sampled_from("abc")), max_size=40), st.randoms())
def test_release_order_does_not_depend_on_arrival_order(items, rnd) -> None:
    def run(seq):
        order: EventTimeOrder[tuple] = EventTimeOrder(P, idle_s=30.0)
        for k, (t, rank, app) in enumerate(seq):
            order.push((t, rank, app, k), 60.0 * t, app, "i", rank)
        return [(t, rank, app) for t, rank, app, _ in order.flush()]

    shuffled = list(items)
    rnd.shuffle(shuffled)
    assert run(items) == run(shuffled)
    got = run(items)
    key = [((math.ceil(60.0 * t / P) - 1) * P, rank, 60.0 * t, app) for t, rank, app in got]
    assert key == sorted(key)
