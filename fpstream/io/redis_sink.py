"""Redis outputs: the actuators' allocation stream, desired state, cluster definitions and
the A/B experiment's summary (``<prefix>:experiment:<name>``).

Writes are idempotent: after a worker resumes from a snapshot it may emit the same allocations
again, and the script below refuses any allocation whose sequence number is not newer than the
one already desired for that instance, so the stream never carries a duplicate.

Redis may go away while the flow runs. The sink keeps what it could not write, retries on a
backoff and, once ``redis_backlog_max`` outputs wait, holds the flow back until Redis returns:
nothing is dropped and the worker does not die. What waits is part of the sink's snapshot, so a
worker that dies during the outage resumes with it.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Iterable
from itertools import islice
from typing import Any

import orjson
import redis
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition
from redis.backoff import NoBackoff
from redis.retry import Retry

from fpstream.errors import FpstreamError
from fpstream.events import SCHEMA_VERSION, Allocation, encode
from fpstream.fleet.experiment import ExperimentSnapshot
from fpstream.fleet.stage import ClusterDef, ClusterSnapshot
from fpstream.io.backoff import Backoff
from fpstream.io.metrics import FlowMetrics
from fpstream.settings import Settings, mask_url

log = logging.getLogger("fpstream.io.redis")

#: The Redis output's partitions: a fixed count, since a partition's backlog is recovered under
#: its name. Allocations are routed by app (an instance's stay in order), the rest by one key.
REDIS_PARTITIONS = 4
FLEET_KEY = "fleet"
#: Outputs written in one pipeline when a backlog drains.
_CHUNK = 500
#: How long closing waits for Redis to take what is queued.
CLOSE_WAIT_S = 5.0

# KEYS: stream, desired hash. ARGV: instance, seq, json, maxlen, id, app.
_PUBLISH_ALLOCATION = """
local old = redis.call('HGET', KEYS[2], ARGV[1])
if old then
  local last = tonumber(string.match(cjson.decode(old)['id'], '(%d+)$'))
  if last and last >= tonumber(ARGV[2]) then return 0 end
end
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[4], '*',
           'id', ARGV[5], 'app', ARGV[6], 'instance', ARGV[1], 'data', ARGV[3])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
return 1
"""

# KEYS: experiment key. ARGV: ts, json. Keeps the newest summary: a snapshot replayed after a
# resume (older event time) never overwrites a newer one.
_PUBLISH_EXPERIMENT = """
local old = redis.call('GET', KEYS[1])
if old then
  local ok, doc = pcall(cjson.decode, old)
  if ok and type(doc) == 'table' and tonumber(doc['ts']) and
     tonumber(doc['ts']) > tonumber(ARGV[1]) then return 0 end
end
redis.call('SET', KEYS[1], ARGV[2])
return 1
"""


class RedisOutputError(FpstreamError, RuntimeError):
    """The Redis output stopped: Redis stayed away while it closed, or its writer failed on
    an error that is not Redis's."""


def connect(settings: Settings) -> redis.Redis:
    """A client for the configured Redis, checked with a PING so a bad URL fails at start."""
    try:
        client = redis.Redis.from_url(settings.redis_url, **settings.redis_options)
        client.ping()
    except (redis.RedisError, ValueError) as ex:  # ValueError: a URL redis-py cannot parse
        msg = f"cannot reach Redis at {mask_url(settings.redis_url)}: {mask_url(str(ex))}"
        raise ConnectionError(msg) from ex
    return client


def sink_client(settings: Settings) -> redis.Redis:
    """A client for the sink, unchecked: Redis may well be away when a worker starts.

    The sink retries on a schedule of its own, so one attempt neither hangs nor retries by
    itself (``redis_options`` may still say otherwise).
    """
    defaults: dict[str, Any] = {"socket_connect_timeout": 5.0, "socket_timeout": 10.0,
                                "retry": Retry(NoBackoff(), 0)}
    return redis.Redis.from_url(settings.redis_url, **{**defaults, **settings.redis_options})


def allocation_seq(alloc: Allocation) -> int:
    return int(alloc.id.rsplit("/", 1)[1])


class RedisPublisher:
    """Writes one batch of outputs in a single pipeline."""

    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self.client = client
        self.settings = settings
        self._publish = client.register_script(_PUBLISH_ALLOCATION)
        self._publish_experiment = client.register_script(_PUBLISH_EXPERIMENT)

    def write(self, items: Iterable[Allocation | ClusterSnapshot | ExperimentSnapshot]) -> int:
        """Publish; returns how many allocations were new (not redeliveries)."""
        s = self.settings
        pipe = self.client.pipeline(transaction=False)
        allocations = 0
        snapshot: ClusterSnapshot | None = None
        experiments: dict[str, ExperimentSnapshot] = {}
        for item in items:
            if isinstance(item, Allocation):
                keys = [s.key("allocations"), s.key("desired", item.app)]
                argv: list[str | int | bytes] = [item.instance, allocation_seq(item), encode(item),
                        s.allocations_maxlen, item.id, item.app]
                self._publish(keys=keys, args=argv, client=pipe)
                allocations += 1
            elif isinstance(item, ExperimentSnapshot):
                old = experiments.get(item.name)
                if old is None or item.ts >= old.ts:  # only the newest per experiment matters
                    experiments[item.name] = item
            else:
                snapshot = item  # only the newest of a batch matters
        for exp in experiments.values():
            self._publish_experiment(keys=[s.key("experiment", exp.name)],
                                     args=[repr(exp.ts), experiment_doc(exp)], client=pipe)
        results: list[Any] = pipe.execute() if allocations or experiments else []
        if snapshot is not None:
            self.publish_clusters(snapshot)
        return sum(1 for r in results[:allocations] if r == 1)

    def publish_experiment(self, snap: ExperimentSnapshot) -> bool:
        """Store one experiment summary; False if a newer one is already there."""
        key = self.settings.key("experiment", snap.name)
        return bool(self._publish_experiment(keys=[key], args=[repr(snap.ts),
                                                               experiment_doc(snap)]))

    def publish_clusters(self, snap: ClusterSnapshot) -> None:
        """Replace the cluster definitions and app memberships in one transaction."""
        s = self.settings
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(s.key("clusters"), s.key("app_cluster"))
        if snap.clusters:
            pipe.hset(s.key("clusters"), mapping={
                str(c.id): orjson.dumps(cluster_doc(c)) for c in snap.clusters})
        if snap.apps:
            pipe.hset(s.key("app_cluster"), mapping={a: str(c) for a, c in snap.apps.items()})
        pipe.set(s.key("clusters", "version"), snap.version)
        pipe.execute()


def experiment_doc(snap: ExperimentSnapshot) -> bytes:
    """The stored JSON: the summary plus the snapshot's event time and experiment name."""
    return orjson.dumps({**snap.summary, "name": snap.name, "ts": snap.ts})


def cluster_doc(c: ClusterDef) -> dict[str, Any]:
    """The JSON stored per cluster in ``<prefix>:clusters`` (schema ``cluster``)."""
    return {"id": c.id, "ts": c.ts, "version": c.version, "members": c.members,
            "centroid": list(c.centroid), "needs": c.needs, "v": SCHEMA_VERSION}


def redis_key(item: Any) -> str:
    """The routing key of a Redis output: an allocation's app, else the fleet's one key."""
    return item.app if isinstance(item, Allocation) else FLEET_KEY


def error_kind(ex: redis.RedisError) -> str:
    """One of ``metrics.REDIS_ERROR_KINDS``."""
    kinds: tuple[tuple[type[redis.RedisError], str], ...] = (
        (redis.exceptions.BusyLoadingError, "loading"),
        (redis.exceptions.AuthenticationError, "auth"),
        (redis.exceptions.ConnectionError, "connection"),
        (redis.exceptions.TimeoutError, "timeout"),
        (redis.exceptions.ReadOnlyError, "readonly"),
        (redis.exceptions.OutOfMemoryError, "oom"),
    )
    return next((kind for cls, kind in kinds if isinstance(ex, cls)), "other")


class _Partition(StatefulSinkPartition[Any, tuple[Any, ...]]):
    """One partition of the Redis output: a queue that a thread of its own writes to Redis.

    ``write_batch`` only queues, and waits while more than ``limit`` outputs are queued (Redis
    away: backpressure); the snapshot is what is queued, written or not yet acknowledged.
    The writer retries failed writes on a backoff and gives up only on errors that are not
    Redis's (a bug), which the next call from the flow raises.
    """

    def __init__(self, name: str, publisher: RedisPublisher, pending: Iterable[Any],
                 limit: int, metrics: FlowMetrics) -> None:
        self.name = name
        self.publisher = publisher
        self.limit = limit
        self.metrics = metrics
        self._pending: deque[Any] = deque(pending)
        self._cond = threading.Condition()
        self._closing = False
        self._failure: BaseException | None = None
        metrics.redis_backlog.inc(len(self._pending))
        self._writer = threading.Thread(target=self._write_forever, daemon=True,
                                        name=f"fpstream-redis-{name}")
        self._writer.start()

    def write_batch(self, values: list[Any]) -> None:
        with self._cond:
            self._check()
            self._pending.extend(values)
            self.metrics.redis_backlog.inc(len(values))
            self._cond.notify_all()
            if len(self._pending) > self.limit:
                self._hold_back()

    def snapshot(self) -> tuple[Any, ...]:
        with self._cond:
            self._check()
            return tuple(self._pending)

    def close(self) -> None:
        """Write everything still queued, then disconnect; fail if Redis stays away.

        Bytewax closes a partition at the end of a bounded run and also when a worker is
        stopped, so the wait is bounded: a worker asked to stop during an outage stops (what
        it held is in its last snapshot), and a bounded run does not end as if all was written.
        """
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            if self._pending:
                log.info("Redis output %s: writing %d outputs before closing", self.name,
                         len(self._pending))
            self._cond.wait_for(lambda: not self._pending or self._failure is not None,
                                timeout=CLOSE_WAIT_S)
            self._check()
            left = len(self._pending)
        if left:
            msg = (f"Redis output {self.name}: {left} outputs not written to "
                   f"{mask_url(self.publisher.settings.redis_url)} within {CLOSE_WAIT_S:.0f} s "
                   f"of closing (with -r, the last snapshot holds them)")
            log.error(msg)
            raise RedisOutputError(msg)
        self._writer.join()
        self.publisher.client.close()

    def _hold_back(self) -> None:
        started = time.monotonic()
        said = False
        while len(self._pending) > self.limit and self._failure is None:
            # Counted as it goes, so that a scrape during a long hold sees it.
            waited = time.monotonic()
            self._cond.wait(timeout=1.0)
            self.metrics.redis_backpressure.inc(time.monotonic() - waited)
            if not said and time.monotonic() - started >= 1.0:  # not a mere burst
                log.warning("Redis output %s: %d outputs wait for Redis at %s "
                            "(redis_backlog_max); holding the flow back until they are written",
                            self.name, len(self._pending),
                            mask_url(self.publisher.settings.redis_url))
                said = True
        self._check()
        if said:
            log.warning("Redis output %s: moving again after %.1f s", self.name,
                        time.monotonic() - started)

    def _check(self) -> None:
        if self._failure is not None:
            msg = f"Redis output {self.name}: the writer stopped on an error that is not Redis's"
            raise RedisOutputError(msg) from self._failure

    def _write_forever(self) -> None:
        backoff = Backoff()
        outage_started = 0.0
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending or self._closing)
                if not self._pending:
                    return
                chunk = list(islice(self._pending, _CHUNK))
            if backoff.failures:
                self.metrics.redis_retries.inc()
            try:
                self.publisher.write(chunk)
            except redis.RedisError as ex:
                self.metrics.redis_write_errors.labels(error_kind(ex)).inc()
                if not backoff.failures:
                    outage_started = time.monotonic()
                delay = backoff.next()
                level = logging.WARNING if backoff.failures == 1 else logging.DEBUG
                log.log(level, "Redis output %s: cannot write to %s (%s: %s); keeping %d "
                        "outputs, retrying in %.2f s", self.name,
                        mask_url(self.publisher.settings.redis_url), type(ex).__name__, ex,
                        len(self._pending), delay)
                time.sleep(delay)
                continue
            except BaseException as ex:  # noqa: BLE001 - raised in the flow's thread instead
                with self._cond:
                    self._failure = ex
                    self._cond.notify_all()
                return
            if backoff.failures:
                log.warning("Redis output %s: Redis is back after %d failed writes over %.1f s",
                            self.name, backoff.failures, time.monotonic() - outage_started)
                backoff.reset()
            with self._cond:
                for _ in chunk:
                    self._pending.popleft()
                self.metrics.redis_backlog.dec(len(chunk))
                self._cond.notify_all()


class RedisSink(FixedPartitionedSink[Any, tuple[Any, ...]]):
    """Bytewax sink over ``(redis_key(item), item)``: ``REDIS_PARTITIONS`` partitions, one
    connection and one writer thread each, holding at most ``redis_backlog_max`` outputs in
    all while Redis is away."""

    def __init__(self, settings: Settings, metrics: FlowMetrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics if metrics is not None else FlowMetrics()

    def list_parts(self) -> list[str]:
        return [f"redis-{i}" for i in range(REDIS_PARTITIONS)]

    def build_part(self, step_id: str, for_part: str,
                   resume_state: tuple[Any, ...] | None) -> _Partition:
        client = sink_client(self.settings)
        limit = math.ceil(self.settings.redis_backlog_max / REDIS_PARTITIONS)
        if resume_state:
            log.info("Redis output %s: resuming with %d outputs not yet written", for_part,
                     len(resume_state))
        return _Partition(for_part, RedisPublisher(client, self.settings), resume_state or (),
                          limit, self.metrics)
