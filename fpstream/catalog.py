"""Instance catalog: the types an allocation can snap to, and the cheapest one that fits a need.

A catalog is a JSON or YAML file (by extension) holding ``instance_types``: a list of objects
with ``name``, ``family``, ``vcpu``, ``mem_bytes``, ``disk_bytes``, ``disk_bps`` (read+write,
bytes/s), ``net_bps`` (rx+tx, bytes/s) and ``price_per_hour``; extra fields are ignored. The
default, ``fpstream/data/catalog.json``, has general (``m.*``, 4 GiB/vCPU), compute (``c.*``,
2 GiB/vCPU) and memory (``r.*``, 8 GiB/vCPU) families from 1 to 64 vCPU with cloud-like prices.

Needs are keyed like an allocation's ``reserve``: ``cpu_cores`` (against ``vcpu``),
``mem_bytes``, ``disk_bytes``, ``disk_bps`` and ``net_bps``.

>>> cat = Catalog.load()
>>> cat.cheapest_fitting({"cpu_cores": 1.5, "mem_bytes": 6e9}).name
'm.large'
>>> cat.fit({"cpu_cores": 500.0}, families=["c"]).fits
False
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple

__all__ = ["CAPACITY_FIELDS", "Catalog", "Fit", "InstanceType"]

#: Need key -> InstanceType attribute it is checked against.
CAPACITY_FIELDS: dict[str, str] = {
    "cpu_cores": "vcpu",
    "mem_bytes": "mem_bytes",
    "disk_bytes": "disk_bytes",
    "disk_bps": "disk_bps",
    "net_bps": "net_bps",
}
_POSITIVE = ("vcpu", "mem_bytes", "price_per_hour")
_NON_NEGATIVE = ("disk_bytes", "disk_bps", "net_bps")


@dataclass(frozen=True, slots=True)
class InstanceType:
    name: str
    family: str
    vcpu: float
    mem_bytes: float
    disk_bytes: float
    disk_bps: float
    net_bps: float
    price_per_hour: float

    def capacity(self, need_key: str) -> float:
        return float(getattr(self, CAPACITY_FIELDS[need_key]))

    def fits(self, need: Mapping[str, float]) -> bool:
        return all(value <= self.capacity(key) for key, value in need.items())

    def coverage(self, need: Mapping[str, float]) -> float:
        """Smallest capacity/need ratio over the needs: >= 1 means it fits."""
        ratios = [self.capacity(k) / v for k, v in need.items() if v > 0]
        return min(ratios, default=math.inf)


class Fit(NamedTuple):
    instance_type: InstanceType
    fits: bool  # False: nothing fits, this is the type that comes closest


def _entry(index: int, raw: Any) -> InstanceType:
    where = f"catalog entry {index}"
    if not isinstance(raw, Mapping):
        raise ValueError(f"{where}: expected an object, got {type(raw).__name__}")
    if isinstance(raw.get("name"), str):
        where += f" ({raw['name']!r})"
    values: dict[str, Any] = {}
    for field in ("name", "family"):
        text = raw.get(field)
        if not isinstance(text, str) or not text:
            raise ValueError(f"{where}: field {field!r} must be a non-empty string, got {text!r}")
        values[field] = text
    for field in _POSITIVE + _NON_NEGATIVE:
        value = raw.get(field)
        positive = field in _POSITIVE
        if not isinstance(value, int | float) or isinstance(value, bool):
            value = math.nan  # reported below with the original in the message
        if not (math.isfinite(value) and (value > 0 or value == 0 and not positive)):
            kind = "a positive" if positive else "a non-negative"
            got = raw.get(field)
            raise ValueError(f"{where}: field {field!r} must be {kind} number, got {got!r}")
        values[field] = float(value)
    return InstanceType(**values)


class Catalog:
    """Instance types sorted by price; lookups by name, fits by family."""

    def __init__(self, types: Sequence[InstanceType]) -> None:
        if not types:
            raise ValueError("a catalog needs at least one instance type")
        names = [t.name for t in types]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"catalog instance type names must be unique, repeated: {duplicates}")
        self.types = tuple(sorted(types, key=lambda t: (t.price_per_hour, t.name)))
        self._by_name = {t.name: t for t in self.types}

    @classmethod
    def from_dict(cls, doc: Any) -> Catalog:
        """From ``{"instance_types": [...]}`` or a bare list of entries."""
        entries = doc.get("instance_types") if isinstance(doc, Mapping) else doc
        if not isinstance(entries, list):
            raise ValueError("a catalog must be a list of instance types or hold 'instance_types'")
        return cls([_entry(i, raw) for i, raw in enumerate(entries)])

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None) -> Catalog:
        """From a ``.json``, ``.yaml`` or ``.yml`` file; the packaged default if ``path=None``."""
        if path is None:
            text = resources.files("fpstream").joinpath("data/catalog.json").read_text("utf-8")
            return cls.from_dict(json.loads(text))
        path = Path(path)
        suffix = path.suffix.lower()
        text = path.read_text("utf-8")
        try:
            if suffix == ".json":
                return cls.from_dict(json.loads(text))
            if suffix in (".yaml", ".yml"):
                import yaml  # only catalog files need it

                return cls.from_dict(yaml.safe_load(text))
        except ValueError as ex:  # json.JSONDecodeError and validation errors
            raise ValueError(f"{path}: {ex}") from ex
        raise ValueError(f"{path}: catalog must be .json, .yaml or .yml, got {suffix or 'none'}")

    def __getitem__(self, name: str) -> InstanceType:
        return self._by_name[name]

    def __iter__(self) -> Iterator[InstanceType]:
        return iter(self.types)

    def __len__(self) -> int:
        return len(self.types)

    @property
    def families(self) -> tuple[str, ...]:
        return tuple(sorted({t.family for t in self.types}))

    def _candidates(self, families: Sequence[str] | None) -> list[InstanceType]:
        if families is None:
            return list(self.types)
        # A family is named in full ("general") or by its name prefix ("m" for "m.large").
        chosen = [
            t for t in self.types if any(f in (t.family, t.name.split(".")[0]) for f in families)
        ]
        if not chosen:
            raise ValueError(f"no instance type in families {list(families)}, "
                             f"known: {self.families}")
        return chosen

    def fit(self, need: Mapping[str, float], families: Sequence[str] | None = None) -> Fit:
        """Cheapest type where every need fits; if none does, the one covering the most."""
        unknown = sorted(set(need) - set(CAPACITY_FIELDS))
        if unknown:
            raise ValueError(f"unknown need keys {unknown}, expected {list(CAPACITY_FIELDS)}")
        candidates = self._candidates(families)
        for t in candidates:  # sorted by price
            if t.fits(need):
                return Fit(t, True)
        best = max(candidates, key=lambda t: (t.coverage(need), -t.price_per_hour))
        return Fit(best, False)

    def cheapest_fitting(
        self, need: Mapping[str, float], families: Sequence[str] | None = None
    ) -> InstanceType:
        return self.fit(need, families).instance_type
