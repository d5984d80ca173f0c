"""The fpstream dataflow: metric samples and deploy requests in, allocations and anomalies out.

Run it with Bytewax (settings come from ``FPSTREAM_*`` and ``FPSTREAM_CONFIG``)::

    python -m bytewax.run flows.fleet:flow
    python -m bytewax.run flows.fleet:flow -i 0 -a "host0:2101;host1:2101" -r /recovery -s 10
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from typing import Any, TypeGuard

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source
from bytewax.outputs import Sink

from fpstream.digest import Digest
from fpstream.events import Allocation, Anomaly, DeadLetter, DeployRequest
from fpstream.fleet.experiment import ExperimentSnapshot
from fpstream.fleet.stage import ClusterSnapshot, FleetConfig
from fpstream.ingest import AppSeen, Evict, Progress, SampleBatch
from fpstream.instance.stage import InstanceConfig
from fpstream.io.fleet_step import FleetLogic, is_redis_only
from fpstream.io.instance_step import InstanceLogic
from fpstream.io.kafka import (
    create_topics,
    flow_topics,
    input_partitions,
    make_sink,
    make_source,
    to_message,
    to_raw,
)
from fpstream.io.metrics import FlowMetrics
from fpstream.io.redis_sink import RedisSink, redis_key
from fpstream.io.steps import Steps
from fpstream.settings import Settings, load_settings

FLEET_KEY = "fleet"

#: What the two stages emit, besides digests and dead letters.
Output = Allocation | Anomaly | ClusterSnapshot | ExperimentSnapshot


def build_flow(
    settings: Settings,
    *,
    source: Source[Any] | None = None,
    kafka_sink: Sink[Any] | None = None,
    redis_sink: Sink[Any] | None = None,
    metrics: FlowMetrics | None = None,
    tail: bool = True,
    sources: Sequence[str] | None = None,
) -> Dataflow:
    """Assemble the flow; sources and sinks default to the configured Kafka and Redis.

    Two stages: the instance stage, keyed by app on any worker (windows, profile, what each
    instance's history says, anomalies), and the fleet stage under one key, fed one digest per
    instance per decision period (clusters, cold start, violation budgets, every instance's
    decisions, deploy requests).
    ``sources`` are the input partitions (``topic:partition``) the fleet stage waits for
    before it moves on: by default the metrics and deploys topics' partitions when reading
    Kafka, and those that show up with another source.
    """
    metrics = metrics if metrics is not None else FlowMetrics()
    if sources is None:
        sources = input_partitions(settings) if source is None else ()
    steps = Steps(settings, metrics)
    instance_config = InstanceConfig.from_settings(settings)  # one per worker, shared by apps
    fleet_config = FleetConfig.from_settings(settings)
    timed = metrics.timed
    flow = Dataflow("fpstream")

    messages = op.input("read", flow, source if source is not None else make_source(
        settings, tail, metrics=metrics))
    raw = op.map("raw", messages, to_raw)
    decoded = op.flat_map("decode", raw, timed("decode", steps.decode))
    refused = op.branch("refused", decoded, _is_letter)
    per_app = op.branch("per_app", refused.falses, _is_per_app)
    batches = op.key_on("by_app", per_app.trues, _app_of)
    direct = op.map("direct", per_app.falses, _for_fleet)

    decided = op.stateful("instance", batches, lambda resume: InstanceLogic(
        instance_config, metrics, settings.app_ttl_s, resume))
    by_instance = op.key_rm("unkey_instance", decided)
    instance_letters = op.branch("instance_errors", by_instance, _is_letter)
    anomalies = op.branch("anomalies", instance_letters.falses, _is_anomaly)
    digests = op.map("digests", anomalies.falses, _as_digest)

    to_fleet = op.merge("to_fleet", digests, direct)
    fleet = op.stateful(
        "fleet", op.key_on("one_key", to_fleet, lambda _: FLEET_KEY),
        lambda resume: FleetLogic(fleet_config, metrics, resume, sources))
    fleet_letters = op.branch("fleet_errors", op.key_rm("unkey_fleet", fleet), _is_letter)
    fleet_out = op.map("fleet_outputs", fleet_letters.falses, _as_output)
    outputs = op.map("count", op.merge("outputs", anomalies.trues, fleet_out),
                     steps.count_output)
    # Cluster snapshots and experiment summaries go to Redis only; the rest to Kafka too.
    redis_only = op.branch("redis_only", outputs, is_redis_only)
    events = op.map("events", redis_only.falses, _as_event)

    letters = op.map("count_deadletters",
                     op.merge("deadletters", refused.trues, instance_letters.trues,
                              fleet_letters.trues),
                     steps.count_deadletter)
    to_kafka = op.merge("to_kafka", events, letters)
    op.output("kafka", op.map("encode", to_kafka, lambda e: to_message(e, settings)),
              kafka_sink if kafka_sink is not None else make_sink(settings, metrics))
    to_redis = op.key_on("redis_keys", op.filter("redis_items", outputs, _for_redis), redis_key)
    op.output("redis", to_redis,
              redis_sink if redis_sink is not None else RedisSink(settings, metrics))
    return flow


def _is_letter(item: object) -> TypeGuard[DeadLetter]:
    return isinstance(item, DeadLetter)


def _is_per_app(item: object) -> TypeGuard[SampleBatch | Evict]:
    return isinstance(item, SampleBatch | Evict)


def _for_fleet(item: object) -> DeployRequest | Progress | AppSeen:
    assert isinstance(item, DeployRequest | Progress | AppSeen)  # all that "per_app" left
    return item


def _app_of(item: SampleBatch | Evict) -> str:
    return item.app


def _is_anomaly(item: object) -> TypeGuard[Anomaly]:
    return isinstance(item, Anomaly)


def _as_digest(item: object) -> Digest:
    assert isinstance(item, Digest)  # all the instance stage emits besides the above
    return item


def _as_output(item: object) -> Output:
    assert isinstance(item, Allocation | Anomaly | ClusterSnapshot | ExperimentSnapshot)
    return item


def _as_event(item: Output) -> Allocation | Anomaly:
    assert isinstance(item, Allocation | Anomaly)  # snapshots went to "redis_only"
    return item


def _for_redis(item: Output) -> bool:
    return isinstance(item, Allocation) or is_redis_only(item)


def flow() -> Dataflow:
    """The factory ``python -m bytewax.run flows.fleet:flow`` calls in every process: settings
    from ``FPSTREAM_CONFIG`` and ``FPSTREAM_*``, missing topics created, metrics exposed on
    the configured port."""
    # Outages, input resets and failed deliveries are logged with their time and origin
    # (a no-op when the embedding process configured logging itself).
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = load_settings(os.environ.get("FPSTREAM_CONFIG"))
    # Missing topics (a broker that lost its data) get the configured partitions here, never
    # the broker's default from a producer: the Kafka output does not create topics.
    create_topics(settings, flow_topics(settings), settings.partitions)
    metrics = FlowMetrics()
    metrics.serve(settings.metrics_port, settings.metrics_host)
    tail = os.environ.get("FPSTREAM_TAIL", "1") != "0"
    return build_flow(settings, metrics=metrics, tail=tail)
