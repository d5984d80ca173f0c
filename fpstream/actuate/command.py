"""``fpstream actuate``: run one actuator, or flip the global pause switch.

Registered by ``fpstream/cli.py`` with ``app.command()(actuate)``; this module imports nothing
from the CLI so that registration cannot create an import cycle.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import orjson
import typer

from fpstream.settings import Settings, SettingsError, load_settings, mask_url

if TYPE_CHECKING:
    import redis

    from fpstream.actuate.backends import Backend
    from fpstream.actuate.metrics import ActuatorMetrics


class BackendName(StrEnum):
    log = "log"
    command = "command"
    kubernetes = "kubernetes"
    file = "file"


def actuate(
    redis_url: Annotated[str | None, typer.Option("--redis-url", help="Redis URL.")] = None,
    config: Annotated[Path | None, typer.Option(
        "--config", help="TOML settings file (then FPSTREAM_* env, then flags).")] = None,
    group: Annotated[str, typer.Option(help="Consumer group shared by all actuators.")]
    = "fpstream-actuators",
    consumer: Annotated[str | None, typer.Option(
        help="This actuator's name in the group (default: hostname-pid).")] = None,
    backend: Annotated[BackendName, typer.Option(
        help="log: dry run; command: run a program; kubernetes: in-place pod resize; "
             "file: one JSON file per instance.")] = BackendName.log,
    command_template: Annotated[list[str] | None, typer.Option(
        "--command-template",
        help='argv of the command backend: a JSON array (\'["resize", "{instance}"]\') or the '
             "option repeated once per part. Placeholders: {app} {instance} {id} {seq} "
             "{instance_type} {cpu_cores} {cpu_millicores} {mem_bytes} {mem_mib} ...")] = None,
    out_dir: Annotated[Path | None, typer.Option(
        "--out-dir", help="Directory of the file backend.")] = None,
    namespace: Annotated[str, typer.Option(help="Kubernetes namespace of the pods.")]
    = "default",
    pod_template: Annotated[str, typer.Option(help="Pod name from the allocation.")]
    = "{instance}",
    container: Annotated[str, typer.Option(help="Container to resize in each pod.")] = "app",
    kubectl: Annotated[str, typer.Option(help="kubectl program.")] = "kubectl",
    timeout: Annotated[float, typer.Option(
        min=0.1, help="Seconds a command or kubectl may run.")] = 30.0,
    rate: Annotated[float | None, typer.Option(
        min=0, help="At most this many applies per second (default: no limit).")] = None,
    max_attempts: Annotated[int, typer.Option(
        min=1, help="Attempts before an allocation is dead-lettered.")] = 5,
    claim_after: Annotated[float, typer.Option(
        min=0.1, help="Seconds before another actuator's unacknowledged entry is re-claimed.")]
    = 30.0,
    metrics_port: Annotated[int, typer.Option(
        min=0, max=65535, help="Prometheus port (0: off).")] = 9109,
    metrics_host: Annotated[str | None, typer.Option(
        "--metrics-host", help="Address the Prometheus port listens on (default: the "
                               "metrics_host setting, 127.0.0.1).")] = None,
    stop_after: Annotated[float | None, typer.Option(
        min=0, help="Exit after this many seconds (default: until SIGTERM or Ctrl-C).")] = None,
    pause: Annotated[bool, typer.Option(
        "--pause", help="Set the global pause switch and exit.")] = False,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Clear the global pause switch and exit.")] = False,
) -> None:
    """Apply allocations from Redis exactly once, through a backend (dry run by default)."""
    from fpstream.actuate.actuator import Actuator, set_paused
    from fpstream.actuate.metrics import ActuatorMetrics

    settings = _settings(config, redis_url, metrics_host)
    client = _connect(settings)
    if pause and resume:
        _fail("give --pause or --resume, not both")
    if pause or resume:
        set_paused(client, settings, pause, by=f"{socket.gethostname()}-{os.getpid()}")
        typer.echo("paused" if pause else "resumed")
        return
    try:
        chosen = _backend(backend, command_template, out_dir, namespace, pod_template,
                          container, kubectl, timeout)
        metrics = ActuatorMetrics()
        actuator = Actuator(client, settings, chosen, group=group, consumer=consumer,
                            metrics=metrics, max_attempts=max_attempts,
                            claim_after_s=claim_after, rate=rate or None)
    except ValueError as ex:
        _fail(str(ex))
    _configure_logging()
    server = None
    if metrics_port:
        from prometheus_client import start_http_server

        server, _ = start_http_server(metrics_port, addr=settings.metrics_host,
                                      registry=metrics.registry)
    typer.echo(f"fpstream actuate: {actuator.consumer} in group {group!r} on "
               f"{mask_url(settings.redis_url)} (prefix {settings.redis_prefix!r}), "
               f"backend {chosen.name}", err=True)
    restore = actuator.install_signal_handlers()
    try:
        actuator.run(stop_after=stop_after)
    finally:
        restore()
        if server is not None:
            server.shutdown()
            server.server_close()
        client.close()
    typer.echo(orjson.dumps(_summary(metrics)).decode(), err=True)


def _settings(config: Path | None, redis_url: str | None, metrics_host: str | None) -> Settings:
    try:
        return load_settings(config, overrides={"redis_url": redis_url,
                                                "metrics_host": metrics_host})
    except SettingsError as ex:
        _fail(str(ex))


def _connect(settings: Settings) -> redis.Redis:
    import redis

    try:
        client = redis.Redis.from_url(settings.redis_url, **settings.redis_options)
        client.ping()
    except (redis.RedisError, ValueError, TypeError, OSError) as ex:
        # A client library's message may quote what it was given: masked like the URL.
        _fail(f"cannot reach Redis at {mask_url(settings.redis_url)}: "
              f"{settings.redact(str(ex))}")
    return client


def _backend(name: BackendName, template: list[str] | None, out_dir: Path | None,
             namespace: str, pod_template: str, container: str, kubectl: str,
             timeout: float) -> Backend:
    from fpstream.actuate import backends

    if name is BackendName.command:
        return backends.CommandBackend(parse_template(template), timeout_s=timeout)
    if name is BackendName.kubernetes:
        return backends.KubernetesBackend(namespace=namespace, pod_template=pod_template,
                                          container=container, kubectl=kubectl,
                                          timeout_s=timeout)
    if name is BackendName.file:
        if out_dir is None:
            raise ValueError("the file backend needs --out-dir DIR")
        return backends.FileBackend(out_dir)
    return backends.LogBackend()


def parse_template(parts: list[str] | None) -> list[str]:
    """``--command-template`` as argv: one JSON array, or the repeated option's values."""
    if not parts:
        raise ValueError("the command backend needs --command-template, e.g. "
                         '\'["/usr/local/bin/resize", "{instance}", "{cpu_millicores}"]\'')
    if len(parts) == 1 and parts[0].lstrip().startswith("["):
        try:
            argv = json.loads(parts[0])
        except json.JSONDecodeError as ex:
            raise ValueError(f"--command-template is not a JSON array: {ex}") from ex
        if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
            raise ValueError("--command-template JSON must be an array of strings")
        return argv
    return list(parts)


def _summary(metrics: ActuatorMetrics) -> dict[str, float]:
    from fpstream.actuate.metrics import DEADLETTER_REASONS, SKIP_REASONS

    get = metrics.registry.get_sample_value
    return {
        "applied": get("fpstream_actuator_applied_total") or 0.0,
        "skipped": sum(get("fpstream_actuator_skipped_total", {"reason": r}) or 0.0
                       for r in SKIP_REASONS),
        "failed": get("fpstream_actuator_failed_total") or 0.0,
        "deadletters": sum(get("fpstream_actuator_deadletters_total", {"reason": r}) or 0.0
                           for r in DEADLETTER_REASONS),
    }


def _configure_logging() -> None:
    # Only when nothing is configured yet: a host application (or pytest) owns its handlers.
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _fail(message: str) -> NoReturn:
    typer.echo(f"fpstream actuate: {message}", err=True)
    raise typer.Exit(2)
