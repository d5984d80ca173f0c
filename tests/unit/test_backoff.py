"""Retry delays of the outputs: exponential, capped, reset by a success."""

from __future__ import annotations

import doctest

import pytest

from fpstream.io import backoff
from fpstream.io.backoff import Backoff


def test_doctests() -> None:
    assert doctest.testmod(backoff).failed == 0


def test_delays_double_up_to_the_cap_and_never_overflow() -> None:
    b = Backoff(initial_s=0.05, cap_s=5.0)
    delays = [b.next() for _ in range(5000)]  # days of outage at the cap
    assert delays[:3] == [0.05, 0.1, 0.2]
    assert max(delays) == delays[-1] == 5.0
    assert all(a <= c for a, c in zip(delays, delays[1:], strict=False))
    assert b.failures == 5000


@pytest.mark.parametrize("kwargs", [{"initial_s": 0.0}, {"initial_s": 2.0, "cap_s": 1.0},
                                    {"factor": 0.5}])
def test_bad_settings_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="initial_s|factor"):
        Backoff(**kwargs)
