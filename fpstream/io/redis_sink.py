"""Redis outputs: the actuators' allocation stream, desired state, cluster definitions and
the A/B experiment's summary (``<prefix>:experiment:<name>``).

Writes are idempotent: after a worker resumes from a snapshot it may emit the same allocations
again, and the script below refuses any allocation whose sequence number is not newer than the
one already desired for that instance, so the stream never carries a duplicate.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson
import redis
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from fpstream.events import SCHEMA_VERSION, Allocation, encode
from fpstream.fleet.experiment import ExperimentSnapshot
from fpstream.fleet.stage import ClusterDef, ClusterSnapshot
from fpstream.settings import Settings, mask_url

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


def connect(settings: Settings) -> redis.Redis:
    """A client for the configured Redis, checked with a PING so a bad URL fails at start."""
    client = redis.Redis.from_url(settings.redis_url, **settings.redis_options)
    try:
        client.ping()
    except redis.RedisError as ex:
        msg = f"cannot reach Redis at {mask_url(settings.redis_url)}: {ex}"
        raise ConnectionError(msg) from ex
    return client


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


class _Partition(StatelessSinkPartition[Any]):
    def __init__(self, publisher: RedisPublisher) -> None:
        self.publisher = publisher

    def write_batch(self, items: list[Any]) -> None:
        self.publisher.write(items)

    def close(self) -> None:
        self.publisher.client.close()


class RedisSink(DynamicSink[Any]):
    """Bytewax sink: one Redis connection per worker."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _Partition:
        return _Partition(RedisPublisher(connect(self.settings), self.settings))
