"""The time of an input's first flow, read without decoding the input."""

from __future__ import annotations

import re

from flowtrail.model.timeutil import parse_rfc3339_ns
from flowtrail.sources.files import GZIP_ERRORS, Input, open_binary

# Hubble writes the flow's time first ({"flow":{"time":...) and the envelope's last; either will do
_TIME = re.compile(rb'"time":"([0-9T:.Z+-]{20,40})"')


def first_time_ns(inp: Input, max_lines: int = 50) -> int | None:
    """Flow time of the first of the first `max_lines` lines that has one; None for stdin."""
    if inp.is_stdin:
        return None
    try:
        with open_binary(inp) as fh:
            for _ in range(max_lines):
                line = fh.readline(1 << 20)
                if not line:
                    return None
                m = _TIME.search(line)
                if m:
                    return parse_rfc3339_ns(m.group(1).decode("ascii"))
    except GZIP_ERRORS:
        return None
    return None
