"""Samples the agent builds satisfy the contract; the loop, the sinks and the command work."""

from __future__ import annotations

import io
import logging
import math
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import typer
from prometheus_client import CollectorRegistry
from typer.testing import CliRunner

from fpstream.agent.buffer import SendBuffer
from fpstream.agent.collect import Collection, Reading
from fpstream.agent.command import agent
from fpstream.agent.config import AgentConfig, parse_config
from fpstream.agent.run import (
    MAX_BATCH,
    Agent,
    AgentMetrics,
    KafkaLog,
    StdoutSink,
    build_samples,
    clean,
    encode_batches,
)
from fpstream.events import MetricSample, decode_message

TS = 1_700_000_000.0


class ListSink:
    """Keeps what the agent submits; ``close`` reports nothing left."""

    def __init__(self) -> None:
        self.messages: list[tuple[bytes, bytes]] = []
        self.pumps = 0

    def submit(self, key: bytes, value: bytes) -> None:
        self.messages.append((key, value))

    def pump(self) -> None:
        self.pumps += 1

    def close(self, timeout: float) -> int:
        return 0


class FakeCollector:
    """Hands out prepared collections: None first, as the real one does."""

    def __init__(self, readings: list[Reading]) -> None:
        self.readings = readings
        self.calls = 0
        self.tracked = len(readings)

    def collect(self) -> Collection | None:
        self.calls += 1
        if self.calls == 1:
            return None
        return Collection(TS + self.calls, 10.0, self.readings)


def test_clean_keeps_only_what_the_contract_accepts() -> None:
    assert clean({"a": 1, "b": -0.5, "c": math.nan, "d": math.inf, "e": 0}) == {"a": 1.0,
                                                                                 "e": 0.0}


def test_built_samples_decode_without_errors() -> None:
    cfg = parse_config({"apps": [
        {"app": "web", "labels": {"team": "t"}, "match": {"name": "nginx"},
         "scrape": {"url": "http://x/m", "metrics": {"app.q": {"gauge": "q"}}}},
        {"app": "edge", "scrape": {"url": "http://y/m", "metrics": {"app.r": {"gauge": "r"}}}},
        {"app": "idle", "scrape": {"url": "http://z/m", "metrics": {"app.r": {"gauge": "r"}}}},
    ]}, hostname="vm 1")
    readings = [
        Reading("web", "vm-1", {"team": "t"}, {"cpu_cores": 0.5, "mem_bytes": 1e8,
                                                "disk_read_bps": math.nan}, {"cpu_cores": 2}),
        Reading("junk", "vm-1", {}, {"cpu_cores": -1.0}),  # nothing valid left: no sample
    ]
    scraped = {"web": {"app.q": 3.0}, "edge": {"app.r": 7.0}, "idle": {}}
    samples = build_samples(Collection(TS, 9.99999, readings), scraped, cfg)
    by_app = {s.app: s for s in samples}
    assert sorted(by_app) == ["edge", "web"]
    assert by_app["web"].metrics == {"cpu_cores": 0.5, "mem_bytes": 1e8, "app.q": 3.0}
    assert by_app["web"].capacity == {"cpu_cores": 2.0} and by_app["web"].interval_s == 10.0
    assert by_app["edge"].instance == "vm-1" and by_app["edge"].metrics == {"app.r": 7.0}
    for key, value in encode_batches(samples):
        decoded = decode_message(value)
        assert decoded.ok, decoded.errors
        assert {e.app for e in decoded.events} == {key.decode()}


def test_one_message_per_app_split_when_huge() -> None:
    samples = [MetricSample(TS, "big", f"i{i}", {"cpu_cores": 1.0})
               for i in range(MAX_BATCH + 1)]
    samples.append(MetricSample(TS, "small", "i", {"cpu_cores": 1.0}))
    batches = encode_batches(samples)
    assert [(k, len(orjson.loads(v))) for k, v in batches] == [
        (b"big", MAX_BATCH), (b"big", 1), (b"small", 1)]


def test_agent_ticks_send_one_message_per_app_and_export_counters() -> None:
    registry = CollectorRegistry()
    metrics = AgentMetrics(registry)
    sink = ListSink()
    readings = [Reading("a", "i1", {}, {"cpu_cores": 1.0}),
                Reading("a", "i2", {}, {"cpu_cores": 2.0}),
                Reading("b", "i1", {}, {"mem_bytes": 5.0})]
    agent_ = Agent(AgentConfig(hostname="h"), sink, interval_s=0.05, metrics=metrics,
                   collector=FakeCollector(readings))  # type: ignore[arg-type]
    assert agent_.tick() == 0 and sink.messages == []  # baseline
    assert agent_.tick() == 3
    assert [k for k, _ in sink.messages] == [b"a", b"b"]
    assert registry.get_sample_value("fpstream_agent_samples_total") == 3
    assert registry.get_sample_value("fpstream_agent_messages_total") == 2
    assert registry.get_sample_value("process_resident_memory_bytes") > 0


def test_run_stops_on_the_event_and_keeps_the_rate() -> None:
    sink = ListSink()
    collector = FakeCollector([Reading("a", "i", {}, {"cpu_cores": 1.0})])
    agent_ = Agent(AgentConfig(hostname="h"), sink, interval_s=0.1,
                   collector=collector)  # type: ignore[arg-type]
    stop = threading.Event()
    threading.Timer(1.05, stop.set).start()
    assert agent_.run(stop) == 0
    assert 5 <= collector.calls <= 12  # baseline + one per 0.1 s (fewer on a busy machine)
    assert len(sink.messages) == collector.calls - 1


def test_once_takes_one_sample() -> None:
    sink = ListSink()
    collector = FakeCollector([Reading("a", "i", {}, {"cpu_cores": 1.0})])
    Agent(AgentConfig(hostname="h"), sink, interval_s=0.05,
          collector=collector).run(once=True)  # type: ignore[arg-type]
    assert collector.calls == 2 and len(sink.messages) == 1


def test_interval_must_be_positive() -> None:
    with pytest.raises(ValueError, match="interval_s must be > 0"):
        Agent(AgentConfig(hostname="h"), ListSink(), interval_s=0)


def test_stdout_sink_writes_json_lines() -> None:
    out = io.BytesIO()
    metrics = AgentMetrics(CollectorRegistry(), process=False)
    sink = StdoutSink(out, metrics)
    sink.submit(b"a", b"[1]")
    sink.submit(b"b", b"[2]")
    assert sink.close(1.0) == 0
    assert out.getvalue() == b"[1]\n[2]\n"
    assert metrics.registry.get_sample_value("fpstream_agent_messages_delivered_total") == 2


def test_metrics_follow_the_buffer() -> None:
    metrics = AgentMetrics(CollectorRegistry(), process=False)
    buf = SendBuffer(100)
    for _ in range(4):
        buf.push(b"k", b"v" * 39)
    metrics.observe_buffer(buf)
    metrics.observe_buffer(buf)  # counters follow the buffer's totals, not each call
    get = metrics.registry.get_sample_value
    assert get("fpstream_agent_dropped_messages_total") == 2
    assert get("fpstream_agent_dropped_bytes_total") == 80
    assert get("fpstream_agent_buffer_bytes") == 80
    assert get("fpstream_agent_buffer_messages") == 2


@pytest.fixture
def cli() -> typer.Typer:
    app = typer.Typer()
    app.command()(agent)
    return app


@pytest.fixture
def sleeper() -> Iterator[str]:
    arg = f"7{time.time() % 1000:.6f}"
    proc = subprocess.Popen(["sleep", arg])
    try:
        yield arg
    finally:
        proc.kill()
        proc.wait()


def test_command_once_stdout(cli: typer.Typer, tmp_path: Path, sleeper: str) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(f'[host]\napp = "node"\n\n[[apps]]\napp = "sleeper"\n'
                      f'match = {{cmdline = "{re.escape(sleeper)}"}}\n'.replace("\\", "\\\\"))
    result = CliRunner().invoke(cli, ["--config", str(config), "--once", "--stdout",
                                      "--interval", "0.2", "--hostname", "test-host"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    decoded = [decode_message(line) for line in lines]
    assert all(d.ok for d in decoded), [d.errors for d in decoded]
    apps = {(e.app, e.instance) for d in decoded for e in d.events}
    assert apps == {("sleeper", "test-host"), ("node", "test-host")}


def test_command_reports_config_errors(cli: typer.Typer, tmp_path: Path) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text("apps:\n  - app: web\n    match: {cmdline: '('}\n")
    result = CliRunner().invoke(cli, ["--config", str(config), "--once", "--stdout"])
    assert result.exit_code == 2
    assert "apps[0] (web).match[0].cmdline: invalid regular expression" in result.output


def test_kafka_log_shows_each_facility_once_per_period(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("test.agent.kafka")
    kafka_log = KafkaLog(logger, every_s=60)
    with caplog.at_level(logging.DEBUG, logger="test.agent.kafka"):
        for _ in range(5):
            kafka_log.log(logging.ERROR, "%s [%s] %s", "FAIL", "p-1", "connection refused")
        kafka_log.log(logging.ERROR, "%s [%s] %s", "AUTH", "p-1", "bad credentials")
        kafka_log.log(logging.INFO, "%s [%s] %s", "FAIL", "p-1", "info stays info")
    levels = [(r.levelno, r.getMessage().split(" ")[0]) for r in caplog.records]
    assert levels == [(logging.ERROR, "FAIL")] + [(logging.DEBUG, "FAIL")] * 4 + [
        (logging.ERROR, "AUTH"), (logging.INFO, "FAIL")]
