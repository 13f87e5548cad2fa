"""Columnar decoding of Hubble JSON lines (`hubble observe -o json`, exporter `events.log`).

A block of lines is first indexed with numpy: where lines start and end, which hold control
bytes or non-ASCII, which look like a flow object (``{"flow":{`` … ``}``). Lines the filters
may match (all of them without a prefilter) and every line that does not look like a flow object
are then classified:

* a flow line in Hubble's own spelling (no sign of anything else, see :mod:`.canonical`) is
  parsed by Arrow's C++ JSON reader into a projected table (with no columns when none is
  needed: the reader still checks the JSON); its JSON output is the input line itself;
* any other line (lowerCamelCase names, enums or 64-bit integers as numbers, lost events,
  agent/debug events, legacy bare flows, bad lines) takes the exact path, one at a time:
  orjson and :mod:`flowtrail.model.normalize` canonicalise it, or reject it as protojson would.

Rows from both paths are returned in input order; bad lines are reported with their file and
line number and skipped. Lines the prefilter skips are still checked for the shape of a JSON
object, so a damaged line is reported whatever the filter.
"""

from __future__ import annotations

import errno
import os
import re
import weakref
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.json as pajson

from flowtrail.model.normalize import NormalizeError, normalize_event
from flowtrail.model.schema import envelope_arrow_schema
from flowtrail.sources import canonscan
from flowtrail.sources.canonical import LARGE_ENUMS, SUSPECT, SUSPECT_RARE
from flowtrail.sources.linematch import LineMatcher
from flowtrail.util import compute as pc

DEFAULT_MAX_LINE = 1 << 20  # bytes; hubble's own reader gives up at 64 KiB, real flows are ~1-2 KiB
FLOW_PREFIX = b'{"flow":{'
_FLOW_WORD = int.from_bytes(FLOW_PREFIX[:8], "little")
_ROW_RE = re.compile(r"in row (\d+)")
_OPEN, _CLOSE = ord("{"), ord("}")


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


class FileSpans:
    """Byte ranges of a file by offset, read on demand: what a reader holds instead of the data
    of a block decoded by a worker process."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_RDONLY)
        self.size = os.fstat(self.fd).st_size
        weakref.finalize(self, os.close, self.fd)  # when the last rows reading from it are gone

    def read(self, start: int, end: int) -> bytes:
        return os.pread(self.fd, end - start, start)

    def copy_to(self, out: BinaryIO, start: int, end: int) -> None:
        """Write bytes [start, end) to ``out``: by sendfile when it is a file descriptor, so the
        bytes do not pass through this process."""
        fd = _fileno(out)
        if fd is not None:
            out.flush()
            try:
                while start < end:
                    sent = os.sendfile(fd, self.fd, start, end - start)
                    if not sent:
                        break
                    start += sent
            except OSError as exc:
                if exc.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                    raise
        if start < end:
            out.write(self.read(start, end))


class Rows:
    """The JSON text of decoded rows: a byte span of the input for rows kept as they were read,
    canonical bytes for the others. Spans are offsets into ``data`` (the block, or a
    :class:`FileSpans` from offset ``base``); a worker process sends them without the data."""

    def __init__(self, data: bytes | bytearray | memoryview | FileSpans | None, starts: np.ndarray, ends: np.ndarray,
                 replaced: dict[int, bytes], base: int = 0, own: bool = False) -> None:
        self.data = data
        self.starts = starts  # int64, -1 where the row is in ``replaced``
        self.ends = ends
        self.replaced = replaced
        self.base = base
        self.own = own  # data is these rows' own buffer (inline), sent along between processes
        self.spool = ""  # a file holding the rows, not yet opened by the receiver (see spooled)

    def __len__(self) -> int:
        return len(self.starts)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "data": self.data if self.own else None}

    def __getitem__(self, i: int) -> bytes:
        start = int(self.starts[i])
        if start < 0:
            return self.replaced[i]
        return self._slice(self.base + start, self.base + int(self.ends[i]))

    def _slice(self, start: int, end: int) -> bytes:
        if isinstance(self.data, FileSpans):
            return self.data.read(start, end)
        if isinstance(self.data, bytearray):
            return bytes(memoryview(self.data)[start:end])
        if isinstance(self.data, memoryview):  # a mapped file range
            return bytes(self.data[start:end])
        assert self.data is not None
        return self.data[start:end]

    def inline(self) -> Rows:
        """The same rows with their bytes held here (for a few rows sent between processes), as
        consecutive lines of one buffer: the receiver writes them with one call."""
        n = len(self)
        parts: list[bytes]
        if isinstance(self.data, (bytes, bytearray, memoryview)) and not self.replaced:
            # spans of the block, copied once (a worker inlines thousands per task)
            lengths = self.ends - self.starts
            joined = canonscan.gather_lines(self.data, self.starts + self.base, self.ends + self.base)
        else:
            parts = [self[i] for i in range(n)]
            lengths = np.fromiter(map(len, parts), np.int64, n)
            parts.append(b"")  # the last row's newline, without copying the joined buffer again
            joined = b"\n".join(parts)
        starts = np.zeros(n, np.int64)
        np.cumsum(lengths[:-1] + 1, out=starts[1:])
        return Rows(joined, starts, starts + lengths, {}, own=True)

    def spooled(self, path: str) -> Rows:
        """The same rows written to a new file at ``path``, as consecutive lines, and held as
        spans of it (:class:`FileSpans`, opened by the receiver with :meth:`open_spool`). A worker
        hands the few rows a selective filter keeps to the reading process this way: pickled
        through the pool's pipe, the 84 MB of the 1M-flow benchmark's drops were copied four
        times more and cost the reader ~0.1 s of CPU; from the file, the reader's sendfile
        copies them to the output once."""
        inline = self.inline()
        assert isinstance(inline.data, bytes)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = memoryview(inline.data)
            while view:
                view = view[os.write(fd, view):]
        except OSError:
            os.unlink(path)  # e.g. a full /dev/shm: the caller sends the rows otherwise
            raise
        finally:
            os.close(fd)
        out = Rows(None, inline.starts, inline.ends, {})
        out.spool = path
        return out

    def open_spool(self) -> None:
        """In the receiving process: read the rows from their spool file, which is unlinked
        now (its data lives as long as the rows hold it open)."""
        if self.spool:
            self.data = FileSpans(self.spool)
            os.unlink(self.spool)
            self.spool = ""

    def take(self, idx: np.ndarray) -> Rows:
        """Rows ``idx`` (increasing), renumbered from 0."""
        if len(idx) == len(self.starts):
            return self
        replaced = {}
        if self.replaced and len(idx):
            old = np.fromiter(self.replaced, np.int64, len(self.replaced))
            new = np.minimum(np.searchsorted(idx, old), len(idx) - 1)
            hit = idx[new] == old
            replaced = {int(n): self.replaced[int(o)] for o, n in zip(old[hit], new[hit], strict=True)}
        return Rows(self.data, self.starts[idx], self.ends[idx], replaced, self.base)

    def tail(self, n: int) -> Rows:
        return self.take(np.arange(max(len(self) - n, 0), len(self)))

    def to_list(self) -> list[bytes]:
        return [self[i] for i in range(len(self))]

    def write_lines(self, out: BinaryIO) -> None:
        """Write every row followed by a newline; runs of consecutive input lines are written as
        one slice of the input."""
        n = len(self.starts)
        if not n:
            return
        starts, ends = self.starts, self.ends
        verbatim = starts >= 0
        # row i+1 continues row i's run when it is the very next input line
        joined = verbatim[:-1] & verbatim[1:] & (starts[1:] == ends[:-1] + 1)
        cuts = np.flatnonzero(~joined) + 1
        data = self.data
        view = memoryview(data) if isinstance(data, (bytes, bytearray)) else None
        base = self.base
        first = 0
        for last in [*cuts.tolist(), n]:
            if starts[first] < 0:
                out.write(self.replaced[first] + b"\n")
            else:
                a, b = base + int(starts[first]), base + int(ends[last - 1])
                if view is not None:
                    if b < len(view) and view[b] == 10:
                        out.write(view[a : b + 1])
                    else:
                        out.write(view[a:b])
                        out.write(b"\n")
                else:
                    assert isinstance(data, FileSpans)
                    if data.read(b, b + 1) == b"\n":
                        data.copy_to(out, a, b + 1)
                    else:
                        data.copy_to(out, a, b)
                        out.write(b"\n")
            first = last


@dataclass
class Decoded:
    """Rows decoded from one block of lines, in input order.

    ``table`` has the envelope columns ``flow`` (struct, projected), ``lost_events``, ``node_name``
    and ``time`` (None when the caller asked for no columns); ``rows[i]`` is row i as canonical
    JSON bytes (the input line itself when it was already canonical) and ``line_numbers[i]`` its
    1-based line in ``source``.
    """

    table: pa.Table | None
    rows: Rows
    line_numbers: np.ndarray
    errors: list[DecodeError] = field(default_factory=list)
    stats: DecodeStats = field(default_factory=DecodeStats)

    @property
    def raw(self) -> list[bytes]:
        return self.rows.to_list()


_VALUE_END = np.zeros(256, bool)
_VALUE_END[np.frombuffer(b'0123456789el"', np.uint8)] = True
_AFTER_COMMA = np.zeros(256, bool)
_AFTER_COMMA[np.frombuffer(b'"{[0123456789-tfn', np.uint8)] = True
_BEFORE_SEP = np.zeros(256, bool)
_BEFORE_SEP[np.frombuffer(b":,}]", np.uint8)] = True


def _token_spaces(buf: np.ndarray, starts: np.ndarray, plain: np.ndarray) -> None:
    """Plain lines with a space between two JSON tokens are not plain: the rule of the C index
    (_lineindex.h token_space), by the bytes around each run of spaces."""
    sp = np.flatnonzero(buf == 32)
    if not sp.size:
        return
    n = len(buf)
    first = sp[(sp == 0) | (buf[np.maximum(sp - 1, 0)] != 32)]
    last = sp[(sp == n - 1) | (buf[np.minimum(sp + 1, n - 1)] != 32)]
    line = np.searchsorted(starts, first, side="right") - 1
    inside = (line >= 0) & plain[np.maximum(line, 0)] & (first > 0) & (last + 1 < n)
    if not inside.any():
        return
    p, q, line = first[inside], last[inside] + 1, line[inside]
    left, right, left2 = buf[p - 1], buf[q], buf[np.maximum(p - 2, 0)]
    value_end = _VALUE_END[left] | (left == ord("}")) | (left == ord("]"))
    token = ((left == ord("{")) | (left == ord("["))
             | ((left == ord(":")) & (left2 == ord('"')))
             | ((left == ord(",")) & (_VALUE_END[left2] | (left2 == ord("}")) | (left2 == ord("]")))
                & _AFTER_COMMA[right])
             | (value_end & _BEFORE_SEP[right]))
    plain[line[token]] = False


class LineIndex:
    """Where the lines of a block are and what they look like, computed with numpy."""

    def __init__(self, data: bytes | bytearray, max_line: int,
                 arrays: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> None:
        """``arrays``: (starts, ends, flags) as canonscan.index_lines gives them, when a caller
        computed them already."""
        self.data = data
        n = len(data)
        buf = np.frombuffer(data, np.uint8)
        self.buf = buf
        if arrays is not None or canonscan.AVAILABLE:
            starts, ends, flags = arrays if arrays is not None else canonscan.index_lines(data, max_line, FLOW_PREFIX)
            self.count = len(starts)
            self.starts, self.ends = starts, ends
            self.length = ends - starts
            self.empty = self.length == 0
            self.plain = (flags & 1).astype(bool)
            self.flow = (flags & 2).astype(bool)
            return
        # one pass finds newlines, other control bytes and non-ASCII bytes
        special = _special_bytes(buf)
        is_nl = buf[special] == 10
        newlines = special[is_nl]
        odd = special[~is_nl]
        ends = newlines if (not n or data[-1] == 10) else np.append(newlines, n)
        starts = np.empty(len(ends), np.int64)
        if len(ends):
            starts[0] = 0
            starts[1:] = ends[:-1] + 1
        ends = ends.astype(np.int64)
        self.count = len(ends)
        if odd.size:
            # a CR ending a line (CRLF files) is not part of it; any other control byte is odd
            cr = (ends > starts) & (buf[np.maximum(ends - 1, 0)] == 13)
            ends = ends - cr
            odd = odd[~np.isin(odd, ends[cr])]
        self.starts, self.ends = starts, ends
        length = ends - starts
        self.length = length
        self.empty = length == 0
        if n:
            first = buf[np.minimum(starts, n - 1)]
            last = buf[np.maximum(ends - 1, 0)]
            plain = (length >= 2) & (first == _OPEN) & (last == _CLOSE) & (length <= max_line)
        else:
            plain = np.zeros(0, bool)
        if odd.size:
            plain[np.searchsorted(ends, odd)] = False
        _token_spaces(buf, starts, plain)
        self.plain = plain
        # lines that start like a canonical flow response
        pre = len(FLOW_PREFIX)
        flowpfx = plain & (length >= pre + 2)
        cand = np.flatnonzero(flowpfx)
        if cand.size:
            # the first 8 bytes of each line as one integer (a view of the block with a stride of
            # one byte), then the 9th: a third of the cost of comparing a gathered 2-D array
            at = starts[cand]
            words = np.ndarray((n - 7,), "<u8", buf, 0, (1,))
            ok = (words[at] == _FLOW_WORD) & (buf[at + 8] == FLOW_PREFIX[8])
            flowpfx[cand[~ok]] = False
        self.flow = flowpfx

    @classmethod
    def with_matches(cls, data: bytes | bytearray, max_line: int,
                     matcher: LineMatcher) -> tuple[LineIndex, np.ndarray, np.ndarray]:
        """The index of ``data`` and ``matcher.lines`` over it: in one pass where the C scanner
        and the system's Hyperscan are both there."""
        if canonscan.AVAILABLE:
            got = matcher.scan_lines(data, max_line, FLOW_PREFIX)
            if got is not None:
                starts, ends, flags, line, which = got
                return cls(data, max_line, (starts, ends, flags)), line, which
        ix = cls(data, max_line)
        line, which = matcher.lines(data, ix.starts)
        return ix, line, which

    def line(self, i: int) -> bytes | bytearray:
        line = self.data[int(self.starts[i]) : int(self.ends[i])]
        return bytes(line) if isinstance(line, memoryview) else line

    def lines_of(self, positions: Iterable[int]) -> np.ndarray:
        pos = np.fromiter(positions, np.int64)
        return np.searchsorted(self.ends, pos) if pos.size else pos

    def binary(self, idx: np.ndarray | None = None) -> pa.Array:
        """Every line (or lines ``idx``, increasing) as an Arrow binary value, each with its line
        terminator: zero copy for every line, a copy of the lines for a subset."""
        offsets = np.empty(self.count + 1, np.int64)
        offsets[:-1] = self.starts
        offsets[-1] = len(self.data)
        arr = pa.Array.from_buffers(pa.large_binary(), self.count,
                                    [None, pa.py_buffer(offsets), pa.py_buffer(self.data)])
        return arr if idx is None or len(idx) == self.count else pc.take(arr, pa.array(idx))


_CHUNK = 1 << 20  # bytes, a multiple of 8: the masks of one chunk stay in the CPU's cache
_LANES = np.arange(8)


def _special_bytes(buf: np.ndarray) -> np.ndarray:
    """Positions (int64, increasing) of the bytes of ``buf`` below 32 or above 127: newlines,
    other control bytes and non-ASCII bytes (the negative ones as int8).

    A flat ``flatnonzero(mask)`` costs a pass over a 16 MB mask in memory and a slow byte-wise
    search of it. Here, chunk by chunk, the mask stays in the cache and is searched by 8-byte
    words; only the few words holding a hit are looked at byte by byte."""
    signed = buf.view(np.int8)
    n = len(signed)
    whole = n - n % 8
    low = np.empty(min(_CHUNK, whole), bool)
    word_hit = np.empty(len(low) // 8, bool)
    parts = []
    for start in range(0, whole, _CHUNK):
        end = min(start + _CHUNK, whole)
        mask = low[: end - start]
        np.less(signed[start:end], 32, out=mask)
        hit = word_hit[: (end - start) // 8]
        np.not_equal(mask.view(np.uint64), 0, out=hit)
        words = np.flatnonzero(hit)
        if words.size:
            pos = ((words * 8)[:, None] + _LANES).ravel()
            parts.append(start + pos[mask[pos]])
    if whole < n:
        parts.append(whole + np.flatnonzero(signed[whole:] < 32))
    return np.concatenate(parts).astype(np.int64, copy=False) if parts else np.zeros(0, np.int64)


class Decoder:
    """Decodes blocks of JSON lines into projected Arrow tables; build once, reuse per block."""

    def __init__(self, flow_paths: Iterable[str] | None = None, max_line: int = DEFAULT_MAX_LINE,
                 checked: bool = True) -> None:
        """``checked=False`` is for a caller that parses every row itself and reports those that
        fail (see :func:`parse_rows`): without columns, lines in Hubble's spelling are then not
        parsed here at all."""
        self.checked = checked
        paths = None if flow_paths is None else sorted(set(flow_paths) | {"time", "node_name"})
        self.schema = envelope_arrow_schema(paths)
        self.max_line = max_line
        self._parse_options = pajson.ParseOptions(explicit_schema=self.schema, unexpected_field_behavior="ignore")
        # without columns Arrow's reader still checks the JSON of every line, at half the cost
        self._check_options = pajson.ParseOptions(explicit_schema=pa.schema([]), unexpected_field_behavior="ignore")
        self._extractor: canonscan.Extractor | None = None

    # -- public -----------------------------------------------------------------------------------

    def decode_lines(self, lines: Sequence[bytes], source: str = "<lines>", first_line: int = 1) -> Decoded:
        """Decode ``lines`` (without newlines); line ``i`` has number ``first_line + i``."""
        data = b"\n".join(lines) + b"\n" if lines else b""
        return self.decode_block(data, source, first_line)

    def decode_block(
        self,
        data: bytes | bytearray,
        source: str = "<block>",
        first_line: int = 1,
        needle_groups: Sequence[Sequence[Sequence[bytes]]] | None = None,
        markers: Sequence[bytes] = (),
        columns: bool = True,
        wanted: np.ndarray | None = None,
        index: LineIndex | None = None,
    ) -> Decoded:
        """Decode a block of whole lines.

        With ``needle_groups`` (from FilterSet.needle_groups) only lines that, for some filter,
        contain a needle of each of its groups are decoded, plus lines containing a ``marker``
        (spellings under which a needle could hide) and lines that are not plain JSON objects
        (so that bad lines are reported). The caller guarantees no other line can pass.
        With ``columns`` false no table is built: rows are only classified and canonicalised
        (and, unless the decoder was built with ``checked=False``, their JSON checked).
        ``wanted`` (a boolean per line) is another prefilter: the lines the caller selected
        itself; lines that are not plain JSON objects are decoded as well. ``index``: this
        block's :class:`LineIndex`, when the caller needed it to compute ``wanted``.
        """
        if wanted is None and needle_groups is not None:
            ix, wanted = _candidates(data, self.max_line, index, needle_groups, markers)
        else:
            ix = index if index is not None else LineIndex(data, self.max_line)
            wanted = np.ones(ix.count, bool) if wanted is None else wanted | ~ix.plain
        stats = DecodeStats(lines=ix.count, blank=int(ix.empty.sum()))
        errors: list[DecodeError] = []
        wanted &= ~ix.empty
        fast = np.flatnonzero(wanted & ix.flow)
        slow = np.flatnonzero(wanted & ~ix.flow)
        if canonscan.AVAILABLE:
            # one C pass checks the spelling and the JSON, and reads the projected columns
            table = None
            if columns:
                if self._extractor is None:
                    self._extractor = canonscan.Extractor(self.schema)
                suspect, table = self._extractor.extract(ix.data, ix.starts[fast], ix.ends[fast])
            else:
                suspect = canonscan.noncanonical(ix.data, ix.starts[fast], ix.ends[fast])
            if suspect.any():
                slow = np.union1d(slow, fast[suspect])
                fast = fast[~suspect]
            rejected = np.zeros(0, np.int64)
        else:
            lines = ix.binary(fast)  # taken once for both the check and the parse
            if fast.size:
                suspect = self._suspect(ix, fast, lines)
                if suspect.any():
                    slow = np.union1d(slow, fast[suspect])
                    fast = fast[~suspect]
                    lines = pc.filter(lines, pa.array(~suspect))
            if columns or self.checked:
                table, rejected = self._parse_fast(fast, lines, self._parse_options if columns else self._check_options)
            else:
                table, rejected = None, np.zeros(0, np.int64)
        if rejected.size:
            slow = np.union1d(slow, rejected)
            fast = np.setdiff1d(fast, rejected, assume_unique=True)
        if not columns:
            table = None
        # the exact path, one line at a time (only lines the fast path cannot take)
        slow_rows: list[dict[str, Any]] = []
        slow_kept: list[int] = []
        replaced_bytes: list[bytes] = []
        for i in slow.tolist():
            line = ix.line(i)
            if ix.length[i] > self.max_line:
                errors.append(DecodeError(source, first_line + i, f"line longer than {self.max_line} bytes"))
                continue
            if not line.strip():
                stats.blank += 1
                continue
            stats.slow_path += 1
            try:
                kind, env = normalize_event(orjson.loads(line))
            except orjson.JSONDecodeError as exc:
                errors.append(DecodeError(source, first_line + i, f"invalid JSON: {exc}"))
                continue
            except NormalizeError as exc:
                errors.append(DecodeError(source, first_line + i, str(exc)))
                continue
            if kind not in ("flow", "lost_events"):
                stats.other_events += 1
                continue
            slow_rows.append(env)
            slow_kept.append(i)
            replaced_bytes.append(orjson.dumps(env))
            if kind == "lost_events":
                stats.lost_events += 1
        order = fast
        starts, ends = ix.starts[fast], ix.ends[fast]
        replaced: dict[int, bytes] = {}
        if slow_kept:
            kept = np.asarray(slow_kept, np.int64)
            order = np.concatenate([fast, kept])
            perm = np.argsort(order, kind="stable")
            order = order[perm]
            starts = np.concatenate([starts, np.full(len(kept), -1, np.int64)])[perm]
            ends = np.concatenate([ends, np.full(len(kept), -1, np.int64)])[perm]
            where = np.empty(len(perm), np.int64)
            where[perm] = np.arange(len(perm))
            replaced = {int(where[len(fast) + k]): b for k, b in enumerate(replaced_bytes)}
            if table is not None:
                slow_table = pa.Table.from_pylist([_fit(env, self.schema) for env in slow_rows], schema=self.schema)
                table = pa.concat_tables([table, slow_table]) if table.num_rows else slow_table
                if (perm != np.arange(len(perm))).any():
                    table = pc.take(table, pa.array(perm))
        stats.errors = len(errors)
        stats.flows = len(order) - stats.lost_events
        rows = Rows(data, starts, ends, replaced)
        return Decoded(table, rows, order + first_line, errors, stats)

    # -- internals --------------------------------------------------------------------------------

    def _suspect(self, ix: LineIndex, idx: np.ndarray, arr: pa.Array) -> np.ndarray:
        """Which of the flow-shaped lines ``idx`` (``arr``: their bytes) need the exact path."""
        if len(idx) == ix.count:
            text, offsets = ix.data, ix.starts
        else:
            text, offsets = _values(arr)
        out = _matches(arr, SUSPECT)
        for pattern, needle in SUSPECT_RARE:
            if needle in text:
                out |= _matches(arr, pattern)
        for key, names in LARGE_ENUMS.items():
            prefix = f'"{key}":"'.encode()
            hits: list[int] = []
            at = text.find(prefix)
            while at != -1:
                start = at + len(prefix)
                end = text.find(b'"', start)
                if text[start:end].decode("ascii", "replace") not in names:
                    hits.append(at)
                at = text.find(prefix, end)
            if hits:
                out[np.searchsorted(offsets, np.asarray(hits), side="right") - 1] = True
        return out

    def _parse_fast(self, idx: np.ndarray, arr: pa.Array, options: pajson.ParseOptions) -> tuple[pa.Table, np.ndarray]:
        """Parse lines ``idx`` (``arr``: their bytes) with Arrow: the table of accepted rows (in
        order) and the indices of the lines it rejected."""
        if not idx.size:
            return options.explicit_schema.empty_table(), idx
        tables: list[pa.Table] = []
        rejected: list[int] = []
        self._parse_range(arr, 0, len(arr), tables, rejected, options)
        table = pa.concat_tables(tables) if len(tables) > 1 else tables[0] if tables else options.explicit_schema.empty_table()
        return table, idx[np.asarray(rejected, np.int64)] if rejected else np.zeros(0, np.int64)

    def _parse_range(self, arr: pa.Array, lo: int, hi: int, tables: list[pa.Table], rejected: list[int],
                     options: pajson.ParseOptions) -> None:
        """Parse lines [lo, hi) of ``arr``, appending tables in order and rejected line indices.

        Arrow reports the failing row, not the line; rows and lines agree only while every line
        holds one value, so each guess is checked by the row count of what parsed before it and
        a disagreement falls back to halving the range."""
        while lo < hi:
            try:
                table = self._read(arr, lo, hi, options)
            except pa.ArrowInvalid as exc:
                m = _ROW_RE.search(str(exc))
                bad = lo + int(m.group(1)) if m else -1
                if lo <= bad < hi:
                    if bad == lo:
                        head = options.explicit_schema.empty_table()
                    else:
                        try:
                            head = self._read(arr, lo, bad, options)
                        except pa.ArrowInvalid:
                            head = None
                    if head is not None and head.num_rows == bad - lo:
                        if head.num_rows:
                            tables.append(head)
                        rejected.append(bad)
                        lo = bad + 1
                        continue
                self._bisect(arr, lo, hi, tables, rejected, options)
                return
            if table.num_rows == hi - lo:
                tables.append(table)
                return
            self._bisect(arr, lo, hi, tables, rejected, options)
            return

    def _bisect(self, arr: pa.Array, lo: int, hi: int, tables: list[pa.Table], rejected: list[int],
                options: pajson.ParseOptions) -> None:
        if hi - lo == 1:
            try:
                table = self._read(arr, lo, hi, options)
            except pa.ArrowInvalid:
                table = None
            if table is not None and table.num_rows == 1:
                tables.append(table)
            else:
                rejected.append(lo)
            return
        mid = (lo + hi) // 2
        self._parse_range(arr, lo, mid, tables, rejected, options)
        self._parse_range(arr, mid, hi, tables, rejected, options)

    def _read(self, arr: pa.Array, lo: int, hi: int, options: pajson.ParseOptions) -> pa.Table:
        offs = np.frombuffer(arr.buffers()[1], np.int64, count=len(arr) + 1, offset=arr.offset * 8)
        a, b = int(offs[lo]), int(offs[hi])
        buf = arr.buffers()[2].slice(a, b - a)
        opts = pajson.ReadOptions(use_threads=False, block_size=max(b - a, 1) + 1)
        return pajson.read_json(pa.BufferReader(buf), read_options=opts, parse_options=options)


def parse_rows(dec: Decoded, idx: Sequence[int], source: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """orjson's parse of rows ``idx`` of a block decoded unchecked, one at a time: (row, object)
    for those that parse; the others become errors of ``dec`` (and leave its flow count)."""
    rows = dec.rows
    failed = False
    for i in idx:
        try:
            env = orjson.loads(rows[i])
        except orjson.JSONDecodeError as exc:
            dec.errors.append(DecodeError(source, int(dec.line_numbers[i]), f"invalid JSON: {exc}"))
            dec.stats.errors += 1
            dec.stats.flows -= 1
            failed = True
            continue
        yield i, env
    if failed:
        dec.errors.sort(key=lambda e: e.line)


def _fileno(out: BinaryIO) -> int | None:
    try:
        return out.fileno() if hasattr(os, "sendfile") else None
    except (OSError, ValueError, AttributeError):  # io.BytesIO and other in-memory streams
        return None


def _values(arr: pa.Array) -> tuple[bytes, np.ndarray]:
    """A copy of a large_binary array's values and where each starts in it."""
    offsets = np.frombuffer(arr.buffers()[1], np.int64, count=len(arr) + 1, offset=arr.offset * 8)
    start, end = int(offsets[0]), int(offsets[-1])
    return bytes(memoryview(arr.buffers()[2])[start:end]), offsets[:-1] - start


def _matches(arr: pa.Array, pattern: str) -> np.ndarray:
    hit = pc.match_substring_regex(arr, pattern)
    return np.asarray(hit.to_numpy(zero_copy_only=False), dtype=bool)


def _fit(value: Any, typ: pa.DataType | pa.Schema) -> Any:
    """``value`` (a canonical envelope or part of one) shaped for ``typ``: enum numbers without a
    name, which protojson keeps as numbers, go into the string columns as their digits."""
    if isinstance(typ, pa.Schema):
        return {f.name: _fit(value[f.name], f.type) for f in typ if f.name in value}
    if isinstance(value, dict) and pa.types.is_struct(typ):
        return {f.name: _fit(value[f.name], f.type) for f in typ if f.name in value}
    if isinstance(value, list) and pa.types.is_list(typ):
        return [_fit(v, typ.value_type) for v in value]
    if isinstance(value, int) and not isinstance(value, bool) and pa.types.is_string(typ):
        return str(value)
    return value


def _candidates(data: bytes | bytearray, max_line: int, index: LineIndex | None,
                needle_groups: Sequence[Sequence[Sequence[bytes]]], markers: Sequence[bytes]) -> tuple[LineIndex, np.ndarray]:
    """The block's index (``index``, or made here, with the needle search where one pass can do
    both), and the lines that may pass the prefilter or must be looked at anyway."""
    # control-byte markers (tabs, CRs) are in the lines that are not plain already
    markers = [m for m in markers if not (len(m) == 1 and m[0] < 32)]
    if any(not needle for groups in needle_groups for group in groups for needle in group):
        ix = index if index is not None else LineIndex(data, max_line)
        return ix, np.ones(ix.count, bool)  # an empty needle is in every line
    key = (tuple(tuple(tuple(g) for g in groups) for groups in needle_groups), tuple(markers))
    scan_group = _RAREST_GROUP.get(key)
    if scan_group is None:
        # First block: every group is searched, and each filter's rarest group in it (fewest
        # lines) is the one searched in later blocks, its other groups checked on those lines.
        # The filters order groups by a guess; a namespace most flows are in would be a bad one.
        scan_group = [list(range(len(groups))) for groups in needle_groups]
    sets = [tuple(needle_groups[k][g]) for k, gs in enumerate(scan_group) for g in gs] + [tuple(markers)]
    matcher = needle_matcher(tuple(sets))  # one Hyperscan pass finds all sets
    if matcher is None:
        ix = index if index is not None else LineIndex(data, max_line)
        found = _lines_holding(ix, sets)
    else:
        if index is None:
            ix, line, which = LineIndex.with_matches(data, max_line, matcher)
        else:
            ix = index
            line, which = matcher.lines(data, ix.starts)
        found = [line[which == k] for k in range(len(sets))]
    chosen = ~ix.plain  # not a plain object: bad, blank, spaced out or with control bytes
    chosen[found[-1]] = True
    first = 0
    rarest = []
    for k, groups in enumerate(needle_groups):
        scanned = scan_group[k]
        per_group = found[first : first + len(scanned)]
        first += len(scanned)
        lines = per_group[0]
        for other in per_group[1:]:
            lines = np.intersect1d(lines, other, assume_unique=True)
        for g, group in enumerate(groups):
            if g in scanned or not lines.size:
                continue
            keep = [i for i in lines.tolist() if any(n in ix.line(i) for n in group)]
            lines = np.asarray(keep, np.int64)
        chosen[lines] = True
        rarest.append([scanned[int(np.argmin([len(x) for x in per_group]))]])
    if len(scan_group[0]) > 1 or any(len(gs) > 1 for gs in scan_group):
        _RAREST_GROUP[key] = rarest
    return ix, chosen


_RAREST_GROUP: dict[Any, list[list[int]]] = {}


def _lines_holding(ix: LineIndex, sets: Sequence[tuple[bytes, ...]]) -> list[np.ndarray]:
    """For each set of byte strings, the lines holding one of them, without Hyperscan (not
    installed, or a pattern it refused)."""
    out = []
    # (a mapped file range has no find(): this fallback, for a pattern Hyperscan refused, copies it)
    text = bytes(ix.data) if isinstance(ix.data, memoryview) else ix.data
    for needles in sets:
        hits: list[int] = []
        for needle in needles:
            _occurrences(text, needle, hits)
        out.append(np.unique(ix.lines_of(hits)))
    return out


_MATCHERS: dict[tuple[tuple[bytes, ...], ...], LineMatcher | None] = {}


def needle_matcher(sets: tuple[tuple[bytes, ...], ...]) -> LineMatcher | None:
    """A matcher of the byte strings of ``sets``, each reported with the index of its set; None
    without Hyperscan. Built once per needle set and process."""
    if sets not in _MATCHERS:
        patterns = [(i, b"".join(b"\\x%02x" % c for c in needle)) for i, needles in enumerate(sets)
                    for needle in needles if needle]
        _MATCHERS[sets] = LineMatcher.compile([p for _, p in patterns], [i for i, _ in patterns]) if patterns else None
    return _MATCHERS[sets]


def _occurrences(data: bytes | bytearray, needle: bytes, out: list[int]) -> None:
    """Append the position of the first occurrence of ``needle`` on each line that has one."""
    find = data.find
    pos = find(needle)
    while pos != -1:
        out.append(pos)
        end = find(b"\n", pos)
        if end == -1:
            break
        pos = find(needle, end)
