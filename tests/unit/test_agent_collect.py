"""Matching processes to apps, and per-instance figures from real child processes."""

from __future__ import annotations

import os
import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from fpstream.agent.cgroup import CgroupReader
from fpstream.agent.collect import (
    Collection,
    Collector,
    find_app,
    instance_id,
    rule_matches,
    sanitize_id,
)
from fpstream.agent.config import AgentConfig, MatchRule, parse_config
from fpstream.events import ID_PATTERN
from tests.unit.test_agent_cgroup import make_cgroup


@pytest.mark.parametrize(("text", "expected"), [
    ("web-01", "web-01"),
    ("web 01 (eu)", "web-01-eu"),
    ("höst", "h-st"),
    ("", "unknown"),
    ("###", "unknown"),
    ("a" * 300, "a" * 128),
])
def test_sanitize_id(text: str, expected: str) -> None:
    assert sanitize_id(text) == expected
    assert ID_PATTERN.fullmatch(sanitize_id(text))


def test_instance_template() -> None:
    assert instance_id("{hostname}-{pid}", hostname="vm 1", pid=42) == "vm-1-42"
    assert instance_id("{unit}", unit=None) == "unknown"
    assert instance_id("{app}@{cgroup}", app="db", cgroup="/system.slice/db.service") == \
        "db@-system.slice-db.service"


def test_rules_and_first_app_wins() -> None:
    cfg = parse_config({"apps": [
        {"app": "api", "match": [{"name": "gunicorn", "cmdline": r"api\.wsgi"},
                                 {"systemd_unit": "api-*.service"}]},
        {"app": "python", "match": {"name": "python*"}},
        {"app": "slice", "match": {"cgroup": "/system.slice/*"}},
    ]}, hostname="h")
    find = lambda n, c, g=None: (r := find_app(cfg.apps, n, c, g)) and r[0].app  # noqa: E731
    assert find("gunicorn", "gunicorn api.wsgi:app") == "api"
    assert find("gunicorn", "gunicorn other.wsgi:app") is None
    assert find("python3", "python3 -m api-worker", "/system.slice/api-2.service") == "api"
    assert find("python3", "python3 x", "/system.slice/db.service") == "python"
    assert find("postgres", "postgres", "/system.slice/db.service") == "slice"
    assert find("postgres", "postgres", None) is None
    rule = MatchRule(name="sleep", cmdline=re.compile("^sleep 5$"))
    assert rule_matches(rule, "sleep", "sleep 5", None)
    assert not rule_matches(rule, "sleep", "sleep 50", None)


@pytest.fixture
def marker() -> str:
    return f"{time.time() % 1000:.6f}"  # sleep takes seconds as a float: a unique argument


@pytest.fixture
def sleepers(marker: str) -> Iterator[list[subprocess.Popen[bytes]]]:
    procs = [subprocess.Popen(["sleep", f"6{i}{marker}"]) for i in range(3)]
    try:
        yield procs
    finally:
        for p in procs:
            p.kill()
            p.wait()


def collect_twice(collector: Collector, gap: float = 0.3) -> Collection:
    assert collector.collect() is None  # the first read is only the baseline
    time.sleep(gap)
    result = collector.collect()
    assert result is not None
    return result


def test_one_instance_per_host_sums_its_processes(
        sleepers: list[subprocess.Popen[bytes]], marker: str) -> None:
    cfg = parse_config({"apps": [{"app": "sleepers", "labels": {"team": "t"},
                                  "match": {"cmdline": re.escape(marker)}}]}, hostname="vm-1")
    before = time.time()
    got = collect_twice(Collector(cfg))
    assert before < got.ts <= time.time() and got.interval_s == pytest.approx(0.3, abs=0.2)
    (r,) = got.readings
    assert (r.app, r.instance, r.labels) == ("sleepers", "vm-1", {"team": "t"})
    assert r.metrics["proc.count"] == 3 and r.metrics["proc.threads"] == 3
    assert r.metrics["mem_bytes"] > 3 * 100_000
    assert r.metrics["cpu_cores"] < 0.1 and r.metrics["proc.open_files"] >= 3
    assert {"disk_read_bps", "disk_write_bps", "proc.syscalls_rate",
            "proc.ctx_switches_rate"} <= r.metrics.keys()
    assert "net_rx_bps" not in r.metrics  # no per-process network counters exist
    assert r.capacity["cpu_cores"] >= 1 and r.capacity["mem_bytes"] > 0


def test_pid_template_gives_one_instance_per_process(
        sleepers: list[subprocess.Popen[bytes]], marker: str) -> None:
    cfg = parse_config({"apps": [{"app": "s", "instance": "{hostname}-{name}-{pid}",
                                  "match": {"name": "sleep", "cmdline": re.escape(marker)}}]},
                       hostname="h")
    got = collect_twice(Collector(cfg))
    assert sorted(r.instance for r in got.readings) == sorted(
        f"h-sleep-{p.pid}" for p in sleepers)


def test_process_born_during_the_interval_counts_from_zero(marker: str) -> None:
    cfg = parse_config({"apps": [{"app": "burst", "match": {"cmdline": f"burst-{marker}"}}]},
                       hostname="h")
    collector = Collector(cfg)
    assert collector.collect() is None
    code = ("import time\nwhile time.process_time() < 0.3: pass\n"
            "print('done', flush=True)\ntime.sleep(60)")
    proc = subprocess.Popen(["python3", "-c", code, f"burst-{marker}"], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"done\n"
        got = collector.collect()
        assert got is not None
        (r,) = got.readings
        # 0.3 s of work plus start-up, all of it inside the interval; without counting from
        # zero there would be no rate at all.
        assert 0.25 <= r.metrics["cpu_cores"] * got.interval_s < 0.6  # ticks of 10 ms
    finally:
        proc.kill()
        proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()


def test_agent_never_reports_itself() -> None:
    cfg = parse_config({"apps": [{"app": "me", "match": {"cmdline": "."}}]}, hostname="h")
    collector = Collector(cfg)
    collector.collect()
    assert os.getpid() not in {pid for pid, t in collector._tracked.items() if t.target}


def test_host_app_has_host_figures() -> None:
    got = collect_twice(Collector(AgentConfig(host=parse_config({"host": {}}).host,
                                              hostname="vm-9")))
    (r,) = got.readings
    assert (r.app, r.instance) == ("host", "vm-9")
    for name in ("cpu_cores", "mem_bytes", "net_rx_bps", "net_tx_bps", "proc.ctx_switches_rate"):
        assert r.metrics[name] >= 0
    assert r.metrics["mem_bytes"] > 0 and r.metrics["proc.threads"] > 0


def test_cgroup_rule_takes_figures_from_the_cgroup(
        tmp_path: Path, sleepers: list[subprocess.Popen[bytes]]) -> None:
    pid = sleepers[0].pid
    proc_root = tmp_path / "proc"
    (proc_root / str(pid)).mkdir(parents=True)
    (proc_root / str(pid) / "cgroup").write_text("0::/system.slice/fake@1.service\n")
    cg_root = tmp_path / "cgroup"
    path = "/system.slice/fake@1.service"
    make_cgroup(cg_root, path, usage_usec=10_000_000, memory=500_000_000,
                io="8:0 rbytes=1000 wbytes=2000", cpu_max="150000 100000")
    cfg = parse_config({"apps": [{"app": "fake", "instance": "{unit}", "net": "host",
                                  "match": {"systemd_unit": "fake@*.service"}}]}, hostname="h")
    collector = Collector(cfg, CgroupReader(cg_root), proc_root=proc_root)
    assert collector.collect() is None
    time.sleep(0.5)
    make_cgroup(cg_root, path, usage_usec=10_500_000, memory=600_000_000,
                io="8:0 rbytes=51000 wbytes=2000", cpu_max="150000 100000")
    got = collector.collect()
    assert got is not None
    (r,) = got.readings
    assert r.instance == "fake@1.service"
    assert r.metrics["proc.count"] == 1  # only the pid whose cgroup file we faked
    assert r.metrics["mem_bytes"] == 600_000_000
    assert r.metrics["cpu_cores"] == pytest.approx(0.5 / got.interval_s)
    assert r.metrics["disk_read_bps"] == pytest.approx(50_000 / got.interval_s)
    assert r.metrics["disk_write_bps"] == 0
    assert r.capacity["cpu_cores"] == pytest.approx(min(1.5, os.cpu_count() or 1))
    assert r.metrics["net_rx_bps"] >= 0  # net = "host"


def test_settling_rematches_young_processes(marker: str) -> None:
    """A process is matched again each tick while young, so an exec changes its app."""
    tag = f"late-{uuid.uuid4().hex[:8]}"
    cfg = parse_config({"apps": [{"app": "late", "match": {"name": "python*", "cmdline": tag}}],
                        "settle_s": 60}, hostname="h")
    collector = Collector(cfg)
    # The shell execs python after a pause, as a forked worker would exec its program.
    proc = subprocess.Popen(["sh", "-c", f"sleep 0.5; exec python3 -c 'import time; "
                                         f"time.sleep(60)' {tag}"])
    try:
        collector.collect()
        assert collector.tracked == 0
        time.sleep(1.5)
        got = collector.collect()
        assert got is not None and [r.app for r in got.readings] == ["late"]
    finally:
        proc.kill()
        proc.wait()
