"""First step of the flow: raw messages to per-app sample batches, deploys and dead letters."""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass

from fpstream.events import (
    DeadLetter,
    DecodeError,
    DeployRequest,
    Kind,
    Limits,
    MetricSample,
    decode_message,
    encode,
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


@dataclass(frozen=True, slots=True)
class SampleBatch:
    """The samples of one app from one message: the unit the window step consumes."""

    app: str
    samples: list[MetricSample]
    origin: Origin


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


Marker = Progress | AppSeen
Decoded = SampleBatch | DeployRequest | DeadLetter | Marker


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


def decode_raw(msg: RawMessage, kind: Kind, limits: Limits) -> list[Decoded]:
    """Decode one message; every refused object becomes a dead letter with its reason.

    Samples are grouped per app so that downstream work is per batch, not per sample.
    """
    result = decode_message(msg.value, kind, limits)
    out: list[Decoded] = [_refused(msg, err) for err in result.errors]
    if kind == "deploy":
        out.extend(e for e in result.events if isinstance(e, DeployRequest))
        return out
    by_app: dict[str, list[MetricSample]] = {}
    for event in result.events:
        assert isinstance(event, MetricSample)
        by_app.setdefault(event.app, []).append(event)
    out.extend(SampleBatch(app, samples, msg.origin) for app, samples in by_app.items())
    return out


class ProgressTracker:
    """Per input partition, the newest sample time read; emits markers as it moves on.

    A plain per-process cache, not recovered state: after a restart it starts again and the
    markers it re-sends change nothing.
    """

    def __init__(self, lateness_s: float, step_s: float = 30.0) -> None:
        self.lateness_s = lateness_s
        self.step_s = step_s
        self.newest: dict[str, float] = {}
        self.sent: dict[str, float] = {}
        self.apps: set[str] = set()

    def observe(self, origin: Origin, batches: list[SampleBatch]) -> list[Marker]:
        out: list[Marker] = []
        newest = self.newest.get(origin.source, -math.inf)
        for batch in batches:
            times = [s.ts for s in batch.samples]
            if batch.app not in self.apps:
                self.apps.add(batch.app)
                out.append(AppSeen(batch.app, min(times)))
            newest = max(newest, max(times))
        self.newest[origin.source] = newest
        if newest - self.sent.get(origin.source, -math.inf) >= self.step_s:
            self.sent[origin.source] = newest
            out.append(Progress(origin.source, newest - self.lateness_s))
        return out


def _refused(msg: RawMessage, err: DecodeError) -> DeadLetter:
    # For one bad object of an array, keep the whole message: the reader sees it in context
    # and the index in the error says which one.
    return dead_letter(msg.origin, err.reason, err.detail, msg.value)


def sample_letters(samples: list[MetricSample], origin: Origin, reason: str, detail: str
                   ) -> list[DeadLetter]:
    """Dead letters for accepted samples the window step could not use (late, over capacity)."""
    return [dead_letter(origin, reason, f"{s.app}/{s.instance} at ts={s.ts}: {detail}",
                        encode(s)) for s in samples]
