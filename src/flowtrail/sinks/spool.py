"""The spool: what a sink has accepted but not yet delivered, in order.

Used by the alert sinks (`flowtrail.sinks.alerting.Delivery`, one JSON line per alert) and by the
HTTP flow exporters (`flowtrail.sinks.export.HttpFlowExport`, one request-body fragment per flow:
a HEC event line, or an Elasticsearch action line plus source line).

Two kinds with one interface. `DiskSpool` keeps records in numbered segment files in a directory
of its own, fsync'd on every append, with a cursor file that says how far delivery has got; a new
process opening the same directory resends everything after the cursor (at-least-once: a crash
between a successful send and the cursor write resends that batch once). `MemorySpool` is the same
queue without a disk, for sinks configured without a spool directory.

A record is ``record_lines`` newline-terminated lines (1 for alerts and HEC events, 2 for a bulk
action and its document). Records go in and out either one by one (`append`/`peek`, lists of
bytes) or as a `Block` -- the records' bytes concatenated plus the end offset of each -- so a flow
exporter moves thousands of records with a few bytes operations instead of a Python loop over
them, and posts a peeked block's bytes as they are.

Both spools are bounded in bytes; beyond the bound an append takes the leading records that fit
and refuses the rest (the *newest*): what is already queued is never discarded to make room.

Layout of a spool directory::

    lock                  flock'd while a process owns the spool (a second owner gets SpoolError)
    format                what the records are (only when the owner names it, e.g. "elasticsearch");
                          a spool written by one kind of sink is refused by another
    000000000001.jsonl    segments: whole records, appended only, rolled at segment_bytes
                          (an append is split across segments at record boundaries)
    cursor.json           {"segment": N, "offset": BYTES} -- first undelivered record
                          (written to a temporary file, fsync'd, renamed)

A torn last record (the process died in the middle of an append, so that append was never
acknowledged) is cut off on open. Segments wholly before the cursor are deleted.

All methods are thread-safe; `peek`/`peek_block`/`ack` are meant for one consumer (the sender).
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import json
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

log = logging.getLogger("flowtrail.sinks")

SEGMENT_BYTES = 8 << 20
_CURSOR = "cursor.json"
_FORMAT = "format"
_SUFFIX = ".jsonl"
_NEWLINE = 0x0A
_EMPTY_ENDS = np.zeros(0, np.int64)


class SpoolError(Exception):
    """The spool directory cannot be used (locked by another process, unreadable, not a directory)."""


@dataclass(frozen=True)
class Block:
    """Records back to back: ``data`` and the end offset of each record in it (int64, increasing,
    the last equal to ``len(data)``)."""

    data: bytes
    ends: np.ndarray

    @classmethod
    def from_records(cls, records: list[bytes]) -> Block:
        if not records:
            return EMPTY_BLOCK
        sizes = np.fromiter(map(len, records), np.int64, len(records))
        return cls(b"".join(records), np.cumsum(sizes))

    @classmethod
    def concat(cls, blocks: list[Block]) -> Block:
        blocks = [b for b in blocks if len(b)]
        if len(blocks) <= 1:
            return blocks[0] if blocks else EMPTY_BLOCK
        shift = np.cumsum([0] + [len(b.data) for b in blocks[:-1]])
        return cls(b"".join(b.data for b in blocks),
                   np.concatenate([b.ends + s for b, s in zip(blocks, shift, strict=True)]))

    def __len__(self) -> int:
        return len(self.ends)

    @property
    def nbytes(self) -> int:
        return len(self.data)

    def start(self, i: int) -> int:
        """Offset of record ``i`` (``len(self)``: the end of the data)."""
        return int(self.ends[i - 1]) if i > 0 else 0

    def fit(self, max_records: int, max_bytes: int) -> int:
        """How many leading records fit in ``max_records`` and ``max_bytes``."""
        if max_records <= 0 or max_bytes <= 0:
            return 0
        return min(max_records, int(np.searchsorted(self.ends, max_bytes, side="right")))

    def slice(self, a: int, b: int) -> Block:
        """Records ``a`` to ``b`` (exclusive)."""
        b = min(b, len(self))
        if a <= 0 and b >= len(self):
            return self
        if a >= b:
            return EMPTY_BLOCK
        lo = self.start(a)
        return Block(self.data[lo : int(self.ends[b - 1])], self.ends[a:b] - lo)

    def take(self, idx: list[int] | np.ndarray) -> Block:
        """Records ``idx`` (increasing), e.g. the items of a bulk request to send again."""
        idx = np.asarray(idx, np.int64)
        if len(idx) == len(self):
            return self
        starts = np.concatenate([[0], self.ends[:-1]])[idx]
        ends = self.ends[idx]
        return Block(b"".join(self.data[s:e] for s, e in zip(starts.tolist(), ends.tolist(), strict=True)),
                     np.cumsum(ends - starts))

    def records(self) -> list[bytes]:
        if not len(self):
            return []
        starts = [0, *self.ends[:-1].tolist()]
        return [self.data[s:e] for s, e in zip(starts, self.ends.tolist(), strict=True)]


EMPTY_BLOCK = Block(b"", _EMPTY_ENDS)


def record_ends(data: bytes | bytearray, record_lines: int = 1) -> np.ndarray:
    """End offsets of the whole records in ``data`` (a trailing partial record is left out)."""
    nl = np.flatnonzero(np.frombuffer(data, np.uint8) == _NEWLINE)
    return (nl[record_lines - 1 :: record_lines] + 1).astype(np.int64)


class Spool(Protocol):
    def append(self, lines: list[bytes]) -> int:
        """Store records; returns how many leading ones were accepted (the rest: spool full)."""
        ...

    def append_block(self, block: Block) -> int:
        """`append` for a block of records."""
        ...

    def peek(self, limit: int) -> list[bytes]:
        """The oldest `limit` undelivered records, without removing them."""
        ...

    def peek_block(self, limit: int, max_bytes: int) -> Block:
        """The oldest undelivered records, at most `limit` and `max_bytes` (but at least one
        record when any is pending), without removing them."""
        ...

    def ack(self, n: int) -> None:
        """Remove the first `n` records the last peek returned (ends that peek)."""
        ...

    @property
    def pending(self) -> int: ...

    @property
    def pending_bytes(self) -> int: ...

    def close(self) -> None: ...


class MemorySpool:
    """The spool without a disk: records survive sink outages but not a restart."""

    def __init__(self, max_bytes: int) -> None:
        self._max = max_bytes
        self._blocks: collections.deque[Block] = collections.deque()
        self._head = 0  # records of _blocks[0] already acknowledged
        self._pending = 0
        self._bytes = 0
        self._peeked = 0
        self._lock = threading.Lock()

    def append(self, lines: list[bytes]) -> int:
        return self.append_block(Block.from_records(lines))

    def append_block(self, block: Block) -> int:
        with self._lock:
            n = block.fit(len(block), self._max - self._bytes)
            if n:
                part = block.slice(0, n)
                self._blocks.append(part)
                self._pending += n
                self._bytes += part.nbytes
            return n

    def peek(self, limit: int) -> list[bytes]:
        return self.peek_block(limit, self._max + 1).records()

    def peek_block(self, limit: int, max_bytes: int) -> Block:
        with self._lock:
            parts: list[Block] = []
            n = size = 0
            for i, b in enumerate(self._blocks):
                rest = b.slice(self._head, len(b)) if i == 0 else b
                k = rest.fit(limit - n, max_bytes - size)
                if k == 0 and n == 0 and limit > 0:
                    k = 1  # one record larger than max_bytes still goes, alone
                if k == 0:
                    break
                parts.append(rest.slice(0, k))
                n += k
                size += parts[-1].nbytes
                if k < len(rest):
                    break
            self._peeked = n
            return Block.concat(parts)

    def ack(self, n: int) -> None:
        with self._lock:
            n = min(n, self._peeked)
            self._peeked = 0
            while n > 0:
                b = self._blocks[0]
                k = min(n, len(b) - self._head)
                self._bytes -= int(b.ends[self._head + k - 1]) - b.start(self._head)
                self._pending -= k
                n -= k
                self._head += k
                if self._head == len(b):
                    self._blocks.popleft()
                    self._head = 0

    @property
    def pending(self) -> int:
        return self._pending

    @property
    def pending_bytes(self) -> int:
        return self._bytes

    def close(self) -> None:
        pass


class DiskSpool:
    """Records on disk, fsync'd per append; see the module docstring for the layout.

    ``record_lines``: lines per record. ``kind``: what the records are, kept in the directory's
    ``format`` file so that a spool is never sent to a sink that reads its records differently.
    ``noun`` names a record in log messages."""

    def __init__(self, directory: Path, max_bytes: int, *, segment_bytes: int = SEGMENT_BYTES,
                 record_lines: int = 1, kind: str | None = None, noun: str = "alert") -> None:
        if record_lines < 1:
            raise ValueError("record_lines must be at least 1")
        self.directory = directory
        self._max = max_bytes
        self._segment_bytes = segment_bytes
        self._record_lines = record_lines
        self._noun = noun
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
            if kind is not None:
                self._check_format(kind)
            self._open()
        except OSError as exc:
            self._release_lock()
            raise SpoolError(f"spool {directory}: {exc.strerror or exc}") from None
        except SpoolError:
            self._release_lock()
            raise

    # -- opening and repair

    def _segment_path(self, seq: int) -> Path:
        return self.directory / f"{seq:012d}{_SUFFIX}"

    def _check_format(self, kind: str) -> None:
        path = self.directory / _FORMAT
        tag = f"{kind} {self._record_lines}"
        try:
            old = path.read_text().strip()
        except FileNotFoundError:
            old = None
        if old is not None and old != tag:
            raise SpoolError(f"spool {self.directory} holds records of {old!r}, not {tag!r}: deliver it with the "
                             "sink that wrote it, or move it away")
        if old is None:
            path.write_text(tag + "\n")

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
            self._pending += data.count(b"\n", start) // self._record_lines
            self._pending_bytes += len(data) - start
        self._out = open(last, "ab")  # noqa: SIM115 -- lives as long as the spool
        # per piece of the last peek: (segment, offset of its first record, record ends from there)
        self._peeked: list[tuple[int, int, np.ndarray]] = []
        if self._pending:
            log.info("spool %s: %d undelivered %s(s) from an earlier run", self.directory, self._pending, self._noun)

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
        # Segments start at record boundaries (appends and rolls are whole records), so whole
        # records are counted from the start of the last one.
        with open(path, "rb+") as fh:
            data = fh.read()
            if not data or (self._record_lines == 1 and data.endswith(b"\n")):
                return
            ends = record_ends(data, self._record_lines)
            keep = int(ends[-1]) if len(ends) else 0
            if keep == len(data):
                return
            log.warning("spool %s: cut a torn last record (%d bytes) left by an interrupted write",
                        path, len(data) - keep)
            fh.truncate(keep)
            fh.flush()
            os.fsync(fh.fileno())

    # -- the queue

    def append(self, lines: list[bytes]) -> int:
        return self.append_block(Block.from_records(lines))

    def append_block(self, block: Block) -> int:
        with self._lock:
            if self._out.closed:
                raise SpoolError(f"spool {self.directory} is closed")
            n = block.fit(len(block), self._max - self._pending_bytes)
            if not n:
                return 0
            todo = block.slice(0, n)
            while len(todo):
                # fill the open segment, then roll: a large append still leaves segments of about
                # segment_bytes, so delivered data is freed segment by segment
                pos = self._out.tell()
                k = todo.fit(len(todo), self._segment_bytes - pos)
                if k == 0 and pos > 0:
                    self._roll()
                    continue
                k = max(k, 1)  # a record larger than a segment gets one of its own
                part = todo.slice(0, k)
                self._out.write(part.data)
                self._out.flush()
                os.fsync(self._out.fileno())
                self._pending += k
                self._pending_bytes += part.nbytes
                todo = todo.slice(k, len(todo))
                if self._out.tell() >= self._segment_bytes:
                    self._roll()
            return n

    def _roll(self) -> None:
        self._out.close()
        seq = self._segments[-1] + 1
        self._segments.append(seq)
        self._out = open(self._segment_path(seq), "ab")  # noqa: SIM115
        self._fsync_dir()

    def peek(self, limit: int) -> list[bytes]:
        return self.peek_block(limit, self._max + 1).records()

    def peek_block(self, limit: int, max_bytes: int) -> Block:
        with self._lock:
            self._peeked = []
            if self._out.closed or limit <= 0:
                return EMPTY_BLOCK
            seg, off = self._cursor
            parts: list[Block] = []
            n = size = 0
            while n < limit:
                part, exhausted = self._read_records(seg, off, limit - n, max_bytes - size, need_one=n == 0)
                if len(part):
                    parts.append(part)
                    self._peeked.append((seg, off, part.ends))
                    n += len(part)
                    size += part.nbytes
                if not exhausted or n >= limit or size >= max_bytes:
                    break
                later = [s for s in self._segments if s > seg]
                if not later:
                    break
                seg, off = later[0], 0
            return Block.concat(parts)

    def _read_records(self, seg: int, off: int, limit: int, max_bytes: int, need_one: bool) -> tuple[Block, bool]:
        """Whole records of segment ``seg`` from ``off`` (at most ``limit`` and ``max_bytes``, but
        one when ``need_one``), and whether they reach the segment's end."""
        path = self._segment_path(seg)
        if not path.exists():
            return EMPTY_BLOCK, True
        chunks: list[bytes] = []
        got = 0
        newlines: list[np.ndarray] = []
        ends = _EMPTY_ENDS
        # first read: what ``limit`` records of the average size need (so a peek of a few alerts
        # does not read a whole segment, and a batch of flows is one read), then doubling steps
        avg = self._pending_bytes // self._pending + 1 if self._pending else 1 << 10
        step = max(1 << 16, limit * avg + limit * avg // 4)
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            avail = size - off
            fh.seek(off)
            while got < avail:
                one_missing = need_one and not len(ends)
                if not one_missing and (len(ends) >= limit or got >= max_bytes):
                    break
                if not one_missing:
                    step = min(step, max_bytes - got)
                chunk = fh.read(min(step, avail - got))
                newlines.append(np.flatnonzero(np.frombuffer(chunk, np.uint8) == _NEWLINE) + got)
                chunks.append(chunk)
                got += len(chunk)
                nl = np.concatenate(newlines) if len(newlines) > 1 else newlines[0]
                ends = (nl[self._record_lines - 1 :: self._record_lines] + 1).astype(np.int64)
                step = max(got, 1 << 16)
        k = min(limit, int(np.searchsorted(ends, max_bytes, side="right")))
        if need_one and k == 0 and len(ends):
            k = 1  # the first record is larger than max_bytes: it goes alone
        if k == 0:
            return EMPTY_BLOCK, avail <= 0
        end = int(ends[k - 1])
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        return Block(data[:end], ends[:k]), end >= avail

    def ack(self, n: int) -> None:
        with self._lock:
            pieces, self._peeked = self._peeked, []
            if n <= 0 or not pieces or self._out.closed:
                return  # closed: the next owner resends these (at-least-once)
            done = nbytes = 0
            seg = off = 0
            for piece_seg, start, ends in pieces:
                seg = piece_seg
                k = min(n - done, len(ends))
                off = start + int(ends[k - 1])
                done += k
                nbytes += int(ends[k - 1])
                if done >= n:
                    break
            later = [s for s in self._segments if s > seg]
            if later and off >= self._segment_path(seg).stat().st_size:
                seg, off = later[0], 0  # that segment is used up: let it be deleted now
            self._cursor = (seg, off)
            self._write_cursor()
            self._pending -= done
            self._pending_bytes -= nbytes
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
