"""One Bytewax cluster of processes on this machine, as the backtest runs its flow.

``run_cluster(target, args, processes)`` starts ``processes`` processes (``spawn``) on free
loopback ports; each calls ``target(member, *args)``, which builds the flow and runs it with
``member.run(flow)`` (``bytewax.testing.cluster_main``, one worker per process), and returns
what its part of the flow produced. The parent gets those results in process order, and
passes on the progress the processes report.

A process that fails fails the run: ``ClusterError`` with its error. Bytewax 0.21 does not
pass a worker's exception on when the cluster has several processes (every process raises
``PanicException: Send thread panic``), so ``member.run`` wraps the Python code of the flow's
steps, and ``member.guard``/``member.guard_iter`` the caller's own source and sink code, to
report the first exception, with its step and traceback, before Bytewax sees it. No process
outlives the call: they are stopped when it returns or raises (Ctrl-C included), and each
dies with its parent.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue as queue_mod
import signal
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

from fpstream.errors import FpstreamError
from fpstream.io.embedded import die_with_parent, free_port

__all__ = ["ClusterError", "Member", "run_cluster"]

#: How long the parent waits for a message before it looks at its processes.
POLL_S = 0.5
#: Once a process has failed, how long the others get to stop (and report) before they are
#: killed.
GRACE_S = 10.0
#: The tail of a process's output (stdout and stderr) quoted when it dies without an error.
LOG_LINES = 20

class ClusterError(FpstreamError, RuntimeError):
    """A process of the cluster failed: its error, or how it died."""


class Member:
    """One process of the cluster, as ``target`` sees it."""

    def __init__(self, proc_id: int, addresses: list[str], queue: Any) -> None:
        self.proc_id = proc_id
        self.addresses = addresses
        self._queue = queue

    def progress(self, done: int, total: int) -> None:
        """Report progress to the parent (``on_progress`` of ``run_cluster``)."""
        self._queue.put((self.proc_id, "progress", (done, total)))

    def failed(self, step: str, ex: BaseException) -> None:
        """Report an exception of step ``step`` now, before Bytewax turns it into a panic."""
        self._queue.put((self.proc_id, "step_error", _told(ex, f"step {step}: ")))

    def guard(self, step: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn``, reporting its exceptions as those of ``step``."""
        def guarded(*args: Any) -> Any:
            try:
                return fn(*args)
            except Exception as ex:
                self.failed(step, ex)
                raise

        return guarded

    def guard_iter(self, step: str, items: Iterable[Any]) -> Iterable[Any]:
        """``items`` (iterable again and again), reporting their exceptions as ``step``'s."""
        return _GuardedIterable(self, step, items)

    def run(self, flow: Any, epoch: timedelta | None = None) -> None:
        """Run this process's part of ``flow`` (its steps guarded), in epochs of ``epoch``
        (Bytewax's default without)."""
        from bytewax.testing import cluster_main

        guard_steps(flow, self)
        cluster_main(flow, self.addresses, self.proc_id, epoch_interval=epoch)


class _GuardedIterable:
    def __init__(self, member: Member, step: str, items: Iterable[Any]) -> None:
        self.member, self.step, self.items = member, step, items

    def __iter__(self) -> Iterator[Any]:
        try:
            yield from self.items
        except Exception as ex:
            self.member.failed(self.step, ex)
            raise


def guard_steps(flow: Any, member: Member) -> None:
    """Wrap the Python code of every core step of ``flow`` (mappers, predicates, stateful
    logic) with ``member.guard``. Bytewax's operators are frozen dataclasses that it reads
    when the flow starts, so the wrapped code is set on them in place. What a mapper or the
    logic returns is read inside the guard: Bytewax's own mappers return generators."""
    for step in _core_steps(flow.substeps):
        kind = type(step).__name__
        if kind == "flat_map_batch":
            mapper = step.mapper
            object.__setattr__(step, "mapper", member.guard(step.step_id,
                                                            lambda xs, f=mapper: list(f(xs))))
        elif kind == "branch":
            object.__setattr__(step, "predicate", member.guard(step.step_id, step.predicate))
        elif kind == "stateful_batch":
            object.__setattr__(step, "builder", _guarded_builder(member, step.step_id,
                                                                 step.builder))


def _core_steps(steps: Iterable[Any]) -> Iterator[Any]:
    for step in steps:
        if getattr(step, "core", False):
            yield step
        yield from _core_steps(step.substeps)


def _guarded_builder(member: Member, step: str, builder: Callable[[Any], Any]
                     ) -> Callable[[Any], Any]:
    from bytewax.operators import StatefulBatchLogic

    def emitted(fn: Callable[..., tuple[Iterable[Any], bool]]) -> Callable[..., Any]:
        def read(*args: Any) -> tuple[list[Any], bool]:
            out, discard = fn(*args)
            return list(out), discard

        return member.guard(step, read)

    class Guarded(StatefulBatchLogic[Any, Any, Any]):
        def __init__(self, logic: Any) -> None:
            self._on_batch = emitted(logic.on_batch)
            self._on_notify = emitted(logic.on_notify)
            self._on_eof = emitted(logic.on_eof)
            self._notify_at = member.guard(step, logic.notify_at)
            self._snapshot = member.guard(step, logic.snapshot)

        def on_batch(self, values: list[Any]) -> tuple[Iterable[Any], bool]:
            return self._on_batch(values)  # type: ignore[no-any-return]

        def on_notify(self) -> tuple[Iterable[Any], bool]:
            return self._on_notify()  # type: ignore[no-any-return]

        def on_eof(self) -> tuple[Iterable[Any], bool]:
            return self._on_eof()  # type: ignore[no-any-return]

        def notify_at(self) -> Any:
            return self._notify_at()

        def snapshot(self) -> Any:
            return self._snapshot()

    build = member.guard(step, builder)

    def guarded_builder(resume: Any) -> Any:
        return Guarded(build(resume))

    return guarded_builder


def run_cluster(target: Callable[..., Any], args: tuple[Any, ...], processes: int,
                on_progress: Callable[[int, int], None] | None = None) -> list[Any]:
    """Run ``target(member, *args)`` in each of ``processes`` processes of one cluster; their
    results, in process order. ``target`` and ``args`` must be picklable (``target`` a
    module-level function)."""
    if processes < 1:
        raise ValueError(f"processes must be >= 1, got {processes!r}")
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    addresses = [f"127.0.0.1:{free_port()}" for _ in range(processes)]
    with tempfile.TemporaryDirectory(prefix="fpstream-cluster-") as tmp:
        logs = [Path(tmp) / f"process-{i}.log" for i in range(processes)]
        procs = [ctx.Process(target=_process_main, name=f"fpstream-flow-{i}", daemon=True,
                             args=(target, args, i, addresses, queue, str(logs[i]),
                                   os.getpid()))
                 for i in range(processes)]
        try:
            for proc in procs:
                proc.start()
            return _collect(procs, queue, logs, on_progress)
        finally:
            _stop(procs)
            queue.close()


def _process_main(target: Callable[..., Any], args: tuple[Any, ...], proc_id: int,
                  addresses: list[str], queue: Any, log: str, parent: int) -> None:
    hook = die_with_parent(parent)
    if hook is not None:
        hook()
    # Bytewax and timely write to the process's stdout and stderr (connection retries,
    # panics): kept in a log, quoted if the process dies.
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    member = Member(proc_id, addresses, queue)
    try:
        result = target(member, *args)
    except BaseException as ex:  # noqa: BLE001 - reported to the parent, which raises
        # A panic is how Bytewax stops every process once one has failed: not the cause.
        kind = "panic" if type(ex).__name__ == "PanicException" else "error"
        queue.put((proc_id, kind, _told(ex)))
        return
    queue.put((proc_id, "result", result))


#: What a process reported when it failed, the likeliest cause of the failure first.
_CAUSES = ("step_error", "error", "died", "panic")


def _collect(procs: list[Any], queue: Any, logs: list[Path],
             on_progress: Callable[[int, int], None] | None) -> list[Any]:
    results: dict[int, Any] = {}
    # process -> (kind, (what, details)): its likeliest cause
    failures: dict[int, tuple[str, tuple[str, str]]] = {}
    failed_at: float | None = None

    def take(message: tuple[int, str, Any]) -> None:
        nonlocal failed_at
        proc_id, kind, payload = message
        if kind == "progress":
            if on_progress is not None:
                on_progress(*payload)
        elif kind == "result":
            results[proc_id] = payload
        else:
            known = failures.get(proc_id)
            if known is None or _CAUSES.index(kind) < _CAUSES.index(known[0]):
                failures[proc_id] = (kind, payload)
            failed_at = failed_at if failed_at is not None else time.monotonic()

    def drain(timeout: float) -> None:
        while True:
            try:
                take(queue.get(timeout=timeout))
            except queue_mod.Empty:
                return

    def bury() -> None:
        """Processes that exited without a word: what they sent is read first (an exited
        process has written all of it)."""
        exited = [i for i, p in enumerate(procs)
                  if p.exitcode is not None and i not in results and i not in failures]
        if exited:
            drain(0.1)
        for i in exited:
            if i not in results and i not in failures:
                take((i, "died", (f"exited ({_exit(procs[i].exitcode)}) without a result",
                                  f"its output ends with:\n{_tail(logs[i])}")))

    while len(results) < len(procs):
        if failed_at is not None and (time.monotonic() > failed_at + GRACE_S or
                                      not any(p.is_alive() for p in procs)):
            drain(0.1)
            bury()
            raise ClusterError(_failure(failures, len(procs)))
        try:
            take(queue.get(timeout=POLL_S))
        except queue_mod.Empty:
            bury()
    return [results[i] for i in range(len(procs))]


def _told(ex: BaseException, where: str = "") -> tuple[str, str]:
    """An exception as the parent reports it: what (one line), and the traceback."""
    return f"{where}{type(ex).__name__}: {ex}", "".join(traceback.format_exception(ex)).rstrip()


def _failure(failures: dict[int, tuple[str, tuple[str, str]]], processes: int) -> str:
    """The error to report: the likeliest cause (``_CAUSES``), of the first such process."""
    proc_id = min(failures, key=lambda i: (_CAUSES.index(failures[i][0]), i))
    others = sorted(set(failures) - {proc_id})
    also = (f" (process{'es' if len(others) > 1 else ''} {', '.join(map(str, others))} "
            "stopped with it)" if others else "")
    what, details = failures[proc_id][1]
    return f"backtest flow process {proc_id} of {processes} failed{also}: {what}\n{details}"


def _exit(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            pass
    return f"exit code {code}"


def _tail(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()[-LOG_LINES:]
    except OSError:
        return "(no output)"
    return "\n".join(lines) or "(no output)"


def _stop(procs: list[Any]) -> None:
    for proc in procs:
        if proc.is_alive():
            proc.terminate()
    deadline = time.monotonic() + 5.0
    for proc in procs:
        if proc.pid is None:
            continue  # never started
        proc.join(timeout=max(0.0, deadline - time.monotonic()))
        if proc.is_alive():
            proc.kill()
            proc.join()
