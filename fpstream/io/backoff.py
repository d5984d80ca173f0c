"""Delays between retries of a failed write: exponential, capped, without jitter.

Jitter spreads the retries of many clients that failed together; a flow has one writer per
output partition, a handful, so plain delays are enough and keep retries predictable.

>>> backoff = Backoff(initial_s=0.1, cap_s=1.0)
>>> [backoff.next() for _ in range(6)]
[0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
>>> backoff.failures
6
>>> backoff.reset()
>>> backoff.next(), backoff.failures
(0.1, 1)
"""

from __future__ import annotations


class Backoff:
    """The wait before each retry; ``next()`` after a failure, ``reset()`` after a success."""

    __slots__ = ("_delay", "cap_s", "factor", "failures", "initial_s")

    def __init__(self, initial_s: float = 0.05, cap_s: float = 5.0, factor: float = 2.0) -> None:
        if not 0 < initial_s <= cap_s:
            raise ValueError(f"need 0 < initial_s <= cap_s, got {initial_s} and {cap_s}")
        if factor < 1:
            raise ValueError(f"factor must be >= 1, got {factor}")
        self.initial_s = initial_s
        self.cap_s = cap_s
        self.factor = factor
        self.failures = 0
        self._delay = initial_s

    def next(self) -> float:
        """Count one more failure and return how long to wait before trying again."""
        delay = self._delay
        # Grown step by step rather than as factor ** failures, which overflows a float
        # after a thousand failures (an outage of an hour or so at a 5 s cap).
        self._delay = min(self.cap_s, delay * self.factor)
        self.failures += 1
        return delay

    def reset(self) -> None:
        self.failures = 0
        self._delay = self.initial_s
