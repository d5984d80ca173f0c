"""The ``fpstream`` command line: thin commands over the package's functions."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer

from fpstream.settings import Settings, SettingsError, load_settings

app = typer.Typer(
    name="fpstream",
    help="Fingerprint a fleet from its metrics stream and allocate resources ahead of need.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", help="TOML settings file (then FPSTREAM_* env, then flags)."),
]


@app.callback()
def _root() -> None:
    """fpstream: fleet fingerprints, need predictions and allocations from a metrics stream."""


def build_settings(config: Path | None, **overrides: Any) -> Settings:
    """Load settings or exit with the message that names the bad setting."""
    try:
        return load_settings(config, overrides=overrides)
    except SettingsError as ex:
        typer.echo(f"fpstream: {ex}", err=True)
        raise typer.Exit(2) from ex


@app.command()
def validate(
    file: Annotated[str, typer.Argument(help="JSON-lines file, or - for standard input.")] = "-",
    config: ConfigOpt = None,
    max_message_bytes: Annotated[int | None, typer.Option(help="Largest accepted line.")] = None,
) -> None:
    """Check messages (one per line) against the wire contract; exit 1 if any is invalid."""
    from fpstream.validate import validate_stream

    settings = build_settings(config, max_message_bytes=max_message_bytes)
    if file == "-":
        stream = sys.stdin.buffer
    else:
        try:
            stream = open(file, "rb")  # noqa: SIM115 - closed below
        except OSError as ex:
            typer.echo(f"fpstream validate: cannot read {file}: {ex.strerror}", err=True)
            raise typer.Exit(2) from ex
    out = sys.stdout.buffer
    bad = 0
    try:
        for verdict in validate_stream(stream, settings.limits):
            if verdict.get("summary"):
                bad = verdict["bad"]
            out.write(orjson.dumps(verdict) + b"\n")
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()
    out.flush()
    raise typer.Exit(1 if bad else 0)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
