"""``fpstream backtest``: the typer command; ``fpstream/cli.py`` registers it with
``app.command()(backtest)``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import orjson
import typer

DEFAULT_PATHS: dict[str, Path] = {
    "bitbrains": Path("../shared/data/bitbrains-rnd-2013-07"),
    "planetlab": Path("../shared/data/planetlab-comon-2011/planetlab-2011-days1-5.tar.gz"),
}


def backtest(
    paths: Annotated[list[Path] | None, typer.Argument(
        help="Trace paths. bitbrains: folders (or vms/ folders) of N.csv(.gz) files; "
             "planetlab: CoMon .tar.gz archives (read in place); jsonl: recorded metric "
             "messages, one JSON object or array a line. Default: the trace in "
             "../shared/data for bitbrains and planetlab.",
        show_default=False)] = None,
    format: Annotated[str, typer.Option(  # noqa: A002 - the option is --format
        "--format", help="Trace format: bitbrains, planetlab or jsonl.")] = "bitbrains",
    limit_series: Annotated[int | None, typer.Option(
        "--limit-series", min=1, help="Use the first N series (in the reader's order).")] = None,
    json_out: Annotated[Path | None, typer.Option(
        "--json", help="Also write the result document to this file.")] = None,
    report: Annotated[Path | None, typer.Option(
        "--report", help="Also write a self-contained HTML report to this file.")] = None,
    workers: Annotated[int, typer.Option(
        "--workers", min=1, max=64,
        help="Flow processes: one Bytewax cluster over the whole trace, as fpstream run on "
             "several processes; the same allocations as one process.")] = 1,
    score_on: Annotated[str | None, typer.Option(
        "--score-on", help="Series positions to run and score, e.g. 126-250 (default all).")
    ] = None,
    first_hours: Annotated[float | None, typer.Option(
        "--first-hours", min=25,
        help="Replay only each series' first H hours (at least 25): the first day and cold "
             "start in a fraction of the time.")] = None,
    experiment: Annotated[str | None, typer.Option(
        "--experiment",
        help="Run an A/B experiment over the default arms: split or bandit; the result's "
             "experiment section scores each arm's allocations apart.")] = None,
    budgets: Annotated[list[str] | None, typer.Option(
        "--budgets",
        help="Violation budgets of one resource, e.g. cpu=0.005,0.01,0.02,0.05 (repeat for "
             "mem): the result's frontier section tunes the vpa, crane and peak families "
             "in-sample for each.")] = None,
    train: Annotated[list[Path] | None, typer.Option(
        "--train", help="Cold start (planetlab): archives replayed before the scored ones.")
    ] = None,
    eval_paths: Annotated[list[Path] | None, typer.Option(
        "--eval", help="Cold start (planetlab): archives whose VM-days are scored.")] = None,
    train_days: Annotated[str | None, typer.Option(
        "--train-days", help="Cold start (planetlab): day positions to replay, e.g. 1-3.")
    ] = None,
    eval_days: Annotated[str | None, typer.Option(
        "--eval-days", help="Cold start (planetlab): day positions to score, e.g. 4-5. Any "
                            "cold-start option runs the cold-start section only.")] = None,
) -> None:
    """Replay a real trace through the flow, hourly decisions, scored against VPA, Crane,
    the manual allocation and the oracle (DESIGN.md, Evaluation protocol)."""
    from rich.console import Console

    from fpstream.backtest.frontier import parse_budgets
    from fpstream.backtest.run import run_backtest
    from fpstream.backtest.traces import FORMATS

    console = Console(stderr=True)
    if format not in FORMATS:
        typer.echo(f"fpstream backtest: unsupported --format {format!r}, expected one of "
                   f"{', '.join(FORMATS)}", err=True)
        raise typer.Exit(2)
    if experiment is not None and experiment not in ("split", "bandit"):
        typer.echo(f"fpstream backtest: unsupported --experiment {experiment!r}, expected "
                   "split or bandit", err=True)
        raise typer.Exit(2)
    try:
        levels = parse_budgets(budgets) if budgets else None
    except ValueError as ex:
        typer.echo(f"fpstream backtest: --budgets {ex}", err=True)
        raise typer.Exit(2) from ex
    if not paths:
        if format not in DEFAULT_PATHS:
            typer.echo(f"fpstream backtest: --format {format} needs at least one path", err=True)
            raise typer.Exit(2)
        paths = [DEFAULT_PATHS[format]]
    for path in paths:
        if not path.exists():
            typer.echo(f"fpstream backtest: no trace at {path}", err=True)
            raise typer.Exit(2)
    if train or eval_paths or train_days or eval_days:
        from fpstream.backtest.coldstart import coldstart_command

        coldstart_command(format, paths, train or [], eval_paths or [], train_days, eval_days,
                          json_out, console, workers)
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    labels = {"flow": "flow: samples", "score": "scoring series",
              "frontier": "sweeping baseline frontiers", "budgets": "flow at each budget"}
    bar = Progress("[progress.description]{task.description}", BarColumn(),
                   MofNCompleteColumn(), TimeElapsedColumn(), console=console, transient=False)
    tasks: dict[str, Any] = {}

    def progress(phase: str, done: int, total: int) -> None:
        if phase not in tasks:
            tasks[phase] = bar.add_task(labels.get(phase, phase), total=total)
        bar.update(tasks[phase], completed=done, total=total)

    with bar:
        try:
            result = run_backtest(paths, limit_series, fmt=format, progress=progress,
                                  report=report, score_on=score_on, workers=workers,
                                  experiment=experiment, budgets=levels,
                                  first_hours=first_hours)
        except (FileNotFoundError, ValueError) as ex:
            typer.echo(f"fpstream backtest: {ex}", err=True)
            raise typer.Exit(2) from ex
        for task in tasks.values():  # the last step of each phase is not always reported
            bar.update(task, completed=bar.tasks[task].total)
    console.print(summary_table(result))
    if "cold_start" in result:
        from fpstream.backtest.coldstart import coldstart_table

        console.print(coldstart_table(result["cold_start"]))
    if "frontier" in result:
        from fpstream.backtest.frontier import frontier_table

        console.print(frontier_table(result["frontier"]))
    if report is not None:
        console.print(f"report written to {report}")
    text = orjson.dumps(result, option=orjson.OPT_INDENT_2)
    if json_out is not None:
        json_out.write_bytes(text + b"\n")
    typer.echo(text.decode())


def summary_table(result: dict[str, Any]) -> Any:
    """The day-2-on figures as a rich table: one row per method, columns per resource the
    trace has; ``-`` where a method is not scored on a resource."""
    from rich.table import Table

    resources = [res for res in ("cpu", "mem") if res in result]
    table = Table(title=f"backtest: {result['series']} series, {result['steps']} steps "
                        "(day 2 on; hourly decisions)")
    table.add_column("method")
    for res in resources:
        for k in ("waste", "viol", "short"):
            table.add_column(f"{res} {k}", justify="right")
    methods = list(dict.fromkeys(m for res in resources for m in result[res]))
    for method in methods:
        table.add_row(method, *(f"{result[res][method][k]:.4f}" if method in result[res] else "-"
                                for res in resources for k in ("waste", "viol", "short")))
    return table

