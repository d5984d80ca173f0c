"""The recording format: every message survives a line and a (compressed) file byte for byte."""

from __future__ import annotations

import gzip
from pathlib import Path

import orjson
import pytest
import zstandard
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from fpstream.cli import app
from fpstream.ops.record import Pacer
from fpstream.records import (
    Recorded,
    RecordFileError,
    compression_for,
    decode_line,
    encode_line,
    open_records,
    read_records,
    scan_records,
)

SAMPLE = (b'{"v":1,"ts":1750000000,"app":"web-001","instance":"i-1",'
          b'"metrics":{"cpu_cores":1.5}}')

MESSAGES = [
    Recorded(b"web-001", SAMPLE, (("fpstream-id", b"a1"),), 1_750_000_000_000, "CreateTime",
             0, 0),
    Recorded(None, b"\xff\xfe\x00garbage\x80", (), 1_750_000_000_001, "CreateTime", 1, 0),
    Recorded(b"\xc3\x28", b"", (("bin", b"\x00\xff"), ("none", None), ("bin", b"again")),
             5, "LogAppendTime", 1, 1),
    Recorded(b"", None, (), None, "NotAvailable", 2, 7),
    Recorded("név ✓ \u2028".encode(), b"line\nbreak\r\n\t\"quoted\"\\", (("ü", "ü".encode()),),
             0, "CreateTime", 0, 1),
]


@pytest.mark.parametrize("rec", MESSAGES)
def test_line_round_trip(rec: Recorded) -> None:
    line = encode_line(rec)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert decode_line(line) == rec


def test_text_stays_readable_and_binary_is_base64() -> None:
    doc = orjson.loads(encode_line(MESSAGES[0]))
    assert doc["key"] == "web-001" and doc["value"] == SAMPLE.decode()
    assert doc["headers"] == [{"key": "fpstream-id", "value": "a1"}]
    assert (doc["timestamp"], doc["timestamp_type"]) == (1_750_000_000_000, "CreateTime")
    assert (doc["partition"], doc["offset"]) == (0, 0)
    doc = orjson.loads(encode_line(MESSAGES[1]))
    assert doc["key"] is None and "value" not in doc and doc["value_b64"] == "//4AZ2FyYmFnZYA="
    doc = orjson.loads(encode_line(MESSAGES[2]))
    assert "key_b64" in doc and doc["value"] == ""
    assert doc["headers"][1] == {"key": "none", "value": None}
    doc = orjson.loads(encode_line(MESSAGES[3]))
    assert doc["key"] == "" and doc["value"] is None and doc["timestamp"] is None


headers = st.lists(st.tuples(st.text(max_size=8), st.none() | st.binary(max_size=16)),
                   max_size=4).map(tuple)


@given(key=st.none() | st.binary(max_size=64) | st.text(max_size=16).map(str.encode),
       value=st.none() | st.binary(max_size=256) | st.text(max_size=64).map(str.encode),
       headers=headers, ts=st.none() | st.integers(0, 1 << 62))
def test_any_bytes_round_trip(key: bytes | None, value: bytes | None,
                              headers: tuple[tuple[str, bytes | None], ...],
                              ts: int | None) -> None:
    rec = Recorded(key, value, headers, ts, "CreateTime" if ts is not None else "NotAvailable",
                   3, 99)
    assert decode_line(encode_line(rec)) == rec


def test_hand_written_line_needs_only_a_value() -> None:
    rec = decode_line(b'{"value": "x"}')
    assert rec == Recorded(None, b"x", (), None, "NotAvailable", None, None)
    assert decode_line(b'{"key": "k", "value": "x", "timestamp": 9}').timestamp_type == "CreateTime"


@pytest.mark.parametrize(("line", "reason"), [
    (b"{bad", "not JSON"),
    (b"[1, 2]", "expected a JSON object"),
    (b'{"key": "k"}', "missing 'value'"),
    (b'{"value": "x", "value_b64": "eA=="}', "both 'value' and 'value_b64'"),
    (b'{"value_b64": "not base64!"}', "not valid base64"),
    (b'{"value": 3}', "'value' must be a string or null"),
    (b'{"value": "x", "timestamp": "now"}', "'timestamp' must be an integer"),
    (b'{"value": "x", "timestamp": true}', "'timestamp' must be an integer"),
    (b'{"value": "x", "timestamp_type": "Later"}', "'timestamp_type' must be one of"),
    (b'{"value": "x", "partition": -1}', "'partition' must be >= 0"),
    (b'{"value": "x", "headers": {"a": "b"}}', "'headers' must be a list"),
    (b'{"value": "x", "headers": [{"value": "b"}]}', "header 0 must be an object"),
    (b'{"value": "x", "headers": [{"key": "a", "value_b64": "%%"}]}', "header 0: 'value_b64'"),
])
def test_bad_lines_say_why(line: bytes, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        decode_line(line)


@pytest.mark.parametrize(("name", "kind", "magic"), [
    ("r.jsonl", "none", b'{"pa'),
    ("r.jsonl.gz", "gzip", b"\x1f\x8b"),
    ("r.jsonl.zst", "zstd", b"\x28\xb5\x2f\xfd"),
])
def test_files_compress_by_extension(tmp_path: Path, name: str, kind: str, magic: bytes) -> None:
    path = tmp_path / name
    assert compression_for(path) == kind
    with open_records(path, "wb") as fh:
        for rec in MESSAGES * 500:
            fh.write(encode_line(rec))
    assert path.read_bytes().startswith(magic)
    expected = b"".join(encode_line(r) for r in MESSAGES * 500)
    if kind == "gzip":
        assert gzip.decompress(path.read_bytes()) == expected
    elif kind == "zstd":
        stream = zstandard.ZstdDecompressor().decompressobj()
        assert stream.decompress(path.read_bytes()) == expected
    else:
        assert path.read_bytes() == expected
    assert [rec for _, rec in read_records(path)] == MESSAGES * 500
    summary = scan_records(path)
    assert (summary.messages, summary.max_partition) == (len(MESSAGES) * 500, 2)


def test_reading_recognises_compressed_content_under_a_plain_name(tmp_path: Path) -> None:
    data = b"".join(encode_line(r) for r in MESSAGES)
    (tmp_path / "a.jsonl").write_bytes(gzip.compress(data))
    (tmp_path / "b.jsonl").write_bytes(zstandard.ZstdCompressor().compress(data))
    for name in ("a.jsonl", "b.jsonl"):
        assert [rec for _, rec in read_records(tmp_path / name)] == MESSAGES


def test_zstd_of_several_frames_reads_whole(tmp_path: Path) -> None:
    frame = zstandard.ZstdCompressor().compress(b"".join(encode_line(r) for r in MESSAGES))
    (tmp_path / "r.zst").write_bytes(frame + frame)
    assert [rec for _, rec in read_records(tmp_path / "r.zst")] == MESSAGES * 2


@pytest.mark.parametrize("name", ["r.jsonl.gz", "r.jsonl.zst"])
def test_truncated_files_are_errors(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    with open_records(path, "wb") as fh:
        for rec in MESSAGES * 2000:
            fh.write(encode_line(rec))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 3])
    with pytest.raises(RecordFileError, match="unreadable after line|line"):
        list(read_records(path))


def test_bad_line_and_missing_file_are_named(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_bytes(encode_line(MESSAGES[0]) + b"  \n" + b'{"key": 1, "value": "x"}\n')
    with pytest.raises(RecordFileError, match=r"r.jsonl line 3: 'key' must be a string") as ex:
        list(read_records(path))
    assert ex.value.line == 3
    with pytest.raises(RecordFileError, match="cannot read: No such file"):
        list(read_records(tmp_path / "missing.jsonl"))


def test_replay_command_rejects_bad_files_before_any_kafka(tmp_path: Path) -> None:
    runner = CliRunner()
    offline = ["--to-topic", "t", "--brokers", "127.0.0.1:1", "--no-progress"]
    result = runner.invoke(app, ["replay", str(tmp_path / "nope.jsonl"), *offline])
    assert result.exit_code == 2
    assert "nope.jsonl: cannot read: No such file" in result.stderr
    bad = tmp_path / "bad.jsonl.gz"
    bad.write_bytes(gzip.compress(encode_line(MESSAGES[0]) + b"{bad\n"))
    result = runner.invoke(app, ["replay", str(bad), *offline])
    assert result.exit_code == 2
    assert "bad.jsonl.gz line 2: not JSON" in result.stderr
    result = runner.invoke(app, ["replay", str(bad), "--speed", "2", "--max", *offline])
    assert result.exit_code == 2 and "at most one of" in result.stderr
    result = runner.invoke(app, ["replay", str(bad), "--speed", "0", *offline])
    assert result.exit_code == 2 and "--speed must be > 0" in result.stderr


class FakeClock:
    """A clock that moves only when the pacer waits."""

    def __init__(self) -> None:
        self.now = 100.0
        self.waits: list[float] = []

    def __call__(self) -> float:
        return self.now

    def wait(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.now += seconds


@pytest.mark.parametrize("speed", [0.5, 1.0, 2.0, 10.0])
def test_pacer_sends_each_message_at_its_recorded_offset_over_speed(speed: float) -> None:
    clock = FakeClock()
    pacer = Pacer(speed, wait=clock.wait, clock=clock, slice_s=0.2)
    sent = []
    for ts_ms in (5_000, 5_000, 5_500, 7_000, 6_000, 9_000):
        pacer.until(ts_ms)
        sent.append(clock.now - 100.0)
    assert sent == pytest.approx([0.0, 0.0, 0.5 / speed, 2.0 / speed, 2.0 / speed, 4.0 / speed])
    assert all(0 < w <= 0.2 + 1e-12 for w in clock.waits)


def test_pacer_does_not_wait_for_time_already_spent() -> None:
    clock = FakeClock()
    pacer = Pacer(1.0, wait=clock.wait, clock=clock)
    pacer.until(0)
    clock.now += 3.0  # sending was slow
    pacer.until(2_000)
    assert clock.waits == []


def test_pacer_refuses_a_speed_that_is_not_positive() -> None:
    with pytest.raises(ValueError, match="speed"):
        Pacer(0.0, wait=lambda _: None)
