from __future__ import annotations

import io
import subprocess
import sys

import orjson

from fpstream.events import Limits
from fpstream.validate import iter_lines, validate_stream

GOOD = (b'{"v":1,"ts":1750000000,"app":"a","instance":"i","metrics":{"cpu_cores":1}}')


def run(data: bytes, limits: Limits | None = None) -> list[dict]:
    return list(validate_stream(io.BytesIO(data), limits or Limits()))


def test_verdict_per_line_and_summary() -> None:
    data = GOOD + b"\n[" + GOOD + b"," + GOOD + b"]\n\n{bad\n\xff\xfe\xfd\n"
    out = run(data)
    assert out[0] == {"line": 1, "ok": True, "kind": "metric", "count": 1}
    assert out[1] == {"line": 2, "ok": True, "kind": "metric", "count": 2}
    assert out[2]["line"] == 4 and out[2]["reason"] == "malformed_json"
    assert out[3]["line"] == 5 and not out[3]["ok"]
    assert out[-1]["summary"] and out[-1]["ok"] == 2 and out[-1]["bad"] == 2
    assert out[-1]["reasons"] == {"malformed_json": 2}


def test_long_lines_are_skipped_with_bounded_memory() -> None:
    huge = b"x" * (3 * 65536 + 17)
    data = GOOD + b"\n" + huge + b"\n" + GOOD
    out = run(data, Limits(max_message_bytes=1000))
    assert [v.get("reason") for v in out[:3]] == [None, "too_large", None]
    assert out[1]["line"] == 2 and str(len(huge)) in out[1]["detail"]
    assert out[-1]["lines"] == 3


def test_iter_lines_splits_on_chunk_boundaries() -> None:
    lines = [b"a" * n for n in (0, 1, 65535, 65536, 65537, 5)]
    got = [ln for _, ln, _ in iter_lines(io.BytesIO(b"\n".join(lines)), 1 << 20)]
    assert got == lines


def test_cli_exit_codes(tmp_path) -> None:
    good = tmp_path / "good.jsonl"
    good.write_bytes(GOOD + b"\n" + GOOD + b"\n")
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(GOOD + b"\nnot json\n")
    cmd = [sys.executable, "-m", "fpstream.cli", "validate"]
    ok = subprocess.run([*cmd, str(good)], capture_output=True)
    assert ok.returncode == 0, ok.stderr
    assert orjson.loads(ok.stdout.splitlines()[-1])["ok"] == 2
    ko = subprocess.run([*cmd, "-"], input=bad.read_bytes(), capture_output=True)
    assert ko.returncode == 1
    assert orjson.loads(ko.stdout.splitlines()[1])["reason"] == "malformed_json"
    missing = subprocess.run([*cmd, str(tmp_path / "nope")], capture_output=True)
    assert missing.returncode == 2 and b"cannot read" in missing.stderr


def test_simulate_then_validate_agree_on_bad_share(tmp_path) -> None:
    out = tmp_path / "f.jsonl"
    cli = [sys.executable, "-m", "fpstream.cli"]
    sim = subprocess.run([*cli, "simulate", "--apps", "50", "--minutes", "30", "--bad-share",
                          "0.05", "--out", str(out)], capture_output=True)
    assert sim.returncode == 0, sim.stderr
    injected = orjson.loads(sim.stderr.splitlines()[-1])["bad"]
    assert injected > 0
    check = subprocess.run([*cli, "validate", str(out)], capture_output=True)
    assert check.returncode == 1
    summary = orjson.loads(check.stdout.splitlines()[-1])
    assert summary["bad"] == injected
    assert summary["ok"] + summary["bad"] == summary["lines"]
