"""`tail -F` following of exporter files: growth, partial lines, rotation (rename + new file, as
Hubble's exporter does), truncation, persisted offsets across restarts."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from flowtrail.sources.chunk import Chunk
from flowtrail.sources.follow import FileFollower

SAMPLE = Path(__file__).resolve().parents[1] / "src/flowtrail/data/hubble-samples.jsonl"


class Reader:
    """Runs a follower in a thread and collects its lines (committing each chunk, as the monitor
    does after processing it)."""

    def __init__(self, f: FileFollower) -> None:
        self.f = f
        self.stop = threading.Event()
        self.lines: list[bytes] = []
        self.chunks: list[Chunk] = []
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self) -> None:
        for ch in self.f.chunks(self.stop):
            self.chunks.append(ch)
            self.lines.extend(ch.data.splitlines())
            if ch.commit:
                ch.commit()

    def wait_for(self, n: int, timeout: float = 5.0) -> list[bytes]:
        end = time.monotonic() + timeout
        while len(self.lines) < n and time.monotonic() < end:
            time.sleep(0.01)
        return self.lines

    def close(self) -> None:
        self.stop.set()
        self.t.join(5)
        self.f.close()


def _lines(n: int, start: int = 0) -> list[bytes]:
    return [b'{"flow":{"uuid":"u%06d"},"time":"2026-01-01T00:00:00Z"}' % i for i in range(start, start + n)]


def _append(path: Path, lines: list[bytes]) -> None:
    with open(path, "ab") as fh:
        fh.write(b"".join(x + b"\n" for x in lines))


@pytest.fixture
def reader_factory() -> Iterator[list[Reader]]:
    made: list[Reader] = []
    yield made
    for r in made:
        r.close()


def test_follows_growth_and_holds_partial_lines(tmp_path: Path, reader_factory: list[Reader]) -> None:
    p = tmp_path / "events.log"
    _append(p, _lines(3))
    r = Reader(FileFollower(str(p), poll_interval_s=0.01))
    reader_factory.append(r)
    assert r.wait_for(3) == _lines(3)
    # half a line: nothing is handed on until its newline arrives
    with open(p, "ab") as fh:
        fh.write(_lines(1, 3)[0][:10])
    time.sleep(0.1)
    assert len(r.lines) == 3
    with open(p, "ab") as fh:
        fh.write(_lines(1, 3)[0][10:] + b"\n")
    assert r.wait_for(4) == _lines(4)
    assert r.chunks[-1].first_line == 4


def test_rotation_by_rename_loses_nothing(tmp_path: Path, reader_factory: list[Reader]) -> None:
    p = tmp_path / "events.log"
    _append(p, _lines(5))
    r = Reader(FileFollower(str(p), poll_interval_s=0.01))
    reader_factory.append(r)
    r.wait_for(5)
    # lines written to the old file just before the rename must still be read
    _append(p, _lines(5, 5))
    os.rename(p, tmp_path / "events-2026-01-01T00-00-00.000.log")
    _append(p, _lines(5, 10))
    assert r.wait_for(15) == _lines(15)
    assert r.f.stats["rotations"] == 1


def test_truncation_restarts_from_the_beginning(tmp_path: Path, reader_factory: list[Reader]) -> None:
    p = tmp_path / "events.log"
    _append(p, _lines(10))
    r = Reader(FileFollower(str(p), poll_interval_s=0.01))
    reader_factory.append(r)
    r.wait_for(10)
    with open(p, "wb") as fh:  # truncate in place, same inode
        fh.write(b"".join(x + b"\n" for x in _lines(2, 100)))
    assert r.wait_for(12)[10:] == _lines(2, 100)
    assert r.f.stats["truncations"] == 1


def test_restart_resumes_after_the_last_committed_line(tmp_path: Path, reader_factory: list[Reader]) -> None:
    p = tmp_path / "events.log"
    state = tmp_path / "state.json"
    _append(p, _lines(20))
    r = Reader(FileFollower(str(p), state, poll_interval_s=0.01))
    r.wait_for(20)
    r.close()
    _append(p, _lines(10, 20))
    r2 = Reader(FileFollower(str(p), state, poll_interval_s=0.01))
    reader_factory.append(r2)
    assert r2.wait_for(10) == _lines(10, 20)
    assert r2.chunks[0].first_line == 21
    time.sleep(0.1)
    assert len(r2.lines) == 10  # nothing repeated


def test_rotated_while_stopped_is_finished_first(tmp_path: Path, reader_factory: list[Reader]) -> None:
    p = tmp_path / "events.log"
    state = tmp_path / "state.json"
    _append(p, _lines(20))
    r = Reader(FileFollower(str(p), state, poll_interval_s=0.01))
    r.wait_for(20)
    r.close()
    # while flowtrail is down: more lines, a rotation, lines in the new file
    _append(p, _lines(5, 20))
    os.rename(p, tmp_path / "events-old.log")
    _append(p, _lines(5, 25))
    r2 = Reader(FileFollower(str(p), state, poll_interval_s=0.01))
    reader_factory.append(r2)
    assert r2.wait_for(10) == _lines(10, 20)


def test_uncommitted_chunks_are_read_again(tmp_path: Path) -> None:
    p = tmp_path / "events.log"
    state = tmp_path / "state.json"
    _append(p, _lines(3))
    f = FileFollower(str(p), state, until_eof=True)
    chunks = list(f.chunks(threading.Event()))
    assert chunks and chunks[0].commit is not None
    # never committed (a crash before the sinks had the alerts): the next start reads it again
    f.close()
    again = list(FileFollower(str(p), state, until_eof=True).chunks(threading.Event()))
    assert b"".join(c.data for c in again).splitlines() == _lines(3)


def test_start_at_end_and_waiting_for_the_file(tmp_path: Path, reader_factory: list[Reader]) -> None:
    p = tmp_path / "events.log"
    _append(p, _lines(5))
    r = Reader(FileFollower(str(p), start="end", poll_interval_s=0.01))
    reader_factory.append(r)
    time.sleep(0.1)
    _append(p, _lines(2, 5))
    assert r.wait_for(2) == _lines(2, 5)
    q = tmp_path / "later.log"
    r2 = Reader(FileFollower(str(q), poll_interval_s=0.01))
    reader_factory.append(r2)
    time.sleep(0.05)
    assert r2.f.stats["connected"] is False
    _append(q, _lines(1))
    assert r2.wait_for(1) == _lines(1)


def test_real_sample_replay_is_byte_exact(tmp_path: Path) -> None:
    f = FileFollower(str(SAMPLE), until_eof=True, max_chunk_bytes=4096)
    data = b"".join(c.data for c in f.chunks(threading.Event()))
    assert data == SAMPLE.read_bytes()


def test_reads_restart_at_line_starts_and_count_lines(tmp_path: Path) -> None:
    """Each read starts at a line's start (the unterminated end of a read is read again): lines
    cut by small reads come out whole, numbered without gaps, and an unterminated last line is
    handed on at the end of a replay."""
    p = tmp_path / "events.log"
    lines = _lines(200)
    p.write_bytes(b"".join(x + b"\n" for x in lines) + b'{"flow":{"uuid":"last"}}')
    f = FileFollower(str(p), until_eof=True, max_chunk_bytes=1000)
    chunks = list(f.chunks(threading.Event()))
    assert b"".join(c.data for c in chunks) == p.read_bytes() + b"\n"
    assert all(c.data.endswith(b"\n") for c in chunks)
    expect = 1
    for c in chunks:
        assert c.first_line == expect and c.lines == c.data.count(b"\n")
        expect += c.lines
    assert f.stats["lines"] == 201 and f.stats["bytes"] == p.stat().st_size
    assert f.stats["overlong_lines"] == 0


def test_a_line_longer_than_a_read_is_handed_on_in_pieces(tmp_path: Path) -> None:
    p = tmp_path / "events.log"
    endless = b"x" * 2500
    p.write_bytes(_lines(1)[0] + b"\n" + endless + b"\n" + _lines(1, 1)[0] + b"\n")
    f = FileFollower(str(p), until_eof=True, max_chunk_bytes=1000)
    out = b"".join(c.data for c in f.chunks(threading.Event())).splitlines()
    assert out[0] == _lines(1)[0] and out[-1] == _lines(1, 1)[0]  # the lines around it survive
    assert b"".join(out[1:-1]) == endless and f.stats["overlong_lines"] == 2


def test_stdin_pipe_is_widened_and_keeps_every_line(tmp_path: Path) -> None:
    """A pipe holds 64 kB by default; the stdin source asks for 1 MB (or the system's limit) so
    that a fast writer is read in large pieces, and still hands on every line exactly once."""
    import fcntl

    from flowtrail.sources.stdin import PIPE_MAX_SIZE, StdinSource, widen_pipe

    r, w = os.pipe()
    try:
        assert fcntl.fcntl(r, fcntl.F_GETPIPE_SZ) == 64 << 10
        src = StdinSource(fd=r)
        lines = [b'{"flow":{"uuid":"%d"}}\n' % i for i in range(100_000)]
        data = b"".join(lines)

        def write() -> None:
            view = memoryview(data)
            while view:
                view = view[os.write(w, view[:1 << 20]):]
            os.close(w)

        t = threading.Thread(target=write)
        t.start()
        got = list(src.chunks(threading.Event()))
        t.join()
        want = min(1 << 20, int(PIPE_MAX_SIZE.read_text()))
        assert src.stats["pipe_bytes"] == want == fcntl.fcntl(r, fcntl.F_GETPIPE_SZ)
        assert b"".join(c.data for c in got) == data
        assert sum(c.lines for c in got) == len(lines)
        assert [c.first_line for c in got] == [1 + sum(c.lines for c in got[:i]) for i in range(len(got))]
    finally:
        os.close(r)
    plain = tmp_path / "flows.jsonl"
    plain.write_bytes(b"{}\n")
    with open(plain, "rb") as fh:
        assert widen_pipe(fh.fileno()) == 0  # not a pipe: left alone
