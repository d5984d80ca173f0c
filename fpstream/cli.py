"""The ``fpstream`` command line: thin commands over the package's functions."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

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


BrokersOpt = Annotated[
    str | None, typer.Option("--brokers", help="Kafka bootstrap servers (host:port,...).")]
RedisOpt = Annotated[str | None, typer.Option("--redis-url", help="Redis URL.")]


@app.command()
def simulate(
    out: Annotated[Path | None, typer.Option("--out", help="Write JSON lines here.")] = None,
    to_topic: Annotated[
        str | None, typer.Option("--to-topic", help="Produce metric messages to this topic.")
    ] = None,
    apps: Annotated[int, typer.Option(min=1, help="Applications in the fleet.")] = 50,
    minutes: Annotated[float, typer.Option(min=0, help="Event time to simulate.")] = 30,
    interval: Annotated[float, typer.Option(min=1, help="Seconds between samples.")] = 60.0,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 42,
    bad_share: Annotated[float, typer.Option(min=0, max=1, help="Share of bad messages.")] = 0.0,
    deploy_share: Annotated[
        float, typer.Option(min=0, max=1, help="Share of instances announced by a deploy.")
    ] = 0.05,
    batch: Annotated[bool, typer.Option(help="One message per app and tick.")] = True,
    brokers: BrokersOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Play a seeded, simulated fleet: to a JSON-lines file (--out) or to Kafka (--to-topic)."""
    from fpstream.simulator import simulate as generate

    if (out is None) == (to_topic is None):
        typer.echo("fpstream simulate: give exactly one of --out FILE or --to-topic T", err=True)
        raise typer.Exit(2)
    settings = build_settings(config, brokers=brokers)
    messages = generate(apps=apps, minutes=minutes, interval_s=interval, seed=seed,
                        bad_share=bad_share, deploy_share=deploy_share, batch=batch)
    counts: dict[str, int] = {"messages": 0, "samples": 0, "deploys": 0, "bad": 0}
    if out is not None:
        with open(out, "wb") as fh:
            for msg in messages:
                fh.write(msg.value + b"\n")
                _tally(counts, msg)
    else:
        from fpstream.io.producer import MessageProducer

        producer = MessageProducer(settings)
        assert to_topic is not None
        topic = {"metrics": to_topic, "deploys": settings.topic_deploys}
        for msg in messages:
            producer.send(topic[msg.topic], msg.key, msg.value, int(msg.ts * 1000))
            _tally(counts, msg)
        producer.flush()
    typer.echo(orjson.dumps(counts).decode(), err=True)


def _tally(counts: dict[str, int], msg: Any) -> None:
    counts["messages"] += 1
    counts["samples"] += msg.count
    counts["deploys"] += msg.topic == "deploys"
    counts["bad"] += msg.bad_reason is not None


@app.command()
def run(
    brokers: BrokersOpt = None,
    redis_url: RedisOpt = None,
    config: ConfigOpt = None,
    catalog: Annotated[
        Path | None, typer.Option("--catalog", help="Instance catalog (JSON or YAML).")
    ] = None,
    metrics_port: Annotated[int | None, typer.Option(help="Prometheus port (0: off).")] = None,
    metrics_host: Annotated[str | None, typer.Option(
        "--metrics-host", help="Address the Prometheus port listens on (default: the "
                               "metrics_host setting, 127.0.0.1).")] = None,
    workers: Annotated[int, typer.Option("-w", "--workers", min=1,
                                         help="Worker threads in this process.")] = 1,
    process_id: Annotated[int | None, typer.Option(
        "-i", "--process-id", help="This process's index in a cluster.")] = None,
    addresses: Annotated[str | None, typer.Option(
        "-a", "--addresses", help="All processes' host:port, ';'-separated.")] = None,
    recovery_dir: Annotated[Path | None, typer.Option(
        "-r", "--recovery-dir", help="Recovery partitions directory.")] = None,
    snapshot_s: Annotated[int, typer.Option("-s", "--snapshot-interval",
                                            help="Seconds between snapshots.")] = 10,
    backup_s: Annotated[int, typer.Option("-b", "--backup-interval",
                                          help="Seconds snapshots are kept for backups.")] = 0,
    create_topics: Annotated[bool, typer.Option(help="Create missing topics first.")] = False,
    tail: Annotated[bool, typer.Option(help="Keep waiting for new messages at the end.")] = True,
) -> None:
    """Run the flow against the given Kafka and Redis (production)."""
    import os

    from fpstream.io.kafka import create_topics as make_topics
    from fpstream.io.kafka import missing_topics
    from fpstream.io.redis_sink import connect
    from fpstream.ops.runner import flow_command, init_recovery, settings_env

    settings = build_settings(config, brokers=brokers, redis_url=redis_url,
                              catalog_path=str(catalog) if catalog else None,
                              metrics_port=metrics_port, metrics_host=metrics_host,
                              recovery_dir=recovery_dir)
    inputs = [settings.topic_metrics, settings.topic_deploys]
    outputs = [settings.topic_allocations, settings.topic_anomalies, settings.topic_deadletter]
    try:
        if create_topics:
            make_topics(settings, inputs + outputs, settings.partitions)
        missing = missing_topics(settings, inputs + outputs)
    except Exception as ex:  # noqa: BLE001 - any client error means the same to the operator
        typer.echo(f"fpstream run: cannot reach Kafka at {settings.redact(settings.brokers)}: "
                   f"{settings.redact(str(ex))}", err=True)
        raise typer.Exit(2) from ex
    if missing:
        typer.echo(f"fpstream run: missing topics {missing}; create them or pass "
                   "--create-topics", err=True)
        raise typer.Exit(2)
    # A wrong URL or password stops us here; an outage once the flow runs does not stop it.
    try:
        connect(settings).close()
    except ConnectionError as ex:
        typer.echo(f"fpstream run: {ex} (setting redis_url)", err=True)
        raise typer.Exit(2) from ex
    if settings.recovery_dir:
        init_recovery(settings.recovery_dir, max(settings.partitions, 2))
    cmd = flow_command(process_id=process_id, addresses=addresses.split(";") if addresses else None,
                       workers=workers, recovery_dir=settings.recovery_dir,
                       snapshot_s=snapshot_s, backup_s=backup_s)
    env = {**os.environ, **settings_env(settings), "FPSTREAM_TAIL": "1" if tail else "0"}
    os.execvpe(cmd[0], cmd, env)


@app.command()
def demo(
    duration: Annotated[float | None, typer.Option(
        "--duration", min=5, help="Stop after this many seconds (default: until Ctrl-C).")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the summary here.")] = None,
    apps: Annotated[int, typer.Option(min=6, help="Applications in the simulated fleet.")] = 60,
    speed: Annotated[float, typer.Option(min=1, help="Event-time seconds per second.")] = 600.0,
    bad_share: Annotated[float, typer.Option(min=0, max=1, help="Share of bad messages.")] = 0.01,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 42,
    config: ConfigOpt = None,
) -> None:
    """Run everything on an embedded broker and Redis, fed by the simulator, with a live view."""
    from fpstream.ops.demo import MEMORY_ONLY, DemoOptions, run_demo
    from fpstream.ops.watch import program_name

    settings = build_settings(config)
    opts = DemoOptions(duration_s=duration, apps=apps, speed=speed, bad_share=bad_share,
                       seed=seed, live=sys.stdout.isatty(), program=program_name())
    typer.echo(f"fpstream demo: {MEMORY_ONLY}", err=True)
    try:
        summary = run_demo(settings, opts)
    except KeyboardInterrupt:
        typer.echo(f"fpstream demo: stopped; {MEMORY_ONLY}", err=True)
        raise typer.Exit(130) from None
    typer.echo(f"fpstream demo: {MEMORY_ONLY}", err=True)
    text = orjson.dumps(summary, option=orjson.OPT_INDENT_2)
    if json_out is not None:
        json_out.write_bytes(text + b"\n")
    typer.echo(text.decode())


@app.command()
def record(
    topic: Annotated[str, typer.Option("--topic", help="Topic to record, all partitions.")],
    out: Annotated[Path, typer.Option(
        "--out", help="JSON-lines file; .gz is gzip, .zst zstandard, else plain.")],
    limit: Annotated[int | None, typer.Option(
        "--limit", min=0, help="Stop after this many messages.")] = None,
    timeout: Annotated[float, typer.Option(
        min=1, help="Give up after this many seconds without progress.")] = 30.0,
    progress: Annotated[bool, typer.Option(help="Progress bar on standard error.")] = True,
    brokers: BrokersOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Record a topic from its beginning to its current end, byte for byte, to a file."""
    from confluent_kafka import KafkaException

    from fpstream.ops.record import RecordError, progress_bar, record_topic

    settings = build_settings(config, brokers=brokers)
    try:
        if progress:
            with progress_bar(f"record {topic}") as bar:
                stats = record_topic(settings, topic, out, limit=limit, timeout=timeout,
                                     progress=bar)
        else:
            stats = record_topic(settings, topic, out, limit=limit, timeout=timeout)
    except (RecordError, OSError, KafkaException) as ex:
        _exit_on(ex, "record", usage=(RecordError, OSError))
    summary = {"topic": topic, "out": str(out), "messages": stats.messages,
               "partitions": {str(p): n for p, n in sorted(stats.per_partition.items())},
               "seconds": round(stats.seconds, 3)}
    typer.echo(orjson.dumps(summary).decode(), err=True)


def _exit_on(ex: Exception, command: str, usage: tuple[type[Exception], ...]) -> NoReturn:
    """Say what went wrong and exit: 2 for a problem with the input, 1 for a Kafka error."""
    if isinstance(ex, usage):
        typer.echo(f"fpstream {command}: {ex}", err=True)
        raise typer.Exit(2) from ex
    typer.echo(f"fpstream {command}: Kafka error: {ex}", err=True)
    raise typer.Exit(1) from ex


@app.command()
def replay(
    file: Annotated[Path, typer.Argument(help="A recording made by fpstream record.")],
    to_topic: Annotated[str, typer.Option("--to-topic", help="Produce the messages here.")],
    speed: Annotated[float | None, typer.Option(
        "--speed", help="Pace by recorded timestamps, X times faster (1 = real time).")] = None,
    as_fast: Annotated[bool, typer.Option(
        "--max", help="As fast as possible (the default).")] = False,
    keep_partitions: Annotated[bool, typer.Option(
        help="Send each message to its recorded partition instead of by key.")] = False,
    create_topic: Annotated[bool, typer.Option(
        help="Create the topic if it is missing.")] = False,
    partitions: Annotated[int | None, typer.Option(
        min=1, help="Partitions of a created topic (default: as many as recorded).")] = None,
    progress: Annotated[bool, typer.Option(help="Progress bar on standard error.")] = True,
    brokers: BrokersOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Produce a recording to a topic in recorded order: same keys, values, headers, times."""
    from confluent_kafka import KafkaException

    from fpstream.ops.record import RecordError, progress_bar, replay_file
    from fpstream.records import RecordFileError

    if speed is not None and as_fast:
        typer.echo("fpstream replay: give at most one of --speed X or --max", err=True)
        raise typer.Exit(2)
    if speed is not None and speed <= 0:
        typer.echo(f"fpstream replay: --speed must be > 0, got {speed}", err=True)
        raise typer.Exit(2)
    settings = build_settings(config, brokers=brokers)
    options: dict[str, Any] = {"speed": speed, "keep_partitions": keep_partitions,
                               "create_topic": create_topic, "partitions": partitions}
    try:
        if progress:
            with progress_bar(f"replay {file.name}") as bar:
                stats = replay_file(settings, file, to_topic, progress=bar, **options)
        else:
            stats = replay_file(settings, file, to_topic, **options)
    except (RecordFileError, RecordError, KafkaException) as ex:
        _exit_on(ex, "replay", usage=(RecordFileError, RecordError))
    except KeyboardInterrupt:
        typer.echo("fpstream replay: stopped", err=True)
        raise typer.Exit(130) from None
    summary = {"topic": to_topic, "file": str(file), "messages": stats.messages,
               "seconds": round(stats.seconds, 3)}
    typer.echo(orjson.dumps(summary).decode(), err=True)


def _register_subsystems() -> None:
    from fpstream.actuate.command import actuate
    from fpstream.agent.command import agent
    from fpstream.backtest.command import backtest
    from fpstream.ops.status import status
    from fpstream.ops.watch import watch

    app.command()(actuate)
    app.command()(agent)
    app.command()(backtest)
    app.command()(status)
    app.command()(watch)


_register_subsystems()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
