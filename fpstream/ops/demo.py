"""``fpstream demo``: the whole system on a laptop, fed by the simulator.

A real broker and a real Redis start on loopback ports; the flow runs as a worker process
exactly as in production; the simulator plays a fleet into Kafka faster than real time; a live
table shows what the flow is doing. Everything is stopped on exit, Ctrl-C included.
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import redis
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Group
from rich.live import Live
from rich.table import Table

from fpstream.events import RESOURCES
from fpstream.io.embedded import EmbeddedServices, free_port
from fpstream.io.kafka import read_to_end
from fpstream.io.producer import MessageProducer
from fpstream.ops.runner import FlowProcess, flow_command
from fpstream.ops.watch import watch_command
from fpstream.settings import Settings
from fpstream.simulator import START_TS, archetype_of, simulate

#: Said at the start and end of every demo, and under its live table.
MEMORY_ONLY = ("the embedded broker and Redis keep everything in memory: nothing survives a "
               "restart of either. Production needs a replicated Kafka and a persistent Redis "
               "(README: Durability).")


@dataclasses.dataclass(frozen=True, slots=True)
class DemoOptions:
    duration_s: float | None = None
    apps: int = 60
    speed: float = 600.0  # event-time seconds per wall second
    bad_share: float = 0.01
    seed: int = 42
    live: bool = True
    program: str = "fpstream"  # how to call fpstream in the watch command it prints


class _Feeder(threading.Thread):
    """Plays the simulated fleet into Kafka, paced at ``speed`` times real time."""

    def __init__(self, settings: Settings, opts: DemoOptions, minutes: float) -> None:
        super().__init__(name="feeder", daemon=True)
        self.settings, self.opts, self.minutes = settings, opts, minutes
        self.stop_event = threading.Event()
        self.samples = 0
        self.injected_bad = 0
        self.messages = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._play()
        except BaseException as ex:  # noqa: BLE001 - reported by the demo, not lost
            self.error = ex

    def _play(self) -> None:
        s, o = self.settings, self.opts
        producer = MessageProducer(s)
        topics = {"metrics": s.topic_metrics, "deploys": s.topic_deploys}
        started = time.monotonic()
        for msg in simulate(apps=o.apps, minutes=self.minutes, seed=o.seed,
                            bad_share=o.bad_share):
            if self.stop_event.is_set():
                break
            ahead = (msg.ts - START_TS) / o.speed - (time.monotonic() - started)
            if ahead > 0:
                producer.flush()
                if self.stop_event.wait(ahead):
                    break
            producer.send(topics[msg.topic], msg.key, msg.value, int(msg.ts * 1000))
            self.messages += 1
            self.samples += msg.count
            self.injected_bad += msg.bad_reason is not None
        producer.flush()


def scrape(port: int) -> dict[str, float]:
    """The flow's exported metrics, summed over labels except ``resource``."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            text = resp.read().decode()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("fpstream_") and not sample.name.endswith(
                    ("_bucket", "_created")):
                key = sample.name
                if "resource" in sample.labels:
                    key = f"{key}:{sample.labels['resource']}"
                out[key] = out.get(key, 0.0) + sample.value
    return out


def count_topic(settings: Settings, topic: str) -> int:
    """Messages in a topic, read to its end (so it counts what was really published)."""
    return len(read_to_end(settings.kafka_config(), topic))


def cluster_purity(app_cluster: dict[str, int]) -> float:
    """Share of apps whose cluster's majority archetype is their own (1.0 = perfect)."""
    by_cluster: dict[int, Counter[str]] = {}
    for app, cid in app_cluster.items():
        by_cluster.setdefault(cid, Counter())[archetype_of(app)] += 1
    total = sum(sum(c.values()) for c in by_cluster.values())
    return sum(max(c.values()) for c in by_cluster.values()) / total if total else 0.0


def read_redis(client: Any, settings: Settings) -> dict[str, Any]:
    """Clusters, memberships and the latest allocations (client: bytes responses)."""
    clusters = {int(k): orjson.loads(v)
                for k, v in client.hgetall(settings.key("clusters")).items()}
    members = {k.decode(): int(v) for k, v in client.hgetall(settings.key("app_cluster")).items()}
    latest = [orjson.loads(fields[b"data"]) for _, fields in
              client.xrevrange(settings.key("allocations"), count=6)]
    return {"clusters": clusters, "members": members, "latest": latest}


def render(m: dict[str, float], red: dict[str, Any], feeder: _Feeder, elapsed: float) -> Group:
    head = Table(title=f"fpstream demo: {elapsed:5.0f} s, event time "
                       f"+{feeder.samples and (elapsed * feeder.opts.speed / 3600):.1f} h",
                 caption=f"Memory only: {MEMORY_ONLY}")
    for col in ("samples", "dead letters", "windows", "apps", "clusters", "allocations",
                "anomalies"):
        head.add_column(col, justify="right")
    head.add_row(*(f"{m.get(k, 0):,.0f}" for k in (
        "fpstream_ingest_samples_total", "fpstream_deadletters_total",
        "fpstream_window_closed_total", "fpstream_model_apps", "fpstream_model_clusters",
        "fpstream_allocations_emitted_total", "fpstream_anomalies_emitted_total")))
    err = Table(title="prediction error (relative MAE, progressive)")
    for r in RESOURCES:
        err.add_column(r, justify="right")
    err.add_row(*(f"{m.get(f'fpstream_model_prediction_mae_ratio:{r}', 0):.3f}" for r in RESOURCES))
    cl = Table(title="clusters")
    for col in ("id", "apps", "archetypes", "typical cpu", "typical mem GiB"):
        cl.add_column(col)
    mix: dict[int, Counter[str]] = {}
    for app, cid in red["members"].items():
        mix.setdefault(cid, Counter())[archetype_of(app)] += 1
    for cid, doc in sorted(red["clusters"].items()):
        needs = doc.get("needs", {})
        kinds = ", ".join(f"{k}:{n}" for k, n in mix.get(cid, Counter()).most_common(3))
        cl.add_row(str(cid), str(doc.get("members", 0)), kinds,
                   f"{needs.get('cpu_cores', 0):.2f}", f"{needs.get('mem_bytes', 0) / 2**30:.1f}")
    al = Table(title="latest allocations")
    for col in ("id", "kind", "type", "cpu", "mem GiB", "cluster"):
        al.add_column(col)
    for a in red["latest"]:
        al.add_row(a["id"], a["kind"], a["instance_type"], f"{a['reserve']['cpu_cores']:.2f}",
                   f"{a['reserve']['mem_bytes'] / 2**30:.1f}", str(a["cluster"]))
    return Group(head, err, cl, al)


def run_demo(settings: Settings, opts: DemoOptions) -> dict[str, Any]:
    """Run the demo; returns the summary that ``--json`` writes."""
    topics = [settings.topic_metrics, settings.topic_deploys, settings.topic_allocations,
              settings.topic_anomalies, settings.topic_deadletter]
    workdir = Path(tempfile.mkdtemp(prefix="fpstream-demo-"))
    with EmbeddedServices(topics, partitions=settings.partitions, workdir=workdir) as svc:
        settings = dataclasses.replace(settings, brokers=svc.brokers, redis_url=svc.redis_url,
                                       metrics_port=free_port())
        print(f"fpstream demo: watch what it decides with: "
              f"{watch_command(settings, opts.program)}", file=sys.stderr, flush=True)
        flow = FlowProcess(settings, flow_command(), log_path=workdir / "flow.log").start()
        minutes = (opts.duration_s or 7 * 86_400 / opts.speed) * opts.speed / 60
        feeder = _Feeder(settings, opts, minutes)
        client = redis.Redis.from_url(settings.redis_url)
        started = time.monotonic()
        try:
            feeder.start()
            with Live(render({}, read_redis(client, settings), feeder, 0), refresh_per_second=2,
                      transient=not opts.live) as live:
                while feeder.is_alive():
                    elapsed = time.monotonic() - started
                    if opts.duration_s is not None and elapsed >= opts.duration_s * 0.9:
                        break
                    if flow.proc is not None and flow.proc.poll() is not None:
                        raise RuntimeError(f"the flow exited; see {workdir / 'flow.log'}")
                    live.update(render(scrape(settings.metrics_port),
                                       read_redis(client, settings), feeder, elapsed))
                    time.sleep(1.0)
                feeder.stop_event.set()
                feeder.join()
                if feeder.error is not None:
                    raise feeder.error
                metrics = _drain(settings, feeder)
                live.update(render(metrics, read_redis(client, settings), feeder,
                                   time.monotonic() - started))
            red = read_redis(client, settings)
            return {
                "samples": int(metrics.get("fpstream_ingest_samples_total", 0)),
                "deadletters": count_topic(settings, settings.topic_deadletter),
                "injected_bad": feeder.injected_bad,
                "windows": int(metrics.get("fpstream_window_closed_total", 0)),
                "apps": int(metrics.get("fpstream_model_apps", 0)),
                "clusters": len(red["clusters"]),
                "allocations": count_topic(settings, settings.topic_allocations),
                "anomalies": count_topic(settings, settings.topic_anomalies),
                "cluster_purity": round(cluster_purity(red["members"]), 4),
                "mae": {r: round(metrics.get(f"fpstream_model_prediction_mae_ratio:{r}", 0.0), 4)
                        for r in RESOURCES},
            }
        finally:
            feeder.stop_event.set()
            flow.stop()
            client.close()


def _drain(settings: Settings, feeder: _Feeder, timeout: float = 30.0) -> dict[str, float]:
    """Wait until the flow has read every sample and bad message the feeder sent."""
    deadline = time.monotonic() + timeout
    metrics: dict[str, float] = {}
    while time.monotonic() < deadline:
        metrics = scrape(settings.metrics_port)
        seen = metrics.get("fpstream_ingest_samples_total", 0)
        bad = metrics.get("fpstream_ingest_decode_errors_total", 0)
        if seen >= feeder.samples and bad >= feeder.injected_bad:
            time.sleep(1.0)  # let the sinks write the last batch
            return scrape(settings.metrics_port)
        time.sleep(0.5)
    return metrics
