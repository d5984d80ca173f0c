"""Backtest parts on synthetic series whose results can be checked by hand."""

from __future__ import annotations

import io
from collections import Counter

import numpy as np
import pytest

from fpstream.backtest.baselines import VPA, Crane, DecayingHistogram, manual, oracle
from fpstream.backtest.traces import parse_series
from fpstream.scoring import Score, in_force

DAY = 86_400.0
HOUR = 3600.0
STEP = 300.0


def bucket_end(h: DecayingHistogram, value: float) -> float:
    return h.bucket_start(h.bucket(value) + 1)


# -- histogram ------------------------------------------------------------------------------


def test_histogram_buckets_grow_by_five_percent_from_the_first_size() -> None:
    h = DecayingHistogram.cpu(DAY)
    assert h.bucket_start(0) == 0.0
    assert h.bucket_start(1) == pytest.approx(0.01)
    assert h.bucket_start(2) == pytest.approx(0.01 + 0.0105)
    assert h.bucket(0.0) == 0 and h.bucket(0.0099) == 0 and h.bucket(0.0101) == 1
    assert h.bucket(1e9) == len(h.weights) - 1


def test_histogram_percentile_is_the_end_of_the_bucket_it_falls_in() -> None:
    h = DecayingHistogram.cpu(DAY)
    assert h.percentile(0.9) == 0.0  # empty
    h.add(0.015, t=0.0)
    assert h.percentile(0.9) == pytest.approx(0.0205)


def test_histogram_weights_double_every_half_life() -> None:
    h = DecayingHistogram.cpu(DAY)
    h.add(1.0, t=0.0)  # weight 1
    h.add(2.0, t=DAY)  # weight 2: the total is 3
    assert h.percentile(0.30) == pytest.approx(bucket_end(h, 1.0))  # 0.9 of 3 <= 1
    assert h.percentile(0.40) == pytest.approx(bucket_end(h, 2.0))  # 1.2 of 3 > 1


def test_histogram_survives_a_reference_shift() -> None:
    h = DecayingHistogram.cpu(HOUR)
    h.add(1.0, t=0.0)
    h.add(3.0, t=200 * HOUR)  # 2**200 later: the reference moves, nothing overflows
    assert np.isfinite(h.weights).all()
    assert h.percentile(0.5) == pytest.approx(bucket_end(h, 3.0))


def test_a_reference_shift_rescales_the_bucket_it_adds_to() -> None:
    h = DecayingHistogram.cpu(HOUR)
    for _ in range(10):
        h.add(1.0, t=0.0)  # weight 10, 2**-200 of it after the shift
    h.add(1.0, t=200 * HOUR)  # moves the reference: the 1-core bucket now weighs ~1
    h.add(3.0, t=200 * HOUR, weight=2.0)
    assert h.weights[h.bucket(1.0)] == pytest.approx(1.0)
    assert h.percentile(0.5) == pytest.approx(bucket_end(h, 3.0))


def test_histogram_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="ratio > 1"):
        DecayingHistogram(0.01, 10.0, DAY, ratio=1.0)
    with pytest.raises(ValueError, match="half_life_s"):
        DecayingHistogram(0.01, 10.0, 0.0)


# -- VPA -------------------------------------------------------------------------------------


def test_vpa_targets_p90_plus_15_percent_of_a_constant_load() -> None:
    v = VPA()
    for i in range(100):
        v.update(i * STEP, cpu=1.0, mem=2e9)
    cpu, mem = v.recommend()
    assert cpu == pytest.approx(bucket_end(v.cpu, 1.0) * 1.15)
    assert mem == pytest.approx(bucket_end(DecayingHistogram.memory(DAY), 2e9) * 1.15)


def test_vpa_applies_its_minimums() -> None:
    v = VPA()
    assert v.recommend() == (0.025, 250 * 2**20)  # nothing seen yet
    for i in range(10):
        v.update(i * STEP, cpu=0.0, mem=1e6)
    assert v.recommend() == (0.025, 250 * 2**20)


def test_vpa_cpu_p90_ignores_the_top_tenth() -> None:
    v = VPA()
    # 95 samples at 1 core and 5 at 4 cores in the same instant: 5% above, p90 is 1 core.
    for i in range(100):
        v.update(0.0, cpu=4.0 if i < 5 else 1.0, mem=1e9)
    assert v.recommend()[0] == pytest.approx(bucket_end(v.cpu, 1.0) * 1.15)


def test_vpa_memory_uses_daily_peaks_kept_eight_days() -> None:
    v = VPA()
    v.update(0.0, cpu=0.1, mem=4e9)  # day 0 peaks at 4 GB, at t = 0 (weight 1)
    for i in range(1, int(DAY / STEP)):
        v.update(i * STEP, cpu=0.1, mem=1e9)
    v.update(DAY, cpu=0.1, mem=1e9)  # day 1 peaks at 1 GB, at t = 1 day (weight 2)
    mem_h = DecayingHistogram.memory(DAY)
    # Weights 1 (4 GB) and 2 (1 GB): p90 = 2.7 of 3 needs the 4 GB bucket.
    assert v.recommend()[1] == pytest.approx(bucket_end(mem_h, 4e9) * 1.15)
    for day in range(2, 9):  # days 1..8 at 1 GB: day 0 leaves the 8 intervals kept
        v.update(day * DAY, cpu=0.1, mem=1e9)
    assert len(v.peaks) == 8
    assert v.recommend()[1] == pytest.approx(bucket_end(mem_h, 1e9) * 1.15)


# -- Crane -----------------------------------------------------------------------------------


def test_crane_forgets_what_is_older_than_its_history() -> None:
    c = Crane()
    n = 0
    for _ in range(12):  # an hour at 5 cores and 8 GB
        c.update(n * STEP, cpu=5.0, mem=8e9)
        n += 1
    for _ in range(int(100 * HOUR / STEP)):
        c.update(n * STEP, cpu=1.0, mem=1e9)
        n += 1
    cpu, mem = c.recommend()
    # 12 old samples among ~1200, decayed by 2**-4 against the newest: far below 1% of the
    # weight, so p99 is already the 1-core bucket while they are still in the window.
    assert cpu == pytest.approx(bucket_end(c.cpu, 1.0) * 1.15)
    for _ in range(int(70 * HOUR / STEP)):  # past 168 h: the first hour is gone
        c.update(n * STEP, cpu=1.0, mem=1e9)
        n += 1
    assert c.window[0][0] > n * STEP - 168 * HOUR - STEP
    assert all(s[1] == 1.0 for s in c.window)
    assert c.recommend()[1] == pytest.approx(bucket_end(c.mem, 1e9) * 1.15)


def test_crane_p99_sees_a_recent_burst() -> None:
    c = Crane()
    for i in range(1000):  # ~3.5 days at 1 core, then the last hour at 5
        c.update(i * STEP, cpu=5.0 if i >= 988 else 1.0, mem=1e9)
    assert c.recommend()[0] == pytest.approx(bucket_end(c.cpu, 5.0) * 1.15)


# -- manual, oracle ----------------------------------------------------------------------------


def test_oracle_is_the_peak_of_each_hour() -> None:
    ts = np.array([100, 3600, 3700, 7000, 7300])
    usage = np.array([1.0, 3.0, 2.0, 0.5, 9.0])
    assert oracle(ts, usage).tolist() == [3.0, 3.0, 2.0, 2.0, 9.0]
    assert manual(np.array([4, 4])).tolist() == [4.0, 4.0]


# -- score -------------------------------------------------------------------------------------


def test_score_by_hand() -> None:
    s = Score()
    s.add(np.array([2.0, 2.0, 2.0, 2.0]), np.array([1.0, 2.0, 3.0, 0.0]))
    # slack 1 + 0 + 0 + 2 = 3 of 8 allocated; 1 violation in 4; short 1 of 6 used.
    assert s.get() == {"waste": 0.375, "viol": 0.25, "short": round(1 / 6, 4)}


def test_scores_merge_like_one() -> None:
    rng = np.random.default_rng(3)
    a, u = rng.uniform(0, 2, 100), rng.uniform(0, 2, 100)
    whole, left, right = Score(), Score(), Score()
    whole.add(a, u)
    left.add(a[:40], u[:40])
    right.add(a[40:], u[40:])
    left += right
    assert left.get() == whole.get()
    assert whole.get()["viol"] == round(float(np.mean(u > a)), 4)


def test_score_of_nothing_is_zero_and_bad_input_is_refused() -> None:
    assert Score().get() == {"waste": 0.0, "viol": 0.0, "short": 0.0}
    with pytest.raises(ValueError, match="one shape"):
        Score().add(np.ones(2), np.ones(3))
    with pytest.raises(ValueError, match="finite"):
        Score().add(np.array([np.nan]), np.ones(1))


def test_a_decision_holds_from_just_after_it_until_the_next() -> None:
    got = in_force(np.array([3600.0, 7200.0]), np.array([1.0, 2.0]),
                   np.array([3500, 3600, 3700, 7200, 7300]))
    assert np.isnan(got[:2]).all()
    assert got[2:].tolist() == [1.0, 1.0, 2.0]


# -- trace reader ------------------------------------------------------------------------------

HEADER = ("Timestamp [ms];\tCPU cores;\tCPU capacity provisioned [MHZ];\tCPU usage [MHZ];\t"
          "CPU usage [%];\tMemory capacity provisioned [KB];\tMemory usage [KB];\t"
          "Disk read throughput [KB/s];\tDisk write throughput [KB/s];\t"
          "Network received throughput [KB/s];\tNetwork transmitted throughput [KB/s]\n")


def row(ts: int, cores: float, cap: float, use: float, mem_cap: float, mem: float) -> str:
    return ";\t".join(str(v) for v in (ts, cores, cap, use, 0, mem_cap, mem, 1, 2, 3, 4)) + "\n"


def test_reader_skips_and_counts_what_it_cannot_use() -> None:
    text = HEADER + "".join([
        row(1000, 2, 5200.0, 2600.0, 1024, 512),
        row(1300, 0, 0.0, 0.0, 0, 0),  # the trace's "no data" row
        row(1600, 0, 2600.0, 1300.0, 1024, 256),  # 0 cores, but MHz: 2600 MHz per core
        row(1600, 2, 5200.0, 100.0, 1024, 256),  # duplicate time
        "1900;\tx;\t1\n",
    ])
    skipped: Counter[str] = Counter()
    s = parse_series("vm-7", io.StringIO(text), skipped)
    assert s is not None
    assert s.ts.tolist() == [1000, 1600]
    assert s.cpu.tolist() == [1.0, 0.5]
    assert s.cpu_cap.tolist() == [2.0, 1.0]
    assert s.mem.tolist() == [512 * 1024.0, 256 * 1024.0]
    assert s.disk_read.tolist() == [1024.0, 1024.0]
    assert +skipped == Counter({"empty_row": 1, "duplicate_ts": 1, "bad_row": 1})


def test_reader_without_any_core_count_skips_those_rows() -> None:
    text = HEADER + row(1000, 0, 2600.0, 1300.0, 1024, 256)
    skipped: Counter[str] = Counter()
    assert parse_series("vm-8", io.StringIO(text), skipped) is None
    assert skipped["zero_cores"] == 1
