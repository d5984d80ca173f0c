"""``run_backtest`` on a few real Bitbrains VMs, through the real flow (no broker needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fpstream.backtest.run import METHODS, run_backtest

pytestmark = [pytest.mark.flow, pytest.mark.slow]

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
TRACE = DATA / "bitbrains-rnd-2013-07"
N_SERIES = 6


@pytest.fixture(scope="module")
def result() -> dict[str, Any]:
    if not TRACE.is_dir():
        pytest.skip(f"the Bitbrains trace is not here ({TRACE}): a fresh clone has no "
                    "../shared/data; CI provides it")
    return run_backtest(TRACE, N_SERIES)


def test_the_document_has_the_issue_shape(result: dict[str, Any]) -> None:
    assert result["series"] == N_SERIES
    assert result["steps"] > N_SERIES * 24 * 12  # more than a day each, from day 2 on
    for doc in (result, result["first_day"]):
        for res in ("cpu", "mem"):
            assert set(doc[res]) == set(METHODS)
            for method, figures in doc[res].items():
                # the first day's churn, for the methods that decide as they go
                churned = doc is result["first_day"] and method in ("fpstream", "vpa", "crane")
                assert set(figures) == {"waste", "viol", "short", *(
                    ["changes"] if churned else [])}, (method, figures)
                for name, value in figures.items():
                    assert 0.0 <= value <= 1.0, f"{res} {method} {name} = {value}"


def test_the_first_day_by_age_covers_the_first_day(result: dict[str, Any]) -> None:
    for res in ("cpu", "mem"):
        assert set(result["first_day_by_age"][res]) == set(METHODS)
        for spans in result["first_day_by_age"][res].values():
            assert list(spans) == ["0-1h", "1-6h", "6-24h"]
            for figures in spans.values():
                assert set(figures) == {"waste", "viol", "short", "steps"}
                assert all(0.0 <= figures[k] <= 1.0 for k in ("waste", "viol", "short"))
            # the first hour is scored from its hour boundary on, the later ages whole
            assert spans["1-6h"]["steps"] > 0 and spans["6-24h"]["steps"] > 0
            # the spans share out the first day's steps
            assert sum(s["steps"] for s in spans.values()) == result["notes"]["first_day_steps"]


def test_the_flow_allocated_every_vm_without_dead_letters(result: dict[str, Any]) -> None:
    notes = result["notes"]
    assert notes["allocations"] >= N_SERIES
    assert "series_without_allocation" not in notes
    assert not [k for k in notes if k.startswith("deadletter:")]


def test_every_vm_is_announced_and_scored_as_a_cold_start(result: dict[str, Any]) -> None:
    cold = result["cold_start"]
    assert cold["deployments"] == cold["new_pairs"] == N_SERIES
    assert "without_proactive_allocation" not in cold["notes"]
    for method in ("fpstream", "global", "size", "manual"):
        for doc in (cold[method], cold[method]["with_history"]):
            assert set(doc) >= {"bucket_accuracy", "bucket_accuracy_new", "first_hour"}
        for res in ("cpu", "mem"):
            figures = cold[method]["first_hour"][res]
            assert 0.0 <= figures["waste"] <= 1.0 and 0.0 <= figures["viol"] <= 1.0
    # These VMs all start with the trace: nothing is known of the fleet, so fpstream
    # reserves the requested (provisioned) size, as the manual allocation does.
    assert cold["with_history"] == 0
    assert cold["fpstream"]["first_hour"] == cold["manual"]["first_hour"]
    assert cold["flow_processes"] == 1


def test_two_flow_processes_give_the_same_result(result: dict[str, Any]) -> None:
    two = run_backtest(TRACE, N_SERIES, workers=2)
    assert two["cold_start"]["flow_processes"] == 2

    def figures(doc: dict[str, Any]) -> dict[str, Any]:
        notes = {k: v for k, v in doc["notes"].items() if k != "seconds"}
        cold = {k: v for k, v in doc["cold_start"].items() if k != "flow_processes"}
        return {**doc, "notes": notes, "cold_start": cold}

    # One cluster of two processes runs the same flow over the same fleet: every figure,
    # allocation count and cluster snapshot count agrees.
    assert figures(two) == figures(result)


def test_the_first_hours_alone_score_the_first_day_as_the_whole_trace(
        result: dict[str, Any]) -> None:
    head = run_backtest(TRACE, N_SERIES, first_hours=26)
    assert head["notes"]["first_hours"] == 26
    # these VMs start with the trace: their first day's decisions see the same fleet
    assert head["first_day"] == result["first_day"]
    assert head["cold_start"]["fpstream"] == result["cold_start"]["fpstream"]
    assert head["steps"] < result["steps"] / 10  # only hours 24-26 after the first day
    with pytest.raises(ValueError, match="first_hours"):
        run_backtest(TRACE, N_SERIES, first_hours=12)


def test_baselines_order_as_they_must(result: dict[str, Any]) -> None:
    for res in ("cpu", "mem"):
        waste = {m: result[res][m]["waste"] for m in METHODS}
        assert waste["oracle"] < waste["vpa"], (res, waste)
        assert waste["manual"] == max(waste.values()), (res, waste)
        assert result[res]["oracle"]["viol"] == 0.0
    # fpstream against VPA (lower waste at no more violations) does not hold yet on these
    # VMs (CPU waste above VPA's; memory waste below it but with more violations): not
    # asserted, printed for the record (pytest -s).
    for res in ("cpu", "mem"):
        print(res, "fpstream", result[res]["fpstream"], "vpa", result[res]["vpa"])


PLANETLAB = DATA / "planetlab-comon-2011" / "planetlab-2011-days1-5.tar.gz"
N_PLANETLAB = 6


@pytest.fixture(scope="module")
def planetlab(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    if not PLANETLAB.is_file():
        pytest.skip(f"the PlanetLab trace is not here ({PLANETLAB}): a fresh clone has no "
                    "../shared/data; CI provides it")
    report = tmp_path_factory.mktemp("report") / "planetlab.html"
    return run_backtest(PLANETLAB, N_PLANETLAB, fmt="planetlab", report=report), report


def test_planetlab_has_cpu_only(planetlab: tuple[dict[str, Any], Path]) -> None:
    result, _ = planetlab
    assert result["series"] == N_PLANETLAB
    assert "mem" not in result and "mem" not in result["first_day"]
    assert set(result["cpu"]) == set(METHODS)
    for doc in (result["cpu"], result["first_day"]["cpu"]):
        for method, figures in doc.items():
            assert {"waste", "viol", "short"} <= set(figures)
            assert all(0.0 <= v <= 1.0 for v in figures.values()), (method, figures)
    assert result["cpu"]["oracle"]["viol"] == 0.0
    assert result["cpu"]["manual"]["waste"] > result["cpu"]["oracle"]["waste"]
    notes = result["notes"]
    assert notes["allocations"] >= N_PLANETLAB
    assert not [k for k in notes if k.startswith("deadletter:")]
    assert notes["trace"]["format"] == "planetlab"


def test_planetlab_report_is_self_contained(planetlab: tuple[dict[str, Any], Path]) -> None:
    _, report = planetlab
    page = report.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    assert "<svg" in page or "data:image/png;base64" in page
    assert "http" not in page  # no remote script, style, font or image, not even a DTD
    assert page.count("<svg") >= 3  # the bars, at least one series, the clusters
    assert "fpstream" in page and "oracle" in page and "mem waste" not in page


@pytest.mark.parametrize("mode", ["split", "bandit"])
def test_experiment_section_scores_each_arm(mode: str) -> None:
    if not TRACE.is_dir():
        pytest.skip(f"the Bitbrains trace is not here ({TRACE}): a fresh clone has no "
                    "../shared/data; CI provides it")
    from fpstream.settings import DEFAULT_ARMS

    result = run_backtest(TRACE, 3, experiment=mode)
    doc = result["experiment"]
    assert doc["mode"] == mode
    assert set(doc["arms"]) == {a.name for a in DEFAULT_ARMS}
    assert doc["chosen"] in doc["arms"]
    for res in ("cpu", "mem"):
        shares = [arm[res]["share"] for arm in doc["arms"].values()]
        assert sum(shares) == pytest.approx(1.0, abs=1e-3)
        for arm in doc["arms"].values():
            figures = arm[res]
            assert set(figures) == {"waste", "viol", "reward", "share"}
            if figures["share"] > 0:
                assert 0.0 <= figures["waste"] <= 1.0 and 0.0 <= figures["viol"] <= 1.0
                assert figures["reward"] == pytest.approx(
                    -figures["waste"] - doc["violation_penalty"] * figures["viol"], abs=1e-3)
    assert doc["flow"] and doc["flow"][0]["periods"] > 0
