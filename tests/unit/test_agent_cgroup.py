"""cgroup v2 readers over a fake tree, plus a smoke read of this machine's hierarchy."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fpstream.agent.cgroup import (
    CgroupReader,
    CgroupStats,
    find_cgroup2_root,
    parse_cpu_max,
    parse_cpu_stat,
    parse_io_stat,
    parse_memory_max,
    process_cgroup,
    unit_of,
)


def make_cgroup(root: Path, path: str, usage_usec: int = 0, memory: int | None = None,
                io: str | None = None, cpu_max: str | None = None,
                memory_max: str | None = None) -> Path:
    """A cgroup directory with the files the kernel would show."""
    d = root / path.lstrip("/")
    d.mkdir(parents=True, exist_ok=True)
    (d / "cpu.stat").write_text(f"usage_usec {usage_usec}\nuser_usec 1\nsystem_usec 2\n")
    for name, text in (("memory.current", memory), ("io.stat", io), ("cpu.max", cpu_max),
                       ("memory.max", memory_max)):
        if text is not None:
            (d / name).write_text(f"{text}\n")
    return d


def test_reads_a_fake_cgroup(tmp_path: Path) -> None:
    make_cgroup(tmp_path, "/system.slice/web.service", usage_usec=2_500_000, memory=1 << 30,
                io="8:0 rbytes=4096 wbytes=1024 rios=1 wios=1 dbytes=0 dios=0\n"
                   "259:0 rbytes=100 wbytes=0 rios=1 wios=0 dbytes=0 dios=0",
                cpu_max="200000 100000", memory_max=str(2 << 30))
    stats = CgroupReader(tmp_path).read("/system.slice/web.service")
    assert stats == CgroupStats(cpu_usec=2_500_000, mem_bytes=float(1 << 30), read_bytes=4196,
                                write_bytes=1024, cpu_limit_cores=2.0,
                                mem_limit_bytes=float(2 << 30))


def test_missing_files_read_as_none_and_missing_cgroups_as_none(tmp_path: Path) -> None:
    make_cgroup(tmp_path, "/", usage_usec=7)  # the root has no memory.current, no limits
    assert CgroupReader(tmp_path).read("/") == CgroupStats(cpu_usec=7)
    assert CgroupReader(tmp_path).read("/gone.scope") is None


def test_parsers() -> None:
    assert parse_cpu_stat("user_usec 3\nusage_usec 12\n") == 12
    assert parse_cpu_stat("nr_periods 0\n") is None
    assert parse_io_stat("") == (0.0, 0.0)
    assert parse_cpu_max("max 100000\n") is None and parse_cpu_max("50000 100000\n") == 0.5
    assert parse_memory_max("max\n") is None and parse_memory_max("1024\n") == 1024


@pytest.mark.parametrize(("path", "unit"), [
    ("/system.slice/nginx.service", "nginx.service"),
    ("/user.slice/user-1000.slice/session-2.scope", "session-2.scope"),
    ("/system.slice/app@3.service/worker", "app@3.service"),
    ("/kubepods/burstable/pod1/abc", None),
    ("/", None),
])
def test_unit_of(path: str, unit: str | None) -> None:
    assert unit_of(path) == unit


def test_process_cgroup_and_mountinfo_from_fake_proc(tmp_path: Path) -> None:
    (tmp_path / "42").mkdir()
    (tmp_path / "42" / "cgroup").write_text("4:memory:/x\n0::/system.slice/db.service\n")
    assert process_cgroup(42, tmp_path) == "/system.slice/db.service"
    assert process_cgroup(43, tmp_path) is None
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(
        "30 23 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755\n"
        "31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid shared:10 - cgroup2 cgroup2 rw\n")
    assert find_cgroup2_root(mountinfo) == Path("/sys/fs/cgroup/unified")
    mountinfo.write_text("30 23 0:26 / /sys/fs/cgroup ro - tmpfs tmpfs ro\n")
    assert find_cgroup2_root(mountinfo) is None


def test_smoke_read_of_this_machine() -> None:
    root = find_cgroup2_root()
    if root is None:
        pytest.skip("no cgroup2 hierarchy mounted on this machine")
    own = process_cgroup(os.getpid())
    assert own is not None and own.startswith("/")
    stats = CgroupReader(root).read(own)
    assert stats is not None, f"{root}{own} should exist"
    # Whatever the kernel exposes must parse to sane numbers.
    for value in (stats.cpu_usec, stats.mem_bytes, stats.read_bytes, stats.write_bytes):
        assert value is None or value >= 0
    root_stats = CgroupReader(root).read("/")
    assert root_stats is not None
    if (root / "cpu.stat").exists():
        assert root_stats.cpu_usec is not None and root_stats.cpu_usec > 0
