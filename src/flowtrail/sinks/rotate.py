"""A size-rotating file writer with numbered-by-time backups and optional gzip compression.

Behaves like the lumberjack logger behind Hubble's exporter (``hubble-export-file-max-size-mb``,
``-max-backups``, ``-compress``), so that tools reading exporter directories read ours too:

* the live file is ``path``; when a write would take it past ``max_bytes`` it is renamed to
  ``<stem>-<UTC time>.<ext>`` (``events-2025-07-26T17-35-12.598.log``, the name lumberjack
  gives) and a new live file is opened. Backup names sort in rotation order (a stamp is bumped
  by a millisecond when two rotations fall in the same one), which is also the order
  :func:`flowtrail.sources.files.expand_inputs` reads a directory in;
* rotation happens only at a line boundary: a write holding several lines is split after the
  last newline that still fits, so no line is ever cut in two and no file exceeds ``max_bytes``
  unless a single line is longer than that (such a line gets a file of its own);
* with ``compress`` a backup is gzipped by one background thread (``…log.gz``; written to a
  temporary name and renamed, so a reader never sees half a file), then the uncompressed backup
  is removed; :meth:`close` waits for pending compressions;
* only the newest ``max_backups`` backups are kept (compressed or not). Unlike lumberjack, where
  0 means "keep all", 0 keeps none: disk use stays bounded by ``(max_backups + 1) * max_bytes``.
  Callers that follow Hubble map its 0 to the default of 5 themselves;
* an existing live file is appended to; backups already in the directory count toward
  ``max_backups``.

Errors from the file system are raised to the caller of :meth:`write` (it decides how to count
them); errors in the background compression are logged and counted in ``stats["errors"]``.
"""

from __future__ import annotations

import gzip
import logging
import os
import queue
import re
import shutil
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

log = logging.getLogger(__name__)

_STAMP_FORMAT = "%Y-%m-%dT%H-%M-%S"
_STAMP_RE = r"\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}\.\d{3}"


class RotatingWriter:
    """Binary writer for ``path`` rotating at ``max_bytes`` (``<= 0``: never) with
    ``max_backups`` backups kept, gzipped when ``compress``. Thread-safe."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        max_bytes: int,
        max_backups: int,
        compress: bool = False,
        *,
        buffer_size: int = 1 << 20,
        compress_level: int = 6,
    ) -> None:
        self.path = Path(path)
        self.max_bytes = int(max_bytes)
        self.max_backups = max(int(max_backups), 0)
        self.compress = bool(compress)
        self.compress_level = compress_level
        self.buffer_size = buffer_size
        self.stats = {"rotations": 0, "compressed": 0, "removed": 0, "errors": 0}
        suffix = self.path.suffix
        self._stem = self.path.name[: len(self.path.name) - len(suffix)] if suffix else self.path.name
        self._ext = suffix
        self._backup_re = re.compile(
            rf"^{re.escape(self._stem)}-(?P<stamp>{_STAMP_RE}){re.escape(self._ext)}(?P<gz>\.gz)?$"
        )
        self._lock = threading.Lock()
        self._last_ms = 0
        self._jobs: queue.Queue[Path | None] | None = None
        self._worker: threading.Thread | None = None
        self._closed = False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "ab", buffering=self.buffer_size)  # noqa: SIM115 - held open until close()
        self._size = self._fh.tell()

    # -- public -----------------------------------------------------------------------------------

    @property
    def size(self) -> int:
        """Bytes in the live file (written or buffered)."""
        return self._size

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Write ``data`` (whole lines, normally), rotating between lines as needed."""
        with self._lock:
            if self._closed:
                raise ValueError(f"{self.path}: write to a closed RotatingWriter")
            view = memoryview(data).cast("B") if isinstance(data, memoryview) else memoryview(data)
            n = len(view)
            if self.max_bytes <= 0 or self._size + n <= self.max_bytes:
                self._fh.write(view)
                self._size += n
                return n
            pos = 0
            while pos < n:
                room = self.max_bytes - self._size
                if n - pos <= room:
                    self._put(view[pos:])
                    break
                if room > 0:
                    # rare (once per rotation): a copy of at most max_bytes to find the line end
                    cut = bytes(view[pos : pos + room]).rfind(b"\n")
                    if cut >= 0:
                        self._put(view[pos : pos + cut + 1])
                        pos += cut + 1
                        self._rotate()
                        continue
                if self._size > 0:
                    self._rotate()
                    continue
                # one line longer than max_bytes, on an empty file: it gets the file to itself
                end = bytes(view[pos:]).find(b"\n")
                stop = n if end < 0 else pos + end + 1
                self._put(view[pos:stop])
                pos = stop
                if pos < n:
                    self._rotate()
            return n

    def flush(self) -> None:
        with self._lock:
            if not self._closed:
                self._fh.flush()

    def rotate(self) -> None:
        """Rotate now (when the live file holds anything)."""
        with self._lock:
            if not self._closed and self._size:
                self._rotate()

    def close(self) -> None:
        """Flush, close the live file and wait for pending compressions."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._fh.close()
            worker, jobs = self._worker, self._jobs
        if worker is not None and jobs is not None:
            jobs.put(None)
            worker.join()

    def backups(self) -> list[Path]:
        """Backup files, oldest first (a backup being compressed is listed once, by its current name)."""
        found: dict[str, Path] = {}
        try:
            entries = list(self.path.parent.iterdir())
        except FileNotFoundError:
            return []
        for p in entries:
            m = self._backup_re.match(p.name)
            if m and (m.group("stamp") not in found or not m.group("gz")):
                found[m.group("stamp")] = p
        return [found[s] for s in sorted(found)]

    def files(self) -> list[Path]:
        """Every file of this writer, oldest first, the live file last."""
        return [*self.backups(), self.path]

    def __enter__(self) -> RotatingWriter:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- internals --------------------------------------------------------------------------------

    def _put(self, part: memoryview) -> None:
        self._fh.write(part)
        self._size += len(part)

    def _backup_name(self) -> Path:
        now_ms = time.time_ns() // 1_000_000
        ms = max(now_ms, self._last_ms + 1)
        while True:
            stamp = datetime.fromtimestamp(ms / 1000, UTC).strftime(_STAMP_FORMAT) + f".{ms % 1000:03d}"
            name = f"{self._stem}-{stamp}{self._ext}"
            target = self.path.with_name(name)
            if not target.exists() and not target.with_name(name + ".gz").exists():
                self._last_ms = ms
                return target
            ms += 1

    def _rotate(self) -> None:
        self._fh.close()
        target = self._backup_name()
        os.replace(self.path, target)
        self.stats["rotations"] += 1
        self._fh = open(self.path, "ab", buffering=self.buffer_size)  # noqa: SIM115 - held open until close()
        self._size = 0
        if self.compress:
            if self._worker is None:
                self._jobs = queue.Queue()
                self._worker = threading.Thread(target=self._compress_loop, name=f"rotate-gzip:{self.path.name}",
                                                daemon=True)
                self._worker.start()
            assert self._jobs is not None
            self._jobs.put(target)
        else:
            self._prune()

    def _compress_loop(self) -> None:
        assert self._jobs is not None
        while True:
            job = self._jobs.get()
            if job is None:
                return
            if not job.exists():
                continue  # pruned while it waited: more rotations than max_backups in the meantime
            try:
                self._gzip(job)
                self.stats["compressed"] += 1
            except OSError as exc:
                self.stats["errors"] += 1
                log.warning("%s: could not compress backup: %s", job, exc)
            self._prune()

    def _gzip(self, src: Path) -> None:
        final = src.with_name(src.name + ".gz")
        tmp = src.with_name(src.name + ".gz.tmp")
        with open(src, "rb") as fin, gzip.GzipFile(tmp, "wb", compresslevel=self.compress_level, mtime=0) as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)
        os.replace(tmp, final)
        os.unlink(src)

    def _prune(self) -> None:
        old = self.backups()
        excess = len(old) - self.max_backups
        for p in old[: max(excess, 0)]:
            try:
                p.unlink()
                self.stats["removed"] += 1
            except FileNotFoundError:
                pass
            except OSError as exc:
                self.stats["errors"] += 1
                log.warning("%s: could not remove old backup: %s", p, exc)
