"""Operational commands: running the flow, the demo, status."""
