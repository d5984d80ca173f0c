"""Shared steps of the fault tests: a flow worker started as production starts it, and its
Prometheus counters read back over HTTP."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from fpstream.io.embedded import free_port
from fpstream.ops.runner import FlowProcess, flow_command


def start_worker(settings, tmp_path: Path, name: str = "flow", tail: bool = True,
                 **command: object) -> tuple[FlowProcess, int]:
    """A ``python -m bytewax.run`` worker and the port of its /metrics."""
    port = free_port()
    proc = FlowProcess(settings, flow_command(**command), tail=tail,  # type: ignore[arg-type]
                       log_path=tmp_path / f"{name}.log",
                       extra_env={"FPSTREAM_METRICS_PORT": str(port)}).start()
    return proc, port


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the worker's /metrics, by (name, sorted labels); empty while it does
    not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return {}
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(metrics: dict, name: str, **labels: str) -> float:
    return metrics.get((name, tuple(sorted(labels.items()))), 0.0)


def wait_for(condition: Callable[[], bool], proc: FlowProcess, log: Path,
             timeout: float = 120.0, what: str = "condition") -> None:
    """Poll ``condition`` until it holds; fail with the worker's log if it dies or time runs
    out."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.proc is not None
        if proc.proc.poll() is not None:
            raise AssertionError(f"the worker exited ({proc.proc.returncode}) before the "
                                 f"{what}:\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout:.0f} s:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
