from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from fpstream.catalog import CAPACITY_FIELDS, Catalog, InstanceType

GiB = 2**30


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog.load()


def raw_default() -> dict:
    return json.loads((Path(__file__).parents[2] / "fpstream/data/catalog.json").read_text())


def test_default_catalog_shape(catalog: Catalog) -> None:
    assert len(catalog) == 21
    assert catalog.families == ("compute", "general", "memory")
    per_vcpu = {"m": 4, "c": 2, "r": 8}
    for t in catalog:
        prefix, size = t.name.split(".")
        assert t.mem_bytes == per_vcpu[prefix] * GiB * t.vcpu
        assert t.vcpu in (1, 2, 4, 8, 16, 32, 64)
    assert catalog["m.medium"].vcpu == 1 and catalog["m.large"].vcpu == 2
    assert catalog["r.16xlarge"].vcpu == 64
    # Per vCPU, compute < general < memory; price scales with size within a family.
    assert catalog["c.large"].price_per_hour < catalog["m.large"].price_per_hour
    assert catalog["m.large"].price_per_hour < catalog["r.large"].price_per_hour
    large = catalog["m.large"].price_per_hour
    assert catalog["m.2xlarge"].price_per_hour == pytest.approx(4 * large)
    prices = [t.price_per_hour for t in catalog]
    assert prices == sorted(prices)


def test_cheapest_fitting(catalog: Catalog) -> None:
    assert catalog.cheapest_fitting({"cpu_cores": 0.5, "mem_bytes": 1 * GiB}).name == "c.medium"
    assert catalog.cheapest_fitting({"cpu_cores": 0.5, "mem_bytes": 3 * GiB}).name == "m.medium"
    assert catalog.cheapest_fitting({"cpu_cores": 0.5, "mem_bytes": 7 * GiB}).name == "r.medium"
    assert catalog.cheapest_fitting({"cpu_cores": 3.0, "mem_bytes": 7 * GiB}).name == "c.xlarge"
    assert catalog.cheapest_fitting({"cpu_cores": 1.0, "net_bps": 3e8}).name == "c.2xlarge"
    assert catalog.cheapest_fitting({"cpu_cores": 2.0}, families=["general"]).name == "m.large"
    assert catalog.cheapest_fitting({"cpu_cores": 2.0}, families=("r",)).name == "r.large"
    exact = catalog["m.large"]
    assert catalog.cheapest_fitting({"cpu_cores": 2.0, "mem_bytes": 8 * GiB}) == exact


def test_nothing_fits_returns_the_closest_flagged(catalog: Catalog) -> None:
    fit = catalog.fit({"cpu_cores": 8.0, "mem_bytes": 2000 * GiB})
    assert not fit.fits and fit.instance_type.name == "r.16xlarge"
    fit = catalog.fit({"cpu_cores": 500.0}, families=["m"])
    assert not fit.fits and fit.instance_type.name == "m.16xlarge"
    assert catalog.fit({}).fits and catalog.fit({}).instance_type.name == "c.medium"


def test_unknown_need_or_family(catalog: Catalog) -> None:
    with pytest.raises(ValueError, match="unknown need keys \\['vcpu'\\]"):
        catalog.fit({"vcpu": 1.0})
    with pytest.raises(ValueError, match="no instance type in families \\['gpu'\\]"):
        catalog.fit({"cpu_cores": 1.0}, families=["gpu"])


@given(
    st.dictionaries(
        st.sampled_from(list(CAPACITY_FIELDS)),
        st.floats(min_value=0, max_value=1e12, allow_nan=False),
    )
)
def test_fit_is_cheapest_that_fits(need: dict[str, float]) -> None:
    catalog = Catalog.load()
    fit = catalog.fit(need)
    fitting = [t for t in catalog if all(v <= t.capacity(k) for k, v in need.items())]
    assert fit.fits == bool(fitting)
    if fitting:
        assert fit.instance_type.price_per_hour == min(t.price_per_hour for t in fitting)


def test_yaml_and_json_files_load_alike(tmp_path: Path, catalog: Catalog) -> None:
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw_default()))
    (tmp_path / "c.json").write_text(json.dumps(raw_default()["instance_types"]))
    assert Catalog.load(tmp_path / "c.yaml").types == catalog.types
    assert Catalog.load(str(tmp_path / "c.json")).types == catalog.types
    (tmp_path / "c.toml").write_text("")
    with pytest.raises(ValueError, match="must be .json, .yaml or .yml"):
        Catalog.load(tmp_path / "c.toml")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="bad.json"):
        Catalog.load(tmp_path / "bad.json")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("vcpu", -1, "catalog entry 2 \\('m.xlarge'\\): field 'vcpu' must be a positive number"),
        ("mem_bytes", None, "entry 2 \\('m.xlarge'\\): field 'mem_bytes' must be a positive"),
        ("price_per_hour", 0, "field 'price_per_hour' must be a positive number, got 0"),
        ("disk_bps", "fast", "field 'disk_bps' must be a non-negative number, got 'fast'"),
        ("net_bps", True, "field 'net_bps' must be a non-negative number, got True"),
        ("net_bps", float("inf"), "field 'net_bps'"),
        ("family", "", "field 'family' must be a non-empty string"),
    ],
)
def test_validation_names_entry_and_field(field: str, value: object, message: str) -> None:
    doc = raw_default()
    doc["instance_types"][2][field] = value
    with pytest.raises(ValueError, match=message):
        Catalog.from_dict(doc)


def test_validation_of_the_whole() -> None:
    doc = raw_default()
    doc["instance_types"].append(dict(doc["instance_types"][0]))
    with pytest.raises(ValueError, match="repeated: \\['m.medium'\\]"):
        Catalog.from_dict(doc)
    with pytest.raises(ValueError, match="at least one"):
        Catalog.from_dict({"instance_types": []})
    with pytest.raises(ValueError, match="instance_types"):
        Catalog.from_dict({"types": []})
    with pytest.raises(ValueError, match="catalog entry 0: expected an object"):
        Catalog.from_dict([1])
    disk_free = raw_default()["instance_types"][0] | {"disk_bytes": 0, "extra": "ignored"}
    assert Catalog.from_dict([disk_free]).types[0].disk_bytes == 0


def test_instance_type_frozen_and_catalog_pickles(catalog: Catalog) -> None:
    t = catalog["m.large"]
    with pytest.raises(AttributeError):
        t.vcpu = 4  # type: ignore[misc]
    assert isinstance(t, InstanceType)
    assert pickle.loads(pickle.dumps(catalog)).types == catalog.types
