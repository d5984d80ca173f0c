"""Backends apply one allocation to the world; the actuator decides when and how often.

Each backend is an object with a ``name`` and ``apply(alloc) -> str`` that returns a short
description of what it did and raises ``ApplyError`` when it could not. An error says whether a
retry can help (``retryable``): a timed-out command can; an id that would be unsafe to pass on,
an argument that would leave its directory or a reserve too large to represent cannot, so the
actuator dead-letters those at once.

Nothing here talks to Redis: a backend can be used, and tested, on its own.

>>> b = CommandBackend(["echo", "{app}", "cpu={cpu_millicores}m"])
>>> b.render(_example())
['echo', 'billing-api', 'cpu=250m']
>>> KubernetesBackend(namespace="prod").patch(_example())["spec"]["containers"][0]["resources"]
{'requests': {'cpu': '250m', 'memory': '512Mi'}, 'limits': {'cpu': '250m', 'memory': '512Mi'}}
"""

from __future__ import annotations

import json
import logging
import math
import os
import posixpath
import re
import string
import subprocess
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

import orjson

from fpstream.errors import FpstreamError
from fpstream.events import ID_PATTERN, ID_RULE, Allocation

log = logging.getLogger("fpstream.actuate")

#: ``subprocess.run``-compatible callable; tests pass a recorder instead.
Runner = Callable[..., "subprocess.CompletedProcess[str]"]

MAX_ID_LEN = 128
_MIB = 1 << 20
# A Kubernetes object name (DNS-1123 subdomain) and a namespace or container name (label).
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


class ApplyError(FpstreamError):
    """A backend could not apply an allocation; ``retryable`` says whether trying again helps."""

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


class Backend(Protocol):
    """What the actuator needs from a backend."""

    name: str

    def apply(self, alloc: Allocation) -> str:
        """Apply ``alloc``; return what was done, raise ``ApplyError`` if it was not."""
        ...


def check_allocation_id(alloc: Allocation) -> str:
    """``alloc.id`` if it is ``<app>/<instance>/<seq>`` for its own app and instance."""
    seq = alloc.id.rsplit("/", 1)[-1] if isinstance(alloc.id, str) else ""
    if not seq.isdigit() or alloc.id != f"{alloc.app}/{alloc.instance}/{seq}":
        msg = f"id must be '<app>/<instance>/<seq>' for this app and instance, got {alloc.id!r}"
        raise ApplyError(msg, retryable=False)
    return alloc.id


def check_id(name: str, value: object) -> str:
    """``value`` if it is an id the wire contract allows, else a non-retryable ``ApplyError``."""
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_ID_LEN \
            or not ID_PATTERN.fullmatch(value):
        msg = f"{name} must match {ID_RULE.format(n=MAX_ID_LEN)}, got {value!r:.160}"
        raise ApplyError(msg, retryable=False)
    return value


def placeholders(alloc: Allocation) -> dict[str, Any]:
    """The values a template may use; sizes are whole units so commands get integers.

    A size with no integer (1e308 cores in millicores) is a non-retryable ``ApplyError``.
    """
    reserve = alloc.reserve
    values: dict[str, Any] = {
        "id": alloc.id, "app": alloc.app, "instance": alloc.instance,
        "seq": alloc.id.rsplit("/", 1)[-1], "kind": alloc.kind,
        "instance_type": alloc.instance_type, "policy": alloc.policy,
        "cluster": alloc.cluster, "confidence": alloc.confidence,
    }
    for key in ("cpu_cores", "mem_bytes", "disk_bytes", "disk_bps", "net_bps"):
        if key in reserve:
            value = reserve[key]
            values[key] = value if key == "cpu_cores" else _whole(value, f"reserve.{key}")
    if "cpu_cores" in reserve:
        values["cpu_millicores"] = _millicores(reserve["cpu_cores"])
    if "mem_bytes" in reserve:
        values["mem_mib"] = _mebibytes(reserve["mem_bytes"])
    return values


#: Every placeholder a template may name; anything else is refused at construction.
PLACEHOLDERS: frozenset[str] = frozenset({
    "id", "app", "instance", "seq", "kind", "instance_type", "policy", "cluster", "confidence",
    "cpu_cores", "mem_bytes", "disk_bytes", "disk_bps", "net_bps", "cpu_millicores", "mem_mib",
})
_STRING_PLACEHOLDERS = frozenset({"id", "app", "instance", "instance_type", "policy", "kind"})


def _whole(value: float, what: str) -> int:
    """``ceil(value)``; the same allocation would fail the same way, so not retryable."""
    if not math.isfinite(value):
        raise ApplyError(f"{what} is too large to represent", retryable=False)
    return int(math.ceil(value))


def _millicores(cores: float) -> int:
    # Rounded up: a reservation below the prediction is the failure the policy exists to avoid.
    return max(1, _whole(cores * 1000 - 1e-9, f"reserve.cpu_cores {cores:.6g} in millicores"))


def _mebibytes(nbytes: float) -> int:
    return max(1, _whole(nbytes / _MIB - 1e-9, f"reserve.mem_bytes {nbytes:.6g} in MiB"))


def template_fields(template: str) -> list[str]:
    """Placeholder names in ``template``; ``ValueError`` for unknown or computed ones."""
    names = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as ex:
        raise ValueError(f"template part {template!r} is not a valid format string: {ex}") from ex
    for _, field, spec, _ in parsed:
        if field is None:
            continue
        if field not in PLACEHOLDERS:
            known = ", ".join(sorted(PLACEHOLDERS))
            msg = f"template part {template!r} names {{{field}}}; expected one of: {known}"
            raise ValueError(msg)
        if spec and "{" in spec:
            raise ValueError(f"template part {template!r}: nested placeholders are not allowed")
        names.append(field)
    return names


# Where a relative argument starts; NUL cannot be in an argument, so no real path looks like it.
_CWD = "/\0"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def substitute(part: str, values: Mapping[str, Any]) -> str:
    """One template part filled from ``values``, refused if the result leaves its directory.

    The directory is that of the fixed text before the first placeholder (after the ``=`` of
    ``--option=PATH``; the working directory when that text has no ``/``). The result must
    name something strictly inside it once normalised (``\\`` counts as a separator), and
    hold no control character. The check is on the result, not on each value, so it holds
    whatever the values are: ``..``, an absolute path, or ids harmless alone that make
    ``..`` together. A refusal is a non-retryable ``ApplyError``.

    >>> substitute("/srv/desired/{app}.json", {"app": "web"})
    '/srv/desired/web.json'
    >>> substitute("/srv/desired/{app}{instance}/x", {"app": ".", "instance": "."})
    Traceback (most recent call last):
    ...
    fpstream.actuate.backends.ApplyError: argument '/srv/desired/../x' leaves /srv/desired
    """
    try:
        argument = part.format_map(values)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as ex:
        raise ApplyError(f"template part {part!r} cannot be filled: {ex}", retryable=False) from ex
    fixed = _fixed_prefix(part)
    if fixed is None:  # nothing substituted: the operator's own text
        return argument
    if _CONTROL.search(argument):
        raise ApplyError(f"argument {argument!r:.200} holds a control character",
                         retryable=False)
    head = fixed[:fixed.index("=") + 1] if "=" in fixed else ""
    directory = posixpath.dirname(fixed[len(head):].replace("\\", "/"))
    base = posixpath.normpath(posixpath.join(_CWD, directory))
    target = posixpath.normpath(posixpath.join(_CWD, argument[len(head):].replace("\\", "/")))
    if not target.startswith(base.rstrip("/") + "/"):
        where = directory or "the working directory"
        raise ApplyError(f"argument {argument!r:.200} leaves {where}", retryable=False)
    return argument


def _fixed_prefix(part: str) -> str | None:
    """The literal text before the first placeholder, or None if there is none."""
    prefix = ""
    for literal, field, _, _ in string.Formatter().parse(part):
        prefix += literal
        if field is not None:
            return prefix
    return None


class LogBackend:
    """Dry run: logs what would be applied and changes nothing (the default backend)."""

    name = "log"

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.logger = logger or log

    def apply(self, alloc: Allocation) -> str:
        line = orjson.dumps({"id": alloc.id, "instance_type": alloc.instance_type,
                             "reserve": alloc.reserve}).decode()
        self.logger.info("dry run: would apply %s", line)
        return f"dry run {alloc.id}"


class CommandBackend:
    """Runs a configured program per allocation, without a shell.

    The template is an argv list; each part is filled with ``str.format_map`` from
    ``placeholders``. Ids are checked against the wire contract before anything runs, an id
    starting with ``-`` is refused too, because the program would read it as an option, and
    so is any argument that would leave its part's directory (``substitute``): an entry can
    reach Redis without passing the flow's decoder, and valid ids can still make ``..``.
    """

    name = "command"

    def __init__(self, argv: Sequence[str], *, timeout_s: float = 30.0,
                 env: Mapping[str, str] | None = None, runner: Runner | None = None) -> None:
        if isinstance(argv, str) or not argv or not all(isinstance(a, str) for a in argv):
            raise ValueError(f"command template must be a non-empty list of strings, got {argv!r}")
        if template_fields(argv[0]):
            raise ValueError(f"the program (first part) must be fixed, got {argv[0]!r}")
        self.fields = sorted({f for part in argv for f in template_fields(part)})
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.argv = list(argv)
        self.timeout_s = timeout_s
        self.env = dict(env) if env is not None else None
        self.runner: Runner = runner or subprocess.run

    def render(self, alloc: Allocation) -> list[str]:
        """The argv for ``alloc``; a non-retryable ``ApplyError`` if a value is unsafe."""
        for name in {"app", "instance"} | (set(self.fields) & _STRING_PLACEHOLDERS - {"id"}):
            value = getattr(alloc, name)
            check_id(name, value)
            if value.startswith("-"):
                raise ApplyError(f"{name} {value!r} starts with '-'", retryable=False)
        check_allocation_id(alloc)
        values = placeholders(alloc)
        missing = [f for f in self.fields if f not in values]
        if missing:
            raise ApplyError(f"allocation {alloc.id} has no reserve for {missing}",
                             retryable=False)
        return [self.argv[0], *(substitute(part, values) for part in self.argv[1:])]

    def apply(self, alloc: Allocation) -> str:
        argv = self.render(alloc)
        try:
            done = self.runner(argv, shell=False, timeout=self.timeout_s, capture_output=True,
                               text=True, check=False, env=self.env, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as ex:
            raise ApplyError(f"{argv[0]} did not finish within {self.timeout_s} s") from ex
        except OSError as ex:
            raise ApplyError(f"cannot run {argv[0]}: {ex}") from ex
        if done.returncode != 0:
            raise ApplyError(f"{argv[0]} exited with {done.returncode}: {_tail(done.stderr)}")
        return _tail(done.stdout) or f"{argv[0]} ok"


class KubernetesBackend:
    """Resizes a running pod in place: requests and limits of one container.

    ``kubectl patch pod NAME --subresource resize`` with a *strategic* merge patch: containers
    are merged by name, whereas a JSON merge patch would replace the whole container list.
    """

    name = "kubernetes"

    def __init__(self, *, namespace: str = "default", pod_template: str = "{instance}",
                 container: str = "app", kubectl: str = "kubectl", context: str | None = None,
                 set_limits: bool = True, timeout_s: float = 30.0,
                 runner: Runner | None = None) -> None:
        for name, value in (("namespace", namespace), ("container", container)):
            if not _DNS_LABEL.fullmatch(value):
                raise ValueError(f"{name} must be a DNS-1123 label, got {value!r}")
        template_fields(pod_template)
        self.namespace = namespace
        self.pod_template = pod_template
        self.container = container
        self.kubectl = kubectl
        self.context = context
        self.set_limits = set_limits
        self.timeout_s = timeout_s
        self.runner: Runner = runner or subprocess.run

    def pod_name(self, alloc: Allocation) -> str:
        """The pod to resize; ``ApplyError`` (not retryable) if it is no valid object name."""
        check_id("instance", alloc.instance)
        check_id("app", alloc.app)
        check_allocation_id(alloc)
        name = self.pod_template.format_map(placeholders(alloc))
        if len(name) > 253 or not _DNS_SUBDOMAIN.fullmatch(name):
            msg = f"pod name {name!r} from {self.pod_template!r} is not a DNS-1123 name"
            raise ApplyError(msg, retryable=False)
        return name

    def patch(self, alloc: Allocation) -> dict[str, Any]:
        """The strategic merge patch: CPU in millicores, memory in MiB, both rounded up."""
        quantities: dict[str, str] = {}
        if "cpu_cores" in alloc.reserve:
            quantities["cpu"] = f"{_millicores(alloc.reserve['cpu_cores'])}m"
        if "mem_bytes" in alloc.reserve:
            quantities["memory"] = f"{_mebibytes(alloc.reserve['mem_bytes'])}Mi"
        if not quantities:
            msg = f"allocation {alloc.id} reserves neither cpu_cores nor mem_bytes"
            raise ApplyError(msg, retryable=False)
        resources = {"requests": quantities}
        if self.set_limits:
            resources["limits"] = dict(quantities)
        return {"spec": {"containers": [{"name": self.container, "resources": resources}]}}

    def argv(self, alloc: Allocation) -> list[str]:
        context = ["--context", self.context] if self.context else []
        return [self.kubectl, *context, "patch", "pod", self.pod_name(alloc), "-n",
                self.namespace, "--subresource", "resize", "--type", "strategic",
                "-p", json.dumps(self.patch(alloc), separators=(",", ":"))]

    def apply(self, alloc: Allocation) -> str:
        argv = self.argv(alloc)
        try:
            done = self.runner(argv, shell=False, timeout=self.timeout_s, capture_output=True,
                               text=True, check=False, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as ex:
            raise ApplyError(f"kubectl did not finish within {self.timeout_s} s") from ex
        except OSError as ex:
            raise ApplyError(f"cannot run {self.kubectl}: {ex}") from ex
        if done.returncode != 0:
            raise ApplyError(f"kubectl patch exited with {done.returncode}: "
                             f"{_tail(done.stderr)}")
        return _tail(done.stdout) or f"patched pod {argv[argv.index('pod') + 1]}"


class FileBackend:
    """Desired state for GitOps: ``DIR/<app>/<instance>.json``, one file per instance.

    Each file is written to a temporary file in the same directory and renamed over the old
    one, so a reader (or a git commit) sees the old or the new content, never half of it. The
    content has no wall-clock time, so re-applying the same allocation changes nothing.
    """

    name = "file"

    def __init__(self, out_dir: str | os.PathLike[str]) -> None:
        self.out_dir = Path(out_dir)

    def path_for(self, alloc: Allocation) -> Path:
        return self.out_dir / safe_name(alloc.app) / f"{safe_name(alloc.instance)}.json"

    def apply(self, alloc: Allocation) -> str:
        target = self.path_for(alloc)
        body = orjson.dumps(asdict(alloc), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(target, body + b"\n")
        except OSError as ex:
            raise ApplyError(f"cannot write {target}: {ex}") from ex
        return f"wrote {target}"


def safe_name(value: str) -> str:
    """A file name for an id: ``: @`` and a leading ``.`` percent-encoded, so ids map 1:1.

    >>> safe_name("web.eu:1@x"), safe_name(".hidden")
    ('web.eu%3A1%40x', '%2Ehidden')
    """
    check_id("id", value)
    name = quote(value, safe="")
    return "%2E" + name[1:] if name.startswith(".") else name


def atomic_write(target: Path, data: bytes) -> None:
    """Replace ``target`` with ``data`` in one rename, durable once this returns."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), 0o644)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _tail(text: str | None, limit: int = 400) -> str:
    text = (text or "").strip()
    return text if len(text) <= limit else "..." + text[-limit:]


def _example() -> Allocation:
    return Allocation(id="billing-api/vm-1/3", ts=1.7e9, app="billing-api", instance="vm-1",
                      kind="resize", instance_type="m.large",
                      reserve={"cpu_cores": 0.25, "mem_bytes": 512 * _MIB}, predicted={},
                      cluster=1, confidence=0.9, policy="p95-h15", model_version=1)
