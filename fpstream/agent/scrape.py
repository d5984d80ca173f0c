"""An app's own Prometheus ``/metrics``, turned into ``app.*`` gauges.

Counters become rates and histograms become the mean of the interval (delta sum / delta count):
the cumulative values an exporter shows say nothing about the interval the sample covers.

>>> spec = ScrapeSpec("http://x/metrics", (SeriesSpec("app.req_rate", "counter", "reqs_total"),))
>>> s = Scraper(spec)
>>> s.update("reqs_total 100", now=0.0), s.update("reqs_total 130", now=10.0)
({}, {'app.req_rate': 3.0})
"""

from __future__ import annotations

import math
import urllib.request
from collections.abc import Callable

from prometheus_client.parser import text_string_to_metric_families

from fpstream.agent.config import ScrapeSpec, SeriesSpec
from fpstream.errors import FpstreamError

#: Per spec: a gauge's value, or a counter's total, or a histogram's (sum, count).
Raw = dict[str, float | tuple[float, float]]


class ScrapeError(FpstreamError, RuntimeError):
    """The endpoint did not answer, or answered something that is not the text format."""


def extract(text: str, specs: tuple[SeriesSpec, ...]) -> Raw:
    """Sum each spec's series over the label sets that match its label filter."""
    wanted: dict[str, list[tuple[SeriesSpec, str]]] = {}
    for spec in specs:
        if spec.kind == "histogram_mean":
            wanted.setdefault(spec.series + "_sum", []).append((spec, "sum"))
            wanted.setdefault(spec.series + "_count", []).append((spec, "count"))
        else:
            wanted.setdefault(spec.series, []).append((spec, "value"))
            if spec.kind == "counter" and not spec.series.endswith("_total"):
                wanted.setdefault(spec.series + "_total", []).append((spec, "value"))
    sums: dict[tuple[str, str], float] = {}
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                for spec, part in wanted.get(sample.name, ()):
                    if all(sample.labels.get(k) == v for k, v in spec.labels):
                        key = (spec.metric, part)
                        sums[key] = sums.get(key, 0.0) + float(sample.value)
    except ValueError as ex:
        raise ScrapeError(f"not the Prometheus text format: {ex}") from ex
    out: Raw = {}
    for spec in specs:
        if spec.kind == "histogram_mean":
            if (spec.metric, "sum") in sums and (spec.metric, "count") in sums:
                out[spec.metric] = (sums[spec.metric, "sum"], sums[spec.metric, "count"])
        elif (spec.metric, "value") in sums:
            out[spec.metric] = sums[spec.metric, "value"]
    return out


def fetch(url: str, timeout: float) -> str:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return str(resp.read().decode("utf-8", "replace"))
    except (OSError, ValueError) as ex:
        raise ScrapeError(f"cannot scrape {url}: {ex}") from ex


class Scraper:
    """One app's endpoint, with the previous totals needed for rates and interval means."""

    def __init__(self, spec: ScrapeSpec,
                 fetcher: Callable[[str, float], str] = fetch) -> None:
        self.spec = spec
        self._fetch = fetcher
        self._prev: Raw = {}
        self._prev_t: float | None = None

    def scrape(self, now: float) -> dict[str, float]:
        """Fetch and update; raises ``ScrapeError`` (the previous totals are kept)."""
        return self.update(self._fetch(self.spec.url, self.spec.timeout_s), now)

    def update(self, text: str, now: float) -> dict[str, float]:
        """Values over the interval since the last update; the first update primes only.

        ``now`` is a monotonic time in seconds. Series missing from this scrape, a histogram
        with no new observations, and a first sight of a counter yield no value."""
        raw = extract(text, self.spec.metrics)
        out: dict[str, float] = {}
        dt = None if self._prev_t is None else now - self._prev_t
        for spec in self.spec.metrics:
            value = raw.get(spec.metric)
            prev = self._prev.get(spec.metric)
            if value is None:
                continue
            if spec.kind == "gauge":
                out[spec.metric] = float(value) * spec.scale  # type: ignore[arg-type]
            elif spec.kind == "counter" and isinstance(value, float):
                if isinstance(prev, float) and dt is not None and dt > 0:
                    # A drop means the app restarted: its counter counts again from zero.
                    increase = value - prev if value >= prev else value
                    out[spec.metric] = increase / dt * spec.scale
            elif isinstance(value, tuple) and isinstance(prev, tuple):
                (s1, c1), (s0, c0) = value, prev
                ds, dc = (s1 - s0, c1 - c0) if c1 >= c0 else (s1, c1)
                if dc > 0:
                    out[spec.metric] = ds / dc * spec.scale
        self._prev, self._prev_t = raw, now
        return {k: v for k, v in out.items() if math.isfinite(v) and v >= 0}
