"""Bitbrains GWA-T-12 reader: one ``Series`` of numpy arrays per VM.

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
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np

__all__ = ["Series", "bitbrains_files", "parse_series", "read_bitbrains"]

_NCOLS = 11
KB = 1024.0


@dataclass(frozen=True, slots=True)
class Series:
    """One VM: strictly increasing Unix-second ``ts`` and, per step, usage and capacity.

    ``cpu`` and ``cpu_cap`` are cores; ``mem`` and ``mem_cap`` bytes; the I/O rates bytes/s.
    """

    name: str
    ts: np.ndarray
    cpu: np.ndarray
    cpu_cap: np.ndarray
    mem: np.ndarray
    mem_cap: np.ndarray
    disk_read: np.ndarray
    disk_write: np.ndarray
    net_rx: np.ndarray
    net_tx: np.ndarray

    def __len__(self) -> int:
        return len(self.ts)


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
