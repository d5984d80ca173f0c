"""The broker restarts while the flow runs and comes back empty (the embedded broker keeps
nothing): no input is skipped silently, and no output is dropped silently."""

from __future__ import annotations

from pathlib import Path

import pytest

from fpstream.io.embedded import EmbeddedServices, create_topics
from fpstream.ops.runner import FlowProcess, flow_command

from ..integration.helpers import produce, sim
from .restarts import (
    flow_settings,
    log_tail,
    metric,
    partition_counts,
    topics_of,
    wait_for_exit,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_inputs_recreated_after_a_broker_restart_are_read_from_their_start(
        own_services: EmbeddedServices, tmp_path: Path) -> None:
    svc = own_services
    settings = flow_settings(svc)
    messages = sim(apps=8, minutes=3 * 60, seed=9, bad_share=0.0)
    half = len(messages) // 2
    first, later = messages[:half], messages[half:]
    before = sum(m.count for m in first)
    produce(settings, first)
    log = tmp_path / "flow.log"
    worker = FlowProcess(settings, flow_command(), log_path=log).start()
    try:
        wait_until(lambda: metric(settings, "fpstream_ingest_samples_total") >= before,
                   worker, log, "samples read before the restart")
        svc.broker.restart()
        create_topics(svc.brokers, topics_of(settings), settings.partitions)
        produce(settings, later)
        expected = before + sum(m.count for m in later)
        wait_until(lambda: metric(settings, "fpstream_ingest_samples_total") >= expected,
                   worker, log, f"all {expected} samples read (the later ones from the start "
                   "of the re-created topics)", status=lambda: (
                       f"{metric(settings, 'fpstream_ingest_samples_total') - before:.0f} of "
                       f"{expected - before} later samples read"))
        # Both partitions of the metrics topic were read before the restart.
        assert metric(settings, "fpstream_ingest_partition_resets_total") >= 2
    finally:
        worker.stop()


def test_an_output_topic_lost_with_the_broker_stops_the_worker_instead_of_dropping(
        own_services: EmbeddedServices, tmp_path: Path) -> None:
    svc = own_services
    # Undeliverable messages fail after 5 s instead of librdkafka's default 5 minutes.
    settings = flow_settings(svc, kafka_options={"message.timeout.ms": "5000"})
    outputs = [settings.topic_allocations, settings.topic_anomalies, settings.topic_deadletter]
    messages = sim(apps=6, minutes=60, seed=3, bad_share=0.2)
    half = len(messages) // 2
    produce(settings, messages[:half])
    log = tmp_path / "flow.log"
    worker = FlowProcess(settings, flow_command(), log_path=log).start()
    try:
        wait_until(lambda: metric(settings, "fpstream_deadletters_total") > 0,
                   worker, log, "dead letters before the restart")
        svc.broker.restart()
        # Only the inputs come back: the flow's outputs now have nowhere to go.
        create_topics(svc.brokers, [settings.topic_metrics, settings.topic_deploys],
                      settings.partitions)
        produce(settings, messages[half:])
        code = wait_for_exit(worker, 90)
    finally:
        worker.stop()
    counts = partition_counts(settings)
    assert code is not None, (f"the worker kept running with its outputs gone; topics now "
                              f"{counts}; log tail:\n{log_tail(log)}")
    assert code != 0
    errors = [line for line in log_tail(log, 20_000).splitlines() if "not delivered" in line]
    assert errors and any(t in errors[0] for t in outputs), log_tail(log)
    # The producer created none of them (the broker's default would be 4 partitions).
    assert {t: n for t, n in counts.items() if t in outputs} == {}

    # Started again, the worker creates its topics with the configured partitions.
    again = FlowProcess(settings, flow_command(), log_path=tmp_path / "again.log").start()
    try:
        wait_until(lambda: partition_counts(settings) == dict.fromkeys(topics_of(settings), 2),
                   again, tmp_path / "again.log", "the flow's topics created at start")
    finally:
        again.stop()
