"""Starting flow processes the way production does: ``python -m bytewax.run flows.fleet:flow``.

Settings travel to each process as ``FPSTREAM_*`` variables, so the worker command is the same
on a laptop, in the demo, in tests and in a Kubernetes StatefulSet.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import fields
from pathlib import Path

from fpstream.io.embedded import die_with_parent
from fpstream.settings import Settings, SettingsError

FLOW_TARGET = "flows.fleet:flow"


def settings_env(settings: Settings) -> dict[str, str]:
    """Every setting as the ``FPSTREAM_*`` variable ``load_settings`` reads back, to the same
    value and type: option tables travel as JSON objects (``{"socket_timeout": 5}``)."""
    env: dict[str, str] = {}
    for f in fields(settings):
        value = getattr(settings, f.name)
        if value is None:
            continue
        if isinstance(value, dict):
            try:
                value = json.dumps(value, separators=(",", ":"), allow_nan=False)
            except (TypeError, ValueError) as ex:
                msg = (f"setting {f.name}: only text, numbers, booleans, arrays and tables "
                       f"can travel to worker processes ({ex})")
                raise SettingsError(msg) from ex
        env[f"FPSTREAM_{f.name.upper()}"] = str(value)
    return env


def flow_command(
    *,
    process_id: int | None = None,
    addresses: list[str] | None = None,
    workers: int = 1,
    recovery_dir: str | Path | None = None,
    snapshot_s: float | None = None,
    backup_s: float | None = None,
) -> list[str]:
    """The worker command line; ``-i``/``-a`` only for a multi-process cluster."""
    cmd = [sys.executable, "-m", "bytewax.run", FLOW_TARGET, "-w", str(workers)]
    if addresses:
        cmd += ["-i", str(process_id or 0), "-a", ";".join(addresses)]
    if recovery_dir is not None:
        cmd += ["-r", str(recovery_dir)]
        cmd += ["-s", str(int(snapshot_s if snapshot_s is not None else 10))]
        cmd += ["-b", str(int(backup_s if backup_s is not None else 0))]
    return cmd


RECOVERY_MARKER = ".fpstream-recovery"


def owned_partitions(partitions: int, process_id: int = 0, processes: int = 1) -> list[int]:
    """The recovery partitions that process ``process_id`` of ``processes`` keeps on its own volume.

    Bytewax needs every partition reachable by *some* worker of the cluster, and each one exactly
    once: workers announce the partitions they find in their ``-r`` directory and one of them
    becomes primary for each index. So the partitions are dealt round-robin over the first
    ``processes`` processes (``j % processes == process_id``); a process added later by a
    scale-out (``process_id >= processes``) owns none, which Bytewax allows.
    """
    if partitions < 1 or processes < 1 or process_id < 0:
        raise ValueError(f"bad recovery layout: {partitions} partitions, process {process_id} "
                         f"of {processes}")
    return [j for j in range(partitions) if j % processes == process_id]


def init_recovery(recovery_dir: str | Path, partitions: int, *, process_id: int = 0,
                  processes: int = 1) -> list[int]:
    """Create this process's share of the recovery partitions, once; returns the indexes made.

    With the defaults (one process, or one directory every process sees) all ``partitions`` are
    created, as ``python -m bytewax.recovery DIR N`` does. With ``process_id``/``processes`` each
    process gets only :func:`owned_partitions` in its own directory, so the cluster as a whole
    sees every partition exactly once. A directory that holds partitions, or was initialised
    before (a marker file stays even if the partitions are moved away on a scale-in), is left
    alone: re-creating them would put a second, empty copy of an index beside the real one.
    """
    path = Path(recovery_dir)
    owned = owned_partitions(partitions, process_id, processes)
    if path.exists() and (any(path.glob("part-*.sqlite3")) or (path / RECOVERY_MARKER).exists()):
        return []
    path.mkdir(parents=True, exist_ok=True)
    if owned:
        # Made all together (each file records the total count), then only ours moved in place.
        with tempfile.TemporaryDirectory(prefix=".init-", dir=path) as tmp:
            subprocess.run([sys.executable, "-m", "bytewax.recovery", tmp, str(partitions)],
                           check=True, capture_output=True)
            for j in owned:
                for f in sorted(Path(tmp).glob(f"part-{j}.sqlite3*")):
                    os.replace(f, path / f.name)
    (path / RECOVERY_MARKER).write_text(
        f"partitions={partitions} process_id={process_id} processes={processes} "
        f"owned={','.join(map(str, owned))}\n")
    return owned


class FlowProcess:
    """One flow process, stopped (SIGINT, then SIGKILL) when we stop or die."""

    def __init__(self, settings: Settings, command: list[str], *, tail: bool = True,
                 log_path: Path | None = None, extra_env: dict[str, str] | None = None) -> None:
        self.command = command
        self.env = {**os.environ, **settings_env(settings), "FPSTREAM_TAIL": "1" if tail else "0",
                    **(extra_env or {})}
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> FlowProcess:
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(self.command, env=self.env, stdout=out,
                                     stderr=subprocess.STDOUT, start_new_session=True,
                                     preexec_fn=die_with_parent())
        return self

    def wait(self, timeout: float | None = None) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def kill(self) -> None:
        """Die abruptly, as a crashed worker would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
