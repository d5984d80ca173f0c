"""The per-instance rule selector and the violation-price fit of the backtest."""

from __future__ import annotations

import numpy as np
import pytest

from fpstream.backtest.run import parse_target
from fpstream.backtest.traces import Series
from fpstream.backtest.tune import fit_cost, parse_range, selector_allocations, selector_score
from fpstream.selector import RuleSelector

HOUR = 3600.0


def run(selector: RuleSelector, hours: list[list[float]]) -> list[float]:
    """Feed whole periods of window usages; the allocation decided after each."""
    out = []
    for windows in hours:
        for u in windows:
            selector.observe(u)
        out.append(selector.close(max(windows)))
    return out


def test_steady_usage_gets_a_thin_margin_after_warmup() -> None:
    s = RuleSelector(violation_cost=1.0, warmup=24)
    got = run(s, [[1.0] * 12 for _ in range(48)])
    assert got[0] == pytest.approx(2.0)  # warming up: twice the history's peak
    assert got[-1] == pytest.approx(1.0)  # then the cheapest rule that never failed
    assert s.rule == (1, 1.0, 0.0)


def test_daily_spike_is_held_by_a_day_long_lookback() -> None:
    # An hour at 10 once a day, 1 otherwise: a high price keeps the daily peak reserved.
    day = [[10.0] * 12 if h == 3 else [1.0] * 12 for h in range(24)]
    careful = RuleSelector(violation_cost=1000.0, warmup=24)
    run(careful, day * 6)
    assert careful.rule[0] >= 24
    cheap = RuleSelector(violation_cost=1e-6, warmup=24)
    run(cheap, day * 6)
    assert cheap.rule[0] < 24  # violations are nearly free: follow the last hour


def test_observe_many_equals_observe_one_by_one() -> None:
    rng = np.random.default_rng(7)
    a, b = RuleSelector(2.0, warmup=2), RuleSelector(2.0, warmup=2)
    for _ in range(40):
        windows = rng.gamma(2.0, 1.0, size=12)
        for u in windows:
            a.observe(float(u))
        b.observe_many(windows)
        assert a.close(float(windows.max())) == pytest.approx(b.close(float(windows.max())))
    assert a.rule == b.rule


def test_a_repeated_peak_is_not_a_violation_of_a_rule_built_on_it() -> None:
    # 0.11 has no exact float32: a peak stored rounded down would make every later window of
    # exactly that usage exceed the "last peak" rule, at a price that outweighs any slack.
    s = RuleSelector(violation_cost=1e6, warmup=2)
    got = run(s, [[0.11] * 12 for _ in range(10)])
    assert s.rule == (1, 1.0, 0.0)
    assert got[-1] >= 0.11 and got[-1] == pytest.approx(0.11, rel=1e-6)


def test_state_is_small_and_the_grid_is_not_in_it() -> None:
    import pickle

    s = RuleSelector(violation_cost=1.0)
    run(s, [[float(i % 5)] for i in range(1000)])
    assert len(pickle.dumps(s)) < 2.5 * 1024  # 216 float32 costs and 336 float32 peaks
    assert pickle.loads(pickle.dumps(s)).grid is s.grid  # shared, not copied


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="violation_cost"):
        RuleSelector(float("nan"))
    with pytest.raises(ValueError, match="decay"):
        RuleSelector(1.0, decay=0.0)
    with pytest.raises(ValueError, match="offsets"):
        RuleSelector(1.0, offsets=())


def _series(name: str, cpu: np.ndarray) -> Series:
    ts = 1_372_629_600.0 + 300.0 * np.arange(1, len(cpu) + 1)
    return Series(name, ts, cpu, cpu_cap=np.full(len(cpu), 4.0))


def test_a_higher_price_gives_fewer_violations_and_the_fit_meets_its_target() -> None:
    rng = np.random.default_rng(3)
    fleet = [_series(f"vm-{i}", rng.gamma(2.0, 0.2 * (i + 1), size=12 * 24 * 6))
             for i in range(3)]
    cheap = selector_score(fleet, "cpu", 1e-3).get()
    dear = selector_score(fleet, "cpu", 100.0).get()
    assert dear["viol"] < cheap["viol"] and dear["waste"] > cheap["waste"]
    cost, got = fit_cost(fleet, "cpu", 0.02, steps=10)
    assert got["viol"] <= 0.02
    assert selector_score(fleet, "cpu", cost).get() == got


def test_allocations_are_decided_from_earlier_periods_only() -> None:
    cpu = np.r_[np.ones(24), 5 * np.ones(24)]
    ts = 3600.0 * 10 + 300.0 * np.arange(1, 49)
    a = selector_allocations(ts, cpu, 1.0)
    assert np.isnan(a[:11]).all()  # the first period has no decision yet
    assert a[24] < 5.0  # the jump is not foreseen...
    assert a[-1] >= 5.0  # ...and is reserved once seen


def test_ranges_and_targets_parse() -> None:
    assert parse_range("1-3,7", 10) == [0, 1, 2, 6]
    assert parse_range("8-20", 10) == [7, 8, 9]
    with pytest.raises(ValueError, match="bad series range"):
        parse_range("3-1", 10)
    assert parse_target("cpu=0.02,mem=0.001") == {"cpu": 0.02, "mem": 0.001}
    with pytest.raises(ValueError, match="bad target"):
        parse_target("disk=0.1")
