"""Columnar decoding of Hubble JSON lines (`hubble observe -o json`, exporter `events.log`).

Fast path: the lines a filter could match are parsed by Arrow's C++ JSON reader straight into a
projected Arrow table holding only the fields that are read. Lines the fast path cannot take
as they are (lowerCamelCase names, enums or 64-bit integers as numbers, legacy bare flows,
agent/debug events) go through :mod:`flowtrail.model.normalize`, one at a time, and rejoin the
batch in input order. Bad lines are reported with their file and line number and skipped.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson

from flowtrail.model.normalize import NormalizeError, normalize_event
from flowtrail.model.schema import camel, envelope_arrow_schema, path_camel_names

DEFAULT_MAX_LINE = 1 << 20  # bytes; hubble's own reader gives up at 64 KiB, real flows are ~1-2 KiB
_ROW_RE = re.compile(r"in row (\d+)")
# lowerCamel keys that any camel-spelled Hubble line carries; seeing one routes its line to the
# exact path even when the filter does not read that field, so passthrough output stays canonical.
_CAMEL_MARKERS = tuple(
    f'"{camel(k)}"'.encode()
    for k in ("node_name", "pod_name", "source_port", "destination_port", "is_reply", "event_type",
              "lost_events", "agent_event", "debug_event", "node_status", "traffic_direction")
)


@dataclass
class DecodeError:
    source: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.source}:{self.line}: {self.message}"


@dataclass
class DecodeStats:
    lines: int = 0
    flows: int = 0
    lost_events: int = 0
    other_events: int = 0
    blank: int = 0
    errors: int = 0
    slow_path: int = 0

    def add(self, other: DecodeStats) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass
class Decoded:
    """Rows decoded from one block of lines, in input order.

    ``table`` has the envelope columns ``flow`` (struct, projected), ``lost_events``, ``node_name``
    and ``time``; ``raw[i]`` is row i as canonical JSON bytes (the input line itself when it was
    already canonical) and ``line_numbers[i]`` its 1-based line in ``source``.
    """

    table: pa.Table
    raw: list[bytes]
    line_numbers: Sequence[int]
    errors: list[DecodeError] = field(default_factory=list)
    stats: DecodeStats = field(default_factory=DecodeStats)


class Decoder:
    """Decodes blocks of JSON lines into projected Arrow tables; build once, reuse per block."""

    def __init__(self, flow_paths: Iterable[str] | None = None, max_line: int = DEFAULT_MAX_LINE) -> None:
        paths = None if flow_paths is None else sorted(set(flow_paths) | {"time", "node_name"})
        self.schema = envelope_arrow_schema(paths)
        self.max_line = max_line
        markers = set(_CAMEL_MARKERS)
        if paths is not None:
            markers |= {f'"{n}"'.encode() for n in path_camel_names(paths)}
        self._camel_markers = tuple(sorted(markers))
        self._parse_options = pajson.ParseOptions(explicit_schema=self.schema, unexpected_field_behavior="ignore")

    # -- public -----------------------------------------------------------------------------------

    def decode_lines(self, lines: Sequence[bytes], source: str = "<lines>", first_line: int = 1) -> Decoded:
        """Decode ``lines`` (without newlines); line ``i`` has number ``first_line + i``."""
        return self._decode(list(lines), [first_line + i for i in range(len(lines))], source)

    def decode_block(
        self,
        data: bytes,
        source: str = "<block>",
        first_line: int = 1,
        needle_groups: Sequence[Sequence[Sequence[bytes]]] | None = None,
        markers: Sequence[bytes] = (),
    ) -> Decoded:
        """Decode a block of whole lines.

        With ``needle_groups`` (from FilterSet.needle_groups) only lines that, for some filter,
        contain a needle of each of its groups are decoded, plus lines containing a ``marker``
        (spellings under which a needle could hide). The caller guarantees no other line can pass.
        """
        if needle_groups is None:
            lines = data.split(b"\n")
            if lines and not lines[-1]:
                lines.pop()
            numbers: Sequence[int] = range(first_line, first_line + len(lines))
            stats_lines = len(lines)
        else:
            lines, numbers = _candidate_lines(data, needle_groups, markers, first_line)
            stats_lines = data.count(b"\n") + (0 if data.endswith(b"\n") or not data else 1)
        decoded = self._decode(lines, numbers, source)
        decoded.stats.lines = stats_lines
        return decoded

    # -- internals --------------------------------------------------------------------------------

    def _decode(self, lines: list[bytes], numbers: Sequence[int], source: str) -> Decoded:
        stats = DecodeStats(lines=len(lines))
        errors: list[DecodeError] = []
        if any(b"\r" in ln for ln in lines[:1]) or any(ln.endswith(b"\r") for ln in lines):
            lines = [ln.rstrip(b"\r") for ln in lines]
        fast: list[int] = []
        slow: list[int] = []
        markers = self._camel_markers
        max_line = self.max_line
        for i, ln in enumerate(lines):
            if len(ln) > max_line:
                errors.append(DecodeError(source, numbers[i], f"line longer than {max_line} bytes"))
                continue
            if not ln or ln.isspace():
                stats.blank += 1
                continue
            fast.append(i)
        joined = b"\n".join(lines[i] for i in fast)
        if any(m in joined for m in markers):
            keep = []
            for i in fast:
                if any(m in lines[i] for m in markers):
                    slow.append(i)
                else:
                    keep.append(i)
            fast = keep
        table, fast, rejected = self._parse_fast(lines, fast)
        slow.extend(rejected)
        # Fast rows that are neither flows nor lost events (agent/debug events, legacy bare flows,
        # objects of another shape) are classified by the exact path.
        if table.num_rows:
            flow_valid = table.column("flow").is_valid()
            lost_valid = table.column("lost_events").is_valid()
            neither = np.asarray(pc.invert(pc.or_(flow_valid, lost_valid)).to_numpy(zero_copy_only=False))
            if neither.any():
                fast_arr = np.asarray(fast)
                slow.extend(fast_arr[neither].tolist())
                ok_rows = np.flatnonzero(~neither)
                fast = fast_arr[ok_rows].tolist()
                table = table.take(pa.array(ok_rows))
        raw = [lines[i] for i in fast]
        order = list(fast)
        if slow:
            slow.sort()
            stats.slow_path += len(slow)
            rows: list[dict[str, object]] = []
            slow_kept: list[int] = []
            for i in slow:
                try:
                    kind, env = normalize_event(orjson.loads(lines[i]))
                except orjson.JSONDecodeError as exc:
                    errors.append(DecodeError(source, numbers[i], f"invalid JSON: {exc}"))
                    continue
                except NormalizeError as exc:
                    errors.append(DecodeError(source, numbers[i], str(exc)))
                    continue
                if kind not in ("flow", "lost_events"):
                    stats.other_events += 1
                    continue
                rows.append(env)
                raw.append(orjson.dumps(env))
                slow_kept.append(i)
            if rows:
                slow_table = pa.Table.from_pylist(rows, schema=self.schema)
                table = pa.concat_tables([table, slow_table]) if table.num_rows else slow_table
                order.extend(slow_kept)
                perm = sorted(range(len(order)), key=order.__getitem__)
                if perm != list(range(len(order))):
                    table = table.take(pa.array(perm, pa.int64()))
                    raw = [raw[k] for k in perm]
                    order = [order[k] for k in perm]
        stats.errors = len(errors)
        lost = table.column("lost_events").is_valid() if table.num_rows else None
        stats.lost_events = int(pc.sum(lost).as_py() or 0) if lost is not None else 0
        stats.flows = table.num_rows - stats.lost_events
        return Decoded(table, raw, _Reindexed(numbers, order), errors, stats)

    def _parse_fast(self, lines: list[bytes], idx: list[int]) -> tuple[pa.Table, list[int], list[int]]:
        """Parse lines[idx] with Arrow: the table of accepted rows, their indices, the rejected ones."""
        tables: list[pa.Table] = []
        rejected: list[int] = []
        kept: list[int] = []
        start = 0
        while start < len(idx):
            part = idx[start:]
            buf = b"\n".join(lines[i] for i in part)
            try:
                tables.append(self._read(buf))
                kept.extend(part)
                break
            except pa.ArrowInvalid as exc:
                m = _ROW_RE.search(str(exc))
                if m is None:
                    rejected.extend(part)
                    break
                bad = int(m.group(1))
                if bad > 0:
                    tables.append(self._read(b"\n".join(lines[i] for i in part[:bad])))
                    kept.extend(part[:bad])
                rejected.append(part[bad])
                start += bad + 1
        if not tables:
            return self.schema.empty_table(), kept, rejected
        table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
        return table, kept, rejected

    def _read(self, buf: bytes) -> pa.Table:
        if not buf:
            return self.schema.empty_table()
        opts = pajson.ReadOptions(use_threads=False, block_size=len(buf) + 1)
        return pajson.read_json(pa.BufferReader(buf), read_options=opts, parse_options=self._parse_options)


def _line_starts(data: bytes, needle: bytes, out: set[int]) -> None:
    find = data.find
    rfind = data.rfind
    pos = find(needle)
    while pos != -1:
        start = rfind(b"\n", 0, pos) + 1
        out.add(start)
        end = find(b"\n", pos)
        if end == -1:
            break
        pos = find(needle, end)


def _candidate_lines(
    data: bytes,
    needle_groups: Sequence[Sequence[Sequence[bytes]]],
    markers: Sequence[bytes],
    first_line: int,
) -> tuple[list[bytes], _LineNumbers]:
    """Lines of ``data`` that may pass the prefilter, with their line numbers."""
    find = data.find
    chosen: set[int] = set()
    for groups in needle_groups:
        starts: set[int] = set()
        for needle in groups[0]:
            _line_starts(data, needle, starts)
        for group in groups[1:]:
            if not starts:
                break
            kept = set()
            for s in starts:
                e = find(b"\n", s)
                line = data[s : len(data) if e == -1 else e]
                if any(n in line for n in group):
                    kept.add(s)
            starts = kept
        chosen |= starts
    for marker in markers:
        if marker.startswith(b"\\") and len(marker) == 2:
            continue
        _line_starts(data, marker, chosen)
    escapes = {m[1:2] for m in markers if m.startswith(b"\\") and len(m) == 2}
    if escapes:
        # one memchr pass for backslashes; most are \" in DNS summaries and need no decode
        pos = find(b"\\")
        while pos != -1:
            nxt = data[pos + 1 : pos + 2]
            if nxt in escapes:
                chosen.add(data.rfind(b"\n", 0, pos) + 1)
            pos = find(b"\\", pos + 2 if nxt == b"\\" else pos + 1)
    ordered = sorted(chosen)
    lines = []
    for s in ordered:
        e = find(b"\n", s)
        lines.append(data[s : len(data) if e == -1 else e])
    return lines, _LineNumbers(data, ordered, first_line)


class _LineNumbers(Sequence[int]):
    """Line numbers of candidate lines, counted only when asked (for error reports): counting
    newlines up to every candidate would cost a pass over the block."""

    def __init__(self, data: bytes, starts: list[int], first_line: int) -> None:
        self._data, self._starts, self._first = data, starts, first_line

    def __len__(self) -> int:
        return len(self._starts)

    def __getitem__(self, i: int) -> int:  # type: ignore[override]
        return self._first + self._data.count(b"\n", 0, self._starts[i])


class _Reindexed(Sequence[int]):
    def __init__(self, base: Sequence[int], order: list[int]) -> None:
        self._base, self._order = base, order

    def __len__(self) -> int:
        return len(self._order)

    def __getitem__(self, i: int) -> int:  # type: ignore[override]
        return self._base[self._order[i]]
