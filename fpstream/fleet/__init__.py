"""The fleet stage: what needs the whole fleet, fed one digest per instance per period."""

from fpstream.fleet.experiment import Experiment, ExperimentSnapshot
from fpstream.fleet.stage import ClusterDef, ClusterSnapshot, FleetConfig, FleetStage

__all__ = ["ClusterDef", "ClusterSnapshot", "Experiment", "ExperimentSnapshot", "FleetConfig",
           "FleetStage"]
