"""A 2-process cluster killed mid-stream resumes from recovery partitions laid out as the
StatefulSet lays them out: each pod's own volume holds only its share of the partitions
(Bytewax needs the cluster as a whole to see every partition once, not each pod all of them)."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from fpstream.events import Allocation
from fpstream.io.embedded import free_port
from fpstream.ops.runner import FlowProcess, flow_command

from .helpers import fresh_settings, produce, read_topic, redis_allocations, sim

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SIM = {"apps": 12, "minutes": 5 * 60, "seed": 29, "bad_share": 0.0}
MANIFEST = Path(__file__).resolve().parents[2] / "deploy" / "k8s" / "flow-statefulset.yaml"
RECOVERY = "/var/lib/fpstream/recovery"
PROCESSES = 2


def statefulset() -> dict[str, Any]:
    docs = [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]
    return next(d for d in docs if d["kind"] == "StatefulSet")


def init_pod_volumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Run the manifest's recovery init container once per pod, each on its own directory."""
    sts = statefulset()
    assert sts["spec"]["replicas"] == PROCESSES
    init = next(c for c in sts["spec"]["template"]["spec"]["initContainers"]
                if c["name"] == "recovery")
    env = {e["name"]: e["value"] for e in init["env"]}
    volumes = []
    for ordinal in range(PROCESSES):
        volume = tmp_path / f"pod-{ordinal}" / "recovery"
        for key, value in {**env, "HOSTNAME": f"fpstream-flow-{ordinal}"}.items():
            monkeypatch.setenv(key, value)
        exec(compile(init["args"][0].replace(RECOVERY, str(volume)), "recovery-init", "exec"), {})
        volumes.append(volume)
    return volumes


def partition_files(volume: Path) -> set[str]:
    return {f.name for f in volume.glob("part-*.sqlite3")}


def executions(volumes: list[Path]) -> dict[int, int]:
    """Execution number -> the epoch it resumed from, as Bytewax 0.21 records it (``exs``)."""
    found: dict[int, int] = {}
    for path in (f for v in volumes for f in v.glob("part-*.sqlite3")):
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            found |= {ex: epoch for ex, _workers, epoch in
                      db.execute("SELECT ex_num, worker_count, resume_epoch FROM exs")}
    return found


def committed(volumes: list[Path]) -> int:
    """The lowest epoch every recovery partition has committed snapshots up to (0: none)."""
    epochs = []
    for path in (f for v in volumes for f in v.glob("part-*.sqlite3")):
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            epochs.append(db.execute("SELECT MAX(commit_epoch) FROM commits").fetchone()[0] or 0)
    return min(epochs, default=0)


def start_cluster(settings, tmp_path: Path, volumes: list[Path] | None, tag: str,
                  tail: bool) -> list[FlowProcess]:
    addresses = [f"127.0.0.1:{free_port()}" for _ in range(PROCESSES)]
    procs = []
    for i in range(PROCESSES):
        recovery = {} if volumes is None else {"recovery_dir": volumes[i], "snapshot_s": 1,
                                               "backup_s": 30}
        procs.append(FlowProcess(
            settings, flow_command(process_id=i, addresses=addresses, **recovery), tail=tail,
            log_path=tmp_path / f"{tag}{i}.log",
            extra_env={"FPSTREAM_METRICS_PORT": str(free_port())}))
    for p in procs:
        p.start()
    return procs


def wait_all(procs: list[FlowProcess], tmp_path: Path, tag: str) -> None:
    try:
        codes = [p.wait(240) for p in procs]
    finally:
        for p in procs:
            p.stop()
    for i, code in enumerate(codes):
        assert code == 0, (tmp_path / f"{tag}{i}.log").read_text()[-3000:]


def logs(tmp_path: Path, tag: str) -> str:
    return "\n".join((tmp_path / f"{tag}{i}.log").read_text()[-2000:] for i in range(PROCESSES))


def allocations(settings) -> list[Allocation]:
    return [e for e in read_topic(settings, settings.topic_allocations)
            if isinstance(e, Allocation)]


def resizes(allocs: list[Allocation]) -> dict[str, tuple]:
    return {a.id: (a.ts, a.instance_type, a.reserve) for a in allocs if a.kind == "resize"}


def test_killed_cluster_resumes_from_per_pod_volumes(services, make_topic, redis_prefix,
                                                     redis_client, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    messages = sim(**SIM)
    half = len(messages) // 2
    settings = fresh_settings(services.brokers, services.redis_url, make_topic, redis_prefix,
                              partitions=PROCESSES)
    produce(settings, messages[:half])

    volumes = init_pod_volumes(tmp_path, monkeypatch)
    layout = [partition_files(v) for v in volumes]
    assert all(layout), layout  # each pod owns a share ...
    assert sum(map(len, layout)) == len(set().union(*layout)) == 4  # ... and no index twice

    procs = start_cluster(settings, tmp_path, volumes, "first", tail=True)
    try:
        deadline = time.monotonic() + 120
        while len(redis_allocations(redis_client, settings)) < 5:
            assert time.monotonic() < deadline, logs(tmp_path, "first")
            assert all(p.proc and p.proc.poll() is None for p in procs), logs(tmp_path, "first")
            time.sleep(0.5)
        # Snapshots of a later epoch than the one allocations were first seen in.
        target = committed(volumes) + 2
        while committed(volumes) < target:
            assert time.monotonic() < deadline, logs(tmp_path, "first")
            time.sleep(0.2)
    finally:
        for p in procs:  # SIGKILL both, as a node loss or an OOM kill would
            p.kill()
    # Every pod wrote only to its own partitions; none appeared on the other's volume.
    assert [partition_files(v) for v in volumes] == layout
    before = len(allocations(settings))

    produce(settings, messages[half:])
    wait_all(start_cluster(settings, tmp_path, volumes, "resumed", tail=False), tmp_path,
             "resumed")
    resumed = allocations(settings)

    # The same stream through an uninterrupted 2-process cluster, on fresh topics and keys.
    clean = fresh_settings(services.brokers, services.redis_url,
                           lambda n, p: make_topic("clean-" + n, p), redis_prefix + "clean:",
                           partitions=PROCESSES)
    produce(clean, messages)
    (tmp_path / "clean").mkdir()
    wait_all(start_cluster(clean, tmp_path / "clean", None, "clean", tail=False),
             tmp_path / "clean", "clean")
    expected = allocations(clean)
    assert expected and resizes(expected)

    # It resumed from the snapshots rather than starting over: the second execution started
    # from a later epoch than the first, and did not emit the whole stream again.
    exs = executions(volumes)
    assert sorted(exs) == [0, 1] and exs[1] > exs[0], exs
    assert len(resumed) - before < len(expected), (before, len(resumed), len(expected))
    # Repeats after the resume carry the same ids and contents; nothing is missing.
    by_id: dict[str, Allocation] = {}
    for a in resumed:
        assert by_id.setdefault(a.id, a) == a, f"{a.id} repeated with other contents"
    assert resizes(resumed) == resizes(expected)
    assert set(by_id) == {a.id for a in expected}
    stream_ids = [a["id"] for a in redis_allocations(redis_client, settings)]
    assert len(stream_ids) == len(set(stream_ids))
    assert set(stream_ids) <= set(by_id)
    # Redis refuses an allocation not newer than the one it holds: one that reaches it after
    # a later decision for its instance (a proactive allocation re-emitted after the resume,
    # or a young instance's decision from the fleet stage after the instance's own) is
    # refused by design, as superseded; nothing else may be missing.
    newest: dict[str, int] = {}
    for i in stream_ids:
        inst, seq = i.rsplit("/", 1)
        newest[inst] = max(newest.get(inst, -1), int(seq))
    for missing in set(by_id) - set(stream_ids):
        inst, seq = missing.rsplit("/", 1)
        assert int(seq) < newest.get(inst, -1), f"{missing} never reached Redis"
