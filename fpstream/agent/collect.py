"""Per-instance resource figures, as rates over the interval between two collections.

Rates come from per-process counter deltas (a process born during the interval counts from
zero, one that exited during it is lost with its last partial interval), divided by the interval
measured on the monotonic clock. The sample's ``ts`` is wall-clock Unix time: for the agent, and
only here, the wall clock is the event time.

What each figure is:

- ``cpu_cores``: CPU seconds used / interval (cgroup ``usage_usec`` for cgroup-matched apps).
- ``mem_bytes``: summed RSS (shared pages of forked workers count once per process), or
  ``memory.current`` for cgroup-matched apps.
- ``disk_read_bps`` / ``disk_write_bps``: ``/proc/<pid>/io`` read/write bytes (storage I/O,
  not page-cache hits), or ``io.stat``. Omitted when the kernel hides them (another user's
  process and no root).
- ``net_rx_bps`` / ``net_tx_bps``: psutil has no per-process network counters, so these are
  host counters (without loopback), sent only for the host app and apps with ``net = "host"``;
  other apps omit them rather than report a false zero.
- ``proc.open_files`` (fds), ``proc.threads``, ``proc.count``, ``proc.ctx_switches_rate``,
  ``proc.syscalls_rate`` (``syscr + syscw`` from ``/proc/<pid>/io``, where readable; it counts
  read- and write-family calls only, the only per-process syscall counts the kernel exposes).

The agent never reports itself, and the root cgroup (the whole host) is never an app's cgroup.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path

import psutil

from fpstream.agent.cgroup import (
    CgroupReader,
    CgroupStats,
    find_cgroup2_root,
    process_cgroup,
    unit_of,
)
from fpstream.agent.config import AgentConfig, AppSpec, MatchRule

# Runs of characters outside the id grammar, and of dots that would make a '..'.
_NOT_ID = re.compile(r"(?:[^A-Za-z0-9._:@-]|\.\.+)+")


def sanitize_id(text: str, limit: int = 128) -> str:
    """Make ``text`` a valid app or instance id: ``"web 01 (eu)"`` -> ``"web-01-eu"``,
    ``"/system.slice/db.service"`` -> ``"system.slice-db.service"``."""
    return _NOT_ID.sub("-", text).strip("-")[:limit] or "unknown"


def instance_id(template: str, **fields: object) -> str:
    values: dict[str, object] = dict.fromkeys(("hostname", "app", "pid", "name", "cgroup",
                                               "unit"), "")
    values.update({k: "" if v is None else v for k, v in fields.items()})
    return sanitize_id(template.format(**values))


def rule_matches(rule: MatchRule, name: str, cmdline: str, cgroup: str | None) -> bool:
    """Every field the rule sets must match; globs are case-sensitive, ``*`` spans ``/``."""
    if rule.name is not None and not fnmatchcase(name, rule.name):
        return False
    if rule.cmdline is not None and not rule.cmdline.search(cmdline):
        return False
    if rule.cgroup is not None and (cgroup is None or not fnmatchcase(cgroup, rule.cgroup)):
        return False
    if rule.systemd_unit is not None:
        unit = unit_of(cgroup) if cgroup else None
        if unit is None or not fnmatchcase(unit, rule.systemd_unit):
            return False
    return True


def find_app(apps: tuple[AppSpec, ...], name: str, cmdline: str,
             cgroup: str | None) -> tuple[AppSpec, MatchRule] | None:
    """The first app (and its rule) that claims the process."""
    for app in apps:
        for rule in app.match:
            if rule_matches(rule, name, cmdline, cgroup):
                return app, rule
    return None


@dataclass(slots=True)
class Reading:
    """One instance's figures at the end of an interval, ready to become a MetricSample."""

    app: str
    instance: str
    labels: dict[str, str]
    metrics: dict[str, float]
    capacity: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Collection:
    ts: float  # wall-clock Unix seconds, the end of the interval
    interval_s: float  # monotonic seconds since the previous collection
    readings: list[Reading]


@dataclass(frozen=True, slots=True)
class _Counters:
    """Cumulative counters of one process."""

    cpu_s: float
    ctx: float
    read_b: float | None
    write_b: float | None
    syscalls: float | None


@dataclass(frozen=True, slots=True)
class _Target:
    app: AppSpec
    instance: str
    cgroup: str | None  # set when a cgroup or unit rule matched: the cgroup is the source


@dataclass(slots=True)
class _Tracked:
    proc: psutil.Process
    created: float  # seconds after boot, on the kernel's clock (see ``_since_boot``)
    target: _Target | None = None
    settled: bool = False
    prev: _Counters | None = None


@dataclass(slots=True)
class _Agg:
    """Sums over the processes of one instance during one collection."""

    app: AppSpec
    instance: str
    count: int = 0
    rss: float = 0.0
    fds: float | None = None
    threads: float = 0.0
    rated: int = 0  # processes with a delta this interval
    cpu_s: float = 0.0
    ctx: float = 0.0
    read_b: float | None = None
    write_b: float | None = None
    syscalls: float | None = None
    cgroups: set[str] = field(default_factory=set)


def _add(total: float | None, value: float | None) -> float | None:
    if value is None:
        return total
    return value if total is None else total + value


def _delta(now: float | None, prev: float | None) -> float | None:
    if now is None or prev is None:
        return None
    return max(now - prev, 0.0)  # counters never go back; a drop is a kernel quirk, not work


@dataclass(frozen=True, slots=True)
class _HostCounters:
    busy_s: float
    read_b: float | None
    write_b: float | None
    rx: float
    tx: float
    ctx: float


class Collector:
    """Tracks the host's processes and turns two consecutive reads into per-instance rates."""

    def __init__(self, config: AgentConfig, cgroups: CgroupReader | None = None,
                 proc_root: str | Path = "/proc") -> None:
        self.config = config
        self.proc_root = Path(proc_root)
        if cgroups is None and config.needs_cgroups:
            root = config.cgroup_root or find_cgroup2_root()
            cgroups = CgroupReader(root) if root is not None else None
        self.cgroups = cgroups
        self._apps = tuple(a for a in config.apps if a.match)
        self._tracked: dict[int, _Tracked] = {}
        self._cg_prev: dict[str, CgroupStats] = {}
        self._host_prev: _HostCounters | None = None
        self._prev_mono: float | None = None
        self._prev_boot: float | None = None
        self._self_pid = os.getpid()
        self._host_capacity = {"cpu_cores": float(psutil.cpu_count() or 1),
                               "mem_bytes": float(psutil.virtual_memory().total)}

    @property
    def tracked(self) -> int:
        """Processes currently attributed to an app."""
        return sum(1 for t in self._tracked.values() if t.target is not None)

    def collect(self) -> Collection | None:
        """Read everything once; ``None`` on the first call, which only sets the baseline."""
        mono, wall, boot = time.monotonic(), time.time(), _since_boot()
        interval = None if self._prev_mono is None else mono - self._prev_mono
        aggs = self._processes(boot) if self._apps else {}
        need_host = self.config.host is not None or any(a.net == "host" for a in self._apps)
        host_now = _host_counters() if need_host else None
        host_delta = self._host_delta(host_now)
        cg_now = self._cgroup_stats(aggs.values())
        readings = [self._reading(agg, interval, cg_now, host_delta) for agg in aggs.values()]
        if self.config.host is not None and host_now is not None:
            readings.append(self._host_reading(interval, host_delta))
        self._prev_mono, self._prev_boot = mono, boot
        self._host_prev, self._cg_prev = host_now, cg_now
        if interval is None or interval <= 0:
            return None
        return Collection(wall, interval, readings)

    # --- processes -------------------------------------------------------------------------

    def _processes(self, boot: float) -> dict[tuple[str, str], _Agg]:
        pids = set(psutil.pids())
        pids.discard(self._self_pid)
        for gone in self._tracked.keys() - pids:
            del self._tracked[gone]
        aggs: dict[tuple[str, str], _Agg] = {}
        for pid in pids:
            tracked = self._tracked.get(pid) or self._track(pid)
            if tracked is None:
                continue
            if not tracked.settled:
                tracked.target = self._match(pid, tracked)
                tracked.settled = boot - tracked.created > self.config.settle_s
                if tracked.target is None:
                    tracked.prev = None  # a later match must not span the unmatched ticks
            if tracked.target is not None and not self._read(pid, tracked, aggs):
                del self._tracked[pid]
        return aggs

    def _track(self, pid: int) -> _Tracked | None:
        try:
            proc = psutil.Process(pid)
            # Start times are clock ticks after boot; comparing them there, not as wall-clock
            # times rebuilt from a whole-second boot time, keeps "born during the interval" exact.
            tracked = _Tracked(proc, proc.create_time() - psutil.boot_time())
        except psutil.Error:
            return None
        self._tracked[pid] = tracked
        return tracked

    def _match(self, pid: int, tracked: _Tracked) -> _Target | None:
        try:
            name = tracked.proc.name()
            cmdline = " ".join(tracked.proc.cmdline())
        except psutil.Error:
            return None  # gone, or hidden: try again next tick while unsettled
        cgroup = process_cgroup(pid, self.proc_root) if self.config.needs_cgroups else None
        found = find_app(self._apps, name, cmdline, cgroup)
        if found is None:
            return None
        app, rule = found
        instance = instance_id(app.instance, hostname=self.config.hostname, app=app.app,
                               pid=pid, name=name, cgroup=cgroup,
                               unit=unit_of(cgroup) if cgroup else None)
        source = cgroup if rule.uses_cgroup and cgroup not in (None, "/") else None
        return _Target(app, instance, source)

    def _read(self, pid: int, tracked: _Tracked, aggs: dict[tuple[str, str], _Agg]) -> bool:
        """Add one process to its instance; False if the process is gone."""
        proc = tracked.proc
        try:
            with proc.oneshot():
                cpu = proc.cpu_times()
                rss = float(proc.memory_info().rss)
                ctx = proc.num_ctx_switches()
                threads = float(proc.num_threads())
                read_b: float | None
                write_b: float | None
                syscalls: float | None
                try:
                    io = proc.io_counters()
                    read_b, write_b = float(io.read_bytes), float(io.write_bytes)
                    syscalls = float(io.read_count + io.write_count)
                except (psutil.AccessDenied, AttributeError):
                    read_b = write_b = syscalls = None
                try:
                    fds: float | None = float(proc.num_fds())
                except psutil.AccessDenied:
                    fds = None
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            return False
        except psutil.AccessDenied:
            return True
        now = _Counters(cpu.user + cpu.system, float(ctx.voluntary + ctx.involuntary),
                        read_b, write_b, syscalls)
        prev = tracked.prev
        if (prev is None and self._prev_boot is not None
                and tracked.created + _CLOCK_TICK_S > self._prev_boot):
            # Born during the interval. Start times are whole clock ticks rounded down, so one
            # born within a tick after the previous collection may read as a little before it.
            prev = _Counters(0.0, 0.0, 0.0, 0.0, 0.0)
        tracked.prev = now
        target = tracked.target
        assert target is not None
        agg = aggs.get((target.app.app, target.instance))
        if agg is None:
            agg = aggs[target.app.app, target.instance] = _Agg(target.app, target.instance)
        agg.count += 1
        agg.rss += rss
        agg.threads += threads
        agg.fds = _add(agg.fds, fds)
        if target.cgroup is not None:
            agg.cgroups.add(target.cgroup)
        if prev is not None:
            agg.rated += 1
            agg.cpu_s += max(now.cpu_s - prev.cpu_s, 0.0)
            agg.ctx += max(now.ctx - prev.ctx, 0.0)
            agg.read_b = _add(agg.read_b, _delta(now.read_b, prev.read_b))
            agg.write_b = _add(agg.write_b, _delta(now.write_b, prev.write_b))
            agg.syscalls = _add(agg.syscalls, _delta(now.syscalls, prev.syscalls))
        return True

    # --- cgroups -----------------------------------------------------------------------------

    def _cgroup_stats(self, aggs: Iterable[_Agg]) -> dict[str, CgroupStats]:
        if self.cgroups is None:
            return {}
        paths = {p for agg in aggs for p in agg.cgroups}
        out: dict[str, CgroupStats] = {}
        for path in paths:
            stats = self.cgroups.read(path)
            if stats is not None:
                out[path] = stats
        return out

    def _reading(self, agg: _Agg, interval: float | None, cg_now: dict[str, CgroupStats],
                 host: dict[str, float]) -> Reading:
        cpu_s, rss, read_b, write_b = agg.cpu_s, agg.rss, agg.read_b, agg.write_b
        rated = agg.rated > 0
        capacity = dict(self._host_capacity)
        if agg.cgroups:
            now = [cg_now.get(p) for p in agg.cgroups]
            prev = [self._cg_prev.get(p) for p in agg.cgroups]
            if all(s is not None and s.mem_bytes is not None for s in now):
                rss = sum(s.mem_bytes or 0.0 for s in now if s is not None)
            cpu = _cgroup_delta(now, prev, "cpu_usec")
            if cpu is not None:
                cpu_s, rated = cpu / 1e6, True
            reads = _cgroup_delta(now, prev, "read_bytes")
            writes = _cgroup_delta(now, prev, "write_bytes")
            if reads is not None and writes is not None:
                read_b, write_b = reads, writes
            if len(now) == 1 and now[0] is not None:
                if now[0].cpu_limit_cores is not None:
                    capacity["cpu_cores"] = min(capacity["cpu_cores"], now[0].cpu_limit_cores)
                if now[0].mem_limit_bytes is not None:
                    capacity["mem_bytes"] = min(capacity["mem_bytes"], now[0].mem_limit_bytes)
        metrics: dict[str, float] = {"mem_bytes": rss, "proc.count": float(agg.count),
                                     "proc.threads": agg.threads}
        if agg.fds is not None:
            metrics["proc.open_files"] = agg.fds
        if interval and interval > 0 and rated:
            metrics["cpu_cores"] = cpu_s / interval
            metrics["proc.ctx_switches_rate"] = agg.ctx / interval
            if read_b is not None and write_b is not None:
                metrics["disk_read_bps"] = read_b / interval
                metrics["disk_write_bps"] = write_b / interval
            if agg.syscalls is not None:
                metrics["proc.syscalls_rate"] = agg.syscalls / interval
        if agg.app.net == "host" and interval and interval > 0 and "rx" in host:
            metrics["net_rx_bps"] = host["rx"] / interval
            metrics["net_tx_bps"] = host["tx"] / interval
        return Reading(agg.app.app, agg.instance, dict(agg.app.labels), metrics, capacity)

    # --- host --------------------------------------------------------------------------------

    def _host_delta(self, now: _HostCounters | None) -> dict[str, float]:
        prev = self._host_prev
        if now is None or prev is None:
            return {}
        out = {"busy_s": max(now.busy_s - prev.busy_s, 0.0), "rx": max(now.rx - prev.rx, 0.0),
               "tx": max(now.tx - prev.tx, 0.0), "ctx": max(now.ctx - prev.ctx, 0.0)}
        reads, writes = _delta(now.read_b, prev.read_b), _delta(now.write_b, prev.write_b)
        if reads is not None and writes is not None:
            out["read_b"], out["write_b"] = reads, writes
        return out

    def _host_reading(self, interval: float | None, delta: dict[str, float]) -> Reading:
        spec = self.config.host
        assert spec is not None
        vm = psutil.virtual_memory()
        metrics = {"mem_bytes": float(vm.total - vm.available)}
        metrics.update(_host_gauges())
        if interval and interval > 0 and delta:
            metrics["cpu_cores"] = delta["busy_s"] / interval
            metrics["net_rx_bps"] = delta["rx"] / interval
            metrics["net_tx_bps"] = delta["tx"] / interval
            metrics["proc.ctx_switches_rate"] = delta["ctx"] / interval
            if "read_b" in delta:
                metrics["disk_read_bps"] = delta["read_b"] / interval
                metrics["disk_write_bps"] = delta["write_b"] / interval
        instance = instance_id(spec.instance, hostname=self.config.hostname, app=spec.app)
        return Reading(spec.app, instance, dict(spec.labels), metrics, dict(self._host_capacity))


_CLOCK_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 0.01


def _since_boot() -> float:
    """Seconds since boot on the clock process start times use (suspend included)."""
    clock = getattr(time, "CLOCK_BOOTTIME", None)
    return time.clock_gettime(clock) if clock is not None else time.monotonic()


def _cgroup_delta(now: list[CgroupStats | None], prev: list[CgroupStats | None],
                  name: str) -> float | None:
    """Summed delta over an instance's cgroups, or None if any lacks the counter or a
    previous read (a cgroup seen for the first time has no interval yet)."""
    total = 0.0
    for a, b in zip(now, prev, strict=True):
        d = _delta(getattr(a, name, None), getattr(b, name, None))
        if d is None:
            return None
        total += d
    return total


def _host_counters() -> _HostCounters:
    t = psutil.cpu_times()
    # On Linux guest time is already inside user; idle and iowait are not work.
    busy = t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)
    nics = psutil.net_io_counters(pernic=True)
    rx = sum(c.bytes_recv for name, c in nics.items() if name != "lo")
    tx = sum(c.bytes_sent for name, c in nics.items() if name != "lo")
    read_b = write_b = None
    disks = psutil.disk_io_counters(perdisk=True) or {}
    whole = _whole_disks()
    if disks:
        # Partitions repeat their disk's bytes: keep whole devices when the kernel lists them.
        chosen = [c for n, c in disks.items() if not whole or n in whole]
        read_b = float(sum(c.read_bytes for c in chosen))
        write_b = float(sum(c.write_bytes for c in chosen))
    return _HostCounters(busy, read_b, write_b, float(rx), float(tx),
                         float(psutil.cpu_stats().ctx_switches))


def _whole_disks() -> set[str]:
    try:
        return {p.name for p in Path("/sys/block").iterdir()}
    except OSError:
        return set()


def _host_gauges() -> dict[str, float]:
    """Open file handles and threads on the whole host, from two cheap /proc files."""
    out: dict[str, float] = {}
    try:
        out["proc.open_files"] = float(Path("/proc/sys/fs/file-nr").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        pass
    try:
        out["proc.threads"] = float(Path("/proc/loadavg").read_text().split()[3].split("/")[1])
    except (OSError, ValueError, IndexError):
        pass
    return out
