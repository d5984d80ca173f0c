"""What listens where: the flow's, actuator's and agent's metrics servers bind the loopback
interface unless ``metrics_host`` says otherwise."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from fpstream.io.embedded import EmbeddedServices, die_with_parent, free_port
from fpstream.io.metrics import FlowMetrics

ROOT = Path(__file__).resolve().parents[2]


def listening(pid: int, port: int) -> list[str]:
    """The addresses ``pid`` listens on at ``port``."""
    return [c.laddr.ip for c in psutil.Process(pid).net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN and c.laddr.port == port]


def wait_listening(proc: subprocess.Popen[bytes], port: int, log: Path,
                   timeout: float = 30.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while not (found := listening(proc.pid, port)):
        assert proc.poll() is None, f"exited with {proc.returncode}: {log.read_text()[-2000:]}"
        assert time.monotonic() < deadline, f"nothing listening on {port}: {log.read_text()}"
        time.sleep(0.05)
    return found


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """``fpstream ARGS`` in a child process, stopped with SIGTERM after the test."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(args: list[str], log: Path, **env: str) -> subprocess.Popen[bytes]:
        clean = {k: v for k, v in os.environ.items() if not k.startswith("FPSTREAM_")}
        with open(log, "wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", "fpstream.cli", *args], cwd=ROOT,
                                    env={**clean, **env}, stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, preexec_fn=die_with_parent())
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_flow_metrics_listen_on_loopback_by_default() -> None:
    port = free_port()
    server = FlowMetrics().serve(port)
    try:
        assert listening(os.getpid(), port) == ["127.0.0.1"]
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()


def test_flow_metrics_listen_where_they_are_told() -> None:
    port = free_port()
    server = FlowMetrics().serve(port, "0.0.0.0")
    try:
        assert listening(os.getpid(), port) == ["0.0.0.0"]
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()


def test_actuator_metrics_listen_on_loopback_unless_told(
        spawn: Callable[..., subprocess.Popen[bytes]], services: EmbeddedServices,
        redis_prefix: str, tmp_path: Path) -> None:
    base = ["actuate", "--redis-url", services.redis_url, "--backend", "log"]
    env = {"FPSTREAM_REDIS_PREFIX": redis_prefix.rstrip(":")}
    port = free_port()
    proc = spawn([*base, "--metrics-port", str(port)], tmp_path / "a1.log", **env)
    assert wait_listening(proc, port, tmp_path / "a1.log") == ["127.0.0.1"]
    port = free_port()
    proc = spawn([*base, "--metrics-port", str(port)], tmp_path / "a2.log",
                 FPSTREAM_METRICS_HOST="0.0.0.0", **env)
    assert wait_listening(proc, port, tmp_path / "a2.log") == ["0.0.0.0"]
    port = free_port()
    proc = spawn([*base, "--metrics-port", str(port), "--metrics-host", "0.0.0.0"],
                 tmp_path / "a3.log", **env)
    assert wait_listening(proc, port, tmp_path / "a3.log") == ["0.0.0.0"]


def test_agent_metrics_listen_on_loopback_unless_told(
        spawn: Callable[..., subprocess.Popen[bytes]], tmp_path: Path) -> None:
    base = ["agent", "--stdout", "--interval", "0.5"]
    port = free_port()
    proc = spawn([*base, "--metrics-port", str(port)], tmp_path / "g1.log")
    assert wait_listening(proc, port, tmp_path / "g1.log") == ["127.0.0.1"]
    port = free_port()
    proc = spawn([*base, "--metrics-port", str(port)], tmp_path / "g2.log",
                 FPSTREAM_METRICS_HOST="0.0.0.0")
    assert wait_listening(proc, port, tmp_path / "g2.log") == ["0.0.0.0"]
