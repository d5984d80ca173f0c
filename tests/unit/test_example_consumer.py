"""The example consumer's rule: per instance, apply an allocation only if its sequence is newer."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import orjson
import pytest

from fpstream.events import Allocation, encode

PATH = Path(__file__).resolve().parents[2] / "examples" / "apply_allocations.py"


@pytest.fixture(scope="module")
def example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("apply_allocations", PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def alloc(app: str, instance: str, seq: int, **over: Any) -> dict[str, Any]:
    event = Allocation(f"{app}/{instance}/{seq}", 1_767_571_200.0 + 300 * seq, app, instance,
                       "proactive" if seq == 0 else "resize", "m.large",
                       {"cpu_cores": 1.0 + seq, "mem_bytes": 2.0**30}, {}, 1, 0.9, "lean", 1)
    return {**orjson.loads(encode(event)), **over}


def run(example: ModuleType, state: Any, stream: list[dict[str, Any]]) -> list[str]:
    """The ids ``consume``'s rule would apply, in order, recording them as it goes."""
    applied = []
    for doc in stream:
        if state.decide(doc) is None:
            applied.append(doc["id"])
            state.record(doc)
    return applied


def test_duplicates_and_older_allocations_are_skipped(example: ModuleType) -> None:
    state = example.AppliedState()
    stream = [alloc("web", "vm-1", 0), alloc("web", "vm-1", 1), alloc("web", "vm-1", 1),
              alloc("web", "vm-2", 2), alloc("web", "vm-1", 3), alloc("web", "vm-1", 2),
              alloc("web", "vm-2", 1), alloc("web", "vm-1", 0)]
    assert run(example, state, stream) == ["web/vm-1/0", "web/vm-1/1", "web/vm-2/2",
                                           "web/vm-1/3"]
    assert state.decide(alloc("web", "vm-1", 2)) == "seq 2 is not newer than 3"
    assert {i: d["id"] for i, d in state.applied["web"].items()} == {
        "vm-1": "web/vm-1/3", "vm-2": "web/vm-2/2"}


def test_the_sequence_is_parsed_from_the_right(example: ModuleType) -> None:
    assert example.sequence("team/web/vm-1/12") == 12
    state = example.AppliedState()
    assert run(example, state, [alloc("team/web", "vm-1", 4), alloc("team/web", "vm-1", 3)]
               ) == ["team/web/vm-1/4"]


def test_unknown_versions_and_non_allocations_are_not_applied(example: ModuleType) -> None:
    state = example.AppliedState()
    assert state.decide(alloc("web", "vm-1", 1, v=2)) == "schema version 2 is not 1"
    assert state.decide({"v": 1, "id": "no-sequence"}) == "not an allocation"
    assert state.decide(alloc("web", "vm-1", 1, extra={"new": "field"})) is None


def test_the_state_survives_a_restart(example: ModuleType, tmp_path: Path) -> None:
    path = tmp_path / "applied.json"
    state = example.AppliedState(path)
    run(example, state, [alloc("web", "vm-1", 0), alloc("web", "vm-1", 5)])
    state.save()
    again = example.AppliedState(path)
    assert again.last_seq("web", "vm-1") == 5 and again.last_seq("web", "vm-9") == -1
    assert run(example, again, [alloc("web", "vm-1", 5), alloc("web", "vm-1", 6)]
               ) == ["web/vm-1/6"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["applied.json"]
