"""A flood of distinct app ids against a real worker: every stateful step keeps at most
``max_apps`` apps, so the worker's memory stays bounded whatever the number of apps."""

from __future__ import annotations

import orjson
import psutil
import pytest

from fpstream.io.producer import MessageProducer
from fpstream.simulator import START_TS

from ..integration.helpers import fresh_settings
from .helpers import scrape, start_worker, value, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MAX_APPS = 500
FLOOD = 20 * MAX_APPS
SAMPLES = 3
#: State per app of all stages, as ``benchmarks/throughput.py`` reports it
#: (``state_bytes_per_app``).
STATE_PER_APP = 102 * 1024
#: A worker's own memory (interpreter, libraries, consumer and epoch buffers), whatever the
#: number of apps: an idle worker holds about 145 MiB.
ALLOWANCE = 300 * 2**20


def flood(settings, apps: int) -> None:
    """``apps`` apps never seen before, ``SAMPLES`` samples each a minute apart, all within
    about an hour of event time."""
    producer = MessageProducer(settings)
    for k in range(apps):
        app = f"flood-{k:06d}"
        t0 = START_TS + 0.3 * k
        docs = [{"v": 1, "ts": t0 + 60.0 * j, "app": app, "instance": "i-0", "interval_s": 60,
                 "metrics": {"cpu_cores": 0.5, "mem_bytes": 1e9, "net_rx_bps": 1e4}}
                for j in range(SAMPLES)]
        producer.send(settings.topic_metrics, app.encode(), orjson.dumps(docs),
                      int(docs[-1]["ts"] * 1000))
    producer.flush()


def test_twenty_times_max_apps_keeps_the_worker_within_its_budget(
        services, make_topic, redis_prefix, tmp_path) -> None:
    settings = fresh_settings(services.brokers, services.redis_url, make_topic, redis_prefix,
                              max_apps=MAX_APPS, idle_s=2.0)
    worker, port = start_worker(settings, tmp_path)
    log = tmp_path / "flow.log"
    try:
        flood(settings, FLOOD)
        process = psutil.Process(worker.proc.pid)  # type: ignore[union-attr]
        peak = 0

        def consumed() -> bool:
            nonlocal peak
            peak = max(peak, process.memory_info().rss)
            return value(scrape(port), "fpstream_ingest_samples_total") >= FLOOD * SAMPLES

        wait_for(consumed, worker, log, timeout=240, what="flood consumed")
        metrics: dict = {}

        def evicted() -> bool:
            nonlocal peak, metrics
            peak = max(peak, process.memory_info().rss)
            metrics = scrape(port)
            # Every app beyond the budget left the instance stage; the fleet stage, which
            # holds only apps that completed a decision period, evicted too.
            return (value(metrics, "fpstream_state_evictions_total", step="instance")
                    >= FLOOD - MAX_APPS - 1
                    and value(metrics, "fpstream_state_evictions_total", step="fleet") > 0)

        wait_for(evicted, worker, log, timeout=120, what="evictions")
        rss = process.memory_info().rss
    finally:
        worker.stop()
    bound = ALLOWANCE + MAX_APPS * STATE_PER_APP
    print(f"worker RSS after {FLOOD} apps: {rss / 2**20:.0f} MiB (peak {peak / 2**20:.0f} "
          f"MiB), bound {bound / 2**20:.0f} MiB")
    assert rss <= bound and peak <= bound
    assert value(metrics, "fpstream_model_apps") <= MAX_APPS
