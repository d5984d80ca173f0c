"""Trace readers on small synthetic traces: PlanetLab archives, recorded streams, and what the
scoring does with a resource or a capacity the trace lacks."""

from __future__ import annotations

import io
import tarfile
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import orjson
import pytest

from fpstream.backtest.run import AGE_SPANS, new_scores, run_backtest, score_series
from fpstream.backtest.traces import (
    Series,
    planetlab_vm_days,
    read_jsonl,
    read_planetlab,
    read_trace,
    split_host_slice,
)

DAY = 86_400.0
HOSTS = ("planetlab1_cs_a_edu", "pl2_b_org", "node3_c_de", "pl-4_d_ac_jp")
SLICES = ("uw_oneswarm", "root", "princeton_codeen")


def day_start(day: str) -> int:
    return int(datetime.strptime(day, "%Y%m%d").replace(tzinfo=UTC).timestamp())


def write_planetlab(path: Path, files: dict[str, np.ndarray]) -> Path:
    """A CoMon-like archive: ``YYYYMMDD/<host>_<slice>`` files of integer CPU % lines."""
    with tarfile.open(path, "w:gz") as tar:
        for day in sorted({name.split("/")[0] for name in files}):
            info = tarfile.TarInfo(day)
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
        for name, pct in files.items():
            data = "".join(f"{int(v)}\n" for v in pct).encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def planetlab(tmp_path: Path) -> Path:
    rng = np.random.default_rng(7)
    files = {}
    for day in ("20110303", "20110304"):
        for host in HOSTS:
            for slice_ in SLICES:
                files[f"{day}/{host}_{slice_}"] = rng.integers(0, 100, 288)
    files["20110304/planetlab1_cs_a_edu_only_here"] = np.full(288, 50)
    files["20110303/pl2_b_org_ rnp_dcc"] = np.full(288, 10)  # a space after the host's "_"
    files["20110304/node3_c_de_rnp_dcc"] = np.full(288, 20)
    return write_planetlab(tmp_path / "pl.tar.gz", files)


# -- slice parsing -----------------------------------------------------------------------------


def test_the_slice_is_the_suffix_shared_by_many_hosts_not_by_a_domain() -> None:
    names = [f"{h}_{s}" for h in HOSTS for s in SLICES] + ["pl5_e_edu_uw_oneswarm"]
    split, counts = split_host_slice(names)
    assert split["planetlab1_cs_a_edu_uw_oneswarm"] == ("planetlab1_cs_a_edu", "uw_oneswarm")
    # "edu_uw_oneswarm" is on two hosts too, but "uw_oneswarm" is on every host.
    assert split["pl5_e_edu_uw_oneswarm"] == ("pl5_e_edu", "uw_oneswarm")
    assert split["pl-4_d_ac_jp_princeton_codeen"] == ("pl-4_d_ac_jp", "princeton_codeen")
    assert split["node3_c_de_root"] == ("node3_c_de", "root")
    assert counts["slice_ambiguous"] == 0 and counts["slice_single_host"] == 0


def test_a_slice_on_one_host_is_split_at_a_known_host_and_counted() -> None:
    names = [f"{h}_{s}" for h in HOSTS for s in SLICES] + ["pl2_b_org_utoronto_li_rs"]
    split, counts = split_host_slice(names)
    # "rs" looks like a country code, but "pl2_b_org" is a host seen with other slices.
    assert split["pl2_b_org_utoronto_li_rs"] == ("pl2_b_org", "utoronto_li_rs")
    assert counts["slice_single_host"] == 1 and counts["slice_ambiguous"] == 0


def test_an_unconfirmed_split_is_counted_ambiguous() -> None:
    split, counts = split_host_slice(["lonely_x_edu_foo_slice"])
    assert split["lonely_x_edu_foo_slice"] == ("lonely_x_edu", "foo_slice")
    assert counts["slice_ambiguous"] == 1 and counts["slice_single_host"] == 1


def test_a_space_after_the_separator_is_the_same_slice() -> None:
    split, _ = split_host_slice(["a_b_edu_ rnp_dcc", "c_d_org_rnp_dcc", "a_b_edu_root",
                                 "c_d_org_root"])
    assert split["a_b_edu_ rnp_dcc"] == ("a_b_edu", "rnp_dcc")


def test_split_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="min_hosts"):
        split_host_slice([], min_hosts=0)


# -- PlanetLab reader -------------------------------------------------------------------------


def test_planetlab_series_concatenate_days_in_cores_without_memory(planetlab: Path) -> None:
    skipped: Counter[str] = Counter()
    series = {s.name: s for s in read_planetlab(planetlab, skipped=skipped)}
    assert len(series) == len(HOSTS) * len(SLICES) + 3  # only_here, rnp_dcc on two hosts
    s = series["pl2_b_org_uw_oneswarm"]
    assert s.labels == {"slice": "uw_oneswarm", "host": "pl2_b_org"}
    assert len(s) == 2 * 288
    t0 = day_start("20110303")
    assert s.ts[0] == t0 + 300 and s.ts[287] == t0 + DAY and s.ts[288] == t0 + DAY + 300
    assert (np.diff(s.ts) == 300).all()
    assert s.day is not None and s.day[0] == 0 and s.day[-1] == 1
    assert s.cpu_cap is not None and (s.cpu_cap == 1.0).all()
    assert s.mem is None and s.mem_cap is None and s.disk_read is None and s.net_tx is None
    assert 0.0 <= s.cpu.min() and s.cpu.max() <= 0.99
    rnp = series["pl2_b_org_rnp_dcc"]
    assert rnp.labels["slice"] == "rnp_dcc" and float(rnp.cpu[0]) == pytest.approx(0.10)
    assert series["node3_c_de_rnp_dcc"].day.tolist() == [1] * 288  # type: ignore[union-attr]
    assert skipped["planetlab_slice_single_host"] == 1  # only_here


def test_planetlab_cpu_is_the_file_percent_over_100(planetlab: Path) -> None:
    with tarfile.open(planetlab) as tar:
        f = tar.extractfile("20110304/pl-4_d_ac_jp_root")
        assert f is not None
        pct = np.array(f.read().split(), dtype=float)
    s = next(s for s in read_planetlab(planetlab) if s.name == "pl-4_d_ac_jp_root")
    assert s.cpu[288:] == pytest.approx(pct / 100)


def test_planetlab_limit_and_bad_files(tmp_path: Path) -> None:
    files = {f"20110303/{h}_{s}": np.full(288, 5) for h in HOSTS for s in SLICES}
    files["20110303/pl2_b_org_short"] = np.full(10, 5)
    path = write_planetlab(tmp_path / "x.tar.gz", files)
    skipped: Counter[str] = Counter()
    assert len(list(read_planetlab(path, limit=3, skipped=skipped))) == 3
    assert skipped["planetlab_bad_file"] == 1
    assert len(list(read_trace("planetlab", [path]))) == len(HOSTS) * len(SLICES)


def test_planetlab_vm_days_are_one_per_file(planetlab: Path) -> None:
    days = planetlab_vm_days(planetlab)
    assert len(days) == 2 * len(HOSTS) * len(SLICES) + 3
    first = days[0]
    assert first.day == "20110303" and len(first.cpu) == 288
    assert [d.day for d in days] == sorted(d.day for d in days)
    assert {(d.host, d.slice) for d in days if d.slice == "only_here"} == {
        ("planetlab1_cs_a_edu", "only_here")}


def test_a_missing_archive_says_so(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="PlanetLab"):
        list(read_planetlab(tmp_path / "none.tar.gz"))


# -- recorded stream ----------------------------------------------------------------------------


def sample(ts: float, app: str, instance: str, cpu: float, **extra: object) -> dict[str, object]:
    return {"v": 1, "ts": ts, "app": app, "instance": instance, "interval_s": 300,
            "metrics": {"cpu_cores": cpu, **extra.pop("metrics", {})}, **extra}  # type: ignore[dict-item]


def test_jsonl_series_per_app_and_instance(tmp_path: Path) -> None:
    t = 1.7e9
    lines = [
        orjson.dumps(sample(t, "web", "i-1", 0.5, metrics={"mem_bytes": 1e9},
                            capacity={"cpu_cores": 2, "mem_bytes": 4e9})),
        orjson.dumps([sample(t + 300, "web", "i-1", 0.7, metrics={"mem_bytes": 2e9}),
                      sample(t, "db", "i-1", 1.0, labels={"team": "data"})]),
        b"",
        b'{"v":1,"ts":1.7e9',  # malformed
        orjson.dumps(sample(t + 300, "db", "i-1", -1.0)),  # refused: negative
        orjson.dumps({"v": 1, "ts": t + 600, "app": "db", "instance": "i-1",
                      "metrics": {"mem_bytes": 5.0}}),  # no CPU
        orjson.dumps(sample(t + 600, "db", "i-1", 1.5)),
        orjson.dumps(sample(t + 600, "db", "i-1", 9.0)),  # repeated ts
    ]
    path = tmp_path / "rec.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    skipped: Counter[str] = Counter()
    series = {s.key: s for s in read_jsonl(path, skipped=skipped)}
    web, db = series[("web", "i-1")], series[("db", "i-1")]
    assert web.cpu.tolist() == [0.5, 0.7] and web.mem is not None
    assert web.mem.tolist() == [1e9, 2e9]
    # The capacity holds until it changes: the second sample had none.
    assert web.cpu_cap is not None and web.cpu_cap.tolist() == [2.0, 2.0]
    assert skipped["jsonl_filled_cpu_cap"] == 1 and skipped["jsonl_filled_mem_cap"] == 1
    assert db.cpu.tolist() == [1.0, 1.5] and db.mem is None and db.cpu_cap is None
    assert db.labels == {"team": "data"} and db.name == "db/i-1" and db.step_s == 300.0
    assert skipped["jsonl_malformed_json"] == 1 and skipped["jsonl_negative"] == 1
    assert skipped["jsonl_no_cpu"] == 1 and skipped["duplicate_ts"] == 1


def test_jsonl_reads_what_fpstream_record_wrote(tmp_path: Path) -> None:
    from fpstream.records import Recorded, encode_line, open_records

    t = 1.7e9
    values = [orjson.dumps(sample(t + 300 * i, "web", "i-1", 0.1 * i)) for i in range(1, 4)]
    path = tmp_path / "metrics.jsonl.zst"
    with open_records(path, "wb") as f:
        for n, v in enumerate([*values, b"\xff\xfe not json"]):
            f.write(encode_line(Recorded(b"web", v, partition=0, offset=n,
                                         timestamp_ms=int(t * 1000))) + b"\n")
        f.write(encode_line(Recorded(b"web", None, partition=0, offset=9)) + b"\n")
    skipped: Counter[str] = Counter()
    (web,) = read_jsonl(path, skipped=skipped)
    assert web.key == ("web", "i-1")
    assert web.cpu.tolist() == pytest.approx([0.1, 0.2, 0.3])
    assert skipped["jsonl_recorded_without_value"] == 1  # a tombstone
    assert sum(v for k, v in skipped.items() if k.startswith("jsonl_")) == 2  # + the garbage


def test_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="unsupported trace format"):
        list(read_trace("csv", ["x"]))
    with pytest.raises(ValueError, match="unsupported trace format"):
        run_backtest("x", fmt="csv")


# -- scoring what the trace lacks ---------------------------------------------------------------


def cpu_only(n: int = 2 * 288, cap: bool = True) -> Series:
    ts = 1_300_000_000 + 300 * np.arange(1, n + 1)
    cpu = 0.2 + 0.1 * np.sin(np.arange(n) / 20)
    return Series(name="h_s", ts=ts, cpu=cpu, cpu_cap=np.ones(n) if cap else None)


def test_a_series_without_memory_is_scored_on_cpu_only() -> None:
    s = cpu_only()
    scores = new_scores(["cpu"], {"cpu": ["fpstream", "vpa", "crane", "manual", "oracle"]})
    notes: Counter[str] = Counter()
    fp = {"ts": np.array([float(s.ts[12])]), "cpu": np.array([0.5]), "mem": np.array([np.nan])}
    kept = score_series(s, fp, scores, notes, keep=True)
    assert set(scores["rest"]) == {"cpu"}
    assert scores["rest"]["cpu"]["oracle"].steps == scores["rest"]["cpu"]["fpstream"].steps > 0
    assert scores["rest"]["cpu"]["oracle"].get()["viol"] == 0.0
    assert kept is not None and "mem" not in kept and set(kept["cpu"]) >= {"usage", "manual"}


def test_without_capacity_steps_with_no_allocation_are_scored_for_no_method() -> None:
    s = cpu_only(cap=False)
    scores = new_scores(["cpu"], {"cpu": ["fpstream", "vpa", "oracle"]})
    notes: Counter[str] = Counter()
    fp = {"ts": np.array([float(s.ts[100])]), "cpu": np.array([0.5]), "mem": np.array([0.0])}
    score_series(s, fp, scores, notes)
    assert notes["unscored_steps_without_allocation_cpu"] > 0
    steps = {m: sc.steps for m, sc in scores["rest"]["cpu"].items()}
    assert len(set(steps.values())) == 1
    assert sum(sc.steps for sc in scores["first_day"]["cpu"].values()) == 3 * (
        288 - 100 - 1)


def test_the_first_day_by_age_splits_the_first_day_where_its_misses_fell() -> None:
    s = cpu_only()
    burst = (s.ts >= s.ts[0] + 3 * 3600) & (s.ts < s.ts[0] + 4 * 3600)  # hour 3 of its life
    s.cpu[burst] = 0.9
    scores = new_scores(["cpu"], {"cpu": ["fpstream"]})
    fp = {"ts": np.array([float(s.ts[0])]), "cpu": np.array([0.5]), "mem": np.array([np.nan])}
    score_series(s, fp, scores, Counter())
    assert [name for name, _, _ in AGE_SPANS] == ["0-1h", "1-6h", "6-24h"]
    by_age = {name: scores[name]["cpu"]["fpstream"] for name, _, _ in AGE_SPANS}
    whole = scores["first_day"]["cpu"]["fpstream"]
    # the spans share the first day out, steps, violations and slack
    assert sum(sc.steps for sc in by_age.values()) == whole.steps
    assert sum(sc.violations for sc in by_age.values()) == whole.violations == int(burst.sum())
    assert sum(sc.slack for sc in by_age.values()) == pytest.approx(whole.slack)
    assert by_age["1-6h"].violations == whole.violations and by_age["6-24h"].violations == 0
    # scoring starts at the first hour boundary: part of the first hour at most
    assert 0 < by_age["0-1h"].steps < 12 and by_age["6-24h"].steps == 18 * 12


@pytest.mark.flow
def test_backtest_of_a_recording_omits_memory_and_manual_it_lacks(tmp_path: Path) -> None:
    t0 = 1_300_000_000.0
    lines = []
    for i in range(1, 2 * 288 + 1):
        batch = [sample(t0 + 300 * i, "app-a", f"i-{k}", 0.1 + 0.05 * k + 0.02 * (i % 7))
                 for k in range(2)]
        lines.append(orjson.dumps(batch))
    path = tmp_path / "rec.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    out = tmp_path / "r.html"
    result = run_backtest([path], fmt="jsonl", report=out)
    assert "mem" not in result and "mem" not in result["first_day"]
    assert set(result["cpu"]) == {"fpstream", "vpa", "crane", "oracle"}
    assert result["series"] == 2
    assert result["notes"]["manual_omitted_cpu_series_without_capacity"] == 2
    page = out.read_text()
    assert "<svg" in page and "http" not in page
