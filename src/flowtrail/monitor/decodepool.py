"""Decoding in worker processes, so that JSON parsing does not share the GIL with detection.

Arrow's JSON reader and the decoder's numpy checks hold the GIL for a good part of their time,
so a decode thread overlaps poorly with the detection thread. Worker processes (spawned, not
forked: the monitor already runs gRPC and other threads, which do not survive a fork) each hold a
Decoder; a chunk's bytes go to a worker and its decoded table comes back as Arrow IPC (pickle of a
pa.Table), with the row spans but without the bytes the parent already holds.
"""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Iterable
from concurrent.futures import Future, ProcessPoolExecutor

from flowtrail.sources.chunk import Chunk
from flowtrail.sources.decode import Decoded, Decoder

_DECODER: Decoder | None = None


def _init(paths: list[str]) -> None:
    global _DECODER
    _DECODER = Decoder(paths)


def _decode(data: bytes, source: str, first_line: int) -> Decoded:
    assert _DECODER is not None
    return _DECODER.decode_block(data, source, first_line)


class DecodePool:
    def __init__(self, paths: Iterable[str], workers: int) -> None:
        self.workers = workers
        self._pool = ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"),
                                         initializer=_init, initargs=(sorted(paths),))

    def submit(self, ch: Chunk) -> Future[Decoded]:
        return self._pool.submit(_decode, ch.data, ch.source, ch.first_line)

    @staticmethod
    def result(fut: Future[Decoded], ch: Chunk) -> Decoded:
        dec = fut.result()
        dec.rows.data = ch.data  # rows travel without the bytes; the parent has them
        return dec

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
