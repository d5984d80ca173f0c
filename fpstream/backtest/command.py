"""``fpstream backtest``: the typer command; ``fpstream/cli.py`` registers it with
``app.command()(backtest)``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import orjson
import typer

DEFAULT_PATH = Path("../shared/data/bitbrains-rnd-2013-07")


def backtest(
    path: Annotated[Path, typer.Argument(
        help="Trace folder (or its vms/ folder): Bitbrains N.csv or N.csv.gz files.")
    ] = DEFAULT_PATH,
    format: Annotated[str, typer.Option(  # noqa: A002 - the option is --format
        "--format", help="Trace format; only 'bitbrains' for now.")] = "bitbrains",
    limit_series: Annotated[int | None, typer.Option(
        "--limit-series", min=1, help="Use the first N series (in file-number order).")] = None,
    json_out: Annotated[Path | None, typer.Option(
        "--json", help="Also write the result document to this file.")] = None,
) -> None:
    """Replay a real trace through the flow, hourly decisions, scored against VPA, Crane,
    the manual allocation and the oracle (DESIGN.md, Evaluation protocol)."""
    from rich.console import Console

    from fpstream.backtest.run import run_backtest

    console = Console(stderr=True)
    if format != "bitbrains":
        typer.echo(f"fpstream backtest: unsupported --format {format!r}, expected bitbrains",
                   err=True)
        raise typer.Exit(2)
    if not path.exists():
        typer.echo(f"fpstream backtest: no trace at {path}", err=True)
        raise typer.Exit(2)
    with console.status("reading the trace and running the flow...") as status:
        def progress(phase: str, done: int, total: int) -> None:
            what = "running the flow over" if phase == "flow" else "scoring"
            status.update(f"{what} {total} series ({done}/{total})")

        try:
            result = run_backtest(path, limit_series, fmt=format, progress=progress)
        except (FileNotFoundError, ValueError) as ex:
            typer.echo(f"fpstream backtest: {ex}", err=True)
            raise typer.Exit(2) from ex
    console.print(summary_table(result))
    text = orjson.dumps(result, option=orjson.OPT_INDENT_2)
    if json_out is not None:
        json_out.write_bytes(text + b"\n")
    typer.echo(text.decode())


def summary_table(result: dict[str, Any]) -> Any:
    from rich.table import Table

    table = Table(title=f"backtest: {result['series']} series, {result['steps']} steps "
                        "(day 2 on; hourly decisions)")
    table.add_column("method")
    for res in ("cpu", "mem"):
        for k in ("waste", "viol", "short"):
            table.add_column(f"{res} {k}", justify="right")
    for method in result["cpu"]:
        table.add_row(method, *(f"{result[res][method][k]:.4f}"
                                for res in ("cpu", "mem") for k in ("waste", "viol", "short")))
    return table
