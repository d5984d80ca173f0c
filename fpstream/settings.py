"""One frozen settings object: defaults, then a TOML file, then ``FPSTREAM_*``, then flags.

>>> s = load_settings(env={"FPSTREAM_WINDOW_S": "30"}, overrides={"metrics_port": 9200})
>>> s.window_s, s.metrics_port
(30.0, 9200)
>>> "hunter2" in repr(replace_settings(s, redis_url="redis://:hunter2@db:6379/0"))
False

The passthrough options keep their types: ``redis_options`` as TOML or JSON gave them (redis-py
needs ``socket_timeout = 5`` as a number), ``kafka_options`` as the text librdkafka reads
(``true``, ``5``). In ``FPSTREAM_*_OPTIONS`` they are a JSON object, or ``key=value,...`` pairs
whose values are read as TOML scalars where they are one (``5``, ``2.5``, ``true``,
``"quoted"``), else as text; Kafka values are always taken as written. Options from the
environment or flags add to those of the file, key by key, so a secret can come from the
environment while the rest stays in the file.

>>> load_settings(env={"FPSTREAM_REDIS_OPTIONS": "socket_timeout=5,client_name=fp"}).redis_options
{'socket_timeout': 5, 'client_name': 'fp'}
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from fpstream.errors import FpstreamError
from fpstream.events import Limits
from fpstream.masking import mask_options, mask_url, option_secrets, redact, url_secrets
from fpstream.policy import Policy

__all__ = ["Settings", "SettingsError", "load_settings", "mask_url", "replace_settings"]

ENV_PREFIX = "FPSTREAM_"
#: Settings that are passthrough option tables (dicts), merged key by key across sources.
OPTION_SETTINGS = ("kafka_options", "redis_options")
# A host name or an IPv4/IPv6 address (with an optional %zone) to bind a server to.
_BIND_HOST = re.compile(r"[A-Za-z0-9.:%_-]{1,253}")


class SettingsError(FpstreamError, ValueError):
    """A setting has a value it cannot take; the message names the setting."""


class Arms(tuple[Policy, ...]):
    """The experiment's arms; ``str()`` is the JSON that ``FPSTREAM_ARMS`` accepts, so the
    settings travel to worker processes as environment variables like every other setting."""

    __slots__ = ()

    def __str__(self) -> str:
        return json.dumps([_arm_doc(p) for p in self], separators=(",", ":"))


def _arm_doc(p: Policy) -> dict[str, Any]:
    doc: dict[str, Any] = {"name": p.name, "budget": p.budget, "headroom": p.headroom}
    if p.families is not None:
        doc["families"] = list(p.families)
    return doc


# A conservative, a balanced and a lean arm: half, once and twice the configured violation
# budget. The conservative one (the smallest budget) is the experiment's baseline and where the
# guard rail moves violating instances.
DEFAULT_ARMS: Arms = Arms((
    Policy("conservative", budget=0.5),
    Policy("balanced", budget=1.0),
    Policy("lean", budget=2.0),
))
EXPERIMENT_MODES = ("split", "bandit", "off")
_ARM_KEYS = ("name", "budget", "headroom", "families")
_EXPERIMENT_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


@dataclass(frozen=True, slots=True)
class Settings:
    # Kafka
    brokers: str = "127.0.0.1:9092"
    topic_metrics: str = "fpstream.metrics"
    topic_deploys: str = "fpstream.deploys"
    topic_allocations: str = "fpstream.allocations"
    topic_anomalies: str = "fpstream.anomalies"
    topic_deadletter: str = "fpstream.deadletter"
    partitions: int = 2
    kafka_options: dict[str, str] = field(default_factory=dict)  # librdkafka's, as text
    # Redis
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_prefix: str = "fpstream"
    redis_options: dict[str, Any] = field(default_factory=dict)  # redis-py's, typed
    allocations_maxlen: int = 100_000
    # Outputs the flow holds (and snapshots) while Redis is unreachable; beyond, it waits.
    redis_backlog_max: int = 10_000
    # Time
    window_s: float = 60.0
    decision_period_s: float = 300.0
    allowed_lateness_s: float = 30.0
    # A sample or deploy stamped more than this after its message's timestamp is refused.
    max_future_s: float = 300.0
    idle_s: float = 30.0
    # Learning and policy
    seed: int = 42
    catalog_path: str | None = None
    change_threshold: float = 0.10
    # Added on top of every need (with experiment_mode off; arms carry their own).
    headroom: float = 0.0
    recluster_s: float = 3600.0
    n_clusters: int = 6
    fingerprint_dims: int = 4
    anomaly_threshold: float = 4.0
    # The share of windows whose usage may exceed the reservation (per app: the labels
    # fpstream.violation_budget_cpu and fpstream.violation_budget_mem).
    violation_budget_cpu: float = 0.01
    violation_budget_mem: float = 0.001
    # A young instance's own data before its cluster, not only its deploy's group, sizes it.
    young_cluster_after_s: float = 900.0
    max_apps: int = 100_000
    app_ttl_s: float = 86_400.0
    # Experiment: A/B testing of allocation policies (fpstream/instance/arms.py and
    # fpstream/fleet/experiment.py)
    experiment_name: str = "default"
    experiment_mode: str = "off"
    arms: Arms = DEFAULT_ARMS
    violation_penalty: float = 2.0
    guard_budget: float = 0.2
    guard_periods: int = 6
    # Operations
    metrics_port: int = 9108
    # Where the flow's, actuators' and agents' metrics servers listen: loopback unless the
    # metrics must be scraped from elsewhere (0.0.0.0 in a pod or a container).
    metrics_host: str = "127.0.0.1"
    recovery_dir: str | None = None
    # Limits on one message
    max_message_bytes: int = 1 << 20
    max_metrics: int = 64
    max_labels: int = 32
    max_id_len: int = 128

    def __post_init__(self) -> None:
        if not isinstance(self.arms, Arms):
            object.__setattr__(self, "arms", _parse_arms(self.arms))
        object.__setattr__(self, "kafka_options",
                           _librdkafka_options(_table("kafka_options", self.kafka_options)))
        object.__setattr__(self, "redis_options", _table("redis_options", self.redis_options))
        _validate(self)

    def __repr__(self) -> str:
        parts = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("redis_url", "brokers"):
                value = mask_url(value)
            elif isinstance(value, dict):
                value = mask_options(value)
            parts.append(f"{f.name}={value!r}")
        return f"Settings({', '.join(parts)})"

    def secrets(self) -> list[str]:
        """Every secret these settings hold: URL passwords, options named like secrets."""
        return [*url_secrets(self.redis_url), *url_secrets(self.brokers),
                *option_secrets(self.kafka_options), *option_secrets(self.redis_options)]

    def redact(self, text: str) -> str:
        """``text`` (an error message, say) with URLs masked and these settings' secrets
        replaced by ``***``."""
        return redact(text, self.secrets())

    @property
    def limits(self) -> Limits:
        return Limits(
            max_message_bytes=self.max_message_bytes,
            max_metrics=self.max_metrics,
            max_labels=self.max_labels,
            max_id_len=self.max_id_len,
        )

    def kafka_config(self, **extra: Any) -> dict[str, Any]:
        """librdkafka configuration: bootstrap servers, passthrough options, then ``extra``."""
        return {"bootstrap.servers": self.brokers, **self.kafka_options, **extra}

    def policies(self) -> tuple[Policy, ...]:
        """The experiment's arms, in the configured order."""
        return tuple(self.arms)

    def key(self, *parts: str) -> str:
        """A Redis key under the configured prefix: ``key("desired", app)``."""
        return ":".join((self.redis_prefix, *parts))


def _validate(s: Settings) -> None:
    positive = (
        "partitions", "allocations_maxlen", "redis_backlog_max", "window_s", "decision_period_s",
        "recluster_s", "n_clusters", "fingerprint_dims", "anomaly_threshold", "max_apps",
        "app_ttl_s", "max_message_bytes", "max_metrics", "max_labels", "max_id_len",
        "guard_periods",
    )
    for name in positive:
        if getattr(s, name) <= 0:
            raise SettingsError(f"setting {name} must be > 0, got {getattr(s, name)!r}")
    for name in ("allowed_lateness_s", "idle_s", "max_future_s", "young_cluster_after_s"):
        if getattr(s, name) < 0:
            raise SettingsError(f"setting {name} must be >= 0, got {getattr(s, name)!r}")
    if s.decision_period_s < s.window_s:
        msg = (
            f"setting decision_period_s ({s.decision_period_s}) must be at least "
            f"window_s ({s.window_s})"
        )
        raise SettingsError(msg)
    if not 0.0 <= s.headroom <= 5.0:
        raise SettingsError(f"setting headroom must be in [0, 5], got {s.headroom}")
    for name in ("violation_budget_cpu", "violation_budget_mem"):
        value = getattr(s, name)
        if not 0.0 < value < 1.0:
            raise SettingsError(f"setting {name} must be a share of windows in (0, 1), "
                                f"got {value}")
    if not 0.0 <= s.change_threshold < 1.0:
        raise SettingsError(f"setting change_threshold must be in [0, 1), got {s.change_threshold}")
    if not 0 <= s.metrics_port <= 65535:
        msg = f"setting metrics_port must be a TCP port (0 disables), got {s.metrics_port}"
        raise SettingsError(msg)
    if not _BIND_HOST.fullmatch(s.metrics_host):
        raise SettingsError(f"setting metrics_host must be an address or host name to listen "
                            f"on (127.0.0.1, 0.0.0.0, ::), got {s.metrics_host!r}")
    if not s.brokers.strip():
        raise SettingsError("setting brokers must name at least one host:port")
    if not re.match(r"^(redis|rediss|unix)://", s.redis_url):
        raise SettingsError(
            f"setting redis_url must start with redis://, rediss:// or unix://, "
            f"got {mask_url(s.redis_url)!r}"
        )
    if s.catalog_path is not None and not Path(s.catalog_path).is_file():
        raise SettingsError(f"setting catalog_path: no such file {s.catalog_path!r}")
    if not _EXPERIMENT_NAME.match(s.experiment_name):
        raise SettingsError(f"setting experiment_name must match {_EXPERIMENT_NAME.pattern} "
                            f"(it names a Redis key), got {s.experiment_name!r}")
    if s.experiment_mode not in EXPERIMENT_MODES:
        raise SettingsError(f"setting experiment_mode must be one of {list(EXPERIMENT_MODES)}, "
                            f"got {s.experiment_mode!r}")
    if not (math.isfinite(s.violation_penalty) and s.violation_penalty >= 0):
        raise SettingsError(f"setting violation_penalty must be a finite number >= 0, "
                            f"got {s.violation_penalty}")
    if not 0.0 <= s.guard_budget <= 1.0:
        raise SettingsError(f"setting guard_budget must be a violation rate in [0, 1], "
                            f"got {s.guard_budget}")


def _parse_arms(raw: Any) -> Arms:
    """Arms from a TOML array of tables, a list of Policy objects or mappings, or a string.

    A string is either JSON (``[{"name": "lean", "budget": 2.0, "headroom": 0.0}]``, what
    ``str(settings.arms)`` gives) or the compact ``name:budget:headroom[:family+family],...``.
    Every arm needs ``name``, ``budget`` (a multiple of the configured violation budget, in
    (0, 100]) and ``headroom`` (in [0, 5]);
    ``families`` (instance families preferred) is optional. Names must be unique.
    """
    if isinstance(raw, str):
        text = raw.strip()
        if text.startswith(("[", "{")):
            try:
                raw = json.loads(text)
            except ValueError as ex:
                raise SettingsError(f"setting arms: invalid JSON: {ex}") from ex
        else:
            raw = [_compact_arm(i, part.strip()) for i, part in enumerate(text.split(","))
                   if part.strip()]
    if isinstance(raw, Mapping) or not isinstance(raw, list | tuple):
        raise SettingsError(f"setting arms expects a list of arms (a TOML [[arms]] array of "
                            f"tables), got {raw!r}")
    arms = [_arm(i, item) for i, item in enumerate(raw)]
    if not arms:
        raise SettingsError("setting arms must define at least one arm")
    names = [a.name for a in arms]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise SettingsError(f"setting arms: arm names must be unique, repeated: {dupes}")
    return Arms(arms)


def _compact_arm(index: int, part: str) -> dict[str, Any]:
    fields_ = part.split(":")
    if len(fields_) not in (3, 4):
        raise SettingsError(f"setting arms[{index}]: expected name:budget:headroom"
                            f"[:family+family], got {part!r}")
    doc: dict[str, Any] = {"name": fields_[0], "budget": fields_[1], "headroom": fields_[2]}
    if len(fields_) == 4:
        doc["families"] = [f for f in fields_[3].split("+") if f]
    for key in ("budget", "headroom"):
        try:
            doc[key] = float(doc[key])
        except ValueError as ex:
            raise SettingsError(f"setting arms[{index}]: {key} must be a number, "
                                f"got {doc[key]!r}") from ex
    return doc


def _arm(index: int, item: Any) -> Policy:
    where = f"setting arms[{index}]"
    if isinstance(item, Policy):
        policy = item
    else:
        if not isinstance(item, Mapping):
            raise SettingsError(f"{where}: expected a table with name, budget, headroom "
                                f"(and optionally families), got {item!r}")
        unknown = sorted(set(item) - set(_ARM_KEYS))
        if unknown:
            raise SettingsError(f"{where}: unknown key(s) {unknown}, expected {list(_ARM_KEYS)}")
        missing = [k for k in _ARM_KEYS[:3] if k not in item]
        if missing:
            raise SettingsError(f"{where}: missing {', '.join(missing)}")
        where = f"setting arms[{index}] ({item['name']!r})"
        for key in ("budget", "headroom"):
            value = item[key]
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise SettingsError(f"{where}: {key} must be a number, got {value!r}")
        families = item.get("families")
        if families is not None:
            if isinstance(families, str) or not isinstance(families, list | tuple) or not all(
                    isinstance(f, str) and f for f in families):
                raise SettingsError(f"{where}: families must be a list of instance family "
                                    f"names, got {families!r}")
            families = tuple(families)
        try:
            policy = Policy(name=item["name"], budget=float(item["budget"]),
                            headroom=float(item["headroom"]), families=families)
        except ValueError as ex:
            raise SettingsError(f"{where}: {ex}") from ex
    if not 0.0 <= policy.headroom <= 5.0:
        raise SettingsError(f"{where}: headroom must be in [0, 5], got {policy.headroom}")
    return policy


def _coerce(name: str, raw: Any, target: Any) -> Any:
    """Convert a TOML/env/flag value to the type of the default, naming the setting on error.

    Messages never repeat an option table or a URL as given: either may hold a secret.
    """
    kind = {f.name: f for f in fields(Settings)}[name].type
    if kind == "Arms":
        return _parse_arms(raw)
    if name in OPTION_SETTINGS:
        return _options(name, raw)
    try:
        if kind in ("int",):
            if isinstance(raw, bool):
                raise TypeError
            return int(raw)
        if kind in ("float",):
            if isinstance(raw, bool):
                raise TypeError
            return float(raw)
        if kind == "str | None":
            return None if raw in (None, "") else str(raw)
        if not isinstance(raw, str):
            raise TypeError
        return raw
    except (TypeError, ValueError) as ex:
        shown = mask_url(str(raw)) if name in ("redis_url", "brokers") else repr(raw)
        msg = f"setting {name} expects {kind}, got {shown}"
        raise SettingsError(msg) from ex


def _options(name: str, raw: Any) -> dict[str, Any]:
    """A passthrough option table from TOML, a JSON object or ``key=value,...`` text."""
    if isinstance(raw, str):
        text = raw.strip()
        if text.startswith("{"):
            try:
                raw = json.loads(text)
            except ValueError as ex:
                msg = getattr(ex, "msg", "not JSON")  # never the text: it may hold a secret
                raise SettingsError(f"setting {name}: not a JSON object ({msg})") from ex
            if not isinstance(raw, dict):
                raise SettingsError(f"setting {name} expects a JSON object")
        else:
            pairs = _pairs(name, text)
            return pairs if name == "kafka_options" else {k: _scalar(v) for k, v in pairs.items()}
    table = _table(name, raw)
    return _librdkafka_options(table) if name == "kafka_options" else table


def _pairs(name: str, text: str) -> dict[str, str]:
    """``"a=1,b=2"`` -> ``{"a": "1", "b": "2"}``: options written by hand in env and flags."""
    out: dict[str, str] = {}
    for i, part in enumerate(p.strip() for p in text.split(",")):
        if not part:
            continue
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise SettingsError(f"setting {name} expects key=value pairs separated by commas, "
                                f"or a JSON object; item {i + 1} is no key=value")
        out[key.strip()] = value.strip()
    return out


def _scalar(text: str) -> Any:
    """``text`` as the TOML scalar it spells (``5``, ``2.5``, ``true``, ``"5"``), else as is."""
    try:
        doc = tomllib.loads(f"v = {text}")
    except tomllib.TOMLDecodeError:
        return text
    value = doc.get("v")
    return value if len(doc) == 1 and isinstance(value, str | int | float | bool) else text


def _table(name: str, raw: Any) -> dict[str, Any]:
    if not isinstance(raw, Mapping):
        raise SettingsError(f"setting {name} expects a table of options "
                            f"([fpstream.{name}] in TOML), got {type(raw).__name__}")
    return {str(k): v for k, v in raw.items()}


def _librdkafka_options(options: Mapping[str, Any]) -> dict[str, str]:
    """librdkafka takes every property as text: ``true``/``false`` for booleans."""
    out: dict[str, str] = {}
    for key, value in options.items():
        if isinstance(value, bool):
            out[key] = "true" if value else "false"
        elif isinstance(value, str | int | float):
            out[key] = str(value)
        else:
            raise SettingsError(f"setting kafka_options: {key} must be text, a number or a "
                                f"boolean (librdkafka reads text), got {type(value).__name__}")
    return out


def load_settings(
    config: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build settings from defaults, a TOML file, the environment and explicit overrides."""
    names = {f.name for f in fields(Settings)}
    values: dict[str, Any] = {}
    if config is not None:
        path = Path(config)
        try:
            doc = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as ex:
            raise SettingsError(f"config file {path}: {ex}") from ex
        section = doc.get("fpstream", doc)
        if section is not doc and "arms" in doc:
            # ``[[arms]]`` written after a ``[fpstream]`` table lands at the top level.
            if "arms" in section:
                raise SettingsError(f"config file {path}: arms defined twice "
                                    f"([[arms]] and [[fpstream.arms]])")
            section = {**section, "arms": doc["arms"]}
        for key, raw in section.items():
            if key not in names:
                raise SettingsError(f"config file {path}: unknown setting {key!r}")
            try:
                _put(values, key, _coerce(key, raw, None))
            except SettingsError as ex:
                raise SettingsError(f"config file {path}: {ex}") from ex
    environ = os.environ if env is None else env
    for key, raw in environ.items():
        if key.startswith(ENV_PREFIX) and key[len(ENV_PREFIX):].lower() in names:
            name = key[len(ENV_PREFIX):].lower()
            _put(values, name, _coerce(name, raw, None))
    for key, raw in (overrides or {}).items():
        if raw is None:
            continue
        if key not in names:
            raise SettingsError(f"unknown setting {key!r}")
        _put(values, key, _coerce(key, raw, None))
    return Settings(**values)


def _put(values: dict[str, Any], name: str, value: Any) -> None:
    """A later source replaces a setting; option tables are merged key by key."""
    if name in OPTION_SETTINGS and name in values:
        value = {**values[name], **value}
    values[name] = value


def replace_settings(settings: Settings, **changes: Any) -> Settings:
    return dataclasses.replace(settings, **changes)
