"""Throughput of the flow's stages on this machine, next to the practical limit.

Prints each figure on its own line as ``name: value``:

  raw_samples_per_s      confluent-kafka consume + orjson decode of the topic (nothing else)
  flow_samples_per_s     the Bytewax flow's decode + window features over the same topic
  flow_share_of_raw      the second over the first
  stages_windows_per_s   closed windows/s through the stages after windowing (instance stage
                         decisions and digests, then the fleet stage), one process, in-process
  windows_per_s_1proc    closed windows/s through the whole flow (read, decode, windows, both
                         stages, outputs) in one Bytewax process, reading a 2-partition topic
  windows_per_s_2proc    the same with a cluster of two processes
  scaling_2proc          the second over the first
  state_bytes_per_app    bytes of state per app, all stages (an app's snapshot in the instance
                         stage plus its share of the fleet stage's), pickled

With ``--repeat N`` the raw and flow rates are measured N times each, alternately, and their
medians printed: on a shared machine one run says little.

Usage: .venv/bin/python benchmarks/throughput.py [--apps 500] [--minutes 120] [--repeat 1]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import pickle
import statistics
import time
from collections import Counter
from typing import Any

import bytewax.operators as op
import orjson
from bytewax.dataflow import Dataflow
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.testing import cluster_main, run_main
from confluent_kafka import Consumer, KafkaError, TopicPartition

from flows.fleet import build_flow
from fpstream.digest import Digest
from fpstream.events import MetricSample, decode_message
from fpstream.fleet.stage import FleetConfig, FleetStage
from fpstream.ingest import SampleBatch
from fpstream.instance.stage import InstanceConfig, InstanceStage
from fpstream.io.embedded import EmbeddedServices, free_port
from fpstream.io.instance_step import InstanceLogic
from fpstream.io.kafka import make_source, to_raw
from fpstream.io.metrics import FlowMetrics
from fpstream.io.producer import MessageProducer
from fpstream.io.steps import Steps
from fpstream.settings import Settings
from fpstream.simulator import simulate


def produce(settings: Settings, apps: int, minutes: float, interval: float) -> tuple[int, int]:
    producer = MessageProducer(settings)
    samples = messages = 0
    for m in simulate(apps=apps, minutes=minutes, interval_s=interval, seed=1, deploy_share=0.0):
        if m.topic != "metrics":
            continue
        producer.send(settings.topic_metrics, m.key, m.value, int(m.ts * 1000))
        samples += m.count
        messages += 1
    producer.flush()
    return samples, messages


def raw_rate(settings: Settings, expected: int) -> float:
    consumer = Consumer(settings.kafka_config(**{
        "group.id": "bench", "enable.partition.eof": True, "enable.auto.commit": False}))
    meta = consumer.list_topics(settings.topic_metrics, timeout=10).topics[settings.topic_metrics]
    parts = [TopicPartition(settings.topic_metrics, p, -2) for p in meta.partitions]
    consumer.assign(parts)
    done: set[int] = set()
    count = 0
    start = time.perf_counter()
    while len(done) < len(parts):
        for msg in consumer.consume(1000, 0.2):
            if msg.error() is None:
                doc = orjson.loads(msg.value())
                count += len(doc) if isinstance(doc, list) else 1
            elif msg.error().code() == KafkaError._PARTITION_EOF:
                done.add(msg.partition())
    elapsed = time.perf_counter() - start
    consumer.close()
    assert count == expected, (count, expected)
    return count / elapsed


def flow_rate(settings: Settings, expected: int) -> float:
    """decode + window features through Bytewax, reading the same topic to its end."""
    metrics = FlowMetrics()
    steps = Steps(settings, metrics)
    config = InstanceConfig.from_settings(settings)
    closed: Counter[str] = Counter()
    flow = Dataflow("bench")
    msgs = op.input("read", flow, make_source(settings, tail=False, batch_size=1000))
    decoded = op.flat_map("decode", op.map("raw", msgs, to_raw), steps.decode)
    batches = op.filter("batches", decoded, lambda x: isinstance(x, SampleBatch))
    keyed = op.key_on("by_app", batches, lambda b: b.app)
    windows = op.stateful("window", keyed, lambda r: _WindowsOnly(config, metrics, r))
    op.inspect("count", windows, lambda _s, _x: closed.update(("w",)))
    start = time.perf_counter()
    run_main(flow)
    elapsed = time.perf_counter() - start
    seen = metrics.registry.get_sample_value("fpstream_ingest_samples_total")
    assert seen == expected, (seen, expected)
    return expected / elapsed


class _WindowsOnly(InstanceLogic):
    """The instance step's windowing alone, for the hot-path figure."""

    def __init__(self, config: InstanceConfig, metrics: FlowMetrics, resume: Any) -> None:
        super().__init__(config, metrics, 86_400.0, resume)

    def on_item(self, value: Any) -> tuple[list[Any], bool]:
        out = self.stage.state.windows.add_many(value)
        return list(out.closed), False


def stage_rate(settings: Settings, apps: int, minutes: float) -> tuple[float, int, int]:
    """Closed windows/s through the stages after windowing, and state bytes per app."""
    iconfig = InstanceConfig.from_settings(settings)
    stages: dict[str, InstanceStage] = {}
    closed: list[tuple[str, Any]] = []
    for m in simulate(apps=apps, minutes=minutes, seed=1, deploy_share=0.0):
        if m.topic != "metrics":
            continue
        events = [e for e in decode_message(m.value, "metric").events
                  if isinstance(e, MetricSample)]
        stage = stages.setdefault(events[0].app, InstanceStage(iconfig))
        closed.extend((events[0].app, wf) for wf in stage.state.windows.add_many(events).closed)
    stages = {app: InstanceStage(iconfig) for app in stages}  # fresh profiles and instances
    fleet = FleetStage(FleetConfig.from_settings(settings))
    start = time.perf_counter()
    for app, wf in closed:
        for item in stages[app].on_windows([wf]):
            if isinstance(item, Digest):
                fleet.on_digest(item)
    fleet.flush()
    elapsed = time.perf_counter() - start
    per_app = sum(len(pickle.dumps(s.state)) for s in stages.values())
    fleet_bytes = len(pickle.dumps(fleet))
    return len(closed) / elapsed, (per_app + fleet_bytes) // len(stages), len(closed)


class _Counting(DynamicSink[Any]):
    def build(self, step_id: str, worker_index: int, worker_count: int) -> Any:
        class Part(StatelessSinkPartition[Any]):
            def write_batch(self, items: list[Any]) -> None:
                pass

        return Part()


def _whole_flow(settings: Settings, addresses: list[str] | None, index: int,
                results: Any) -> None:
    metrics = FlowMetrics()
    flow = build_flow(settings, kafka_sink=_Counting(), redis_sink=_Counting(),
                      metrics=metrics, tail=False)
    if addresses is None:
        run_main(flow)
    else:
        cluster_main(flow, addresses, index)
    results.put(metrics.registry.get_sample_value("fpstream_window_closed_total") or 0.0)


def whole_flow_rate(settings: Settings, processes: int) -> tuple[float, int]:
    """Closed windows/s through the whole flow in ``processes`` processes (spawned, so each
    is a fresh interpreter as in production), from start to the end of the topic."""
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    addresses = None if processes == 1 else [f"127.0.0.1:{free_port()}"
                                             for _ in range(processes)]
    procs = [ctx.Process(target=_whole_flow, args=(settings, addresses, i, results))
             for i in range(processes)]
    start = time.perf_counter()
    for p in procs:
        p.start()
    windows = sum(results.get(timeout=1800) for _ in procs)
    elapsed = time.perf_counter() - start
    for p in procs:
        p.join()
    return windows / elapsed, int(windows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--apps", type=int, default=500)
    parser.add_argument("--minutes", type=float, default=120)
    parser.add_argument("--interval", type=float, default=10.0,
                        help="seconds between an agent's samples (windows are 60 s)")
    parser.add_argument("--stage-apps", type=int, default=200)
    parser.add_argument("--stage-minutes", type=float, default=24 * 60)
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs of raw and flow each; their medians are printed")
    args = parser.parse_args()
    topics = ["bench.metrics", "bench.deploys", "bench.allocations", "bench.anomalies",
              "bench.deadletter"]
    with EmbeddedServices(topics, partitions=2) as svc:
        settings = Settings(brokers=svc.brokers, redis_url=svc.redis_url, metrics_port=0,
                            **{f"topic_{t.split('.')[1]}": t for t in topics})
        samples, messages = produce(settings, args.apps, args.minutes, args.interval)
        print(f"topic: {samples:,} samples in {messages:,} messages ({args.apps} apps, "
              f"{args.minutes:.0f} min of event time, a sample every {args.interval:.0f} s)")
        raws, flows = [], []
        for _ in range(max(1, args.repeat)):
            raws.append(raw_rate(settings, samples))
            flows.append(flow_rate(settings, samples))
        raw, flow = statistics.median(raws), statistics.median(flows)
        print(f"raw_samples_per_s: {raw:.0f}")
        print(f"flow_samples_per_s: {flow:.0f}")
        print(f"flow_share_of_raw: {flow / raw:.3f}")
        if len(raws) > 1:
            print(f"runs: raw {', '.join(f'{r:,.0f}' for r in raws)}; "
                  f"flow {', '.join(f'{r:,.0f}' for r in flows)}")
        one, closed = whole_flow_rate(settings, 1)
        print(f"windows_per_s_1proc: {one:.0f}")
        two, closed2 = whole_flow_rate(settings, 2)
        assert closed2 == closed, (closed, closed2)
        print(f"windows_per_s_2proc: {two:.0f}")
        print(f"scaling_2proc: {two / one:.3f}")
    rate, per_app, windows = stage_rate(settings, args.stage_apps, args.stage_minutes)
    print(f"stages_windows_per_s: {rate:.0f}  ({windows:,} windows of {args.stage_apps} apps, "
          f"{args.stage_minutes / 60:.0f} h)")
    print(f"state_bytes_per_app: {per_app}")


if __name__ == "__main__":
    main()
