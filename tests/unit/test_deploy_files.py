"""The files in deploy/ agree with the code: commands parse, metrics exist, settings are real."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import fields
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from prometheus_client import CollectorRegistry

from fpstream.actuate.metrics import ActuatorMetrics
from fpstream.agent.run import AgentMetrics
from fpstream.io.metrics import FlowMetrics
from fpstream.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
RECOVERY = "/var/lib/fpstream/recovery"
SETTING_NAMES = {f.name for f in fields(Settings)}
# Container variables that are not settings: read by flows/fleet.py or by the pod's script.
NOT_SETTINGS = {"FPSTREAM_TAIL", "FPSTREAM_CONFIG", "FLOW_REPLICAS"}


def yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yml", ".yaml"))


def k8s_docs() -> list[dict[str, Any]]:
    docs = []
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def k8s(kind: str, name: str) -> dict[str, Any]:
    found = [d for d in k8s_docs() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def configmap() -> dict[str, str]:
    return k8s("ConfigMap", "fpstream")["data"]


def dashboard() -> dict[str, Any]:
    return json.loads((DEPLOY / "grafana" / "fpstream.json").read_text())


def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def container(pod_spec: dict[str, Any], name: str, init: bool = False) -> dict[str, Any]:
    key = "initContainers" if init else "containers"
    return next(c for c in pod_spec[key] if c["name"] == name)


def run_script(script: str, env: dict[str, str], tmp_path: Path) -> list[str]:
    """Run a container's ``sh -c`` script with a stub ``python`` that prints its argv."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    stub = bin_dir / "python"
    stub.write_text('#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done\n')
    stub.chmod(0o755)
    out = subprocess.run(["sh", "-c", script], env={"PATH": f"{bin_dir}:/usr/bin:/bin", **env},
                         capture_output=True, text=True, check=True)
    return out.stdout.splitlines()


def bytewax_args(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> Any:
    """Parse a worker's arguments with ``bytewax.run``'s own parser."""
    from bytewax import run

    for key in list(os.environ):
        if key.startswith("BYTEWAX_"):
            monkeypatch.delenv(key)
    monkeypatch.setattr(sys, "argv", ["bytewax.run", *argv])
    return run._parse_args()


def cli_context(args: list[str]) -> Any:
    """Parse ``fpstream ARGS`` with the real CLI without running the command."""
    from fpstream.cli import app

    group = typer.main.get_command(app)
    sub = group.commands[args[0]]  # type: ignore[attr-defined]
    return sub.make_context(args[0], list(args[1:]))


def exported_metric_names() -> set[str]:
    """Every series name the flow, actuator and agent export, with the suffixes Prometheus
    sees (``_total`` for counters; ``_bucket``/``_count``/``_sum`` for histograms)."""
    registries = [FlowMetrics().registry, ActuatorMetrics(CollectorRegistry()).registry,
                  AgentMetrics(CollectorRegistry(), process=False).registry]
    names: set[str] = set()
    for registry in registries:
        for family in registry.collect():
            suffixes = {"counter": ("_total", "_created"),
                        "histogram": ("_bucket", "_count", "_sum", "_created"),
                        "summary": ("_count", "_sum", "_created")}.get(family.type, ("",))
            names |= {family.name + s for s in suffixes}
            names |= {s.name for s in family.samples}
    return names


def referenced_metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\bfpstream_[a-z0-9_]+", expr))


def rule_exprs() -> list[str]:
    doc = yaml.safe_load((DEPLOY / "prometheus" / "rules.yml").read_text())
    return [r["expr"] for g in doc["groups"] for r in g["rules"]]


def dashboard_exprs() -> list[str]:
    return [t["expr"] for p in dashboard()["panels"] for t in p.get("targets", [])]


# --- files parse ---------------------------------------------------------------------------

def test_every_yaml_file_parses() -> None:
    files = yaml_files()
    assert len(files) >= 8, files
    for path in files:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        assert docs, f"{path} is empty"


def test_dashboard_parses_and_every_panel_queries() -> None:
    dash = dashboard()
    assert dash["uid"] == "fpstream"
    assert len(dash["panels"]) >= 10
    assert all(p["targets"] and all(t["expr"] for t in p["targets"]) for p in dash["panels"])


@pytest.mark.skipif(shutil.which("promtool") is None,
                    reason="promtool not installed (Debian package prometheus)")
def test_promtool_accepts_rules_and_config() -> None:
    for args in (["check", "rules", str(DEPLOY / "prometheus" / "rules.yml")],
                 ["check", "config", str(DEPLOY / "prometheus" / "prometheus.yml")]):
        out = subprocess.run(["promtool", *args], capture_output=True, text=True)
        assert out.returncode == 0, out.stdout + out.stderr


def test_dockerfile_builds_one_non_root_image() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.M)
    user = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert user and user[-1].split(":")[0] not in ("root", "0")
    for src in re.findall(r"^COPY\s+(\S+)", text, re.M):
        assert (ROOT / src).exists(), f"Dockerfile copies missing {src}"


# --- the flow StatefulSet ------------------------------------------------------------------

def test_statefulset_runs_bytewax_cluster_with_recovery(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    service = k8s("Service", "fpstream-flow")
    assert service["spec"]["clusterIP"] == "None"
    sts = k8s("StatefulSet", "fpstream-flow")
    assert sts["spec"]["serviceName"] == "fpstream-flow"
    replicas = sts["spec"]["replicas"]
    assert replicas == 2
    pod = sts["spec"]["template"]["spec"]
    flow = container(pod, "flow")
    env = {e["name"]: e["value"] for e in flow["env"]}
    assert int(env["FLOW_REPLICAS"]) == replicas
    assert flow["command"] == ["sh", "-c"]

    peers = ";".join(f"fpstream-flow-{k}.fpstream-flow:2101" for k in range(replicas))
    for ordinal in range(replicas):
        argv = run_script(flow["args"][0], {**env, "HOSTNAME": f"fpstream-flow-{ordinal}"},
                          tmp_path)
        assert argv[:3] == ["-m", "bytewax.run", "flows.fleet:flow"]
        args = bytewax_args(argv[2:], monkeypatch)
        assert args.import_str == "flows.fleet:flow"
        assert args.process_id == ordinal
        assert args.addresses == peers
        assert args.workers_per_process == 1
        assert args.recovery_directory == Path(RECOVERY)
        assert args.snapshot_interval == timedelta(seconds=10)
        assert args.backup_interval == timedelta(seconds=30)

    mounts = {m["name"]: m["mountPath"] for m in flow["volumeMounts"]}
    claims = {c["metadata"]["name"] for c in sts["spec"]["volumeClaimTemplates"]}
    assert mounts == {"recovery": RECOVERY} and "recovery" in claims


def test_statefulset_init_deals_recovery_partitions_over_pod_volumes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each pod's volume gets its own share; together they hold every partition exactly once
    (Bytewax needs the cluster to see each one once, not every pod to see all of them)."""
    sts = k8s("StatefulSet", "fpstream-flow")
    replicas = sts["spec"]["replicas"]
    init = container(sts["spec"]["template"]["spec"], "recovery", init=True)
    assert init["command"] == ["python", "-c"]
    assert {m["mountPath"] for m in init["volumeMounts"]} == {RECOVERY}
    env = {e["name"]: e["value"] for e in init["env"]}
    partitions, owners = int(env["RECOVERY_PARTITIONS"]), int(env["RECOVERY_OWNERS"])
    assert owners == replicas and partitions >= replicas
    claims = sts["spec"]["volumeClaimTemplates"]
    assert [c["spec"]["accessModes"] for c in claims] == [["ReadWriteOnce"]]

    def run_init(ordinal: int) -> set[str]:
        volume = tmp_path / f"pod-{ordinal}"
        script = init["args"][0].replace(RECOVERY, str(volume))
        for key, value in {**env, "HOSTNAME": f"fpstream-flow-{ordinal}"}.items():
            monkeypatch.setenv(key, value)
        exec(compile(script, "recovery-init", "exec"), {})
        return {f.name for f in volume.glob("part-*")}

    shares = [run_init(k) for k in range(replicas)]
    assert all(shares)
    assert set().union(*shares) == {f"part-{j}.sqlite3" for j in range(partitions)}
    assert sum(len(s) for s in shares) == partitions  # no index on two volumes
    assert run_init(replicas) == set()  # a pod added by a scale-out owns none
    # Already initialised, even with the partitions moved away on a scale-in: nothing is made.
    for f in (tmp_path / "pod-0").glob("part-*"):
        f.unlink()
    assert run_init(0) == set()


def test_statefulset_init_creates_the_configured_topics(monkeypatch: pytest.MonkeyPatch) -> None:
    import fpstream.io.kafka

    sts = k8s("StatefulSet", "fpstream-flow")
    init = container(sts["spec"]["template"]["spec"], "topics", init=True)
    assert init["command"] == ["python", "-c"]
    calls = []
    monkeypatch.setattr(fpstream.io.kafka, "create_topics",
                        lambda s, names, partitions: calls.append((names, partitions)))
    for key, value in configmap().items():
        monkeypatch.setenv(key, value)
    exec(compile(init["args"][0], "topics-init", "exec"), {})
    cm = configmap()
    assert calls == [([cm["FPSTREAM_TOPIC_METRICS"], cm["FPSTREAM_TOPIC_DEPLOYS"],
                       cm["FPSTREAM_TOPIC_ALLOCATIONS"], cm["FPSTREAM_TOPIC_ANOMALIES"],
                       cm["FPSTREAM_TOPIC_DEADLETTER"]], int(cm["FPSTREAM_PARTITIONS"]))]


def test_metrics_ports_and_scrape_annotations_agree() -> None:
    cm = configmap()
    for kind, name, port in (("StatefulSet", "fpstream-flow", cm["FPSTREAM_METRICS_PORT"]),
                             ("Deployment", "fpstream-actuator", "9109")):
        template = k8s(kind, name)["spec"]["template"]
        notes = template["metadata"]["annotations"]
        assert notes["prometheus.io/scrape"] == "true"
        assert notes["prometheus.io/port"] == port
        c = template["spec"]["containers"][0]
        assert {p["name"]: p["containerPort"] for p in c["ports"]}["metrics"] == int(port)


# --- commands the manifests run ------------------------------------------------------------

def test_actuator_command_options_exist() -> None:
    from typer.testing import CliRunner

    from fpstream.cli import app

    dep = k8s("Deployment", "fpstream-actuator")
    command = dep["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[:2] == ["fpstream", "actuate"]
    help_text = CliRunner().invoke(app, ["actuate", "--help"], terminal_width=200).output
    for option in (a for a in command if a.startswith("--")):
        assert option in help_text, f"{option} not in `fpstream actuate --help`"
    ctx = cli_context(command[1:])
    assert ctx.params["backend"] == "log" and ctx.params["metrics_port"] == 9109


def test_compose_commands_parse_and_env_are_settings() -> None:
    doc = compose()
    services = doc["services"]
    assert {"kafka", "redis", "flow", "actuator", "prometheus", "grafana"} <= set(services)
    for name in ("flow", "actuator", "simulate"):
        command = services[name]["command"]
        assert command[0] == "fpstream"
        cli_context(command[1:])  # raises on an unknown option or a bad value
        env = services[name]["environment"]
        assert all(k[len("FPSTREAM_"):].lower() in SETTING_NAMES for k in env), env
        load_settings(env={k: str(v) for k, v in env.items()})
    flow = cli_context(services["flow"]["command"][1:]).params
    assert str(flow["recovery_dir"]) == RECOVERY and flow["create_topics"]
    mounts = [v.split(":")[0] for v in services["prometheus"]["volumes"]]
    assert "./prometheus" in mounts
    for volume in services["grafana"]["volumes"]:
        assert (DEPLOY / volume.split(":")[0]).exists(), volume


# --- metrics and settings named in deploy/ exist in the code ------------------------------

def test_every_metric_in_rules_and_dashboard_is_exported() -> None:
    exported = exported_metric_names()
    assert "fpstream_ingest_samples_total" in exported
    assert "fpstream_step_latency_seconds_bucket" in exported
    assert "fpstream_ingest_samples" not in exported  # a counter is only seen with _total
    for source, exprs in (("rules.yml", rule_exprs()), ("fpstream.json", dashboard_exprs())):
        referenced = set().union(*(referenced_metric_names(e) for e in exprs))
        assert len(referenced) >= 5, source
        missing = referenced - exported
        assert not missing, f"{source} uses metrics no code exports: {sorted(missing)}"


def test_configmap_keys_are_settings_with_valid_values() -> None:
    cm = configmap()
    for key in cm:
        assert key.startswith("FPSTREAM_"), key
        assert key not in NOT_SETTINGS
        assert key[len("FPSTREAM_"):].lower() in SETTING_NAMES, f"{key} is no setting"
    settings = load_settings(env=cm)
    assert settings.metrics_port == int(cm["FPSTREAM_METRICS_PORT"])


# --- exposure ------------------------------------------------------------------------------

def test_metrics_listen_on_all_interfaces_only_inside_pods_and_containers() -> None:
    """Processes bind 127.0.0.1 by default; a pod or a container must be reachable from outside
    it (kubelet probes, Prometheus), so the manifests say so, and the host publishes nothing
    beyond its own loopback interface."""
    cm = configmap()
    assert cm["FPSTREAM_METRICS_HOST"] == "0.0.0.0"
    assert load_settings(env=cm).metrics_host == "0.0.0.0"
    services = compose()["services"]
    for name in ("flow", "actuator"):
        env = services[name]["environment"]
        assert env["FPSTREAM_METRICS_HOST"] == "0.0.0.0", name
        assert load_settings(env={k: str(v) for k, v in env.items()}).metrics_host == "0.0.0.0"
    published = [(name, str(p)) for name, s in services.items() for p in s.get("ports", [])]
    assert published, "compose publishes Grafana, Prometheus and the metrics ports"
    for name, port in published:
        assert port.startswith("127.0.0.1:"), f"{name} publishes {port} on every interface"
