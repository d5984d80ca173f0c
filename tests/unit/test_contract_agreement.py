"""``fpstream validate`` and the JSON Schemas agree, object by object, on good and bad messages.

The corpus: the simulator's messages (arrays of samples, deploy requests), one message per
reason the simulator can inject, and edge cases at every limit, on both sides of it. Each
object is checked with the schema of its kind, inferred as ``fpstream validate`` infers it
(``metrics``: a sample; else ``requested``: a deploy request).

Known differences, each asserted below as the decoder's behaviour rather than skipped:

- A message that is not JSON to orjson (cut off, NaN, Infinity, 1e999) has no object to check.
- A message over ``max_message_bytes`` is refused whole (``too_large``); a schema sees objects.
- A message that is an empty array is refused (``not_object``); a schema describes an object.
- An object with neither ``metrics`` nor ``requested`` is ``unknown_kind`` for validate, which
  reads no topic; on the deploys topic the same object is a deploy request.
- ``"v": 1.0``: the decoder wants a JSON integer; JSON Schema counts 1.0 as the integer 1.
- A sample refused as ``future`` is judged against the decoder's clock; a schema has none.
- A usage more than ``CAPACITY_MULTIPLE`` times the capacity the same sample declares for that
  gauge is ``out_of_range``; a schema cannot compare two values.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from jsonschema import Draft202012Validator
from typer.testing import CliRunner

from fpstream.cli import app as cli
from fpstream.contract.schema import load_schema
from fpstream.events import (
    CAPACITY_MULTIPLE,
    DEFAULT_LIMITS,
    MAX_INTERVAL_S,
    TS_MAX,
    TS_MIN,
    decode_message,
)
from fpstream.simulator import INJECTABLE_REASONS, bad_message, simulate

TS = 1_767_571_200.0
LIMITS = DEFAULT_LIMITS
VALIDATORS = {kind: Draft202012Validator(load_schema(kind))
              for kind in ("metric-sample", "deploy-request")}


def sample(**over: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "v": 1, "ts": TS, "app": "billing-api", "instance": "vm-17", "interval_s": 60,
        "labels": {"image": "billing:4.2"}, "capacity": {"cpu_cores": 2, "mem_bytes": 8e9},
        "metrics": {"cpu_cores": 0.42, "mem_bytes": 1.06e9, "app.req_rate": 120.0}}
    doc.update(over)
    return {k: v for k, v in doc.items() if v is not _DROP}


def deploy(**over: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"v": 1, "ts": TS, "app": "billing-api", "instance": "vm-18",
                           "labels": {"team": "payments"}, "requested": {"cpu_cores": 2}}
    doc.update(over)
    return {k: v for k, v in doc.items() if v is not _DROP}


_DROP = object()
LONG = "a" * LIMITS.max_id_len

EDGES: list[Any] = [
    # At or near a limit, accepted today. Ids with '/' or '..' and implausible values stay in
    # the corpus as the decoder tightens: both sides must keep agreeing on them.
    sample(), sample(v=_DROP, interval_s=_DROP, labels=_DROP, capacity=_DROP),
    sample(labels=None, capacity=None), sample(ts=TS_MIN), sample(ts=TS_MAX - 0.001),
    sample(interval_s=MAX_INTERVAL_S), sample(interval_s=0.001), sample(app=LONG),
    sample(instance="a.b_c:d/e@f-g"), sample(instance="ns/../vm"), sample(extra={"x": [1]}),
    sample(metrics={"m" * 128: 1.0}), sample(metrics={f"m{i}": 0 for i in range(64)}),
    sample(labels={f"k{i}": "v" for i in range(32)}), sample(labels={"k" * 128: "v" * 256}),
    sample(labels={"": ""}), sample(metrics={"cpu_cores": 1e12}), sample(capacity={}),
    sample(metrics={"cpu_cores": 1e5}), sample(metrics={"mem_bytes": 2.0**60 * 1.01}),
    sample(metrics={"cpu_cores": 5000.0}),  # over 1000 times its declared 2 cores
    deploy(), deploy(requested={}), deploy(requested=None), deploy(labels=_DROP, v=_DROP),
    # Refused by both.
    sample(ts=TS_MAX), sample(ts=TS_MIN - 1), sample(ts=str(TS)), sample(ts=True),
    sample(ts=None), sample(ts=_DROP), sample(app=""), sample(app=LONG + "a"),
    sample(app="bad app"), sample(app="vm-17\n"), sample(app="é"), sample(app=17),
    sample(instance=None), sample(instance=_DROP), sample(metrics={}), sample(metrics=[1]),
    sample(metrics=None), sample(metrics={"cpu_cores": True}), sample(metrics={"cpu": "1"}),
    sample(metrics={"cpu_cores": -0.1}), sample(metrics={"cpu cores": 1.0}),
    sample(metrics={"m" * 129: 1.0}), sample(metrics={"m\n": 1.0}),
    sample(metrics={f"m{i}": 0 for i in range(65)}),
    sample(labels={f"k{i}": "v" for i in range(33)}), sample(labels={"k": "v" * 257}),
    sample(labels={"k" * 129: "v"}), sample(labels={"k": 1}), sample(labels=["a"]),
    sample(interval_s=0), sample(interval_s=-60), sample(interval_s=MAX_INTERVAL_S + 1),
    sample(interval_s=None), sample(interval_s="60"), sample(v=2), sample(v="1"),
    sample(v=True), sample(v=None), sample(capacity={"cpu_cores": -2}), sample(capacity="2"),
    deploy(requested={"cpu_cores": -1}), deploy(requested=[2]), deploy(ts=TS * 1000),
    deploy(instance="a b"), deploy(labels={"k": None}),
    "a string", 17, None, [1, 2],
]


def corpus() -> list[bytes]:
    """One message per line: simulator output, injected faults, edge cases, mixed arrays."""
    lines = [m.value for m in simulate(apps=8, minutes=20, seed=5, deploy_share=0.5)]
    base = orjson.loads(lines[-1])[0]
    lines += [bad_message(reason, base) for reason in INJECTABLE_REASONS]
    lines += [orjson.dumps(doc) for doc in EDGES]
    lines += [orjson.dumps([sample(), sample(app="bad app"), deploy(), "x"]),
              orjson.dumps([deploy(v=3), sample(metrics={"cpu_cores": -1})]),
              b"[]", orjson.dumps(sample(v=1.0)), orjson.dumps(sample(metrics=_DROP)),
              b'{"v":1,"ts":1767571200,"app":"a","instance":"i","metrics":{"cpu_cores":NaN}}']
    return lines


def schema_ok(obj: Any) -> bool | None:
    """The schema's verdict on one object; None where no schema applies (unknown kind)."""
    if isinstance(obj, dict) and "metrics" in obj:
        return VALIDATORS["metric-sample"].is_valid(obj)
    if isinstance(obj, dict) and "requested" in obj:
        return VALIDATORS["deploy-request"].is_valid(obj)
    if isinstance(obj, dict):
        return None
    return False  # every schema wants an object


def cli_verdicts(lines: list[bytes], tmp_path: Path) -> list[dict[str, Any]]:
    """What ``fpstream validate FILE`` prints for the lines, without the summary."""
    path = tmp_path / "corpus.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    result = CliRunner().invoke(cli, ["validate", str(path)])
    assert result.exit_code == 1, result.output  # the corpus has bad lines
    out = [orjson.loads(line) for line in result.stdout.splitlines()]
    assert out[-1]["summary"] and out[-1]["lines"] == len(lines)
    return out[:-1]


def test_validate_and_schemas_agree_object_by_object(tmp_path: Path) -> None:
    lines = corpus()
    verdicts = cli_verdicts(lines, tmp_path)
    assert [v["line"] for v in verdicts] == list(range(1, len(lines) + 1))
    agreed = {True: 0, False: 0}
    known: set[str] = set()
    for line, verdict in zip(lines, verdicts, strict=True):
        if len(line) > LIMITS.max_message_bytes:
            assert verdict["reason"] == "too_large"
            known.add("too_large")
            continue
        try:
            doc = orjson.loads(line)
        except orjson.JSONDecodeError:
            assert verdict["reason"] in ("malformed_json", "non_finite")
            known.add("not_json")
            continue
        if doc == []:
            assert verdict["reason"] == "not_object"
            known.add("empty_array")
            continue
        objects = doc if isinstance(doc, list) else [doc]
        errors = {e.index or 0: e.reason for e in decode_message(line, None, LIMITS).errors}
        accepted = []  # what validate must say of each object, given its schema's verdict
        for i, obj in enumerate(objects):
            expected = schema_ok(obj)
            where = f"line {verdict['line']} object {i}: {orjson.dumps(obj)[:200]!r}"
            if expected is None:
                assert errors.get(i) == "unknown_kind", where
                known.add("unknown_kind")
                expected = False
            elif errors.get(i) == "future":
                assert expected, where
                known.add("future")
                expected = False
            elif errors.get(i) == "out_of_range" and expected and over_capacity(obj):
                known.add("capacity_multiple")
                expected = False
            elif isinstance(obj, dict) and type(obj.get("v")) is float:
                assert expected and errors.get(i) == "bad_type", where
                known.add("v_float")
                expected = False
            else:
                assert (i not in errors) == expected, f"{where}: validate says {errors.get(i)}"
                agreed[expected] += 1
            accepted.append(expected)
        assert verdict["ok"] == all(accepted), f"line {verdict['line']}: {verdict}"
    # The corpus reaches both verdicts and every documented difference.
    assert agreed[True] >= 50 and agreed[False] >= 50, agreed
    assert known - {"future"} == {"too_large", "not_json", "empty_array", "unknown_kind",
                                  "v_float", "capacity_multiple"}


def over_capacity(obj: Any) -> bool:
    capacity = obj.get("capacity") or {}
    return any(isinstance(v, int | float) and capacity.get(k, 0) > 0 and
               v > CAPACITY_MULTIPLE * capacity[k] for k, v in (obj.get("metrics") or {}).items())


def test_the_corpus_reaches_every_reason_a_producer_can_cause(tmp_path: Path) -> None:
    reasons = {v.get("reason") for v in cli_verdicts(corpus(), tmp_path) if not v["ok"]}
    assert set(INJECTABLE_REASONS) <= reasons
