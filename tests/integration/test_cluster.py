"""Two flow processes in one Bytewax cluster, as the StatefulSet runs them, allocate exactly
what one process allocates from the same input."""

from __future__ import annotations

from pathlib import Path

import pytest

from fpstream.events import Allocation
from fpstream.io.embedded import free_port
from fpstream.ops.runner import FlowProcess, flow_command

from .helpers import fresh_settings, produce, read_topic, sim

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SIM = {"apps": 12, "minutes": 4 * 60, "seed": 23, "bad_share": 0.0}


def run_cluster(settings, tmp_path: Path, processes: int) -> None:
    addresses = [f"127.0.0.1:{free_port()}" for _ in range(processes)]
    procs = [
        FlowProcess(settings,
                    flow_command(process_id=i, addresses=addresses) if processes > 1
                    else flow_command(),
                    tail=False, log_path=tmp_path / f"flow{i}.log",
                    extra_env={"FPSTREAM_METRICS_PORT": str(free_port())})
        for i in range(processes)]
    try:
        for p in procs:
            p.start()
        codes = [p.wait(120) for p in procs]
    finally:
        for p in procs:
            p.stop()
    for i, code in enumerate(codes):
        assert code == 0, (tmp_path / f"flow{i}.log").read_text()[-3000:]


def allocations(settings) -> list[Allocation]:
    return [e for e in read_topic(settings, settings.topic_allocations)
            if isinstance(e, Allocation)]


def test_two_process_cluster_allocates_like_one(services, make_topic, redis_prefix,
                                                redis_client, tmp_path: Path) -> None:
    messages = sim(**SIM)
    cluster = fresh_settings(services.brokers, services.redis_url, make_topic, redis_prefix,
                             partitions=2)
    produce(cluster, messages)
    (tmp_path / "cluster").mkdir()
    run_cluster(cluster, tmp_path / "cluster", processes=2)

    single = fresh_settings(services.brokers, services.redis_url,
                            lambda n, p: make_topic("single-" + n, p), redis_prefix + "single:",
                            partitions=2)
    produce(single, messages)
    (tmp_path / "single").mkdir()
    run_cluster(single, tmp_path / "single", processes=1)

    got, expected = allocations(cluster), allocations(single)

    def resizes(allocs: list[Allocation]) -> dict[str, tuple]:
        return {a.id: (a.ts, a.instance_type, a.reserve) for a in allocs if a.kind == "resize"}

    assert expected and resizes(expected)
    assert resizes(got) == resizes(expected)
    assert {a.id for a in got} == {a.id for a in expected}
    assert len(got) == len({a.id for a in got})  # no repeats without a resume
