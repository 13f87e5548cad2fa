"""Which lines of a block hold a match of which pattern set: the one primitive of every prefilter
(observe's filter needles, detect's rule patterns, the policy replay's reply skip).

Hyperscan scans a whole block for all patterns at once. Two ways to run it:

* ``_hsmatch`` (``_hsmatch.c``), built where the system's Hyperscan is installed (Debian:
  libhyperscan-dev): its fat runtime uses AVX2 where the CPU has it, and matches become lines in
  C. On the 1M benchmark file here: detect's 24 patterns ~0.9-1.2 GB/s, observe's
  ``--verdict DROPPED`` needles ~7 GB/s;
* the PyPI ``hyperscan`` wheel otherwise: its bundled library is built for SSE only (~0.55-0.75
  and ~2.5 GB/s on the same scans) and calls into Python for every match.

``FLOWTRAIL_NO_SYSTEM_HYPERSCAN=1`` makes the wheel do it (the tests compare the two).

Compiling a database is not free: detect's rule pack takes ~0.12 s, before its decode workers can
start. Compiled databases are kept in ``$XDG_CACHE_HOME/flowtrail/hyperscan`` (``~/.cache``;
``FLOWTRAIL_CACHE_DIR`` overrides, ``FLOWTRAIL_CACHE_DIR=`` turns it off), keyed by the patterns,
Hyperscan's version and the CPU features they were compiled for; a file that cannot be read or
used is compiled again.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

try:
    from flowtrail.sources import _hsmatch
except ImportError:  # not built: no system Hyperscan, or no C compiler
    _hsmatch = None  # type: ignore[assignment]

NATIVE = _hsmatch is not None and not os.environ.get("FLOWTRAIL_NO_SYSTEM_HYPERSCAN")


SCAN_CHUNK = 128 << 10  # bytes: well inside a core's L2 cache (512 KB here)


class LineMatcher:
    """Patterns (Hyperscan syntax, none spanning a newline), each reporting a set id."""

    def __init__(self, db: Any, nsets: int, native: bool) -> None:
        self._db = db
        self.nsets = nsets
        self.native = native

    @classmethod
    def compile(cls, patterns: Sequence[bytes], ids: Sequence[int], native: bool | None = None) -> LineMatcher | None:
        """None where Hyperscan is not installed or refuses a pattern (callers then search
        otherwise)."""
        if not patterns:
            return None
        nsets = max(ids) + 1
        use_native = NATIVE if native is None else (native and _hsmatch is not None)
        if use_native:
            try:
                return cls(_native_database(list(patterns), list(ids)), nsets, True)
            except ValueError:
                return None
        try:
            import hyperscan
        except ImportError:
            return None
        db = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
        try:
            db.compile(expressions=list(patterns), ids=list(ids), elements=len(patterns), flags=[0] * len(patterns))
        except hyperscan.error:
            return None
        return cls(db, nsets, False)

    def lines(self, data: Any, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(lines, sets): the distinct pairs of a line of ``data`` (line j begins at
        ``starts[j]``, starts[0] == 0) and a set with a match ending on it, by line then set."""
        starts = np.ascontiguousarray(starts, np.int64)
        if not len(starts) or not len(data):
            return np.zeros(0, np.int64), np.zeros(0, np.int32)
        if self.native:
            raw_lines, raw_sets = self._db.lines(data, starts, self.nsets)
            line = np.frombuffer(raw_lines, np.int64)
            which = np.frombuffer(raw_sets, np.int32).astype(np.int64)
        else:
            ends: list[int] = []
            ids: list[int] = []

            def on_match(pattern: int, _start: int, end: int, _flags: int, _ctx: object) -> None:
                ends.append(end)
                ids.append(pattern)

            self._db.scan(data, match_event_handler=on_match)
            line = np.searchsorted(starts, np.asarray(ends, np.int64) - 1, side="right") - 1
            which = np.asarray(ids, np.int64)
        return self._pairs(line, which)

    def _pairs(self, line: np.ndarray, which: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pairs = np.unique(line * self.nsets + which)
        return pairs // self.nsets, (pairs % self.nsets).astype(np.int32)

    def scan_lines(self, data: Any, max_line: int, prefix: bytes) -> tuple[np.ndarray, ...] | None:
        """(starts, ends, flags, lines, sets): the line index of ``data`` (as
        canonscan.index_lines) and :meth:`lines` over it, in one pass: a chunk at a time, scanned
        then indexed while in the CPU's cache (a 64 MB block: ~30 → ~23 ms here, faults
        included). None without the system's Hyperscan."""
        if not self.native or not len(data):
            return None
        starts, ends, flags, raw_lines, raw_sets = self._db.scan_lines(data, max_line, prefix, self.nsets, SCAN_CHUNK)
        line, which = self._pairs(np.frombuffer(raw_lines, np.int64), np.frombuffer(raw_sets, np.int32).astype(np.int64))
        return (np.frombuffer(starts, np.int64), np.frombuffer(ends, np.int64), np.frombuffer(flags, np.uint8),
                line, which)

    def mask(self, data: Any, starts: np.ndarray) -> np.ndarray:
        """Boolean per line: whether a pattern of any set matches it."""
        out = np.zeros(len(starts), bool)
        line, _ = self.lines(data, starts)
        out[line] = True
        return out


def cache_dir() -> Path | None:
    if "FLOWTRAIL_CACHE_DIR" in os.environ:
        value = os.environ["FLOWTRAIL_CACHE_DIR"]
        return Path(value) / "hyperscan" if value else None
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "flowtrail" / "hyperscan"


def _native_database(patterns: list[bytes], ids: list[int]) -> Any:
    assert _hsmatch is not None
    where = cache_dir()
    if where is None:
        return _hsmatch.Database(patterns, ids)
    key = hashlib.sha256(repr((_hsmatch.build_tag(), patterns, ids)).encode()).hexdigest()
    path = where / f"{key}.hsdb"
    try:
        return _hsmatch.Database.deserialize(path.read_bytes())
    except (OSError, ValueError):
        pass
    db = _hsmatch.Database(patterns, ids)  # ValueError: a pattern Hyperscan refuses
    try:
        import tempfile  # only where a database is written (~8 ms of every start-up otherwise)

        where.mkdir(parents=True, exist_ok=True)
        # written whole, then renamed: a concurrent run reads the old file or the new, never half
        with tempfile.NamedTemporaryFile(dir=where, suffix=".tmp", delete=False) as tmp:
            tmp.write(db.serialize())
        os.replace(tmp.name, path)
    except OSError:
        pass  # a read-only or full home: compiled again next time
    return db
