"""The per-instance rule statistics: which rules win at which price of a violated window."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fpstream.selector import RuleSelector, _lower_hull


def run(selector: RuleSelector, periods: list[list[float]], price: float) -> list[float]:
    """Feed whole periods of window usages; the allocation chosen at ``price`` after each."""
    out = []
    for windows in periods:
        selector.observe_many(windows)
        selector.close(max(windows))
        out.append(selector.choose(price))
    return out


def test_steady_usage_gets_a_thin_margin_after_warmup() -> None:
    s = RuleSelector(warmup=24)
    got = run(s, [[1.0] * 12 for _ in range(48)], price=1.0)
    assert got[0] == pytest.approx(2.0)  # warming up: twice the history's peak
    assert got[-1] == pytest.approx(1.0)  # then the cheapest rule that never failed
    assert s.warm and not RuleSelector(warmup=24).warm


def test_a_higher_price_holds_a_daily_spike() -> None:
    # An hour at 10 once a day, 1 otherwise: a high price keeps the daily peak reserved.
    day = [[10.0] * 12 if h == 3 else [1.0] * 12 for h in range(24)]
    s = RuleSelector(warmup=24)
    run(s, day * 6, price=1.0)
    careful, cheap = s.choose(1000.0), s.choose(1e-6)
    assert careful >= 10.0  # the daily peak, held all day
    assert cheap < 2.0  # violations nearly free: follow the last hour


def test_the_frontier_holds_every_rule_that_wins_at_some_price() -> None:
    rng = np.random.default_rng(7)
    s = RuleSelector(warmup=0)
    for _ in range(60):
        windows = rng.gamma(2.0, 1.0, size=12)
        s.observe_many(windows)
        s.close(float(windows.max()))
    f = s.frontier()
    assert 1 < len(f.value) < len(s.grid) // 4
    assert (np.diff(f.violations) < 0).all() and (np.diff(f.slack) > 0).all()
    values = s.grid.values(s._peaks)
    for price in (0.0, 0.01, 0.1, 1.0, 10.0, 1e6):
        cost = s._slack.astype(np.float64) + price * s._viol.astype(np.float64)
        assert cost[np.flatnonzero(values == f.choose(price))].min() == pytest.approx(cost.min())
    assert f.windows == pytest.approx(sum(12 * 0.99**k for k in range(1, 60)))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 8), st.integers(0, 8)), min_size=1, max_size=40))
def test_the_lower_hull_finds_the_minimum_at_every_price(points) -> None:
    x = np.array([p[0] for p in points], dtype=np.float64)
    y = np.array([p[1] for p in points], dtype=np.float64)
    hull = _lower_hull(x, y)
    for price in (0.0, 0.05, 0.5, 1.0, 3.0, 100.0, 1e9):
        assert (y[hull] + price * x[hull]).min() == pytest.approx((y + price * x).min())
    assert len(hull) == 1 or ((np.diff(x[hull]) < 0).all() and (np.diff(y[hull]) > 0).all())


def test_a_repeated_peak_is_not_a_violation_of_a_rule_built_on_it() -> None:
    # 0.11 has no exact float32: a peak stored rounded down would make every later window of
    # exactly that usage exceed the "last peak" rule, at a price that outweighs any slack.
    s = RuleSelector(warmup=2)
    got = run(s, [[0.11] * 12 for _ in range(10)], price=1e6)
    assert got[-1] >= 0.11 and got[-1] == pytest.approx(0.11, rel=1e-6)
    assert s.frontier().violations.min() == 0.0


def test_state_is_small_and_the_grid_is_not_in_it() -> None:
    s = RuleSelector()
    run(s, [[float(i % 5)] for i in range(1000)], price=1.0)
    assert len(pickle.dumps(s)) < 3.5 * 1024  # 2 x 270 float32 sums and 336 float32 peaks
    assert pickle.loads(pickle.dumps(s)).grid is s.grid  # shared, not copied


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="decay"):
        RuleSelector(decay=0.0)
    with pytest.raises(ValueError, match="offsets"):
        RuleSelector(offsets=())
    with pytest.raises(ValueError, match="warmup"):
        RuleSelector(warmup=-1)
