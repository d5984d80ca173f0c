"""Throughput of the flow's stages on one process, next to the practical limit.

Prints, for the same topic on the embedded broker, each figure on a line of its own as
``name: value``:
  raw_samples_per_s   confluent-kafka consume + orjson decode (nothing else)
  flow_samples_per_s  the Bytewax flow's decode + window-feature steps, to the topic's end
  flow_share_of_raw   the second over the first
then the model stage (closed windows/s: fingerprint, cluster, predict, policy) and the bytes of
state per app (windows + profile + share of the model stage).

With ``--repeat N`` raw and flow run N times each, alternately, and the medians are printed:
on a shared machine one run says little.

Usage: .venv/bin/python benchmarks/throughput.py [--apps 500] [--minutes 120] [--repeat 1]
"""

from __future__ import annotations

import argparse
import pickle
import statistics
import time
from collections import Counter

import bytewax.operators as op
import orjson
from bytewax.dataflow import Dataflow
from bytewax.testing import run_main
from confluent_kafka import Consumer, KafkaError, TopicPartition

from fpstream.catalog import Catalog
from fpstream.events import MetricSample, decode_message
from fpstream.features import WindowFeatures
from fpstream.ingest import SampleBatch
from fpstream.io.embedded import EmbeddedServices
from fpstream.io.kafka import make_source, to_raw
from fpstream.io.metrics import FlowMetrics
from fpstream.io.producer import MessageProducer
from fpstream.io.steps import Steps, WindowLogic
from fpstream.model import ModelConfig, ModelStage
from fpstream.policy import Policy
from fpstream.profile import AppProfile
from fpstream.settings import Settings
from fpstream.simulator import simulate
from fpstream.windows import AppWindows


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


def flow_rate(settings: Settings, expected: int) -> tuple[float, int]:
    """decode + window features through Bytewax, reading the same topic to its end."""
    metrics = FlowMetrics()
    steps = Steps(settings, metrics)
    closed: Counter[str] = Counter()
    flow = Dataflow("bench")
    msgs = op.input("read", flow, make_source(settings, tail=False, batch_size=1000))
    decoded = op.flat_map("decode", op.map("raw", msgs, to_raw), steps.decode)
    batches = op.filter("batches", decoded, lambda x: isinstance(x, SampleBatch))
    keyed = op.key_on("by_app", batches, lambda b: b.app)
    windows = op.stateful("window", keyed, lambda r: WindowLogic(settings, metrics, r))
    op.inspect("count", windows, lambda _s, _x: closed.update(("w",)))
    start = time.perf_counter()
    run_main(flow)
    elapsed = time.perf_counter() - start
    seen = metrics.registry.get_sample_value("fpstream_ingest_samples_total")
    assert seen == expected, (seen, expected)
    return expected / elapsed, closed["w"]


def model_rate(settings: Settings, apps: int, minutes: float) -> tuple[float, int, int, int]:
    """Closed windows/s through the model stage, and state bytes per app."""
    windows: dict[str, AppWindows] = {}
    profiles: dict[str, AppProfile] = {}
    snaps = []
    for m in simulate(apps=apps, minutes=minutes, seed=1, deploy_share=0.0):
        if m.topic != "metrics":
            continue
        events = decode_message(m.value, "metric").events
        app = events[0].app
        w = windows.setdefault(app, AppWindows(settings.window_s, settings.allowed_lateness_s))
        p = profiles.setdefault(app, AppProfile(decision_period_s=settings.decision_period_s))
        samples = [e for e in events if isinstance(e, MetricSample)]
        for wf in w.add_many(samples).closed:
            assert isinstance(wf, WindowFeatures)
            snaps.append(p.update(wf))
    stage = ModelStage(ModelConfig.from_settings(settings), Catalog.load(), Policy())
    start = time.perf_counter()
    for s in snaps:
        stage.on_profile(s)
    stage.flush()
    elapsed = time.perf_counter() - start
    per_app = {a: len(pickle.dumps(windows[a])) + len(pickle.dumps(profiles[a])) for a in windows}
    model_bytes = len(pickle.dumps(stage))
    return len(snaps) / elapsed, max(per_app.values()), sum(per_app.values()) // len(per_app), \
        model_bytes // max(1, len(windows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--apps", type=int, default=500)
    parser.add_argument("--minutes", type=float, default=120)
    parser.add_argument("--interval", type=float, default=10.0,
                        help="seconds between an agent's samples (windows are 60 s)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs of raw and flow each; their medians are printed")
    parser.add_argument("--model-apps", type=int, default=200)
    parser.add_argument("--model-minutes", type=float, default=24 * 60)
    args = parser.parse_args()
    with EmbeddedServices(["bench.metrics", "bench.deploys"], partitions=1) as svc:
        settings = Settings(brokers=svc.brokers, redis_url=svc.redis_url,
                            topic_metrics="bench.metrics", topic_deploys="bench.deploys")
        samples, messages = produce(settings, args.apps, args.minutes, args.interval)
        print(f"topic: {samples:,} samples in {messages:,} messages ({args.apps} apps, "
              f"{args.minutes:.0f} min of event time, a sample every {args.interval:.0f} s)")
        raws, flows = [], []
        for _ in range(max(1, args.repeat)):
            raws.append(raw_rate(settings, samples))
            rate, closed = flow_rate(settings, samples)
            flows.append(rate)
        raw, flow = statistics.median(raws), statistics.median(flows)
        print(f"raw_samples_per_s: {raw:.0f}")
        print(f"flow_samples_per_s: {flow:.0f}")
        print(f"flow_share_of_raw: {flow / raw:.3f}")
        if len(raws) > 1:
            print(f"runs: raw {', '.join(f'{r:,.0f}' for r in raws)}; "
                  f"flow {', '.join(f'{r:,.0f}' for r in flows)}")
        print(f"flow closed {closed:,} windows")
    rate, worst, mean, model_share = model_rate(settings, args.model_apps, args.model_minutes)
    print(f"model stage                  : {rate:12,.0f} closed windows/s "
          f"({args.model_apps} apps, {args.model_minutes / 60:.0f} h)")
    print(f"state per app                : windows+profile mean {mean:,} B, max {worst:,} B; "
          f"model stage share {model_share:,} B")


if __name__ == "__main__":
    main()
