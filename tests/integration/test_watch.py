"""``fpstream watch`` as a person runs it, a subprocess, against the real broker."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO

import orjson
import pytest
from confluent_kafka import Producer
from jsonschema import Draft202012Validator

from fpstream.contract.schema import load_schema
from fpstream.events import Allocation
from fpstream.io.kafka import to_message
from fpstream.settings import Settings

pytestmark = pytest.mark.integration

FPSTREAM = str(Path(sys.executable).parent / "fpstream")
TS = 1_767_571_200.0
RESERVE = {"cpu_cores": 1.25, "mem_bytes": 4.0 * 2**30, "disk_bytes": 0.0, "disk_bps": 0.0,
           "net_bps": 1e6}
PREDICTED = {"cpu_cores": 1.0, "mem_bytes": 3e9, "disk_read_bps": 0.0, "disk_write_bps": 0.0,
             "net_rx_bps": 1e5, "net_tx_bps": 1e5}


class Lines:
    """A child's pipe read line by line in a thread, so a test can wait with a deadline."""

    def __init__(self, pipe: IO[str]) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(pipe,), daemon=True)
        self._thread.start()

    def rest(self, timeout: float = 30.0) -> list[str]:
        """Every line not yet seen, up to the end of the pipe (the child has exited)."""
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the pipe is still open"
        while not self.lines.empty():
            self.seen.append(self.lines.get())
        return self.seen

    def _read(self, pipe: IO[str]) -> None:
        for line in pipe:
            self.lines.put(line.rstrip("\n"))

    def wait_for(self, text: str, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            assert left > 0, f"no line with {text!r} within {timeout} s; saw {self.seen}"
            try:
                line = self.lines.get(timeout=min(left, 0.5))
            except queue.Empty:
                continue
            self.seen.append(line)
            if text in line:
                return line


def allocation(app: str, instance: str, seq: int) -> Allocation:
    return Allocation(f"{app}/{instance}/{seq}", TS + 300 * seq, app, instance,
                      "proactive" if seq == 0 else "resize", "m.large", RESERVE, PREDICTED, 2,
                      0.8, "balanced", 1)


def publish(settings: Settings, allocations: list[Allocation]) -> list[bytes]:
    """Produce as the flow's sink does: its topic, key and headers for each event."""
    producer = Producer(settings.kafka_config())
    values = []
    for alloc in allocations:
        msg = to_message(alloc, settings)
        producer.produce(msg.topic, msg.value, msg.key, headers=msg.headers)
        values.append(msg.value)
    assert producer.flush(30) == 0
    return values


@pytest.fixture
def settings(services, make_topic) -> Settings:
    return Settings(brokers=services.brokers, topic_allocations=make_topic("allocations", 2))


def start_watch(*args: str) -> tuple[subprocess.Popen[str], Lines, Lines]:
    proc = subprocess.Popen([FPSTREAM, "watch", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stderr is not None
    return proc, Lines(proc.stdout), Lines(proc.stderr)


def test_reads_allocations_from_the_beginning_as_json(settings: Settings) -> None:
    values = publish(settings, [allocation(f"web-{a}", "vm-1", s) for a in range(3)
                                for s in range(3)])
    result = subprocess.run(
        [FPSTREAM, "watch", "--brokers", settings.brokers, "--topic", "allocations",
         "--from-beginning", "--limit", "4", "--json"],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "FPSTREAM_TOPIC_ALLOCATIONS": settings.topic_allocations})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 4
    schema = Draft202012Validator(load_schema("allocation"))
    for line in lines:
        assert line.encode() in values
        assert schema.is_valid(orjson.loads(line))


def test_follows_from_the_end_and_filters_by_app_and_kind(settings: Settings) -> None:
    publish(settings, [allocation("web-1", "vm-1", s) for s in range(4)])  # before: not shown
    proc, out, err = start_watch("--brokers", settings.brokers,
                                 "--topic", settings.topic_allocations,
                                 "--app", "web-1", "--kind", "resize", "--limit", "2")
    try:
        err.wait_for("from the end")
        publish(settings, [allocation("web-2", "vm-1", 1), allocation("web-1", "vm-2", 0),
                           allocation("web-1", "vm-2", 1), allocation("web-1", "vm-2", 2)])
        assert proc.wait(60) == 0
    finally:
        proc.kill()
    out.wait_for("#2")
    assert out.seen == [
        "2026-01-05 00:05:00Z resize    web-1/vm-2 #1 m.large cpu 1.25 mem 4.0GiB balanced "
        "cluster 2",
        "2026-01-05 00:10:00Z resize    web-1/vm-2 #2 m.large cpu 1.25 mem 4.0GiB balanced "
        "cluster 2"]


def test_ctrl_c_stops_it_with_130(settings: Settings) -> None:
    proc, _, err = start_watch("--brokers", settings.brokers, "--topic", settings.topic_allocations)
    try:
        err.wait_for("Ctrl-C stops")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 130
    finally:
        proc.kill()
    err.wait_for("fpstream watch: stopped")
    assert not any("Traceback" in line for line in err.seen)


def test_an_unknown_topic_is_a_usage_error(settings: Settings) -> None:
    result = subprocess.run([FPSTREAM, "watch", "--brokers", settings.brokers,
                             "--topic", settings.topic_allocations + "-missing"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "does not exist" in result.stderr
