"""Actuators: apply allocation events from Redis exactly once, through a pluggable backend."""

from __future__ import annotations

from fpstream.actuate.actuator import (
    DEFAULT_GROUP,
    Actuator,
    TokenBucket,
    decode_entry,
    pause_key,
    set_paused,
)
from fpstream.actuate.backends import (
    ApplyError,
    Backend,
    CommandBackend,
    FileBackend,
    KubernetesBackend,
    LogBackend,
)
from fpstream.actuate.metrics import ActuatorMetrics

__all__ = [
    "DEFAULT_GROUP",
    "Actuator",
    "ActuatorMetrics",
    "ApplyError",
    "Backend",
    "CommandBackend",
    "FileBackend",
    "KubernetesBackend",
    "LogBackend",
    "TokenBucket",
    "decode_entry",
    "pause_key",
    "set_paused",
]
