"""The shipped JSON Schemas are the code's: regenerated here, checked against the dataclasses."""

from __future__ import annotations

import dataclasses
import fnmatch
import re
import tomllib
from pathlib import Path

import orjson
import pytest
from jsonschema import Draft202012Validator

from fpstream.contract import schema as contract
from fpstream.events import (
    ID_PATTERN,
    SCHEMA_VERSION,
    Allocation,
    Anomaly,
    DeadLetter,
    DeployRequest,
    Limits,
    MetricSample,
    encode,
)
from fpstream.fleet.stage import ClusterDef
from fpstream.io.redis_sink import cluster_doc

ROOT = Path(__file__).resolve().parents[2]
CLASSES = {"metric-sample": MetricSample, "deploy-request": DeployRequest,
           "allocation": Allocation, "anomaly": Anomaly, "dead-letter": DeadLetter,
           "cluster": ClusterDef}
TS = 1_767_571_200.0


def test_committed_files_are_what_the_code_generates() -> None:
    stale = contract.differences(contract.schema_dir())
    assert stale == [], f"{stale}: run python -m fpstream.contract.schema"


def test_check_mode_reports_a_stale_file(tmp_path: Path) -> None:
    contract.write_schemas(tmp_path)
    assert contract.main(["--check", "--dir", str(tmp_path)]) == 0
    path = tmp_path / "allocation.json"
    path.write_text(path.read_text().replace('"minimum": 0', '"minimum": 1', 1))
    (tmp_path / "gone.json").write_text("{}")
    assert contract.differences(tmp_path) == ["allocation.json: differs from the code",
                                             "gone.json: no such schema"]
    assert contract.main(["--check", "--dir", str(tmp_path)]) == 1


@pytest.mark.parametrize("name", contract.SCHEMA_NAMES)
def test_schema_is_valid_draft_2020_12_and_versioned(name: str) -> None:
    schema = contract.load_schema(name)
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == f"urn:fpstream:schema:v{SCHEMA_VERSION}:{name}"
    assert schema["properties"]["v"]["const"] == SCHEMA_VERSION
    assert schema.get("additionalProperties", True) is True  # extra fields are allowed


@pytest.mark.parametrize("name", contract.SCHEMA_NAMES)
def test_properties_are_the_dataclass_fields(name: str) -> None:
    schema = contract.load_schema(name)
    fields = {f.name for f in dataclasses.fields(CLASSES[name])} | {"v"}
    assert set(schema["properties"]) == fields
    if name in ("metric-sample", "deploy-request"):  # the decoder's required fields
        assert set(schema["required"]) == {f.name for f in dataclasses.fields(CLASSES[name])
                                           if f.default is dataclasses.MISSING
                                           and f.default_factory is dataclasses.MISSING}
    else:  # the encoder writes every field
        assert set(schema["required"]) == fields


def test_encoded_events_match_their_schemas() -> None:
    events = {
        "metric-sample": MetricSample(TS, "web-001", "vm-1", {"cpu_cores": 0.5}),
        "deploy-request": DeployRequest(TS, "web-001", "vm-2", {"team": "a"}, {"cpu_cores": 2}),
        "allocation": Allocation("web-001/vm-2/0", TS, "web-001", "vm-2", "proactive", "m.large",
                                 {"cpu_cores": 2.0, "mem_bytes": 8e9, "disk_bytes": 0.0,
                                  "disk_bps": 0.0, "net_bps": 1e6},
                                 {"cpu_cores": 1.5, "mem_bytes": 6e9, "disk_read_bps": 0.0,
                                  "disk_write_bps": 0.0, "net_rx_bps": 1e5, "net_tx_bps": 1e5},
                                 -1, 0.5, "balanced", 0),
        "anomaly": Anomaly("web-001/vm-1/cpu_cores/1767571500", TS + 300, "web-001", "vm-1",
                           "cpu_cores", 3.0, 1.0, 6.5, "critical"),
        "dead-letter": DeadLetter(TS, "bad_id", "bad", "fpstream.metrics", 0, 12, "e30="),
    }
    for name, event in events.items():
        doc = orjson.loads(encode(event))
        assert Draft202012Validator(contract.load_schema(name)).is_valid(doc), name
    doc = orjson.loads(orjson.dumps(cluster_doc(ClusterDef(3, TS, 2, 7, (0.1, -1.2), {
        "cpu_cores": 0.4}))))
    assert Draft202012Validator(contract.load_schema("cluster")).is_valid(doc)
    assert set(doc) == set(contract.load_schema("cluster")["properties"])


def test_an_allocation_id_must_end_in_a_sequence() -> None:
    pattern = contract.load_schema("allocation")["properties"]["id"]["pattern"]
    assert re.search(pattern, "web-001/vm-2/12")
    # An app id with a '/' is part of an allocation id where the id grammar allows it.
    assert bool(re.search(pattern, "ns/web/vm/3")) == bool(ID_PATTERN.fullmatch("ns/web"))
    for bad in ("web-001/vm-2", "web-001/vm-2/07", "web-001/vm-2/x", "web-001/vm-2/1\n"):
        assert not re.search(pattern, bad), bad


def test_schemas_follow_the_decoder_limits_and_id_grammar(monkeypatch) -> None:
    schemas = contract.build_schemas(Limits(max_id_len=16, max_metrics=3, max_labels=2))
    sample = schemas["metric-sample"]["properties"]
    assert sample["app"]["maxLength"] == 16
    assert sample["metrics"]["maxProperties"] == 3
    assert sample["labels"]["maxProperties"] == 2
    # A stricter id grammar (no '/', no '..') reaches every schema that carries an id.
    monkeypatch.setattr(contract, "ID_PATTERN", re.compile(r"(?!.*\.\.)[A-Za-z0-9._:@-]+"))
    schemas = contract.build_schemas()
    app = Draft202012Validator(schemas["metric-sample"]["properties"]["app"])
    assert app.is_valid("a.b") and not app.is_valid("a..b") and not app.is_valid("a/b")
    alloc_id = Draft202012Validator(schemas["allocation"]["properties"]["id"])
    assert alloc_id.is_valid("web/vm-1/3") and not alloc_id.is_valid("ns/web/vm-1/3")


def test_python_only_regex_syntax_is_refused() -> None:
    for pattern in (r"(?P<app>[a-z]+)", r"\A[a-z]+\Z", r"(?i)[a-z]+"):
        with pytest.raises(ValueError, match="ECMA-262"):
            contract._anchored(pattern)


def test_an_annotation_without_a_json_type_names_the_field() -> None:
    assert contract._type_schema(int | None, "A.b") == {"type": ["integer", "null"]}
    with pytest.raises(TypeError, match=r"A\.when"):
        contract._type_schema(complex, "A.when")


def test_the_package_ships_every_schema_file() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    globs = config["tool"]["setuptools"]["package-data"]["fpstream"]
    package = ROOT / "fpstream"
    files = sorted(contract.schema_dir().glob("*.json"))
    assert len(files) == len(contract.SCHEMA_NAMES)
    for path in files:
        relative = path.relative_to(package).as_posix()
        assert any(fnmatch.fnmatch(relative, g) for g in globs), relative


def test_doctests() -> None:
    import doctest

    assert doctest.testmod(contract).failed == 0
