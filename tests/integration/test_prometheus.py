"""A real Prometheus server scrapes a real flow process and sees its counters grow."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from fpstream.io.embedded import die_with_parent, free_port
from fpstream.ops.runner import FlowProcess, flow_command

from .helpers import fresh_settings, produce, sim

PROMETHEUS = shutil.which("prometheus")

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(PROMETHEUS is None, reason="prometheus binary not installed "
                       "(apt-get install -y --no-install-recommends prometheus)"),
]


def query(port: int, expr: str) -> float | None:
    """The summed value of ``expr`` now, or None while Prometheus has no such series."""
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            doc = json.load(resp)
    except (urllib.error.URLError, ConnectionError):
        return None  # not listening yet
    result = doc["data"]["result"]
    return sum(float(r["value"][1]) for r in result) if result else None


def start_prometheus(tmp_path: Path, target_port: int) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: fpstream-flow\n"
        f"    static_configs:\n      - targets: ['127.0.0.1:{target_port}']\n")
    assert PROMETHEUS is not None
    log = open(tmp_path / "prometheus.log", "wb")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(
        [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        preexec_fn=die_with_parent())
    log.close()
    return proc, port


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_prometheus_scrapes_flow_counters(services, make_topic, redis_prefix, redis_client,
                                          tmp_path: Path) -> None:
    settings = fresh_settings(services.brokers, services.redis_url, make_topic, redis_prefix)
    produce(settings, sim(apps=6, minutes=60, seed=5))
    metrics_port = free_port()
    flow = FlowProcess(settings, flow_command(), tail=True, log_path=tmp_path / "flow.log",
                       extra_env={"FPSTREAM_METRICS_PORT": str(metrics_port)})
    prometheus = None
    try:
        flow.start()
        prometheus, port = start_prometheus(tmp_path, metrics_port)
        samples = windows = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert flow.proc is not None and flow.proc.poll() is None, \
                (tmp_path / "flow.log").read_text()[-3000:]
            assert prometheus.poll() is None, (tmp_path / "prometheus.log").read_text()[-3000:]
            samples = query(port, "fpstream_ingest_samples_total")
            windows = query(port, "fpstream_window_closed_total")
            if samples and windows:
                break
            time.sleep(1)
        up = query(port, 'up{job="fpstream-flow"}')
        assert samples and samples > 0, (samples, up, (tmp_path / "flow.log").read_text()[-2000:])
        assert windows and windows > 0, (windows, up)
        assert up == 1
        # Labelled series exist from the start, so rules over them never see "no data".
        assert query(port, 'fpstream_deadletters_total{reason="malformed_json"}') is not None
    finally:
        if prometheus is not None:
            stop_group(prometheus)
        flow.stop()
