"""Backtests on real traces (DESIGN.md, "Evaluation protocol"): a trace reader, the baseline
recommenders, the scoring, and the replay of a trace through the real flow."""

from fpstream.backtest.baselines import VPA, Crane, DecayingHistogram, manual, oracle
from fpstream.backtest.run import run_backtest
from fpstream.backtest.traces import Series, read_bitbrains
from fpstream.scoring import Score, in_force

__all__ = ["VPA", "Crane", "DecayingHistogram", "Score", "Series", "in_force", "manual",
           "oracle", "read_bitbrains", "run_backtest"]
