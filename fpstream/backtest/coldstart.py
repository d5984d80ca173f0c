"""Cold-start backtest on PlanetLab: allocate every VM-day before its first sample.

Each PlanetLab VM-day is a new deployment of the app ``<host>_<slice>`` (instance = the day,
labels ``{"slice", "host"}``, requested 1 core: the trace's CPU is a share of one core). The
real flow (``flows.fleet.build_flow`` over a ``TestingSource``, as ``replay.py`` runs it) reads,
day by day in time order, a deploy request (``DeployRequest`` on the deploys topic) for every
VM-day of the day, then the day's samples. So each proactive allocation is decided from the
earlier days only. Days are picked by archive (``--train A --eval B``) or by position over the
archives' sorted days (``--train-days 1-3 --eval-days 4-5``); training days are replayed but
not scored, and evaluation days keep learning (day 5 is predicted from days 1-4).

Scored per evaluation VM-day (Resource Central's protocol, with the p95 in place of the mean):

- the bucket of its p95 CPU (0-25, 25-50, 50-75, 75-100 % of a core) against the bucket of
  the proactive allocation's ``predicted`` CPU: ``bucket_accuracy`` over all, and
  ``bucket_accuracy_new`` over the host+slice pairs never seen on an earlier day;
- its first hour (12 samples): ``waste = sum(max(A - u, 0)) / sum(A)`` and ``viol`` (share of
  samples with ``u > A``) of the proactive CPU reserve ``A`` (the predicted need plus the
  policy's headroom, 15 % by default: the hourly protocol's zero headroom is for its CPU
  rules, which carry their own margins).

Baselines see the same earlier days: ``global`` (the fleet's most frequent bucket so far),
``slice`` (the slice's most frequent so far, else ``global``), ``instance`` (the same
host+slice's latest earlier day, else ``slice``). Ties go to the lower bucket. Their
allocation is the bucket's upper edge (25, 50, 75 or 100 % of a core): the smallest reserve
that still covers every value of the predicted bucket.
"""

from __future__ import annotations

import math
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from fpstream.backtest.replay import (
    DAY,
    DEPLOY_LEAD_S,
    HOUR,
    backtest_settings,
    flow_allocations,
)
from fpstream.backtest.traces import (
    PLANETLAB_STEP_S,
    PLANETLAB_STEPS,
    PathLike,
    Series,
    VmDay,
    _day_start,
    parse_range,
    planetlab_vm_days,
)
from fpstream.scoring import Score, in_force
from fpstream.settings import Settings

__all__ = ["BASELINES", "EDGES", "SERIES_BASELINES", "bucket", "coldstart_table",
           "run_coldstart", "select_days", "series_coldstart"]

EDGES: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)
BASELINES: tuple[str, ...] = ("global", "slice", "instance")
FIRST_HOUR_STEPS = int(HOUR // PLANETLAB_STEP_S)
Progress = Callable[[str, int, int], None]


def bucket(cpu: float) -> int:
    """Resource Central's CPU bucket (0-3) of a share of one core.

    >>> [bucket(x) for x in (0.0, 0.25, 0.49, 0.9, 1.7)]
    [0, 1, 1, 3, 3]
    """
    return min(3, max(0, int(math.floor(cpu / 0.25))))


def app_of(v: VmDay) -> str:
    return f"{v.host}_{v.slice}"


def vm_series(v: VmDay) -> Series:
    step = np.arange(1, PLANETLAB_STEPS + 1, dtype=np.float64) * PLANETLAB_STEP_S
    return Series(name=f"{app_of(v)}@{v.day}", ts=_day_start(v.day) + step, cpu=v.cpu,
                  cpu_cap=np.ones(len(v.cpu)), labels={"slice": v.slice, "host": v.host},
                  app=app_of(v), instance=v.day, step_s=PLANETLAB_STEP_S)


def select_days(days: Sequence[str], spec: str | None) -> list[str]:
    """``"1-3"`` -> those days (1-based positions over the sorted days)."""
    return [days[i] for i in parse_range(spec, len(days))] if spec else []


Reserve = float | np.ndarray | None


class _Scores:
    """Bucket hits (over all and over new pairs), and the ``Score`` per resource (``cpu``,
    ``mem``) of one method's allocations over each deployment's first hour and first day."""

    def __init__(self) -> None:
        self.n = self.ok = self.n_new = self.ok_new = 0
        self.hour: dict[str, Score] = {}
        self.day: dict[str, Score] = {}

    def add(self, predicted: int | None, actual: int, new: bool,
            reserve: dict[str, Reserve], first: dict[str, np.ndarray],
            day: dict[str, np.ndarray] | None = None,
            day_reserve: dict[str, Reserve] | None = None) -> None:
        """One deployment: its predicted and actual bucket; ``first`` and ``day`` its usage
        over its first hour and first day; ``reserve`` and ``day_reserve`` (default
        ``reserve``) what the method reserved over each, a value or one per step."""
        hit = predicted == actual
        self.n += 1
        self.ok += hit
        if new:
            self.n_new += 1
            self.ok_new += hit
        for scores, usage, reserves in ((self.hour, first, reserve),
                                        (self.day, day or {}, day_reserve or reserve)):
            for res, a in reserves.items():
                u = usage.get(res)
                if a is None or u is None or not len(u):
                    continue
                a = np.broadcast_to(np.asarray(a, dtype=np.float64), u.shape)
                ok = np.isfinite(a)
                scores.setdefault(res, Score()).add(a[ok], u[ok])

    @staticmethod
    def _figures(scores: dict[str, Score]) -> dict[str, dict[str, float | None]]:
        return {res: {"waste": round(sc.waste, 4) if sc.allocated else None,
                      "viol": round(sc.viol, 4)}
                for res, sc in sorted(scores.items())} or {"cpu": {"waste": None,
                                                                   "viol": None}}

    def get(self) -> dict[str, Any]:
        return {"bucket_accuracy": round(self.ok / self.n, 4) if self.n else None,
                "bucket_accuracy_new": round(self.ok_new / self.n_new, 4) if self.n_new else None,
                "first_hour": self._figures(self.hour), "first_day": self._figures(self.day)}


def _mode(c: Counter[int]) -> int | None:
    return min(c, key=lambda b: (-c[b], b)) if c else None


def run_coldstart(train: Sequence[PathLike] = (), evaluate: Sequence[PathLike] = (), *,
                  paths: Sequence[PathLike] = (), train_days: str | None = None,
                  eval_days: str | None = None, settings: Settings | None = None,
                  progress: Progress | None = None, limit_vms: int | None = None,
                  workers: int = 1) -> dict[str, Any]:
    """The ``cold_start`` section. Either ``train`` and ``evaluate`` archives, or ``paths``
    with ``train_days``/``eval_days`` positions over their sorted days (default: all days but
    the last two for training, the last two for evaluation). ``limit_vms`` keeps the VM-days
    of the first N host+slice pairs (sorted), for a quick subset. ``workers``: the flow's
    processes (one cluster, as ``flow_allocations`` runs it)."""
    t0 = time.perf_counter()
    notes: Counter[str] = Counter()
    if train or evaluate:
        if not evaluate:
            raise ValueError("cold start: --train needs --eval archives too")
        train_vm = planetlab_vm_days([Path(p) for p in train], notes) if train else []
        eval_vm = planetlab_vm_days([Path(p) for p in evaluate], notes)
        eval_set = {v.day for v in eval_vm}
        vm_days = [v for v in train_vm if v.day not in eval_set] + eval_vm
    else:
        if not paths:
            raise ValueError("cold start: no PlanetLab archive given")
        vm_days = planetlab_vm_days([Path(p) for p in paths], notes)
        days = sorted({v.day for v in vm_days})
        if eval_days is None and train_days is None:
            eval_set = set(days[-2:])
        else:
            eval_set = set(select_days(days, eval_days))
            if train_days is not None:
                keep = set(select_days(days, train_days)) | eval_set
                vm_days = [v for v in vm_days if v.day in keep]
    if not eval_set:
        raise ValueError("cold start: no evaluation day selected")
    if limit_vms is not None:
        pairs = sorted({(v.host, v.slice) for v in vm_days})[:limit_vms]
        chosen = set(pairs)
        vm_days = [v for v in vm_days if (v.host, v.slice) in chosen]
    by_day: dict[str, list[VmDay]] = defaultdict(list)
    seen_vm: set[tuple[str, str, str]] = set()
    for v in sorted(vm_days, key=lambda v: (v.day, v.host, v.slice)):
        if (v.day, v.host, v.slice) in seen_vm:
            notes["planetlab_duplicate_day"] += 1
            continue
        seen_vm.add((v.day, v.host, v.slice))
        by_day[v.day].append(v)
    # The hourly protocol reserves with no headroom (its CPU rules carry their margins); a
    # proactive allocation has no rule behind it, so it keeps the policy's headroom.
    headroom = (settings if settings is not None else Settings()).headroom
    settings = replace(backtest_settings(settings, PLANETLAB_STEP_S), headroom=headroom)
    t1 = time.perf_counter()

    def report(done: int, total: int) -> None:
        if progress:
            progress("coldstart", done, total)

    # Every VM-day is announced at the start of its day (its first sample is one step in),
    # after the earlier days' samples and before its own.
    series = [vm_series(v) for day in sorted(by_day) for v in by_day[day]]
    flow = flow_allocations(series, settings, report, deploys=True, lead_s=PLANETLAB_STEP_S,
                            workers=workers)
    proactive = flow.proactive
    t2 = time.perf_counter()

    scores = {m: _Scores() for m in ("fpstream", *BASELINES)}
    fleet: Counter[int] = Counter()
    by_slice: defaultdict[str, Counter[int]] = defaultdict(Counter)
    latest: dict[tuple[str, str], int] = {}
    deployments = new_pairs = 0
    for day in sorted(by_day):
        vms = by_day[day]
        actual = {id(v): bucket(float(np.percentile(v.cpu, 95))) for v in vms}
        if day in eval_set:
            for v in vms:
                pair = (v.host, v.slice)
                new = pair not in latest
                deployments += 1
                new_pairs += new
                first, whole = v.cpu[:FIRST_HOUR_STEPS], {"cpu": v.cpu}
                doc = proactive.get((app_of(v), v.day))
                if doc is None:
                    notes["deployments_without_proactive_allocation"] += 1
                    scores["fpstream"].add(None, actual[id(v)], new, {}, {"cpu": first})
                else:
                    predicted = float(doc["predicted"].get("cpu_cores", 0.0))
                    reserve = float(doc["reserve"].get("cpu_cores", 0.0))
                    # over the day: the proactive reserve, then the VM's own decisions
                    fp = flow.allocations.get((app_of(v), v.day))
                    held = (in_force(fp["ts"], fp["cpu"], vm_series(v).ts) if fp is not None
                            else np.full(len(v.cpu), reserve))
                    scores["fpstream"].add(bucket(predicted), actual[id(v)], new,
                                           {"cpu": reserve}, {"cpu": first}, whole,
                                           {"cpu": np.where(np.isnan(held), reserve, held)})
                g = _mode(fleet)
                s = _mode(by_slice[v.slice]) if by_slice[v.slice] else g
                i = latest.get(pair, s)
                for name, b in (("global", g), ("slice", s), ("instance", i)):
                    scores[name].add(b, actual[id(v)], new,
                                     {"cpu": None if b is None else EDGES[b]}, {"cpu": first},
                                     whole)
        for v in vms:
            b = actual[id(v)]
            fleet[b] += 1
            by_slice[v.slice][b] += 1
            latest[(v.host, v.slice)] = b
    t3 = time.perf_counter()
    all_days = sorted(by_day)
    return {
        "deployments": deployments,
        "new_pairs": new_pairs,
        **{m: sc.get() for m, sc in scores.items()},
        "notes": {
            "train_days": [d for d in all_days if d not in eval_set],
            "eval_days": [d for d in all_days if d in eval_set],
            "vm_days": sum(len(v) for v in by_day.values()),
            "proactive_allocations": len(proactive),
            "flow_processes": flow.processes,
            "predicted_bucket_of": "p95 of the VM-day's CPU (share of one core)",
            "baseline_allocation": "the predicted bucket's upper edge",
            "fpstream_allocation": f"the proactive reserve (need x {1 + headroom:g})",
            **{k: int(v) for k, v in sorted(notes.items()) if v},
            "seconds": {"read": round(t1 - t0, 2), "flow": round(t2 - t1, 2),
                        "score": round(t3 - t2, 2)},
        },
    }


SERIES_BASELINES: tuple[str, ...] = ("global", "size", "manual")


def _size_of(s: Series) -> tuple[float, int]:
    """A series' provisioned size: its cores and the nearest power of two of its memory."""
    mem = s.capacity("mem")
    return (float(s.cpu_cap[0]) if s.cpu_cap is not None else 0.0,
            round(math.log2(mem[0])) if mem is not None and mem[0] > 0 else 0)


def series_coldstart(series: Sequence[Series], proactive: dict[tuple[str, str], dict[str, Any]],
                     allocations: Mapping[tuple[str, str], Mapping[str, np.ndarray]]
                     | None = None) -> dict[str, Any]:
    """The ``cold_start`` section of an hourly backtest whose series were announced by deploy
    requests carrying their provisioned size (``replay.deploy_request``): every series is a new
    deployment, scored on

    - the bucket of its first day's p95 CPU as a share of its provisioned cores, against the
      bucket of the proactive allocation's ``predicted`` CPU over the requested cores;
    - its first hour (``FIRST_HOUR_STEPS`` samples), ``waste`` and ``viol`` per resource of
      the proactive reserve;
    - its first day (``first_day``), under what each method reserves over it: a baseline its
      one answer, fpstream the proactive reserve and then the instance's decisions in force
      (from ``allocations``, the flow's; the proactive reserve alone without them).

    Baselines know what was known at the same deploy time (the first days that had ended):
    ``global`` (the fleet's most frequent bucket), ``size`` (that of the VMs of the same
    provisioned size, else ``global``), each reserving its bucket's upper edge of the cores and
    the provisioned memory; ``manual`` (the provisioned size, bucket 75-100 %). Where a method
    has no answer, the VM runs on its provisioned size. ``with_history`` repeats the figures
    for the deployments made after the first day of the trace, when something was known.
    """
    rows = []
    for s in series:
        cap = s.capacity("cpu")
        if cap is None or not len(s.ts) or cap[0] <= 0:
            continue
        day = s.ts < s.ts[0] + DAY
        actual = bucket(float(np.percentile(s.cpu[day], 95)) / float(cap[0]))
        first = {r: u[:FIRST_HOUR_STEPS] for r in ("cpu", "mem")
                 if (u := s.usage(r)) is not None}
        whole = {r: u[day] for r in ("cpu", "mem") if (u := s.usage(r)) is not None}
        rows.append((float(s.ts[0]) - DEPLOY_LEAD_S, s, actual, first, whole))
    rows.sort(key=lambda r: (r[0], r[1].name))
    if not rows:
        return {"deployments": 0}
    trace_start = min(float(r[1].ts[0]) for r in rows)
    known = sorted((float(s.ts[0]) + DAY, _size_of(s), b) for _, s, b, _, _ in rows)
    methods = ("fpstream", *SERIES_BASELINES)
    scores = {m: _Scores() for m in methods}
    later = {m: _Scores() for m in methods}
    sources: Counter[str] = Counter()
    fleet: Counter[int] = Counter()
    by_size: defaultdict[tuple[float, int], Counter[int]] = defaultdict(Counter)
    k = 0
    for deployed, s, actual, first, whole in rows:
        while k < len(known) and known[k][0] <= deployed:
            fleet[known[k][2]] += 1
            by_size[known[k][1]][known[k][2]] += 1
            k += 1
        cores = float(s.cpu_cap[0])  # type: ignore[index]
        mem = s.capacity("mem")
        mem_cap = float(mem[0]) if mem is not None else None
        manual = {"cpu": cores, "mem": mem_cap}
        doc = proactive.get(s.key)
        if doc is None:
            sources["without_proactive_allocation"] += 1
            mine, reserve = None, manual
        else:
            mine = bucket(float(doc["predicted"].get("cpu_cores", 0.0)) / cores)
            reserve = {"cpu": float(doc["reserve"].get("cpu_cores", cores)),
                       "mem": (float(doc["reserve"]["mem_bytes"])
                               if "mem_bytes" in doc["reserve"] else mem_cap)}
        g = _mode(fleet)
        peers = by_size[_size_of(s)]
        z = _mode(peers) if peers else g
        answers: dict[str, tuple[int | None, dict[str, Reserve]]] = {
            "fpstream": (mine, dict(reserve)), "manual": (bucket(1.0), dict(manual))}
        for name, b in (("global", g), ("size", z)):
            answers[name] = (b, {"cpu": cores * EDGES[b] if b is not None else cores,
                                 "mem": mem_cap})
        held: dict[str, Reserve] = dict(reserve)
        fp = None if allocations is None else allocations.get(s.key)
        if fp is not None:
            steps = s.ts[s.ts < s.ts[0] + DAY].astype(np.float64)
            for r in whole:
                a = in_force(fp["ts"], fp[r], steps)
                fallback = reserve.get(r)
                held[r] = np.where(np.isnan(a), np.nan if fallback is None else fallback, a)
        has_history = deployed >= trace_start + DAY
        for name, (b, res) in answers.items():
            day_reserve = held if name == "fpstream" else res
            scores[name].add(b, actual, True, res, first, whole, day_reserve)
            if has_history:
                later[name].add(b, actual, True, res, first, whole, day_reserve)
    return {
        "deployments": len(rows),
        "new_pairs": len(rows),
        "with_history": later["fpstream"].n,
        **{m: {**scores[m].get(), "with_history": later[m].get()} for m in methods},
        "notes": {
            "predicted_bucket_of": "p95 of the first day's CPU, share of the provisioned cores",
            "known_in_advance": "the provisioned size (deploy request an hour before the "
                                "first sample)",
            "with_history": "deployed after the trace's first day",
            **{k: int(v) for k, v in sorted(sources.items())},
        },
    }


def coldstart_command(fmt: str, paths: Sequence[Path], train: Sequence[Path],
                      evaluate: Sequence[Path], train_days: str | None, eval_days: str | None,
                      json_out: Path | None, console: Any, workers: int = 1) -> None:
    """``fpstream backtest --format planetlab --train-days 1-3 --eval-days 4-5`` (or
    ``--train A --eval B``): run the cold-start section, print a table and the document."""
    import typer

    if fmt != "planetlab":
        typer.echo("fpstream backtest: the cold-start section needs --format planetlab", err=True)
        raise typer.Exit(2)
    for path in [*train, *evaluate]:
        if not path.exists():
            typer.echo(f"fpstream backtest: no trace at {path}", err=True)
            raise typer.Exit(2)
    with console.status("cold start: replaying the days through the flow...") as status:
        def progress(phase: str, done: int, total: int) -> None:
            status.update(f"cold start: {done}/{total} samples replayed")

        try:
            section = run_coldstart(train, evaluate, paths=[] if evaluate else paths,
                                    train_days=train_days, eval_days=eval_days,
                                    progress=progress, workers=workers)
        except (FileNotFoundError, ValueError) as ex:
            typer.echo(f"fpstream backtest: {ex}", err=True)
            raise typer.Exit(2) from ex
    console.print(coldstart_table(section))
    text = orjson.dumps({"cold_start": section}, option=orjson.OPT_INDENT_2)
    if json_out is not None:
        json_out.write_bytes(text + b"\n")
    typer.echo(text.decode())


def coldstart_table(section: dict[str, Any]) -> Any:
    """The ``cold_start`` section as a rich table: per method, bucket accuracy (over all, and
    over never-seen pairs or over the deployments made with fleet history) and first-hour and
    first-day waste and violations per resource."""
    from rich.table import Table

    series = "with_history" in section
    methods = [m for m in ("fpstream", *(SERIES_BASELINES if series else BASELINES))
               if m in section]
    resources = sorted({r for m in methods for r in section[m]["first_hour"]})
    if series:
        title = (f"cold start: {section['deployments']} deployments, "
                 f"{section['with_history']} after the first day")
        extra = ("acc (after day 1)", lambda d: d["with_history"]["bucket_accuracy"])
    else:
        title = (f"cold start: {section['deployments']} deployments, "
                 f"{section['new_pairs']} never-seen host+slice pairs")
        extra = ("acc (new)", lambda d: d["bucket_accuracy_new"])
    table = Table(title=title)
    table.add_column("method")
    spans = (("first_hour", "1st hour"), ("first_day", "1st day"))
    for col in ("bucket acc", extra[0], *(f"{label} {r} {k}" for _, label in spans
                                          for r in resources for k in ("waste", "viol"))):
        table.add_column(col, justify="right")
    for m in methods:
        doc = section[m]
        cells = [doc["bucket_accuracy"], extra[1](doc),
                 *(doc.get(span, {}).get(r, {}).get(k) for span, _ in spans
                   for r in resources for k in ("waste", "viol"))]
        table.add_row(m, *(f"{x:.4f}" if x is not None else "-" for x in cells))
    return table
