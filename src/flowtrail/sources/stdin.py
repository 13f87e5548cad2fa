"""Standard input as a live source: lines are handed on as soon as they arrive (`hubble observe
--follow -o json | flowtrail run --input-file -`)."""

from __future__ import annotations

import os
import select
import threading
import time
from collections.abc import Iterator
from typing import Any

from flowtrail.sources.canonscan import count_newlines
from flowtrail.sources.chunk import Chunk

READ_SIZE = 1 << 20


class StdinSource:
    name = "-"

    def __init__(self, fd: int | None = None, max_line_bytes: int = 1 << 20) -> None:
        self.fd = fd if fd is not None else 0
        self.max_line_bytes = max_line_bytes
        self.stats: dict[str, Any] = {"bytes": 0, "lines": 0, "connected": True, "eof": False}

    def chunks(self, stop: threading.Event) -> Iterator[Chunk]:
        partial = b""
        line = 0
        while not stop.is_set():
            # select with a timeout so a stop request is noticed while the writer is quiet
            ready, _, _ = select.select([self.fd], [], [], 0.2)
            if not ready:
                continue
            data = os.read(self.fd, READ_SIZE)
            received = time.monotonic_ns()
            if not data:
                self.stats["eof"] = True
                if partial:
                    yield Chunk(partial + b"\n", "-", line + 1, received, None, 1)
                return
            self.stats["bytes"] += len(data)
            cut = data.rfind(b"\n")
            if cut < 0 and len(partial) + len(data) <= self.max_line_bytes:
                partial += data
                continue
            if cut < 0:
                body, partial = partial + data + b"\n", b""
            else:
                body, partial = partial + data[:cut + 1], data[cut + 1:]
            n = count_newlines(body)
            self.stats["lines"] += n
            yield Chunk(body, "-", line + 1, received, None, n)
            line += n
