"""``fpstream status``: what the flow has published to Redis and what the actuators still owe,
and the A/B experiment's per-arm results when the flow has published them.

Reads only; safe against a live deployment. Registered by ``fpstream/cli.py`` with
``app.command()(status)``; this module imports nothing from the CLI so that registration
cannot create an import cycle.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import orjson
import redis
import typer

from fpstream.settings import Settings, SettingsError, load_settings, mask_url

EXAMPLE_APPS = 5  # apps named per cluster; the count is always exact


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def read_status(client: redis.Redis, settings: Settings, limit: int = 10) -> dict[str, Any]:
    """Clusters, their apps, the newest ``limit`` allocations, the actuators' backlog and the
    experiment ``settings.experiment_name`` (``None`` until the flow has published it).

    Works with clients built with or without ``decode_responses``.
    """
    members: dict[str, list[str]] = {}
    for app, cid in client.hscan_iter(settings.key("app_cluster"), count=1000):
        members.setdefault(_text(cid), []).append(_text(app))
    clusters = []
    for raw in client.hvals(settings.key("clusters")):
        doc = orjson.loads(raw)
        apps = sorted(members.pop(str(doc["id"]), []))
        clusters.append({"id": doc["id"], "size": doc["members"], "apps": len(apps),
                         "example_apps": apps[:EXAMPLE_APPS], "needs": doc["needs"],
                         "ts": doc["ts"], "version": doc["version"]})
    clusters.sort(key=lambda c: c["id"])
    version = client.get(settings.key("clusters", "version"))

    stream = settings.key("allocations")
    allocations = []
    entries: list[Any] = (client.xrevrange(stream, count=limit) or []) if limit > 0 else []
    for entry_id, fields in entries:
        data = {_text(k): v for k, v in (fields or {}).items()}.get("data")
        if data is None:
            continue
        allocations.append({"stream_id": _text(entry_id), **orjson.loads(data)})

    return {
        "prefix": settings.redis_prefix,
        "clusters_version": int(version) if version is not None else None,
        "clusters": clusters,
        "apps": sum(c["apps"] for c in clusters) + sum(len(v) for v in members.values()),
        "unclustered_apps": sum(len(v) for v in members.values()),
        "stream_length": client.xlen(stream),
        "allocations": allocations,
        "actuators": _backlog(client, stream),
        "experiment": read_experiment(client, settings),
    }


def read_experiment(client: redis.Redis, settings: Settings,
                    name: str | None = None) -> dict[str, Any] | None:
    """The summary stored under ``<prefix>:experiment:<name>`` (default: the configured name)."""
    raw = client.get(settings.key("experiment", name or settings.experiment_name))
    if raw is None:
        return None
    doc: dict[str, Any] = orjson.loads(raw)
    return doc


def _backlog(client: redis.Redis, stream: str) -> dict[str, Any]:
    """Per consumer group: entries delivered but not acknowledged (pending) and entries not
    yet delivered (lag; ``None`` when Redis cannot tell, e.g. after trimming)."""
    try:
        infos = client.xinfo_groups(stream)
    except redis.ResponseError:  # no stream yet
        infos = []
    groups: list[dict[str, Any]] = []
    for info in infos:
        info = {_text(k): v for k, v in info.items()}
        groups.append({"name": _text(info["name"]), "consumers": int(info["consumers"]),
                       "pending": int(info["pending"]),
                       "lag": None if info.get("lag") is None else int(info["lag"])})
    pending: int = sum(g["pending"] for g in groups)
    lag: int = sum(g["lag"] or 0 for g in groups)
    return {"groups": groups, "pending": pending, "lag": lag, "backlog": pending + lag}


def status(
    config: Annotated[Path | None, typer.Option(
        "--config", help="TOML settings file (then FPSTREAM_* env, then flags).")] = None,
    redis_url: Annotated[str | None, typer.Option("--redis-url", help="Redis URL.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]
    = False,
    limit: Annotated[int, typer.Option(min=0, help="Latest allocations to show.")] = 10,
) -> None:
    """Show clusters, apps per cluster, the latest allocations, the actuators' backlog and the
    A/B experiment."""
    from fpstream.io.redis_sink import connect

    try:
        settings = load_settings(config, overrides={"redis_url": redis_url})
    except SettingsError as ex:
        typer.echo(f"fpstream status: {ex}", err=True)
        raise typer.Exit(2) from ex
    try:
        client = connect(settings)
    except ConnectionError as ex:
        typer.echo(f"fpstream status: {settings.redact(str(ex))}", err=True)
        raise typer.Exit(2) from ex
    except (ValueError, TypeError) as ex:  # a URL or an option redis-py refuses
        typer.echo(f"fpstream status: cannot reach Redis at {mask_url(settings.redis_url)}: "
                   f"{settings.redact(str(ex))}", err=True)
        raise typer.Exit(2) from ex
    try:
        report = read_status(client, settings, limit)
    except redis.RedisError as ex:
        typer.echo(f"fpstream status: reading {mask_url(settings.redis_url)}: "
                   f"{settings.redact(str(ex))}", err=True)
        raise typer.Exit(2) from ex
    finally:
        client.close()
    if json_out:
        typer.echo(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
    else:
        _print_tables(report)


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _gib(n: float | None) -> str:
    return "-" if n is None else f"{n / 2**30:.2f}"


def _num(x: float | None, fmt: str = ".3f") -> str:
    return "-" if x is None else format(x, fmt)


def _interval(ci: list[float] | None) -> str:
    return "-" if not ci else f"{ci[0]:+.3f}..{ci[1]:+.3f}"


def _experiment_table(exp: dict[str, Any]) -> Any:
    from rich import box
    from rich.table import Table

    base = exp.get("baseline")
    diffs: dict[str, Any] = exp.get("differences", {})
    table = Table(title=f"experiment {exp.get('name')!r}: {exp.get('mode')}, "
                  f"{exp.get('periods', 0)} periods, {exp.get('guard_moves', 0)} guard moves",
                  box=box.SIMPLE_HEAD,
                  show_edge=False, padding=(0, 1), collapse_padding=True)
    for col in ("arm", "share", "periods", "waste", "viol", "reward", "Δ reward", "Δ 95% CI"):
        table.add_column(col, justify="left" if col == "arm" else "right", no_wrap=True)
    for name, arm in exp.get("arms", {}).items():
        d = diffs.get(name)
        mark = " *" if d and d.get("significant") else ""
        table.add_row(
            name, _num(arm.get("share"), ".1%"), str(arm.get("periods", 0)),
            _num(arm.get("waste"), ".1%"), _num(arm.get("viol"), ".1%"),
            _num(arm.get("reward"), "+.3f"),
            "baseline" if name == base else "-" if not d else _num(d.get("diff"), "+.3f") + mark,
            "" if name == base else "-" if not d else _interval(d.get("ci95")))
    table.caption = ("Δ: mean reward minus the baseline's; * its 95% confidence interval "
                     "excludes 0")
    return table


def _print_tables(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    cl = Table(title=f"clusters (version {report['clusters_version']}, {report['apps']} apps, "
               f"{report['unclustered_apps']} without a cluster)")
    for col in ("id", "size", "apps", "cpu cores", "mem GiB", "examples"):
        cl.add_column(col, justify="left" if col == "examples" else "right")
    for c in report["clusters"]:
        needs = c["needs"]
        cpu = needs.get("cpu_cores")
        cl.add_row(str(c["id"]), str(c["size"]), str(c["apps"]),
                   "-" if cpu is None else f"{cpu:.3f}", _gib(needs.get("mem_bytes")),
                   ", ".join(c["example_apps"]))
    console.print(cl)

    al = Table(title=f"latest allocations ({report['stream_length']} in the stream)")
    for col in ("event time (UTC)", "id", "kind", "type", "cpu", "mem GiB", "cluster"):
        al.add_column(col)
    for a in report["allocations"]:
        reserve = a.get("reserve", {})
        al.add_row(_when(a["ts"]), a["id"], a["kind"], a["instance_type"],
                   f"{reserve.get('cpu_cores', 0):.3f}", _gib(reserve.get("mem_bytes")),
                   str(a.get("cluster")))
    console.print(al)

    act = report["actuators"]
    gt = Table(title=f"actuators: backlog {act['backlog']} "
               f"(pending {act['pending']}, not yet delivered {act['lag']})")
    for col in ("group", "consumers", "pending", "lag"):
        gt.add_column(col)
    for g in act["groups"]:
        gt.add_row(g["name"], str(g["consumers"]), str(g["pending"]),
                   "?" if g["lag"] is None else str(g["lag"]))
    if not act["groups"]:
        gt.add_row("(no consumer group)", "0", "0", "0")
    console.print(gt)

    if report.get("experiment"):
        console.print(_experiment_table(report["experiment"]))
