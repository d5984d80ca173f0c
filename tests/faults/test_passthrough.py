"""Passthrough Redis options keep their TOML types all the way to the client, in a real flow
worker (started by ``fpstream run``, settings carried as ``FPSTREAM_*``) and in a real actuator,
both working against the real Redis. The worker's metrics listen on the loopback interface."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis
from typer.testing import CliRunner

from fpstream.cli import app
from fpstream.events import Allocation
from fpstream.io.embedded import EmbeddedServices, die_with_parent, free_port
from fpstream.io.redis_sink import RedisPublisher
from fpstream.settings import Settings
from tests.faults.test_exposure import listening
from tests.integration.helpers import fresh_settings, produce, sim

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


def client_names(client: redis.Redis) -> set[str]:
    return {c.get("name", "") for c in client.client_list()}


def toml_settings(s: Settings, **extra: Any) -> str:
    lines = ["[fpstream]"]
    for name in ("brokers", "redis_url", "redis_prefix", "topic_metrics", "topic_deploys",
                 "topic_allocations", "topic_anomalies", "topic_deadletter"):
        lines.append(f'{name} = "{getattr(s, name)}"')
    lines.append(f"partitions = {s.partitions}")
    lines += [f"{k} = {v}" for k, v in extra.items()]
    return "\n".join(lines) + "\n"


def test_redis_options_from_toml_reach_a_real_flow_worker(
        services: EmbeddedServices, make_topic: Any, redis_prefix: str,
        redis_client: redis.Redis, tmp_path: Path) -> None:
    settings = fresh_settings(services.brokers, services.redis_url, make_topic, redis_prefix)
    produce(settings, sim(apps=6, minutes=60, seed=5))
    name = f"fp-flow-{uuid.uuid4().hex[:8]}"
    port = free_port()
    config = tmp_path / "fp.toml"
    config.write_text(toml_settings(settings, metrics_port=port) + (
        "\n[fpstream.redis_options]\n"
        f'socket_timeout = 5\nsocket_connect_timeout = 5\nclient_name = "{name}"\n'
        "health_check_interval = 30\n"))
    log = tmp_path / "flow.log"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FPSTREAM_")}
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "fpstream.cli", "run", "--config",
                                 str(config)], cwd=ROOT, env=clean, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, preexec_fn=die_with_parent())
    try:
        deadline = time.monotonic() + 120
        while not (redis_client.xlen(settings.key("allocations")) > 0
                   and name in client_names(redis_client) and listening(proc.pid, port)):
            assert proc.poll() is None, f"the worker exited: {log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"no allocations: {log.read_text()[-3000:]}"
            time.sleep(0.2)
        assert listening(proc.pid, port) == ["127.0.0.1"]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@pytest.mark.parametrize("source", ["env", "toml"])
def test_redis_options_reach_a_real_actuator_as_their_types(
        source: str, services: EmbeddedServices, redis_prefix: str,
        redis_client: redis.Redis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    prefix = redis_prefix.rstrip(":")
    settings = Settings(redis_url=services.redis_url, redis_prefix=prefix)
    RedisPublisher(redis_client, settings).write([Allocation(
        id="web/vm-1/1", ts=1.7e9, app="web", instance="vm-1", kind="resize",
        instance_type="m.large", reserve={"cpu_cores": 0.5}, predicted={}, cluster=0,
        confidence=1.0, policy="p", model_version=1)])
    seen: list[dict[str, Any]] = []
    original = redis.Redis.from_url.__func__  # type: ignore[attr-defined]

    def spy(cls: type[redis.Redis], url: str, **kwargs: Any) -> redis.Redis:
        seen.append(kwargs)
        return original(cls, url, **kwargs)  # type: ignore[no-any-return]

    monkeypatch.setattr(redis.Redis, "from_url", classmethod(spy))
    env = {"FPSTREAM_REDIS_PREFIX": prefix, "FPSTREAM_REDIS_URL": services.redis_url}
    args = ["actuate", "--metrics-port", "0", "--stop-after", "1"]
    if source == "env":  # the documented hand-written form, as a ConfigMap would carry it
        env["FPSTREAM_REDIS_OPTIONS"] = "socket_timeout=5,retry_on_timeout=true,client_name=fp"
    else:
        config = tmp_path / "fp.toml"
        config.write_text("[fpstream.redis_options]\nsocket_timeout = 5\n"
                          'retry_on_timeout = true\nclient_name = "fp"\n')
        args += ["--config", str(config)]
    result = CliRunner().invoke(app, args, env=env)
    assert result.exit_code == 0, (result.output, result.exception)
    assert seen == [{"socket_timeout": 5, "retry_on_timeout": True, "client_name": "fp"}]
    assert type(seen[0]["socket_timeout"]) is int
    assert '"applied":1.0' in result.output
