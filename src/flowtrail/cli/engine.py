"""The observe pipeline over blocks of lines: prefilter → decode → filter → time window → format.

Pure with respect to I/O: a block of bytes in, formatted records out. Large regular files are
split into byte ranges processed by worker processes (both cores), results kept in file order.
"""

from __future__ import annotations

import gc
import multiprocessing as mp
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from flowtrail.filters import FilterSet
from flowtrail.filters.compile import NONCANONICAL_MARKERS
from flowtrail.model.timeutil import parse_rfc3339_ns
from flowtrail.sinks.printer import PrintOptions, format_compact, format_dict, table_cells
from flowtrail.sources.decode import DecodeError, Decoder, DecodeStats
from flowtrail.sources.files import Input, iter_blocks, open_binary, read_range, split_ranges

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
    records: list[Any]
    times: list[int] | None
    errors: list[DecodeError]
    stats: DecodeStats
    lines: int = 0
    first_line: int = 1


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
        self.decoder = Decoder(fs.paths)
        self.needles = fs.needle_groups() if not fs.empty else None
        out = spec.print_opts.output
        self.fmt = {"compact": format_compact, "dict": format_dict}.get(out)
        self.json = out in ("json", "jsonpb")
        self.table = out in ("table", "tab")

    def process(self, data: bytes, source: str, first_line: int) -> BlockResult:
        dec = self.decoder.decode_block(
            data, source, first_line, self.needles, NONCANONICAL_MARKERS if self.needles else ()
        )
        table = dec.table
        spec = self.spec
        mask = spec.filters.mask(table) if not spec.filters.empty else np.ones(table.num_rows, dtype=bool)
        times = None
        if spec.since_ns is not None or spec.until_ns is not None or spec.want_times:
            t = _times_ns(table)
            if spec.since_ns is not None:
                mask &= t >= spec.since_ns
            if spec.until_ns is not None:
                mask &= t <= spec.until_ns
            times = t[mask].tolist() if spec.want_times else None
        idx = np.flatnonzero(mask)
        raw = dec.raw
        records: list[Any]
        if self.json:
            records = [raw[i] for i in idx]
        elif self.table:
            opts = spec.print_opts
            records = [table_cells(orjson.loads(raw[i]), opts) for i in idx]
        else:
            assert self.fmt is not None
            fmt, opts = self.fmt, spec.print_opts
            records = [fmt(orjson.loads(raw[i]), opts).encode() for i in idx]
        lines = dec.stats.lines
        return BlockResult(records, times, dec.errors, dec.stats, lines, first_line)


_WORKER: BlockProcessor | None = None


def _work(args: tuple[str, int, int]) -> BlockResult:
    path, start, end = args
    assert _WORKER is not None
    data = read_range(path, start, end)
    res = _WORKER.process(data, path, 1)
    res.lines = data.count(b"\n") + (0 if data.endswith(b"\n") or not data else 1)
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
            for data, first in iter_blocks(fh):
                yield proc.process(data, inp.name, first)
    finally:
        gc.enable()


def _run_parallel(proc: BlockProcessor, inp: Input, nproc: int) -> Iterator[BlockResult]:
    global _WORKER
    _WORKER = proc
    ranges = split_ranges(inp.path)
    ctx = mp.get_context("fork")
    line = 1
    with ctx.Pool(nproc) as pool:
        for res in pool.imap(_work, [(inp.path, s, e) for s, e in ranges]):
            for err in res.errors:
                err.line += line - 1
                err.source = inp.name
            res.first_line = line
            line += res.lines
            yield res
