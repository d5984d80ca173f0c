"""Allocation policy: predicted need plus headroom, snapped to the cheapest fitting instance type.

A policy is one A/B arm: the share of the configured violation budget it runs at (``budget``,
1.0 the configured one, 0.5 half of it) and the headroom it adds on top of the need.
``decide`` maps the six predicted resource needs onto an allocation's reserve (disk read+write
into ``disk_bps``, net rx+tx into ``net_bps``), multiplies by ``1 + headroom`` and applies floors
(``MIN_RESERVE``: 0.01 core, 64 MiB, below which a reservation cannot run a process), so a
reserve is never below the predicted need. The instance type is the catalog's cheapest one that
fits the whole reserve; if none does, the closest, with ``fits=False``.

>>> from fpstream.catalog import Catalog
>>> d = Policy(headroom=0.15).decide({"cpu_cores": 1.2, "mem_bytes": 3e9}, Catalog.load())
>>> round(d.reserve["cpu_cores"], 2), d.instance_type.name, d.fits
(1.38, 'c.large', True)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from fpstream.catalog import CAPACITY_FIELDS, Catalog, InstanceType

__all__ = ["MIN_RESERVE", "RESERVE_FIELDS", "Decision", "Policy", "changed_materially", "to_need"]

RESERVE_FIELDS: tuple[str, ...] = tuple(CAPACITY_FIELDS)
MIN_RESERVE: dict[str, float] = {"cpu_cores": 0.01, "mem_bytes": 64 * 2**20}
# What a resource is summed into; the aggregate names are accepted as they are.
_INTO: dict[str, str] = {
    "cpu_cores": "cpu_cores",
    "mem_bytes": "mem_bytes",
    "disk_bytes": "disk_bytes",
    "disk_read_bps": "disk_bps",
    "disk_write_bps": "disk_bps",
    "disk_bps": "disk_bps",
    "net_rx_bps": "net_bps",
    "net_tx_bps": "net_bps",
    "net_bps": "net_bps",
}
# Changes of a reserve below these are noise, whatever their relative size.
_CHANGE_SCALE: dict[str, float] = {
    "cpu_cores": 0.01,
    "mem_bytes": 64 * 2**20,
    "disk_bytes": 64 * 2**20,
    "disk_bps": 64 * 1024,
    "net_bps": 64 * 1024,
}


def to_need(predicted: Mapping[str, float]) -> dict[str, float]:
    """Predicted resource needs (``RESOURCES`` names) keyed like a reserve; missing ones are 0."""
    need = dict.fromkeys(RESERVE_FIELDS, 0.0)
    for key, value in predicted.items():
        if key not in _INTO:
            raise ValueError(f"unknown predicted resource {key!r}, expected one of {list(_INTO)}")
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"predicted {key} must be a finite number >= 0, got {value!r}")
        need[_INTO[key]] += float(value)
    return need


@dataclass(frozen=True, slots=True)
class Decision:
    policy: str
    need: dict[str, float]  # the prediction, keyed like the reserve
    reserve: dict[str, float]
    instance_type: InstanceType
    fits: bool


@dataclass(frozen=True)
class Policy:
    """One arm: run at ``budget`` times the configured violation budget, reserve the need with
    ``headroom`` on top, on instance types of ``families`` (any when ``None``)."""

    name: str = "default"
    budget: float = 1.0
    headroom: float = 0.0
    families: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"policy name must be a non-empty string, got {self.name!r}")
        if not (math.isfinite(self.budget) and 0.0 < self.budget <= 100.0):
            raise ValueError(f"policy budget must be a multiple of the configured violation "
                             f"budget in (0, 100], got {self.budget!r}")
        if not (math.isfinite(self.headroom) and self.headroom >= 0):
            raise ValueError(f"policy headroom must be a finite number >= 0, got {self.headroom!r}")
        if self.families is not None:
            if isinstance(self.families, str) or not all(isinstance(f, str) for f in self.families):
                msg = f"policy families must be a tuple of family names, got {self.families!r}"
                raise ValueError(msg)
            object.__setattr__(self, "families", tuple(self.families))

    def reserve(self, predicted: Mapping[str, float]) -> tuple[dict[str, float], dict[str, float]]:
        """(need, reserve): reserve = max(need * (1 + headroom), floor), per field."""
        need = to_need(predicted)
        reserve = {
            k: max(v * (1.0 + self.headroom), v, MIN_RESERVE.get(k, 0.0)) for k, v in need.items()
        }
        return need, reserve

    def decide(self, predicted: Mapping[str, float], catalog: Catalog) -> Decision:
        need, reserve = self.reserve(predicted)
        fit = catalog.fit(reserve, self.families)
        return Decision(self.name, need, reserve, fit.instance_type, fit.fits)


_SHRINKABLE = frozenset({"cpu_cores", "mem_bytes"})


def changed_materially(
    old_reserve: Mapping[str, float] | None,
    new_reserve: Mapping[str, float],
    old_type: str | InstanceType | None,
    new_type: str | InstanceType,
    threshold: float = 0.10,
) -> bool:
    """True if the instance type differs or a reserve moved by more than ``threshold``.

    Any reserve growing counts (the instance risks a shortfall); only CPU and memory count when
    shrinking, since a smaller disk or network reservation alone frees nothing worth a resize.
    Changes are relative to the old value, or to a small noise scale when the old value is
    tiny, so a reserve going from 0 to a few bytes per second is not an infinite change.
    """
    if not threshold >= 0:
        raise ValueError(f"threshold must be >= 0, got {threshold!r}")
    if old_reserve is None or old_type is None:
        return True
    if getattr(old_type, "name", old_type) != getattr(new_type, "name", new_type):
        return True
    for key in set(old_reserve) | set(new_reserve):
        old, new = old_reserve.get(key, 0.0), new_reserve.get(key, 0.0)
        change = new - old if key not in _SHRINKABLE else abs(new - old)
        if change > threshold * max(abs(old), _CHANGE_SCALE.get(key, 0.0)):
            return True
    return False
