"""fpstream against VPA on real Bitbrains VMs through the real flow, at its violation budget."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fpstream.backtest.run import run_backtest
from fpstream.settings import Settings

pytestmark = [pytest.mark.flow, pytest.mark.slow]

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
TRACE = DATA / "bitbrains-rnd-2013-07"
# VPA's CPU violation rate on VMs 1-8 is 0.0111: fpstream runs at a budget a little under it.
BUDGET = 0.01


@pytest.fixture(scope="module")
def result() -> dict[str, Any]:
    if not TRACE.is_dir():
        pytest.skip(f"the Bitbrains trace is not here ({TRACE}): a fresh clone has no "
                    "../shared/data; CI provides it")
    return run_backtest(TRACE, 8, settings=Settings(violation_budget_cpu=BUDGET), workers=2)


def test_cpu_waste_is_below_vpa_near_its_budget(result: dict[str, Any]) -> None:
    mine, vpa = result["cpu"]["fpstream"], result["cpu"]["vpa"]
    assert 0.5 * BUDGET <= mine["viol"] <= 1.5 * BUDGET, mine
    assert mine["waste"] < vpa["waste"], (mine, vpa)
    # ... and the oracle, which knows the next hour, stays out of reach.
    assert result["cpu"]["oracle"]["waste"] < mine["waste"]


def test_the_settings_it_ran_are_reported(result: dict[str, Any]) -> None:
    ran = result["notes"]["settings"]
    assert ran["violation_budget_cpu"] == BUDGET and ran["decision_period_s"] == 3600.0
    assert ran["protocol"] == ["decision_period_s", "window_s"]
    # everything else is what fpstream run ships
    shipped = Settings()
    assert (ran["change_threshold"], ran["headroom"], ran["app_ttl_s"]) == (
        shipped.change_threshold, shipped.headroom, shipped.app_ttl_s)


def test_the_cold_start_section_names_the_flow_processes(result: dict[str, Any]) -> None:
    assert result["cold_start"]["deployments"] == 8
    assert result["cold_start"]["flow_processes"] == 2
