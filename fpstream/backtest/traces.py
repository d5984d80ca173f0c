"""Trace readers: one ``Series`` of numpy arrays per VM, from Bitbrains, PlanetLab or a recorded
stream of wire-contract samples (``read_bitbrains``, ``read_planetlab``, ``read_jsonl``).

A trace may lack a resource (PlanetLab has CPU only) or the manual allocation (a recorded stream
without ``capacity``): the ``Series`` field is then ``None`` and the backtest omits what it cannot
score, rather than inventing it.

Bitbrains GWA-T-12:

A file is ``;``-separated, each separator followed by a tab, with one header row (gzip or plain).
The "Timestamp [ms]" column holds Unix seconds. What cannot be used is skipped and counted in
``skipped`` by reason, never dropped silently:

- ``empty_row``: rows with 0 cores *and* 0 MHz and 0 KB provisioned, the trace's "no data" rows
  (the VM was not reporting: everything is 0, usage included).
- ``zero_cores``: rows with 0 cores but a CPU capacity in MHz: their per-core MHz is taken from
  the VM's own rows with cores (the median); if the VM has none, such rows are skipped.
- ``no_cpu_capacity``: rows with cores but 0 MHz provisioned (no per-core clock to use).
- ``no_mem_capacity``: rows with 0 KB of memory provisioned (nothing to compare usage with).
- ``duplicate_ts``, ``unsorted_ts``: a repeated or backwards timestamp; the first row is kept.
- ``bad_row``: a row that does not parse as 11 finite non-negative numbers.
- ``empty_series``: a file with no usable row left.

>>> import io
>>> text = ("Timestamp [ms];\\tCPU cores;\\tCPU capacity provisioned [MHZ];\\tCPU usage [MHZ];\\t"
...         "CPU usage [%];\\tMemory capacity provisioned [KB];\\tMemory usage [KB];\\tDisk read "
...         "throughput [KB/s];\\tDisk write throughput [KB/s];\\tNetwork received throughput "
...         "[KB/s];\\tNetwork transmitted throughput [KB/s]\\n"
...         "1372629804;\\t2;\\t5200.0;\\t1300.0;\\t25.0;\\t1024.0;\\t512.0;\\t0;\\t0;\\t0;\\t0\\n")
>>> s = parse_series("vm-1", io.StringIO(text), Counter())
>>> float(s.cpu[0]), float(s.cpu_cap[0]), float(s.mem[0])
(0.5, 2.0, 524288.0)
"""

from __future__ import annotations

import gzip
import math
import re
import tarfile
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple, TextIO

import numpy as np
import orjson

from fpstream.events import MetricSample, decode_message
from fpstream.records import decode_line, open_records

__all__ = ["FORMATS", "Series", "VmDay", "bitbrains_files", "parse_range", "parse_series",
           "planetlab_vm_days", "read_bitbrains", "read_jsonl", "read_planetlab", "read_trace",
           "split_host_slice"]

FORMATS: tuple[str, ...] = ("bitbrains", "planetlab", "jsonl")
PathLike = Path | str

_NCOLS = 11
KB = 1024.0


@dataclass(frozen=True, slots=True)
class Series:
    """One VM: strictly increasing Unix-second ``ts`` and, per step, usage and capacity.

    ``cpu`` and ``cpu_cap`` are cores; ``mem`` and ``mem_cap`` bytes; the I/O rates bytes/s.
    A field the trace does not have is ``None``. ``app`` and ``instance`` are what the flow is
    fed (both ``name`` when empty); ``labels`` go with every sample; ``day`` is, per step, the
    index of the trace day it comes from (PlanetLab); ``step_s`` is the trace's native step.
    """

    name: str
    ts: np.ndarray
    cpu: np.ndarray
    cpu_cap: np.ndarray | None = None
    mem: np.ndarray | None = None
    mem_cap: np.ndarray | None = None
    disk_read: np.ndarray | None = None
    disk_write: np.ndarray | None = None
    net_rx: np.ndarray | None = None
    net_tx: np.ndarray | None = None
    labels: dict[str, str] = field(default_factory=dict)
    day: np.ndarray | None = None
    app: str = ""
    instance: str = ""
    step_s: float = 300.0

    def __len__(self) -> int:
        return len(self.ts)

    @property
    def key(self) -> tuple[str, str]:
        """(app, instance) as the flow sees them."""
        return (self.app or self.name, self.instance or self.name)

    def usage(self, resource: str) -> np.ndarray | None:
        """Usage of ``cpu`` or ``mem``; ``None`` when the trace lacks it."""
        return {"cpu": self.cpu, "mem": self.mem}[resource]

    def capacity(self, resource: str) -> np.ndarray | None:
        """The manual allocation of ``cpu`` or ``mem``; ``None`` when the trace lacks it."""
        return {"cpu": self.cpu_cap, "mem": self.mem_cap}[resource]

    def head(self, seconds: float) -> Series:
        """The series' steps less than ``seconds`` after its first.

        >>> s = Series("vm", np.arange(4) * 300.0, np.ones(4), mem=np.zeros(4))
        >>> h = s.head(600.0)
        >>> h.ts.tolist(), h.mem.tolist(), h.cpu_cap is None
        ([0.0, 300.0], [0.0, 0.0], True)
        """
        keep = self.ts < (self.ts[0] + seconds if len(self.ts) else 0.0)
        return replace(self, **{f.name: getattr(self, f.name)[keep] for f in fields(self)
                                if isinstance(getattr(self, f.name), np.ndarray)})


def bitbrains_files(path: Path | str) -> list[Path]:
    """The VM files under ``path`` (the trace folder, its ``vms/`` folder, or one file), in
    numeric order of their names (1, 2, ..., 10, not 1, 10, 100)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if (path / "vms").is_dir():
        path = path / "vms"
    if not path.is_dir():
        raise FileNotFoundError(f"no Bitbrains trace at {path}: expected a folder of N.csv(.gz)")
    files = [p for p in path.iterdir() if p.name.endswith((".csv", ".csv.gz"))]

    def key(p: Path) -> tuple[int, str]:
        m = re.match(r"(\d+)", p.name)
        return (int(m.group(1)) if m else math.inf, p.name)  # type: ignore[return-value]

    return sorted(files, key=key)


def read_bitbrains(path: Path | str, limit: int | None = None,
                   skipped: Counter[str] | None = None) -> Iterator[Series]:
    """Yield up to ``limit`` usable VM series from a Bitbrains folder, counting what it skips."""
    skipped = skipped if skipped is not None else Counter()
    n = 0
    for file in bitbrains_files(path):
        if limit is not None and n >= limit:
            return
        name = "vm-" + file.name.split(".")[0]
        opener = gzip.open if file.name.endswith(".gz") else open
        with opener(file, "rt", encoding="utf-8", errors="replace") as f:  # type: ignore[operator]
            series = parse_series(name, f, skipped)
        if series is None:
            skipped["empty_series"] += 1
            continue
        n += 1
        yield series


def parse_series(name: str, f: TextIO, skipped: Counter[str]) -> Series | None:
    """Parse one VM file; ``None`` when no row is usable."""
    next(f, None)  # header
    a = _rows(f, skipped)
    if not len(a):
        return None
    ts, cores, cap_mhz, use_mhz = a[:, 0], a[:, 1], a[:, 2], a[:, 3]
    empty = (cores == 0) & (cap_mhz == 0) & (a[:, 5] == 0)
    skipped["empty_row"] += int(empty.sum())
    keep = ~empty
    with_cores = keep & (cores > 0)
    zero_cores = keep & (cores == 0)
    if zero_cores.any():
        if with_cores.any():
            # Per-core MHz is the host CPU's clock: constant for a VM in this trace.
            per_core = float(np.median(cap_mhz[with_cores] / cores[with_cores]))
            cores = np.where(zero_cores, cap_mhz / per_core, cores)
        else:
            skipped["zero_cores"] += int(zero_cores.sum())
            keep &= ~zero_cores
    no_cpu = keep & (cap_mhz == 0)
    skipped["no_cpu_capacity"] += int(no_cpu.sum())
    keep &= ~no_cpu
    no_mem = keep & (a[:, 5] == 0)
    skipped["no_mem_capacity"] += int(no_mem.sum())
    keep &= ~no_mem
    idx = np.flatnonzero(keep)
    if not len(idx):
        return None
    # Strictly increasing time: keep a row only if it is newer than every row kept before it.
    t = ts[idx]
    prev_max = np.maximum.accumulate(np.concatenate(([-np.inf], t[:-1])))
    dup = t == prev_max
    back = t < prev_max
    skipped["duplicate_ts"] += int(dup.sum())
    skipped["unsorted_ts"] += int(back.sum())
    idx = idx[~(dup | back)]
    per_core_mhz = cap_mhz[idx] / cores[idx]
    return Series(
        name=name,
        ts=ts[idx].astype(np.int64),
        cpu=use_mhz[idx] / per_core_mhz,
        cpu_cap=cores[idx].astype(np.float64),
        mem=a[idx, 6] * KB,
        mem_cap=a[idx, 5] * KB,
        disk_read=a[idx, 7] * KB,
        disk_write=a[idx, 8] * KB,
        net_rx=a[idx, 9] * KB,
        net_tx=a[idx, 10] * KB,
    )


def _rows(lines: Iterable[str], skipped: Counter[str]) -> np.ndarray:
    out: list[list[float]] = []
    for line in lines:
        if not line.strip():
            continue
        parts = line.split(";")
        try:
            row = [float(p) for p in parts]
        except ValueError:
            skipped["bad_row"] += 1
            continue
        if len(row) != _NCOLS or not all(math.isfinite(v) and v >= 0 for v in row):
            skipped["bad_row"] += 1
            continue
        out.append(row)
    return np.array(out, dtype=np.float64).reshape(-1, _NCOLS)


# -- PlanetLab CoMon ---------------------------------------------------------------------------

_GENERIC_TLDS = frozenset({"com", "net", "org", "edu", "gov", "mil", "int", "info", "biz",
                           "arpa", "name", "pro", "aero", "coop", "museum"})
# A character outside the id grammar, or dots that would make a '..'.
_BAD_ID_CHARS = re.compile(r"[^A-Za-z0-9._:@-]|\.\.+")
PLANETLAB_STEP_S = 300.0
PLANETLAB_STEPS = 288


class VmDay(NamedTuple):
    """One PlanetLab file: a VM's day of CPU usage in cores (``day`` is ``YYYYMMDD``)."""

    day: str
    host: str
    slice: str
    cpu: np.ndarray


def _canonical(name: str) -> str:
    """A file name as an identifier: a few files have a space after the host's ``_``
    (``host_ rnp_dcc_ufjf``); the slice is the same as without it."""
    return _BAD_ID_CHARS.sub("-", re.sub(r"_\s+", "_", name.strip()))


def _looks_like_tld(token: str) -> bool:
    token = token.lower()
    return token in _GENERIC_TLDS or (len(token) == 2 and token.isalpha())


def split_host_slice(names: Iterable[str], min_hosts: int = 2
                     ) -> tuple[dict[str, tuple[str, str]], Counter[str]]:
    """Split PlanetLab file names ``<host>_<slice>`` (both may hold ``_``) into (host, slice).

    The host is a DNS name with ``.`` written ``_``, so it ends in a top-level-domain token
    (``edu``, ``org``, a two-letter country code): only those splits are candidates. A slice
    runs on many hosts, so among the candidates the slice is the suffix found on the most
    distinct hosts; of suffixes on equally many hosts (``oneswarm`` and ``uw_oneswarm`` always
    come together) the longest. A suffix on fewer than ``min_hosts`` hosts confirms nothing;
    then a host confirmed by two or more recurring slices decides, else the longest
    DNS-looking host. Why not "the longest suffix shared by several hosts": ``edu_uw_oneswarm``
    is shared by every ``.edu`` host of ``uw_oneswarm``.

    The counter holds ``slice_single_host`` (the slice is on fewer than ``min_hosts`` hosts:
    the split rests on the host alone) and ``slice_ambiguous`` (neither a recurring slice nor
    a confirmed host decided: the split is the TLD rule's guess).

    >>> names = ["pl1_cs_a_edu_uw_oneswarm", "pl2_b_org_uw_oneswarm", "pl1_cs_a_edu_root",
    ...          "pl2_b_org_root", "pl1_cs_a_edu_x_y"]
    >>> split, counts = split_host_slice(names)
    >>> split["pl1_cs_a_edu_uw_oneswarm"], split["pl1_cs_a_edu_x_y"], counts["slice_ambiguous"]
    (('pl1_cs_a_edu', 'uw_oneswarm'), ('pl1_cs_a_edu', 'x_y'), 0)
    """
    if min_hosts < 1:
        raise ValueError(f"min_hosts must be >= 1, got {min_hosts!r}")
    canonical = {n: _canonical(n) for n in names}
    candidates: dict[str, list[tuple[str, str]]] = {}
    hosts_of: defaultdict[str, set[str]] = defaultdict(set)
    for c in set(canonical.values()):
        splits = [(c[:i], c[i + 1:]) for i, ch in enumerate(c) if ch == "_" and 0 < i < len(c) - 1]
        dns = [(h, s) for h, s in splits if _looks_like_tld(h.rsplit("_", 1)[-1])]
        candidates[c] = dns or splits
        for h, s in candidates[c]:
            hosts_of[s].add(h)
    confident: dict[str, tuple[str, str]] = {}
    for c, cands in candidates.items():
        if cands:
            most = max(len(hosts_of[s]) for _, s in cands)
            if most >= min_hosts:
                confident[c] = max((hs for hs in cands if len(hosts_of[hs[1]]) == most),
                                   key=lambda hs: len(hs[1]))
    slices_of: defaultdict[str, set[str]] = defaultdict(set)
    for h, s in confident.values():
        slices_of[h].add(s)
    known = {h for h, ss in slices_of.items() if len(ss) >= 2}
    counts: Counter[str] = Counter()
    chosen: dict[str, tuple[str, str]] = {}
    for c, cands in candidates.items():
        if not cands:
            continue
        on_known = [hs for hs in cands if hs[0] in known]
        if c in confident and confident[c][0] in known:
            chosen[c] = confident[c]
        elif on_known:
            chosen[c] = max(on_known, key=lambda hs: len(hs[0]))
            if len(on_known) > 1:
                counts["slice_ambiguous"] += 1
        elif c in confident:
            chosen[c] = confident[c]
        else:
            chosen[c] = min(cands, key=lambda hs: len(hs[1]))
            counts["slice_ambiguous"] += 1
        if len(hosts_of[chosen[c][1]]) < min_hosts:
            counts["slice_single_host"] += 1
    return {n: chosen[c] for n, c in canonical.items() if c in chosen}, counts


def _as_paths(paths: PathLike | Sequence[PathLike]) -> list[Path]:
    if isinstance(paths, str | Path):
        return [Path(paths)]
    return [Path(p) for p in paths]


def _planetlab_files(paths: Sequence[Path], skipped: Counter[str]
                     ) -> list[tuple[str, str, np.ndarray]]:
    """(day ``YYYYMMDD``, file name, CPU %) of every file of the tar archives, read in place."""
    out: list[tuple[str, str, np.ndarray]] = []
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"no PlanetLab archive at {path}: expected a .tar.gz")
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                day, _, name = member.name.rpartition("/")
                day = day.rsplit("/", 1)[-1]
                if not re.fullmatch(r"\d{8}", day) or not name:
                    skipped["planetlab_not_a_vm_file"] += 1
                    continue
                f = tar.extractfile(member)
                if f is None:
                    skipped["planetlab_not_a_vm_file"] += 1
                    continue
                try:
                    pct = np.array(f.read().split(), dtype=np.float64)
                except ValueError:
                    skipped["planetlab_bad_file"] += 1
                    continue
                if len(pct) != PLANETLAB_STEPS or not (np.isfinite(pct).all() and (pct >= 0).all()):
                    skipped["planetlab_bad_file"] += 1
                    continue
                out.append((day, name, pct))
    return out


def _day_start(day: str) -> float:
    return datetime.strptime(day, "%Y%m%d").replace(tzinfo=UTC).timestamp()


def planetlab_vm_days(paths: PathLike | Sequence[PathLike],
                      skipped: Counter[str] | None = None) -> list[VmDay]:
    """Every PlanetLab VM-day (one file) of the archives, by day then host then slice: the
    unit of a cold-start evaluation (a VM's first day, predicted from the others)."""
    skipped = skipped if skipped is not None else Counter()
    files = _planetlab_files(_as_paths(paths), skipped)
    split, counts = split_host_slice({name for _, name, _ in files})
    skipped.update({f"planetlab_{k}": v for k, v in counts.items()})
    days = [VmDay(day, *split[name], pct / 100.0) for day, name, pct in files if name in split]
    if len(days) < len(files):
        skipped["planetlab_unsplit_name"] += len(files) - len(days)
    days.sort(key=lambda d: (d.day, d.host, d.slice))
    return days


def read_planetlab(paths: PathLike | Sequence[PathLike], limit: int | None = None,
                   skipped: Counter[str] | None = None) -> Iterator[Series]:
    """Yield up to ``limit`` PlanetLab series (in name order): one per host x slice, its days
    concatenated in time order.

    CPU is in cores taking 1 core as 100 %, so ``cpu_cap`` is 1 core (a PlanetLab slice shares
    its host's CPU and the trace gives no per-slice limit; 100 % is the most one sample can
    show). Memory and I/O are not in the trace. A step's ``ts`` is the end of its 5-minute
    interval from 00:00 UTC of the file's day; the days need not be consecutive (the published
    sample has gaps), and a gap stays a gap in ``ts``. ``day`` indexes the archives' sorted
    days; ``labels`` are the host and the slice, found by ``split_host_slice`` (its counts are
    added to ``skipped`` as ``planetlab_slice_*``).
    """
    skipped = skipped if skipped is not None else Counter()
    vm_days = planetlab_vm_days(paths, skipped)
    day_index = {d: i for i, d in enumerate(sorted({v.day for v in vm_days}))}
    by_vm: defaultdict[tuple[str, str], list[VmDay]] = defaultdict(list)
    for v in vm_days:
        by_vm[(v.host, v.slice)].append(v)
    step = np.arange(1, PLANETLAB_STEPS + 1, dtype=np.int64) * int(PLANETLAB_STEP_S)
    n = 0
    for (host, slice_), parts in sorted(by_vm.items(), key=lambda kv: f"{kv[0][0]}_{kv[0][1]}"):
        if limit is not None and n >= limit:
            return
        parts.sort(key=lambda v: v.day)
        unique = [v for i, v in enumerate(parts) if i == 0 or v.day != parts[i - 1].day]
        if len(unique) < len(parts):
            skipped["planetlab_duplicate_day"] += len(parts) - len(unique)
        parts = unique
        ts = np.concatenate([int(_day_start(v.day)) + step for v in parts])
        cpu = np.concatenate([v.cpu for v in parts])
        n += 1
        yield Series(
            name=f"{host}_{slice_}", ts=ts, cpu=cpu, cpu_cap=np.ones(len(ts)),
            labels={"slice": slice_, "host": host},
            day=np.repeat([day_index[v.day] for v in parts], PLANETLAB_STEPS),
            step_s=PLANETLAB_STEP_S)


# -- recorded stream (wire contract) -----------------------------------------------------------

_JSONL_FIELDS: dict[str, str] = {"cpu": "cpu_cores", "mem": "mem_bytes",
                                 "disk_read": "disk_read_bps", "disk_write": "disk_write_bps",
                                 "net_rx": "net_rx_bps", "net_tx": "net_tx_bps"}


def _filled(values: np.ndarray, skipped: Counter[str], what: str) -> np.ndarray | None:
    """``None`` if no step has a value; else the gaps (NaN) filled with the last value before
    them (the first value for leading gaps), counted as ``jsonl_filled_<what>``."""
    have = ~np.isnan(values)
    if not have.any():
        return None
    if have.all():
        return values
    skipped[f"jsonl_filled_{what}"] += int((~have).sum())
    idx = np.where(have, np.arange(len(values)), 0)
    np.maximum.accumulate(idx, out=idx)
    first = int(np.argmax(have))
    out = values[idx]
    out[:first] = values[first]
    return out


def _recorded_value(line: bytes) -> bytes | None:
    """The message in a line: the line itself, or the value of an ``fpstream record`` line
    (an object with ``offset`` and ``value`` or ``value_b64``)."""
    if b'"offset"' not in line:
        return line
    try:
        doc = orjson.loads(line)
    except orjson.JSONDecodeError:
        return line  # decode_message says what is wrong with it
    if not (isinstance(doc, dict) and "offset" in doc
            and ("value" in doc or "value_b64" in doc)):
        return line
    try:
        return decode_line(line).value
    except ValueError:
        return line


def read_jsonl(paths: PathLike | Sequence[PathLike], limit: int | None = None,
               skipped: Counter[str] | None = None) -> Iterator[Series]:
    """Yield up to ``limit`` series, one per (app, instance) in order of first appearance, from
    recorded metric messages: one JSON object or array of objects per line (the wire
    contract), or the message lines ``fpstream record`` writes (their values are decoded);
    ``.gz`` and ``.zst`` files too.

    Every line goes through ``decode_message``, so what the flow would dead-letter is skipped
    here and counted as ``jsonl_<reason>``; samples without ``cpu_cores`` are skipped
    (``jsonl_no_cpu``), as are repeated or backwards timestamps of an instance
    (``duplicate_ts``, ``unsorted_ts``). A resource, or its ``capacity`` (the manual
    allocation), that no sample of a series has is ``None``; gaps are filled (``_filled``).
    ``step_s`` is the median ``interval_s``. Labels are merged over the samples, the
    latest value of a label winning.

    >>> import tempfile, os
    >>> d = tempfile.mkdtemp(); p = os.path.join(d, "m.jsonl")
    >>> _ = open(p, "w").write('{"v":1,"ts":1.7e9,"app":"a","instance":"i","interval_s":60,'
    ...                        '"metrics":{"cpu_cores":0.5}}\\n')
    >>> s = next(read_jsonl(p)); (s.key, float(s.cpu[0]), s.mem, s.cpu_cap)
    (('a', 'i'), 0.5, None, None)
    """
    skipped = skipped if skipped is not None else Counter()
    rows: dict[tuple[str, str], list[MetricSample]] = {}
    for path in _as_paths(paths):
        if not path.is_file():
            raise FileNotFoundError(f"no recorded stream at {path}: expected a .jsonl file")

        with open_records(path, "rb") as f:
            for line in f:
                if not line.strip():
                    continue
                payload = _recorded_value(line)
                if payload is None:
                    skipped["jsonl_recorded_without_value"] += 1
                    continue
                decoded = decode_message(payload, kind="metric")
                for err in decoded.errors:
                    skipped[f"jsonl_{err.reason}"] += 1
                for event in decoded.events:
                    if not isinstance(event, MetricSample):
                        continue
                    if "cpu_cores" not in event.metrics:
                        skipped["jsonl_no_cpu"] += 1
                        continue
                    rows.setdefault((event.app, event.instance), []).append(event)
    n = 0
    for (app, instance), samples in rows.items():
        if limit is not None and n >= limit:
            return
        samples.sort(key=lambda e: e.ts)
        kept: list[MetricSample] = []
        for e in samples:
            if kept and e.ts <= kept[-1].ts:
                skipped["duplicate_ts" if e.ts == kept[-1].ts else "unsorted_ts"] += 1
                continue
            kept.append(e)
        nan = math.nan
        arrays = {k: np.array([e.metrics.get(m, nan) for e in kept])
                  for k, m in _JSONL_FIELDS.items()}
        caps = {k: np.array([e.capacity.get(m, nan) for e in kept])
                for k, m in (("cpu_cap", "cpu_cores"), ("mem_cap", "mem_bytes"))}
        fields = {k: _filled(v, skipped, k) for k, v in {**arrays, **caps}.items()}
        n += 1
        yield Series(
            name=f"{app}/{instance}", ts=np.array([e.ts for e in kept], dtype=np.float64),
            cpu=arrays["cpu"], cpu_cap=fields["cpu_cap"], mem=fields["mem"],
            mem_cap=fields["mem_cap"], disk_read=fields["disk_read"],
            disk_write=fields["disk_write"], net_rx=fields["net_rx"], net_tx=fields["net_tx"],
            labels={k: v for e in kept for k, v in e.labels.items()}, app=app, instance=instance,
            step_s=float(np.median([e.interval_s for e in kept])))


def read_trace(fmt: str, paths: PathLike | Sequence[PathLike], limit: int | None = None,
               skipped: Counter[str] | None = None) -> Iterator[Series]:
    """Up to ``limit`` series of the traces at ``paths`` in format ``fmt`` (``FORMATS``)."""
    skipped = skipped if skipped is not None else Counter()
    if fmt == "planetlab":
        yield from read_planetlab(paths, limit, skipped)
    elif fmt == "jsonl":
        yield from read_jsonl(paths, limit, skipped)
    elif fmt == "bitbrains":
        n = 0
        for path in _as_paths(paths):
            for s in read_bitbrains(path, None if limit is None else limit - n, skipped):
                n += 1
                yield s
            if limit is not None and n >= limit:
                return
    else:
        raise ValueError(f"unsupported trace format {fmt!r}, expected one of {', '.join(FORMATS)}")


def parse_range(spec: str, n: int) -> list[int]:
    """``"1-125,200"`` -> 0-based positions (1-based, inclusive ranges, clipped to ``n``).

    >>> parse_range("1-3,7", 5)
    [0, 1, 2]
    """
    out: set[int] = set()
    for part in spec.split(","):
        a, _, b = part.strip().partition("-")
        try:
            lo, hi = int(a), int(b or a)
        except ValueError as ex:
            raise ValueError(f"bad series range {spec!r}: expected e.g. 1-125,200") from ex
        if lo < 1 or hi < lo:
            raise ValueError(f"bad series range {spec!r}: positions start at 1, low <= high")
        out.update(range(lo - 1, min(hi, n)))
    return sorted(out)
