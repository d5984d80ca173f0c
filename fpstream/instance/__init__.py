"""The instance stage: what one app's own samples decide, keyed by app on any worker."""

from fpstream.instance.arms import AppArms, ArmAssigner, InstanceArms
from fpstream.instance.stage import AppState, InstanceConfig, InstanceStage

__all__ = ["AppArms", "AppState", "ArmAssigner", "InstanceArms", "InstanceConfig",
           "InstanceStage"]
