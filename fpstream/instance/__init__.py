"""The instance stage: what one app's own samples say, keyed by app on any worker."""

from fpstream.instance.stage import AppState, InstanceConfig, InstanceStage

__all__ = ["AppState", "InstanceConfig", "InstanceStage"]
