"""Adapters between the fpstream core and the outside world (Kafka, Redis, metrics, files)."""
