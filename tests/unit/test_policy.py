from __future__ import annotations

import pickle

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fpstream.catalog import Catalog
from fpstream.events import RESOURCES
from fpstream.policy import MIN_RESERVE, RESERVE_FIELDS, Policy, changed_materially, to_need

GiB = 2**30
CATALOG = Catalog.load()

predictions = st.dictionaries(
    st.sampled_from([*RESOURCES, "disk_bytes"]),
    st.floats(min_value=0, max_value=1e13, allow_nan=False, allow_infinity=False),
)


FAMILIES = st.sampled_from([None, ("m",), ("c", "r")])


@given(predictions, st.floats(min_value=0, max_value=3), FAMILIES)
def test_reserve_never_below_predicted_need(
    predicted: dict[str, float], headroom: float, families: tuple[str, ...] | None
) -> None:
    decision = Policy(headroom=headroom, families=families).decide(predicted, CATALOG)
    need = to_need(predicted)
    assert decision.need == need
    assert set(decision.reserve) == set(RESERVE_FIELDS)
    for key, value in need.items():
        assert decision.reserve[key] >= value
        assert decision.reserve[key] >= MIN_RESERVE.get(key, 0.0)
        assert decision.reserve[key] == pytest.approx(
            max(value * (1 + headroom), MIN_RESERVE.get(key, 0.0))
        )
    assert decision.fits == decision.instance_type.fits(decision.reserve)
    if families:
        assert decision.instance_type.name.split(".")[0] in families


def test_decide_example() -> None:
    predicted = {
        "cpu_cores": 3.0,
        "mem_bytes": 10 * GiB,
        "disk_read_bps": 1e6,
        "disk_write_bps": 2e6,
        "net_rx_bps": 1e7,
        "net_tx_bps": 5e6,
    }
    d = Policy(headroom=0.15).decide(predicted, CATALOG)
    assert d.reserve["cpu_cores"] == pytest.approx(3.45)
    assert d.reserve["disk_bps"] == pytest.approx(3e6 * 1.15)
    assert d.reserve["net_bps"] == pytest.approx(1.5e7 * 1.15)
    assert d.reserve["disk_bytes"] == 0.0
    assert d.instance_type.name == "m.xlarge" and d.fits and d.policy == "default"
    huge = Policy().decide({"mem_bytes": 4096 * GiB}, CATALOG)
    assert not huge.fits and huge.instance_type.name == "r.16xlarge"


def test_floors_apply_to_idle_apps() -> None:
    d = Policy().decide({}, CATALOG)
    assert d.reserve["cpu_cores"] == 0.01 and d.reserve["mem_bytes"] == 64 * 2**20
    assert d.instance_type.name == "c.medium"


def test_to_need_rejects_bad_predictions() -> None:
    with pytest.raises(ValueError, match="unknown predicted resource 'gpu'"):
        to_need({"gpu": 1.0})
    with pytest.raises(ValueError, match="cpu_cores must be a finite number >= 0"):
        to_need({"cpu_cores": -0.1})
    assert to_need({"net_rx_bps": 1.0, "net_tx_bps": 2.0})["net_bps"] == 3.0


def test_changed_materially() -> None:
    old = {"cpu_cores": 1.0, "mem_bytes": 2 * GiB, "disk_bytes": 0.0, "disk_bps": 0.0,
           "net_bps": 1e6}
    assert not changed_materially(old, dict(old), "m.large", "m.large")
    assert not changed_materially(old, old | {"cpu_cores": 1.09}, "m.large", "m.large")
    assert changed_materially(old, old | {"cpu_cores": 1.11}, "m.large", "m.large")
    assert changed_materially(old, old | {"mem_bytes": 1.5 * GiB}, "m.large", "m.large")
    assert changed_materially(old, old, "m.large", "c.large")
    assert changed_materially(old, old, CATALOG["m.large"], CATALOG["c.large"])
    assert not changed_materially(old, old, CATALOG["m.large"], "m.large")
    assert changed_materially(None, old, None, "m.large")
    # Tiny absolute moves are noise: 0 -> 1 kB/s of disk is not a resize.
    assert not changed_materially(old, old | {"disk_bps": 1000.0}, "m.large", "m.large")
    assert changed_materially(old, old | {"net_bps": 2e6}, "m.large", "m.large", threshold=0.5)
    with pytest.raises(ValueError, match="threshold"):
        changed_materially(old, old, "m.large", "m.large", threshold=-1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": ""}, "name"),
        ({"budget": 0.0}, "budget"),
        ({"budget": float("inf")}, "budget"),
        ({"headroom": -0.1}, "headroom"),
        ({"headroom": float("nan")}, "headroom"),
        ({"families": "m"}, "families"),
    ],
)
def test_bad_policy(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Policy(**kwargs)  # type: ignore[arg-type]


def test_policy_is_a_frozen_picklable_value() -> None:
    p = Policy(name="p90-h25", budget=0.9, headroom=0.25, families=["m", "c"])  # type: ignore[arg-type]
    assert p.families == ("m", "c")
    assert pickle.loads(pickle.dumps(p)) == p
    assert hash(p) == hash(Policy("p90-h25", 0.9, 0.25, ("m", "c")))
    with pytest.raises(AttributeError):
        p.headroom = 0.5  # type: ignore[misc]
    d = p.decide({"cpu_cores": 1.0}, CATALOG)
    assert pickle.loads(pickle.dumps(d)) == d
