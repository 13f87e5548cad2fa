"""The observe pipeline over blocks of lines: prefilter → decode → filter → time window → format.

Pure with respect to I/O: a block of bytes in, formatted records out. Large regular files are
split into byte ranges processed by worker processes (all cores), results kept in file order.
JSON records travel from the workers as byte spans of the file, which the reading process maps,
rather than as copies of the lines.
"""

from __future__ import annotations

import contextlib
import gc
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import numpy as np
import orjson
import pyarrow as pa

from flowtrail.filters import FilterSet
from flowtrail.filters.compile import NONCANONICAL_MARKERS
from flowtrail.model.timeutil import parse_rfc3339_ns
from flowtrail.sinks.printer import PrintOptions, format_compact, format_dict, table_cells
from flowtrail.sources import canonscan
from flowtrail.sources.decode import DecodeError, Decoder, DecodeStats, FileSpans, Rows, parse_rows
from flowtrail.sources.files import (
    Input,
    InputError,
    MappedRange,
    grouped_ranges,
    iter_blocks,
    open_binary,
    read_range_into,
    split_ranges,
    spool_dir,
)
from flowtrail.sources.parallel import ordered_map
from flowtrail.util import compute as pc

PARALLEL_MIN_BYTES = 32 << 20


@dataclass(frozen=True)
class ObserveSpec:
    filters: FilterSet
    print_opts: PrintOptions
    since_ns: int | None = None
    until_ns: int | None = None
    want_times: bool = False


@dataclass
class BlockResult:
    """The records of one block, in order, in one of three forms: JSON rows (``rows``), formatted
    text (``texts``) or table cells (``cells``)."""

    count: int
    times: np.ndarray | None
    errors: list[DecodeError]
    stats: DecodeStats
    lines: int = 0
    first_line: int = 1
    rows: Rows | None = None
    texts: list[bytes] | None = None
    cells: list[list[str]] | None = None

    def slice(self, lo: int, hi: int) -> BlockResult:
        """The same block holding only records [lo, hi)."""
        hi = min(hi, self.count)
        lo = min(lo, hi)
        if lo == 0 and hi == self.count:
            return self
        return BlockResult(
            hi - lo,
            None if self.times is None else self.times[lo:hi],
            self.errors,
            self.stats,
            self.lines,
            self.first_line,
            None if self.rows is None else self.rows.take(np.arange(lo, hi)),
            None if self.texts is None else self.texts[lo:hi],
            None if self.cells is None else self.cells[lo:hi],
        )

    def records(self) -> list[Any]:
        if self.rows is not None:
            return self.rows.to_list()
        if self.texts is not None:
            return self.texts
        return self.cells or []

    def write(self, out: BinaryIO) -> None:
        """Write the records of a JSON or compact block (dict and table have separators)."""
        if self.rows is not None:
            self.rows.write_lines(out)
        elif self.texts:
            out.write(b"".join(self.texts))


@dataclass
class Totals:
    stats: DecodeStats = field(default_factory=DecodeStats)
    matched: int = 0


def _times_ns(table: pa.Table) -> np.ndarray:
    col = table.column("time")
    try:
        ts = pc.cast(col, pa.timestamp("ns", tz="UTC"))
        vals = pc.fill_null(pc.cast(ts, pa.int64()), 0)
        return np.asarray(vals.to_numpy(), dtype=np.int64)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return np.array([parse_rfc3339_ns(v) or 0 for v in col.to_pylist()], dtype=np.int64)


class BlockProcessor:
    def __init__(self, spec: ObserveSpec) -> None:
        self.spec = spec
        fs = spec.filters
        self.needles = fs.needle_groups() if not fs.empty else None
        out = spec.print_opts.output
        self.fmt = {"compact": format_compact, "dict": format_dict}.get(out)
        self.json = out in ("json", "jsonpb")
        self.table = out in ("table", "tab")
        self.need_times = spec.since_ns is not None or spec.until_ns is not None or spec.want_times
        # Nothing to select on: lines are classified and canonicalised, not decoded into columns.
        # JSON output copies them, so Arrow's reader still checks them; the other formats parse
        # every row they print anyway, which checks it (parse_rows).
        self.columns = not fs.empty or self.need_times
        self.decoder = Decoder(fs.paths, checked=self.json or self.columns)

    def process(self, data: bytes | bytearray, source: str, first_line: int) -> BlockResult:
        spec = self.spec
        dec = self.decoder.decode_block(
            data, source, first_line, self.needles, NONCANONICAL_MARKERS if self.needles else (),
            columns=self.columns,
        )
        lines = dec.stats.lines
        rows, table = dec.rows, dec.table
        mask = np.ones(len(rows), dtype=bool)
        if table is not None and not spec.filters.empty:
            mask = spec.filters.mask(table)
        times = None
        if table is not None and self.need_times:
            t = _times_ns(table)
            if spec.since_ns is not None:
                mask &= t >= spec.since_ns
            if spec.until_ns is not None:
                mask &= t <= spec.until_ns
            times = t[mask] if spec.want_times else None
        idx = np.flatnonzero(mask)
        if self.json:
            res = BlockResult(len(idx), times, dec.errors, dec.stats, lines, first_line)
            res.rows = rows.take(idx)
            return res
        # Without columns each printed row is parsed here, which checks its JSON (the decoder
        # did not); with them Arrow has checked it. Times are only read with columns.
        parsed = parse_rows(dec, idx.tolist(), source) if not self.columns else \
            ((i, orjson.loads(rows[i])) for i in idx.tolist())
        opts = spec.print_opts
        res = BlockResult(0, times, dec.errors, dec.stats, lines, first_line)
        if self.table:
            res.cells = [table_cells(env, opts) for _, env in parsed]
            res.count = len(res.cells)
        else:
            assert self.fmt is not None
            fmt = self.fmt
            res.texts = [fmt(env, opts).encode() for _, env in parsed]
            res.count = len(res.texts)
        return res


_WORKER: BlockProcessor | None = None


_BUFFER = bytearray()
_SPOOL: str | None = None  # where workers leave the rows they keep (set before forking)


def _work(args: tuple[str, int, int]) -> BlockResult:
    path, start, end = args
    assert _WORKER is not None
    # mapped when the C scanner reads the block; the Arrow fallback's checks search bytes objects
    mapped = MappedRange(path, start, end) if canonscan.AVAILABLE else None
    # the result holds no reference to the data once sent, so the next block reuses the buffer
    data = mapped.view if mapped is not None else read_range_into(path, start, end, _BUFFER)
    try:
        res = _WORKER.process(data, path, 1)  # type: ignore[arg-type]  # a memoryview reads as bytes here
        if res.rows is not None:
            if res.count * 4 < res.lines:
                # a few rows: sent as a file, or with the result (no spool, or it is full)
                spooled = None
                if _SPOOL and res.count:
                    with contextlib.suppress(OSError):
                        spooled = res.rows.spooled(os.path.join(_SPOOL, f"rows-{start}"))
                res.rows = spooled if spooled is not None else res.rows.inline()
            else:
                res.rows.base = start  # many: send their spans; the reader reads them from the file
                res.rows.data = None
    finally:
        del data
        if mapped is not None:
            mapped.close()
    return res


def run_input(proc: BlockProcessor, inp: Input, workers: int | None = None) -> Iterator[BlockResult]:
    """Blocks of one input in order; errors carry absolute line numbers."""
    gc.disable()  # millions of short-lived objects; the cyclic collector only costs time here
    try:
        nproc = workers if workers is not None else (os.cpu_count() or 1)
        if nproc > 1 and not inp.is_stdin and not inp.is_gzip() and inp.size() >= PARALLEL_MIN_BYTES:
            yield from _run_parallel(proc, inp, nproc)
            return
        with open_binary(inp) as fh:
            line = 1
            try:
                for data, first in iter_blocks(fh, source=inp.name):
                    res = proc.process(data, inp.name, first)
                    line = first + res.lines
                    yield res
            except InputError as exc:
                # reported like a bad line; the next input is read
                res = proc.process(b"", inp.name, line)
                res.errors.append(DecodeError(inp.name, exc.line, exc.message))
                yield res
    finally:
        gc.enable()


def _run_parallel(proc: BlockProcessor, inp: Input, nproc: int) -> Iterator[BlockResult]:
    global _WORKER, _SPOOL
    _WORKER = proc
    ranges = grouped_ranges(split_ranges(inp.path), nproc)
    line = 1
    # not closed here: results kept for --last still read from it
    spans = FileSpans(inp.path)
    with spool_dir() as _SPOOL:
        results = ordered_map(_work, [(inp.path, s, e) for s, e in ranges], nproc, inp.name)
        try:
            for res in results:
                for err in res.errors:
                    err.line += line - 1
                    err.source = inp.name
                if res.rows is not None:
                    res.rows.open_spool()
                    if res.rows.data is None:
                        res.rows.data = spans
                res.first_line = line
                line += res.lines
                yield res
        finally:
            # (stopped early: waits for the workers, so that none writes into the spool
            # directory after it is removed)
            results.close()
            _SPOOL = None
