"""The agent config: TOML and YAML load the same way, and every mistake names its field."""

from __future__ import annotations

from pathlib import Path

import pytest

from fpstream.agent.config import (
    ConfigError,
    HostSpec,
    SeriesSpec,
    default_config,
    load_config,
    parse_config,
)

TOML = """
hostname = "vm-17"

[host]
app = "node"
labels = {rack = "r1"}

[[apps]]
app = "billing-api"
labels = {team = "payments", image = "billing:4.2"}
instance = "{hostname}"
net = "host"
match = [{name = "gunicorn", cmdline = "billing"}, {systemd_unit = "billing*.service"}]

[apps.scrape]
url = "http://127.0.0.1:8000/metrics"
timeout_s = 1.5

[apps.scrape.metrics]
"app.req_rate" = {counter = "http_requests_total", labels = {code = "200"}}
"app.queue_len" = {gauge = "queue_length"}
"app.db_query_ms" = {histogram_mean = "db_query_seconds", scale = 1000}

[[apps]]
app = "workers"
instance = "{hostname}-{pid}"
match = {cgroup = "/system.slice/worker@*.service"}
"""

YAML = """
hostname: vm-17
host: {app: node, labels: {rack: r1}}
apps:
  - app: billing-api
    labels: {team: payments, image: "billing:4.2"}
    instance: "{hostname}"
    net: host
    match:
      - {name: gunicorn, cmdline: billing}
      - {systemd_unit: "billing*.service"}
    scrape:
      url: http://127.0.0.1:8000/metrics
      timeout_s: 1.5
      metrics:
        app.req_rate: {counter: http_requests_total, labels: {code: "200"}}
        app.queue_len: {gauge: queue_length}
        app.db_query_ms: {histogram_mean: db_query_seconds, scale: 1000}
  - app: workers
    instance: "{hostname}-{pid}"
    match: {cgroup: "/system.slice/worker@*.service"}
"""


def test_toml_and_yaml_give_the_same_config(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text(TOML)
    (tmp_path / "a.yaml").write_text(YAML)
    toml = load_config(tmp_path / "a.toml")
    yaml = load_config(tmp_path / "a.yaml")
    assert toml == yaml
    billing, workers = toml.apps
    assert toml.hostname == "vm-17"
    assert toml.host == HostSpec("node", "{hostname}", {"rack": "r1"})
    assert billing.labels == {"team": "payments", "image": "billing:4.2"}
    assert billing.match[0].name == "gunicorn"
    assert billing.match[0].cmdline is not None and billing.match[0].cmdline.pattern == "billing"
    assert billing.match[1].systemd_unit == "billing*.service" and billing.uses_cgroup
    assert billing.net == "host"
    assert billing.scrape is not None and billing.scrape.timeout_s == 1.5
    assert billing.scrape.metrics == (
        SeriesSpec("app.req_rate", "counter", "http_requests_total", 1.0, (("code", "200"),)),
        SeriesSpec("app.queue_len", "gauge", "queue_length"),
        SeriesSpec("app.db_query_ms", "histogram_mean", "db_query_seconds", 1000.0),
    )
    assert workers.instance == "{hostname}-{pid}" and workers.match[0].cgroup is not None
    assert toml.needs_cgroups


def test_hostname_argument_overrides_the_file(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text(TOML)
    assert load_config(tmp_path / "a.toml", hostname="other").hostname == "other"


def test_no_config_means_the_whole_host() -> None:
    cfg = default_config("vm-1")
    assert cfg.apps == () and cfg.host == HostSpec() and cfg.hostname == "vm-1"
    assert not cfg.needs_cgroups


def _app(**fields: object) -> dict[str, object]:
    return {"apps": [{"app": "web", "match": {"name": "nginx"}, **fields}]}


@pytest.mark.parametrize(("doc", "names"), [
    ({"apps": [{"match": {"name": "x"}}]}, "apps[0].app"),
    ({"apps": [{"app": "bad id!", "match": {"name": "x"}}]}, "apps[0].app"),
    ({"apps": [{"app": "web"}]}, "apps[0] (web)"),
    (_app(match={"cmdline": "("}), "apps[0] (web).match[0].cmdline"),
    (_app(match={}), "apps[0] (web).match[0]"),
    (_app(match={"nmae": "x"}), "unknown field(s) ['nmae']"),
    (_app(instance="{host}"), "apps[0] (web).instance"),
    (_app(net="vpn"), "apps[0] (web).net"),
    (_app(labels={"team": ["a"]}), "apps[0] (web).labels.team"),
    (_app(scrape={"url": "ftp://x", "metrics": {"app.q": {"gauge": "q"}}}),
     "apps[0] (web).scrape.url"),
    (_app(scrape={"url": "http://x", "metrics": {}}), "apps[0] (web).scrape.metrics"),
    (_app(scrape={"url": "http://x", "metrics": {"req": {"gauge": "q"}}}),
     "scrape.metrics['req']"),
    (_app(scrape={"url": "http://x", "metrics": {"app.q": {"gauge": "q", "counter": "c"}}}),
     "expected exactly one of"),
    (_app(scrape={"url": "http://x", "metrics": {"app.q": {"gauge": "q", "scale": 0}}}),
     "scrape.metrics['app.q'].scale"),
    (_app(instance="{pid}", scrape={"url": "http://x", "metrics": {"app.q": {"gauge": "q"}}}),
     "drop {pid}"),
    ({"apps": [{"app": "a", "match": {"name": "x"}}, {"app": "a", "match": {"name": "y"}}]},
     "repeated: ['a']"),
    ({}, "at least one app"),
    ({"host": {}, "settle_s": -1}, "settle_s"),
    ({"host": {}, "bogus": 1}, "unknown field(s) ['bogus']"),
    ({"host": {"app": "a b"}}, "host.app"),
])
def test_errors_name_the_field(doc: dict[str, object], names: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(doc, source="t.toml")
    assert names in str(info.value)
    assert str(info.value).startswith("agent config t.toml: ")


def test_unreadable_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")
    (tmp_path / "bad.toml").write_text("apps = [")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(tmp_path / "bad.toml")
    (tmp_path / "bad.yml").write_text("apps: [")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(tmp_path / "bad.yml")


def test_settings_table_is_allowed_next_to_apps() -> None:
    cfg = parse_config({"fpstream": {"brokers": "k:9092"}, **_app()})
    assert cfg.apps[0].app == "web"


@pytest.mark.parametrize("module", ["config", "cgroup", "scrape", "buffer"])
def test_docstring_examples_run(module: str) -> None:
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(f"fpstream.agent.{module}"))
    assert result.attempted > 0 and result.failed == 0
