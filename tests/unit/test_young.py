"""Young instances' peers: pooled first-day usage by evidence key and age, relative to size and
as growth over the instance's own history, the reserve that costs least at a price, and the
choice between the peers' reserve and the instance's own cautious rule."""

from __future__ import annotations

import numpy as np
import pytest

from fpstream.fleet.budget import PriceController
from fpstream.fleet.young import (
    AGES,
    MIN_SPREAD,
    OWN_MARGINS,
    YOUNG_PRICE_CLIP,
    YOUNG_PRICE_INITIAL,
    AgePools,
    YoungChoice,
    age_bucket,
)

HOUR = 3600.0


def fill(pools: AgePools, key: str, n: int, usage: np.ndarray, size: float = 4.0,
         start_age: float = 0.0, step: float = 300.0) -> None:
    """``n`` instances of ``key``, each with the windows ``usage`` (cores) from
    ``start_age``."""
    for i in range(n):
        for w, u in enumerate(usage.tolist()):
            pools.learn((key,), (f"{key}-{i}", "x"), start_age + step * w,
                        {"cpu_cores": u, "mem_bytes": 1.0}, {"cpu_cores": size})


def brute_force(values: np.ndarray, scale: float, price: float) -> float:
    """The candidate (0 or a bin's upper edge) least costly per window, computed directly."""
    bins = np.floor(np.log2(values) * 16.0)
    candidates = np.concatenate([[0.0], 2.0 ** ((np.unique(bins) + 1) / 16.0)])
    mids = 2.0 ** ((bins + 0.5) / 16.0)  # each value as its bin's middle
    costs = [scale * np.maximum(q - mids, 0.0).mean() + price * (values > q).mean()
             if q > 0 else price for q in candidates]
    return float(candidates[int(np.argmin(costs))])


def test_before_any_own_window_the_reserve_is_the_cheapest_share_of_the_size() -> None:
    pools = AgePools()
    rng = np.random.default_rng(3)
    usage = rng.uniform(0.2, 2.0, 12)
    fill(pools, "size:c4", 5, usage)
    pooled = np.tile(usage / 4.0, 5)
    reserves = []
    for price in (0.01, 0.1, 1.0, 100.0):
        found = pools.reserve(["size:c4"], 0.0, "cpu_cores", price, 8.0)
        assert found is not None and found[1] == "size:c4"
        # scaled to the request: slack is counted in the request's cores
        assert found[0] == pytest.approx(brute_force(pooled, 8.0, price) * 8.0)
        reserves.append(found[0])
    # a dearer violation buys a larger reserve, up to the peers' largest share
    assert reserves == sorted(reserves) and reserves[0] < reserves[-1]
    assert reserves[-1] >= pooled.max() * 8.0
    fill(pools, "size:big", 3, np.full(12, 9.0))  # above its size of 4
    assert pools.reserve(["size:big"], 0.0, "cpu_cores", 100.0, 4.0) == (4.0, "size:big")


def test_with_windows_of_its_own_the_reserve_is_its_mean_plus_its_peers_growth() -> None:
    pools = AgePools(min_members=3, min_windows=12)
    # peers: an hour at 1 core, then an hour reaching 3 cores: growth (3 - 1) / spread
    for i in range(4):
        for w in range(24):
            u = 1.0 if w < 12 else (3.0 if w % 2 else 1.0)
            pools.learn(("fleet:",), (f"p{i}", "x"), 300.0 * w, {"cpu_cores": u},
                        {"cpu_cores": 4.0}, period=HOUR * (1 + w // 12))
    spread = MIN_SPREAD * 1.0  # a flat first hour: the least spread
    # a young instance flat at 2 cores for an hour: its own level, its peers' growth
    own = (2.0, 2.0)
    dear = pools.reserve(["fleet:"], 1.5 * HOUR, "cpu_cores", 100.0, 4.0, own=own)
    cheap = pools.reserve(["fleet:"], 1.5 * HOUR, "cpu_cores", 1e-6, 4.0, own=own)
    assert dear is not None and cheap is not None
    growth = (3.0 - 1.0) / spread  # how far the peers went beyond their first hour
    own_spread = MIN_SPREAD * 2.0
    assert 2.0 + growth * own_spread <= dear[0] <= 2.0 + growth * own_spread * 1.045
    assert dear[0] > 4.0  # a size the instance's own level says it may outgrow does not cap it
    assert 2.0 <= cheap[0] < dear[0]  # violations cheap: at its own level
    assert pools.own(("p0", "x"), "cpu_cores") == (pytest.approx(1.5), 3.0)
    assert pools.own(("nobody", "x"), "cpu_cores") is None


def test_peers_are_read_at_the_same_age() -> None:
    pools = AgePools()
    # instances idle in their first hour, busy from hour 1 on
    usage = np.array([0.1] * 12 + [3.0] * 24)
    fill(pools, "fleet:", 4, usage)
    first = pools.reserve(["fleet:"], 0.0, "cpu_cores", 1e6, 4.0)
    later = pools.reserve(["fleet:"], 2 * HOUR, "cpu_cores", 1e6, 4.0)
    assert first is not None and later is not None
    assert first[0] < 0.2 < 2.9 < later[0]
    # hours 6-24 have nothing yet: the nearest age that has answers
    assert pools.reserve(["fleet:"], 10 * HOUR, "cpu_cores", 1e6, 4.0) == later
    # an instance past its first day teaches nothing more
    pools.learn(("fleet:",), ("old", "x"), 0.0, {"cpu_cores": 0.0}, {"cpu_cores": 4.0})
    pools.learn(("fleet:",), ("old", "x"), AGES[-1], {"cpu_cores": 4.0}, {"cpu_cores": 4.0})
    assert pools.reserve(["fleet:"], 10 * HOUR, "cpu_cores", 1e6, 4.0) == later
    assert [age_bucket(a) for a in (0.0, HOUR - 1, HOUR, 7 * HOUR, 30 * HOUR)] == [0, 0, 1, 2, 2]


def test_a_group_too_small_gives_way_to_the_next_key() -> None:
    pools = AgePools(min_members=3, min_windows=12)
    fill(pools, "label:team=a", 2, np.full(12, 1.0))
    fill(pools, "fleet:", 3, np.full(12, 2.0))
    found = pools.reserve(["label:team=a", "fleet:"], 0.0, "cpu_cores", 1e6, 4.0)
    assert found is not None and found[1] == "fleet:"
    assert pools.reserve(["label:team=a"], 0.0, "cpu_cores", 1e6, 4.0) is None
    # without a size: absolute usage, of the instances without a size
    assert pools.reserve(["fleet:"], 0.0, "cpu_cores", 1e6, 0.0) is None
    for i in range(3):
        for w in range(12):
            pools.learn(("fleet:",), (f"bare-{i}", "x"), 300.0 * w, {"cpu_cores": 1.5}, {})
    bare = pools.reserve(["fleet:"], 0.0, "cpu_cores", 1e6, 0.0)
    assert bare is not None and 1.5 <= bare[0] <= 1.6


def test_an_instance_moving_cluster_joins_the_new_one() -> None:
    pools = AgePools(min_members=2, min_windows=1)
    for i in range(2):
        pools.learn((), (f"i{i}", "x"), 0.0, {"cpu_cores": 1.0}, {"cpu_cores": 4.0}, "cluster:1")
    pools.learn((), ("i0", "x"), 300.0, {"cpu_cores": 1.0}, {"cpu_cores": 4.0}, "cluster:2")
    assert pools.pools["cluster:2"][0].members == 1
    assert pools.reserve(["cluster:2"], 0.0, "cpu_cores", 1e6, 4.0) is None
    assert pools.reserve(["cluster:1"], 0.0, "cpu_cores", 1e6, 4.0) is not None


def test_pools_and_instances_are_bounded() -> None:
    pools = AgePools(max_keys=5, max_instances=7)
    for i in range(20):
        pools.learn((f"label:k={i}",), (f"i{i}", "x"), 0.0, {"cpu_cores": 1.0},
                    {"cpu_cores": 2.0})
    assert len(pools.pools) == 5 and len(pools.seen) == 7
    assert "label:k=19" in pools.pools and "label:k=0" not in pools.pools


def test_a_burst_of_young_misses_moves_the_clipped_price_a_bounded_step() -> None:
    young = PriceController("cpu_cores", 0.01, clip=YOUNG_PRICE_CLIP)
    plain = PriceController("cpu_cores", 0.01)
    for price in (young, plain):
        price.learn(violations=50, windows=100)  # half the windows at once: 49 budgets over
    assert young.log_price == pytest.approx(1.0 * YOUNG_PRICE_CLIP)  # eta0 on the first step
    assert plain.log_price > 4 * young.log_price  # at its bound
    for _ in range(30):
        young.learn(violations=0, windows=100)
    assert young.price < 1.0  # and it comes back within a day of quiet periods
    memory = PriceController("mem_bytes", 0.001, clip=YOUNG_PRICE_CLIP,
                             initial=YOUNG_PRICE_INITIAL["mem_bytes"])
    assert memory.price == pytest.approx(16 * 2**30)


def test_the_choice_follows_what_cost_less_at_that_age() -> None:
    choice = YoungChoice()
    assert choice.best("cpu_cores", 0) == 0  # the peers decide until another costs less
    # peak so far 1.0, usage 1.4: the peers' 1.0 and every own rule under 1.4 violate every
    # window at price 10; 1.5 x the peak (slack 0.1) costs least, 2 x (slack 0.6) more
    candidates = choice.candidates(1.0, peak=1.0)
    assert candidates[0] == 1.0 and candidates[1:] == OWN_MARGINS
    choice.learn("cpu_cores", 0, [1.4] * 12, candidates, price=10.0)
    assert candidates[choice.best("cpu_cores", 0)] == 1.5
    assert choice.best("cpu_cores", 1) == 0 and choice.best("mem_bytes", 0) == 0  # per age
    # usage 0.5 at age 1: the peers' 0.6 (slack 0.1) costs less than every own rule of a 1.0
    # peak (0.8 at least: slack 0.3)
    choice.learn("cpu_cores", 1, [0.5] * 12, choice.candidates(0.6, peak=1.0), price=10.0)
    assert choice.candidates(0.6, 1.0)[choice.best("cpu_cores", 1)] == 0.6
    # older periods fade: a later run of periods where the peers cost least wins the age back
    for _ in range(200):
        choice.learn("cpu_cores", 0, [0.5] * 12, choice.candidates(0.55, peak=1.0), price=10.0)
    assert choice.best("cpu_cores", 0) == 0
    # no peak so far: the peers' reserve alone, which is chosen and teaches the choice nothing
    assert choice.candidates(0.7, peak=0.0) == (0.7,)
    assert choice.best("cpu_cores", 0, n=1) == 0
    choice.learn("mem_bytes", 2, [5.0] * 12, (0.7,), price=10.0)
    assert ("mem_bytes", 2) not in choice.cost
    # costs of other candidates (a snapshot from before the own margins): the peers decide,
    # and the next period starts the costs afresh
    choice.cost[("cpu_cores", 2)] = [5.0, 1.0]
    assert choice.best("cpu_cores", 2) == 0
    choice.learn("cpu_cores", 2, [1.4] * 12, choice.candidates(1.0, peak=1.0), price=10.0)
    assert len(choice.cost[("cpu_cores", 2)]) == 1 + len(OWN_MARGINS)
