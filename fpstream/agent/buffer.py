"""A bounded, byte-limited queue of encoded messages waiting for the broker.

When the broker is away the agent keeps the newest data: past the byte limit the oldest messages
go first, and every one dropped is counted, so an outage costs a known amount of history rather
than the agent's memory. Not thread-safe: the sender's thread owns it (librdkafka runs delivery
callbacks inside ``poll``/``flush`` on the caller's thread).

>>> buf = SendBuffer(max_bytes=10)
>>> buf.push(b"a", b"12345"); buf.push(b"b", b"67890"); buf.push(b"c", b"xyz")
>>> [key for key, _ in buf], buf.dropped_messages, buf.dropped_bytes
([b'b', b'c'], 1, 6)
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator

Message = tuple[bytes, bytes]  # (key, value)


def size_of(message: Message) -> int:
    return len(message[0]) + len(message[1])


class SendBuffer:
    """Oldest at the front, newest at the back; ``max_bytes`` counts keys and values."""

    def __init__(self, max_bytes: int) -> None:
        if not isinstance(max_bytes, int) or max_bytes < 1:
            raise ValueError(f"max_bytes must be a positive integer, got {max_bytes!r}")
        self.max_bytes = max_bytes
        self._items: deque[Message] = deque()
        self.bytes = 0
        self.dropped_messages = 0
        self.dropped_bytes = 0

    def __len__(self) -> int:
        return len(self._items)

    def __bool__(self) -> bool:
        return bool(self._items)

    def __iter__(self) -> Iterator[Message]:
        return iter(self._items)

    def push(self, key: bytes, value: bytes) -> None:
        """Add the newest message, dropping the oldest ones beyond the limit."""
        self._items.append((key, value))
        self.bytes += len(key) + len(value)
        self._trim()

    def requeue(self, messages: Iterable[Message]) -> None:
        """Put back messages the broker did not take, oldest first, ahead of everything newer.

        They are the oldest data held, so they are also the first dropped if space runs out."""
        items = list(messages)
        self._items.extendleft(reversed(items))
        self.bytes += sum(size_of(m) for m in items)
        self._trim()

    def pop(self) -> Message:
        """Remove and return the oldest message (``IndexError`` when empty)."""
        message = self._items.popleft()
        self.bytes -= size_of(message)
        return message

    def _trim(self) -> None:
        while self.bytes > self.max_bytes and self._items:
            dropped = self._items.popleft()
            self.bytes -= size_of(dropped)
            self.dropped_messages += 1
            self.dropped_bytes += size_of(dropped)
