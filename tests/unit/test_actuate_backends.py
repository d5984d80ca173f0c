"""Backends on their own: template rendering, id checks, the resize patch, atomic files."""

from __future__ import annotations

import doctest
import json
import logging
import os
import subprocess
import sys
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import orjson
import pytest

from fpstream.actuate import actuator, backends
from fpstream.actuate.actuator import TokenBucket, decode_entry
from fpstream.actuate.backends import (
    ApplyError,
    CommandBackend,
    FileBackend,
    KubernetesBackend,
    LogBackend,
    safe_name,
)
from fpstream.events import Allocation, encode

MIB = 1 << 20
HOSTILE = [
    "vm-1;touch${IFS}/tmp/pwned",
    "$(touch /tmp/pwned)",
    "`touch /tmp/pwned`",
    "vm 1",
    "vm-1\ntouch /tmp/pwned",
    "vm|cat",
    "vm>out",
    "",
    "x" * 129,
]


def alloc(app: str = "billing-api", instance: str = "vm-1", seq: int = 3,
          **reserve: float) -> Allocation:
    return Allocation(
        id=f"{app}/{instance}/{seq}", ts=1.7e9, app=app, instance=instance, kind="resize",
        instance_type="m.large",
        reserve=reserve or {"cpu_cores": 0.25, "mem_bytes": 512 * MIB, "disk_bytes": 1e10},
        predicted={"cpu_cores": 0.2}, cluster=2, confidence=0.8, policy="p95-h15",
        model_version=7)


class Recorder:
    """A ``subprocess.run`` stand-in that records its calls."""

    def __init__(self, returncode: int = 0, stdout: str = "ok", stderr: str = "",
                 raises: Exception | None = None) -> None:
        self.calls: list[tuple[list[str], dict[str, Any]]] = []
        self.returncode, self.stdout, self.stderr, self.raises = returncode, stdout, stderr, raises

    def __call__(self, argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        self.calls.append((argv, kwargs))
        if self.raises is not None:
            raise self.raises
        return subprocess.CompletedProcess(argv, self.returncode, self.stdout, self.stderr)


def test_doctests() -> None:
    assert doctest.testmod(backends).failed == 0


# -- command backend --------------------------------------------------------------------------


def test_template_renders_each_part_without_a_shell() -> None:
    run = Recorder()
    backend = CommandBackend(["/usr/bin/resize", "--app={app}", "{instance}", "{cpu_cores}",
                              "{cpu_millicores}m", "{mem_bytes}", "{mem_mib}Mi",
                              "{instance_type}", "{seq}", "{disk_bytes}"], runner=run)
    assert backend.apply(alloc()) == "ok"
    argv, kwargs = run.calls[0]
    assert argv == ["/usr/bin/resize", "--app=billing-api", "vm-1", "0.25", "250m",
                    str(512 * MIB), "512Mi", "m.large", "3", "10000000000"]
    assert kwargs["shell"] is False
    assert kwargs["timeout"] == 30.0


@pytest.mark.parametrize("part", ["{bogus}", "{app.__class__}", "{app[0]}", "{}", "{0}",
                                  "{cpu_cores:{app}}", "{app"])
def test_unknown_or_computed_placeholders_are_refused_at_construction(part: str) -> None:
    with pytest.raises(ValueError, match="template part"):
        CommandBackend(["resize", part])


@pytest.mark.parametrize("argv", [[], "resize {app}", ["{app}", "x"], [1, 2]])
def test_bad_templates_are_refused(argv: Any) -> None:
    with pytest.raises(ValueError):
        CommandBackend(argv)


@pytest.mark.parametrize("field", ["app", "instance"])
@pytest.mark.parametrize("value", HOSTILE + ["-rf", "--help"])
def test_ids_outside_the_contract_never_reach_the_runner(field: str, value: str) -> None:
    run = Recorder()
    backend = CommandBackend(["resize", "{app}", "{instance}"], runner=run)
    bad = replace(alloc(), **{field: value})
    with pytest.raises(ApplyError) as info:
        backend.apply(bad)
    assert info.value.retryable is False
    assert run.calls == []


def test_instance_type_is_checked_when_the_template_uses_it() -> None:
    run = Recorder()
    bad = replace(alloc(), instance_type="m.large;reboot")
    with pytest.raises(ApplyError, match="instance_type"):
        CommandBackend(["resize", "{instance_type}"], runner=run).apply(bad)
    assert run.calls == []


def test_missing_reserve_is_a_permanent_error() -> None:
    backend = CommandBackend(["resize", "{net_bps}"], runner=Recorder())
    with pytest.raises(ApplyError, match="net_bps") as info:
        backend.apply(alloc())
    assert not info.value.retryable


@pytest.mark.parametrize(("runner", "match"), [
    (Recorder(returncode=3, stderr="quota exceeded"), "exited with 3: quota exceeded"),
    (Recorder(raises=subprocess.TimeoutExpired("resize", 5)), "did not finish within"),
    (Recorder(raises=FileNotFoundError(2, "No such file")), "cannot run resize"),
])
def test_command_failures_are_retryable(runner: Recorder, match: str) -> None:
    with pytest.raises(ApplyError, match=match) as info:
        CommandBackend(["resize", "{instance}"], runner=runner).apply(alloc())
    assert info.value.retryable


def test_real_process_gets_odd_but_valid_ids_as_literal_arguments(tmp_path: Path) -> None:
    script = tmp_path / "record.py"
    out = tmp_path / "argv.json"
    script.write_text("import json, sys\n"
                      f"open({str(out)!r}, 'w').write(json.dumps(sys.argv[1:]))\n")
    odd = alloc(app="web.eu@team:x", instance="ns.pod-1:8080")
    backend = CommandBackend([sys.executable, str(script), "{app}", "{instance}", "{id}"])
    backend.apply(odd)
    assert json.loads(out.read_text()) == ["web.eu@team:x", "ns.pod-1:8080",
                                           "web.eu@team:x/ns.pod-1:8080/3"]


# -- kubernetes backend -----------------------------------------------------------------------


def test_resize_patch_rounds_up_to_millicores_and_mebibytes() -> None:
    a = alloc(cpu_cores=1.2001, mem_bytes=1.5 * 1024 * MIB + 1)
    patch = KubernetesBackend(container="web").patch(a)
    assert patch == {"spec": {"containers": [{"name": "web", "resources": {
        "requests": {"cpu": "1201m", "memory": "1537Mi"},
        "limits": {"cpu": "1201m", "memory": "1537Mi"}}}]}}


def test_resize_patch_without_limits_and_with_only_memory() -> None:
    patch = KubernetesBackend(set_limits=False).patch(alloc(mem_bytes=MIB))
    assert patch["spec"]["containers"][0]["resources"] == {"requests": {"memory": "1Mi"}}
    with pytest.raises(ApplyError, match="neither") as info:
        KubernetesBackend().patch(alloc(disk_bytes=1e9))
    assert not info.value.retryable


def test_kubectl_argv_uses_the_resize_subresource_and_a_strategic_patch() -> None:
    run = Recorder(stdout="pod/billing-api-vm-1 patched")
    backend = KubernetesBackend(namespace="prod", pod_template="{app}-{instance}",
                                context="east", runner=run)
    assert backend.apply(alloc()) == "pod/billing-api-vm-1 patched"
    argv, kwargs = run.calls[0]
    assert argv[:-1] == ["kubectl", "--context", "east", "patch", "pod", "billing-api-vm-1",
                         "-n", "prod", "--subresource", "resize", "--type", "strategic", "-p"]
    assert json.loads(argv[-1]) == backend.patch(alloc())
    assert kwargs["shell"] is False


@pytest.mark.parametrize("instance", ["pod_1", "pod@node", "Pod-1", "pod:1", "-pod"])
def test_pod_names_outside_dns_1123_are_refused(instance: str) -> None:
    run = Recorder()
    with pytest.raises(ApplyError, match="DNS-1123") as info:
        KubernetesBackend(runner=run).apply(alloc(instance=instance))
    assert not info.value.retryable
    assert run.calls == []


def test_kubernetes_settings_are_checked_at_construction() -> None:
    with pytest.raises(ValueError, match="namespace"):
        KubernetesBackend(namespace="Prod;x")
    with pytest.raises(ValueError, match="container"):
        KubernetesBackend(container="a b")
    with pytest.raises(ValueError, match="template part"):
        KubernetesBackend(pod_template="{pod}")


def test_kubectl_failure_is_retryable() -> None:
    run = Recorder(returncode=1, stderr="the server could not find the requested resource")
    with pytest.raises(ApplyError, match="could not find") as info:
        KubernetesBackend(runner=run).apply(alloc())
    assert info.value.retryable


# -- file backend -----------------------------------------------------------------------------


def test_file_backend_writes_one_json_file_per_instance(tmp_path: Path) -> None:
    backend = FileBackend(tmp_path)
    a = alloc(app="web.eu", instance="pod:1@node")
    backend.apply(a)
    path = tmp_path / "web.eu" / "pod%3A1%40node.json"
    assert backend.path_for(a) == path
    assert orjson.loads(path.read_bytes()) == orjson.loads(encode(a))
    newer = replace(a, id="web.eu/pod:1@node/4", reserve={"cpu_cores": 2.0})
    backend.apply(newer)
    assert orjson.loads(path.read_bytes())["id"] == newer.id
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temp files left
    assert path.stat().st_mode & 0o777 == 0o644


def test_file_backend_is_idempotent(tmp_path: Path) -> None:
    backend = FileBackend(tmp_path)
    backend.apply(alloc())
    first = backend.path_for(alloc()).read_bytes()
    backend.apply(alloc())
    assert backend.path_for(alloc()).read_bytes() == first


@pytest.mark.parametrize("value", [".", ".hidden", "@:", "a.", ".-."])
def test_file_names_stay_inside_the_directory(tmp_path: Path, value: str) -> None:
    backend = FileBackend(tmp_path / "out")
    a = alloc(app=value, instance=value)
    backend.apply(a)
    path = backend.path_for(a).resolve()
    assert path.is_relative_to((tmp_path / "out").resolve())
    assert path.parent.parent == (tmp_path / "out").resolve()


@pytest.mark.parametrize("value", ["..", "a/../../etc", "@:/", "a\\b"])
def test_path_like_ids_write_nothing(tmp_path: Path, value: str) -> None:
    backend = FileBackend(tmp_path / "out")
    with pytest.raises(ApplyError, match="must match") as info:
        backend.apply(alloc(app="web", instance=value))
    assert not info.value.retryable
    assert not (tmp_path / "out").exists()


def test_distinct_ids_get_distinct_file_names() -> None:
    ids = ["a%3Ab", "a:b", "a@b", ".a", "%2Ea", "a.b", "a-b", "a_b", "a."]
    valid = [i for i in ids if "%" not in i]
    assert len({safe_name(i) for i in valid}) == len(valid)
    with pytest.raises(ApplyError):
        safe_name("a%3Ab")  # '%' is outside the contract, so no id can forge an encoding


def test_failed_write_keeps_the_old_file_and_leaves_no_temp_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    backend = FileBackend(tmp_path)
    backend.apply(alloc())
    path = backend.path_for(alloc())
    before = path.read_bytes()

    def broken(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(ApplyError, match="No space left") as info:
        backend.apply(replace(alloc(), reserve={"cpu_cores": 9.0}))
    assert info.value.retryable
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_log_backend_changes_nothing(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="fpstream.actuate"):
        assert "dry run" in LogBackend().apply(alloc())
    assert "billing-api/vm-1/3" in caplog.text


# -- entry decoding and rate limit ------------------------------------------------------------


def entry(doc: dict[str, Any]) -> dict[bytes, bytes]:
    return {b"id": str(doc.get("id")).encode(), b"data": orjson.dumps(doc)}


def test_decode_entry_accepts_the_contract_and_ignores_extra_fields() -> None:
    doc = {**asdict(alloc()), "future_field": {"x": 1}}
    assert decode_entry(entry(doc)) == alloc()


@pytest.mark.parametrize(("change", "match"), [
    ({"id": "billing-api/vm-2/3"}, "id must be"),
    ({"id": "billing-api/vm-1/x"}, "id must be"),
    ({"instance": "vm-1;reboot", "id": "billing-api/vm-1;reboot/3"}, "instance must match"),
    ({"instance_type": "$(reboot)"}, "instance_type must match"),
    ({"reserve": [1, 2]}, "reserve"),
    ({"reserve": {"cpu_cores": "2"}}, "reserve.cpu_cores must be"),
    ({"reserve": {"cpu_cores": -1}}, "reserve.cpu_cores must be"),
    ({"v": 2}, "schema version 2"),
])
def test_decode_entry_refuses_what_breaks_the_contract(change: dict[str, Any],
                                                       match: str) -> None:
    with pytest.raises(ApplyError, match=match) as info:
        decode_entry(entry({**asdict(alloc()), **change}))
    assert not info.value.retryable


def test_decode_entry_refuses_missing_or_malformed_data() -> None:
    with pytest.raises(ApplyError, match="no 'data'"):
        decode_entry({b"id": b"x"})
    with pytest.raises(ApplyError, match="not JSON"):
        decode_entry({b"data": b"{"})
    doc = asdict(alloc())
    del doc["reserve"]
    with pytest.raises(ApplyError, match="lacks"):
        decode_entry(entry(doc))


def test_token_bucket_allows_a_burst_then_the_rate() -> None:
    now = [0.0]
    bucket = TokenBucket(2.0, clock=lambda: now[0])
    assert [bucket.wait_time() for _ in range(3)] == [0.0, 0.0, 0.5]
    now[0] = 0.5
    assert bucket.wait_time() == 0.0
    assert bucket.wait_time() == pytest.approx(0.5)
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    assert bucket.take(lambda: False, sleep=sleep)
    assert sum(slept) == pytest.approx(0.5)
    assert not bucket.take(lambda: True, sleep=lambda s: None)
    with pytest.raises(ValueError, match="rate"):
        TokenBucket(0)


def test_actuator_settings_are_checked_at_construction() -> None:
    from fpstream.settings import Settings

    with pytest.raises(ValueError, match="max_attempts"):
        actuator.Actuator(None, Settings(), LogBackend(), max_attempts=0)  # type: ignore[arg-type]
