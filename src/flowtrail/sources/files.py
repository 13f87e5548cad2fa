"""Hubble JSON line files: plain, gzip or stdin, single files or directories of rotated exporter
logs, read as blocks of whole lines."""

from __future__ import annotations

import contextlib
import gzip
import mmap
import os
import re
import sys
import time
import types
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast

from flowtrail.sources.canonscan import count_newlines

GZIP_ERRORS: tuple[type[BaseException], ...] = (EOFError, OSError, zlib.error)
_gzip: types.ModuleType = gzip
try:
    # zlib-ng inflates ~3x faster than the system zlib here (1M benchmark flows, 213 MB of gzip:
    # 1.5 s against 4.2-4.8 s), with the same file format and API
    from zlib_ng import gzip_ng, zlib_ng

    _gzip = gzip_ng
    GZIP_ERRORS += (cast(type[BaseException], zlib_ng.error),)
except ImportError:
    pass

BLOCK_SIZE = 16 << 20  # large enough to amortise per-block costs (a regex compile), small for memory
_ROTATED = re.compile(r"^(?P<base>.+?)(?:-(?P<stamp>\d{4}-\d{2}-\d{2}T[\d.-]+))?\.(?P<ext>log|jsonl?|json)(?:\.gz)?$")


@dataclass(frozen=True)
class Input:
    """One input: a file path, or ``-`` for standard input."""

    path: str

    @property
    def name(self) -> str:
        return "<stdin>" if self.path == "-" else self.path

    @property
    def is_stdin(self) -> bool:
        return self.path == "-"

    def is_gzip(self) -> bool:
        if self.is_stdin:
            return False
        with open(self.path, "rb") as fh:
            return fh.read(2) == b"\x1f\x8b"

    def size(self) -> int:
        return 0 if self.is_stdin else os.path.getsize(self.path)


def expand_inputs(paths: list[str]) -> list[Input]:
    """Files as given; a directory becomes its exporter files (``events.log`` and rotated
    ``events-<time>.log[.gz]``), oldest first, the live file last."""
    out: list[Input] = []
    for p in paths:
        if p != "-" and os.path.isdir(p):
            files = sorted(f for f in Path(p).iterdir() if f.is_file() and _ROTATED.match(f.name))
            if not files:
                raise FileNotFoundError(f"{p}: no Hubble export files (*.log, *.json, *.jsonl[.gz]) in directory")

            def key(f: Path) -> tuple[str, int, str]:
                m = _ROTATED.match(f.name)
                assert m is not None
                # rotated backups carry a timestamp and are older than the live file without one
                return (m.group("base"), 0 if m.group("stamp") else 1, m.group("stamp") or "")

            out.extend(Input(str(f)) for f in sorted(files, key=key))
        elif p != "-" and not os.path.exists(p):
            raise FileNotFoundError(f"{p}: no such file or directory")
        else:
            out.append(Input(p))
    return out


def open_binary(inp: Input) -> BinaryIO:
    if inp.is_stdin:
        from flowtrail.sources.stdin import widen_pipe
        widen_pipe(sys.stdin.buffer.fileno())
        return sys.stdin.buffer
    if inp.is_gzip():
        return open_gzip(inp.path)
    return open(inp.path, "rb")


def open_gzip(path: str) -> BinaryIO:
    """A reader of a gzip file (its ``fileobj`` is the compressed file: how far it is read)."""
    return cast(BinaryIO, _gzip.open(path, "rb"))


class InputError(Exception):
    """An input whose data ends early or is corrupt (a truncated or damaged gzip stream): what came
    before is read, then this names the input and the line where it stopped."""

    def __init__(self, source: str, line: int, message: str) -> None:
        super().__init__(f"{source}:{line}: {message}")
        self.source, self.line, self.message = source, line, message


def _cut_short(source: str, line: int, failure: BaseException, what: str) -> InputError:
    """The error that ends a damaged input after its ``line`` (the last line read)."""
    cause = str(failure) or type(failure).__name__
    return InputError(source, line, f"{what} cut short or corrupt after this line ({cause}); "
                      "the lines before it were read")


GZIP_PIECE = 64 << 10  # lost at most before a damage; larger pieces were no faster


def iter_blocks(fh: BinaryIO, block_size: int = BLOCK_SIZE, source: str = "<input>") -> Iterator[tuple[bytes, int]]:
    """Yield (block of whole lines, number of its first line); a final unterminated line counts.

    Blocks are read into fresh bytearrays (the decoder reads them as they are; a block and the
    line cut off its end were two copies of every byte). A gzip stream is inflated in small
    pieces (zlib-ng inflates all of a read or none of it), so that when it turns out cut short
    or corrupt the data before the damage is still yielded (its last line, cut short, is decoded
    and reported like any bad line); then InputError names the input and the line."""
    gz = isinstance(fh, gzip.GzipFile)  # zlib-ng's reader is one too
    piece = GZIP_PIECE if gz else block_size
    line = 1
    rest = b""
    failure: BaseException | None = None
    while failure is None:
        buf = bytearray(len(rest) + block_size)
        buf[:len(rest)] = rest
        got = len(rest)
        with memoryview(buf) as view:
            while got < len(buf):
                try:
                    n = fh.readinto(view[got:got + piece])  # type: ignore[attr-defined]
                except GZIP_ERRORS as exc:
                    failure = exc
                    break
                if not n:
                    break
                got += n
        if got == len(rest):
            break
        del buf[got:]
        cut = buf.rfind(b"\n")
        if cut == -1:
            rest = bytes(buf)
            continue
        rest = bytes(buf[cut + 1:])
        del buf[cut + 1:]
        yield buf, line  # type: ignore[misc]  # read as bytes
        line += count_newlines(buf)
    if rest:
        yield rest, line
        line += 1
    if failure is not None:
        raise _cut_short(source, line - 1, failure, "gzip data" if gz else "the input")


def inflate_to_files(fh: BinaryIO, directory: str, block_size: int, source: str = "<input>") -> Iterator[tuple[str, int]]:
    """A gzip stream inflated into files of whole lines in ``directory`` (``inflated-0``, ...), each
    of about ``block_size`` bytes; yields (path, size) as each is complete. The last file's last
    line may be unterminated; a line longer than a block makes its file longer.

    :func:`iter_blocks` for a process that hands blocks on as files: the pieces go from one
    reused buffer to the file, where blocks of fresh bytearrays were zeroed, filled, written and
    freed (on 1M benchmark flows that was ~0.4 s of page faults and clearing, in the process that
    inflates, which the rest of a gzip input waits on). Damage ends the stream the same way: what
    came before it is in the files, then InputError names the input and the last line read."""
    buf = bytearray(GZIP_PIECE)
    view = memoryview(buf)
    lines = 0  # newlines written so far
    last = 10  # the last byte written (a newline: no line is open)
    carry = b""  # the start of a line that goes on in the next file
    failure: BaseException | None = None
    k = 0
    ended = False
    while not ended:
        path = os.path.join(directory, f"inflated-{k}")
        size = 0
        with open(path, "wb", buffering=0) as out:
            if carry:
                out.write(carry)
                size, last, carry = len(carry), carry[-1], b""
            while True:
                try:
                    n = fh.readinto(view)  # type: ignore[attr-defined]
                except GZIP_ERRORS as exc:
                    failure, ended = exc, True
                    break
                if not n:
                    ended = True
                    break
                cut = n
                if size + n >= block_size:
                    at = buf.rfind(b"\n", 0, n)
                    if at >= 0:
                        cut = at + 1  # the file ends with the piece's last whole line
                out.write(view[:cut])
                lines += count_newlines(view[:cut])
                last = buf[cut - 1]
                size += cut
                if cut < n or (size >= block_size and last == 10):
                    carry = bytes(view[cut:n])
                    break
        if size:
            yield path, size
            k += 1
        else:
            os.unlink(path)
    if failure is not None:
        raise _cut_short(source, lines + (last != 10), failure, "gzip data")


MAX_GROUP = 4  # ranges in one worker task at most
TASKS_PER_WORKER = 4


def grouped_ranges(ranges: list[tuple[int, int]], nproc: int, max_group: int = MAX_GROUP) -> list[tuple[int, int]]:
    """Runs of up to ``max_group`` consecutive ranges joined into one, as long as every worker
    still gets TASKS_PER_WORKER tasks or more. A task has fixed costs, paid once per group: a
    mapping, a prefilter scan call, building and sending a result (an Arrow table's buffers are
    pickled one by one), and in the reader one more table to concatenate; without the C scanner,
    mostly RE2 compiling the canonical-spelling pattern (~6 ms), which Arrow does on every call.
    A few tasks per worker keep the last ones short."""
    size = max(1, min(max_group, len(ranges) // (TASKS_PER_WORKER * nproc)))
    # the last ranges stay single tasks, so that the workers finish within a range of each other
    # rather than a group (the 1M benchmark: ~20 ms less idle core at the end)
    head = len(ranges) - (2 * nproc if size > 1 else 0)
    return [(ranges[i][0], ranges[min(i + size, head) - 1][1]) for i in range(0, head, size)] + ranges[head:]


def split_ranges(path: str, block_size: int = BLOCK_SIZE) -> list[tuple[int, int]]:
    """Byte ranges of a regular file, each ending just after a newline (or at EOF)."""
    size = os.path.getsize(path)
    ranges = []
    start = 0
    with open(path, "rb") as fh:
        while start < size:
            target = start + block_size
            if target >= size:
                ranges.append((start, size))
                break
            fh.seek(target)
            end = size
            while True:
                window = fh.read(1 << 16)
                if not window:
                    break
                nl = window.find(b"\n")
                if nl != -1:
                    end = fh.tell() - len(window) + nl + 1
                    break
            ranges.append((start, end))
            start = end
    return ranges


def read_range_into(path: str, start: int, end: int, buf: bytearray) -> bytearray:
    """Bytes [start, end) of a file, read into ``buf`` (resized in place): a worker reading block
    after block reuses one buffer instead of faulting in fresh memory for each."""
    n = end - start
    if len(buf) > n:
        del buf[n:]
    elif len(buf) < n:
        buf.extend(bytes(n - len(buf)))
    fd = os.open(path, os.O_RDONLY)
    try:
        view = memoryview(buf)
        done = 0
        while done < n:
            got = os.preadv(fd, [view[done:]], start + done)
            if not got:
                del buf[done:]  # the file shrank
                break
            done += got
        view.release()
    finally:
        os.close(fd)
    return buf


class MappedRange:
    """Bytes [start, end) of a file mapped into memory, not copied: the kernel's copy from the
    page cache runs at ~1.5 GB/s on these machines, a mapping at ~10.

    ``view`` is a read-only memoryview of the range. A file truncated while mapped makes reading
    the lost part kill the process (SIGBUS): use it where a dead worker is reported, not hung."""

    def __init__(self, path: str, start: int, end: int) -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            end = min(end, size)
            base = start - start % mmap.ALLOCATIONGRANULARITY
            # not MAP_POPULATE: its page-by-page walk costs more than the faults of a sequential
            # first read, which map pages in batches (fault-around; 1M benchmark: -5 % CPU)
            self._map = (mmap.mmap(fd, max(end - base, 1), flags=mmap.MAP_SHARED, prot=mmap.PROT_READ, offset=base)
                         if end > start else None)
        finally:
            os.close(fd)
        if self._map is None:
            self.view = memoryview(b"")
        else:
            # (not MADV_SEQUENTIAL: it drops the pages behind, which the reader's copy then rereads)
            self.view = memoryview(self._map)[start - base : end - base]

    def close(self) -> None:
        """Unmap now; when arrays made from the view are still alive, their last reference does."""
        try:
            self.view.release()
            if self._map is not None:
                self._map.close()
        except BufferError:
            pass


@contextlib.contextmanager
def spool_dir() -> Iterator[str | None]:
    """A private directory for files worker processes hand to the reading process, removed with
    whatever is left in it: in /dev/shm (memory) where it is writable, else the temporary
    directory; None where neither takes one (callers then send data through the pool's pipe).
    Made by hand: importing tempfile costs every start-up ~8 ms."""
    shm = "/dev/shm"
    base = shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else (os.environ.get("TMPDIR") or "/tmp")
    _remove_orphans(base)
    path = None
    for attempt in range(100):
        candidate = os.path.join(base, f"flowtrail-{os.getpid()}-{time.monotonic_ns()}-{attempt}")
        try:
            os.mkdir(candidate, 0o700)
        except FileExistsError:
            continue
        except OSError:
            break
        path = candidate
        break
    if path is None:
        yield None
        return
    try:
        yield path
    finally:
        for name in os.listdir(path):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(path, name))
        with contextlib.suppress(OSError):
            os.rmdir(path)


def _remove_orphans(base: str) -> None:
    """Spool directories of flowtrail processes that no longer run (killed before they could
    remove theirs: files in /dev/shm hold memory until removed)."""
    try:
        names = [n for n in os.listdir(base) if n.startswith("flowtrail-")]
    except OSError:
        return
    for name in names:
        pid = name.split("-")[1]
        if not pid.isdigit() or _alive(int(pid)):
            continue
        path = os.path.join(base, name)
        with contextlib.suppress(OSError):
            for entry in os.listdir(path):
                os.unlink(os.path.join(path, entry))
            os.rmdir(path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # another user's process
    return True


def read_range(path: str, start: int, end: int) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, end - start, start)
    finally:
        os.close(fd)
