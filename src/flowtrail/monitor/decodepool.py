"""Decoding in worker processes, so that JSON parsing does not share the GIL with detection.

Arrow's JSON reader and the decoder's numpy checks hold the GIL for a good part of their time,
so a decode thread overlaps poorly with the detection thread. Worker processes (spawned, not
forked: the monitor already runs gRPC and other threads, which do not survive a fork) each hold a
Decoder. A block's bytes go to a worker, and one of two things comes back:

* ``decode``: the decoded table (as Arrow IPC), with the row spans but without the bytes the
  parent already holds; for monitors that enrich or export flows, which need every row;
* ``reduce``: what the rest of the monitor needs of the block, computed in the worker: the flow
  filter applied, the Hubble metrics as increments (metrics/hubble.py Increments, applied by the
  parent in input order), the rows the detection rules' prefilter selects (most rules read a few
  percent of the lines) and the time and node of every flow (the engine's clock). Sending a
  whole decoded block back costs about as much as decoding it; this sends a few percent of it.
  The blocks themselves go through shared memory (a memfd the worker maps through /proc), not
  pickled through the pool's pipe: at 200k flows/s that is ~340 MB/s the pipe would copy twice.
"""

from __future__ import annotations

import contextlib
import mmap
import multiprocessing as mp
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from flowtrail.monitor.candidates import Prefilter, clock
from flowtrail.sources.chunk import Chunk
from flowtrail.sources.decode import Decoded, DecodeError, Decoder, DecodeStats


@dataclass
class ReduceSpec:
    """What a ``reduce`` worker computes besides decoding (all picklable, built in the worker)."""

    metrics: list[str] | None = None  # Hubble metric specs; None: no metrics
    prefilter: list[str] | None = None  # the engine's prefilter patterns; None: every flow is a candidate
    allow: list[dict[str, Any]] = field(default_factory=list)  # the monitor's flow filter
    deny: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Reduced:
    """One block, reduced: ``table`` holds the candidate rows for detection (and every lost-events
    record), ``times``/``nodes`` every flow's time (ns) and node, ``rows`` how many rows passed
    the filter, ``increments`` the block's Hubble metrics."""

    table: pa.Table
    times: pa.Array
    nodes: pa.Array
    rows: int
    filtered_out: int
    increments: Any
    errors: list[DecodeError]
    stats: DecodeStats


class _Worker:
    def __init__(self, paths: list[str], spec: ReduceSpec | None) -> None:
        self.decoder = Decoder(paths)
        self.metrics: Any = None
        self.prefilter: Prefilter | None = None
        self.filter: Any = None
        if spec is None:
            return
        if spec.metrics is not None:
            from prometheus_client import CollectorRegistry

            from flowtrail.metrics.hubble import HubbleMetrics
            self.metrics = HubbleMetrics(spec.metrics, CollectorRegistry())
        if spec.prefilter is not None:
            self.prefilter = Prefilter(spec.prefilter)
        if spec.allow or spec.deny:
            from flowtrail.filters import FilterSet
            self.filter = FilterSet.compile(spec.allow, spec.deny)

    def reduce(self, data: bytes | memoryview, source: str, first_line: int) -> Reduced:
        """``data``: whole lines (a memoryview of a shared segment is read as bytes)."""
        if self.prefilter is not None:
            dec, cand = self.prefilter.decode(self.decoder, data, source, first_line)
        else:
            dec = self.decoder.decode_block(data, source, first_line)  # type: ignore[arg-type]
            cand = np.ones(0 if dec.table is None else dec.table.num_rows, bool)
        table = dec.table
        assert table is not None
        filtered_out = 0
        if self.filter is not None and table.num_rows:
            keep = self.filter.mask(table)
            if not keep.all():
                filtered_out = int(table.num_rows - np.count_nonzero(keep))
                table = table.filter(pa.array(keep))
                cand = cand[keep]
        increments = self.metrics.compute(table) if self.metrics is not None else None
        times, nodes = clock(table)
        if len(nodes) and not pa.types.is_dictionary(nodes.type):
            nodes = nodes.dictionary_encode()  # a few node names: sent once each
        return Reduced(table.filter(pa.array(cand)), times, nodes, table.num_rows, filtered_out, increments,
                       dec.errors, dec.stats)


_WORKER: _Worker | None = None
_MAPPED: dict[str, tuple[int, mmap.mmap]] = {}  # in a worker: segment path -> (generation, its mapping)


def _segment(path: str, generation: int, length: int) -> memoryview:
    got = _MAPPED.get(path)
    if got is None or got[0] != generation:
        if got is not None:
            with contextlib.suppress(BufferError):  # a view of it still alive: left to the collector
                got[1].close()
        fd = os.open(path, os.O_RDONLY)
        try:
            got = _MAPPED[path] = (generation, mmap.mmap(fd, 0, prot=mmap.PROT_READ))
        finally:
            os.close(fd)
    return memoryview(got[1])[:length]


def _init(paths: list[str], spec: ReduceSpec | None) -> None:
    global _WORKER
    _WORKER = _Worker(paths, spec)


def _ready() -> None:
    pass


def _decode(data: bytes, source: str, first_line: int) -> Decoded:
    assert _WORKER is not None
    return _WORKER.decoder.decode_block(data, source, first_line)


def _reduce(data: bytes, source: str, first_line: int) -> Reduced:
    assert _WORKER is not None
    return _WORKER.reduce(data, source, first_line)


def _reduce_shared(path: str, generation: int, length: int, source: str, first_line: int) -> Reduced:
    assert _WORKER is not None
    return _WORKER.reduce(_segment(path, generation, length), source, first_line)


class _Segment:
    """A memfd the parent writes blocks into; workers open it as /proc/<parent>/fd/<fd>."""

    generations = 0

    def __init__(self, capacity: int) -> None:
        self.fd = os.memfd_create("flowtrail-block", os.MFD_CLOEXEC)
        try:
            os.ftruncate(self.fd, capacity)
            self.map = mmap.mmap(self.fd, capacity)
        except OSError:
            os.close(self.fd)
            raise
        self.capacity = capacity
        self.path = f"/proc/{os.getpid()}/fd/{self.fd}"
        _Segment.generations += 1
        self.generation = _Segment.generations

    def close(self) -> None:
        self.map.close()
        os.close(self.fd)


class DecodePool:
    def __init__(self, paths: Iterable[str], workers: int, reduce: ReduceSpec | None = None) -> None:
        """``reduce``: the workers reduce blocks (:meth:`submit` returns Reduced) instead of
        decoding them (Decoded)."""
        self.workers = workers
        self.reducing = reduce is not None
        self._pool = ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"),
                                         initializer=_init, initargs=(sorted(paths), reduce))
        # the pool spawns a process per task that finds none idle: all of them now, so that each
        # builds its decoder while the monitor starts, not when a batch waits for it
        for _ in range(workers):
            self._pool.submit(_ready)
        self._free: list[_Segment] = []
        self._busy: dict[int, _Segment] = {}  # id(future) -> the segment it reads
        self._shared = self.reducing and hasattr(os, "memfd_create") and os.path.isdir(f"/proc/{os.getpid()}/fd")

    def submit(self, ch: Chunk) -> Future[Any]:
        """Decode one block (a pool that does not reduce; reducing pools take :meth:`submit_run`)."""
        assert not self.reducing
        return self._pool.submit(_decode, ch.data, ch.source, ch.first_line)

    def submit_run(self, run: Sequence[Chunk]) -> Future[Any]:
        """Reduce consecutive chunks of one source as one block."""
        assert self.reducing
        size = sum(len(c.data) for c in run)
        seg = self._segment(size) if self._shared else None
        if seg is None:
            data = run[0].data if len(run) == 1 else b"".join(c.data for c in run)
            return self._pool.submit(_reduce, data, run[0].source, run[0].first_line)
        at = 0
        for c in run:
            seg.map[at:at + len(c.data)] = c.data
            at += len(c.data)
        fut = self._pool.submit(_reduce_shared, seg.path, seg.generation, size, run[0].source, run[0].first_line)
        self._busy[id(fut)] = seg
        return fut

    def _segment(self, size: int) -> _Segment | None:
        for i, seg in enumerate(self._free):
            if seg.capacity >= size:
                return self._free.pop(i)
        if self._free:
            self._free.pop(0).close()  # too small for the blocks now coming
        try:
            return _Segment(max(size, 16 << 20))
        except OSError:
            self._shared = False
            return None

    def result(self, fut: Future[Any], ch: Chunk | None = None) -> Any:
        try:
            got = fut.result()
        finally:
            seg = self._busy.pop(id(fut), None)
            if seg is not None:
                self._free.append(seg)
        if isinstance(got, Decoded):
            assert ch is not None
            got.rows.data = ch.data  # rows travel without the bytes; the parent has them
        return got

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        for seg in self._free:
            seg.close()
        self._free = []


def split_evenly(chunks: Sequence[Chunk], parts: int) -> int:
    """A block size that cuts ``chunks`` into about ``parts`` blocks (one per worker)."""
    total = sum(len(c.data) for c in chunks)
    return max(1, -(-total // max(1, parts)))
