"""The wire contract: event dataclasses and their JSON codec.

Decoding never raises. ``decode_message`` returns the events a message holds and one
``DecodeError`` per object it could not accept, each with a reason from ``REASONS``, so the
flow can dead-letter exactly what was wrong and keep the rest.

>>> res = decode_message(b'{"v":1,"ts":1.7e9,"app":"a","instance":"i","metrics":{"cpu_cores":1}}')
>>> res.events[0].metrics["cpu_cores"], res.errors
(1.0, [])
>>> decode_message(b'{"v":1').errors[0].reason
'malformed_json'
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from operator import itemgetter
from typing import Any, Literal, TypeAlias

import numpy as np
import orjson

SCHEMA_VERSION = 1

#: The six resource gauges every sample may carry; the models predict these.
RESOURCES: tuple[str, ...] = (
    "cpu_cores",
    "mem_bytes",
    "disk_read_bps",
    "disk_write_bps",
    "net_rx_bps",
    "net_tx_bps",
)

#: Every reason a message can be refused for; the dead-letter topic and metrics use these.
REASONS: tuple[str, ...] = (
    "malformed_json",
    "not_object",
    "missing_field",
    "bad_type",
    "bad_id",
    "non_finite",
    "negative",
    "out_of_range",
    "too_large",
    "too_many_metrics",
    "too_many_labels",
    "unsupported_version",
    "unknown_kind",
    "late",
    "future",
    "over_capacity",
    "model_error",
)

#: App and instance ids: letters, digits and ``._:@-``, never ``..``. Without a path separator
#: or a parent reference an id cannot name a path wherever an actuator puts it, and the
#: allocation id ``<app>/<instance>/<seq>`` splits unambiguously (from the right).
ID_PATTERN = re.compile(r"(?:[A-Za-z0-9_:@-]|\.(?!\.))+")
#: The id grammar in words, for error messages: ``ID_RULE.format(n=128)``.
ID_RULE = "[A-Za-z0-9._:@-]{{1,{n}}} with no '..'"
METRIC_NAME_PATTERN = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
_NON_FINITE_TOKEN = re.compile(rb'[:,\[]\s*-?(?:NaN|Infinity)\s*[,}\]]')

# Event time outside [2000-01-01, 2100-01-01) is a unit mistake (ms, ns), not a real time.
TS_MIN = 946_684_800.0
TS_MAX = 4_102_444_800.0
MAX_INTERVAL_S = 86_400.0
MAX_LABEL_VALUE_LEN = 256

#: The largest plausible value of a gauge, by what it measures (``metric_bound``): a value
#: beyond it is a unit mistake or a broken agent, and would overflow the models' arithmetic.
MAX_CORES = 1e5
MAX_BYTES = float(2**60)
MAX_RATE = 1e15
#: A usage more than this many times the capacity declared for the same gauge is refused too
#: (real traces show memory up to a few hundred times a VM's provisioned size, never more).
CAPACITY_MULTIPLE = 1000.0

Kind = Literal["metric", "deploy"]


@dataclass(frozen=True, slots=True)
class Limits:
    """What a single message may hold; beyond these it is refused with a reason."""

    max_message_bytes: int = 1 << 20
    max_metrics: int = 64
    max_labels: int = 32
    max_id_len: int = 128
    max_batch: int = 10_000

    def __post_init__(self) -> None:
        for name in ("max_message_bytes", "max_metrics", "max_labels", "max_id_len", "max_batch"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                msg = f"limit {name} must be a positive integer, got {value!r}"
                raise ValueError(msg)


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True, slots=True)
class MetricSample:
    ts: float
    app: str
    instance: str
    metrics: dict[str, float]
    interval_s: float = 60.0
    labels: dict[str, str] = field(default_factory=dict)
    capacity: dict[str, float] = field(default_factory=dict)
    v: int = SCHEMA_VERSION


@dataclass(frozen=True, slots=True)
class DeployRequest:
    ts: float
    app: str
    instance: str
    labels: dict[str, str] = field(default_factory=dict)
    requested: dict[str, float] = field(default_factory=dict)
    v: int = SCHEMA_VERSION


@dataclass(frozen=True, slots=True)
class Allocation:
    id: str
    ts: float
    app: str
    instance: str
    kind: Literal["proactive", "resize"]
    instance_type: str
    reserve: dict[str, float]
    predicted: dict[str, float]
    cluster: int
    confidence: float
    policy: str
    model_version: int
    v: int = SCHEMA_VERSION


@dataclass(frozen=True, slots=True)
class Anomaly:
    id: str
    ts: float
    app: str
    instance: str
    metric: str
    observed: float
    predicted: float
    score: float
    severity: Literal["warn", "critical"]
    v: int = SCHEMA_VERSION


@dataclass(frozen=True, slots=True)
class DeadLetter:
    ts: float
    reason: str
    error: str
    topic: str | None
    partition: int | None
    offset: int | None
    raw_b64: str
    v: int = SCHEMA_VERSION


Event: TypeAlias = MetricSample | DeployRequest | Allocation | Anomaly | DeadLetter


@dataclass(frozen=True, slots=True)
class DecodeError:
    """Why one message, or one object of a batch (``index``), was refused."""

    reason: str
    detail: str
    index: int | None = None


@dataclass(frozen=True, slots=True)
class Decoded:
    events: list[MetricSample | DeployRequest]
    errors: list[DecodeError]

    @property
    def ok(self) -> bool:
        return not self.errors


class _Invalid(Exception):
    """Internal: carries a reason code out of the field checks."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def encode(event: Event) -> bytes:
    """Serialise an event to compact JSON bytes (field names are the contract)."""
    return orjson.dumps(asdict(event))


def to_dict(event: Event) -> dict[str, Any]:
    return asdict(event)


def decode_message(
    raw: bytes | bytearray | memoryview | str | None,
    kind: Kind | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> Decoded:
    """Decode one message: a JSON object or an array of them.

    ``kind`` is what the topic carries; ``None`` infers it per object (a ``metrics`` field
    means a sample, a ``requested`` field a deploy request).
    """
    doc, error = parse_message(raw, limits)
    if error is not None:
        return Decoded([], [error])
    return decode_document(doc, kind, limits)


def parse_message(raw: bytes | bytearray | memoryview | str | None, limits: Limits = DEFAULT_LIMITS
                  ) -> tuple[Any, DecodeError | None]:
    """The JSON document of a message, or why it has none (too large, not JSON)."""
    if raw is None:
        return None, DecodeError("malformed_json", "message has no value")
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "surrogatepass")
    if len(raw) > limits.max_message_bytes:
        detail = f"message is {len(raw)} bytes, the limit is {limits.max_message_bytes}"
        return None, DecodeError("too_large", detail)
    try:
        return orjson.loads(raw), None
    except orjson.JSONDecodeError as ex:
        # NaN, Infinity and overflowing literals are what agents emit for a broken gauge;
        # naming them helps more than "malformed".
        if "infinity" in str(ex) or _NON_FINITE_TOKEN.search(raw):
            return None, DecodeError("non_finite", _short(str(ex)))
        return None, DecodeError("malformed_json", _short(str(ex)))


def decode_document(doc: Any, kind: Kind | None = None, limits: Limits = DEFAULT_LIMITS
                    ) -> Decoded:
    """``decode_message`` after parsing: the events of a JSON document, object by object."""
    if isinstance(doc, list):
        if not doc:
            return Decoded([], [DecodeError("not_object", "empty array holds no event")])
        if len(doc) > limits.max_batch:
            detail = f"array holds {len(doc)} objects, the limit is {limits.max_batch}"
            return Decoded([], [DecodeError("too_large", detail)])
        events: list[MetricSample | DeployRequest] = []
        errors: list[DecodeError] = []
        for i, obj in enumerate(doc):
            try:
                events.append(_parse_object(obj, kind, limits))
            except _Invalid as ex:
                errors.append(DecodeError(ex.reason, f"item {i}: {ex.detail}", i))
        return Decoded(events, errors)
    try:
        return Decoded([_parse_object(doc, kind, limits)], [])
    except _Invalid as ex:
        return Decoded([], [DecodeError(ex.reason, ex.detail)])


@dataclass(slots=True)
class SampleColumns:
    """The samples of one message as columns (``decode_columns``): row ``i`` is object ``i``.

    ``values`` is ``(rows, len(names))`` float64; ``labels`` and ``capacity`` are the
    objects' own (``None`` when absent), numbers as sent. One per message, on the way to a
    ``SampleBatch``: not frozen, which would cost more than the rest of its making.
    """

    ts: list[float]
    app: list[str]
    instance: list[str]
    names: tuple[str, ...]
    values: np.ndarray
    labels: list[dict[str, str] | None]
    capacity: list[dict[str, float] | None]


def decode_columns(doc: Any, limits: Limits = DEFAULT_LIMITS) -> SampleColumns | None:
    """The common case of a metrics message at speed: every object a valid sample, all with
    the same metric names in the same order (an agent's batch).

    The samples as columns; ``None`` whenever anything is unusual, wrong or not, and then
    ``decode_document`` gives the verdict. So this path only ever accepts what
    ``decode_document(doc, "metric", limits)`` accepts, with the same values: every rule is
    checked once per message where it can be (names, number types, bounds), per object
    where it cannot (ids, times, labels, capacity).
    """
    objs = doc if type(doc) is list else [doc]
    if not 0 < len(objs) <= limits.max_batch or type(objs[0]) is not dict:
        return None
    first = objs[0].get("metrics")
    if type(first) is not dict:
        return None
    names = tuple(first)
    if not 0 < len(names) <= limits.max_metrics:
        return None
    cpu = _NAME_TUPLES.get(names)
    if cpu is None:
        if not all(map(METRIC_NAME_PATTERN.fullmatch, names)):
            return None
        cpu = names.index("cpu_cores") if "cpu_cores" in names else -1
        if len(_NAME_TUPLES) >= _REMEMBER_MAX:
            _NAME_TUPLES.clear()
        _NAME_TUPLES[names] = cpu
    max_id = limits.max_id_len
    ids = _GOOD_IDS
    ts_col: list[float] = []
    apps: list[str] = []
    instances: list[str] = []
    labels_col: list[dict[str, str] | None] = []
    capacity_col: list[dict[str, float] | None] = []
    flat: list[float] = []
    checked_labels: object = None
    checked_capacity: object = None
    app0: object = _REQUIRED  # no app yet: nothing compares equal to this
    for obj in objs:
        if type(obj) is not dict:
            return None
        try:
            ts, app, instance, metrics = _REQUIRED(obj)
        except KeyError:
            return None
        if type(metrics) is not dict or tuple(metrics) != names:
            return None
        get = obj.get
        v = get("v", SCHEMA_VERSION)
        interval = get("interval_s", 60.0)
        if (type(v) is not int or v != SCHEMA_VERSION
                or (type(ts) is not float and type(ts) is not int) or not TS_MIN <= ts < TS_MAX
                or (type(interval) is not float and type(interval) is not int)
                or not 0.0 < interval <= MAX_INTERVAL_S
                or type(instance) is not str):
            return None
        if app != app0:  # one app per message, as a rule
            if type(app) is not str or ((app not in ids or len(app) > max_id)
                                        and not _good_id(app, max_id)):
                return None
            app0 = app
        if (instance not in ids or len(instance) > max_id) and not _good_id(instance, max_id):
            return None
        labels = get("labels")
        if labels is not None and labels != checked_labels:
            if not _labels_ok(labels, limits):
                return None
            checked_labels = labels
        capacity = get("capacity")
        if capacity is not None:
            if capacity != checked_capacity:
                if not _capacity_ok(capacity, limits):
                    return None
                checked_capacity = capacity
            for key, limit in capacity.items():
                # a value of another type fails the message's type check below
                value = metrics.get(key)
                if (type(value) is float or type(value) is int) and limit > 0 \
                        and float(value) > CAPACITY_MULTIPLE * float(limit):
                    return None
        ts_col.append(ts)
        apps.append(app)
        instances.append(instance)
        labels_col.append(labels)
        capacity_col.append(capacity)
        flat.extend(metrics.values())
    # Bounds: every metric's bound is at least MAX_RATE except cpu_cores' (``metric_bound``).
    if not _NUMBER_TYPES.issuperset(map(type, flat)) or min(flat) < 0 or max(flat) > MAX_RATE \
            or (cpu >= 0 and max(flat[cpu :: len(names)]) > MAX_CORES):
        return None
    values = np.array(flat, dtype=np.float64).reshape(len(objs), len(names))
    return SampleColumns(ts_col, apps, instances, names, values, labels_col, capacity_col)


_REQUIRED = itemgetter("ts", "app", "instance", "metrics")
#: JSON numbers as orjson gives them (``bool`` is not one of them, though a subclass of int).
_NUMBER_TYPES = frozenset((int, float))
# Metric-name tuples whose names all passed the pattern -> position of cpu_cores (or -1).
_NAME_TUPLES: dict[tuple[str, ...], int] = {}


def _labels_ok(labels: object, limits: Limits) -> bool:
    if type(labels) is not dict or len(labels) > limits.max_labels:
        return False
    max_key = limits.max_id_len
    for key, value in labels.items():
        if type(value) is not str or len(key) > max_key or len(value) > MAX_LABEL_VALUE_LEN:
            return False
    return True


def _capacity_ok(capacity: object, limits: Limits) -> bool:
    """The capacity's own rules; the usage it bounds is checked by the caller."""
    if type(capacity) is not dict or len(capacity) > limits.max_metrics:
        return False
    for key, limit in capacity.items():
        if type(limit) is not float and type(limit) is not int:
            return False
        if not 0.0 <= float(limit) <= metric_bound(key):
            return False
        if key not in _GOOD_NAMES:
            if not METRIC_NAME_PATTERN.fullmatch(key):
                return False
            _remember(_GOOD_NAMES, key)
    return True


def sample_of(obj: dict[str, Any]) -> MetricSample:
    """The ``MetricSample`` of an object that ``decode_columns`` or ``decode_document``
    accepted, built again (for a dead letter of a sample refused later on)."""
    return MetricSample(
        float(obj["ts"]), obj["app"], obj["instance"],
        {k: float(v) for k, v in obj["metrics"].items()},
        float(obj.get("interval_s", 60.0)),
        obj.get("labels") or {},
        {k: float(v) for k, v in (obj.get("capacity") or {}).items()},
    )


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _parse_object(obj: object, kind: Kind | None, limits: Limits) -> MetricSample | DeployRequest:
    if not isinstance(obj, dict):
        raise _Invalid("not_object", f"expected a JSON object, got {_json_type(obj)}")
    version = obj.get("v", SCHEMA_VERSION)
    if type(version) is not int:
        raise _Invalid("bad_type", f"'v' must be an integer, got {_json_type(version)}")
    if version != SCHEMA_VERSION:
        raise _Invalid("unsupported_version", f"schema version {version}, supported: 1")
    if kind is None:
        if "metrics" in obj:
            kind = "metric"
        elif "requested" in obj:
            kind = "deploy"
        else:
            raise _Invalid("unknown_kind", "object has neither 'metrics' nor 'requested'")
    ts = _timestamp(obj)
    app = _ident(obj, "app", limits)
    instance = _ident(obj, "instance", limits)
    labels = _labels(obj, limits)
    if kind == "metric":
        interval = _number(obj, "interval_s", default=60.0)
        if not 0.0 < interval <= MAX_INTERVAL_S:
            raise _Invalid("out_of_range", f"'interval_s' must be in (0, 86400], got {interval}")
        metrics = _gauges(obj, "metrics", limits, required=True)
        capacity = _gauges(obj, "capacity", limits, required=False)
        _within_capacity(metrics, capacity)
        return MetricSample(ts, app, instance, metrics, interval, labels, capacity)
    requested = _gauges(obj, "requested", limits, required=False)
    return DeployRequest(ts, app, instance, labels, requested)


def metric_bound(name: str) -> float:
    """The largest value ``name`` may take: cores, bytes, or any other rate or count.

    >>> metric_bound("cpu_cores"), metric_bound("mem_bytes") == 2**60, metric_bound("app.qps")
    (100000.0, True, 1000000000000000.0)
    """
    if name == "cpu_cores":
        return MAX_CORES
    if name.endswith("_bytes"):
        return MAX_BYTES
    return MAX_RATE


def _json_type(value: object) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number")


def _number(obj: dict[str, Any], name: str, default: float | None = None) -> float:
    if name not in obj:
        if default is None:
            raise _Invalid("missing_field", f"'{name}' is required")
        return default
    value = obj[name]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Invalid("bad_type", f"'{name}' must be a number, got {_json_type(value)}")
    value = float(value)
    if not math.isfinite(value):
        raise _Invalid("non_finite", f"'{name}' is {value}")
    return value


def _timestamp(obj: dict[str, Any]) -> float:
    ts = _number(obj, "ts")
    if not TS_MIN <= ts < TS_MAX:
        detail = f"'ts' must be Unix seconds between 2000 and 2100, got {ts:.6g}"
        raise _Invalid("out_of_range", detail)
    return ts


def _ident(obj: dict[str, Any], name: str, limits: Limits) -> str:
    if name not in obj:
        raise _Invalid("missing_field", f"'{name}' is required")
    value = obj[name]
    if not isinstance(value, str):
        raise _Invalid("bad_type", f"'{name}' must be a string, got {_json_type(value)}")
    if (value in _GOOD_IDS and len(value) <= limits.max_id_len) or \
            _good_id(value, limits.max_id_len):
        return value
    detail = (
        f"'{name}' must match {ID_RULE.format(n=limits.max_id_len)}, "
        f"got {_short(repr(value), 80)}"
    )
    raise _Invalid("bad_id", detail)


def _good_id(value: str, max_len: int) -> bool:
    """``value`` follows the id grammar (and is remembered if so)."""
    if not 1 <= len(value) <= max_len or not ID_PATTERN.fullmatch(value):
        return False
    _remember(_GOOD_IDS, value)
    return True


# Names and ids repeat in every message: remember the ones that passed the pattern, boundedly.
_GOOD_NAMES: set[str] = set()
_GOOD_IDS: set[str] = set()
_REMEMBER_MAX = 65_536


def _remember(cache: set[str], value: str) -> None:
    if len(cache) >= _REMEMBER_MAX:
        cache.clear()
    cache.add(value)


def _labels(obj: dict[str, Any], limits: Limits) -> dict[str, str]:
    labels = obj.get("labels")
    if labels is None:
        return {}
    if not isinstance(labels, dict):
        raise _Invalid("bad_type", f"'labels' must be an object, got {_json_type(labels)}")
    if len(labels) > limits.max_labels:
        detail = f"{len(labels)} labels, the limit is {limits.max_labels}"
        raise _Invalid("too_many_labels", detail)
    for key, value in labels.items():
        if not isinstance(value, str):
            detail = f"label {_short(repr(key), 80)} must be a string, got {_json_type(value)}"
            raise _Invalid("bad_type", detail)
        if len(key) > limits.max_id_len or len(value) > MAX_LABEL_VALUE_LEN:
            raise _Invalid("too_large", f"label {_short(repr(key), 80)} is too long")
    return labels


def _gauges(obj: dict[str, Any], name: str, limits: Limits, required: bool) -> dict[str, float]:
    values = obj.get(name)
    if values is None:
        if required:
            raise _Invalid("missing_field", f"'{name}' is required")
        return {}
    if not isinstance(values, dict):
        raise _Invalid("bad_type", f"'{name}' must be an object, got {_json_type(values)}")
    if len(values) > limits.max_metrics:
        detail = f"'{name}' holds {len(values)} entries, the limit is {limits.max_metrics}"
        raise _Invalid("too_many_metrics", detail)
    if required and not values:
        raise _Invalid("missing_field", f"'{name}' is empty")
    out: dict[str, float] = {}
    for key, value in values.items():
        if key not in _GOOD_NAMES:
            if not METRIC_NAME_PATTERN.fullmatch(key):
                detail = f"{name} name {_short(repr(key), 80)} is not a metric name"
                raise _Invalid("bad_id", detail)
            _remember(_GOOD_NAMES, key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            detail = f"{name}.{key} must be a number, got {_json_type(value)}"
            raise _Invalid("bad_type", detail)
        number = float(value)
        if not math.isfinite(number):
            raise _Invalid("non_finite", f"{name}.{key} is {number}")
        if number < 0:
            raise _Invalid("negative", f"{name}.{key} is {number:.6g}, must be >= 0")
        if number > metric_bound(key):
            detail = f"{name}.{key} is {number:.6g}, above the plausible {metric_bound(key):.6g}"
            raise _Invalid("out_of_range", detail)
        out[key] = number
    return out


def _within_capacity(metrics: dict[str, float], capacity: dict[str, float]) -> None:
    for key, limit in capacity.items():
        value = metrics.get(key)
        if value is not None and limit > 0 and value > CAPACITY_MULTIPLE * limit:
            detail = (f"metrics.{key} is {value:.6g}, more than {CAPACITY_MULTIPLE:g} times "
                      f"its declared capacity {limit:.6g}")
            raise _Invalid("out_of_range", detail)


def event_from_dict(doc: Mapping[str, Any]) -> Event:
    """Rebuild an output event (allocation, anomaly, dead letter) from its JSON form."""
    fields = dict(doc)
    if "raw_b64" in fields:
        return DeadLetter(**fields)
    if "instance_type" in fields:
        return Allocation(**fields)
    if "severity" in fields:
        return Anomaly(**fields)
    if "metrics" in fields:
        return MetricSample(**fields)
    return DeployRequest(**fields)
