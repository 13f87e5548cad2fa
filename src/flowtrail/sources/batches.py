"""Decoded batches from input files, in order: the I/O edge every batch consumer shares.

Regular files of some size are decoded by a pool of forked workers (one byte range each, split at
newlines); the consumer still receives batches in file order, so stateful stages (detection
windows, baselines) see the same sequence as with one process. Decode errors are reported with
their absolute file and line and never stop the stream.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import multiprocessing as mp
import os
import re
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from flowtrail.sources import canonscan
from flowtrail.sources.decode import DecodeError, Decoder, DecodeStats, LineIndex
from flowtrail.sources.files import (
    BLOCK_SIZE,
    MAX_GROUP,
    Input,
    InputError,
    MappedRange,
    grouped_ranges,
    inflate_to_files,
    iter_blocks,
    open_binary,
    open_gzip,
    read_range,
    split_ranges,
    spool_dir,
)
from flowtrail.sources.lineclass import LINE_PREFIX
from flowtrail.sources.linematch import LineMatcher
from flowtrail.sources.parallel import ordered_map
from flowtrail.util import compute as pc

PARALLEL_MIN_BYTES = 32 << 20
NONCANONICAL = (b"\t", b"\r", b"\\u", b"\\/")
# A space between two JSON tokens (Go's protojson may print `"a": 1`, and so do other JSON
# writers): the rules' prefilter patterns are written for the compact spelling, so such lines
# must be decoded whatever they hold. The C line index marks them not plain (_lineindex.h), which
# the decoder always decodes; without it this pattern finds them, one alternative per token that
# may precede the space (after `:` only a key's closing quote, before `,` only a value's end).
SPACED = r'\{ |\[ |": |[0-9el"}\]], +["{\[0-9tfn-]|" +[:,}\]]|[0-9el] +[,}\]]|[}\]] +[,}\]]'
# Lines a rule prefilter must let through whatever it matches (RE2 / Hyperscan patterns)
NONCANONICAL_PATTERNS = (*(re.escape(m.decode("latin-1")) for m in NONCANONICAL),
                         *(() if canonscan.AVAILABLE else (SPACED,)))

@dataclass
class Batch:
    table: pa.Table
    source: str
    first_line: int
    lines: int
    errors: list[DecodeError] = field(default_factory=list)
    stats: DecodeStats = field(default_factory=DecodeStats)
    table_file: str = ""  # from a worker: the table is in this Arrow IPC file (table is None until opened)

    def open_table(self) -> None:
        """The table a worker left in a file, mapped (not copied); the file is removed at once."""
        if not self.table_file:
            return
        path, self.table_file = self.table_file, ""
        try:
            with pa.memory_map(path) as source:
                self.table = pa.ipc.open_file(source).read_all()
        finally:
            os.unlink(path)


# A worker's table of at least this size is handed over as an Arrow IPC file in the spool
# directory (memory where /dev/shm is), which the reader maps: pickled through the pool's pipe it
# was copied four times, and unpickling it took the reader's CPU (`policy audit` on 1M flows:
# ~650 MB of tables, the reader being the bottleneck). Smaller ones are not worth a file.
SPOOL_MIN_BYTES = 1 << 20


class LinePrefilter:
    """A rule prefilter over blocks of lines: which lines match one of the patterns, or may be
    spelled so that a pattern written for the compact spelling misses them (escapes, spaces)."""

    def __init__(self, patterns: Sequence[str]) -> None:
        every = [*patterns, *NONCANONICAL_PATTERNS]
        self.regex = "|".join(every)
        # one Hyperscan pass over a block for all patterns (~0.5-1.2 GB/s here, against ~150 MB/s
        # for an RE2 alternation applied line by line); None: a pattern it refuses, RE2 does it
        self.matcher = LineMatcher.compile([p.encode() for p in every], [0] * len(every))

    def lines(self, data: Any, max_line: int) -> tuple[LineIndex | None, np.ndarray]:
        """A boolean per line of ``data`` (matching), and the block's LineIndex where it was made
        in the same pass (with the C scanner and Hyperscan)."""
        if self.matcher is not None and canonscan.AVAILABLE:
            ix, line, _ = LineIndex.with_matches(data, max_line, self.matcher)
            want = np.zeros(ix.count, bool)
            want[line] = True
            return ix, want
        arr, starts = line_array(data)
        if self.matcher is not None:
            return None, self.matcher.mask(data, starts)
        return None, np.asarray(pc.fill_null(pc.match_substring_regex(arr, self.regex), False)
                                .to_numpy(zero_copy_only=False), dtype=bool)


@dataclass
class _Job:
    decoder: Decoder
    prefilter: Sequence[str] | None  # patterns; a line is decoded if it matches one. None = all
    lines: LinePrefilter | None = None

    def __post_init__(self) -> None:
        if self.prefilter is not None:
            self.lines = LinePrefilter(self.prefilter)


_JOB: _Job | None = None
_SPOOL: str | None = None  # set before the workers fork: where they leave large tables


def line_array(data: bytes) -> tuple[pa.Array, np.ndarray]:
    """The block's lines as an Arrow binary array (zero-copy over `data`) and their start offsets."""
    buf = np.frombuffer(data, dtype=np.uint8)
    nl = np.flatnonzero(buf == 10)
    ends = nl + 1
    if not len(data) or data[-1:] != b"\n":
        ends = np.append(ends, len(data))
    starts = np.concatenate([[0], ends[:-1]]).astype(np.int64)
    offsets = np.concatenate([[0], ends]).astype(np.int32)
    arr = pa.Array.from_buffers(pa.binary(), len(ends), [None, pa.py_buffer(offsets.tobytes()), pa.py_buffer(data)])
    return arr, starts


def _decode(job: _Job, data: bytes, source: str, first_line: int) -> Batch:
    want = None
    ix = None
    if job.lines is not None and data:
        ix, want = job.lines.lines(data, job.decoder.max_line)
    # Lines the prefilter skips are still checked for the shape of one JSON object by the
    # decoder, so a truncated or garbled line is reported (and fatal with --strict) whatever
    # the rules read.
    dec = job.decoder.decode_block(data, source, first_line, wanted=want, index=ix)
    assert dec.table is not None
    return Batch(dec.table, source, first_line, dec.stats.lines, dec.errors, dec.stats)


def _work(args: tuple[str, int, int]) -> Batch:
    assert _JOB is not None
    path, start, end = args
    if not canonscan.AVAILABLE:  # the Arrow fallback's checks search bytes objects
        return _spooled(_decode(_JOB, read_range(path, start, end), path, 1))
    mapped = MappedRange(path, start, end)  # not copied: see MappedRange
    try:
        return _spooled(_decode(_JOB, mapped.view, path, 1))  # type: ignore[arg-type]  # read as bytes
    finally:
        mapped.close()


_TABLES = itertools.count()


def _spooled(b: Batch) -> Batch:
    """The batch with a large table moved to a file in the spool directory, if there is one."""
    if _SPOOL is None or b.table is None or b.table.nbytes < SPOOL_MIN_BYTES:
        return b
    path = os.path.join(_SPOOL, f"table-{os.getpid()}-{next(_TABLES)}.arrow")  # unique across workers
    try:
        with pa.OSFile(path, "wb") as sink, pa.ipc.new_file(sink, b.table.schema) as writer:
            writer.write_table(b.table)
    except (OSError, pa.ArrowIOError):  # the spool is full: through the pipe as before
        with contextlib.suppress(OSError):
            os.unlink(path)
        return b
    b.table, b.table_file = None, path  # opened by the reader
    return b


# line-number columns of later inputs sort after those of earlier ones (2^40 lines per input)
INPUT_SHIFT = 40


def _shift_lines(table: pa.Table | None, offset: int) -> pa.Table | None:
    """``table`` with its line-number columns (lineclass.LINE_PREFIX) made absolute."""
    if table is None or not offset:
        return table
    for i, name in enumerate(table.column_names):
        if name.startswith(LINE_PREFIX):
            table = table.set_column(i, name, pc.add(table.column(i), pa.scalar(offset, pa.int64())))
    return table


def batches(inputs: Sequence[Input], decoder: Decoder,
            prefilter: Sequence[str] | None = None, workers: int | None = None,
            progress: Callable[[int], None] | None = None, join: bool | None = None) -> Iterator[Batch]:
    """Decoded batches of every input, in order; `progress(bytes)` after each. `join`: whether
    worker tasks join several blocks, for results of a few rows per block (the default with a
    prefilter); without one every row is a result, and 16 MB tasks measured faster."""
    global _JOB, _SPOOL
    job = _Job(decoder, prefilter)
    nproc = workers if workers is not None else (os.cpu_count() or 1)
    gc_was = gc.isenabled()
    gc.disable()  # millions of short-lived objects; the cyclic collector only costs time here
    # A prefiltered task returns a few hundred rows per 16 MB, so its fixed costs (sending an Arrow
    # table, concatenating it in the reader) dominate: join ranges, and keep more tasks ahead so
    # that workers go on scanning while the reader judges a batch. Unfiltered results are whole
    # tables: kept small (1M benchmark, every line decoded: no faster joined, +15 % CPU, +60 MB).
    joined = join if join is not None else prefilter is not None
    try:
        for ordinal, inp in enumerate(inputs):
            if nproc > 1 and not inp.is_stdin and not inp.is_gzip() and inp.size() >= PARALLEL_MIN_BYTES:
                _JOB = job
                ranges = split_ranges(inp.path)
                if joined:
                    ranges = grouped_ranges(ranges, nproc)
                line = 1
                tasks = [(inp.path, s, e) for s, e in ranges]
                with spool_dir() as _SPOOL:
                    results = ordered_map(_work, tasks, nproc, inp.name, ahead=4 if joined else 2)
                    try:
                        for (start, end), b in zip(ranges, results, strict=True):
                            line = _settle(b, inp, ordinal, line)
                            if progress is not None:
                                progress(end - start)
                            yield b
                    finally:
                        # the workers stop before the spool (and what they left in it) is removed
                        results.close()
                _JOB = _SPOOL = None
                continue
            if nproc > 1 and inp.is_gzip():
                yield from _inflated_in_parallel(job, inp, ordinal, nproc, progress, joined)
                continue
            with open_binary(inp) as fh:
                line = 1
                raw = getattr(fh, "fileobj", None)  # a gzip input's compressed file: progress in its bytes
                done = 0
                try:
                    for data, first in iter_blocks(fh, source=inp.name):
                        b = _decode(job, data, inp.name, first)
                        b.table = _shift_lines(b.table, ordinal << INPUT_SHIFT)
                        line = first + b.lines
                        if progress is not None:
                            pos = raw.tell() if raw is not None else done + len(data)
                            progress(pos - done)
                            done = pos
                        yield b
                except InputError as exc:
                    # reported like a bad line, and the next input is read
                    yield _input_error(job, inp, line, exc)
    finally:
        if gc_was:
            gc.enable()


def _settle(b: Batch, inp: Input, ordinal: int, line: int) -> int:
    """A worker's batch (decoded from line 1 of its range) placed at ``line`` of input number
    ``ordinal``: its table opened, its line numbers and errors made absolute. The next line."""
    b.open_table()
    b.table = _shift_lines(b.table, line - 1 + (ordinal << INPUT_SHIFT))
    for err in b.errors:
        err.line += line - 1
        err.source = inp.name
    b.first_line, b.source = line, inp.name
    return line + b.lines


def _input_error(job: _Job, inp: Input, line: int, exc: InputError) -> Batch:
    """An input that ended early, reported like a bad line (the next input is read)."""
    b = _decode(job, b"", inp.name, line)
    b.errors.append(DecodeError(inp.name, exc.line, exc.message))
    return b


def _inflate(inp: Input, spool: str, block_size: int, out: Any) -> None:
    """Inflate a gzip input into block files in the spool, handing each on (``out``, a bounded
    multiprocessing queue) as ("block", path, size, compressed bytes read for it); then ("cut",
    line, message) for an input that ends early, or ("failed", message), and ("end",). Run in its
    own process: zlib-ng hands the GIL back and forth on every piece, and a thread doing it beside
    the replay was starved."""
    try:
        with open_gzip(inp.path) as fh:
            raw = fh.fileobj  # type: ignore[attr-defined]
            done = 0
            for path, size in inflate_to_files(fh, spool, block_size, inp.name):
                pos = raw.tell()
                out.put(("block", path, size, pos - done))
                done = pos
    except InputError as exc:
        out.put(("cut", exc.line, exc.message))
    except Exception as exc:  # the reader raises it as an OSError naming the input
        out.put(("failed", f"{inp.name}: {exc}"))
    out.put(("end",))


def _inflated_in_parallel(job: _Job, inp: Input, ordinal: int, nproc: int,
                          progress: Callable[[int], None] | None, joined: bool) -> Iterator[Batch]:
    """A gzip input decoded by the worker pool: one more process inflates it into block files in
    the spool directory (memory where /dev/shm is), which the workers map like ranges of a plain
    file. Before, a .gz was inflated and decoded in this process alone (1M benchmark flows,
    `policy audit`: 10.7 s against 5.1 s for the same file uncompressed)."""
    global _JOB, _SPOOL
    _JOB = job
    # joined: the workers' tasks are as large as a plain file's joined ranges (line classes and
    # fixed costs per task), at the price of more inflated data waiting in the spool
    block_size = BLOCK_SIZE * (MAX_GROUP if joined else 1)
    ctx = mp.get_context("fork")
    items: Any = ctx.Queue(maxsize=2)
    ended: list[tuple[Any, ...]] = []
    order: deque[tuple[str, int]] = deque()

    def tasks() -> Iterator[tuple[str, int, int]]:
        while True:
            item = items.get()
            if item[0] != "block":
                ended.append(item)
                if item[0] == "end":
                    return
                continue
            _, path, size, consumed = item
            order.append((path, consumed))
            yield path, 0, size

    line = 1
    with spool_dir() as _SPOOL:
        inflater = ctx.Process(target=_inflate, args=(inp, _SPOOL, block_size, items), daemon=True)
        inflater.start()
        results = ordered_map(_work, tasks(), nproc, inp.name, ahead=2)
        try:
            for b in results:
                path, consumed = order.popleft()
                with contextlib.suppress(OSError):
                    os.unlink(path)  # decoded: its worker is done with it
                line = _settle(b, inp, ordinal, line)
                if progress is not None:
                    progress(consumed)
                yield b
        finally:
            results.close()
            if inflater.is_alive():
                inflater.terminate()  # stopped early
            inflater.join()
            items.close()
    _JOB = _SPOOL = None
    for item in ended:
        if item[0] == "cut":
            yield _input_error(job, inp, line, InputError(inp.name, item[1], item[2]))
        elif item[0] == "failed":
            raise OSError(item[1])


def gathered(stream: Iterator[Batch], min_rows: int = 65_536) -> Iterator[tuple[pa.Table | None, list[Batch]]]:
    """Decoded tables of consecutive batches concatenated to at least `min_rows` rows (the last
    may be smaller), each with the batches it came from (for their errors and line counts).

    Batch consumers (detection, policy replay) cost mostly per call — a few hundred vectorized
    operations — so one call per ~64k rows instead of per block; order is unchanged. A table is
    None when its batches decoded no rows."""
    pending: list[pa.Table] = []
    group: list[Batch] = []
    rows = 0
    for b in stream:
        group.append(b)
        if b.table is not None and b.table.num_rows:
            pending.append(b.table)
            rows += b.table.num_rows
        if rows >= min_rows:
            yield (pa.concat_tables(pending) if len(pending) > 1 else pending[0]), group
            pending, group, rows = [], [], 0
    if group:
        yield ((pa.concat_tables(pending) if len(pending) > 1 else pending[0]) if pending else None), group
