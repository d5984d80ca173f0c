"""``fpstream agent``: the typer command; ``fpstream/cli.py`` registers it with
``app.command()(agent)``.

``--config`` names the agent config (TOML or YAML, see ``fpstream.agent.config``). A TOML file
may also hold an ``[fpstream]`` table of settings (brokers, topic_metrics, kafka_options, ...),
read like every other command's settings: file, then ``FPSTREAM_*`` environment, then flags.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import tomllib
from pathlib import Path
from typing import Annotated

import typer

from fpstream.agent.config import AgentConfig, ConfigError, default_config, load_config
from fpstream.settings import Settings, SettingsError, load_settings


def agent(
    config: Annotated[Path | None, typer.Option(
        "--config", help="Agent config (TOML or YAML): apps, match rules, scrapes. "
                         "Without it the whole host is one app, 'host'.")] = None,
    brokers: Annotated[str | None, typer.Option(
        "--brokers", help="Kafka bootstrap servers (host:port,...).")] = None,
    topic: Annotated[str | None, typer.Option(
        "--topic", help="Topic for metric samples (default: settings topic_metrics).")] = None,
    interval: Annotated[float, typer.Option(
        min=0.1, help="Seconds between samples; rates are averaged over it.")] = 10.0,
    once: Annotated[bool, typer.Option(
        "--once", help="Take one sample (over one interval) and exit.")] = False,
    stdout: Annotated[bool, typer.Option(
        "--stdout", help="Print JSON lines instead of sending to Kafka.")] = False,
    buffer_bytes: Annotated[int, typer.Option(
        min=1024, help="Bytes kept while the broker is unreachable; the oldest go first.")
    ] = 64 << 20,
    metrics_port: Annotated[int, typer.Option(
        min=0, max=65535, help="Serve the agent's own Prometheus metrics here (0: off).")] = 0,
    metrics_host: Annotated[str | None, typer.Option(
        "--metrics-host", help="Address the metrics port listens on (default: the "
                               "metrics_host setting, 127.0.0.1).")] = None,
    hostname: Annotated[str | None, typer.Option(
        "--hostname", help="Host name for instance ids (default: this machine's).")] = None,
    log_level: Annotated[str, typer.Option(help="Logging level on stderr.")] = "WARNING",
) -> None:
    """Sample this host's apps (psutil, cgroup v2, their /metrics) and send metric samples."""
    from prometheus_client import start_http_server

    from fpstream.agent.buffer import SendBuffer
    from fpstream.agent.run import Agent, AgentMetrics, KafkaSink, Sink, StdoutSink

    logging.basicConfig(level=log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    agent_config, settings = _load(config, brokers, topic, hostname, metrics_host)
    metrics = AgentMetrics()
    if metrics_port:
        start_http_server(metrics_port, addr=settings.metrics_host, registry=metrics.registry)
    sink: Sink
    if stdout:
        sink = StdoutSink(sys.stdout.buffer, metrics)
    else:
        sink = KafkaSink(settings.kafka_config(), settings.topic_metrics,
                         SendBuffer(buffer_bytes), metrics,
                         check_timeout=min(2.0, max(0.2, interval / 4)))
    runner = Agent(agent_config, sink, interval_s=interval, metrics=metrics)
    stop = threading.Event()
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set()) if main else None
    try:
        left = runner.run(stop, once=once)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    except BrokenPipeError:  # `fpstream agent --stdout | head`: the reader left, so do we
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
        raise typer.Exit(0) from None
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)
    if left:
        typer.echo(f"fpstream agent: {left} messages not delivered to "
                   f"{settings.redact(settings.brokers)}", err=True)
        raise typer.Exit(1)


def _load(config: Path | None, brokers: str | None, topic: str | None,
          hostname: str | None, metrics_host: str | None = None
          ) -> tuple[AgentConfig, Settings]:
    """The agent config and the settings, or exit 2 with the message naming the bad field."""
    try:
        agent_config = (load_config(config, hostname) if config is not None
                        else default_config(hostname))
        settings_file = config if config is not None and _has_settings_table(config) else None
        settings = load_settings(settings_file,
                                 overrides={"brokers": brokers, "topic_metrics": topic,
                                            "metrics_host": metrics_host})
    except (ConfigError, SettingsError) as ex:
        typer.echo(f"fpstream agent: {ex}", err=True)
        raise typer.Exit(2) from ex
    return agent_config, settings


def _has_settings_table(path: Path) -> bool:
    if path.suffix.lower() in (".yaml", ".yml"):
        return False
    try:
        return isinstance(tomllib.loads(path.read_text()).get("fpstream"), dict)
    except (OSError, tomllib.TOMLDecodeError):
        return False
