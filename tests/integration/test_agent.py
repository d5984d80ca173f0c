"""The agent against real processes it starts, a real broker it loses and regains, and the CLI.

Children: a CPU burner, a memory grower and a small HTTP server with a ``/metrics`` endpoint,
each tagged with a unique command-line argument the agent config matches on.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import psutil
import pytest
from confluent_kafka import KafkaError
from prometheus_client import CollectorRegistry

from fpstream.agent.buffer import SendBuffer
from fpstream.agent.config import default_config, parse_config
from fpstream.agent.run import Agent, AgentMetrics, KafkaSink
from fpstream.events import MetricSample, decode_message
from fpstream.io.embedded import (
    Broker,
    EmbeddedError,
    EmbeddedServices,
    create_topics,
    die_with_parent,
    free_port,
)
from fpstream.io.kafka import read_to_end

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable

BURNER = "while True: pass"
GROWER = """
import sys, time
chunks = []
for _ in range(11):
    chunks.append(b"x" * (20 << 20))  # touched pages: RSS grows by 20 MB a step
    time.sleep(0.05)
print("ready", flush=True)
time.sleep(600)
"""
# 100 requests/s, 7 queued, and every query takes 4 ms: what the scrape must report.
WEB = """
import http.server, threading, time
state = {"reqs": 0, "sum": 0.0, "count": 0}
def work():
    while True:
        time.sleep(0.05)
        state["reqs"] += 5
        state["sum"] += 2 * 0.004
        state["count"] += 2
threading.Thread(target=work, daemon=True).start()
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path != "/metrics":
            self.send_error(404)
            return
        body = (
            "# TYPE http_requests_total counter\\n"
            f'http_requests_total{{code="200"}} {state["reqs"]}\\n'
            "# TYPE queue_length gauge\\nqueue_length 7\\n"
            "# TYPE db_query_seconds histogram\\n"
            f'db_query_seconds_bucket{{le="+Inf"}} {state["count"]}\\n'
            f'db_query_seconds_sum {state["sum"]}\\n'
            f'db_query_seconds_count {state["count"]}\\n').encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
"""


class ListSink:
    """Keeps every message the agent hands over."""

    def __init__(self) -> None:
        self.messages: list[tuple[bytes, bytes]] = []

    def submit(self, key: bytes, value: bytes) -> None:
        self.messages.append((key, value))

    def pump(self) -> None:
        pass

    def close(self, timeout: float) -> int:
        return 0


def samples_of(messages: list[tuple[bytes, bytes]]) -> list[MetricSample]:
    """Decode every message, failing on any contract error."""
    out = []
    for key, value in messages:
        decoded = decode_message(value)
        assert decoded.ok, decoded.errors
        for event in decoded.events:
            assert isinstance(event, MetricSample) and event.app == key.decode()
            out.append(event)
    return out


@pytest.fixture
def spawn() -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """Start children that are always killed, even if the test fails or pytest dies."""
    procs: list[subprocess.Popen[str]] = []

    def start(code: str, tag: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen([PYTHON, "-c", code, tag], stdout=subprocess.PIPE, text=True,
                                preexec_fn=die_with_parent())
        procs.append(proc)
        return proc

    try:
        yield start
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
            if proc.stdout:
                proc.stdout.close()


def test_samples_reflect_real_processes(spawn: Callable[..., subprocess.Popen[str]]) -> None:
    tag = uuid.uuid4().hex[:10]
    burner = spawn(BURNER, f"burner-{tag}")
    grower = spawn(GROWER, f"grower-{tag}")
    web = spawn(WEB, f"web-{tag}")
    assert grower.stdout is not None and web.stdout is not None
    port = int(web.stdout.readline())
    assert grower.stdout.readline().strip() == "ready"
    config = parse_config({"apps": [
        {"app": "burner", "labels": {"kind": "cpu"}, "match": {"cmdline": f"burner-{tag}"}},
        {"app": "grower", "match": {"cmdline": f"grower-{tag}"}},
        {"app": "web", "match": {"name": "python*", "cmdline": f"web-{tag}"},
         "scrape": {"url": f"http://127.0.0.1:{port}/metrics", "metrics": {
             "app.req_rate": {"counter": "http_requests_total"},
             "app.queue_len": {"gauge": "queue_length"},
             "app.db_query_ms": {"histogram_mean": "db_query_seconds", "scale": 1000}}}},
    ]}, hostname="itest")
    sink = ListSink()
    agent = Agent(config, sink, interval_s=1.0)
    burner_proc = psutil.Process(burner.pid)
    brackets = []  # (monotonic time, burner CPU seconds) just before and after each tick
    for n in range(3):  # the baseline, then two samples
        if n:
            time.sleep(1.0)
        cpu = burner_proc.cpu_times()
        brackets.append((time.monotonic(), cpu.user + cpu.system))
        agent.tick()
        cpu = burner_proc.cpu_times()
        brackets.append((time.monotonic(), cpu.user + cpu.system))
    # What the burner really used over the last interval, measured around the two ticks.
    (t0, c0), (t1, c1) = brackets[2], brackets[5]
    truth = (c1 - c0) / (t1 - t0)
    samples = samples_of(sink.messages)
    last = {s.app: s for s in samples}
    assert set(last) == {"burner", "grower", "web"}
    assert all(s.instance == "itest" and 0.9 < s.interval_s < 1.5 for s in samples)
    # A lone burner uses a whole core; on a machine shared with other work, its share.
    assert last["burner"].metrics["cpu_cores"] == pytest.approx(truth, abs=0.1)
    assert last["burner"].metrics["cpu_cores"] > (0.5 if truth > 0.7 else 0.2)
    assert last["burner"].labels == {"kind": "cpu"}
    assert last["grower"].metrics["mem_bytes"] > 150e6
    assert last["grower"].metrics["cpu_cores"] < 0.5
    web_metrics = last["web"].metrics
    assert 20 < web_metrics["app.req_rate"] < 150  # 100/s, fewer if the machine is busy
    assert web_metrics["app.queue_len"] == 7
    assert web_metrics["app.db_query_ms"] == pytest.approx(4.0, rel=1e-6)
    assert web_metrics["proc.threads"] >= 2 and web_metrics["proc.open_files"] >= 3
    now = time.time()
    assert all(now - 10 < s.ts <= now for s in samples)  # event time is the wall clock


class SamePortBroker(Broker):
    """A broker that relaunches on the port it first got.

    Tansu keeps data in memory only, so a restarted broker is empty; the agent must find it
    where it left it, as a real broker coming back from an outage would be."""

    def launch(self) -> None:
        if not self.port:
            super().launch()
            return
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                self.command(self.port), stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, cwd=self.workdir, start_new_session=True,
                preexec_fn=die_with_parent())

    def restart(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self.launch()
            try:
                self.wait_ready(timeout=5.0)
                return
            except EmbeddedError:  # the old socket may hold the port for a moment
                self.stop()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)


class RecordingSink:
    """Passes messages to the real sink and remembers each one's sample times."""

    def __init__(self, inner: KafkaSink) -> None:
        self.inner = inner
        self.sent: list[list[float]] = []

    def submit(self, key: bytes, value: bytes) -> None:
        self.sent.append([s["ts"] for s in orjson.loads(value)])
        self.inner.submit(key, value)

    def pump(self) -> None:
        self.inner.pump()

    def close(self, timeout: float) -> int:
        return self.inner.close(timeout)


def consume_all(bootstrap: str, topic: str, timeout: float = 30.0) -> list[bytes]:
    return read_to_end({"bootstrap.servers": bootstrap}, topic, timeout)


def recreate_topic(bootstrap: str, topic: str) -> None:
    """Create the topic on the restarted (empty) broker, unless the agent's first produce
    already did: the broker creates topics on first produce, with its default partitions."""
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    future = admin.create_topics([NewTopic(topic, 1, 1)])[topic]
    try:
        future.result(10)
    except Exception as ex:  # noqa: BLE001 - only "already exists" is fine
        assert ex.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS, ex


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_samples_buffered_during_an_outage_arrive_after_it(tmp_path: Path) -> None:
    topic = "agent.outage"
    broker = SamePortBroker(tmp_path)
    broker.launch()
    try:
        broker.wait_ready()
        create_topics(broker.bootstrap, [topic], partitions=1)
        registry = CollectorRegistry()
        metrics = AgentMetrics(registry)
        kafka = KafkaSink({"bootstrap.servers": broker.bootstrap, "message.timeout.ms": 2000},
                          topic, SendBuffer(16 << 20), metrics, check_timeout=0.2,
                          flush_timeout=1.0)
        sink = RecordingSink(kafka)
        agent = Agent(default_config("outage-host"), sink, interval_s=0.3, metrics=metrics)
        stop = threading.Event()
        result: list[int] = []
        thread = threading.Thread(target=lambda: result.append(agent.run(stop, close_timeout=20)))
        thread.start()
        get = registry.get_sample_value
        try:
            wait_for(lambda: (get("fpstream_agent_messages_delivered_total") or 0) >= 2, 20,
                     "deliveries before the outage")
            broker.stop(timeout=0.5)  # Tansu waits for clients on SIGTERM; then SIGKILL
            first = len(sink.sent)
            wait_for(lambda: len(sink.sent) >= first + 6, 20, "ticks during the outage")
            wait_for(lambda: get("fpstream_agent_broker_up") == 0, 10, "broker_up to drop")
            last = len(sink.sent)
            assert get("fpstream_agent_buffer_messages") > 0
            during = {ts for batch in sink.sent[first:last] for ts in batch}
            broker.restart()
            recreate_topic(broker.bootstrap, topic)
            wait_for(lambda: get("fpstream_agent_broker_up") == 1 and len(sink.sent) > last + 2
                     and get("fpstream_agent_buffer_messages") == 0, 30, "the catch-up")
        finally:
            stop.set()
            thread.join(60)
        assert result == [0], "every message is delivered by the time the agent stops"
        got = {e.ts for raw in consume_all(broker.bootstrap, topic)
               for e in decode_message(raw).events}
        assert len(during) >= 6
        assert during <= got, f"lost during the outage: {sorted(during - got)}"
        assert get("fpstream_agent_dropped_messages_total") == 0
    finally:
        broker.stop(timeout=0.5)


def test_a_tiny_buffer_drops_the_oldest_and_counts_them() -> None:
    registry = CollectorRegistry()
    metrics = AgentMetrics(registry, process=False)
    buffer = SendBuffer(1500)  # room for two or three host samples
    nobody = f"127.0.0.1:{free_port()}"  # nothing listens there
    sink = KafkaSink({"bootstrap.servers": nobody}, "agent.none", buffer, metrics,
                     check_timeout=0.1)
    agent = Agent(default_config("tiny"), sink, interval_s=0.05, metrics=metrics)
    sent: list[float] = []
    for _ in range(8):
        agent.tick()
        time.sleep(0.05)
    sent = [orjson.loads(v)[0]["ts"] for _, v in buffer]
    assert buffer.bytes <= 1500 and 1 <= len(buffer) < 7
    assert buffer.dropped_messages == 7 - len(buffer) and buffer.dropped_bytes > 0
    assert sent == sorted(sent)  # the newest are kept
    get = registry.get_sample_value
    assert get("fpstream_agent_dropped_messages_total") == buffer.dropped_messages
    assert get("fpstream_agent_broker_up") == 0
    assert sink.close(0.3) == len(buffer)


CLI = ("import typer; from fpstream.agent.command import agent; "
       "app = typer.Typer(); app.command()(agent); app()")


def test_once_stdout_passes_validate() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    producer = subprocess.Popen([PYTHON, "-c", CLI, "--once", "--stdout", "--interval", "0.5"],
                                stdout=subprocess.PIPE, cwd=REPO, env=env)
    validate = subprocess.run([PYTHON, "-m", "fpstream.cli", "validate", "-"],
                              stdin=producer.stdout, capture_output=True, cwd=REPO, env=env,
                              timeout=60)
    assert producer.stdout is not None
    producer.stdout.close()
    assert producer.wait(30) == 0
    assert validate.returncode == 0, validate.stdout + validate.stderr
    summary = orjson.loads(validate.stdout.splitlines()[-1])
    assert summary["bad"] == 0 and summary["events"] >= 1


def test_once_to_kafka(services: EmbeddedServices, make_topic: Callable[..., str],
                       tmp_path: Path) -> None:
    topic = make_topic("metrics", 1)
    config = tmp_path / "agent.toml"
    config.write_text(f'[fpstream]\nbrokers = "{services.brokers}"\n\n'
                      '[host]\napp = "node"\nlabels = {rack = "r7"}\n')
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = subprocess.run([PYTHON, "-c", CLI, "--config", str(config), "--topic", topic,
                          "--once", "--interval", "0.5", "--hostname", "kafka-host"],
                         capture_output=True, cwd=REPO, env=env, timeout=60)
    assert run.returncode == 0, run.stderr
    (raw,) = consume_all(services.brokers, topic)
    (sample,) = decode_message(raw).events
    assert isinstance(sample, MetricSample)
    assert (sample.app, sample.instance, sample.labels) == ("node", "kafka-host", {"rack": "r7"})
    assert re.fullmatch(r"\d+\.\d+", str(sample.ts)) and sample.metrics["mem_bytes"] > 0
