"""The ``frontier`` section of ``run_backtest`` on a few real VMs, and the sweeps against the
baselines' own decisions on them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fpstream.backtest import sweep
from fpstream.backtest.frontier import FAMILIES, baseline_frontier
from fpstream.backtest.run import baseline_decisions, run_backtest
from fpstream.backtest.traces import read_trace

pytestmark = [pytest.mark.flow, pytest.mark.slow]

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
TRACE = DATA / "bitbrains-rnd-2013-07"
PLANETLAB = DATA / "planetlab-comon-2011" / "planetlab-2011-days1-5.tar.gz"
N_SERIES = 3
BUDGETS = {"cpu": (0.005, 0.01, 0.02, 0.05), "mem": (0.0005, 0.001, 0.005, 0.01)}
PARAMS = {"vpa": {"percentile", "margin"}, "crane": {"quantile", "margin"},
          "peak": {"hours", "margin"}}


def need(path: Path) -> None:
    if not path.exists():
        pytest.skip(f"the trace is not here ({path}): a fresh clone has no ../shared/data; "
                    "CI provides it")


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    need(TRACE)
    report = tmp_path_factory.mktemp("report") / "frontier.html"
    return run_backtest(TRACE, N_SERIES, budgets=BUDGETS, report=report), report


def test_the_section_has_every_family_at_every_budget(result: tuple[dict[str, Any], Path]
                                                       ) -> None:
    doc = result[0]["frontier"]
    assert set(doc) == {"cpu", "mem"}
    for res, by_family in doc.items():
        assert list(by_family) == ["fpstream", *FAMILIES]
        for family, points in by_family.items():
            assert [p["budget"] for p in points] == list(BUDGETS[res])
            for p in points:
                if family == "fpstream":  # run at the budget, not tuned: no parameters
                    assert set(p) == {"budget", "waste", "viol", "changes", "within_budget"}
                    continue
                assert set(p) == {"budget", "waste", "viol", "changes", "params",
                                  "within_budget"}
                assert set(p["params"]) == PARAMS[family]
                assert 0 <= p["waste"] <= 1 and 0 <= p["viol"] <= 1 and 0 <= p["changes"] <= 1
                assert p["within_budget"] == (p["viol"] <= p["budget"])
            if family == "fpstream":
                continue
            kept = [p["waste"] for p in points if p["within_budget"]]
            assert kept == sorted(kept, reverse=True), (res, family)  # more budget, less waste
    assert result[0]["notes"]["seconds"]["frontier"] >= 0


def test_fpstream_runs_at_each_budget(result: tuple[dict[str, Any], Path]) -> None:
    doc = result[0]
    ran = doc["notes"]["settings"]
    for res in ("cpu", "mem"):
        points = {p["budget"]: p for p in doc["frontier"][res]["fpstream"]}
        # the run at the shipped budgets is the backtest's own fpstream figures
        own = points[ran[f"violation_budget_{res}"]]
        assert (own["waste"], own["viol"]) == pytest.approx(
            (doc[res]["fpstream"]["waste"], doc[res]["fpstream"]["viol"]), abs=1e-4)
        # a larger budget buys less waste at more violations
        low, high = points[min(points)], points[max(points)]
        assert high["waste"] < low["waste"] and high["viol"] > low["viol"], (res, low, high)


def test_fpstream_first_day_at_each_budget(result: tuple[dict[str, Any], Path]) -> None:
    doc = result[0]
    ran = doc["notes"]["settings"]
    for res in ("cpu", "mem"):
        points = {p["budget"]: p for p in doc["first_day_frontier"][res]["fpstream"]}
        assert sorted(points) == list(BUDGETS[res])
        # the run at the shipped budgets is the backtest's own first-day figures
        own = points[ran[f"violation_budget_{res}"]]
        mine = doc["first_day"][res]["fpstream"]
        assert (own["waste"], own["viol"], own["changes"]) == pytest.approx(
            (mine["waste"], mine["viol"], mine["changes"]), abs=1e-4)


def test_tuned_vpa_is_at_least_as_good_as_vpa_where_its_budget_allows(
        result: tuple[dict[str, Any], Path]) -> None:
    doc = result[0]
    for res in ("cpu", "mem"):
        vpa = doc[res]["vpa"]  # p90 x 1.15, a point of the grid, rounded to 4 digits
        for p in doc["frontier"][res]["vpa"]:
            if vpa["viol"] + 1e-4 <= p["budget"]:
                assert p["within_budget"] and p["waste"] <= vpa["waste"] + 1e-4, (res, p)


def test_the_report_draws_the_frontiers(result: tuple[dict[str, Any], Path]) -> None:
    page = result[1].read_text(encoding="utf-8")
    part = page[page.index("<h2>Frontiers</h2>"):page.index("<h2>Series</h2>")]
    assert part.count("<svg") == 1 and "percentile" in part and "hours" in part


def test_the_sweep_reproduces_vpa_and_crane_on_real_vms() -> None:
    need(TRACE)
    for s in read_trace("bitbrains", TRACE, N_SERIES):
        assert s.mem is not None
        ts = s.ts.astype(np.float64)
        rows, _ = sweep.decision_points(ts)
        want = baseline_decisions(s)
        vpa_cpu = np.maximum(sweep.vpa_cpu(ts, s.cpu, rows, [0.9])[:, 0] * 1.15, 0.025)
        vpa_mem = np.maximum(sweep.vpa_memory(ts, s.mem, rows, [0.9])[:, 0] * 1.15, 250 * 2**20)
        crane_cpu = sweep.crane(ts, s.cpu, rows, [0.99], 86_400.0)[:, 0] * 1.15
        assert vpa_cpu.tolist() == want["vpa"]["cpu"].tolist()
        assert vpa_mem.tolist() == want["vpa"]["mem"].tolist()
        assert crane_cpu.tolist() == want["crane"]["cpu"].tolist()


def test_planetlab_frontier_is_cpu_only() -> None:
    need(PLANETLAB)
    series = list(read_trace("planetlab", PLANETLAB, 5))
    doc = baseline_frontier(series, BUDGETS)
    assert set(doc) == {"cpu"}
    assert all(len(points) == 4 for points in doc["cpu"].values())
