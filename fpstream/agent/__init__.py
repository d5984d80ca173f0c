"""``fpstream agent``: per-host sampling of apps' resources into metric samples.

The command lives in ``fpstream.agent.command`` and is imported lazily by the CLI, so importing
this package creates no clients, threads or metrics.
"""

from __future__ import annotations

from fpstream.agent.buffer import SendBuffer
from fpstream.agent.collect import Collection, Collector, Reading
from fpstream.agent.config import AgentConfig, ConfigError, default_config, load_config
from fpstream.agent.run import Agent, AgentMetrics, KafkaSink, StdoutSink

__all__ = [
    "Agent",
    "AgentConfig",
    "AgentMetrics",
    "Collection",
    "Collector",
    "ConfigError",
    "KafkaSink",
    "Reading",
    "SendBuffer",
    "StdoutSink",
    "default_config",
    "load_config",
]
