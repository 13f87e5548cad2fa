"""Line classes: flow lines equal but for the values a policy replay never reads, decoded once.

A day of Hubble flows repeats the same connections: from one flow of a connection to the next
only its time, uuid, source port, TCP flags, Summary and L7 latency change, and the replay
(flowtrail.policy.replay) reads none of them but the time and uuid. The C extension groups the
lines of a block whose bytes are equal once those members are cut out (memcmp-exact, not a
hash's word), and returns per class its first line (the representative the decoder reads), how
many lines it holds, their first and last times and the first uuids; `weighted_columns` adds
these to the representatives' rows. Without the extension nothing is classed: every line is
decoded, and the replay reports the same.

With ``fqdn`` a class also keys on how many DNS answer lines so far named its destination
address (toFQDNs rules see the names learned before a flow), and answer lines are never classed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

try:
    from flowtrail.sources import _lineclass
except ImportError:  # built without a C compiler
    _lineclass = None  # type: ignore[assignment]

AVAILABLE = _lineclass is not None
EXAMPLES = 3
# columns holding 1-based line numbers of the block they were decoded from; sources.batches makes
# them absolute (and ordered across inputs), as it does with error lines
LINE_PREFIX = "_line"
WEIGHT = "_weight"
T_FIRST = "_t_first"
T_LAST = "_t_last"
LINE = "_line"
EX_LINES = tuple(f"_line_ex{k}" for k in range(EXAMPLES))
EX_UUIDS = tuple(f"_uuid_ex{k}" for k in range(EXAMPLES))


@dataclass
class LineClasses:
    """Classes of some lines of a block: ``cls[i]`` is the class of ``lines[i]`` (-1: none);
    per class its representative line (-1: dissolved), count, first and last time (ns), and up to EXAMPLES
    example lines (-1: none) with their uuids."""

    lines: np.ndarray
    cls: np.ndarray
    rep: np.ndarray
    count: np.ndarray
    t_first: np.ndarray
    t_last: np.ndarray
    ex_line: np.ndarray  # (classes, EXAMPLES)
    ex_uuid: pa.Array  # string, classes * EXAMPLES, null where ex_line is -1

    @property
    def classed(self) -> np.ndarray:
        return self.lines[self.cls >= 0]


def classify(data: bytes | bytearray | memoryview, starts: np.ndarray, ends: np.ndarray, lines: np.ndarray,
             candidate: np.ndarray, fqdn: bool) -> LineClasses | None:
    """Classes of ``lines`` (ascending line indices of the block; ``candidate`` says which may
    be classed, the others are only read for DNS answers). None without the extension."""
    if _lineclass is None:
        return None
    lines = np.ascontiguousarray(lines, np.int64)
    out = _lineclass.classify(data, np.ascontiguousarray(starts, np.int64), np.ascontiguousarray(ends, np.int64),
                              lines, np.ascontiguousarray(candidate, np.uint8), fqdn)
    cls, rep, count, t_first, t_last, ex_line, ex_offsets, ex_blob = out
    n = len(rep) // 8
    ex = np.frombuffer(ex_line, np.int64).reshape(n, EXAMPLES)
    valid = ex.reshape(-1) >= 0
    uuids = pa.StringArray.from_buffers(n * EXAMPLES, pa.py_buffer(ex_offsets), pa.py_buffer(ex_blob),
                                        pa.array(valid).buffers()[1] if not valid.all() else None)
    return LineClasses(lines, np.frombuffer(cls, np.int32), np.frombuffer(rep, np.int64).copy(),
                       np.frombuffer(count, np.int64), np.frombuffer(t_first, np.int64),
                       np.frombuffer(t_last, np.int64), ex, uuids)


def weighted_columns(table: pa.Table, row_lines: np.ndarray, first_line: int, lc: LineClasses | None,
                     line_count: int) -> pa.Table:
    """``table`` (rows decoded from lines ``row_lines``, 0-based in the block) with the class
    columns: weight, first/last time (null: read the row's own) and example lines and uuids
    (null: the row itself) of the rows that represent a class; every row's line."""
    n = table.num_rows
    weight = np.ones(n, np.int64)
    t_first = t_last = pa.nulls(n, pa.int64())
    ex_lines: list[pa.Array] = [pa.nulls(n, pa.int64())] * EXAMPLES
    ex_uuids: list[pa.Array] = [pa.nulls(n, pa.string())] * EXAMPLES
    if lc is not None and len(lc.rep):
        of_line = np.full(line_count, -1, np.int64)
        live = lc.rep >= 0  # -1: a class the decoder dissolved
        of_line[lc.rep[live]] = np.flatnonzero(live)
        c = of_line[row_lines]
        has = c >= 0
        cc = np.where(has, c, 0)
        weight = np.where(has, lc.count[cc], 1)
        t_first = pa.array(lc.t_first[cc], pa.int64(), mask=~has)
        t_last = pa.array(lc.t_last[cc], pa.int64(), mask=~has)
        for k in range(EXAMPLES):
            at = cc * EXAMPLES + k
            ex = lc.ex_line[cc, k]
            ok = has & (ex >= 0)
            ex_lines[k] = pa.array(ex + first_line, pa.int64(), mask=~ok)
            ex_uuids[k] = lc.ex_uuid.take(pa.array(at, pa.int64(), mask=~ok))
    cols = {LINE: pa.array(row_lines + first_line, pa.int64()), WEIGHT: pa.array(weight, pa.int64()),
            T_FIRST: t_first, T_LAST: t_last, **dict(zip(EX_LINES, ex_lines, strict=True)),
            **dict(zip(EX_UUIDS, ex_uuids, strict=True))}
    for name, arr in cols.items():
        table = table.append_column(name, arr)
    return table
