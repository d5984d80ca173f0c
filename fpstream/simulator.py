"""A seeded, event-time fleet simulator: the wire messages a fleet of agents would send.

Six archetypes with distinct shapes over event time let a demo check that fingerprints
cluster by kind (``archetype_of``); deploy requests announce instances before they sample;
``bad_share`` mixes in malformed messages, each claiming the one reason the decoder gives it.
Pure and deterministic: the same arguments give the same bytes, and no wall clock is read.

>>> msgs = list(simulate(apps=6, minutes=5, seed=1, deploy_share=0.0))
>>> msgs[0].topic, msgs[0].ts - START_TS, summarize(msgs).bad
('metrics', 60.0, {})
>>> archetype_of("db-002")
'db'
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import orjson

from fpstream.events import DEFAULT_LIMITS, SCHEMA_VERSION, DeployRequest, encode

ARCHETYPES: tuple[str, ...] = ("web", "batch", "db", "cache", "queue", "idle")

#: Reasons ``bad_share`` cycles through: every decoder reason a producer can cause
#: (``unknown_kind`` needs an untyped topic and ``late`` is decided by the flow, not the codec).
INJECTABLE_REASONS: tuple[str, ...] = (
    "malformed_json", "not_object", "missing_field", "bad_type", "bad_id", "non_finite",
    "negative", "out_of_range", "too_large", "too_many_metrics", "too_many_labels",
    "unsupported_version",
)  # fmt: skip

START_TS = 1_767_571_200.0  # 2026-01-05T00:00:00Z, a Monday
GIB = float(1 << 30)

# Images, teams and tier per archetype: apps of one kind look alike, as in a real fleet.
_LABELS: dict[str, tuple[tuple[str, ...], tuple[str, ...], str]] = {
    "web": (("nginx-web:1.25", "shop-web:3.1"), ("storefront", "growth"), "frontend"),
    "batch": (("spark-etl:3.5", "nightly-report:1.8"), ("data-eng", "analytics"), "batch"),
    "db": (("postgres:15", "mysql:8"), ("dba", "payments"), "data"),
    "cache": (("redis:7.2", "memcached:1.6"), ("platform", "storefront"), "cache"),
    "queue": (("celery-worker:5.3", "sidekiq-worker:7.1"), ("fulfilment", "mail"), "worker"),
    "idle": (("ubuntu:22.04", "debian:12"), ("ops", "sandbox"), "infra"),
}  # fmt: skip
# Scale range (log-uniform) and peak (cpu cores, mem GiB) per unit of scale, noise included.
_SCALE = {"web": (0.5, 4), "batch": (0.5, 3), "db": (0.5, 4), "cache": (0.3, 3),
          "queue": (0.5, 3), "idle": (0.3, 1.5)}  # fmt: skip
_PEAK = {"web": (1.1, 1.1), "batch": (3.5, 3.3), "db": (0.75, 5.2), "cache": (0.22, 6.1),
         "queue": (1.9, 0.9), "idle": (0.05, 0.31)}  # fmt: skip
# Typical instance sizes (vCPU, GiB), cheapest first; capacity is the first that fits.
_SIZES = ((1, 2), (2, 4), (2, 8), (4, 8), (4, 16), (8, 16), (4, 32), (8, 32), (8, 64),
          (16, 64), (16, 128), (32, 128), (64, 256))  # fmt: skip


@dataclass(frozen=True, slots=True)
class SimMessage:
    """One message as a producer would send it; ``count`` is its valid samples (0 if bad)."""

    topic: Literal["metrics", "deploys"]
    key: bytes
    value: bytes
    ts: float
    bad_reason: str | None
    count: int


@dataclass(slots=True)
class SimSummary:
    """What a run produced, for a demo's or benchmark's report."""

    messages: int = 0
    samples: int = 0
    deploys: int = 0
    bad: dict[str, int] = field(default_factory=dict)


def archetype_of(app: str) -> str:
    """The archetype an app id was generated for (ids are ``<archetype>-<n>``)."""
    name = app.rsplit("-", 1)[0]
    if name not in ARCHETYPES:
        msg = f"app id {app!r} does not start with one of {ARCHETYPES}"
        raise ValueError(msg)
    return name


def summarize(messages: Iterable[SimMessage]) -> SimSummary:
    """Count messages, good samples, deploys and bad messages by reason."""
    out = SimSummary()
    for m in messages:
        out.messages += 1
        out.samples += m.count
        out.deploys += m.topic == "deploys"
        if m.bad_reason is not None:
            out.bad[m.bad_reason] = out.bad.get(m.bad_reason, 0) + 1
    return out


@dataclass(slots=True)
class _App:
    name: str
    labels: dict[str, str]
    scale: float
    phase_h: float
    instances: list[int] = field(default_factory=list)


@dataclass(slots=True)
class _Fleet:
    """Every app and instance of a run, future ones included; instances as parallel lists."""

    apps: list[_App] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    arch: list[str] = field(default_factory=list)
    scale: list[float] = field(default_factory=list)
    phase: list[float] = field(default_factory=list)
    born: list[float] = field(default_factory=list)  # event time the process started
    first_tick: list[int] = field(default_factory=list)
    capacity: list[dict[str, float]] = field(default_factory=list)
    deploys: dict[int, list[tuple[int, int]]] = field(default_factory=dict)  # tick -> (app, inst)

    def add_app(self, rng: np.random.Generator, arch: str) -> int:
        images, teams, tier = _LABELS[arch]
        labels = {"image": str(rng.choice(images)), "team": str(rng.choice(teams)), "tier": tier}
        lo, hi = _SCALE[arch]
        scale = math.exp(rng.uniform(math.log(lo), math.log(hi)))
        self.apps.append(_App(f"{arch}-{len(self.apps):03d}", labels, scale, rng.normal(0, 0.7)))
        return len(self.apps) - 1

    def add_instance(self, rng: np.random.Generator, a: int, first_tick: int, born: float) -> int:
        app = self.apps[a]
        arch = archetype_of(app.name)
        scale = app.scale * float(np.clip(rng.normal(1.0, 0.05), 0.85, 1.15))
        # Peak usage times a drawn headroom: fleets over-provision, some more than others.
        need = np.array(_PEAK[arch]) * scale * rng.uniform(1.1, 1.8)
        cpu, mem = next((s for s in _SIZES if s[0] >= need[0] and s[1] >= need[1]), _SIZES[-1])
        self.names.append(f"{app.name}-{len(app.instances)}")
        app.instances.append(len(self.names) - 1)
        self.arch.append(arch)
        self.scale.append(scale)
        self.phase.append(app.phase_h + rng.normal(0, 0.1))
        self.born.append(born)
        self.first_tick.append(first_tick)
        self.capacity.append({"cpu_cores": float(cpu), "mem_bytes": mem * GIB})
        return len(self.names) - 1


def _plan(
    rng: np.random.Generator, apps: int, ticks: int, interval_s: float, start_ts: float,
    deploy_share: float,
) -> _Fleet:  # fmt: skip
    """Draw the fleet: apps round-robin over archetypes, 1-4 instances, then deploys."""
    fleet = _Fleet()
    for n in range(apps):
        a = fleet.add_app(rng, ARCHETYPES[n % len(ARCHETYPES)])
        for _ in range(int(rng.integers(1, 5))):
            fleet.add_instance(rng, a, 1, start_ts - rng.uniform(0, 6 * 3600))

    def deploy(a: int) -> None:
        delay = max(1, math.ceil(rng.uniform(120, 300) / interval_s))
        if ticks - delay < 1:
            return
        at = int(rng.integers(1, ticks - delay + 1))
        i = fleet.add_instance(rng, a, at + delay, start_ts + (at + delay) * interval_s)
        fleet.deploys.setdefault(at, []).append((a, i))

    if apps and deploy_share > 0:
        chosen = rng.choice(apps, min(apps, max(1, round(apps * deploy_share))), replace=False)
        for a in sorted(chosen.tolist()):
            deploy(a)
    if ticks * interval_s >= 20 * 60:  # a brand-new app of a known kind: the cold-start case
        deploy(fleet.add_app(rng, ARCHETYPES[apps % len(ARCHETYPES)]))
    return fleet


@dataclass(frozen=True, slots=True)
class _Tick:
    """What an archetype's shape sees at one tick, as arrays over its own instances."""

    hour: float  # UTC hour of day, 0..24
    dt_min: float  # sampling interval in minutes
    s: np.ndarray  # scale
    ph: np.ndarray  # phase, hours
    age_h: np.ndarray  # hours since the process started
    e: np.ndarray  # standard normal noise, 6 columns
    u: np.ndarray  # uniform noise, 2 columns
    q: np.ndarray  # queue backlog, updated in place

    def jit(self, x: np.ndarray, col: int, sigma: float) -> np.ndarray:
        """Multiplicative noise that never flips a value negative."""
        return x * np.maximum(1.0 + sigma * self.e[:, col], 0.05)

    def diurnal(self) -> np.ndarray:
        """0 at about 03:00, 1 at about 15:00, shifted by the app's phase."""
        return 0.5 + 0.5 * np.sin(2 * np.pi * (self.hour - 9.0 - self.ph) / 24.0)


Cols = dict[str, np.ndarray]


def _gauges(cpu: np.ndarray, mem: np.ndarray, dr: np.ndarray, dw: np.ndarray, rx: np.ndarray,
            tx: np.ndarray, extra: Cols | None = None, files: Any = None) -> Cols:  # fmt: skip
    """Core gauges in contract order, app.* extras, then proc.* figures driven by CPU."""
    out = {"cpu_cores": cpu, "mem_bytes": mem, "disk_read_bps": dr, "disk_write_bps": dw,
           "net_rx_bps": rx, "net_tx_bps": tx, **(extra or {})}  # fmt: skip
    if files is not None:
        out["proc.open_files"] = np.round(np.broadcast_to(files, cpu.shape))
        out["proc.syscalls_rate"] = 300 + 8000 * cpu
        out["proc.ctx_switches_rate"] = 100 + 1500 * cpu
    return out


def _web(t: _Tick) -> Cols:
    """Requests follow the day; CPU, memory and network follow requests."""
    s, req = t.s, t.jit(120 * t.s * (0.12 + 0.88 * t.diurnal()), 0, 0.08)
    cpu, mem = t.jit(0.04 * s + 0.006 * req, 1, 0.05), t.jit(0.5 * GIB * s + 4e6 * req, 2, 0.01)
    logs = t.jit(7.5e4 * s + 600 * req, 3, 0.1)
    return _gauges(cpu, mem, 2e4 * s, logs, 1.5e3 * req, 1.5e4 * req, {"app.req_rate": req},
                   files=80 + req / 2)  # fmt: skip


def _batch(t: _Tick) -> Cols:
    """Idle by day; a ~2 h CPU- and disk-heavy job starting between 01:00 and 02:30."""
    s, start = t.s, 1.0 + t.ph % 1.5
    on = np.clip(np.minimum(t.hour - start, start + 2.0 - t.hour) / 0.25, 0.0, 1.0)
    cpu, mem = t.jit(0.02 * s + 3.0 * s * on, 1, 0.05), t.jit((0.25 + 3.0 * on) * GIB * s, 2, 0.01)
    dr, dw = t.jit(1e4 * s + 6e7 * s * on, 3, 0.1), t.jit(5e3 * s + 3e7 * s * on, 4, 0.1)
    return _gauges(cpu, mem, dr, dw, t.jit(5e3 * s + 5e6 * s * on, 5, 0.1), 3e3 * s + 1e6 * s * on,
                   files=30 + 400 * on)  # fmt: skip


def _db(t: _Tick) -> Cols:
    """Steady load, memory growing slowly as buffer pool and caches fill, query latency."""
    s, load = t.s, t.jit(0.7 + 0.3 * t.diurnal(), 0, 0.04)
    grown = 0.8 + 0.25 * (1.0 - np.exp(-t.age_h / 12.0))
    cpu, mem = t.jit(0.6 * s * load, 1, 0.05), t.jit(4 * GIB * s * grown, 2, 0.003)
    dr, dw = t.jit(4e6 * s * load, 3, 0.1), t.jit(2.5e6 * s * load, 4, 0.1)
    latency = {"app.db_query_ms": t.jit(3.0 + 4.0 * load**2, 5, 0.1)}
    return _gauges(cpu, mem, dr, dw, 8e5 * s * load, 2e6 * s * load, latency, files=400 + 200 * s)


def _cache(t: _Tick) -> Cols:
    """Flat, high memory; network-heavy, little CPU, next to no disk."""
    s, load = t.s, t.jit(0.6 + 0.4 * t.diurnal(), 0, 0.05)
    cpu, mem = t.jit(0.15 * s * load, 1, 0.08), t.jit(6 * GIB * s, 2, 0.003)
    rx, tx = t.jit(1.5e7 * s * load, 3, 0.05), t.jit(4.5e7 * s * load, 4, 0.05)
    ops = {"app.req_rate": 4000 * s * load}
    return _gauges(cpu, mem, np.zeros_like(s), 1e3 * s, rx, tx, ops, files=1000)


def _queue(t: _Tick) -> Cols:
    """Bursts of work land in a backlog; workers drain it at a fixed rate, CPU follows."""
    s = t.s
    burst = (t.u[:, 0] < 0.08 * t.dt_min) * t.u[:, 1] * 1500 * s
    arrive, drain = t.jit(20 * s * t.dt_min, 0, 0.2) + burst, 200 * s * t.dt_min
    done = np.minimum(t.q + arrive, drain)
    t.q[...] = t.q + arrive - done
    busy = done / drain
    cpu, mem = t.jit(0.05 * s + 1.6 * s * busy, 1, 0.05), t.jit(0.6 * GIB * s + 5e4 * t.q, 2, 0.01)
    backlog = {"app.queue_len": np.round(t.q)}
    return _gauges(cpu, mem, 1e5 * s * busy, t.jit(3e5 * s * busy, 3, 0.1),
                   5e4 * s + 3e6 * s * busy, 2e6 * s * busy, backlog, files=60)  # fmt: skip


def _idle(t: _Tick) -> Cols:
    """A VM nobody uses: a trickle of everything."""
    s = t.s
    return _gauges(t.jit(0.02 * s, 1, 0.3), t.jit(0.3 * GIB * s, 2, 0.01), t.jit(2e3 * s, 3, 0.3),
                   t.jit(4e3 * s, 4, 0.3), 1e3 * s, 8e2 * s)  # fmt: skip


_SHAPES = {"web": _web, "batch": _batch, "db": _db, "cache": _cache, "queue": _queue, "idle": _idle}


def simulate(
    apps: int = 50, minutes: float = 30, interval_s: float = 60.0, seed: int = 42,
    bad_share: float = 0.0, deploy_share: float = 0.05, start_ts: float = START_TS,
    batch: bool = True,
) -> Iterator[SimMessage]:  # fmt: skip
    """Yield the fleet's messages in event-time order; deploys come before their samples.

    With ``batch`` a metrics message is the JSON array of one app's samples at one tick,
    else one sample. ``bad_share`` of the metrics messages are replaced by malformed ones.
    """
    if apps < 0 or minutes < 0 or interval_s <= 0 or not 0.0 <= bad_share <= 1.0:
        msg = (f"need apps >= 0, minutes >= 0, interval_s > 0 and 0 <= bad_share <= 1, "
               f"got {apps=}, {minutes=}, {interval_s=}, {bad_share=}")  # fmt: skip
        raise ValueError(msg)
    # Separate streams so that bad_share or deploys never change the good samples' values.
    plan_rng, tick_rng, bad_rng = map(np.random.default_rng, np.random.SeedSequence(seed).spawn(3))
    ticks = int(round(minutes * 60 / interval_s))
    fleet = _plan(plan_rng, apps, ticks, interval_s, start_ts, deploy_share)
    n = len(fleet.names)
    scale, phase, born = np.array(fleet.scale), np.array(fleet.phase), np.array(fleet.born)
    cap_cpu = np.array([c["cpu_cores"] for c in fleet.capacity])
    cap_mem = np.array([c["mem_bytes"] * 0.95 for c in fleet.capacity])  # leave the kernel room
    groups = [(arch, np.flatnonzero(np.array(fleet.arch) == arch)) for arch in ARCHETYPES]
    backlog = np.zeros(n)
    names, capacity = fleet.names, fleet.capacity
    keys = [app.name.encode() for app in fleet.apps]
    running: list[list[int]] = [[] for _ in fleet.apps]  # instances sampling, per app
    starts: dict[int, list[tuple[int, int]]] = {}
    for a, app in enumerate(fleet.apps):
        for i in app.instances:
            starts.setdefault(fleet.first_tick[i], []).append((a, i))
    n_bad = 0
    for k in range(1, ticks + 1):
        ts = start_ts + k * interval_s
        for a, i in starts.get(k, []):
            running[a].append(i)
        for a, i in fleet.deploys.get(k, []):
            app = fleet.apps[a]
            req = DeployRequest(ts, app.name, fleet.names[i], app.labels, fleet.capacity[i])
            yield SimMessage("deploys", keys[a], encode(req), ts, None, 0)
        hour = (ts % 86_400.0) / 3600.0
        noise, unif = tick_rng.standard_normal((n, 6)), tick_rng.random((n, 2))
        metrics: list[dict[str, float]] = [{}] * n
        for arch, idx in groups:
            if not len(idx):
                continue
            tick = _Tick(hour, interval_s / 60, scale[idx], phase[idx], (ts - born[idx]) / 3600,
                         noise[idx], unif[idx], backlog[idx])  # fmt: skip
            cols = _SHAPES[arch](tick)
            backlog[idx] = tick.q
            cols["cpu_cores"] = np.minimum(cols["cpu_cores"], cap_cpu[idx])
            cols["mem_bytes"] = np.minimum(cols["mem_bytes"], cap_mem[idx])
            table = np.empty((len(idx), len(cols)))
            for c, values in enumerate(cols.values()):
                table[:, c] = values
            np.clip(table, 0.0, 1e15, out=table)
            # Bytes and rates need no decimals; cores and milliseconds keep three.
            rows = np.where(table >= 1000.0, np.round(table), np.round(table, 3)).tolist()
            fields = tuple(cols)
            for j, row in zip(idx.tolist(), rows, strict=True):
                metrics[j] = dict(zip(fields, row, strict=True))
        units: list[tuple[int, list[dict[str, Any]]]] = []
        for a, app in enumerate(fleet.apps):
            if not running[a]:
                continue
            samples = [
                {"ts": ts, "app": app.name, "instance": names[i], "metrics": metrics[i],
                 "interval_s": interval_s, "labels": app.labels, "capacity": capacity[i],
                 "v": SCHEMA_VERSION}
                for i in running[a]
            ]  # fmt: skip
            units.extend([(a, samples)] if batch else ((a, [x]) for x in samples))
        draws = bad_rng.random(len(units)) if bad_share > 0 else np.ones(len(units))
        bad = (draws < bad_share).tolist()
        for (a, samples), is_bad in zip(units, bad, strict=True):
            if is_bad:
                reason = INJECTABLE_REASONS[n_bad % len(INJECTABLE_REASONS)]
                n_bad += 1
                yield SimMessage("metrics", keys[a], bad_message(reason, samples[0]), ts, reason, 0)
            else:
                value = orjson.dumps(samples if batch else samples[0])
                yield SimMessage("metrics", keys[a], value, ts, None, len(samples))


@functools.cache
def _padding() -> str:
    return "x" * (DEFAULT_LIMITS.max_message_bytes + 100_000)


# How each reason is produced: the faults real agents and producers make.
_EDITS: dict[str, Callable[[dict[str, Any]], object]] = {
    "missing_field": lambda d: d.pop("instance"),
    "bad_type": lambda d: d.update(ts="2026-01-05T00:01:00Z"),  # ISO text, not a number
    "bad_id": lambda d: d.update(instance=f"{d['instance']} #2"),  # spaces are not allowed
    "negative": lambda d: d["metrics"].update(net_rx_bps=-4096.0),  # a counter that wrapped
    "out_of_range": lambda d: d.update(ts=d["ts"] * 1000.0),  # milliseconds, not seconds
    "too_large": lambda d: d.update(debug=_padding()),  # over the 1 MiB message limit
    "too_many_metrics": lambda d: d["metrics"].update({f"custom.m{i}": 1.0 for i in range(80)}),
    "too_many_labels": lambda d: d["labels"].update({f"k8s.label{i}": "x" for i in range(40)}),
    "unsupported_version": lambda d: d.update(v=2),
}


def bad_message(reason: str, sample: Mapping[str, Any]) -> bytes:
    """A malformed variant of ``sample`` that ``decode_message`` refuses with ``reason``.

    Always a single object (never a batch) so the decoder reports exactly one error.
    """
    doc = {**sample, "metrics": dict(sample["metrics"]), "labels": dict(sample.get("labels") or {})}
    if reason == "malformed_json":
        return orjson.dumps(doc)[:-9]  # a producer cut off mid-write
    if reason == "not_object":  # an agent speaking a line protocol inside a JSON string
        return orjson.dumps(f"cpu,app={doc['app']} value={doc['metrics'].get('cpu_cores', 0)}")
    if reason == "non_finite":  # orjson has no NaN; an overflowing literal parses to inf
        doc["metrics"]["cpu_cores"] = 1.0
        return orjson.dumps(doc).replace(b'"cpu_cores":1.0', b'"cpu_cores":1e999', 1)
    if reason not in _EDITS:
        msg = f"cannot inject reason {reason!r}, expected one of {INJECTABLE_REASONS}"
        raise ValueError(msg)
    _EDITS[reason](doc)
    return orjson.dumps(doc)
