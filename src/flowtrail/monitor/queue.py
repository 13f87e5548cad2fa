"""The bounded queue between the sources and the processor, with an explicit overload policy.

It is bounded by bytes of raw input (what it holds in memory), not by chunks. When a chunk does not fit:
`block` makes the source wait (files and stdin: nothing is lost, lag grows and is exported as a
metric); `shed` drops the chunk and counts its lines, so an overloaded monitor sheds load visibly
instead of growing without bound or falling silently behind a live relay.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

from flowtrail.sources.canonscan import count_newlines
from flowtrail.sources.chunk import Chunk


class ChunkQueue:
    def __init__(self, max_bytes: int, on_shed: Callable[[Chunk], None] | None = None) -> None:
        self.max_bytes = max_bytes
        self.on_shed = on_shed
        self._q: deque[Chunk] = deque()
        self._lines = 0
        self._bytes = 0
        self._cv = threading.Condition()
        self.shed_lines = 0
        self.shed_chunks = 0

    @staticmethod
    def _n(ch: Chunk) -> int:
        if not ch.lines:
            ch.lines = count_newlines(ch.data)
        return ch.lines

    @property
    def lines(self) -> int:
        return self._lines

    @property
    def bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._q)

    def put(self, ch: Chunk, policy: str, stop: threading.Event) -> bool:
        """Queue `ch`; False when it was shed (or the wait was cut short by `stop`)."""
        n = self._n(ch)
        size = len(ch.data)
        with self._cv:
            # an empty queue takes any chunk, so one larger than the bound still gets through
            while self._q and self._bytes + size > self.max_bytes:
                if policy == "shed":
                    self.shed_lines += n
                    self.shed_chunks += 1
                    if self.on_shed is not None:
                        self.on_shed(ch)
                    return False
                if stop.is_set():
                    # shutting down: accept it, the processor drains the queue before exiting
                    break
                self._cv.wait(0.2)
            self._q.append(ch)
            self._lines += n
            self._bytes += size
            self._cv.notify_all()
        return True

    def get_batch(self, max_lines: int, max_delay_s: float, timeout_s: float) -> list[Chunk]:
        """Chunks totalling up to ~max_lines: waits up to `timeout_s` for the first one, then at most
        `max_delay_s` (counted from the first chunk's arrival) for more."""
        out: list[Chunk] = []
        got = 0
        deadline = time.monotonic() + timeout_s
        with self._cv:
            while True:
                while self._q and got < max_lines:
                    ch = self._q.popleft()
                    self._lines -= self._n(ch)
                    self._bytes -= len(ch.data)
                    out.append(ch)
                    got += ch.lines
                self._cv.notify_all()
                if got >= max_lines:
                    return out
                if out:
                    waited = (time.monotonic_ns() - out[0].received_ns) / 1e9
                    remaining = max_delay_s - waited
                else:
                    remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return out
                self._cv.wait(remaining)
