"""Scraped series become rates and interval means, checked on text in the exposition format."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator

import pytest

from fpstream.agent.config import ScrapeSpec, SeriesSpec
from fpstream.agent.scrape import ScrapeError, Scraper, extract

SPEC = ScrapeSpec("http://unused/metrics", (
    SeriesSpec("app.req_rate", "counter", "http_requests_total"),
    SeriesSpec("app.ok_rate", "counter", "http_requests", labels=(("code", "200"),)),
    SeriesSpec("app.queue_len", "gauge", "queue_length"),
    SeriesSpec("app.db_query_ms", "histogram_mean", "db_query_seconds", scale=1000.0),
))


def exposition(reqs_ok: float, reqs_err: float, queue: float, q_sum: float, q_count: float) -> str:
    return f"""# HELP http_requests_total Requests.
# TYPE http_requests_total counter
http_requests_total{{code="200"}} {reqs_ok}
http_requests_total{{code="500"}} {reqs_err}
# TYPE queue_length gauge
queue_length {queue}
# TYPE db_query_seconds histogram
db_query_seconds_bucket{{le="0.01"}} {q_count}
db_query_seconds_bucket{{le="+Inf"}} {q_count}
db_query_seconds_sum {q_sum}
db_query_seconds_count {q_count}
"""


def test_extract_sums_label_sets_and_filters() -> None:
    raw = extract(exposition(90, 10, 3, 0.5, 100), SPEC.metrics)
    assert raw == {"app.req_rate": 100.0, "app.ok_rate": 90.0, "app.queue_len": 3.0,
                   "app.db_query_ms": (0.5, 100.0)}


def test_rates_and_means_over_the_interval() -> None:
    s = Scraper(SPEC)
    assert s.update(exposition(90, 10, 3, 0.5, 100), now=100.0) == {"app.queue_len": 3.0}
    out = s.update(exposition(180, 20, 5, 0.9, 200), now=110.0)
    assert out == pytest.approx({"app.req_rate": 10.0, "app.ok_rate": 9.0, "app.queue_len": 5.0,
                                 "app.db_query_ms": 4.0})


def test_counter_reset_counts_from_zero_and_idle_histogram_has_no_mean() -> None:
    s = Scraper(SPEC)
    s.update(exposition(1000, 0, 0, 5.0, 100), now=0.0)
    out = s.update(exposition(50, 0, 0, 5.0, 100), now=10.0)  # the app restarted
    assert out["app.req_rate"] == pytest.approx(5.0)
    assert "app.db_query_ms" not in out  # no queries in the interval: no mean to report


def test_missing_series_and_negative_gauges_are_left_out() -> None:
    s = Scraper(SPEC)
    assert s.update("queue_length -1\n", now=0.0) == {}
    assert s.update("other_metric 1\n", now=1.0) == {}


def test_garbage_is_a_scrape_error() -> None:
    with pytest.raises(ScrapeError, match="not the Prometheus text format"):
        Scraper(SPEC).update("{not: metrics}\n", now=0.0)


@pytest.fixture
def endpoint() -> Iterator[tuple[str, list[int]]]:
    hits = [0]

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            hits[0] += 1
            body = exposition(hits[0] * 10, 0, 1, 0.01 * hits[0], hits[0]).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/metrics", hits
    finally:
        server.shutdown()
        server.server_close()


def test_scrapes_a_real_endpoint(endpoint: tuple[str, list[int]]) -> None:
    url, hits = endpoint
    s = Scraper(ScrapeSpec(url, SPEC.metrics, timeout_s=2.0))
    s.scrape(now=0.0)
    out = s.scrape(now=2.0)
    assert hits[0] == 2
    assert out["app.req_rate"] == pytest.approx(5.0)
    assert out["app.db_query_ms"] == pytest.approx(10.0)


def test_unreachable_endpoint_is_a_scrape_error() -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    s = Scraper(ScrapeSpec(f"http://127.0.0.1:{port}/metrics", SPEC.metrics, timeout_s=0.5))
    with pytest.raises(ScrapeError, match="cannot scrape"):
        s.scrape(now=0.0)
