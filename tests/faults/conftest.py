"""Fixtures of the fault tests.

A test that stops or restarts a server runs its own (``own_services``): the session's shared
``services`` must stay up for the other tests.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from fpstream.io.embedded import EmbeddedServices


@pytest.fixture
def own_services(tmp_path: Path) -> Iterator[EmbeddedServices]:
    """A broker and a durable Redis (append-only file) of this test's own."""
    with EmbeddedServices(workdir=tmp_path / "services", durable_redis=True) as svc:
        yield svc
