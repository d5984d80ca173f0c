"""The root of every exception fpstream raises on purpose.

Catch ``FpstreamError`` to handle anything fpstream refuses or cannot do (a bad setting, a
record file it cannot read, a broker it cannot reach, an allocation an actuator must not
apply); each concern subclasses it, and also the built-in exception it always was (a bad
setting is still a ``ValueError``).

>>> from fpstream.settings import SettingsError
>>> issubclass(SettingsError, FpstreamError) and issubclass(SettingsError, ValueError)
True
"""

from __future__ import annotations

__all__ = ["FpstreamError"]


class FpstreamError(Exception):
    """Something fpstream refused or could not do; the message says what and why."""
