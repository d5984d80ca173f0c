"""The recording format: one Kafka message a JSON line, byte for byte, in plain, gzip or
zstandard files. ``fpstream record``/``replay`` (``fpstream.ops.record``) write and produce
them; the backtest reads them as a trace (``fpstream.backtest.traces``).

Topics such as the dead-letter one carry arbitrary bytes, so every key, value and header value
is stored as JSON text when it is valid UTF-8 and as base64 (``key_b64``, ``value_b64``)
otherwise; a null key, value or header value stays ``null``. One message per line::

    {"partition": 0, "offset": 7, "timestamp": 1767571260000, "timestamp_type": "CreateTime",
     "key": "web-001", "value": "{...}", "headers": [{"key": "fpstream-id", "value": "a1"}]}

Files ending in ``.gz`` are gzip, in ``.zst`` zstandard, anything else plain text.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import io
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO, Literal, cast

import orjson
import zstandard

from fpstream.errors import FpstreamError

__all__ = ["Compression", "FileSummary", "RecordFileError", "Recorded", "TIMESTAMP_TYPES",
           "compression_for", "decode_line", "encode_line", "open_records", "read_records",
           "scan_records"]

#: Kafka's timestamp types by librdkafka's number, as the file spells them.
TIMESTAMP_TYPES: dict[int, str] = {0: "NotAvailable", 1: "CreateTime", 2: "LogAppendTime"}

Compression = Literal["gzip", "zstd", "none"]

_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"

class RecordFileError(FpstreamError, ValueError):
    """A recording cannot be read; the message names the file and, for bad content, the line."""

    def __init__(self, path: str | os.PathLike[str], reason: str, line: int | None = None
                 ) -> None:
        self.path = str(path)
        self.line = line
        self.reason = reason
        where = f"{self.path} line {line}" if line is not None else self.path
        super().__init__(f"{where}: {reason}")


@dataclass(frozen=True, slots=True)
class Recorded:
    """One Kafka message as recorded: raw bytes plus where and when the topic had it."""

    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...] = ()
    timestamp_ms: int | None = None
    timestamp_type: str = "CreateTime"
    partition: int | None = None
    offset: int | None = None


# --- the line codec -------------------------------------------------------------------------


def _put_bytes(doc: dict[str, Any], name: str, data: bytes | None) -> None:
    if data is None:
        doc[name] = None
        return
    try:
        doc[name] = data.decode("utf-8")
    except UnicodeDecodeError:
        doc[f"{name}_b64"] = base64.b64encode(data).decode("ascii")


def encode_line(rec: Recorded) -> bytes:
    """One JSON line (with its newline) that ``decode_line`` turns back into ``rec``."""
    doc: dict[str, Any] = {"partition": rec.partition, "offset": rec.offset,
                           "timestamp": rec.timestamp_ms, "timestamp_type": rec.timestamp_type}
    _put_bytes(doc, "key", rec.key)
    _put_bytes(doc, "value", rec.value)
    headers = []
    for name, data in rec.headers:
        header: dict[str, Any] = {"key": name}
        _put_bytes(header, "value", data)
        headers.append(header)
    doc["headers"] = headers
    return orjson.dumps(doc) + b"\n"


def _get_bytes(doc: dict[str, Any], name: str, required: bool) -> bytes | None:
    b64 = f"{name}_b64"
    if name in doc and b64 in doc:
        raise ValueError(f"both {name!r} and {b64!r} given")
    if b64 in doc:
        text = doc[b64]
        if not isinstance(text, str):
            raise ValueError(f"{b64!r} must be a base64 string")
        try:
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError) as ex:
            raise ValueError(f"{b64!r} is not valid base64") from ex
    if name not in doc:
        if required:
            raise ValueError(f"missing {name!r} (or {b64!r})")
        return None
    text = doc[name]
    if text is None:
        return None
    if not isinstance(text, str):
        raise ValueError(f"{name!r} must be a string or null, got {type(text).__name__}")
    return text.encode("utf-8")


def _get_int(doc: dict[str, Any], name: str, minimum: int | None = None) -> int | None:
    value = doc.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name!r} must be an integer or null, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name!r} must be >= {minimum}, got {value}")
    return value


def decode_line(line: bytes) -> Recorded:
    """The message on one line; ``ValueError`` says what is wrong with a bad line.

    Only ``value`` (or ``value_b64``) is required, so hand-written files replay too: a missing
    key is null, missing headers are none, and a missing timestamp lets the producer stamp it.
    """
    try:
        doc = orjson.loads(line)
    except orjson.JSONDecodeError as ex:
        raise ValueError(f"not JSON ({ex})") from ex
    if not isinstance(doc, dict):
        raise ValueError(f"expected a JSON object, got {type(doc).__name__}")
    timestamp = _get_int(doc, "timestamp")
    ts_type = doc.get("timestamp_type")
    if ts_type is None:
        ts_type = "NotAvailable" if timestamp is None else "CreateTime"
    elif ts_type not in TIMESTAMP_TYPES.values():
        raise ValueError(f"'timestamp_type' must be one of {sorted(TIMESTAMP_TYPES.values())}, "
                         f"got {ts_type!r}")
    raw_headers = doc.get("headers") or []
    if not isinstance(raw_headers, list):
        raise ValueError("'headers' must be a list")
    headers: list[tuple[str, bytes | None]] = []
    for i, header in enumerate(raw_headers):
        if not isinstance(header, dict) or not isinstance(header.get("key"), str):
            raise ValueError(f"header {i} must be an object with a string 'key'")
        try:
            headers.append((header["key"], _get_bytes(header, "value", required=False)))
        except ValueError as ex:
            raise ValueError(f"header {i}: {ex}") from ex
    return Recorded(key=_get_bytes(doc, "key", required=False),
                    value=_get_bytes(doc, "value", required=True), headers=tuple(headers),
                    timestamp_ms=timestamp, timestamp_type=ts_type,
                    partition=_get_int(doc, "partition", 0), offset=_get_int(doc, "offset", 0))


# --- files ----------------------------------------------------------------------------------


def compression_for(path: str | os.PathLike[str]) -> Compression:
    """What a file's name says it holds: ``.gz`` gzip, ``.zst`` zstandard, else plain."""
    name = os.fspath(path).lower()
    if name.endswith(".gz"):
        return "gzip"
    if name.endswith((".zst", ".zstd")):
        return "zstd"
    return "none"


def _sniff(path: str | os.PathLike[str]) -> Compression | None:
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head.startswith(_GZIP_MAGIC):
        return "gzip"
    if head.startswith(_ZSTD_MAGIC):
        return "zstd"
    return None


class _ZstdReader(io.RawIOBase):
    """Decompresses every frame of a zstandard file and, unlike the library's stream reader,
    raises on a file that ends inside a frame, so a truncated recording is never taken whole."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self._dctx = zstandard.ZstdDecompressor()
        self._obj: Any = None  # the current frame's decompressor, None between frames
        self._pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        while not self._pending:
            chunk = self._raw.read(1 << 16)
            if not chunk:
                if self._obj is not None:
                    raise zstandard.ZstdError("file ends inside a zstandard frame (truncated)")
                return 0
            while chunk:
                if self._obj is None:
                    self._obj = self._dctx.decompressobj()
                self._pending += self._obj.decompress(chunk)
                chunk = b""
                if self._obj.eof:
                    chunk = self._obj.unused_data
                    self._obj = None
        size = min(len(view), len(self._pending))
        view[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        return size

    def close(self) -> None:
        if not self.closed:
            self._raw.close()
        super().close()


def open_records(path: str | os.PathLike[str], mode: Literal["rb", "wb"],
                 compression: Compression | None = None) -> BinaryIO:
    """A binary file that (de)compresses as ``compression`` or, if None, as the name says.

    Reading also recognises gzip and zstandard by their magic bytes, so a compressed file
    with a plain name still reads; a zstandard file of several frames reads as a whole, and
    a truncated one raises as a truncated gzip file does.
    """
    kind = compression or compression_for(path)
    if mode == "rb" and kind == "none":
        kind = _sniff(path) or "none"
    if kind == "gzip":
        return cast(BinaryIO, gzip.open(path, mode, compresslevel=6))
    if kind == "zstd":
        raw = open(path, mode)  # noqa: SIM115 - closed by the zstd stream
        try:
            if mode == "rb":
                return cast(BinaryIO, io.BufferedReader(_ZstdReader(raw), 1 << 16))
            writer = zstandard.ZstdCompressor(level=3).stream_writer(raw, closefd=True)
            return cast(BinaryIO, io.BufferedWriter(cast(Any, writer), 1 << 16))
        except BaseException:
            raw.close()
            raise
    return cast(BinaryIO, open(path, mode))  # noqa: SIM115 - the caller closes it


def read_records(path: str | os.PathLike[str]) -> Iterator[tuple[int, Recorded]]:
    """(line number, message) for each non-blank line; a problem raises ``RecordFileError``."""
    try:
        fh = open_records(path, "rb")
    except OSError as ex:
        raise RecordFileError(path, f"cannot read: {ex.strerror or ex}") from ex
    lineno = 0
    with fh:
        try:
            for lineno, line in enumerate(fh, 1):  # noqa: B007 - lineno is read after the loop
                if not line.strip():
                    continue
                try:
                    rec = decode_line(line)
                except ValueError as ex:
                    raise RecordFileError(path, str(ex), lineno) from ex
                yield lineno, rec
        except RecordFileError:
            raise
        except (OSError, EOFError, ValueError, zlib.error, zstandard.ZstdError) as ex:
            # Truncated or corrupt compressed data surfaces here, not at open.
            raise RecordFileError(path, f"unreadable after line {lineno}: {ex}") from ex


@dataclass(slots=True)
class FileSummary:
    """What a full pass over a recording found: it is valid, and this is its shape."""

    messages: int = 0
    max_partition: int | None = None
    unpartitioned: int = 0
    first_ts_ms: int | None = None
    last_ts_ms: int | None = None


def scan_records(path: str | os.PathLike[str]) -> FileSummary:
    """Check every line of a recording before anything is produced, and count its messages."""
    summary = FileSummary()
    for _, rec in read_records(path):
        summary.messages += 1
        if rec.partition is None:
            summary.unpartitioned += 1
        elif summary.max_partition is None or rec.partition > summary.max_partition:
            summary.max_partition = rec.partition
        if rec.timestamp_ms is not None:
            if summary.first_ts_ms is None:
                summary.first_ts_ms = rec.timestamp_ms
            summary.last_ts_ms = rec.timestamp_ms
    return summary
