"""The demo prints how to watch its broker, and that exact command shows its allocations."""

from __future__ import annotations

import shlex
import signal
import subprocess

import orjson
import psutil
import pytest
from jsonschema import Draft202012Validator

from fpstream.contract.schema import load_schema

from .test_watch import FPSTREAM, Lines

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PROMPT = "fpstream demo: watch what it decides with: "


def test_the_printed_watch_command_reads_the_demos_allocations() -> None:
    demo = subprocess.Popen([FPSTREAM, "demo", "--apps", "6", "--duration", "300"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert demo.stderr is not None
    children: list[psutil.Process] = []
    try:
        line = Lines(demo.stderr).wait_for(PROMPT, timeout=120)
        children = psutil.Process(demo.pid).children(recursive=True)
        command = shlex.split(line.split(PROMPT, 1)[1])
        assert command[:2] == [FPSTREAM, "watch"] and command[2] == "--brokers"
        watched = subprocess.run(
            [*command, "--topic", "allocations", "--from-beginning", "--limit", "3", "--json"],
            capture_output=True, text=True, timeout=240)
        assert watched.returncode == 0, watched.stderr
        docs = [orjson.loads(x) for x in watched.stdout.splitlines()]
        assert len(docs) == 3
        schema = Draft202012Validator(load_schema("allocation"))
        assert all(schema.is_valid(doc) for doc in docs), docs
        demo.send_signal(signal.SIGINT)
        assert demo.wait(60) == 130
    finally:
        demo.kill()
        demo.wait()
    _, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, f"the demo left {alive} running"
