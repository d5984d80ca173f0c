"""Apply fpstream's allocations exactly once per decision: a template for your own consumer.

    python examples/apply_allocations.py --brokers kafka-1:9092 --state applied.json

It reads ``fpstream.allocations`` in a consumer group, applies an allocation only if its
sequence is newer than the last one applied to the same instance (a redelivered, replayed or
late allocation is skipped), saves what it applied, then commits the offsets. Replace
``apply`` with what your system does: patch a Deployment, resize a VM, update a quota.

Why it is written this way (the README's "Subscribing to allocations" has the contract):

- Delivery is at least once: fpstream may emit an allocation again after a worker resumes,
  and this consumer sees again whatever it had not committed when it stopped. An allocation
  is identified by its ``id``, ``<app>/<instance>/<seq>``; for one instance a higher ``seq``
  supersedes a lower one: ``0`` is the proactive allocation made before it started, any
  other is the decision's event time in whole seconds.
- Offsets are committed only after the allocations they cover are applied and saved, so a
  crash repeats work (which the sequence check makes harmless) and never loses it.
- Fields are added within a schema version; unknown fields are ignored. A version this
  consumer does not know (``v`` other than 1) is not applied: it is reported and skipped.

Needs only confluent-kafka.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException

SUPPORTED_VERSION = 1


def sequence(allocation_id: str) -> int:
    """The sequence at the end of ``<app>/<instance>/<seq>``, parsed from the right."""
    return int(allocation_id.rsplit("/", 1)[1])


class AppliedState:
    """The newest allocation applied per (app, instance), kept in a JSON file if given."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self.applied: dict[str, dict[str, dict[str, Any]]] = {}
        if path is not None and path.exists():
            self.applied = json.loads(path.read_text())

    def last(self, app: str, instance: str) -> dict[str, Any] | None:
        return self.applied.get(app, {}).get(instance)

    def last_seq(self, app: str, instance: str) -> int:
        doc = self.last(app, instance)
        return -1 if doc is None else sequence(doc["id"])

    def decide(self, alloc: dict[str, Any]) -> str | None:
        """None if ``alloc`` is to be applied, else why it is skipped."""
        if alloc.get("v") != SUPPORTED_VERSION:
            return f"schema version {alloc.get('v')!r} is not {SUPPORTED_VERSION}"
        try:
            seq = sequence(alloc["id"])
            app, instance = alloc["app"], alloc["instance"]
        except (KeyError, IndexError, ValueError, TypeError, AttributeError):
            return "not an allocation"
        last = self.last_seq(app, instance)
        if seq <= last:
            return f"seq {seq} is not newer than {last}"
        return None

    def record(self, alloc: dict[str, Any]) -> None:
        self.applied.setdefault(alloc["app"], {})[alloc["instance"]] = alloc

    def save(self) -> None:
        """Write the state atomically (a crash leaves the old file or the new one)."""
        if self.path is None:
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.applied, indent=1, sort_keys=True))
        os.replace(tmp, self.path)


def apply(alloc: dict[str, Any]) -> None:
    """What applying means here: print it. Make yours idempotent too (set, don't add)."""
    reserve = alloc["reserve"]
    print(f"applied {alloc['id']} {alloc['kind']} {alloc['instance_type']} "
          f"cpu_cores={reserve['cpu_cores']} mem_bytes={reserve['mem_bytes']:.0f}", flush=True)


def skip(allocation_id: str | None, why: str) -> None:
    print(f"skipped {allocation_id}: {why}", flush=True)


def make_consumer(brokers: str, group: str, **config: Any) -> Consumer:
    return Consumer({
        "bootstrap.servers": brokers,
        "group.id": group,
        "enable.auto.commit": False,  # commit after applying, never before
        "auto.offset.reset": "earliest",  # a new group starts from the oldest retained one
        # Shorter than librdkafka's 45 s: a member that died is replaced sooner, and some
        # brokers (the embedded one of fpstream demo) complete a join after half of it.
        "session.timeout.ms": 6000,
        **config,
    })


def consume(consumer: Consumer, state: AppliedState,
            on_apply: Callable[[dict[str, Any]], None] = apply,
            on_skip: Callable[[str | None, str], None] = skip,
            running: Callable[[], bool] = lambda: True) -> None:
    """Apply, save, commit, batch after batch, while ``running()``."""
    while running():
        messages = consumer.consume(100, 1.0)
        done = 0
        for msg in messages:
            err = msg.error()
            if err is not None:
                if err.fatal():
                    raise KafkaException(err)
                print(f"kafka: {err}", file=sys.stderr)
                continue
            done += 1
            try:
                alloc = json.loads(msg.value() or b"")
            except ValueError:
                on_skip(None, "not JSON")
                continue
            if not isinstance(alloc, dict):
                on_skip(None, "not an allocation")
                continue
            why = state.decide(alloc)
            if why is not None:
                on_skip(alloc.get("id"), why)
                continue
            on_apply(alloc)
            state.record(alloc)
        if done:
            state.save()
            try:
                consumer.commit(asynchronous=False)
            except KafkaException as ex:
                if ex.args[0].code() != KafkaError._NO_OFFSET:
                    raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--brokers", required=True, help="Kafka bootstrap servers.")
    parser.add_argument("--topic", default="fpstream.allocations")
    parser.add_argument("--group", default="allocation-applier", help="Consumer group.")
    parser.add_argument("--state", type=Path, help="Where to keep what was applied (JSON).")
    args = parser.parse_args(argv)

    stopping = False

    def stop(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    state = AppliedState(args.state)
    consumer = make_consumer(args.brokers, args.group)
    consumer.subscribe([args.topic])
    try:
        consume(consumer, state, running=lambda: not stopping)
    except KeyboardInterrupt:
        pass
    finally:
        state.save()  # what was applied before a Ctrl-C, even if not yet committed
        consumer.close()  # leaves the group at once, so its partitions move without delay
    print("stopped", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
