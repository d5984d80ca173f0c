"""Violation budgets: a price per budget, controlled from what the instances realise."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fpstream.fleet.budget import PriceController, budget_of
from fpstream.selector import RuleSelector


def test_the_price_rises_when_the_budget_is_exceeded_and_falls_when_not() -> None:
    c = PriceController("cpu_cores", budget=0.01)
    start = c.price
    c.learn(violations=10, windows=100)
    assert c.price > start
    high = c.price
    for _ in range(10):
        c.learn(violations=0, windows=100)
    assert c.price < high
    c.learn(violations=0, windows=0)  # nothing scored: nothing learned
    assert c.updates == 11


def test_a_steady_fleet_settles_at_its_budget() -> None:
    """Instances whose rules trade slack for violations: the realised rate converges to the
    budget from a price that starts far off, in either direction."""
    rng = np.random.default_rng(3)
    fleet = []
    for k in range(30):
        s = RuleSelector(warmup=0)
        for _ in range(48):
            u = rng.gamma(2.0, 0.5 * (k % 5 + 1), size=12)
            s.observe_many(u)
            s.close(float(u.max()))
        fleet.append((s, k))
    for budget in (0.01, 0.05):
        c = PriceController("cpu_cores", budget=budget)
        realised = []
        for _period in range(400):
            violated = scored = 0
            for s, k in fleet:
                reserve = s.choose(c.price)
                u = rng.gamma(2.0, 0.5 * (k % 5 + 1), size=12)
                violated += int((u > reserve).sum())
                scored += 12
                s.observe_many(u)
                s.close(float(u.max()))
            c.learn(violated, scored)
            realised.append(violated / scored)
        late = float(np.mean(realised[200:]))
        assert 0.7 * budget <= late <= 1.3 * budget, (budget, late)


def test_an_unreachable_budget_drives_the_price_to_its_bound_not_beyond() -> None:
    c = PriceController("mem_bytes", budget=0.001)
    for _ in range(10_000):
        c.learn(violations=5, windows=100)
    assert math.isfinite(c.price) and c.price == pytest.approx(2.0**60)


def test_an_app_sets_its_own_budget_by_label() -> None:
    assert budget_of("cpu_cores", {"fpstream.violation_budget_cpu": "0.05"}, 0.01) == 0.05
    assert budget_of("mem_bytes", {"fpstream.violation_budget_cpu": "0.05"}, 0.001) == 0.001
    for bad in ("1.5", "0", "lots", "nan"):
        assert budget_of("cpu_cores", {"fpstream.violation_budget_cpu": bad}, 0.01) == 0.01


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({"resource": "disk_bps", "budget": 0.01}, "resource"),
    ({"resource": "cpu_cores", "budget": 0.0}, "budget"),
    ({"resource": "cpu_cores", "budget": 0.01, "eta": 2.0}, "eta"),
])
def test_bad_arguments_are_refused(kwargs: dict, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        PriceController(**kwargs)
