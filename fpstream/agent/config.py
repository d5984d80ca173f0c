"""The agent's map from processes and cgroups to apps and instances, loaded from TOML or YAML.

A process belongs to the first app (in file order) with a match rule it satisfies, so nothing is
counted twice. Within a rule every given field must match (AND); an app's rules are alternatives
(OR). Without a config file the agent reports the whole host as one app (``default_config``):
a stable app id per host beats "top-N process names", whose membership changes as load shifts
and would make the fleet model see apps appear and vanish.

>>> cfg = parse_config({"apps": [{"app": "web", "match": {"name": "nginx"}}]}, hostname="vm-1")
>>> cfg.apps[0].match[0].name, cfg.apps[0].instance, cfg.host is None
('nginx', '{hostname}', True)
"""

from __future__ import annotations

import re
import socket
import string
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from fpstream.errors import FpstreamError
from fpstream.events import ID_PATTERN, ID_RULE, MAX_LABEL_VALUE_LEN, METRIC_NAME_PATTERN

SeriesKind = Literal["counter", "gauge", "histogram_mean"]
SERIES_KINDS: tuple[SeriesKind, ...] = ("counter", "gauge", "histogram_mean")
#: Fields an instance template may use; ``{pid}`` gives one instance per process.
TEMPLATE_FIELDS = frozenset({"hostname", "app", "pid", "name", "cgroup", "unit"})
MAX_LABELS = 32
# Core, proc.* and scraped metrics together must stay under the contract's 64 per sample.
MAX_SCRAPED = 40


class ConfigError(FpstreamError, ValueError):
    """The agent config is wrong; the message names the file and the field."""


@dataclass(frozen=True, slots=True)
class MatchRule:
    """Which processes belong to an app; unset fields are not checked."""

    name: str | None = None  # glob on the process name
    cmdline: re.Pattern[str] | None = None  # regex searched in the space-joined command line
    cgroup: str | None = None  # glob on the cgroup v2 path, e.g. "/system.slice/*"
    systemd_unit: str | None = None  # glob on the unit, e.g. "nginx.service"

    @property
    def uses_cgroup(self) -> bool:
        """Cgroup rules make the cgroup, not the processes, the source of resource figures."""
        return self.cgroup is not None or self.systemd_unit is not None


@dataclass(frozen=True, slots=True)
class SeriesSpec:
    """One ``app.*`` metric taken from a Prometheus series (summed over matching label sets)."""

    metric: str
    kind: SeriesKind
    series: str
    scale: float = 1.0
    labels: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class ScrapeSpec:
    url: str
    metrics: tuple[SeriesSpec, ...]
    timeout_s: float = 2.0


@dataclass(frozen=True, slots=True)
class AppSpec:
    app: str
    match: tuple[MatchRule, ...] = ()
    labels: dict[str, str] = field(default_factory=dict)
    instance: str = "{hostname}"
    scrape: ScrapeSpec | None = None
    # psutil has no per-process network counters; "host" attributes the host's (non-loopback)
    # traffic to this app, right when it is the only significant talker on the machine.
    net: Literal["none", "host"] = "none"

    @property
    def uses_cgroup(self) -> bool:
        return any(rule.uses_cgroup for rule in self.match)


@dataclass(frozen=True, slots=True)
class HostSpec:
    """A sample for the whole machine: host CPU, memory, disk and network."""

    app: str = "host"
    instance: str = "{hostname}"
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AgentConfig:
    apps: tuple[AppSpec, ...] = ()
    host: HostSpec | None = None
    hostname: str = ""
    cgroup_root: str | None = None  # None: the cgroup2 mount found in /proc/self/mountinfo
    # Processes younger than this are matched again every tick: a fork is matched as its
    # parent until it calls exec, and only then shows its own name and command line.
    settle_s: float = 5.0

    @property
    def needs_cgroups(self) -> bool:
        return any(app.uses_cgroup for app in self.apps)


def default_config(hostname: str | None = None) -> AgentConfig:
    """No config file: the whole host as app ``host``, instance = hostname."""
    return AgentConfig(host=HostSpec(), hostname=hostname or socket.gethostname())


def load_config(path: str | Path, hostname: str | None = None) -> AgentConfig:
    """Read a ``.toml``, ``.yaml`` or ``.yml`` file (anything else is read as TOML)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as ex:
        raise ConfigError(f"agent config {path}: cannot read: {ex.strerror}") from ex
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as ex:
            raise ConfigError(f"agent config {path}: invalid YAML: {ex}") from ex
    else:
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as ex:
            raise ConfigError(f"agent config {path}: invalid TOML: {ex}") from ex
    return parse_config(doc if doc is not None else {}, hostname=hostname, source=str(path))


def parse_config(doc: Any, hostname: str | None = None, source: str = "<config>") -> AgentConfig:
    """Validate a decoded config document; errors name the field, e.g. ``apps[1].match``."""
    p = _Parser(source)
    top = p.table(doc, "(top level)", {"apps", "host", "hostname", "cgroup_root", "settle_s",
                                       "fpstream"})
    apps = tuple(p.app(raw, f"apps[{i}]") for i, raw in enumerate(p.list(top.get("apps", []),
                                                                              "apps")))
    names = [a.app for a in apps]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise p.error("apps", f"app ids must be unique, repeated: {dup}")
    host = p.host(top["host"]) if "host" in top else None
    if not apps and host is None:
        raise p.error("apps", "expected at least one app, or a [host] table")
    settle = p.number(top.get("settle_s", 5.0), "settle_s", minimum=0.0)
    root = top.get("cgroup_root")
    if root is not None and not isinstance(root, str):
        raise p.error("cgroup_root", f"expected a directory path, got {root!r}")
    name = top.get("hostname", hostname or socket.gethostname())
    if not isinstance(name, str) or not name:
        raise p.error("hostname", f"expected a non-empty string, got {name!r}")
    return AgentConfig(apps, host, hostname or name, root, settle)


class _Parser:
    """Field checks that raise ``ConfigError`` naming the source and the field path."""

    def __init__(self, source: str) -> None:
        self.source = source

    def error(self, where: str, what: str) -> ConfigError:
        return ConfigError(f"agent config {self.source}: {where}: {what}")

    def table(self, raw: Any, where: str, allowed: set[str]) -> Mapping[str, Any]:
        if not isinstance(raw, Mapping):
            raise self.error(where, f"expected a table/mapping, got {type(raw).__name__}")
        unknown = sorted(set(raw) - allowed)
        if unknown:
            raise self.error(where, f"unknown field(s) {unknown}; expected some of "
                                    f"{sorted(allowed)}")
        return raw

    def list(self, raw: Any, where: str) -> list[Any]:
        if isinstance(raw, Mapping):
            return [raw]  # a single rule may be written without the list around it
        if not isinstance(raw, list):
            raise self.error(where, f"expected a list, got {type(raw).__name__}")
        return raw

    def ident(self, raw: Any, where: str) -> str:
        if not isinstance(raw, str) or not 1 <= len(raw) <= 128 or not ID_PATTERN.fullmatch(raw):
            raise self.error(where, f"expected an id matching {ID_RULE.format(n=128)}, "
                                    f"got {raw!r}")
        return raw

    def text(self, raw: Any, where: str) -> str:
        if not isinstance(raw, str) or not raw:
            raise self.error(where, f"expected a non-empty string, got {raw!r}")
        return raw

    def number(self, raw: Any, where: str, minimum: float, strict: bool = False) -> float:
        ok = isinstance(raw, int | float) and not isinstance(raw, bool)
        if not ok or raw < minimum or (strict and raw == minimum):
            op = ">" if strict else ">="
            raise self.error(where, f"expected a number {op} {minimum}, got {raw!r}")
        return float(raw)

    def labels(self, raw: Any, where: str) -> dict[str, str]:
        labels = self.table(raw, where, set(raw) if isinstance(raw, Mapping) else set())
        if len(labels) > MAX_LABELS:
            raise self.error(where, f"at most {MAX_LABELS} labels, got {len(labels)}")
        out: dict[str, str] = {}
        for key, value in labels.items():
            if not isinstance(key, str) or not 1 <= len(key) <= 128:
                raise self.error(where, f"label names are strings of 1-128 chars, got {key!r}")
            if not isinstance(value, str | int | float) or isinstance(value, bool):
                raise self.error(f"{where}.{key}", f"expected a string, got {value!r}")
            if len(str(value)) > MAX_LABEL_VALUE_LEN:
                raise self.error(f"{where}.{key}", f"at most {MAX_LABEL_VALUE_LEN} chars")
            out[key] = str(value)
        return out

    def template(self, raw: Any, where: str) -> str:
        text = self.text(raw, where)
        try:
            used = {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}
        except ValueError as ex:
            raise self.error(where, f"bad template {text!r}: {ex}") from ex
        bad = sorted(used - TEMPLATE_FIELDS)
        if bad:
            raise self.error(where, f"unknown placeholder(s) {bad}; expected some of "
                                    f"{sorted(TEMPLATE_FIELDS)}")
        return text

    def rule(self, raw: Any, where: str) -> MatchRule:
        t = self.table(raw, where, {"name", "cmdline", "cgroup", "systemd_unit"})
        if not t:
            raise self.error(where, "expected at least one of name, cmdline, cgroup, "
                                    "systemd_unit")
        pattern = None
        if "cmdline" in t:
            try:
                pattern = re.compile(self.text(t["cmdline"], f"{where}.cmdline"))
            except re.error as ex:
                raise self.error(f"{where}.cmdline", f"invalid regular expression: {ex}") from ex
        return MatchRule(
            name=self.text(t["name"], f"{where}.name") if "name" in t else None,
            cmdline=pattern,
            cgroup=self.text(t["cgroup"], f"{where}.cgroup") if "cgroup" in t else None,
            systemd_unit=(self.text(t["systemd_unit"], f"{where}.systemd_unit")
                          if "systemd_unit" in t else None),
        )

    def series(self, metric: str, raw: Any, where: str) -> SeriesSpec:
        if not metric.startswith("app.") or not METRIC_NAME_PATTERN.fullmatch(metric):
            raise self.error(where, "scraped metric names must start with 'app.' and match "
                                    "[A-Za-z0-9_.:-]{1,128}")
        t = self.table(raw, where, {*SERIES_KINDS, "scale", "labels"})
        kinds = [k for k in SERIES_KINDS if k in t]
        if len(kinds) != 1:
            raise self.error(where, f"expected exactly one of {list(SERIES_KINDS)}, got {kinds}")
        kind = kinds[0]
        scale = self.number(t.get("scale", 1.0), f"{where}.scale", 0.0, strict=True)
        labels = self.labels(t.get("labels", {}), f"{where}.labels")
        return SeriesSpec(metric, kind, self.text(t[kind], f"{where}.{kind}"), scale,
                          tuple(sorted(labels.items())))

    def scrape(self, raw: Any, where: str) -> ScrapeSpec:
        t = self.table(raw, where, {"url", "metrics", "timeout_s"})
        url = self.text(t.get("url"), f"{where}.url")
        if not url.startswith(("http://", "https://")):
            raise self.error(f"{where}.url", f"expected an http(s):// URL, got {url!r}")
        metrics = self.table(t.get("metrics"), f"{where}.metrics",
                             set(t.get("metrics") or ()))
        if not metrics or len(metrics) > MAX_SCRAPED:
            raise self.error(f"{where}.metrics", f"expected 1 to {MAX_SCRAPED} metrics, "
                                                 f"got {len(metrics)}")
        specs = tuple(self.series(str(name), spec, f"{where}.metrics[{name!r}]")
                      for name, spec in metrics.items())
        timeout = self.number(t.get("timeout_s", 2.0), f"{where}.timeout_s", 0.0, strict=True)
        return ScrapeSpec(url, specs, timeout)

    def app(self, raw: Any, where: str) -> AppSpec:
        t = self.table(raw, where, {"app", "labels", "match", "instance", "scrape", "net"})
        app = self.ident(t.get("app"), f"{where}.app")
        where = f"{where} ({app})"
        rules = tuple(self.rule(r, f"{where}.match[{i}]")
                      for i, r in enumerate(self.list(t.get("match", []), f"{where}.match")))
        scrape = self.scrape(t["scrape"], f"{where}.scrape") if "scrape" in t else None
        if not rules and scrape is None:
            raise self.error(where, "expected 'match' rules, a 'scrape' table, or both")
        instance = self.template(t.get("instance", "{hostname}"), f"{where}.instance")
        if scrape is not None and "{pid}" in instance:
            # One /metrics endpoint cannot be split between per-process instances.
            raise self.error(f"{where}.instance", "an app with 'scrape' needs one instance per "
                                                  "host: drop {pid} from the template")
        net = t.get("net", "none")
        if net not in ("none", "host"):
            raise self.error(f"{where}.net", f"expected 'none' or 'host', got {net!r}")
        labels = self.labels(t.get("labels", {}), f"{where}.labels")
        return AppSpec(app, rules, labels, instance, scrape, net)

    def host(self, raw: Any) -> HostSpec:
        t = self.table(raw, "host", {"app", "instance", "labels"})
        return HostSpec(
            app=self.ident(t.get("app", "host"), "host.app"),
            instance=self.template(t.get("instance", "{hostname}"), "host.instance"),
            labels=self.labels(t.get("labels", {}), "host.labels"),
        )
