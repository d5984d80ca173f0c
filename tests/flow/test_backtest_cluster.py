"""The backtest's flow as one Bytewax cluster: two processes allocate exactly as one, and a
process that fails or dies fails the run with its error, leaving no process behind."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from fpstream.backtest.cluster import ClusterError
from fpstream.backtest.replay import DAY, FlowOutput, backtest_settings, flow_allocations
from fpstream.backtest.traces import Series

pytestmark = pytest.mark.flow

STEP = 300.0
T0 = 1_372_629_600.0  # an hour boundary
GIB = 2.0**30


def vm(name: str, start: float, cores: float | None, load: float, seed: int,
       days: float) -> Series:
    """A VM with a provisioned size (announced by a deploy request), or none (not announced:
    it joins with its first sample)."""
    rng = np.random.default_rng(seed)
    n = int(days * DAY / STEP)
    ts = start + STEP * np.arange(1, n + 1)
    size = cores if cores is not None else 2.0
    cpu = size * np.clip(load + 0.1 * np.sin(ts / 3600.0) + rng.normal(0.0, 0.03, n), 0.0, 1.0)
    mem = 0.25 * size * GIB * (1.0 + rng.uniform(0.0, 0.05, n))
    return Series(name=name, ts=ts, cpu=cpu, mem=mem,
                  cpu_cap=None if cores is None else np.full(n, cores),
                  mem_cap=None if cores is None else np.full(n, 2.0 * cores * GIB))


def fleet() -> list[Series]:
    return ([vm(f"small-{i}", T0, 4.0, 0.1, i, 2.5) for i in range(4)]
            + [vm(f"busy-{i}", T0, 1.0, 0.8, 10 + i, 2.5) for i in range(4)]
            + [vm("small-new", T0 + DAY, 4.0, 0.1, 20, 1.0),
               vm("busy-new", T0 + DAY, 1.0, 0.8, 21, 1.0),
               vm("unannounced", T0 + 0.5 * DAY, None, 0.4, 30, 1.5)])


def run(mode: str, workers: int) -> tuple[FlowOutput, list[tuple[int, int]]]:
    settings = replace(backtest_settings(None, STEP), experiment_mode=mode)
    progress: list[tuple[int, int]] = []
    out = flow_allocations(fleet(), settings, lambda done, total: progress.append((done, total)),
                           deploys=True, workers=workers, keep_documents=True)
    return out, progress


@pytest.mark.parametrize("mode", ["off", "split"])
def test_two_processes_allocate_exactly_as_one(mode: str) -> None:
    (one, one_progress), (two, two_progress) = run(mode, 1), run(mode, 2)
    assert (one.processes, two.processes) == (1, 2)
    # the reading process's progress reaches the caller, up to every sample
    samples = sum(len(s) for s in fleet())
    assert one_progress[-1] == two_progress[-1] == (samples, samples)
    # Every allocation, proactive ones included: ids, reserves, predictions, clusters, arms.
    assert one.documents and two.documents == one.documents
    assert {d["app"] for d in one.documents} == {s.key[0] for s in fleet()}
    assert len({d["policy"] for d in one.documents}) == (1 if mode == "off" else 3)
    assert two.proactive == one.proactive and len(one.proactive) == 10  # all but unannounced
    assert two.allocations.keys() == one.allocations.keys()
    for key, mine in one.allocations.items():
        theirs = two.allocations[key]
        for column in ("ts", "cpu", "mem"):
            np.testing.assert_array_equal(theirs[column], mine[column])
        # arms are indices into each output's own list: compare the names
        assert [two.arms[int(k)] for k in theirs["arm"]] == [one.arms[int(k)] for k in mine["arm"]]
    assert two.other == one.other
    assert two.experiments == one.experiments
    assert two.snapshots == one.snapshots and two.app_clusters == one.app_clusters
    assert two.clusters == one.clusters


def test_a_process_that_fails_fails_the_run_with_its_error(tmp_path: Path) -> None:
    catalog = tmp_path / "catalog.json"
    catalog.write_text("not a catalog")
    settings = replace(backtest_settings(None, STEP), catalog_path=str(catalog))
    with pytest.raises(ClusterError) as caught:
        flow_allocations(fleet()[:2], settings, workers=2)
    # The fleet stage's catalog is loaded as each process builds the flow: its error, not
    # Bytewax's panic, and the other process stopped with it.
    message = str(caught.value)
    assert str(catalog) in message and "stopped with it" in message, message
    assert "ValueError" in message, message
    assert not mp.active_children()


def test_a_killed_process_fails_the_run_and_none_is_left_behind() -> None:
    errors: list[BaseException] = []

    def backtest() -> None:
        try:
            flow_allocations(fleet(), backtest_settings(None, STEP), deploys=True, workers=2)
        except BaseException as ex:  # noqa: BLE001 - checked below
            errors.append(ex)

    runner = threading.Thread(target=backtest)
    runner.start()
    deadline = time.monotonic() + 60.0
    while len(children := mp.active_children()) < 2:
        assert runner.is_alive() and time.monotonic() < deadline, "the processes never started"
        time.sleep(0.05)
    victim = children[0]
    assert victim.pid is not None
    os.kill(victim.pid, signal.SIGKILL)
    runner.join(timeout=60.0)
    assert not runner.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], ClusterError), errors
    assert "killed by SIGKILL" in str(errors[0]), errors[0]
    assert not mp.active_children()
