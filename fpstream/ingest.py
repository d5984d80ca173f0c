"""First step of the flow: raw messages to per-app sample batches, deploys and dead letters."""

from __future__ import annotations

import base64
import math
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import orjson

from fpstream.events import (
    DeadLetter,
    DecodeError,
    DeployRequest,
    Kind,
    Limits,
    MetricSample,
    SampleColumns,
    decode_columns,
    decode_document,
    encode,
    parse_message,
    sample_of,
)


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a message came from, so a dead letter can point back at it."""

    topic: str | None
    partition: int | None
    offset: int | None
    ts: float = 0.0

    @property
    def source(self) -> str:
        """The input partition, as the model stage's low watermark tracks it."""
        return f"{self.topic}:{self.partition}"


@dataclass(frozen=True, slots=True)
class RawMessage:
    origin: Origin
    key: bytes | None
    value: bytes | None


@dataclass(slots=True, eq=False)
class SampleBatch:
    """The samples of one app from one message, as columns: the unit the window step consumes.

    Row ``i`` is one sample, in message order: event time ``ts[i]``, ``instance[i]``, metric
    values ``values[i]`` over ``names`` (NaN where the sample lacks that metric; ``dense``
    when no row lacks any), and the sample's own ``labels[i]`` and ``capacity[i]`` dicts as
    sent (``None`` when absent). No object per sample: ``samples(rows)`` builds them again, from
    ``source`` (the message, or the samples the batch was made of), for a dead letter.

    Read-only, like an event; not frozen only because one is made per message, and a frozen
    dataclass costs five times as much to make.
    """

    app: str
    origin: Origin
    ts: np.ndarray
    instance: tuple[str, ...]
    names: tuple[str, ...]
    values: np.ndarray
    labels: tuple[dict[str, str] | None, ...]
    capacity: tuple[dict[str, float] | None, ...]
    ts_min: float
    ts_max: float
    dense: bool
    source: bytes | tuple[MetricSample, ...]
    #: The index of each row's object in the message's array (``None``: row ``i`` is object
    #: ``i``, or the message is one object).
    positions: tuple[int, ...] | None = None

    def __len__(self) -> int:
        return len(self.instance)

    def samples(self, rows: Iterable[int]) -> list[MetricSample]:
        """Rows as the ``MetricSample``s the decoder would give for them (the message is
        parsed once, however many rows)."""
        if isinstance(self.source, tuple):
            return [self.source[i] for i in rows]
        doc = orjson.loads(self.source)
        if type(doc) is dict:
            return [sample_of(doc) for _ in rows]
        at = self.positions
        return [sample_of(doc[i if at is None else at[i]]) for i in rows]

    def to_samples(self) -> list[MetricSample]:
        return self.samples(range(len(self)))

    @classmethod
    def from_samples(cls, samples: Sequence[MetricSample], origin: Origin | None = None
                     ) -> SampleBatch:
        """A batch of ``samples`` (all of one app, at least one), in their order."""
        if not samples:
            raise ValueError("a batch holds at least one sample")
        app = samples[0].app
        if any(s.app != app for s in samples):
            msg = f"a batch holds one app's samples, got {sorted({s.app for s in samples})}"
            raise ValueError(msg)
        names = tuple(samples[0].metrics)
        dense = all(tuple(s.metrics) == names for s in samples)
        if dense:
            values = np.array([list(s.metrics.values()) for s in samples], dtype=np.float64)
            values = values.reshape(len(samples), len(names))
        else:
            names = tuple(dict.fromkeys(name for s in samples for name in s.metrics))
            index = {name: j for j, name in enumerate(names)}
            values = np.full((len(samples), len(names)), np.nan)
            for r, s in enumerate(samples):
                for name, value in s.metrics.items():
                    values[r, index[name]] = value
        ts = [s.ts for s in samples]
        return cls(app, origin or Origin(None, None, None), np.array(ts, dtype=np.float64),
                   tuple(s.instance for s in samples), names, values,
                   tuple(s.labels for s in samples), tuple(s.capacity for s in samples),
                   min(ts), max(ts), dense, tuple(samples))


@dataclass(frozen=True, slots=True)
class Progress:
    """Every sample of ``source`` older than ``ts`` has been read (up to the allowed lateness).

    Sent straight to the model stage, ahead of the windows those samples will close, so that
    it never passes an app it has not heard of yet.
    """

    source: str
    ts: float


@dataclass(frozen=True, slots=True)
class AppSeen:
    """The first sample of an app this process has read."""

    app: str
    ts: float


@dataclass(frozen=True, slots=True)
class Evict:
    """An app pushed out of the process's budget of apps (``max_apps``): the per-app steps
    drop its state, least recently seen first, so memory stays bounded however many
    distinct apps arrive."""

    app: str


Marker = Progress | AppSeen
Decoded = SampleBatch | DeployRequest | DeadLetter | Marker | Evict

#: Default for how far (seconds) a sample may be stamped ahead of its message's timestamp.
MAX_FUTURE_S = 300.0


#: A dead letter carries at most this much of the refused message (so that it always fits in a
#: Kafka message); the whole message stays in its source topic at the recorded offset.
RAW_LIMIT = 64 * 1024


def dead_letter(origin: Origin, reason: str, error: str, raw: bytes | None) -> DeadLetter:
    raw = raw or b""
    if len(raw) > RAW_LIMIT:
        error = f"{error} (raw_b64 holds the first {RAW_LIMIT} of {len(raw)} bytes)"
        raw = raw[:RAW_LIMIT]
    raw_b64 = base64.b64encode(raw).decode("ascii")
    return DeadLetter(origin.ts, reason, error, origin.topic, origin.partition, origin.offset,
                      raw_b64)


def item_letter(ts: float, reason: str, error: str, doc: dict[str, object]) -> DeadLetter:
    """A dead letter for an item the flow made itself (a window, a profile snapshot), which has
    no Kafka origin: ``raw_b64`` holds ``doc``, a compact JSON description of it."""
    return dead_letter(Origin(None, None, None, ts), reason, error, orjson.dumps(doc))


def decode_raw(msg: RawMessage, kind: Kind, limits: Limits, max_future_s: float = MAX_FUTURE_S,
               now: float | None = None) -> list[Decoded]:
    """Decode one message; every refused object becomes a dead letter with its reason.

    An event stamped more than ``max_future_s`` after its message's timestamp (the broker's or
    producer's, which a replay reproduces; ``now``, the caller's clock, when the message has
    none) is refused as ``future``: one such event would otherwise move its app's event clock
    far ahead and make every later sample of the app late. Samples are grouped per app so that
    downstream work is per batch, not per sample.

    A metrics message whose objects all pass and share one shape (``decode_columns``) becomes
    columns directly; any other goes object by object, with the same verdicts.
    """
    doc, error = parse_message(msg.value, limits)
    if error is not None:
        return [_refused(msg, error)]
    reference = msg.origin.ts if msg.origin.ts > 0 else now
    if kind == "metric":
        columns = decode_columns(doc, limits)
        if columns is not None and (reference is None
                                    or max(columns.ts) <= reference + max_future_s):
            return _batches(msg, columns)
    result = decode_document(doc, kind, limits)
    out: list[Decoded] = [_refused(msg, err) for err in result.errors]
    events = result.events
    if reference is not None:
        horizon = reference + max_future_s
        if any(e.ts > horizon for e in events):
            out.extend(_future(msg.origin, e, reference, max_future_s)
                       for e in events if e.ts > horizon)
            events = [e for e in events if e.ts <= horizon]
    if kind == "deploy":
        out.extend(e for e in events if isinstance(e, DeployRequest))
        return out
    by_app: dict[str, list[MetricSample]] = {}
    for event in events:
        assert isinstance(event, MetricSample)
        by_app.setdefault(event.app, []).append(event)
    out.extend(SampleBatch.from_samples(samples, msg.origin) for samples in by_app.values())
    return out


def _batches(msg: RawMessage, columns: SampleColumns) -> list[Decoded]:
    apps = columns.app
    app = apps[0]
    source = bytes(msg.value or b"")
    if apps.count(app) == len(apps):  # a message is one app's, as a rule
        ts = columns.ts
        return [SampleBatch(app, msg.origin, np.array(ts, dtype=np.float64),
                            tuple(columns.instance), columns.names, columns.values,
                            tuple(columns.labels), tuple(columns.capacity), float(min(ts)),
                            float(max(ts)), True, source)]
    rows_of: dict[str, list[int]] = {}
    for i, name in enumerate(apps):
        rows_of.setdefault(name, []).append(i)
    out: list[Decoded] = []
    for name, rows in rows_of.items():
        ts = [columns.ts[i] for i in rows]
        out.append(SampleBatch(
            name, msg.origin, np.array(ts, dtype=np.float64),
            tuple(columns.instance[i] for i in rows), columns.names, columns.values[rows],
            tuple(columns.labels[i] for i in rows), tuple(columns.capacity[i] for i in rows),
            float(min(ts)), float(max(ts)), True, source, tuple(rows)))
    return out


def _future(origin: Origin, event: MetricSample | DeployRequest, reference: float,
            max_future_s: float) -> DeadLetter:
    whose = "its message's timestamp" if origin.ts > 0 else "the clock (the message has none)"
    detail = (f"{event.app}/{event.instance} at ts={event.ts:.3f} is {event.ts - reference:.0f} s "
              f"ahead of {whose}; at most max_future_s={max_future_s:g} is accepted")
    return dead_letter(origin, "future", detail, encode(event))


class ProgressTracker:
    """Per input partition, the newest event time read; per app, when it was last read.

    It emits markers as the input moves on: ``Progress`` for a partition, ``AppSeen`` for an
    app it has not read lately, and ``Evict`` for the least recently read app once more than
    ``max_apps`` are held, so the per-app steps downstream hold at most that many apps of this
    process. A plain per-process cache, not recovered state: after a restart it starts again
    and the markers it re-sends change nothing.
    """

    def __init__(self, lateness_s: float, step_s: float = 30.0, max_apps: int = 100_000) -> None:
        if isinstance(max_apps, bool) or not isinstance(max_apps, int) or max_apps < 1:
            raise ValueError(f"max_apps must be a positive integer, got {max_apps!r}")
        self.lateness_s = lateness_s
        self.step_s = step_s
        self.max_apps = max_apps
        self.newest: dict[str, float] = {}
        self.sent: dict[str, float] = {}
        self.apps: OrderedDict[str, None] = OrderedDict()  # least recently read first

    def observe(self, origin: Origin, batches: list[SampleBatch]) -> list[Marker | Evict]:
        out: list[Marker | Evict] = []
        newest = -math.inf
        apps = self.apps
        new: list[SampleBatch] = []
        for batch in batches:  # the message's known apps first, so none of them is evicted
            if batch.app in apps:
                apps.move_to_end(batch.app)
            else:
                new.append(batch)
            if batch.ts_max > newest:
                newest = batch.ts_max
        for batch in new:
            apps[batch.app] = None
            out.append(AppSeen(batch.app, batch.ts_min))
            if len(apps) > self.max_apps:
                out.append(Evict(apps.popitem(last=False)[0]))
        out.extend(self.advance(origin, newest))
        return out

    def advance(self, origin: Origin, newest: float) -> list[Marker | Evict]:
        """The partition of ``origin`` has been read up to event time ``newest``."""
        source = origin.source
        newest = max(newest, self.newest.get(source, -math.inf))
        self.newest[source] = newest
        if newest - self.sent.get(source, -math.inf) >= self.step_s:
            self.sent[source] = newest
            return [Progress(source, newest - self.lateness_s)]
        return []


def _refused(msg: RawMessage, err: DecodeError) -> DeadLetter:
    # For one bad object of an array, keep the whole message: the reader sees it in context
    # and the index in the error says which one.
    return dead_letter(msg.origin, err.reason, err.detail, msg.value)


def sample_letters(samples: list[MetricSample], origin: Origin, reason: str, detail: str
                   ) -> list[DeadLetter]:
    """Dead letters for accepted samples the window step could not use (late, over capacity)."""
    return [dead_letter(origin, reason, f"{s.app}/{s.instance} at ts={s.ts}: {detail}",
                        encode(s)) for s in samples]
