"""The actuator loop: allocations from a Redis consumer group, applied once each.

Delivery is at least once (a consumer group re-delivers what was not acknowledged, and the flow
may publish an allocation again after a resume); the *apply* is made once per allocation by a
guard in Redis. Before applying, a script compares the allocation's sequence number with the
record in ``<prefix>:applied:<app>`` (field = instance) and takes a per-instance lock; after the
backend succeeds, a second script writes the record, acknowledges the entry and drops the lock in
one atomic step. A duplicate or an older allocation is acknowledged without applying it, and
so is one whose instance already has a newer allocation queued (``desired``), so a backlog
after a pause or an outage applies only the latest state per instance. A failed apply is
retried with exponential backoff and, after ``max_attempts``, dead-lettered with its error; one
that cannot succeed (the backend refuses it: an unsafe id or argument, a reserve too large to
represent) is dead-lettered at once.

A slow apply keeps its lock and its entry alive with a heartbeat, so only a dead actuator's
entries are re-claimed (``XAUTOCLAIM``) by the others, after ``claim_after_s``. The one window
left is a crash after the backend succeeded and before the record was written: that allocation
is applied again by whoever re-claims it, which is why backends set a desired state (resize to
X, write file X) rather than apply a delta.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import fields as dataclass_fields
from types import TracebackType
from typing import Any

import orjson
import redis

from fpstream.actuate.backends import ApplyError, Backend, check_allocation_id, check_id
from fpstream.actuate.metrics import ActuatorMetrics
from fpstream.events import SCHEMA_VERSION, Allocation
from fpstream.settings import Settings

log = logging.getLogger("fpstream.actuate")

DEFAULT_GROUP = "fpstream-actuators"
PAUSE_CACHE_S = 0.5  # the pause switch is honoured within a second, with room for a slow read
BUSY_RETRY_S = 0.25
_SKIPS = ("duplicate", "stale", "superseded")

# KEYS: applied hash, lock, desired hash. ARGV: instance, seq, id, consumer, lease ms, superseded?
_BEGIN = """
local seq = tonumber(ARGV[2])
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur then
  local ok, rec = pcall(cjson.decode, cur)
  if ok then
    local old = tonumber(rec['seq']) or -1
    if old > seq or (old == seq and rec['outcome'] == 'applied') then
      if rec['id'] == ARGV[3] then return 'duplicate' end
      return 'stale'
    end
  end
end
if ARGV[6] == '1' then
  local want = redis.call('HGET', KEYS[3], ARGV[1])
  if want then
    local ok, doc = pcall(cjson.decode, want)
    if ok and type(doc['id']) == 'string' then
      local newer = tonumber(string.match(doc['id'], '(%d+)$'))
      if newer and newer > seq then return 'superseded' end
    end
  end
end
local holder = redis.call('GET', KEYS[2])
if holder and holder ~= ARGV[4] then return 'busy' end
redis.call('SET', KEYS[2], ARGV[4], 'PX', ARGV[5])
return 'go'
"""

# KEYS: stream, attempts hash, applied hash, lock, dead-letter stream.
# ARGV: group, entry id, instance ('' = no record), seq, record, consumer, dl maxlen, dl fields...
_FINISH = """
local wrote = 0
if ARGV[3] ~= '' then
  local seq = tonumber(ARGV[4])
  local newer = true
  local cur = redis.call('HGET', KEYS[3], ARGV[3])
  if cur then
    local ok, rec = pcall(cjson.decode, cur)
    if ok then
      local old = tonumber(rec['seq']) or -1
      newer = old < seq or (old == seq and rec['outcome'] ~= 'applied')
    end
  end
  if newer then
    redis.call('HSET', KEYS[3], ARGV[3], ARGV[5])
    wrote = 1
  end
  if redis.call('GET', KEYS[4]) == ARGV[6] then redis.call('DEL', KEYS[4]) end
end
if #ARGV > 7 then
  redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[7], '*', unpack(ARGV, 8))
end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('HDEL', KEYS[2], ARGV[2])
return wrote
"""

# KEYS: lock. ARGV: consumer, lease ms ('' = release).
_LEASE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] == '' then redis.call('DEL', KEYS[1]) else redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 1
"""


def decode_entry(fields: Mapping[Any, Any]) -> Allocation:
    """The allocation in a stream entry; ``ApplyError`` (not retryable) if it breaks the contract.

    Extra JSON fields are allowed by the contract and ignored here.
    """
    data = _field(fields, "data")
    if data is None:
        raise ApplyError("stream entry has no 'data' field", retryable=False)
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as ex:
        raise ApplyError(f"'data' is not JSON: {ex}", retryable=False) from ex
    if not isinstance(doc, dict):
        raise ApplyError("'data' must be a JSON object", retryable=False)
    if doc.get("v", SCHEMA_VERSION) != SCHEMA_VERSION:
        raise ApplyError(f"schema version {doc.get('v')!r}, supported: {SCHEMA_VERSION}",
                         retryable=False)
    names = [f.name for f in dataclass_fields(Allocation)]
    missing = [n for n in names if n not in doc and n != "v"]
    if missing:
        raise ApplyError(f"allocation lacks {missing}", retryable=False)
    alloc = Allocation(**{n: doc[n] for n in names if n in doc})
    for name in ("app", "instance", "instance_type"):
        check_id(name, getattr(alloc, name))
    if not isinstance(alloc.reserve, dict):
        raise ApplyError("'reserve' must be an object", retryable=False)
    for key, value in alloc.reserve.items():
        if isinstance(value, bool) or not isinstance(value, int | float) \
                or not math.isfinite(value) or value < 0:
            msg = f"reserve.{key} must be a finite number >= 0, got {value!r:.40}"
            raise ApplyError(msg, retryable=False)
    check_allocation_id(alloc)
    return alloc


def allocation_seq(alloc: Allocation) -> int:
    return int(alloc.id.rsplit("/", 1)[1])


def pause_key(settings: Settings) -> str:
    return settings.key("actuator", "paused")


def set_paused(client: redis.Redis, settings: Settings, paused: bool, by: str = "") -> None:
    """Set or clear the global pause switch every actuator on this prefix honours."""
    if paused:
        client.set(pause_key(settings), orjson.dumps({"ts": time.time(), "by": by}))
    else:
        client.delete(pause_key(settings))


class TokenBucket:
    """At most ``rate`` takes per second on average, ``burst`` at once."""

    def __init__(self, rate: float, burst: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be > 0 applies per second, got {rate}")
        self.rate = rate
        self.burst = max(1.0, rate) if burst is None else burst
        self.clock = clock
        self._tokens = self.burst
        self._at = clock()

    def wait_time(self) -> float:
        """Take a token and return 0, or return how long until one is available."""
        now = self.clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self.rate

    def take(self, abort: Callable[[], bool], sleep: Callable[[float], Any] = time.sleep) -> bool:
        """Wait for a token; False if ``abort()`` turned true first (stop or pause)."""
        while (wait := self.wait_time()) > 0:
            if abort():
                return False
            sleep(min(wait, 0.1))
        return True


class Actuator:
    """Consumes ``<prefix>:allocations`` in a consumer group and applies through ``backend``."""

    def __init__(self, client: redis.Redis, settings: Settings, backend: Backend, *,
                 group: str = DEFAULT_GROUP, consumer: str | None = None,
                 metrics: ActuatorMetrics | None = None, max_attempts: int = 5,
                 claim_after_s: float = 30.0, block_ms: int = 500, batch: int = 16,
                 rate: float | None = None, backoff_s: float = 0.5, backoff_max_s: float = 30.0,
                 skip_superseded: bool = True, start_id: str = "0",
                 deadletter_maxlen: int = 100_000) -> None:
        checks = {"max_attempts": (max_attempts, 1), "claim_after_s": (claim_after_s, 0.001),
                  "block_ms": (block_ms, 1), "batch": (batch, 1), "backoff_s": (backoff_s, 0),
                  "backoff_max_s": (backoff_max_s, 0), "deadletter_maxlen": (deadletter_maxlen, 1)}
        for name, (value, least) in checks.items():
            if value < least:
                raise ValueError(f"{name} must be at least {least}, got {value!r}")
        self.client = client
        self.settings = settings
        self.backend = backend
        self.group = group
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        self.metrics = metrics or ActuatorMetrics()
        self.max_attempts = max_attempts
        self.claim_after_s = claim_after_s
        self.block_ms = block_ms
        self.batch = batch
        self.bucket = TokenBucket(rate) if rate else None
        self.backoff_s = backoff_s
        # Capped so a held entry is read again (which resets its idle time) before others
        # would take it for the entry of a dead actuator.
        self.backoff_max_s = min(backoff_max_s, claim_after_s / 2)
        self.skip_superseded = skip_superseded
        self.start_id = start_id
        self.deadletter_maxlen = deadletter_maxlen
        self.stream = settings.key("allocations")
        self.attempts_key = settings.key("actuator", "attempts", group)
        self.deadletter = settings.key("actuator", "deadletter")
        self._begin = client.register_script(_BEGIN)
        self._finish = client.register_script(_FINISH)
        self._lease = client.register_script(_LEASE)
        self._stopping = threading.Event()
        self._held: dict[str, float] = {}  # entry id -> when to try it again
        self._drain_own = True  # at start, our PEL may hold entries from a previous run
        self._group_ready = False
        self._next_claim = 0.0
        self._paused = False
        self._paused_until = 0.0
        self._gauges_at = 0.0

    # -- lifecycle ------------------------------------------------------------------------------

    def ensure_group(self) -> None:
        """Create the stream and the group if missing (another actuator may have just done so)."""
        try:
            self.client.xgroup_create(self.stream, self.group, id=self.start_id, mkstream=True)
        except redis.ResponseError as ex:
            if "BUSYGROUP" not in str(ex):
                raise
        self._group_ready = True

    def stop(self) -> None:
        """Finish the entry in hand, then return from ``run``; safe from a signal handler."""
        self._stopping.set()

    def install_signal_handlers(self) -> Callable[[], None]:
        """SIGTERM and SIGINT stop the loop gracefully (main thread only); returns an undo."""
        previous = {sig: signal.signal(sig, lambda *_: self.stop())
                    for sig in (signal.SIGTERM, signal.SIGINT)}

        def restore() -> None:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

        return restore

    def run(self, stop_after: float | None = None) -> None:
        """Loop until ``stop()`` or for ``stop_after`` seconds; survives Redis outages."""
        deadline = None if stop_after is None else time.monotonic() + stop_after
        while not self._stopping.is_set():
            if deadline is not None and time.monotonic() >= deadline:
                break
            try:
                self.step()
            except (redis.ConnectionError, redis.TimeoutError) as ex:
                log.warning("actuator %s: Redis unavailable (%s); retrying in 1 s",
                            self.consumer, self.settings.redact(str(ex)))
                self._stopping.wait(1.0)

    def paused(self) -> bool:
        """The global pause switch, read from Redis at most every ``PAUSE_CACHE_S``."""
        now = time.monotonic()
        if now >= self._paused_until:
            self._paused = bool(self.client.exists(pause_key(self.settings)))
            self._paused_until = now + PAUSE_CACHE_S
            self.metrics.paused.set(1 if self._paused else 0)
        return self._paused

    # -- one pass -------------------------------------------------------------------------------

    def step(self) -> int:
        """Re-claim dead actuators' entries, retry what is due, read new; returns entries done."""
        if not self._group_ready:
            self.ensure_group()
        self._refresh_pending()
        if self._stopping.is_set():
            return 0
        if self.paused():
            self._stopping.wait(0.1)  # entries stay unread, or pending in our list
            return 0
        done = 0
        now = time.monotonic()
        if now >= self._next_claim:
            done += self._claim()
            self._next_claim = time.monotonic() + min(self.claim_after_s / 2, 5.0)
        if self._drain_own or any(due <= now for due in self._held.values()):
            done += self._retry_own()
        return done + self._read_new()

    def _claim(self) -> int:
        done, cursor = 0, "0-0"
        while not self._stopping.is_set():
            reply = self.client.xautoclaim(self.stream, self.group, self.consumer,
                                           int(self.claim_after_s * 1000), cursor,
                                           count=self.batch)
            cursor, entries = _str(reply[0]), reply[1]
            if len(reply) > 2 and reply[2]:  # trimmed while pending; XAUTOCLAIM dropped them
                self.client.hdel(self.attempts_key, *reply[2])
            for entry_id, fields in entries:
                log.info("actuator %s: re-claimed %s", self.consumer, _str(entry_id))
                done += self._handle(_str(entry_id), fields)
            if cursor == "0-0":
                break
        return done

    def _retry_own(self) -> int:
        """Read our own pending list: deferred entries and those of a previous run."""
        done, cursor, seen = 0, "0", set()
        while not self._stopping.is_set():
            entries = _entries(self.client.xreadgroup(
                self.group, self.consumer, {self.stream: cursor}, count=self.batch))
            for entry_id, fields in entries:
                cursor = _str(entry_id)
                seen.add(cursor)
                if self._held.get(cursor, 0.0) > time.monotonic():
                    continue
                self._held.pop(cursor, None)
                done += self._handle(cursor, fields)
            if len(entries) < self.batch:
                break
        # Entries no longer ours were acknowledged or re-claimed by another actuator.
        self._held = {k: v for k, v in self._held.items() if k in seen}
        self._drain_own = False
        return done

    def _read_new(self) -> int:
        block = self.block_ms
        if self._held:
            block = max(1, min(block, int((min(self._held.values()) - time.monotonic()) * 1000)))
        entries = _entries(self.client.xreadgroup(
            self.group, self.consumer, {self.stream: ">"}, count=self.batch, block=block))
        return sum(self._handle(_str(entry_id), fields) for entry_id, fields in entries)

    # -- one entry ------------------------------------------------------------------------------

    def _handle(self, entry_id: str, fields: Mapping[Any, Any]) -> int:
        """Apply one entry; 1 if it is finished (acknowledged), 0 if it stays pending."""
        if self._stopping.is_set():
            return 0
        if not fields:  # trimmed from the stream while pending: nothing left to apply
            self._finish(keys=self._finish_keys(None), args=[self.group, entry_id, ""])
            return 1
        try:
            alloc = decode_entry(fields)
        except ApplyError as ex:
            self._dead_letter(entry_id, fields, None, ex, attempts=0)
            return 1
        if self.paused():
            return self._defer(entry_id, 0.0)
        seq = allocation_seq(alloc)
        verdict = _str(self._begin(
            keys=[self._applied_key(alloc), self._lock_key(alloc),
                  self.settings.key("desired", alloc.app)],
            args=[alloc.instance, seq, alloc.id, self.consumer,
                  int(self.claim_after_s * 1000), int(self.skip_superseded)]))
        if verdict in _SKIPS:
            self._finish(keys=self._finish_keys(None), args=[self.group, entry_id, ""])
            self.metrics.skipped.labels(verdict).inc()
            log.info("actuator %s: skipped %s (%s)", self.consumer, alloc.id, verdict)
            return 1
        if verdict == "busy":  # another actuator is applying to this instance right now
            return self._defer(entry_id, BUSY_RETRY_S)
        error: ApplyError | None = None
        with _Heartbeat(self, alloc, entry_id):
            if self.bucket and not self.bucket.take(lambda: self._stopping.is_set()
                                                    or self.paused()):
                self._release(alloc)
                return self._defer(entry_id, 0.0)
            started = time.perf_counter()
            try:
                detail = self.backend.apply(alloc)
            except ApplyError as ex:
                error = ex
            except OverflowError as ex:  # arithmetic on the allocation: it would fail again
                error = ApplyError(f"{type(ex).__name__}: {ex}", retryable=False)
            except Exception as ex:  # noqa: BLE001 - a backend bug is retried, then dead-lettered
                error = ApplyError(f"{type(ex).__name__}: {ex}")
            latency = time.perf_counter() - started
        if error is not None:
            return self._failed(entry_id, fields, alloc, error)
        record = self._record(alloc, "applied", detail=str(detail)[:200])
        self._finish(keys=self._finish_keys(alloc),
                     args=[self.group, entry_id, alloc.instance, seq, record, self.consumer])
        self.metrics.applied.inc()
        self.metrics.latency.observe(latency)
        return 1

    def _failed(self, entry_id: str, fields: Mapping[Any, Any], alloc: Allocation,
                error: ApplyError) -> int:
        attempts = int(self.client.hincrby(self.attempts_key, entry_id, 1))
        self.metrics.failed.inc()
        if not error.retryable or attempts >= self.max_attempts:
            self._dead_letter(entry_id, fields, alloc, error, attempts)
            return 1
        self._release(alloc)
        delay = min(self.backoff_max_s, self.backoff_s * 2 ** (attempts - 1))
        log.warning("actuator %s: %s failed (attempt %d of %d, next in %.2f s): %s",
                    self.consumer, alloc.id, attempts, self.max_attempts, delay, error)
        self.metrics.retried.inc()
        return self._defer(entry_id, delay)

    def _dead_letter(self, entry_id: str, fields: Mapping[Any, Any], alloc: Allocation | None,
                     error: ApplyError, attempts: int) -> None:
        reason = "failed" if error.retryable else "invalid"
        doc = {"reason": reason, "error": str(error), "entry": entry_id, "attempts": attempts,
               "actuator": self.consumer, "backend": self.backend.name, "ts": time.time(),
               "id": _str(_field(fields, "id") or ""), "app": _str(_field(fields, "app") or ""),
               "instance": _str(_field(fields, "instance") or ""),
               "data": _field(fields, "data") or b""}
        dl_fields = [x for kv in doc.items() for x in kv]
        head: list[Any]
        if alloc is None:
            head = [self.group, entry_id, "", 0, "", self.consumer]
        else:
            record = self._record(alloc, "deadlettered", error=str(error)[:500])
            head = [self.group, entry_id, alloc.instance, allocation_seq(alloc), record,
                    self.consumer]
        self._finish(keys=self._finish_keys(alloc),
                     args=[*head, self.deadletter_maxlen, *dl_fields])
        self.metrics.deadletters.labels(reason).inc()
        log.error("actuator %s: dead-lettered %s after %d attempt(s): %s",
                  self.consumer, doc["id"] or entry_id, attempts, error)

    def _defer(self, entry_id: str, delay: float) -> int:
        self._held[entry_id] = time.monotonic() + delay
        return 0

    def _release(self, alloc: Allocation) -> None:
        self._lease(keys=[self._lock_key(alloc)], args=[self.consumer, ""])

    def _record(self, alloc: Allocation, outcome: str, **extra: str) -> bytes:
        return orjson.dumps({"id": alloc.id, "seq": allocation_seq(alloc), "ts": time.time(),
                             "instance": alloc.instance, "outcome": outcome,
                             "actuator": self.consumer, "backend": self.backend.name, **extra})

    def _applied_key(self, alloc: Allocation) -> str:
        return self.settings.key("applied", alloc.app)

    def _lock_key(self, alloc: Allocation) -> str:
        return self.settings.key("actuator", "lock", alloc.app, alloc.instance)

    def _finish_keys(self, alloc: Allocation | None) -> list[str]:
        # Without an allocation the record keys are unused; the stream stands in for them.
        applied, lock = ((self._applied_key(alloc), self._lock_key(alloc)) if alloc
                         else (self.stream, self.stream))
        return [self.stream, self.attempts_key, applied, lock, self.deadletter]

    def _refresh_pending(self) -> None:
        now = time.monotonic()
        if now - self._gauges_at >= 1.0:
            self._gauges_at = now
            self.metrics.pending.set(int(self.client.xpending(self.stream, self.group)["pending"]))


class _Heartbeat:
    """While an apply runs, keep its lock and its entry fresh so no one re-claims them."""

    def __init__(self, actuator: Actuator, alloc: Allocation, entry_id: str) -> None:
        self.a = actuator
        self.lock = actuator._lock_key(alloc)
        self.alloc_id = alloc.id
        self.entry_id = entry_id
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True,
                                        name=f"lease-{entry_id}")

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._done.set()
        self._thread.join()

    def _beat(self) -> None:
        a = self.a
        lease_ms = int(a.claim_after_s * 1000)
        while not self._done.wait(a.claim_after_s / 3):
            try:
                if not a._lease(keys=[self.lock], args=[a.consumer, lease_ms]):
                    log.warning("actuator %s: lost the lock on %s during a slow apply",
                                a.consumer, self.alloc_id)
                a.client.xclaim(a.stream, a.group, a.consumer, 0, [self.entry_id], justid=True)
            except redis.RedisError as ex:
                log.warning("actuator %s: heartbeat failed: %s", a.consumer, ex)


def _entries(reply: Any) -> list[tuple[Any, Any]]:
    """The (id, fields) pairs of a one-stream XREADGROUP reply (RESP2 list or RESP3 map)."""
    if not reply:
        return []
    if isinstance(reply, dict):
        return [e for value in reply.values() for e in (value[0] if value else [])]
    return list(reply[0][1])


def _field(fields: Mapping[Any, Any], name: str) -> Any:
    value = fields.get(name.encode())
    return fields.get(name) if value is None else value


def _str(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
