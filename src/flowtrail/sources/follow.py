"""Follow a growing file like `tail -F`, across rotation and truncation, with a persisted offset.

Hubble's exporter writes `events.log` through a size-rotating writer: the full file is renamed
(`events-<time>.log`, maybe compressed later) and a new `events.log` created. The follower keeps the
renamed file open until it has read it to the end, then switches to the new one, so lines written
just before a rotation are not lost. A file that shrinks under the same inode was truncated
(`copytruncate`, `: > events.log`): reading restarts at its beginning.

The offset is persisted (a small JSON file written atomically) only when the monitor *commits* a
chunk, i.e. after everything derived from it reached the sinks. A restart therefore resumes after the
last line processed: nothing is lost and, after a clean stop (SIGTERM), nothing is repeated. The
state names the file by device, inode and a fingerprint of its first bytes; if the file was rotated
while flowtrail was down, the rotated file is found again by inode in the same directory and read
to its end first.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from flowtrail.sources.canonscan import count_newlines
from flowtrail.sources.chunk import Chunk

log = logging.getLogger("flowtrail.follow")

FINGERPRINT_BYTES = 256
READ_SIZE = 4 << 20


def _fingerprint(fd: int) -> str:
    head = os.pread(fd, FINGERPRINT_BYTES, 0)
    return hashlib.sha256(head).hexdigest()[:32] if len(head) == FINGERPRINT_BYTES else ""


@dataclass
class FollowState:
    """Where reading stopped: enough to find the same file again after a restart."""

    path: str
    dev: int = 0
    ino: int = 0
    offset: int = 0
    line: int = 0  # lines consumed before `offset` (for error messages)
    fingerprint: str = ""  # first FINGERPRINT_BYTES of the file, once that long

    @classmethod
    def load(cls, state_file: Path, path: str) -> FollowState | None:
        try:
            raw = orjson.loads(state_file.read_bytes())
            st = cls(path=path, dev=int(raw["dev"]), ino=int(raw["ino"]), offset=int(raw["offset"]),
                     line=int(raw.get("line", 0)), fingerprint=str(raw.get("fingerprint", "")))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, orjson.JSONDecodeError) as exc:
            log.warning("ignoring unreadable follow state %s: %s", state_file, exc)
            return None
        return st

    def save(self, state_file: Path) -> None:
        tmp = state_file.with_name(state_file.name + ".tmp")
        data = {"path": self.path, "dev": self.dev, "ino": self.ino, "offset": self.offset,
                "line": self.line, "fingerprint": self.fingerprint}
        with open(tmp, "wb") as fh:
            fh.write(orjson.dumps(data))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, state_file)


@dataclass
class _Open:
    fd: int
    dev: int
    ino: int
    pos: int  # next byte to read
    line: int  # lines before pos
    name: str  # path it was opened under (for messages)


class FileFollower:
    """Yields chunks of whole lines appended to `path`, forever (until `stop`)."""

    def __init__(self, path: str, state_file: str | Path | None = None, start: str = "beginning",
                 poll_interval_s: float = 0.1, max_chunk_bytes: int = READ_SIZE,
                 until_eof: bool = False) -> None:
        """`until_eof`: stop at the end of the file instead of waiting for more (a replay).
        `max_chunk_bytes`: one read, and so the most memory a line without a newline takes."""
        if start not in ("beginning", "end"):
            raise ValueError(f"start must be 'beginning' or 'end', not {start!r}")
        self.path = path
        self.name = path
        self.state_file = Path(state_file) if state_file else None
        self.start = start
        self.poll_interval_s = poll_interval_s
        self.max_chunk_bytes = max_chunk_bytes
        self.until_eof = until_eof
        self.stats: dict[str, Any] = {"bytes": 0, "lines": 0, "rotations": 0, "truncations": 0,
                                      "overlong_lines": 0, "connected": False}
        self._lock = threading.Lock()
        self._committed: FollowState | None = None
        self._last_saved = 0.0

    # -- offsets --------------------------------------------------------------------------------------
    def _commit(self, st: FollowState) -> None:
        with self._lock:
            self._committed = st
            if self.state_file is None:
                return
            now = time.monotonic()
            # the last commit before a stop is always saved by close(); in between, at most 5/s
            if now - self._last_saved >= 0.2:
                st.save(self.state_file)
                self._last_saved = now

    def save_position(self) -> None:
        """Persist the last committed offset now (a detection-state checkpoint pairs the two)."""
        with self._lock:
            if self.state_file is not None and self._committed is not None:
                self._committed.save(self.state_file)

    def close(self) -> None:
        """Persist the last committed offset (called on shutdown, after the final commit)."""
        self.save_position()

    # -- opening ---------------------------------------------------------------------------------------
    def _open_path(self) -> _Open | None:
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        st = os.fstat(fd)
        return _Open(fd, st.st_dev, st.st_ino, 0, 0, self.path)

    def _resume(self) -> list[_Open]:
        """Files to read at start-up, oldest first: a rotated file still holding unread lines, then the
        current file (positioned by the saved state, or at its beginning/end)."""
        saved = FollowState.load(self.state_file, self.path) if self.state_file else None
        cur = self._open_path()
        out: list[_Open] = []
        if saved is not None:
            if cur is not None and (cur.dev, cur.ino) == (saved.dev, saved.ino) and self._same(cur.fd, saved):
                size = os.fstat(cur.fd).st_size
                if size >= saved.offset:
                    cur.pos, cur.line = saved.offset, saved.line
                else:
                    self.stats["truncations"] += 1
                    log.warning("%s: shorter than the saved offset (%d < %d): truncated while stopped; "
                                "reading from the start", self.path, size, saved.offset)
                return [cur]
            old = self._find_rotated(saved)
            if old is not None:
                log.info("%s: rotated while stopped; finishing %s first", self.path, old.name)
                out.append(old)
            if cur is not None:
                out.append(cur)
            return out
        if cur is not None and self.start == "end":
            cur.pos = os.fstat(cur.fd).st_size
            cur.line = 0  # line numbers in messages count from where following started
        return [cur] if cur is not None else []

    @staticmethod
    def _same(fd: int, saved: FollowState) -> bool:
        # inodes are reused: a fingerprint taken when the file was long enough must still match
        return not saved.fingerprint or _fingerprint(fd) == saved.fingerprint

    def _find_rotated(self, saved: FollowState) -> _Open | None:
        d = Path(self.path).parent
        with contextlib.suppress(OSError):
            for p in d.iterdir():
                with contextlib.suppress(OSError):
                    st = p.stat()
                    if (st.st_dev, st.st_ino) != (saved.dev, saved.ino) or not p.is_file():
                        continue
                    fd = os.open(p, os.O_RDONLY)
                    if not self._same(fd, saved) or st.st_size < saved.offset:
                        os.close(fd)
                        return None
                    return _Open(fd, st.st_dev, st.st_ino, saved.offset, saved.line, str(p))
        return None

    # -- reading ---------------------------------------------------------------------------------------
    def chunks(self, stop: threading.Event) -> Iterator[Chunk]:
        files = self._resume()
        cur: _Open | None = files.pop() if files else None
        # the older file(s) first, to their end
        for old in files:
            yield from self._drain(old, stop, final=True)
            os.close(old.fd)
        self.stats["connected"] = cur is not None
        if cur is None:
            log.info("%s: waiting for the file to appear", self.path)
        try:
            while not stop.is_set():
                if cur is None:
                    cur = self._open_path()
                    if cur is None:
                        if self.until_eof:
                            log.warning("%s: no such file", self.path)
                            return
                        stop.wait(self.poll_interval_s)
                        continue
                    self.stats["connected"] = True
                got = False
                for ch in self._drain(cur, stop, final=False):
                    got = True
                    yield ch
                if got:
                    continue
                if self.until_eof:
                    yield from self._drain(cur, stop, final=True)
                    return
                # at the end of what is there: rotated, truncated, or just quiet?
                try:
                    st = os.stat(self.path)
                except FileNotFoundError:
                    st = None
                if st is not None and (st.st_dev, st.st_ino) != (cur.dev, cur.ino):
                    # renamed away and replaced: finish the old file, then switch
                    yield from self._drain(cur, stop, final=True)
                    os.close(cur.fd)
                    self.stats["rotations"] += 1
                    log.info("%s: rotated; following the new file", self.path)
                    cur = self._open_path()
                    continue
                size = os.fstat(cur.fd).st_size
                if size < cur.pos:
                    self.stats["truncations"] += 1
                    log.warning("%s: truncated (%d < %d); reading from the start", self.path, size, cur.pos)
                    cur.pos, cur.line = 0, 0
                    continue
                stop.wait(self.poll_interval_s)
        finally:
            if cur is not None:
                os.close(cur.fd)

    def _drain(self, f: _Open, stop: threading.Event, final: bool) -> Iterator[Chunk]:
        """Chunks of the whole lines readable now; with `final`, a last unterminated line too (a
        rotated file gets no more bytes).

        Every read starts at the start of a line: the unterminated end of one read is read again
        by the next, instead of being kept and joined to it, which copied every chunk (with the
        newline count, most of the follower's ~2 s per GB)."""
        while not stop.is_set():
            data = os.pread(f.fd, self.max_chunk_bytes, f.pos)
            if not data:
                return
            received = time.monotonic_ns()
            cut = data.rfind(b"\n")
            if cut < 0:
                whole_read = len(data) >= self.max_chunk_bytes
                if not whole_read and not final:
                    return  # a line still being written: read again once it is whole
                # a rotated file's unterminated last line, or a line longer than a read, which
                # must not grow memory: handed on as it is (the decoder reports an over-long one)
                if whole_read:
                    self.stats["overlong_lines"] += 1
                f.pos += len(data)
                self.stats["bytes"] += len(data)
                yield self._chunk(f, data + b"\n", f.pos, received)
                continue
            body = data if cut == len(data) - 1 else data[:cut + 1]
            f.pos += cut + 1
            self.stats["bytes"] += cut + 1
            yield self._chunk(f, body, f.pos, received)

    def _chunk(self, f: _Open, body: bytes, end_pos: int, received: int | None = None) -> Chunk:
        n = count_newlines(body)
        first = f.line + 1
        f.line += n
        self.stats["lines"] += n
        st = FollowState(self.path, f.dev, f.ino, end_pos, f.line,
                         _fingerprint(f.fd) if end_pos >= FINGERPRINT_BYTES else "")
        return Chunk(body, f.name, first, received or time.monotonic_ns(), lambda: self._commit(st), n)
