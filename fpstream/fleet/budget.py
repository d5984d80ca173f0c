"""Violation budgets: the price of a violated window, controlled so that a budget holds.

An operator sets a budget: the share of an instance's windows whose usage may exceed its
reservation (``violation_budget_cpu``, ``violation_budget_mem``; an app's own with the labels
``fpstream.violation_budget_cpu`` and ``fpstream.violation_budget_mem``). Each instance knows,
from its own history, which of its reservation rules win at which price of a violated window
(``fpstream.selector.Frontier``); a higher price buys fewer violations with more slack. The
instances that share a budget share one price, so the budget is spent where violations are
cheapest to avoid, and the price is controlled online from what they realise: after every
decision period, with ``r`` the share of their windows that exceeded the reservations in
force, ``log price += eta * (r - budget) / budget``, so the realised rate tracks the budget
whatever the fleet (adaptive in the manner of online conformal control: no fitting on past
traces). ``eta`` starts large and settles (``max(eta, eta0 / sqrt(n))`` after ``n`` updates),
so a new fleet finds its price within hours and then holds it steadily.

A budget that no rule can meet (violations the history never showed) drives the price to its
bound, where every instance reserves as cautiously as its rules allow.

>>> c = PriceController("cpu_cores", budget=0.01)
>>> for _ in range(50):
...     c.learn(violations=5, windows=100)  # 5 % against a budget of 1 %: dearer
>>> c.price > 1.0
True
"""

from __future__ import annotations

import math
from collections.abc import Mapping

__all__ = ["BUDGET_LABELS", "PriceController", "budget_of"]

#: Labels by which an app sets its own budget, per selected resource.
BUDGET_LABELS: dict[str, str] = {"cpu_cores": "fpstream.violation_budget_cpu",
                                 "mem_bytes": "fpstream.violation_budget_mem"}

#: Where a price starts, and how far it may go, per resource (cores, bytes per violated window).
_INITIAL: dict[str, float] = {"cpu_cores": 1.0, "mem_bytes": float(2**30)}
_BOUNDS: dict[str, tuple[float, float]] = {"cpu_cores": (1e-6, 1e6),
                                           "mem_bytes": (1.0, float(2**60))}


def budget_of(resource: str, labels: Mapping[str, str], default: float) -> float:
    """An app's budget for ``resource``: its label if it holds a share in (0, 1), else the
    configured ``default``."""
    raw = labels.get(BUDGET_LABELS[resource])
    if raw is not None:
        try:
            value = float(raw)
        except ValueError:
            return default
        if 0.0 < value < 1.0:
            return value
    return default


class PriceController:
    """The price of a violated window for the instances sharing one budget (module
    docstring), from ``initial`` (default: the resource's usual start). With ``clip``, one
    period's error counts at most ``clip`` times the budget:
    for instances whose misses come in bursts all at once (young ones, sized alike from
    their peers), so that one burst does not send the price to its bound."""

    __slots__ = ("budget", "clip", "eta", "eta0", "log_price", "resource", "updates")

    def __init__(self, resource: str, budget: float, eta: float = 0.05,
                 eta0: float = 1.0, clip: float | None = None,
                 initial: float | None = None) -> None:
        if resource not in _INITIAL:
            raise ValueError(f"resource must be one of {list(_INITIAL)}, got {resource!r}")
        if not 0.0 < budget < 1.0:
            raise ValueError(f"budget must be a share of windows in (0, 1), got {budget!r}")
        if not (0.0 < eta <= eta0 and math.isfinite(eta0)):
            raise ValueError(f"expected 0 < eta <= eta0, got {eta!r}, {eta0!r}")
        self.resource = resource
        self.budget = budget
        self.eta = eta
        self.eta0 = eta0
        self.log_price = math.log(_INITIAL[resource] if initial is None else initial)
        self.updates = 0
        self.clip = clip

    @property
    def price(self) -> float:
        return math.exp(self.log_price)

    def learn(self, violations: int, windows: int) -> None:
        """One period of the instances' realised outcome: ``violations`` of ``windows``
        exceeded the reservation in force."""
        if windows <= 0:
            return
        self.updates += 1
        eta = max(self.eta, self.eta0 / math.sqrt(self.updates))
        error = (violations / windows - self.budget) / self.budget
        if self.clip is not None:
            error = min(error, self.clip)
        self.log_price += eta * error
        lo, hi = _BOUNDS[self.resource]
        self.log_price = min(max(self.log_price, math.log(lo)), math.log(hi))
