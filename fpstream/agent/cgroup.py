"""cgroup v2 readers: what a container or systemd unit uses, counted by the kernel.

A cgroup's own counters include processes that came and went between two ticks, which summing
per-process counters misses, so the agent prefers them for apps matched by cgroup or unit.
Every reader returns ``None`` for a file the kernel does not expose (a controller not enabled,
the root cgroup's missing ``memory.current``), so callers fall back instead of failing.

>>> parse_io_stat("8:0 rbytes=4096 wbytes=512 rios=1 wios=1\\n8:16 rbytes=10 wbytes=0")
(4106.0, 512.0)
>>> parse_cpu_max("150000 100000"), parse_cpu_max("max 100000")
(1.5, None)
>>> unit_of("/system.slice/nginx.service"), unit_of("/user.slice")
('nginx.service', None)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

_UNIT = re.compile(r"[^/]+\.(?:service|scope|socket|mount|swap)$")


@dataclass(frozen=True, slots=True)
class CgroupStats:
    """Cumulative counters and current gauges of one cgroup; ``None`` = not exposed."""

    cpu_usec: float | None = None
    mem_bytes: float | None = None
    read_bytes: float | None = None
    write_bytes: float | None = None
    cpu_limit_cores: float | None = None
    mem_limit_bytes: float | None = None


def find_cgroup2_root(mountinfo: str | Path = "/proc/self/mountinfo") -> Path | None:
    """Where the cgroup2 hierarchy is mounted (``/sys/fs/cgroup``, or ``.../unified`` on
    hybrid hosts); ``None`` on a v1-only or non-Linux machine."""
    try:
        lines = Path(mountinfo).read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        # "<id> <parent> <maj:min> <root> <mount point> <options> ... - <fstype> <source> ..."
        left, sep, right = line.partition(" - ")
        if sep and right.split(" ", 1)[0] == "cgroup2":
            return Path(left.split(" ")[4])
    return None


def process_cgroup(pid: int, proc_root: str | Path = "/proc") -> str | None:
    """The process's cgroup v2 path (the ``0::`` line), e.g. ``/system.slice/x.service``."""
    try:
        text = (Path(proc_root) / str(pid) / "cgroup").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("0::"):
            return line[3:].strip() or "/"
    return None


def unit_of(path: str) -> str | None:
    """The deepest systemd unit in a cgroup path; ``None`` outside units."""
    for part in reversed(path.strip("/").split("/")):
        if _UNIT.fullmatch(part):
            return part
    return None


def parse_cpu_stat(text: str) -> float | None:
    """``usage_usec`` from ``cpu.stat``."""
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "usage_usec":
            return float(value)
    return None


def parse_io_stat(text: str) -> tuple[float, float]:
    """Total ``(rbytes, wbytes)`` over the devices listed in ``io.stat``."""
    read = write = 0.0
    for line in text.splitlines():
        for item in line.split()[1:]:
            key, _, value = item.partition("=")
            if key == "rbytes":
                read += float(value)
            elif key == "wbytes":
                write += float(value)
    return read, write


def parse_cpu_max(text: str) -> float | None:
    """Cores allowed by ``cpu.max`` (``quota period``); ``None`` when unlimited."""
    parts = text.split()
    if len(parts) != 2 or parts[0] == "max":
        return None
    return float(parts[0]) / float(parts[1])


def parse_memory_max(text: str) -> float | None:
    text = text.strip()
    return None if text in ("", "max") else float(text)


class CgroupReader:
    """Reads cgroups under ``root`` (a real mount, or a fake tree in tests)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path(self, cgroup: str) -> Path:
        return self.root / cgroup.lstrip("/")

    def read(self, cgroup: str) -> CgroupStats | None:
        """Stats of one cgroup; ``None`` if the cgroup does not exist (any more)."""
        base = self.path(cgroup)
        if not base.is_dir():
            return None
        cpu = _read(base / "cpu.stat")
        mem = _read(base / "memory.current")
        io = _read(base / "io.stat")
        cpu_max = _read(base / "cpu.max")
        mem_max = _read(base / "memory.max")
        rw = parse_io_stat(io) if io is not None else (None, None)
        return CgroupStats(
            cpu_usec=parse_cpu_stat(cpu) if cpu is not None else None,
            mem_bytes=float(mem) if mem is not None and mem.strip() else None,
            read_bytes=rw[0],
            write_bytes=rw[1],
            cpu_limit_cores=parse_cpu_max(cpu_max) if cpu_max is not None else None,
            mem_limit_bytes=parse_memory_max(mem_max) if mem_max is not None else None,
        )


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except (OSError, ValueError):
        return None
