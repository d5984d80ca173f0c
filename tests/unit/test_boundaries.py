"""Dependencies point inward: the core never imports the adapters' libraries."""

from __future__ import annotations

import ast
from pathlib import Path

import fpstream

ROOT = Path(fpstream.__file__).parent
ADAPTER_LIBS = {"bytewax", "confluent_kafka", "redis", "prometheus_client"}
# Packages and modules that are adapters or commands, allowed to use them.
OUTSIDE_CORE = {"io", "ops", "actuate", "agent", "backtest", "cli.py"}


def imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_core_modules_import_no_adapter_library() -> None:
    core = [p for p in ROOT.rglob("*.py") if p.relative_to(ROOT).parts[0] not in OUTSIDE_CORE]
    assert len(core) >= 15
    offenders = {str(p.relative_to(ROOT)): sorted(imported_roots(p) & ADAPTER_LIBS)
                 for p in core if imported_roots(p) & ADAPTER_LIBS}
    assert offenders == {}


def core_modules() -> list[Path]:
    return [p for p in ROOT.rglob("*.py") if p.relative_to(ROOT).parts[0] not in OUTSIDE_CORE]


def test_core_never_reads_the_wall_clock() -> None:
    core = core_modules()
    assert any(p.parent.name == "instance" for p in core)
    for path in core:
        text = path.read_text()
        for call in ("time.time(", "datetime.now(", "time.monotonic("):
            assert call not in text, f"{path.name} calls {call}"


def test_every_exception_of_the_package_has_one_root() -> None:
    import importlib

    from fpstream.errors import FpstreamError

    found = []
    for path in ROOT.rglob("*.py"):
        name = ".".join(("fpstream", *path.relative_to(ROOT).with_suffix("").parts))
        module = importlib.import_module(name.removesuffix(".__init__"))
        for obj in vars(module).values():
            if (isinstance(obj, type) and issubclass(obj, BaseException)
                    and obj.__module__ == module.__name__ and not obj.__name__.startswith("_")):
                found.append(obj)
                assert issubclass(obj, FpstreamError), f"{name}.{obj.__name__}"
    assert len(found) >= 8
