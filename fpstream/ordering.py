"""Event-time order for a stage fed by several upstream workers: a buffer, a low watermark,
and the idleness rule.

Items reach the fleet stage in an order that depends on how partitions were spread over
workers and how fast each worker went; but each app's own items arrive in event-time order
(one worker owns an app), and each input partition is read in order. So ``EventTimeOrder``
keeps every active app's newest event time and every input partition's progress, and releases
what it buffered in event-time order only below the slowest of them (a low watermark, as in
Flink or Beam), and everything at end of stream. An app or partition that has been silent for
``idle_s`` seconds of arrival time stops holding the watermark back (the idleness rule of those
systems), so a dead agent does not stall the fleet; arrival time is the caller's clock and
decides only when items are released, never their order.

Items are released a decision period at a time. An item has an event time ``ts`` and a rank:
``LATE`` (rank 1, e.g. an instance's digest of the period ending at ``ts``) belongs to the
period ``(start, start + period]`` holding ``ts`` and is released once the watermark has passed
the period's end; ``EARLY`` (rank 0, e.g. a deploy request stamped ``ts``) is released once
the watermark has passed the start of its period, before any ``LATE`` item of that period.
Within a rank and period, items go by ``(ts, app, instance)``.

>>> order = EventTimeOrder(period=300.0, idle_s=30.0)
>>> order.heard("a", 300.0, arrived=0.0)
>>> order.push("a late", 300.0, "a", "i", LATE)
>>> order.push("b late", 300.0, "b", "i", LATE)
>>> order.release(now=1.0)  # "a" has not been heard past 300 s yet
[]
>>> order.heard("a", 600.0, arrived=2.0)
>>> order.release(now=2.0)
['a late', 'b late']
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable
from typing import Generic, TypeVar

__all__ = ["EARLY", "LATE", "EventTimeOrder"]

T = TypeVar("T")

#: Ranks: within a period, ``EARLY`` items come before ``LATE`` ones (module docstring).
EARLY, LATE = 0, 1


class EventTimeOrder(Generic[T]):
    """A buffer released in event-time order below a low watermark (module docstring)."""

    def __init__(self, period: float, idle_s: float, sources: Iterable[str] = ()) -> None:
        if not (period > 0 and math.isfinite(period)):
            raise ValueError(f"period must be a positive number of seconds, got {period!r}")
        if not (idle_s >= 0 and math.isfinite(idle_s)):
            raise ValueError(f"idle_s must be a number of seconds >= 0, got {idle_s!r}")
        self.period = float(period)
        self.idle_s = float(idle_s)
        self.out_of_order = 0  # items that arrived after their place had been passed
        # (period start, rank, ts, app, instance, arrival number, item)
        self._buffer: list[tuple[float, int, float, str, str, int, T]] = []
        self._pushed = 0
        self._released = -math.inf  # how far in event time released items reach
        self._app_ts: dict[str, float] = {}  # newest event time per active app
        self._app_arrival: dict[str, float] = {}  # when it was last heard (caller's clock)
        self._low: list[tuple[float, str]] = []  # (newest ts, app); stale entries skipped
        # Per input partition: how far it has been read, and when that was last heard.
        self._source_ts: dict[str, float] = dict.fromkeys(sources, -math.inf)
        self._source_arrival: dict[str, float | None] = dict.fromkeys(sources)
        self._first_arrival: float | None = None

    def __len__(self) -> int:
        return len(self._buffer)

    def period_start(self, ts: float) -> float:
        """The start of the period ``(start, start + period]`` that holds ``ts``."""
        return (math.ceil(ts / self.period) - 1) * self.period

    def push(self, item: T, ts: float, app: str, instance: str, rank: int) -> None:
        """Buffer ``item`` (it is released by ``release`` or ``flush``)."""
        start = self.period_start(ts)
        if start < self._released:
            self.out_of_order += 1
        self._pushed += 1
        heapq.heappush(self._buffer, (start, rank, ts, app, instance, self._pushed, item))

    def heard(self, app: str, ts: float, arrived: float) -> None:
        """``app`` has been read or processed up to event time ``ts``: it holds the watermark
        at its newest ``ts`` while it is active."""
        self._heard(arrived)
        if self._app_ts.get(app, -math.inf) < ts:
            self._app_ts[app] = ts
            heapq.heappush(self._low, (ts, app))
        self._app_arrival[app] = arrived

    def knows(self, app: str) -> bool:
        """Whether ``app`` currently holds the watermark (heard from and not idle)."""
        return app in self._app_ts

    def progress(self, source: str, ts: float, arrived: float) -> None:
        """An input partition has been read up to ``ts``."""
        self._heard(arrived)
        self._source_ts[source] = max(self._source_ts.get(source, -math.inf), ts)
        self._source_arrival[source] = arrived

    def _heard(self, arrived: float) -> None:
        if self._first_arrival is None:
            self._first_arrival = arrived

    def low_watermark(self, now: float) -> float:
        """The event time below which nothing more is expected: the slowest active app's
        newest, and no further than any active input partition has been read."""
        start = now if self._first_arrival is None else self._first_arrival
        read = [ts for src, ts in self._source_ts.items()
                if now - (self._source_arrival[src] or start) <= self.idle_s]
        return min(self._apps_low(now), min(read, default=math.inf))

    def _apps_low(self, now: float) -> float:
        while self._low:
            ts, app = self._low[0]
            if self._app_ts.get(app) != ts:
                heapq.heappop(self._low)  # superseded by a newer event time of the app
            elif now - self._app_arrival[app] > self.idle_s:
                heapq.heappop(self._low)
                del self._app_ts[app]  # idle: it rejoins when heard from again
                del self._app_arrival[app]
            else:
                return ts
        return math.inf  # no active app: nothing can still arrive before what is buffered

    def release(self, now: float) -> list[T]:
        """The buffered items now due, in order (``now`` is the caller's clock)."""
        return self._release(self.low_watermark(now), everything=False)

    def flush(self) -> list[T]:
        """End of stream: every buffered item, in order."""
        return self._release(math.inf, everything=True)

    def _release(self, until: float, everything: bool) -> list[T]:
        out: list[T] = []
        buffer = self._buffer
        while buffer:
            start, rank, ts = buffer[0][:3]
            due = start if rank == EARLY else start + self.period
            if not (everything or due < until):
                break
            out.append(heapq.heappop(buffer)[-1])
            self._released = max(self._released, start if rank == EARLY else ts)
        return out

    def resumed(self, now: float) -> None:
        """After a restart from a snapshot: arrival times came from another process's clock
        (maybe another machine's), so every app and partition counts as just heard from."""
        self._app_arrival = dict.fromkeys(self._app_arrival, now)
        self._source_arrival = {src: None if at is None else now
                                for src, at in self._source_arrival.items()}
        if self._first_arrival is not None:
            self._first_arrival = now
