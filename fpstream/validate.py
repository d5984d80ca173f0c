"""Check JSON-lines messages against the wire contract, as agents' owners do before shipping.

Reads bytes, never text: an agent's output may hold invalid UTF-8 or a runaway line, and the
check must report those lines instead of dying on them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any

from fpstream.events import DeployRequest, Limits, decode_message

_CHUNK = 1 << 16


@dataclass(slots=True)
class Summary:
    lines: int = 0
    ok: int = 0
    bad: int = 0
    events: int = 0
    reasons: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {
            "summary": True,
            "lines": self.lines,
            "ok": self.ok,
            "bad": self.bad,
            "events": self.events,
            "reasons": dict(sorted(self.reasons.items())),
        }


def iter_lines(stream: IO[bytes], limit: int) -> Iterator[tuple[int, bytes | None, int]]:
    """Yield ``(line_number, line, length)``; ``line`` is None when it exceeds ``limit`` bytes.

    Over-long lines are skipped chunk by chunk, so memory stays bounded by ``limit``.
    """
    number = 0
    buf = bytearray()
    overflow = 0
    while True:
        chunk = stream.read(_CHUNK)
        if not chunk:
            break
        start = 0
        while True:
            end = chunk.find(b"\n", start)
            piece = chunk[start:] if end < 0 else chunk[start:end]
            if overflow:
                overflow += len(piece)
            elif len(buf) + len(piece) > limit:
                overflow = len(buf) + len(piece)
                buf.clear()
            else:
                buf += piece
            if end < 0:
                break
            number += 1
            yield (number, None, overflow) if overflow else (number, bytes(buf), len(buf))
            buf.clear()
            overflow = 0
            start = end + 1
    if buf or overflow:
        number += 1
        yield (number, None, overflow) if overflow else (number, bytes(buf), len(buf))


def check_line(number: int, line: bytes | None, length: int, limits: Limits) -> dict[str, Any]:
    """The verdict on one line, in the shape ``fpstream validate`` prints."""
    if line is None:
        detail = f"line is {length} bytes, the limit is {limits.max_message_bytes}"
        return {"line": number, "ok": False, "reason": "too_large", "detail": detail}
    result = decode_message(line.rstrip(b"\r"), None, limits)
    if result.errors:
        first = result.errors[0]
        verdict: dict[str, Any] = {
            "line": number, "ok": False, "reason": first.reason, "detail": first.detail,
        }
        if len(result.errors) > 1:
            verdict["errors"] = len(result.errors)
        return verdict
    kind = "deploy" if isinstance(result.events[0], DeployRequest) else "metric"
    return {"line": number, "ok": True, "kind": kind, "count": len(result.events)}


def validate_stream(stream: IO[bytes], limits: Limits) -> Iterator[dict[str, Any]]:
    """Yield one verdict per non-blank line, then the summary."""
    summary = Summary()
    for number, line, length in iter_lines(stream, limits.max_message_bytes):
        if line is not None and not line.strip():
            continue
        verdict = check_line(number, line, length, limits)
        summary.lines += 1
        if verdict["ok"]:
            summary.ok += 1
            summary.events += verdict["count"]
        else:
            summary.bad += 1
            summary.reasons[verdict["reason"]] += 1
        yield verdict
    yield summary.as_dict()
