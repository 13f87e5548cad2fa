"""The unit every live source hands to the monitor: whole JSON lines, as received.

Sources convert at the edge: a Relay stream, a followed exporter file and stdin all yield lines in
Hubble's own JSON (`hubble observe -o json` / exporter `events.log`), so one decoder, one filter
engine and one detection engine serve them all.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(slots=True)
class Chunk:
    data: bytes  # newline-terminated lines
    source: str  # name used in error messages: a path, a relay address, "-"
    first_line: int  # 1-based number of data's first line within the source (a running count for streams)
    received_ns: int  # time.monotonic_ns() when the chunk's first line arrived: the start of alert latency
    # called once everything derived from this chunk reached the sinks; a followed file persists its offset
    commit: Callable[[], None] | None = None
    lines: int = 0  # number of lines in data (0: unknown, counted by the decoder)
