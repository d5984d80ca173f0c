"""The fleet stage: what needs the whole fleet, fed one digest per instance per period."""

from fpstream.fleet.arms import ArmAssigner, GroupArms, InstanceArms
from fpstream.fleet.budget import PriceController
from fpstream.fleet.experiment import Experiment, ExperimentSnapshot
from fpstream.fleet.stage import ClusterDef, ClusterSnapshot, FleetConfig, FleetStage

__all__ = ["ArmAssigner", "ClusterDef", "ClusterSnapshot", "Experiment", "ExperimentSnapshot",
           "FleetConfig", "FleetStage", "GroupArms", "InstanceArms", "PriceController"]
