"""``fpstream watch``: lines, units, filters and the command the demo prints (no broker here)."""

from __future__ import annotations

import doctest
import shlex

import orjson
import pytest
from typer.testing import CliRunner

from fpstream.cli import app as cli
from fpstream.events import Allocation, Anomaly, DeadLetter, encode
from fpstream.ops import watch
from fpstream.settings import Settings

TS = 1_767_571_500.0  # 2026-01-05 00:05:00 UTC
RESERVE = {"cpu_cores": 0.25, "mem_bytes": 1.5 * 2**30, "disk_bytes": 0.0, "disk_bps": 0.0,
           "net_bps": 2e6}


def as_doc(event: object) -> dict:
    return orjson.loads(encode(event))  # type: ignore[arg-type]


def test_an_allocation_line_says_who_what_and_how_much() -> None:
    alloc = Allocation("web-003/vm-1/0", TS, "web-003", "vm-1", "proactive", "c.large", RESERVE,
                       {}, 4, 0.7, "conservative", 2)
    assert watch.format_event(as_doc(alloc)) == (
        "2026-01-05 00:05:00Z proactive web-003/vm-1 #0 c.large cpu 0.25 mem 1.5GiB "
        "conservative cluster 4")


def test_an_anomaly_line_compares_observed_with_predicted_in_units() -> None:
    anomaly = Anomaly("db-1/vm-2/mem_bytes/1767571500", TS, "db-1", "vm-2", "mem_bytes",
                      6 * 2**30, 2 * 2**30, 9.04, "critical")
    assert watch.format_event(as_doc(anomaly)) == (
        "2026-01-05 00:05:00Z anomaly   db-1/vm-2 mem_bytes observed 6.0GiB predicted 2.0GiB "
        "score +9.0 critical")
    net = {**as_doc(anomaly), "metric": "net_rx_bps", "observed": 3e6, "predicted": 800.0}
    assert "observed 2.9MiB/s predicted 800B/s" in watch.format_event(net)


def test_a_dead_letter_line_names_reason_and_origin() -> None:
    letter = DeadLetter(0.0, "bad_id", "'instance' must match", "fpstream.metrics", 1, 42, "")
    assert watch.format_event(as_doc(letter)) == (
        "- dead      bad_id fpstream.metrics[1]@42: 'instance' must match")


def test_an_unknown_event_is_shown_as_json() -> None:
    assert watch.format_event({"ts": TS, "x": 1}).endswith('event     {"ts":1767571500.0,"x":1}')


@pytest.mark.parametrize(("n", "text"), [(0, "0B"), (1023, "1023B"), (1536, "1.5KiB"),
                                         (512 * 2**20, "512MiB"), (2**50, "1024TiB")])
def test_human_bytes(n: float, text: str) -> None:
    assert watch.human_bytes(n) == text


def test_filter_by_app_glob_and_allocation_kind() -> None:
    keep = watch.EventFilter(apps=("web-*", "db-1"), kinds=("resize",)).keep
    assert keep({"app": "web-7", "kind": "resize"})
    assert keep({"app": "db-1", "kind": "resize"})
    assert not keep({"app": "db-10", "kind": "resize"})
    assert not keep({"app": "web-7", "kind": "proactive"})
    assert not keep({"app": "web-7", "severity": "warn"})  # anomalies have no kind
    assert not keep({"reason": "bad_id"})  # dead letters have no app
    assert watch.EventFilter().keep({"reason": "bad_id"})
    with pytest.raises(ValueError, match="proactive, resize"):
        watch.EventFilter(kinds=("resise",))


def test_short_topic_names_follow_the_settings() -> None:
    settings = Settings(topic_allocations="prod.allocs")
    assert watch.resolve_topics(settings, ["allocations", "deadletter", "other", "prod.allocs"]
                                ) == ["prod.allocs", "fpstream.deadletter", "other"]


def test_the_watch_command_names_brokers_and_renamed_topics() -> None:
    assert watch.watch_command(Settings(brokers="127.0.0.1:4001")) == (
        "fpstream watch --brokers 127.0.0.1:4001")
    custom = Settings(brokers="h:1", topic_anomalies="x y")
    assert shlex.split(watch.watch_command(custom, "/opt/my env/fpstream")) == [
        "/opt/my env/fpstream", "watch", "--brokers", "h:1", "--topic", "x y"]


def test_the_program_name_is_how_fpstream_was_started(monkeypatch) -> None:
    monkeypatch.setattr("sys.argv", [".venv/bin/fpstream", "demo"])
    assert watch.program_name() == ".venv/bin/fpstream"
    monkeypatch.setattr("sys.argv", ["/usr/lib/python3/pytest"])
    assert watch.program_name() == "fpstream"


def test_a_bad_kind_is_refused_before_connecting() -> None:
    result = CliRunner().invoke(cli, ["watch", "--kind", "big", "--brokers", "127.0.0.1:1"])
    assert result.exit_code == 2
    assert "kind must be one of proactive, resize" in result.stderr


def test_doctests() -> None:
    assert doctest.testmod(watch).failed == 0
