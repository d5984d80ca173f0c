"""The agent's own cost while it monitors many processes.

Starts ``--processes`` sleeping children split over ``--apps`` apps (matched by command line),
runs the agent loop in this process for ``--ticks`` collections at ``--interval`` seconds, and
prints the agent's CPU (% of one core, from its own CPU time over the run), its RSS, and the time
one tick takes. Samples are encoded as for Kafka and written to /dev/null, or sent to
``--brokers`` when given. The children are always killed.

Usage: .venv/bin/python benchmarks/agent_overhead.py [--processes 200] [--apps 20] [--ticks 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import time

import psutil

from fpstream.agent.buffer import SendBuffer
from fpstream.agent.config import parse_config
from fpstream.agent.run import Agent, AgentMetrics, KafkaSink, Sink, StdoutSink


def start_children(processes: int, apps: int) -> list[subprocess.Popen[bytes]]:
    """``sleep 6AA.J``: app AA, child J; a distinct command line per app to match on."""
    children = []
    for n in range(processes):
        app, child = n % apps, n // apps
        children.append(subprocess.Popen(["sleep", f"6{app:02d}.{child}"]))
    return children


def config_for(apps: int) -> dict[str, object]:
    return {"apps": [{"app": f"bench-{i:02d}", "labels": {"bench": "overhead"},
                      "match": {"name": "sleep", "cmdline": rf"^sleep 6{i:02d}\.\d+$"}}
                     for i in range(apps)]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=200)
    parser.add_argument("--apps", type=int, default=20)
    parser.add_argument("--ticks", type=int, default=20)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--brokers", help="send to this Kafka instead of /dev/null")
    parser.add_argument("--topic", default="fpstream.metrics")
    args = parser.parse_args()
    if not 1 <= args.apps <= 100:
        parser.error("--apps must be in 1..100 (two digits in the command line)")

    children = start_children(args.processes, args.apps)
    devnull = open(os.devnull, "wb")  # noqa: SIM115 - closed in finally
    try:
        metrics = AgentMetrics()
        sink: Sink
        if args.brokers:
            sink = KafkaSink({"bootstrap.servers": args.brokers}, args.topic,
                             SendBuffer(64 << 20), metrics)
        else:
            sink = StdoutSink(devnull, metrics)
        config = parse_config(config_for(args.apps), hostname="bench")
        agent = Agent(config, sink, interval_s=args.interval, metrics=metrics)
        me = psutil.Process()
        time.sleep(0.5)  # let every child exec `sleep` before the first match
        agent.tick()  # baseline (matches every process once)
        cpu0, wall0 = sum(me.cpu_times()[:2]), time.monotonic()
        durations, samples = [], []
        deadline = time.monotonic()
        for _ in range(args.ticks):
            deadline += args.interval
            time.sleep(max(deadline - time.monotonic(), 0.0))
            start = time.perf_counter()
            samples.append(agent.tick())
            durations.append(time.perf_counter() - start)
        cpu = sum(me.cpu_times()[:2]) - cpu0
        wall = time.monotonic() - wall0
        left = sink.close(10.0)
        rss = me.memory_info().rss
        print(f"host processes:      {len(psutil.pids())}")
        print(f"monitored:           {agent.collector.tracked} processes in {args.apps} apps")
        print(f"ticks:               {args.ticks} at {args.interval:g} s "
              f"({statistics.mean(samples):.0f} samples per tick, {left} undelivered)")
        print(f"agent CPU:           {100 * cpu / wall:.2f} % of one core "
              f"({cpu:.3f} s CPU over {wall:.1f} s)")
        print(f"tick time:           mean {1000 * statistics.mean(durations):.1f} ms, "
              f"max {1000 * max(durations):.1f} ms")
        print(f"agent RSS:           {rss / 2**20:.1f} MiB")
    finally:
        for child in children:
            child.kill()
        for child in children:
            child.wait()
        devnull.close()


if __name__ == "__main__":
    main()
