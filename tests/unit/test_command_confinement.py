"""The command backend never hands a program an argument that leaves its template's directory,
whatever the allocation holds (defence in depth: an entry may reach Redis without the decoder),
and a reserve it cannot represent is a permanent error."""

from __future__ import annotations

import posixpath
import subprocess
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fpstream.actuate.backends import ApplyError, CommandBackend, KubernetesBackend
from fpstream.events import Allocation

BASE = "/srv/desired"
TEMPLATES = [
    f"{BASE}/{{app}}.{{instance}}",
    f"{BASE}/{{app}}/{{instance}}",
    f"{BASE}/{{app}}{{instance}}",
    f"{BASE}/x/{{app}}{{instance}}/y",
    f"--out={BASE}/{{instance}}",
    f"{BASE}/pre-{{id}}",
    "{app}",
    "rel/{instance}.json",
]


def alloc(app: str = "web", instance: str = "vm-1", seq: int = 3, **reserve: float
          ) -> Allocation:
    return Allocation(id=f"{app}/{instance}/{seq}", ts=1.7e9, app=app, instance=instance,
                      kind="resize", instance_type="m.large",
                      reserve=reserve or {"cpu_cores": 0.5, "mem_bytes": 2.0 * (1 << 30)},
                      predicted={}, cluster=1, confidence=0.9, policy="p95-h15",
                      model_version=1)


class Runner:
    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def __call__(self, argv: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        self.calls.append(argv)
        return subprocess.CompletedProcess(argv, 0, "ok", "")


def inside(template: str, argument: str) -> bool:
    """The oracle: ``argument`` names something strictly below the directory of the fixed text
    before the template's first placeholder, relative paths taken from a working directory."""
    fixed = template.split("{", 1)[0]
    if "=" in fixed:  # --opt=PATH: the path is what follows the '='
        cut = fixed.index("=") + 1
        if argument[:cut] != fixed[:cut]:
            return False
        fixed, argument = fixed[cut:], argument[cut:]
    if "\x00" in argument or "\n" in argument:
        return False
    cwd = "/work/cwd"
    directory = posixpath.normpath(posixpath.join(cwd, posixpath.dirname(fixed)))
    target = posixpath.normpath(posixpath.join(cwd, argument.replace("\\", "/")))
    return target.startswith(directory.rstrip("/") + "/")


@pytest.mark.parametrize(("app", "instance"), [
    ("../escaped", "vm-1"),
    ("web", "../../etc/cron.d/x"),
    ("/etc", "passwd"),
    ("..", "x"),
    ("web", "..\\..\\x"),
    ("web", "vm-1\x00"),
    ("web", "vm\n1"),
])
def test_traversal_through_an_id_is_refused_before_anything_runs(app: str, instance: str
                                                                  ) -> None:
    run = Runner()
    backend = CommandBackend(["touch", f"{BASE}/{{app}}.{{instance}}"], runner=run)
    with pytest.raises(ApplyError) as info:
        backend.apply(alloc(app, instance))
    assert info.value.retryable is False
    assert run.calls == []


@pytest.mark.parametrize(("template", "app", "instance"), [
    (f"{BASE}/{{app}}{{instance}}/x", ".", "."),       # "." + "." is ".."
    (f"{BASE}/{{app}}{{instance}}", ".", "."),         # the parent directory itself
    (f"{BASE}/{{app}}", ".", "vm-1"),                  # the directory itself
    (f"{BASE}/a/{{app}}{{instance}}", ".", "."),
])
def test_valid_ids_that_compose_a_traversal_are_refused(template: str, app: str,
                                                        instance: str) -> None:
    run = Runner()
    with pytest.raises(ApplyError, match="leaves") as info:
        CommandBackend(["touch", template], runner=run).apply(alloc(app, instance))
    assert info.value.retryable is False
    assert run.calls == []


def test_arguments_inside_their_directory_pass_unchanged() -> None:
    run = Runner()
    backend = CommandBackend(["resize", f"{BASE}/{{app}}.{{instance}}", "--cpu",
                              "{cpu_millicores}m", f"--out={BASE}/{{instance}}", "{id}",
                              "{app}{instance}"], runner=run)
    backend.apply(alloc(".web", "vm.1."))
    assert run.calls == [["resize", f"{BASE}/.web.vm.1.", "--cpu", "500m",
                          f"--out={BASE}/vm.1.", ".web/vm.1./3", ".webvm.1."]]


ID_TEXT = st.text(alphabet=st.sampled_from("a-.:@_/\\"), min_size=1, max_size=12)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(template=st.sampled_from(TEMPLATES), app=ID_TEXT, instance=ID_TEXT)
@example(template=TEMPLATES[0], app="../x", instance="y")
@example(template=TEMPLATES[2], app=".", instance=".")
def test_no_rendered_argument_resolves_outside_its_directory(template: str, app: str,
                                                             instance: str) -> None:
    run = Runner()
    backend = CommandBackend(["prog", template], runner=run)
    try:
        backend.apply(alloc(app, instance))
    except ApplyError as ex:
        assert not ex.retryable
        assert run.calls == []
        return
    [argv] = run.calls
    assert inside(template, argv[1]), (template, argv[1])


@settings(max_examples=400)
@given(template=st.sampled_from(TEMPLATES),
       values=st.fixed_dictionaries({k: st.text(max_size=16) for k in ("app", "instance", "id")}))
def test_substitution_alone_confines_any_text(template: str, values: dict[str, str]) -> None:
    """Independent of the id grammar: whatever text the values hold."""
    from fpstream.actuate.backends import substitute

    try:
        argument = substitute(template, values)
    except ApplyError as ex:
        assert not ex.retryable
        return
    assert inside(template, argument), (template, argument)


@pytest.mark.parametrize("reserve", [{"cpu_cores": 1e308}, {"cpu_cores": 1.8e305},
                                     {"mem_bytes": 1e308, "cpu_cores": 1e308}])
def test_a_reserve_too_large_to_represent_is_a_permanent_error(reserve: dict[str, float]
                                                                ) -> None:
    run = Runner()
    with pytest.raises(ApplyError, match="too large") as info:
        CommandBackend(["resize", "{instance}", "{cpu_millicores}m"], runner=run).apply(
            alloc(**reserve))
    assert info.value.retryable is False
    assert run.calls == []
    with pytest.raises(ApplyError, match="too large") as info:
        KubernetesBackend(runner=run).apply(alloc(**reserve))
    assert info.value.retryable is False
    assert run.calls == []


def test_a_large_but_representable_reserve_still_renders() -> None:
    run = Runner()
    CommandBackend(["resize", "{cpu_millicores}", "{mem_mib}"], runner=run).apply(
        replace(alloc(), reserve={"cpu_cores": 1e300, "mem_bytes": 1e300}))
    assert run.calls and run.calls[0][1].isdigit()
