"""The id grammar of the wire contract: no path separators, no ``..``, in every place ids are
checked or made (decoder, ``fpstream validate``, agent config and ids, trace readers)."""

from __future__ import annotations

import io
import re

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fpstream.actuate.actuator import allocation_seq
from fpstream.actuate.backends import ApplyError, check_id
from fpstream.agent.collect import instance_id, sanitize_id
from fpstream.agent.config import ConfigError, parse_config
from fpstream.backtest.traces import _canonical
from fpstream.events import DEFAULT_LIMITS, ID_PATTERN, Allocation, decode_message
from fpstream.validate import validate_stream

TS = 1.7e9
PATHS = ["a/b", "/etc", "web/", "../etc", "..", "a..b", "x/../y", "a\\b", "..\\x", "...", "a\\"]
GOOD = ["a", "web-01", "billing-api", "vm-17", ".a", "a.", ".", "a.b.c", "web.eu@team:x",
        "pod_1:8080", "A-Z_0.9@x:y"]


def sample(app: str = "web", instance: str = "vm-1") -> bytes:
    return orjson.dumps({"v": 1, "ts": TS, "app": app, "instance": instance,
                         "metrics": {"cpu_cores": 0.5}})


@pytest.mark.parametrize("value", PATHS)
@pytest.mark.parametrize("field", ["app", "instance"])
def test_the_decoder_refuses_path_separators_and_dot_dot(field: str, value: str) -> None:
    result = decode_message(sample(**{field: value}))
    assert result.events == []
    assert [e.reason for e in result.errors] == ["bad_id"]
    assert not ID_PATTERN.fullmatch(value)


@pytest.mark.parametrize("value", GOOD)
def test_the_decoder_accepts_dots_that_are_not_dot_dot(value: str) -> None:
    result = decode_message(sample(app=value, instance=value))
    assert result.errors == [] and result.events[0].app == value
    check_id("app", value)


@pytest.mark.parametrize("value", PATHS)
def test_the_actuator_and_the_validator_refuse_them_too(value: str) -> None:
    with pytest.raises(ApplyError) as info:
        check_id("instance", value)
    assert not info.value.retryable
    verdicts = list(validate_stream(io.BytesIO(sample(instance=value) + b"\n"),
                                    DEFAULT_LIMITS))
    assert verdicts[0]["reason"] == "bad_id" and verdicts[-1]["bad"] == 1


@pytest.mark.parametrize("value", ["a/b", "..", "x..y", "a\\b"])
def test_the_agent_config_refuses_them(value: str) -> None:
    with pytest.raises(ConfigError, match=r"apps\[0\]\.app"):
        parse_config({"apps": [{"app": value, "match": {"name": "x"}}]}, source="t.toml")
    with pytest.raises(ConfigError, match=r"host\.app"):
        parse_config({"host": {"app": value}}, source="t.toml")


@given(st.text(max_size=200))
def test_ids_the_agent_makes_always_decode(text: str) -> None:
    made = [sanitize_id(text), instance_id("{app}@{cgroup}", app="db", cgroup=text),
            instance_id("{hostname}-{pid}", hostname=text, pid=7)]
    for value in made:
        assert ID_PATTERN.fullmatch(value), value
        assert decode_message(sample(app=value, instance=value)).errors == []


def test_a_cgroup_path_becomes_an_id_without_slashes() -> None:
    assert instance_id("{app}@{cgroup}", app="db", cgroup="/system.slice/db.service") == \
        "db@-system.slice-db.service"
    assert sanitize_id("../../etc/passwd") == "etc-passwd"
    assert sanitize_id("a..b") == "a-b"


@given(st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=120))
def test_planetlab_names_always_decode(name: str) -> None:
    ident = _canonical(name)
    if ident:  # an empty name is no file
        assert decode_message(sample(app=ident, instance=ident)).errors == [], ident


def test_planetlab_and_bitbrains_ids_of_the_real_traces_decode() -> None:
    for name in ("planetlab1_cs_a_edu_only_here", "pl2_b_org_ rnp_dcc", "pl-4_d_ac_jp_root",
                 "vm-1", "vm-1250", "host..x_slice"):
        ident = _canonical(name)
        assert ID_PATTERN.fullmatch(ident), ident


def test_the_allocation_id_is_parsed_from_the_right() -> None:
    alloc = Allocation(id="web.eu@team:x/pod-1:8080/12", ts=TS, app="web.eu@team:x",
                       instance="pod-1:8080", kind="resize", instance_type="m.large",
                       reserve={"cpu_cores": 1.0}, predicted={}, cluster=0, confidence=1.0,
                       policy="p", model_version=1)
    assert allocation_seq(alloc) == 12
    app, instance, seq = alloc.id.rsplit("/", 2)
    assert (app, instance, seq) == (alloc.app, alloc.instance, "12")


def test_error_messages_state_the_grammar() -> None:
    [error] = decode_message(sample(instance="a/b")).errors
    assert re.search(r"no '\.\.'", error.detail) and "/" not in error.detail.split("got")[0]
