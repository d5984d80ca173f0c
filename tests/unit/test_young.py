"""Young instances' peers: pooled first-day usage by evidence key and age, the tail controller
and the choice between the peers' reserve and the instance's own cautious rule."""

from __future__ import annotations

import numpy as np
import pytest

from fpstream.fleet.young import AGES, AgePools, TailController, YoungChoice, age_bucket

HOUR = 3600.0


def fill(pools: AgePools, key: str, n: int, usage: np.ndarray, size: float = 4.0,
         start_age: float = 0.0, step: float = 300.0) -> None:
    """``n`` instances of ``key``, each with the windows ``usage`` (cores) from
    ``start_age``."""
    for i in range(n):
        for w, u in enumerate(usage.tolist()):
            pools.learn((key,), (f"{key}-{i}", "x"), start_age + step * w,
                        {"cpu_cores": u, "mem_bytes": 1.0}, {"cpu_cores": size})


def test_the_reserve_is_the_budget_quantile_of_the_peers_relative_usage() -> None:
    pools = AgePools()
    rng = np.random.default_rng(3)
    usage = rng.uniform(0.2, 2.0, 12)
    fill(pools, "size:c4", 5, usage)
    pooled = np.tile(usage / 4.0, 5)
    for tail in (0.02, 0.1, 0.5):
        found = pools.reserve(["size:c4"], 0.0, "cpu_cores", tail, 8.0)
        assert found is not None and found[1] == "size:c4"
        exact = np.quantile(pooled, 1.0 - tail, method="lower") * 8.0  # scaled to the request
        # a bin's upper edge: at or above the quantile, within a bin's width (4.4 %)
        assert exact <= found[0] <= exact * 1.045
    # more tail, less reserve; the request's size caps it
    assert (pools.reserve(["size:c4"], 0.0, "cpu_cores", 0.5, 8.0)[0]  # type: ignore[index]
            < pools.reserve(["size:c4"], 0.0, "cpu_cores", 0.02, 8.0)[0])  # type: ignore[index]
    fill(pools, "size:big", 3, np.full(12, 9.0))  # above its size of 4
    assert pools.reserve(["size:big"], 0.0, "cpu_cores", 0.01, 4.0) == (4.0, "size:big")


def test_peers_are_read_at_the_same_age() -> None:
    pools = AgePools()
    # instances idle in their first hour, busy from hour 1 on
    usage = np.array([0.1] * 12 + [3.0] * 24)
    fill(pools, "fleet:", 4, usage)
    first = pools.reserve(["fleet:"], 0.0, "cpu_cores", 0.01, 4.0)
    later = pools.reserve(["fleet:"], 2 * HOUR, "cpu_cores", 0.01, 4.0)
    assert first is not None and later is not None
    assert first[0] < 0.2 < 2.9 < later[0]
    # hours 6-24 have nothing yet: the nearest age that has answers
    assert pools.reserve(["fleet:"], 10 * HOUR, "cpu_cores", 0.01, 4.0) == later
    # an instance past its first day teaches nothing more
    pools.learn(("fleet:",), ("old", "x"), 0.0, {"cpu_cores": 0.0}, {"cpu_cores": 4.0})
    pools.learn(("fleet:",), ("old", "x"), AGES[-1], {"cpu_cores": 4.0}, {"cpu_cores": 4.0})
    assert pools.reserve(["fleet:"], 10 * HOUR, "cpu_cores", 0.01, 4.0) == later
    assert [age_bucket(a) for a in (0.0, HOUR - 1, HOUR, 7 * HOUR, 30 * HOUR)] == [0, 0, 1, 2, 2]


def test_a_group_too_small_gives_way_to_the_next_key() -> None:
    pools = AgePools(min_members=3, min_windows=12)
    fill(pools, "label:team=a", 2, np.full(12, 1.0))
    fill(pools, "fleet:", 3, np.full(12, 2.0))
    found = pools.reserve(["label:team=a", "fleet:"], 0.0, "cpu_cores", 0.01, 4.0)
    assert found is not None and found[1] == "fleet:"
    assert pools.reserve(["label:team=a"], 0.0, "cpu_cores", 0.01, 4.0) is None
    # without a size: absolute usage, of the instances without a size
    assert pools.reserve(["fleet:"], 0.0, "cpu_cores", 0.01, 0.0) is None
    for i in range(3):
        for w in range(12):
            pools.learn(("fleet:",), (f"bare-{i}", "x"), 300.0 * w, {"cpu_cores": 1.5}, {})
    bare = pools.reserve(["fleet:"], 0.0, "cpu_cores", 0.01, 0.0)
    assert bare is not None and 1.5 <= bare[0] <= 1.6


def test_an_instance_moving_cluster_joins_the_new_one() -> None:
    pools = AgePools(min_members=2, min_windows=1)
    for i in range(2):
        pools.learn((), (f"i{i}", "x"), 0.0, {"cpu_cores": 1.0}, {"cpu_cores": 4.0}, "cluster:1")
    pools.learn((), ("i0", "x"), 300.0, {"cpu_cores": 1.0}, {"cpu_cores": 4.0}, "cluster:2")
    assert pools.pools["cluster:2"][0].members == 1
    assert pools.reserve(["cluster:2"], 0.0, "cpu_cores", 0.01, 4.0) is None
    assert pools.reserve(["cluster:1"], 0.0, "cpu_cores", 0.01, 4.0) is not None


def test_pools_and_instances_are_bounded() -> None:
    pools = AgePools(max_keys=5, max_instances=7)
    for i in range(20):
        pools.learn((f"label:k={i}",), (f"i{i}", "x"), 0.0, {"cpu_cores": 1.0},
                    {"cpu_cores": 2.0})
    assert len(pools.pools) == 5 and len(pools.seen) == 7
    assert "label:k=19" in pools.pools and "label:k=0" not in pools.pools


def test_the_tail_tightens_when_young_instances_violate_more_than_the_budget() -> None:
    tail = TailController(0.01)
    assert tail.tail == pytest.approx(0.01)
    for _ in range(20):
        tail.learn(violations=10, windows=100)
    assert tail.tail < 0.001
    loose = TailController(0.01)
    for _ in range(20):
        loose.learn(violations=0, windows=100)
    assert 0.05 < loose.tail <= 0.5
    with pytest.raises(ValueError, match="budget"):
        TailController(1.5)


def test_the_choice_follows_what_cost_less_at_that_age() -> None:
    choice = YoungChoice()
    assert choice.peers("cpu_cores", 0)  # the peers decide until they have cost more
    # peers at 1.0 against usage 1.5: every window violated at price 10; own 3.0: slack 1.5
    choice.learn("cpu_cores", 0, [1.5] * 12, peers=1.0, own=3.0, price=10.0)
    assert not choice.peers("cpu_cores", 0)
    assert choice.peers("cpu_cores", 1) and choice.peers("mem_bytes", 0)
    choice.learn("cpu_cores", 1, [0.5] * 12, peers=0.6, own=1.0, price=10.0)
    assert choice.peers("cpu_cores", 1)
