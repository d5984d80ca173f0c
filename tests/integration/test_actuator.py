"""Actuators against a real Redis: shared work, a killed actuator, duplicates, failures, pause.

Allocations are written with ``RedisPublisher`` exactly as the flow writes them; duplicates and
hostile entries, which the flow never writes, go in with a raw XADD.
"""

from __future__ import annotations

import inspect
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
import typer
from prometheus_client import CollectorRegistry
from typer.testing import CliRunner

from fpstream.actuate import (
    Actuator,
    ActuatorMetrics,
    ApplyError,
    CommandBackend,
    TokenBucket,
    set_paused,
)
from fpstream.actuate.command import actuate
from fpstream.events import Allocation, encode
from fpstream.io.embedded import EmbeddedServices
from fpstream.io.redis_sink import RedisPublisher
from fpstream.settings import Settings

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def allocation(app: str, instance: str, seq: int, cpu: float = 0.5) -> Allocation:
    return Allocation(id=f"{app}/{instance}/{seq}", ts=1.7e9 + seq, app=app, instance=instance,
                      kind="proactive" if seq == 0 else "resize", instance_type="m.large",
                      reserve={"cpu_cores": cpu, "mem_bytes": 2.0 * (1 << 30)}, predicted={},
                      cluster=1, confidence=0.9, policy="p95-h15", model_version=1)


def xadd(client: redis.Redis, settings: Settings, alloc: Allocation) -> None:
    """Write an entry the way the flow does, but without its duplicate guard."""
    client.xadd(settings.key("allocations"), {"id": alloc.id, "app": alloc.app,
                                               "instance": alloc.instance, "data": encode(alloc)})


class Recorder:
    """A backend that remembers what it applied (thread-safe), optionally slowly."""

    name = "recorder"

    def __init__(self, delay: float = 0.0, fail: str | None = None) -> None:
        self.delay = delay
        self.fail = fail
        self.applied: list[str] = []
        self.calls = 0
        self._lock = threading.Lock()

    def apply(self, alloc: Allocation) -> str:
        with self._lock:
            self.calls += 1
        time.sleep(self.delay)
        if self.fail is not None:
            raise ApplyError(self.fail)
        with self._lock:
            self.applied.append(alloc.id)
        return "recorded"


class MarkerBackend:
    """Logs 'start'/'done' lines to a file; an apply takes ``hold_s`` (None: forever).

    Its source is also run in a child process, so it imports what it needs itself.
    """

    name = "marker"

    def __init__(self, log_path: str, hold_s: float | None = 0.0) -> None:
        self.log_path = log_path
        self.hold_s = hold_s

    def _log(self, line: str) -> None:
        import os

        with open(self.log_path, "a") as fh:
            fh.write(line + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def apply(self, alloc: Any) -> str:
        import os
        import time

        self._log(f"start {alloc.id} {os.getpid()}")
        until = time.monotonic() + (self.hold_s if self.hold_s is not None else 1e9)
        while time.monotonic() < until:  # "inside the apply"
            time.sleep(0.05)
        self._log(f"done {alloc.id} {os.getpid()}")
        return "marked"


@pytest.fixture
def settings(services: EmbeddedServices, redis_prefix: str) -> Settings:
    return Settings(redis_url=services.redis_url, redis_prefix=redis_prefix.rstrip(":"),
                    metrics_port=0)


@pytest.fixture
def clients(services: EmbeddedServices) -> Iterator[Callable[[], redis.Redis]]:
    """Extra Redis connections (one per actuator), closed after the test."""
    made: list[redis.Redis] = []

    def make() -> redis.Redis:
        made.append(redis.Redis.from_url(services.redis_url))
        return made[-1]

    yield make
    for c in made:
        c.close()


def make_actuator(client: redis.Redis, settings: Settings, backend: Any, **kw: Any) -> Actuator:
    kw.setdefault("block_ms", 100)
    kw.setdefault("metrics", ActuatorMetrics(CollectorRegistry()))
    return Actuator(client, settings, backend, **kw)


def drive(actuators: list[Actuator], done: Callable[[], bool], timeout: float = 8.0) -> None:
    """Step the actuators in turn until ``done()``; fail with a clear message at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        for a in actuators:
            a.step()
        if done():
            return
        assert time.monotonic() < deadline, f"not done within {timeout} s"


def wait_for(done: Callable[[], bool], timeout: float = 8.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"{what} not reached within {timeout} s"
        time.sleep(0.02)


def group_state(client: redis.Redis, settings: Settings, group: str = "fpstream-actuators"
                ) -> dict[str, int]:
    """Pending (delivered, not acknowledged) and lag (not yet delivered) of the group."""
    for g in client.xinfo_groups(settings.key("allocations")):
        name = g["name"].decode() if isinstance(g["name"], bytes) else g["name"]
        if name == group:
            return {"pending": int(g["pending"]), "lag": int(g["lag"] or 0)}
    raise AssertionError(f"no group {group}")


def applied_record(client: redis.Redis, settings: Settings, app: str,
                   instance: str) -> dict[str, Any] | None:
    raw = client.hget(settings.key("applied", app), instance)
    return None if raw is None else orjson.loads(raw)


def metric(a: Actuator, name: str, **labels: str) -> float:
    return a.metrics.registry.get_sample_value(name, labels) or 0.0


# -- the required scenarios ---------------------------------------------------------------


def test_two_actuators_in_one_group_share_the_work(
        redis_client: redis.Redis, settings: Settings,
        clients: Callable[[], redis.Redis]) -> None:
    backends = [Recorder(delay=0.01), Recorder(delay=0.01)]
    actuators = [make_actuator(clients(), settings, b, consumer=f"a{i}", batch=4)
                 for i, b in enumerate(backends)]
    for a in actuators:
        a.ensure_group()
    threads = [threading.Thread(target=a.run, kwargs={"stop_after": 9}) for a in actuators]
    for t in threads:
        t.start()
    try:
        allocs = [allocation("shop", f"vm-{i}", 1) for i in range(40)]
        RedisPublisher(redis_client, settings).write(allocs)
        wait_for(lambda: sum(len(b.applied) for b in backends) >= 40, what="40 applies")
        wait_for(lambda: group_state(redis_client, settings)["pending"] == 0, what="all acked")
    finally:
        for a in actuators:
            a.stop()
        for t in threads:
            t.join()
    applied = Counter(backends[0].applied + backends[1].applied)
    assert all(len(b.applied) > 0 for b in backends), [len(b.applied) for b in backends]
    assert sorted(applied) == sorted(a.id for a in allocs)
    assert max(applied.values()) == 1
    for a, b in zip(actuators, backends, strict=True):
        assert metric(a, "fpstream_actuator_applied_total") == len(b.applied)
    records = [applied_record(redis_client, settings, "shop", f"vm-{i}") for i in range(40)]
    assert {r["outcome"] for r in records if r} == {"applied"}
    assert {r["actuator"] for r in records if r} == {"a0", "a1"}


_VICTIM = """
import sys
import redis
from fpstream.actuate import Actuator
from fpstream.settings import Settings

url, prefix, log_path, hold = sys.argv[1:5]
settings = Settings(redis_url=url, redis_prefix=prefix)
actuator = Actuator(redis.Redis.from_url(url), settings,
                    MarkerBackend(log_path, None if hold == "forever" else float(hold)),
                    consumer="victim", claim_after_s=1.0, block_ms=100)
actuator.install_signal_handlers()
actuator.run()
"""


def start_victim(settings: Settings, log_path: Path, hold: str) -> subprocess.Popen[bytes]:
    """An actuator in a child process, applying through ``MarkerBackend``."""
    script = ("from __future__ import annotations\n"
              + textwrap.dedent(inspect.getsource(MarkerBackend)) + _VICTIM)
    return subprocess.Popen(
        [sys.executable, "-c", script, settings.redis_url, settings.redis_prefix,
         str(log_path), hold], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})


def wait_started(victim: subprocess.Popen[bytes], log_path: Path, alloc_id: str) -> None:
    def started() -> bool:
        assert victim.poll() is None, "the actuator process exited on its own"
        return f"start {alloc_id}" in log_path.read_text()

    wait_for(started, timeout=10, what="child actuator inside its first apply")


def test_killed_actuator_loses_nothing_and_nothing_is_applied_twice(
        redis_client: redis.Redis, settings: Settings, tmp_path: Path,
        clients: Callable[[], redis.Redis]) -> None:
    log_path = tmp_path / "applies.log"
    log_path.touch()
    allocs = [allocation("pay", f"vm-{i}", 2) for i in range(3)]
    RedisPublisher(redis_client, settings).write(allocs)
    victim = start_victim(settings, log_path, "forever")
    try:
        wait_started(victim, log_path, "pay/vm-0/2")
        survivor = make_actuator(clients(), settings, MarkerBackend(str(log_path)),
                                 consumer="survivor", claim_after_s=1.0)
        # While the victim lives, its heartbeat keeps vm-0 its own; the entries it read but
        # has not reached yet go idle and are re-claimed by the survivor.
        done = lambda i: f"done pay/vm-{i}/2" in log_path.read_text()  # noqa: E731
        drive([survivor], lambda: done(1) and done(2))
        assert not done(0) and victim.poll() is None
        victim.send_signal(signal.SIGKILL)
        victim.wait(5)
        drive([survivor], lambda: done(0))
        drive([survivor], lambda: group_state(redis_client, settings)["pending"] == 0)
    finally:
        if victim.poll() is None:
            victim.kill()
        victim.wait(5)
    lines = log_path.read_text().splitlines()
    starts = Counter(line.split()[1] for line in lines if line.startswith("start"))
    dones = Counter(line.split()[1] for line in lines if line.startswith("done"))
    assert dones == {a.id: 1 for a in allocs}
    assert starts["pay/vm-0/2"] == 2  # once in the killed victim, once in the survivor
    for a in allocs:
        record = applied_record(redis_client, settings, "pay", a.instance)
        assert record is not None
        assert (record["id"], record["outcome"], record["actuator"]) == \
            (a.id, "applied", "survivor")
    assert metric(survivor, "fpstream_actuator_applied_total") == 3


def test_sigterm_finishes_the_apply_in_hand_then_exits(
        redis_client: redis.Redis, settings: Settings, tmp_path: Path) -> None:
    log_path = tmp_path / "applies.log"
    log_path.touch()
    RedisPublisher(redis_client, settings).write([allocation("term", "vm-0", 1)])
    child = start_victim(settings, log_path, "1.0")
    try:
        wait_started(child, log_path, "term/vm-0/1")
        child.send_signal(signal.SIGTERM)
        assert child.wait(8) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(5)
    assert "done term/vm-0/1" in log_path.read_text()
    assert group_state(redis_client, settings)["pending"] == 0
    record = applied_record(redis_client, settings, "term", "vm-0")
    assert record is not None and record["id"] == "term/vm-0/1"


def test_duplicates_and_older_allocations_are_skipped(
        redis_client: redis.Redis, settings: Settings,
        clients: Callable[[], redis.Redis]) -> None:
    publisher = RedisPublisher(redis_client, settings)
    publisher.write([allocation("dup", "i1", 1), allocation("dup", "i1", 2),
                     allocation("dup", "i2", 5)])
    assert publisher.write([allocation("dup", "i1", 2)]) == 0  # the flow's own guard
    xadd(redis_client, settings, allocation("dup", "i1", 2))  # same id again
    xadd(redis_client, settings, allocation("dup", "i1", 1))  # older, after the newer
    xadd(redis_client, settings, allocation("dup", "i2", 5))
    backend = Recorder()
    act = make_actuator(clients(), settings, backend)
    drive([act], lambda: group_state(redis_client, settings) == {"pending": 0, "lag": 0})
    assert backend.applied == ["dup/i1/2", "dup/i2/5"]
    assert metric(act, "fpstream_actuator_applied_total") == 2
    assert metric(act, "fpstream_actuator_skipped_total", reason="superseded") == 1  # i1/1
    assert metric(act, "fpstream_actuator_skipped_total", reason="duplicate") == 2
    assert metric(act, "fpstream_actuator_skipped_total", reason="stale") == 1
    # A restarted actuator on the same group (a redelivery of everything) applies nothing.
    redis_client.xgroup_setid(settings.key("allocations"), "fpstream-actuators", "0",
                              entries_read=0)
    again = make_actuator(clients(), settings, backend, consumer="restarted")
    drive([again], lambda: group_state(redis_client, settings) == {"pending": 0, "lag": 0})
    assert backend.applied == ["dup/i1/2", "dup/i2/5"]
    assert metric(again, "fpstream_actuator_applied_total") == 0


def test_failing_backend_dead_letters_after_the_retries(
        redis_client: redis.Redis, settings: Settings,
        clients: Callable[[], redis.Redis]) -> None:
    RedisPublisher(redis_client, settings).write([allocation("bad", "vm-9", 1)])
    backend = Recorder(fail="quota exceeded in zone eu-1")
    act = make_actuator(clients(), settings, backend, max_attempts=3, backoff_s=0.05)
    dl_key = settings.key("actuator", "deadletter")
    drive([act], lambda: redis_client.xlen(dl_key) == 1)
    [(_, fields)] = redis_client.xrange(dl_key)
    letter = {k.decode(): v.decode() for k, v in fields.items()}
    assert letter["id"] == "bad/vm-9/1"
    assert letter["error"] == "quota exceeded in zone eu-1"
    assert (letter["attempts"], letter["reason"], letter["backend"]) == ("3", "failed", "recorder")
    assert orjson.loads(letter["data"])["id"] == "bad/vm-9/1"
    assert backend.calls == 3
    assert group_state(redis_client, settings)["pending"] == 0
    assert redis_client.hlen(settings.key("actuator", "attempts", "fpstream-actuators")) == 0
    record = applied_record(redis_client, settings, "bad", "vm-9")
    assert record is not None and record["outcome"] == "deadlettered"
    assert metric(act, "fpstream_actuator_failed_total") == 3
    assert metric(act, "fpstream_actuator_retried_total") == 2
    assert metric(act, "fpstream_actuator_deadletters_total", reason="failed") == 1
    assert metric(act, "fpstream_actuator_applied_total") == 0


def test_ids_with_shell_metacharacters_never_reach_a_shell(
        redis_client: redis.Redis, settings: Settings, tmp_path: Path,
        clients: Callable[[], redis.Redis]) -> None:
    argv_log = tmp_path / "argv.log"
    recorder = tmp_path / "record.py"
    recorder.write_text("import json, sys\n"
                        f"open({str(argv_log)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n")
    pwned = tmp_path / "pwned"
    hostile = [f"vm-1;touch${{IFS}}{pwned}", f"$(touch {pwned})", f"`touch {pwned}`",
               f"vm-1 && touch {pwned}"]
    for i, instance in enumerate(hostile):
        xadd(redis_client, settings, allocation("web", instance, i + 1))
    xadd(redis_client, settings, replace(allocation("web", "vm-2", 1),
                                         instance_type=f"m.large;touch {pwned}"))
    good = allocation("web.eu@team", "ns.pod-1:8080", 1)
    RedisPublisher(redis_client, settings).write([good])
    backend = CommandBackend([sys.executable, str(recorder), "{app}", "{instance}",
                              "{instance_type}", "{cpu_millicores}m"])
    act = make_actuator(clients(), settings, backend)
    drive([act], lambda: group_state(redis_client, settings) == {"pending": 0, "lag": 0})
    assert not pwned.exists()
    assert argv_log.read_text().splitlines() == [
        '["web.eu@team", "ns.pod-1:8080", "m.large", "500m"]']
    letters = redis_client.xrange(settings.key("actuator", "deadletter"))
    assert len(letters) == 5
    for _, fields in letters:
        assert fields[b"reason"] == b"invalid"
        assert b"must match" in fields[b"error"]
    assert metric(act, "fpstream_actuator_deadletters_total", reason="invalid") == 5


def test_pause_holds_work_pending_and_resume_releases_it(
        redis_client: redis.Redis, settings: Settings,
        clients: Callable[[], redis.Redis]) -> None:
    backend = Recorder()
    act = make_actuator(clients(), settings, backend)
    thread = threading.Thread(target=act.run, kwargs={"stop_after": 9})
    thread.start()
    try:
        set_paused(redis_client, settings, True, by="test")
        wait_for(lambda: metric(act, "fpstream_actuator_paused") == 1, what="pause seen")
        allocs = [allocation("batch", f"vm-{i}", 1) for i in range(5)]
        RedisPublisher(redis_client, settings).write(allocs)
        hold_until = time.monotonic() + 1.2  # longer than the pause cache
        while time.monotonic() < hold_until:
            assert backend.calls == 0
            time.sleep(0.05)
        state = group_state(redis_client, settings)
        assert state["pending"] + state["lag"] == 5
        set_paused(redis_client, settings, False)
        wait_for(lambda: len(backend.applied) == 5, what="applies after resume")
        wait_for(lambda: group_state(redis_client, settings) == {"pending": 0, "lag": 0},
                 what="all acked")
    finally:
        act.stop()
        thread.join()
    assert sorted(backend.applied) == sorted(a.id for a in allocs)
    assert metric(act, "fpstream_actuator_paused") == 0


def test_rate_limit_holds_applies_until_a_token_is_free(
        redis_client: redis.Redis, settings: Settings,
        clients: Callable[[], redis.Redis]) -> None:
    backend = Recorder()
    act = make_actuator(clients(), settings, backend, rate=1.0)
    now = [0.0]
    act.bucket = TokenBucket(1.0, clock=lambda: now[0])  # time moves only when the test says
    thread = threading.Thread(target=act.run, kwargs={"stop_after": 9})
    thread.start()
    try:
        RedisPublisher(redis_client, settings).write(
            [allocation("rl", f"vm-{i}", 1) for i in range(3)])
        wait_for(lambda: len(backend.applied) == 1, what="the first apply")
        time.sleep(0.3)
        assert len(backend.applied) == 1  # the frozen bucket has no token for the second
        now[0] = 1.0
        wait_for(lambda: len(backend.applied) == 2, what="the second apply")
        now[0] = 100.0
        wait_for(lambda: len(backend.applied) == 3, what="the third apply")
        wait_for(lambda: group_state(redis_client, settings)["pending"] == 0, what="all acked")
    finally:
        act.stop()
        thread.join()


def test_command_registers_pauses_and_runs_a_file_backend(
        redis_client: redis.Redis, settings: Settings, tmp_path: Path) -> None:
    app = typer.Typer()
    app.callback()(lambda: None)  # a group, as in fpstream/cli.py
    app.command()(actuate)
    runner = CliRunner()
    env = {"FPSTREAM_REDIS_PREFIX": settings.redis_prefix}
    base = ["actuate", "--redis-url", settings.redis_url]

    result = runner.invoke(app, [*base, "--pause"], env=env)
    assert result.exit_code == 0, result.output
    assert redis_client.exists(settings.key("actuator", "paused"))
    result = runner.invoke(app, [*base, "--resume"], env=env)
    assert result.exit_code == 0, result.output
    assert not redis_client.exists(settings.key("actuator", "paused"))

    result = runner.invoke(app, [*base, "--backend", "command"], env=env)
    assert result.exit_code == 2 and "--command-template" in result.output
    result = runner.invoke(app, [*base, "--backend", "command", "--command-template",
                                 '["resize", "{bogus}"]'], env=env)
    assert result.exit_code == 2 and "{bogus}" in result.output

    allocs = [allocation("cli", "vm-1", 1), allocation("cli", "vm-2", 1)]
    RedisPublisher(redis_client, settings).write(allocs)
    out = tmp_path / "desired"
    result = runner.invoke(app, [*base, "--backend", "file", "--out-dir", str(out),
                                 "--metrics-port", "0", "--stop-after", "2",
                                 "--consumer", "cli-test"], env=env)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (out / "cli").iterdir()) == ["vm-1.json", "vm-2.json"]
    assert orjson.loads((out / "cli" / "vm-2.json").read_bytes())["id"] == "cli/vm-2/1"
    assert '"applied":2.0' in result.output
