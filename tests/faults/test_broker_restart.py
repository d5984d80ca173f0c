"""The broker restarts while the flow runs and comes back empty (the embedded broker keeps
nothing): no input is skipped silently."""

from __future__ import annotations

from pathlib import Path

import pytest

from fpstream.io.embedded import EmbeddedServices, create_topics
from fpstream.ops.runner import FlowProcess, flow_command
from tests.integration.helpers import produce, sim

from .conftest import flow_settings, metric, topics_of, wait_until

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

