"""Frontiers: tuning per budget, churn, ``--budgets`` and the report's frontier section."""

from __future__ import annotations

import doctest
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from fpstream.backtest import frontier
from fpstream.backtest.frontier import (
    Combination,
    Sweep,
    add_points,
    allocation_churn,
    count_changes,
    frontier_point,
    parse_budgets,
    tuned,
)
from fpstream.backtest.report import ReportData, render_report
from fpstream.backtest.traces import Series
from fpstream.cli import app as cli

DAY = 86_400.0
HOUR = 3600.0


def combo(waste: float, viol: float, k: int, steps: int = 10_000) -> Combination:
    """A combination whose score has exactly this waste and violation rate."""
    c = Combination({"k": k})
    c.score.allocated, c.score.slack = 1.0, waste
    c.score.steps, c.score.violations = steps, round(viol * steps)
    return c


# -- tuned -------------------------------------------------------------------------------------


def test_tuned_keeps_the_least_waste_within_each_budget() -> None:
    combos = [combo(0.9, 0.000, 1), combo(0.5, 0.004, 2), combo(0.4, 0.006, 3),
              combo(0.3, 0.020, 4), combo(0.45, 0.003, 5)]
    got = tuned({"cpu": {"x": combos}}, {"cpu": [0.01, 0.005, 0.001]})["cpu"]["x"]
    assert [p["budget"] for p in got] == [0.001, 0.005, 0.01]
    assert [p["params"]["k"] for p in got] == [1, 5, 3]
    assert got[1] == {"budget": 0.005, "waste": 0.45, "viol": 0.003, "changes": 0.0,
                      "within_budget": True, "params": {"k": 5}}


def test_a_budget_met_exactly_qualifies_and_ties_go_to_fewer_violations_then_the_grid() -> None:
    combos = [combo(0.4, 0.005, 1), combo(0.4, 0.002, 2), combo(0.4, 0.002, 3)]
    got = tuned({"mem": {"x": combos}}, {"mem": [0.005]})["mem"]["x"][0]
    assert got["params"] == {"k": 2}
    only = tuned({"mem": {"x": combos[:1]}}, {"mem": [0.005]})["mem"]["x"][0]
    assert only["within_budget"] and only["params"] == {"k": 1}


def test_when_nothing_is_within_budget_the_lowest_violation_rate_is_reported() -> None:
    combos = [combo(0.2, 0.03, 1), combo(0.3, 0.02, 2), combo(0.25, 0.02, 3)]
    got = tuned({"cpu": {"x": combos}}, {"cpu": [0.01]})["cpu"]["x"][0]
    assert got["within_budget"] is False
    assert got["params"] == {"k": 3}  # 0.02 both: the least waste of the two
    assert got["viol"] == 0.02


def test_tuned_leaves_out_a_resource_it_has_no_scores_for() -> None:
    assert tuned({"cpu": {"x": [combo(0.1, 0.0, 1)]}}, {"cpu": [0.01], "mem": [0.01]}).keys() \
        == {"cpu"}


# -- churn ------------------------------------------------------------------------------------


def test_a_change_is_a_move_of_more_than_ten_percent_from_the_previous_decision() -> None:
    at = np.arange(6) * HOUR
    values = np.array([[1.0, 0.0], [1.08, 0.0], [1.18, 1.0], [1.18, 1.0], [0.5, np.nan],
                       [0.5, 2.0]])
    ts = np.arange(1, 7) * HOUR - 1.0  # one step under each decision
    changed, periods = count_changes(at, values, ts)
    # Column 0: 1.0 -> 1.08 is 8 % (no), 1.08 -> 1.18 is 9.3 % (no), 1.18 -> 0.5 (yes).
    assert changed.tolist()[0] == 1 and periods.tolist()[0] == 5
    # Column 1: 0 -> 0 (no), 0 -> 1 (yes), 1 -> 1 (no); next to NaN: not counted.
    assert changed.tolist()[1] == 1 and periods.tolist()[1] == 3


def test_only_decisions_in_force_over_scored_steps_count() -> None:
    at = np.array([0.0, HOUR, 2 * HOUR, 3 * HOUR])
    values = np.array([1.0, 2.0, 4.0, 8.0])
    changed, periods = count_changes(at, values, np.array([2.5 * HOUR, 2.7 * HOUR]))
    assert (int(changed[0]), int(periods[0])) == (1, 1)  # the one at 2 h, against 1 h's
    assert count_changes(at, values, np.array([0.5 * HOUR]))[1].tolist() == [0]  # no previous
    # a series too short for any decision (under an hour): nothing in force, nothing changed
    none = count_changes(np.array([]), np.array([]), np.array([0.2 * HOUR]))
    assert [int(x[0]) for x in none] == [0, 0]
    two = count_changes(np.array([]), np.zeros((0, 2)), np.array([0.2 * HOUR]))
    assert [x.tolist() for x in two] == [[0, 0], [0, 0]]


def test_the_flows_churn_is_counted_over_day_two_on() -> None:
    ts = np.arange(1, 2 * 24 * 12 + 1) * 300.0  # two days
    s = Series(name="a", ts=ts, cpu=np.ones(len(ts)))
    at = np.arange(1, 48) * HOUR
    cpu = np.where(np.arange(47) % 2 == 0, 1.0, 2.0)  # every hour moves
    changed, periods = allocation_churn([s], {("a", "a"): {"ts": at, "cpu": cpu}}, "cpu")
    # Day 2 is (24 h, 48 h]: the decisions at 24 h .. 47 h are in force there.
    assert (changed, periods) == (24, 24)
    assert allocation_churn([s], {}, "cpu") == (0, 0)


def test_the_sweep_counts_churn_for_every_combination() -> None:
    rng = np.random.default_rng(0)
    ts = np.arange(1, 3 * 24 * 12 + 1) * 300.0
    s = Series(name="a", ts=ts, cpu=rng.uniform(0, 2, len(ts)))
    sw = Sweep(["cpu"], families=("peak",))
    sw.add(s)
    periods = {c.periods for c in sw.combinations["cpu"]["peak"]}
    assert periods == {48}  # decisions at 24 h .. 71 h govern day 2 on, each after another
    one_hour = next(c for c in sw.combinations["cpu"]["peak"]
                    if c.params == {"hours": 1, "margin": 1.0})
    peaks = np.array([s.cpu[(ts > h * HOUR) & (ts <= (h + 1) * HOUR)].max() for h in range(72)])
    moved = np.abs(np.diff(peaks)) > 0.1 * peaks[:-1]
    assert one_hour.changed == int(moved[23:71].sum())


def test_a_series_without_a_scored_step_adds_nothing() -> None:
    ts = np.arange(1, 12 * 12) * 300.0  # half a day
    sw = Sweep(["cpu", "mem"])
    sw.add(Series(name="a", ts=ts, cpu=np.ones(len(ts))))
    assert sw.series == 0
    assert all(c.score.steps == 0 for fam in sw.combinations["cpu"].values() for c in fam)


# -- budgets ----------------------------------------------------------------------------------


def test_budgets_parse_per_resource_in_order() -> None:
    assert parse_budgets(["cpu=0.05,0.005, 0.01", "mem=0"]) == {"cpu": (0.005, 0.01, 0.05),
                                                                  "mem": (0.0,)}


@pytest.mark.parametrize(("spec", "message"), [
    (["cpu"], "expected RES=b1,b2"),
    (["disk=0.1"], "expected RES=b1,b2"),
    (["cpu=0.1,x"], "'x' is not a number"),
    (["cpu=0.1,"], "'' is not a number"),
    (["cpu=1"], "not a violation rate"),
    (["cpu=-0.1"], "not a violation rate"),
    (["cpu=nan"], "not a violation rate"),
    (["cpu=0.1,0.10"], "given twice"),
    (["cpu=0.1", "cpu=0.2"], "cpu are given twice"),
])
def test_bad_budgets_are_refused(spec: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_budgets(spec)


def test_the_command_names_the_option_it_refuses() -> None:
    result = CliRunner().invoke(cli, ["backtest", "--budgets", "cpu=0.01", "--budgets",
                                      "mem=0.5,2"])
    assert result.exit_code == 2
    assert "--budgets 'mem=0.5,2': 2 is not a violation rate in [0, 1)" in result.stderr


def test_the_console_table_shows_each_budget_and_the_chosen_parameters() -> None:
    from rich.console import Console

    doc = tuned({"cpu": {"vpa": [Combination({"percentile": 0.9, "margin": 1.15})],
                         "peak": [Combination({"hours": 24, "margin": 1.05})]}},
                {"cpu": [0.005, 0.01]})
    console = Console(width=200, record=True)
    console.print(frontier.frontier_table(doc))
    text = console.export_text()
    assert "p0.9 x1.15" in text and "24h x1.05" in text
    assert text.count("cpu") == 2


def test_budgets_are_checked_before_any_work() -> None:
    from fpstream.backtest.run import run_backtest

    with pytest.raises(ValueError, match="rate in"):
        run_backtest("/nonexistent", budgets={"cpu": [1.5]})


# -- the section and the report ---------------------------------------------------------------


def section(with_fpstream: bool) -> dict[str, Any]:
    doc = tuned({"cpu": {f: [combo(0.6 - 0.1 * k, 0.004 * k, k) for k in range(4)]
                         for f in frontier.FAMILIES},
                 "mem": {f: [combo(0.8, 0.0, 1)] for f in frontier.FAMILIES}},
                {"cpu": [0.005, 0.01], "mem": [0.001]})
    if with_fpstream:
        score = combo(0.3, 0.004, 0).score
        add_points(doc, "fpstream", "cpu",
                   [frontier_point(0.01, score, 3, 10), frontier_point(0.005, score, 1, 10)])
    return doc


def test_fpstream_points_go_first_in_budget_order() -> None:
    doc = section(with_fpstream=True)
    assert list(doc["cpu"]) == ["fpstream", "vpa", "crane", "peak"]
    assert [p["budget"] for p in doc["cpu"]["fpstream"]] == [0.005, 0.01]
    assert doc["cpu"]["fpstream"][1] == {"budget": 0.01, "waste": 0.3, "viol": 0.004,
                                         "changes": 0.3, "within_budget": True}
    assert "fpstream" not in doc["mem"]


def result_with(doc: dict[str, Any]) -> dict[str, Any]:
    figures = {"waste": 0.5, "viol": 0.01, "short": 0.01}
    return {"cpu": {"vpa": figures}, "mem": {"vpa": figures}, "series": 1, "steps": 10,
            "first_day": {"cpu": {"vpa": figures}, "mem": {"vpa": figures}},
            "notes": {"first_day_steps": 3}, "frontier": doc}


@pytest.mark.parametrize("with_fpstream", [False, True])
def test_the_report_draws_the_frontiers_with_or_without_fpstream(with_fpstream: bool) -> None:
    page = render_report(result_with(section(with_fpstream)), ReportData("bitbrains", ["x"]))
    part = page[page.index("<h2>Frontiers</h2>"):page.index("<h2>Series</h2>")]
    assert part.count("<svg") == 1
    assert "<small>k 1</small>" in part and "<small>k 2</small>" in part  # those chosen
    assert ("<th>fpstream</th>" in part) == with_fpstream
    assert "0.005" in part and "0.001" in part  # budgets


def test_a_report_without_frontier_has_no_such_section() -> None:
    result = result_with({})
    del result["frontier"]
    assert "Frontiers" not in render_report(result, ReportData("bitbrains", ["x"]))


def test_doctests() -> None:
    assert doctest.testmod(frontier).failed == 0


def test_the_report_draws_the_first_day_frontier_and_new_instances_first_day() -> None:
    doc = section(with_fpstream=True)
    result = {**result_with(doc),
              "first_day_frontier": {"cpu": {"fpstream": doc["cpu"]["fpstream"]}}}
    ts = 1_372_629_600.0 + 300.0 * np.arange(1, 289)
    usage = np.full(len(ts), 0.5)
    young = {"ts": ts, "cpu": {"usage": usage, "fpstream": usage * 1.2, "vpa": usage * 2}}
    page = render_report(result, ReportData("bitbrains", ["x"], young={"vm-7": young}))
    plain = render_report(result_with(doc), ReportData("bitbrains", ["x"]))

    def first_day(page: str) -> str:
        return page[page.index("<h3>First day (cold start)</h3>"):page.index("<h2>Frontiers")]

    assert first_day(page).count("<svg") == first_day(plain).count("<svg") + 1
    assert "fpstream's first day at each budget" in first_day(page)
    assert "<h2>New instances: their first day</h2>" in page
    assert "vm-7, deployed after the trace's first day" in page
    assert "New instances" not in plain and "first day at each budget" not in plain
    figures = {"waste": 0.5, "viol": 0.0123, "short": 0.01, "steps": 40}
    spans = {"0-1h": {**figures, "waste": 0.0, "viol": 0.0, "steps": 0}, "1-6h": figures,
             "6-24h": figures}
    by_age = {"cpu": {"vpa": spans}, "mem": {"vpa": spans}}
    aged = render_report({**result_with(doc), "first_day_by_age": by_age},
                         ReportData("bitbrains", ["x"]))
    assert "by the series' age" in first_day(aged) and "<th>cpu 6-24h</th>" in first_day(aged)
    assert "0.500 @ 0.0123" in first_day(aged) and "series' age" not in plain
    assert "0.000 @ 0.0000" not in first_day(aged)  # a span without steps shows none
