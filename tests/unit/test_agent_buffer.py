"""The send buffer keeps the newest messages within its byte limit and counts what it drops."""

from __future__ import annotations

import random

import pytest

from fpstream.agent.buffer import SendBuffer, size_of


def test_drops_oldest_first_and_counts() -> None:
    buf = SendBuffer(max_bytes=100)
    for i in range(10):
        buf.push(b"k", bytes([i]) * 19)  # 20 bytes each
    assert len(buf) == 5 and buf.bytes == 100
    assert [v[0] for _, v in buf] == [5, 6, 7, 8, 9]
    assert (buf.dropped_messages, buf.dropped_bytes) == (5, 100)


def test_requeued_messages_go_first_and_are_dropped_first() -> None:
    buf = SendBuffer(max_bytes=60)
    buf.push(b"", b"c" * 20)
    buf.requeue([(b"", b"a" * 20), (b"", b"b" * 20)])
    assert [v[:1] for _, v in buf] == [b"a", b"b", b"c"]
    assert buf.pop() == (b"", b"a" * 20) and buf.bytes == 40
    buf.requeue([(b"", b"a" * 20)])
    buf.push(b"", b"d" * 20)  # over the limit: the requeued (oldest) one goes
    assert [v[:1] for _, v in buf] == [b"b", b"c", b"d"]
    assert buf.dropped_messages == 1


def test_a_message_larger_than_the_limit_is_dropped_alone() -> None:
    buf = SendBuffer(max_bytes=10)
    buf.push(b"", b"x" * 5)
    buf.push(b"", b"y" * 11)
    assert len(buf) == 0 and buf.bytes == 0
    assert (buf.dropped_messages, buf.dropped_bytes) == (2, 16)


def test_no_drops_when_the_limit_is_big_enough() -> None:
    buf = SendBuffer(max_bytes=1 << 20)
    for _ in range(1000):
        buf.push(b"app", b"v" * 100)
    assert buf.dropped_messages == 0 and buf.bytes == 103_000


def test_invariants_under_random_operations() -> None:
    rng = random.Random(7)
    buf = SendBuffer(max_bytes=500)
    held: list[tuple[bytes, bytes]] = []
    dropped = 0
    for _ in range(2000):
        op = rng.random()
        if op < 0.6:
            msg = (b"k", b"v" * rng.randint(0, 120))
            buf.push(*msg)
            held.append(msg)
        elif op < 0.8 and buf:
            assert buf.pop() == held.pop(0)
        elif buf:
            popped = [buf.pop() for _ in range(min(len(buf), rng.randint(1, 3)))]
            del held[:len(popped)]
            buf.requeue(popped)
            held[:0] = popped
        while sum(map(size_of, held)) > 500:
            dropped += 1
            held.pop(0)
        assert list(buf) == held
        assert buf.bytes == sum(map(size_of, held)) <= 500
        assert buf.dropped_messages == dropped


@pytest.mark.parametrize("bad", [0, -1, 1.5, None])
def test_rejects_a_bad_limit(bad: object) -> None:
    with pytest.raises(ValueError, match="max_bytes must be a positive integer"):
        SendBuffer(bad)  # type: ignore[arg-type]
