"""JSON Schemas of the wire contract, built from the code that defines it.

Every property comes from a field of an event dataclass (``fpstream.events``; ``ClusterDef``
for the cluster documents in Redis), its JSON type from the field's annotation, and its bounds,
patterns, limits and reasons from the decoder's constants. The files in ``schemas/v<N>/`` are
this module's output and are committed; a test regenerates them, so a field added to a
dataclass or a limit changed in the decoder fails the tests until the files are rewritten::

    python -m fpstream.contract.schema          # rewrite the current version's files
    python -m fpstream.contract.schema --check  # exit 1 if they differ from the code

Inbound events (metric samples, deploy requests) require the fields without a default, as the
decoder does; outbound ones require every field, since the encoder always writes them all.
Extra fields are allowed everywhere: the contract grows by adding fields within a version.

>>> schema = build_schemas()["allocation"]
>>> schema["$id"], schema["properties"]["v"]["const"], schema["required"][:2]
('urn:fpstream:schema:v1:allocation', 1, ['id', 'ts'])
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from fpstream.events import (
    CAPACITY_MULTIPLE,
    DEFAULT_LIMITS,
    ID_PATTERN,
    MAX_INTERVAL_S,
    MAX_LABEL_VALUE_LEN,
    METRIC_NAME_PATTERN,
    REASONS,
    RESOURCES,
    SCHEMA_VERSION,
    TS_MAX,
    TS_MIN,
    Allocation,
    Anomaly,
    DeadLetter,
    DeployRequest,
    Limits,
    MetricSample,
    metric_bound,
)
from fpstream.fleet.stage import ClusterDef
from fpstream.policy import RESERVE_FIELDS
from fpstream.settings import Settings

DIALECT = "https://json-schema.org/draft/2020-12/schema"
_SOURCE_DIR = Path(__file__).parent / "schemas"
_TOPICS = Settings()  # default topic names, for the descriptions


@dataclass(frozen=True, slots=True)
class _Event:
    name: str
    cls: type
    title: str
    inbound: bool
    where: str


_EVENTS: tuple[_Event, ...] = (
    _Event("metric-sample", MetricSample, "Metric sample", True,
           f"Kafka topic {_TOPICS.topic_metrics} (setting topic_metrics), key = app id."),
    _Event("deploy-request", DeployRequest, "Deploy request", True,
           f"Kafka topic {_TOPICS.topic_deploys} (setting topic_deploys), key = app id. "
           "On that topic 'requested' is optional; where the kind is inferred from the fields "
           "(fpstream validate), an object is a deploy request only if it has 'requested'."),
    _Event("allocation", Allocation, "Allocation", False,
           f"Kafka topic {_TOPICS.topic_allocations} (setting topic_allocations), "
           "key = app id, header fpstream-id = id; also the 'data' field of the Redis stream "
           "<prefix>:allocations and the values of the hash <prefix>:desired:<app> "
           "(field = instance)."),
    _Event("anomaly", Anomaly, "Anomaly", False,
           f"Kafka topic {_TOPICS.topic_anomalies} (setting topic_anomalies), "
           "key = app id, header fpstream-id = id."),
    _Event("dead-letter", DeadLetter, "Dead letter", False,
           f"Kafka topic {_TOPICS.topic_deadletter} (setting topic_deadletter), key = reason."),
    _Event("cluster", ClusterDef, "Cluster definition", False,
           "Redis, not Kafka: the values of the hash <prefix>:clusters (field = cluster id), "
           "replaced as a whole at every re-clustering together with the hash "
           "<prefix>:app_cluster (app id -> cluster id) and the key <prefix>:clusters:version."),
)

#: The schemas of the current version, by name (also their file names, without ``.json``).
SCHEMA_NAMES: tuple[str, ...] = tuple(e.name for e in _EVENTS)

# Python-only regex syntax has no meaning (or another one) in the ECMA-262 dialect that JSON
# Schema patterns use; refuse it rather than ship a schema that validates differently.
_NOT_PORTABLE = re.compile(r"\(\?P|\(\?[aiLmsux-]+[:)]|\\[AZz]|\(\?#")


def _anchored(pattern: str) -> str:
    """A decoder pattern used with ``fullmatch`` as a JSON Schema pattern (which searches).

    The trailing ``(?!\\n)`` keeps Python's ``$`` from matching before a final newline, which
    ``fullmatch`` would refuse; in ECMA-262 it changes nothing.
    """
    if _NOT_PORTABLE.search(pattern):
        msg = f"pattern {pattern!r} uses Python-only syntax; JSON Schema patterns are ECMA-262"
        raise ValueError(msg)
    return rf"^(?:{pattern})$(?!\n)"


def _strip_anchors(pattern: str) -> str:
    return pattern.removeprefix("^").removesuffix(r"$(?!\n)")


def _type_schema(hint: Any, where: str) -> dict[str, Any]:
    """The JSON Schema of a field annotation."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    scalars = {bool: "boolean", str: "string", int: "integer", float: "number"}
    if hint in scalars:
        return {"type": scalars[hint]}
    if origin is Literal:
        if all(isinstance(a, str) for a in args):
            return {"type": "string", "enum": list(args)}
        return {"enum": list(args)}
    if origin in (types.UnionType, typing.Union) and type(None) in args:
        (inner,) = [a for a in args if a is not type(None)]
        schema = _type_schema(inner, where)
        if set(schema) == {"type"}:
            return {"type": [schema["type"], "null"]}
        return {"anyOf": [schema, {"type": "null"}]}
    if origin is dict and args and args[0] is str:
        return {"type": "object", "additionalProperties": _type_schema(args[1], where)}
    if origin in (list, tuple) and args:
        return {"type": "array", "items": _type_schema(args[0], where)}
    msg = f"{where}: no JSON Schema for the annotation {hint!r}; teach fpstream.contract.schema"
    raise TypeError(msg)


def _fields(event: _Event) -> list[tuple[str, Any, bool, Any]]:
    """``(name, annotation, required, default)`` of every wire field of the event."""
    hints = typing.get_type_hints(event.cls)
    out = []
    for f in dataclasses.fields(event.cls):
        default: Any = dataclasses.MISSING
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        required = not event.inbound or default is dataclasses.MISSING
        shown = None if required else default  # only inbound fields have defaults on the wire
        out.append((f.name, hints[f.name], required, shown))
    if event.cls is ClusterDef:  # the Redis document adds the schema version
        out.append(("v", int, True, None))
    return out


def _refinements(limits: Limits) -> dict[str, dict[str, dict[str, Any]]]:
    """Per event and field, what the decoder and the code add to the annotation's type."""
    ident = {"type": "string", "minLength": 1, "maxLength": limits.max_id_len,
             "pattern": _anchored(ID_PATTERN.pattern)}
    name = _anchored(METRIC_NAME_PATTERN.pattern)
    seq = "(?:0|[1-9][0-9]*)"
    version = {"type": "integer", "const": SCHEMA_VERSION,
               "description": f"Schema version, {SCHEMA_VERSION}; a breaking change of the "
                              "event gets a new version."}
    ts_range = ("Unix seconds (UTC); 2000-01-01 to 2100-01-01, so that milliseconds or "
                "nanoseconds are refused.")
    event_ts = {"type": "number", "minimum": TS_MIN, "exclusiveMaximum": TS_MAX,
                "description": f"Event time, {ts_range}"}
    labels = {"type": ["object", "null"], "maxProperties": limits.max_labels,
              "propertyNames": {"maxLength": limits.max_id_len},
              "additionalProperties": {"type": "string", "maxLength": MAX_LABEL_VALUE_LEN},
              "description": "Free-form labels (image, team, tier, ...): the features a new "
                             "instance is matched to known applications by."}

    def bounded(metric: str) -> dict[str, Any]:
        return {"type": "number", "minimum": 0, "maximum": metric_bound(metric)}

    def gauges(required: bool, what: str) -> dict[str, Any]:
        schema: dict[str, Any] = {
            "type": "object" if required else ["object", "null"],
            "maxProperties": limits.max_metrics, "propertyNames": {"pattern": name},
            "properties": {"cpu_cores": bounded("cpu_cores")},
            "patternProperties": {"_bytes$": bounded("any_bytes")},
            "additionalProperties": bounded("any_rate"),
            "description": f"{what} Resource names: {', '.join(RESOURCES)} (cores, bytes, "
                           "bytes per second); app.* and proc.* gauges are optional. Values "
                           "above a plausible bound (cores, bytes, any other rate or count) "
                           "are refused as out_of_range, and so is a usage more than "
                           f"{CAPACITY_MULTIPLE:g} times the capacity declared for the same "
                           "gauge (not expressible here)."}
        if required:
            schema["minProperties"] = 1
        return schema

    def amounts(keys: Sequence[str], what: str) -> dict[str, Any]:
        number = {"type": "number", "minimum": 0}
        return {"type": "object", "required": list(keys),
                "properties": {k: dict(number) for k in keys},
                "additionalProperties": dict(number), "description": what}

    inbound = {"v": version, "ts": event_ts, "app": ident, "instance": ident, "labels": labels}
    output_ts = {"type": "number", "minimum": TS_MIN,
                 "description": "Event time of the decision, Unix seconds: the end of the "
                                "decision period, or the deploy request's ts."}
    return {
        "metric-sample": {
            **inbound,
            "ts": {**event_ts,
                   "description": f"Event time at the end of the sampled interval, {ts_range}"},
            "metrics": gauges(True, "Usage over the interval."),
            "interval_s": {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_INTERVAL_S,
                           "description": "Seconds the sample covers."},
            "capacity": gauges(False, "What the instance has now."),
        },
        "deploy-request": {
            **inbound,
            "requested": gauges(False, "The size the instance is deployed with."),
        },
        "allocation": {
            "v": version,
            "id": {"type": "string", "pattern": _anchored(
                f"(?:{ID_PATTERN.pattern})/(?:{ID_PATTERN.pattern})/{seq}"),
                "description": "<app>/<instance>/<seq>: seq 0 is the proactive allocation, "
                               "1, 2, ... the resizes; a higher seq for the same instance "
                               "supersedes a lower one. Parse seq from the right."},
            "ts": output_ts, "app": ident, "instance": ident,
            "kind": {"description": "proactive: before the instance's first sample, from a "
                                    "deploy request; resize: from the instance's history."},
            "instance_type": {"type": "string", "minLength": 1,
                              "description": "The catalog's cheapest type that fits reserve."},
            "reserve": amounts(RESERVE_FIELDS, "What to reserve: cores, bytes, bytes per "
                                               "second (disk_bps and net_bps are read+write "
                                               "and rx+tx)."),
            "predicted": amounts(RESOURCES, "The need the reserve covers, per resource."),
            "cluster": {"type": "integer", "minimum": -1,
                        "description": "The app's cluster when the decision was made (for "
                                       "a proactive allocation, that of the evidence that "
                                       "sized it); -1 when none is known."},
            "confidence": {"type": "number", "minimum": 0, "maximum": 1},
            "policy": {"type": "string", "minLength": 1,
                       "description": "The A/B arm that decided (its name)."},
            "model_version": {"type": "integer", "minimum": 0,
                              "description": "Version of the fleet's fingerprint model behind "
                                             "the decision; 0 for an instance's own."},
        },
        "anomaly": {
            "v": version,
            "id": {"type": "string", "pattern": _anchored(
                f"(?:{ID_PATTERN.pattern})/(?:{ID_PATTERN.pattern})/"
                f"(?:{_strip_anchors(name)})/{seq}"),
                "description": "<app>/<instance>/<metric>/<period end, Unix seconds>."},
            "ts": output_ts, "app": ident, "instance": ident,
            "metric": {"type": "string", "pattern": name,
                       "description": f"The resource: one of {', '.join(RESOURCES)}."},
            "observed": {"type": "number", "minimum": 0,
                         "description": "The period's observed peak."},
            "predicted": {"type": "number", "minimum": 0,
                          "description": "What was predicted for the period."},
            "score": {"description": "Signed distance from the prediction in the instance's "
                                     "own residual spreads (positive: above)."},
        },
        "dead-letter": {
            "v": version,
            "ts": {"type": "number", "minimum": 0,
                   "description": "The message's broker timestamp, Unix seconds; 0 if none."},
            "reason": {"type": "string", "enum": list(REASONS),
                       "description": "Why it was refused; more reasons may be added within "
                                      "a schema version."},
            "error": {"description": "What was wrong, for people."},
            "topic": {"description": "Where the message came from."},
            "partition": {"type": ["integer", "null"], "minimum": 0},
            "offset": {"type": ["integer", "null"], "minimum": 0},
            "raw_b64": {"type": "string", "contentEncoding": "base64",
                        "pattern": r"^[A-Za-z0-9+/]*={0,2}$",
                        "description": "The refused message (or sample), base64."},
        },
        "cluster": {
            "v": version,
            "id": {"type": "integer", "minimum": 0},
            "ts": {"type": "number", "minimum": TS_MIN,
                   "description": "Event time of the re-clustering, Unix seconds."},
            "version": {"type": "integer", "minimum": 0,
                        "description": "Clustering version; ids stay stable across versions."},
            "members": {"type": "integer", "minimum": 0},
            "centroid": {"description": "The cluster's centre in fingerprint space."},
            "needs": {"additionalProperties": {"type": "number", "minimum": 0},
                      "description": "Typical (median) predicted need of its instances."},
        },
    }


def _description(event: _Event, limits: Limits) -> str:
    text = f"fpstream {event.title.lower()}, wire contract version {SCHEMA_VERSION}. "
    text += event.where
    if event.inbound:
        text += (
            f" A message holds one such object or a JSON array of 1 to {limits.max_batch}; "
            "each object of an array is accepted or refused on its own. Checked by the decoder "
            f"but not by this schema: a message over {limits.max_message_bytes} bytes is "
            "refused whole (too_large); NaN and Infinity are not JSON (non_finite); 'v' must "
            "be written as an integer (1.0 is refused); samples whose window has closed are "
            "refused by the flow (late). Limits are the defaults of the settings "
            "max_message_bytes, max_metrics, max_labels and max_id_len."
        )
    else:
        text += " Extra fields may be added within a version; ignore the ones you do not know."
    return text


def build_schemas(limits: Limits = DEFAULT_LIMITS) -> dict[str, dict[str, Any]]:
    """Every schema of the current version, by name."""
    refine = _refinements(limits)
    out: dict[str, dict[str, Any]] = {}
    for event in _EVENTS:
        properties: dict[str, Any] = {}
        required: list[str] = []
        for name, hint, needed, default in _fields(event):
            where = f"{event.cls.__name__}.{name}"
            schema = {**_type_schema(hint, where), **refine[event.name].get(name, {})}
            if default is not None and default != {}:
                schema["default"] = default
            properties[name] = schema
            if needed:
                required.append(name)
        out[event.name] = {
            "$schema": DIALECT,
            "$id": f"urn:fpstream:schema:v{SCHEMA_VERSION}:{event.name}",
            "title": f"fpstream {event.title.lower()} (v{SCHEMA_VERSION})",
            "description": _description(event, limits),
            "type": "object",
            "required": required,
            "properties": properties,
        }
    return out


def render(schema: dict[str, Any]) -> str:
    """The file text of a schema."""
    return json.dumps(schema, indent=2) + "\n"


def schema_dir(version: int = SCHEMA_VERSION) -> Path:
    """Where the schemas of ``version`` are in the source tree."""
    return _SOURCE_DIR / f"v{version}"


def load_schema(name: str, version: int = SCHEMA_VERSION) -> dict[str, Any]:
    """A shipped schema, read from the installed package: ``load_schema("allocation")``."""
    if name not in SCHEMA_NAMES:
        raise ValueError(f"no schema {name!r}, expected one of {list(SCHEMA_NAMES)}")
    text = (resources.files("fpstream.contract") / "schemas" / f"v{version}" / f"{name}.json"
            ).read_text(encoding="utf-8")
    doc: dict[str, Any] = json.loads(text)
    return doc


def differences(directory: Path, limits: Limits = DEFAULT_LIMITS) -> list[str]:
    """Files in ``directory`` that are missing, differ from the code's schemas, or are extra."""
    wanted = {f"{name}.json": render(s) for name, s in build_schemas(limits).items()}
    present = {p.name for p in directory.glob("*.json")} if directory.is_dir() else set()
    out = [f"{n}: missing" for n in sorted(set(wanted) - present)]
    out += [f"{n}: differs from the code" for n in sorted(set(wanted) & present)
            if (directory / n).read_text(encoding="utf-8") != wanted[n]]
    out += [f"{n}: no such schema" for n in sorted(present - set(wanted))]
    return out


def write_schemas(directory: Path, limits: Limits = DEFAULT_LIMITS) -> list[Path]:
    """Write every schema of the current version; returns the files written."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, schema in build_schemas(limits).items():
        path = directory / f"{name}.json"
        path.write_text(render(schema), encoding="utf-8")
        paths.append(path)
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fpstream.contract.schema",
        description="Write the wire contract's JSON Schemas from the code, or check them.")
    parser.add_argument("--check", action="store_true",
                        help="Only compare; exit 1 if the files differ from the code.")
    parser.add_argument("--dir", type=Path, default=schema_dir(),
                        help="Directory of the current version's files.")
    args = parser.parse_args(argv)
    stale = differences(args.dir)
    if args.check:
        for line in stale:
            print(f"{args.dir / line}", file=sys.stderr)
        if stale:
            print("regenerate with: python -m fpstream.contract.schema", file=sys.stderr)
        return 1 if stale else 0
    for path in write_schemas(args.dir):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
