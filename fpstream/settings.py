"""One frozen settings object: defaults, then a TOML file, then ``FPSTREAM_*``, then flags.

>>> s = load_settings(env={"FPSTREAM_WINDOW_S": "30"}, overrides={"metrics_port": 9200})
>>> s.window_s, s.metrics_port
(30.0, 9200)
>>> "hunter2" in repr(replace_settings(s, redis_url="redis://:hunter2@db:6379/0"))
False
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from fpstream.events import Limits

ENV_PREFIX = "FPSTREAM_"
_SECRET_KEY = re.compile(r"pass|secret|token|key|credential", re.IGNORECASE)
_URL_PASSWORD = re.compile(r"(://[^:/@]*:)([^@]+)(@)")


class SettingsError(ValueError):
    """A setting has a value it cannot take; the message names the setting."""


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
    kafka_options: dict[str, str] = field(default_factory=dict)
    # Redis
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_prefix: str = "fpstream"
    redis_options: dict[str, Any] = field(default_factory=dict)
    allocations_maxlen: int = 100_000
    # Time
    window_s: float = 60.0
    decision_period_s: float = 300.0
    allowed_lateness_s: float = 30.0
    idle_s: float = 30.0
    # Learning and policy
    seed: int = 42
    catalog_path: str | None = None
    change_threshold: float = 0.10
    headroom: float = 0.15
    target_quantile: float = 0.95
    recluster_s: float = 3600.0
    n_clusters: int = 6
    fingerprint_dims: int = 4
    anomaly_threshold: float = 4.0
    max_apps: int = 100_000
    app_ttl_s: float = 86_400.0
    # Operations
    metrics_port: int = 9108
    recovery_dir: str | None = None
    # Limits on one message
    max_message_bytes: int = 1 << 20
    max_metrics: int = 64
    max_labels: int = 32
    max_id_len: int = 128

    def __post_init__(self) -> None:
        _validate(self)

    def __repr__(self) -> str:
        parts = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "redis_url":
                value = mask_url(value)
            elif isinstance(value, dict):
                value = {k: ("***" if _SECRET_KEY.search(k) else v) for k, v in value.items()}
            parts.append(f"{f.name}={value!r}")
        return f"Settings({', '.join(parts)})"

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

    def key(self, *parts: str) -> str:
        """A Redis key under the configured prefix: ``key("desired", app)``."""
        return ":".join((self.redis_prefix, *parts))


def mask_url(url: str) -> str:
    return _URL_PASSWORD.sub(r"\1***\3", url)


def _validate(s: Settings) -> None:
    positive = (
        "partitions", "allocations_maxlen", "window_s", "decision_period_s", "recluster_s",
        "n_clusters", "fingerprint_dims", "anomaly_threshold", "max_apps", "app_ttl_s",
        "max_message_bytes", "max_metrics", "max_labels", "max_id_len",
    )
    for name in positive:
        if getattr(s, name) <= 0:
            raise SettingsError(f"setting {name} must be > 0, got {getattr(s, name)!r}")
    for name in ("allowed_lateness_s", "idle_s"):
        if getattr(s, name) < 0:
            raise SettingsError(f"setting {name} must be >= 0, got {getattr(s, name)!r}")
    if s.decision_period_s < s.window_s:
        msg = (
            f"setting decision_period_s ({s.decision_period_s}) must be at least "
            f"window_s ({s.window_s})"
        )
        raise SettingsError(msg)
    if not 0.0 < s.target_quantile < 1.0:
        raise SettingsError(f"setting target_quantile must be in (0, 1), got {s.target_quantile}")
    if not 0.0 <= s.headroom <= 5.0:
        raise SettingsError(f"setting headroom must be in [0, 5], got {s.headroom}")
    if not 0.0 <= s.change_threshold < 1.0:
        raise SettingsError(f"setting change_threshold must be in [0, 1), got {s.change_threshold}")
    if not 0 <= s.metrics_port <= 65535:
        msg = f"setting metrics_port must be a TCP port (0 disables), got {s.metrics_port}"
        raise SettingsError(msg)
    if not s.brokers.strip():
        raise SettingsError("setting brokers must name at least one host:port")
    if not re.match(r"^(redis|rediss|unix)://", s.redis_url):
        raise SettingsError(
            f"setting redis_url must start with redis://, rediss:// or unix://, "
            f"got {mask_url(s.redis_url)!r}"
        )
    if s.catalog_path is not None and not Path(s.catalog_path).is_file():
        raise SettingsError(f"setting catalog_path: no such file {s.catalog_path!r}")


def _coerce(name: str, raw: Any, target: Any) -> Any:
    """Convert a TOML/env/flag value to the type of the default, naming the setting on error."""
    kind = {f.name: f for f in fields(Settings)}[name].type
    try:
        if kind in ("int",):
            if isinstance(raw, bool):
                raise TypeError
            return int(raw)
        if kind in ("float",):
            if isinstance(raw, bool):
                raise TypeError
            return float(raw)
        if kind.startswith("dict"):
            if isinstance(raw, str):
                return _parse_pairs(raw)
            if not isinstance(raw, Mapping):
                raise TypeError
            return {str(k): v for k, v in raw.items()}
        if kind == "str | None":
            return None if raw in (None, "") else str(raw)
        if not isinstance(raw, str):
            raise TypeError
        return raw
    except (TypeError, ValueError) as ex:
        expected = kind.replace("dict[str, str]", "key=value pairs")
        msg = f"setting {name} expects {expected}, got {raw!r}"
        raise SettingsError(msg) from ex


def _parse_pairs(text: str) -> dict[str, str]:
    """``"a=1,b=2"`` -> ``{"a": "1", "b": "2"}`` for passthrough options in env and flags."""
    out: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key:
            raise ValueError(part)
        out[key.strip()] = value.strip()
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
        for key, raw in doc.get("fpstream", doc).items():
            if key not in names:
                raise SettingsError(f"config file {path}: unknown setting {key!r}")
            values[key] = _coerce(key, raw, None)
    environ = os.environ if env is None else env
    for key, raw in environ.items():
        if key.startswith(ENV_PREFIX) and key[len(ENV_PREFIX):].lower() in names:
            name = key[len(ENV_PREFIX):].lower()
            values[name] = _coerce(name, raw, None)
    for key, raw in (overrides or {}).items():
        if raw is None:
            continue
        if key not in names:
            raise SettingsError(f"unknown setting {key!r}")
        values[key] = _coerce(key, raw, None)
    return Settings(**values)


def replace_settings(settings: Settings, **changes: Any) -> Settings:
    return dataclasses.replace(settings, **changes)
