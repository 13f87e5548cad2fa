"""The alert spool: what one sink has accepted but not yet delivered, in order.

Two kinds with one interface. `DiskSpool` keeps JSON lines in numbered segment files in a directory
of its own, fsync'd on every append, with a cursor file that says how far delivery has got; a new
process opening the same directory resends everything after the cursor (at-least-once: a crash
between a successful send and the cursor write resends that batch once). `MemorySpool` is the same
queue without a disk, for sinks configured without a spool directory.

Layout of a spool directory::

    lock                  flock'd while a process owns the spool (a second owner gets SpoolError)
    000000000001.jsonl    segments: one alert per line, appended only, rolled at SEGMENT_BYTES
    cursor.json           {"segment": N, "offset": BYTES} -- first undelivered line
                          (written to a temporary file, fsync'd, renamed)

A torn last line (the process died in the middle of an append, so that append was never
acknowledged) is cut off on open. Segments wholly before the cursor are deleted.

All methods are thread-safe; `peek`/`ack` are meant for one consumer (the delivery worker).
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import json
import logging
import os
import threading
from pathlib import Path
from typing import Protocol

log = logging.getLogger("flowtrail.sinks")

SEGMENT_BYTES = 8 << 20
_CURSOR = "cursor.json"
_SUFFIX = ".jsonl"


class SpoolError(Exception):
    """The spool directory cannot be used (locked by another process, unreadable, not a directory)."""


class Spool(Protocol):
    def append(self, lines: list[bytes]) -> int:
        """Store newline-terminated lines; returns how many were accepted (the rest: spool full)."""
        ...

    def peek(self, limit: int) -> list[bytes]:
        """The oldest `limit` undelivered lines, without removing them."""
        ...

    def ack(self, n: int) -> None:
        """Remove the first `n` lines the last `peek` returned (ends that peek)."""
        ...

    @property
    def pending(self) -> int: ...

    @property
    def pending_bytes(self) -> int: ...

    def close(self) -> None: ...


class MemorySpool:
    """The spool without a disk: alerts survive sink outages but not a restart."""

    def __init__(self, max_bytes: int) -> None:
        self._max = max_bytes
        self._lines: collections.deque[bytes] = collections.deque()
        self._bytes = 0
        self._peeked = 0
        self._lock = threading.Lock()

    def append(self, lines: list[bytes]) -> int:
        with self._lock:
            n = 0
            for line in lines:
                if self._bytes + len(line) > self._max:
                    break
                self._lines.append(line)
                self._bytes += len(line)
                n += 1
            return n

    def peek(self, limit: int) -> list[bytes]:
        with self._lock:
            out = [self._lines[i] for i in range(min(limit, len(self._lines)))]
            self._peeked = len(out)
            return out

    def ack(self, n: int) -> None:
        with self._lock:
            for _ in range(min(n, self._peeked)):
                self._bytes -= len(self._lines.popleft())
            self._peeked = 0

    @property
    def pending(self) -> int:
        return len(self._lines)

    @property
    def pending_bytes(self) -> int:
        return self._bytes

    def close(self) -> None:
        pass


class DiskSpool:
    """JSON lines on disk, fsync'd per append; see the module docstring for the layout."""

    def __init__(self, directory: Path, max_bytes: int, *, segment_bytes: int = SEGMENT_BYTES) -> None:
        self.directory = directory
        self._max = max_bytes
        self._segment_bytes = segment_bytes
        self._lock = threading.Lock()
        try:
            directory.mkdir(parents=True, exist_ok=True)
            self._lock_fd = os.open(directory / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise SpoolError(f"spool {directory}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._lock_fd)
            raise SpoolError(f"spool {directory} is in use (by another process, or another sink with this spool)") from None
        try:
            self._open()
        except OSError as exc:
            self._release_lock()
            raise SpoolError(f"spool {directory}: {exc.strerror or exc}") from None

    # -- opening and repair

    def _segment_path(self, seq: int) -> Path:
        return self.directory / f"{seq:012d}{_SUFFIX}"

    def _open(self) -> None:
        seqs = sorted(int(p.stem) for p in self.directory.glob(f"*{_SUFFIX}") if p.stem.isdigit())
        seg, off = self._read_cursor(seqs)
        for s in [s for s in seqs if s < seg]:
            self._segment_path(s).unlink(missing_ok=True)
        self._segments = [s for s in seqs if s >= seg] or [max(seg, 1)]
        last = self._segment_path(self._segments[-1])
        if last.exists():
            self._cut_torn_tail(last)
        if self._segments[0] != seg:
            off = 0  # the cursor's segment is gone; start at the next one
        first = self._segment_path(self._segments[0])
        size0 = first.stat().st_size if first.exists() else 0
        if off > size0:
            log.warning("spool %s: cursor offset %d beyond segment end %d; resending nothing from it",
                        self.directory, off, size0)
            off = size0
        self._cursor = (self._segments[0], off)
        self._pending = 0
        self._pending_bytes = 0
        for s in self._segments:
            path = self._segment_path(s)
            if not path.exists():
                continue
            data = path.read_bytes()
            start = off if s == self._cursor[0] else 0
            self._pending += data.count(b"\n", start)
            self._pending_bytes += len(data) - start
        self._out = open(last, "ab")  # noqa: SIM115 -- lives as long as the spool
        self._peeked: list[tuple[int, int, int]] = []  # (segment, offset after, size) per peeked line
        if self._pending:
            log.info("spool %s: %d undelivered alert(s) from an earlier run", self.directory, self._pending)

    def _read_cursor(self, seqs: list[int]) -> tuple[int, int]:
        path = self.directory / _CURSOR
        try:
            doc = json.loads(path.read_text())
            seg, off = int(doc["segment"]), int(doc["offset"])
            if seg < 0 or off < 0:
                raise ValueError("negative")
            return seg, off
        except FileNotFoundError:
            return (seqs[0] if seqs else 1), 0
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # Resending from the oldest segment can only duplicate, never lose.
            log.warning("spool %s: unreadable cursor (%s); resending from the oldest segment", self.directory, exc)
            return (seqs[0] if seqs else 1), 0

    def _cut_torn_tail(self, path: Path) -> None:
        with open(path, "rb+") as fh:
            size = fh.seek(0, os.SEEK_END)
            if size == 0:
                return
            fh.seek(size - 1)
            if fh.read(1) == b"\n":
                return
            keep = size
            step = 65536
            while keep > 0:
                lo = max(0, keep - step)
                fh.seek(lo)
                chunk = fh.read(keep - lo)
                nl = chunk.rfind(b"\n")
                if nl >= 0:
                    keep = lo + nl + 1
                    break
                keep = lo
            log.warning("spool %s: cut a torn last line (%d bytes) left by an interrupted write",
                        path, size - keep)
            fh.truncate(keep)
            fh.flush()
            os.fsync(fh.fileno())

    # -- the queue

    def append(self, lines: list[bytes]) -> int:
        with self._lock:
            if self._out.closed:
                raise SpoolError(f"spool {self.directory} is closed")
            room = self._max - self._pending_bytes
            take: list[bytes] = []
            for line in lines:
                if len(line) > room:
                    break
                take.append(line)
                room -= len(line)
            if not take:
                return 0
            data = b"".join(take)
            self._out.write(data)
            self._out.flush()
            os.fsync(self._out.fileno())
            self._pending += len(take)
            self._pending_bytes += len(data)
            if self._out.tell() >= self._segment_bytes:
                self._roll()
            return len(take)

    def _roll(self) -> None:
        self._out.close()
        seq = self._segments[-1] + 1
        self._segments.append(seq)
        self._out = open(self._segment_path(seq), "ab")  # noqa: SIM115
        self._fsync_dir()

    def peek(self, limit: int) -> list[bytes]:
        with self._lock:
            self._peeked = []
            if self._out.closed:
                return []
            seg, off = self._cursor
            out: list[bytes] = []
            while len(out) < limit:
                path = self._segment_path(seg)
                if path.exists():
                    with open(path, "rb") as fh:
                        fh.seek(off)
                        for line in fh:
                            if not line.endswith(b"\n"):  # cannot happen: appends are whole lines
                                break
                            out.append(line)
                            off += len(line)
                            self._peeked.append((seg, off, len(line)))
                            if len(out) >= limit:
                                break
                if len(out) >= limit:
                    break
                later = [s for s in self._segments if s > seg]
                if not later:
                    break
                seg, off = later[0], 0
            return out

    def ack(self, n: int) -> None:
        with self._lock:
            done, self._peeked = self._peeked[:n], []
            if not done or self._out.closed:
                return  # closed: the next owner resends these (at-least-once)
            seg, off, _ = done[-1]
            later = [s for s in self._segments if s > seg]
            if later and off >= self._segment_path(seg).stat().st_size:
                seg, off = later[0], 0  # that segment is used up: let it be deleted now
            self._cursor = (seg, off)
            self._write_cursor()
            self._pending -= len(done)
            self._pending_bytes -= sum(d[2] for d in done)
            while len(self._segments) > 1 and self._segments[0] < seg:
                self._segment_path(self._segments.pop(0)).unlink(missing_ok=True)
            if self._pending == 0 and self._out.tell() >= self._segment_bytes // 8:
                # Everything delivered: start a fresh segment so a quiet spool does not keep a
                # large fully-acknowledged file around.
                self._roll()
                self._cursor = (self._segments[-1], 0)
                self._write_cursor()
                while len(self._segments) > 1:
                    self._segment_path(self._segments.pop(0)).unlink(missing_ok=True)

    def _write_cursor(self) -> None:
        tmp = self.directory / (_CURSOR + ".tmp")
        with open(tmp, "w") as fh:
            fh.write(json.dumps({"segment": self._cursor[0], "offset": self._cursor[1]}))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.directory / _CURSOR)
        self._fsync_dir()

    def _fsync_dir(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    @property
    def pending(self) -> int:
        return self._pending

    @property
    def pending_bytes(self) -> int:
        return self._pending_bytes

    def close(self) -> None:
        with self._lock:
            if self._out.closed:
                return
            self._out.close()
            self._release_lock()

    def _release_lock(self) -> None:
        with contextlib.suppress(OSError):
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
        os.close(self._lock_fd)
