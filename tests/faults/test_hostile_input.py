"""Hostile samples against a real worker, broker and Redis: none stops the flow or blinds
an app."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import orjson
import pytest

from fpstream.events import Allocation, DeadLetter
from fpstream.io.producer import MessageProducer

from ..integration.helpers import fresh_settings, produce, read_topic, sim
from .helpers import start_worker

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SIM = {"apps": 8, "minutes": 3 * 60, "seed": 5, "bad_share": 0.0, "deploy_share": 0.0}


@pytest.fixture
def settings(services, make_topic, redis_prefix):
    return fresh_settings(services.brokers, services.redis_url, make_topic, redis_prefix)


def run_to_end(settings, tmp_path: Path) -> None:
    proc, _ = start_worker(settings, tmp_path, tail=False)
    try:
        code = proc.wait(240)
    finally:
        proc.stop()
    assert code == 0, (tmp_path / "flow.log").read_text()[-3000:]


def send(settings, docs: list[tuple[float, dict]]) -> None:
    """Each document as a message of its own, stamped with the given time."""
    producer = MessageProducer(settings)
    for ts, doc in docs:
        producer.send(settings.topic_metrics, doc["app"].encode(), orjson.dumps(doc),
                      int(ts * 1000))
    producer.flush()


def series(app: str, t0: float, n: int, cpu: float = 1.0) -> list[tuple[float, dict]]:
    out = []
    for k in range(n):
        ts = t0 + 60.0 * (k + 1)
        out.append((ts, {"v": 1, "ts": ts, "app": app, "instance": "i-0", "interval_s": 60,
                         "capacity": {"cpu_cores": 4.0, "mem_bytes": 8.0 * 2**30},
                         "metrics": {"cpu_cores": cpu, "mem_bytes": 2.0 * 2**30}}))
    return out


def test_an_absurd_value_is_dead_lettered_and_the_flow_goes_on(settings, tmp_path) -> None:
    messages = sim(**SIM)
    t0 = messages[0].ts
    produce(settings, messages)
    clean = series("victim", t0, 150)
    poison = dict(clean[60][1], ts=clean[60][0] + 1.0,
                  metrics={"cpu_cores": 1e308, "mem_bytes": 2.0 * 2**30})
    send(settings, [*clean[:61], (poison["ts"], poison), *clean[61:]])
    run_to_end(settings, tmp_path)  # the worker once died here, and again on every restart

    letters = [e for e in read_topic(settings, settings.topic_deadletter)
               if isinstance(e, DeadLetter)]
    assert Counter(d.reason for d in letters) == {"out_of_range": 1}
    assert "1e+308" in letters[0].error
    allocations = [e for e in read_topic(settings, settings.topic_allocations)
                   if isinstance(e, Allocation)]
    after = {a.app for a in allocations if a.ts > poison["ts"] + 600}
    assert "victim" in after and len(after) > 1  # everyone is still decided for


def test_one_future_sample_neither_blinds_its_app_nor_is_lost(settings, tmp_path) -> None:
    messages = sim(**SIM)
    t0 = messages[0].ts
    produce(settings, messages)
    clean = series("clock", t0, 150)
    future = dict(clean[40][1], ts=4.0e9)  # inside 2000-2100, far ahead of its message
    send(settings, [*clean[:41], (clean[40][0], future), *clean[41:]])
    run_to_end(settings, tmp_path)

    letters = [e for e in read_topic(settings, settings.topic_deadletter)
               if isinstance(e, DeadLetter)]
    assert Counter(d.reason for d in letters) == {"future": 1}  # none of the later is late
    assert "clock/i-0" in letters[0].error
    allocations = [e for e in read_topic(settings, settings.topic_allocations)
                   if isinstance(e, Allocation) and e.app == "clock"]
    assert allocations and max(a.ts for a in allocations) > clean[100][0]
    assert max(a.ts for a in allocations) < 4.0e9
