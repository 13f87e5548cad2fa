"""Allocator tuning for bulk text processing.

glibc serves allocations above M_MMAP_THRESHOLD (128 KiB by default, adaptive) with a fresh mmap
and returns them with munmap, so every multi-megabyte chunk a batch pipeline builds and frees is
page-faulted in again: measured here at ~2.6 µs per 1.8 KB flow line, more than formatting it.
Raising the thresholds keeps freed chunks in the heap for reuse (5x faster joins in
bench/bench_simulate.py). Harmless where the C library is not glibc: nothing happens.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
_done = False


def reuse_large_allocations(mmap_threshold: int = 256 << 20, trim_threshold: int = 512 << 20) -> bool:
    global _done
    if _done:
        return True
    try:
        # the process's own symbols hold the C library's (find_library runs ldconfig: ~3 ms on
        # the start-up path of every command that forks decode workers)
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        try:
            mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
        except (OSError, AttributeError):
            return False
    ok = bool(mallopt(M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(M_TRIM_THRESHOLD, trim_threshold))
    _done = ok
    return ok
