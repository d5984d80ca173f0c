"""fpstream: behavioural fingerprints of a fleet, turned into allocations before instances start."""

from fpstream.events import (
    RESOURCES,
    SCHEMA_VERSION,
    Allocation,
    Anomaly,
    DeadLetter,
    DeployRequest,
    MetricSample,
)
from fpstream.settings import Settings, load_settings

__version__ = "0.1.0"

__all__ = [
    "RESOURCES",
    "SCHEMA_VERSION",
    "Allocation",
    "Anomaly",
    "DeadLetter",
    "DeployRequest",
    "MetricSample",
    "Settings",
    "load_settings",
]
