"""Starting flow processes the way production does: ``python -m bytewax.run flows.fleet:flow``.

Settings travel to each process as ``FPSTREAM_*`` variables, so the worker command is the same
on a laptop, in the demo, in tests and in a Kubernetes StatefulSet.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

from fpstream.io.embedded import die_with_parent
from fpstream.settings import Settings

FLOW_TARGET = "flows.fleet:flow"


def settings_env(settings: Settings) -> dict[str, str]:
    """Every setting as the ``FPSTREAM_*`` variable ``load_settings`` reads back."""
    env: dict[str, str] = {}
    for f in fields(settings):
        value = getattr(settings, f.name)
        if value is None:
            continue
        if isinstance(value, dict):
            value = ",".join(f"{k}={v}" for k, v in value.items())
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


def init_recovery(recovery_dir: str | Path, partitions: int) -> None:
    """Create the recovery partitions once (``python -m bytewax.recovery DIR N``)."""
    path = Path(recovery_dir)
    if path.exists() and any(path.glob("part-*.sqlite3")):
        return
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "bytewax.recovery", str(path), str(partitions)],
                   check=True, capture_output=True)


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
