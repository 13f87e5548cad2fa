"""Schedule sessions over simulated time and write them as Hubble flows, with ground truth.

Session start times come from a Poisson process per traffic edge whose rate follows the time of
day (a cosine with its peak at `diurnal.peak_hour` UTC) and a per-minute log-normal jitter, drawn
with numpy for the whole run. Sessions are then expanded in start order; an event is written once
no later session can precede it (every session starts after the current one), so the output is
sorted by flow time like a Hubble Relay stream, with bounded memory.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import gc
import gzip
import math
import mmap
import multiprocessing as mp
import os
import queue
import stat
import sys
import threading
import time
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import chain
from operator import itemgetter
from typing import IO, Any

import numpy as np
import orjson

from flowtrail.lab.cluster import Cluster, ClusterError, load_cluster
from flowtrail.lab.flows import Body, Event, FlowBuilder, body_text
from flowtrail.lab.rng import SimRandom
from flowtrail.lab.scenarios import Context, Run, Scenario, parse_scenario
from flowtrail.lab.traffic import Traffic
from flowtrail.model.timeutil import protojson_timestamp
from flowtrail.sources.files import spool_dir
from flowtrail.util.memory import reuse_large_allocations

try:
    from flowtrail.lab import _render as _crender
except ImportError:  # built without a C compiler: the same lines from numpy and str.join, slower
    _crender = None  # type: ignore[assignment]

NS = 1_000_000_000
SEGMENT_FLOWS = 20_000  # expected flows per rendered segment (bounds memory per worker)


@dataclass
class Options:
    cluster: str | None = None
    scenarios: list[str] = field(default_factory=list)
    duration_ns: int = 600 * NS
    start_ns: int = 1_795_680_000 * NS  # 2026-11-26T08:00:00Z
    seed: int = 1
    rate: float | None = None  # flows per second (cluster-wide mean); None = the YAML's rates
    output: str = "-"
    truth: str | None = None
    workers: int | None = None  # rendering processes (default: CPU count); output does not depend on it


@dataclass
class Truth:
    scenario: Scenario
    params: dict[str, str]
    run: Run
    uuids: list[str] = field(default_factory=list)
    first_ns: int = 0
    last_ns: int = 0

    def record(self) -> dict[str, Any]:
        from flowtrail.model.timeutil import format_ns
        return {
            "scenario": self.scenario.name, "category": self.scenario.category, "mitre": list(self.scenario.mitre),
            "actor": self.run.actor, "summary": self.scenario.summary,
            "start": format_ns(self.first_ns, "RFC3339Nano") if self.uuids else None,
            "end": format_ns(self.last_ns, "RFC3339Nano") if self.uuids else None,
            "flows": len(self.uuids), "params": self.params, "indicators": self.run.indicators,
            "uuids": self.uuids,
        }


@dataclass
class Stats:
    flows: int = 0
    bytes: int = 0
    sessions: int = 0
    seconds: float = 0.0
    truth: list[dict[str, Any]] = field(default_factory=list)
    scale: float = 1.0


_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
_DASHES = (8, 13, 18, 23)


def uuid4_bytes(gen: np.random.Generator, n: int) -> np.ndarray:
    """n random (version 4) UUIDs as text, an (n, 36) uint8 array."""
    raw = gen.integers(0, 256, size=(n, 16), dtype=np.uint8)
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x40
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80
    hexed = np.empty((n, 32), dtype=np.uint8)
    hexed[:, 0::2] = _HEX[raw >> 4]
    hexed[:, 1::2] = _HEX[raw & 15]
    out = np.full((n, 36), ord("-"), dtype=np.uint8)
    out[:, 0:8], out[:, 9:13], out[:, 14:18] = hexed[:, 0:8], hexed[:, 8:12], hexed[:, 12:16]
    out[:, 19:23], out[:, 24:36] = hexed[:, 16:20], hexed[:, 20:32]
    return out


def timestamps(times: np.ndarray | list[int]) -> list[str]:
    """protojson Timestamp text: RFC 3339 UTC with 0, 3, 6 or 9 fractional digits."""
    arr = np.asarray(times, dtype=np.int64)
    n = len(arr)
    if not n:
        return []
    secs = arr // NS
    nanos = arr - secs * NS
    # the date and clock part once per distinct second (a segment spans a minute or so), the
    # nine fraction digits with integer arithmetic: ~10x faster than datetime_as_string per flow
    useconds, inv = np.unique(secs, return_inverse=True)
    text = np.datetime_as_string(useconds.astype("datetime64[s]"), unit="s")
    if not (np.char.str_len(text) == 19).all():  # years outside 1000-9999: one at a time
        return [protojson_timestamp(s, n) for s, n in zip(secs.tolist(), nanos.tolist(), strict=True)]
    heads = text.astype("S19")
    out = np.empty((n, 30), dtype=np.uint8)
    out[:, :19] = heads.view(np.uint8).reshape(-1, 19)[inv]
    out[:, 19] = ord(".")
    rest = nanos.copy()
    for j in range(8, -1, -1):
        out[:, 20 + j] = rest % 10 + 48
        rest //= 10
    out[:, 29] = ord("Z")
    texts: list[str] = out.view("S30").ravel().astype("U30").tolist()
    for i in np.flatnonzero(nanos % 1000 == 0).tolist():  # rare: protojson drops trailing zero groups
        texts[i] = protojson_timestamp(int(secs[i]), int(nanos[i]))
    return texts


def _mean_flows(make: Callable[[], list[Event]], samples: int = 12) -> float:
    return sum(len(make()) for _ in range(samples)) / samples


def schedule(cluster: Cluster, traffic: Traffic, opts: Options, gen: np.random.Generator,
             per_edge_flows: list[float]) -> tuple[np.ndarray, np.ndarray, float]:
    """Session start times and edge indices for the whole run (the last index = background drops)."""
    spec = cluster.spec
    rates = np.array([e.rate for e in traffic.edges], dtype=np.float64)
    flows_per_s = float((rates * np.array(per_edge_flows)).sum())
    scale = 1.0 if opts.rate is None else opts.rate / max(flows_per_s, 1e-9)
    drop_share = float(spec.get("background_drop_rate", 0.0))
    rates = np.append(rates * scale, drop_share * rates.sum() * scale)
    n_bins = max(1, math.ceil(opts.duration_ns / NS))
    bin_start = opts.start_ns + np.arange(n_bins, dtype=np.int64) * NS
    diurnal = spec.get("diurnal", {})
    amp, peak = float(diurnal.get("amplitude", 0.0)), float(diurnal.get("peak_hour", 14))
    hours = ((bin_start // NS) % 86400) / 3600.0
    day = 1.0 + amp * np.cos(2 * np.pi * (hours - peak) / 24.0)
    sigma = float(spec.get("jitter", 0.0))
    minutes = (np.arange(n_bins) // 60)
    noise = np.exp(gen.normal(0.0, sigma, size=(len(rates), int(minutes[-1]) + 1)) - sigma * sigma / 2)
    lam = rates[:, None] * day[None, :] * noise[:, minutes]
    last = opts.duration_ns - (n_bins - 1) * NS  # a partial last second
    lam[:, -1] *= last / NS
    counts = gen.poisson(lam)
    edge_idx = np.repeat(np.repeat(np.arange(len(rates)), n_bins), counts.ravel())
    starts = np.repeat(np.tile(bin_start, len(rates)), counts.ravel())
    width = np.full(len(starts), NS, dtype=np.float64)
    if last < NS:
        width[np.repeat(np.tile(np.arange(n_bins) == n_bins - 1, len(rates)), counts.ravel())] = last
    starts = starts + (gen.random(len(starts)) * width).astype(np.int64)
    order = np.argsort(starts, kind="stable")
    return starts[order], edge_idx[order], scale


Span = tuple[int, int, int]  # (fd, offset, count): bytes of a rendered segment in a shared buffer or spool file


class _Writer:
    """Writes chunks on a thread so file I/O and compression overlap the generation.

    A chunk is a list of parts (bytes, memoryviews of a rendered segment's mapped file, or spans
    of a segment's file when `spans` is true) and a callback run once they are written, which
    closes or unmaps the segment."""

    def __init__(self, path: str) -> None:
        self.q: queue.Queue[tuple[list[bytes | memoryview | Span], Callable[[], None] | None] | None] = \
            queue.Queue(maxsize=2)
        self.errors: list[BaseException] = []
        self.out: IO[bytes] | gzip.GzipFile
        self._release: threading.Thread | None = None
        if path == "-":
            self.out = sys.stdout.buffer
        elif path.endswith(".gz"):
            self.out = gzip.open(path, "wb", compresslevel=1)  # noqa: SIM115
        else:
            # the writer thread owns the file; close() closes it
            self.out, self._release = _create(path)
        self.path = path
        # Segment files are copied to a plain output by the kernel (sendfile): half the system
        # time of writing them from a mapping (measured: 1.9 GB from tmpfs to ext4, 0.8-1.0 s
        # against 1.7-3.7 s), and no page tables to fill and tear down.
        self.fd = -1
        if not path.endswith(".gz") and hasattr(os, "sendfile"):
            with contextlib.suppress(OSError, ValueError):  # a stdout with no descriptor (embedded)
                self.fd = self.out.fileno()
        self.spans = self.fd >= 0
        self.thread = threading.Thread(target=self._run, name="simulate-writer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        failed = False
        while (item := self.q.get()) is not None:
            parts, done = item
            try:
                if not failed:
                    for part in parts:
                        if isinstance(part, tuple):
                            self._copy(*part)
                        else:
                            self.out.write(part)
            except BaseException as exc:  # reported on the main thread
                self.errors.append(exc)
                failed = True
            finally:
                parts.clear()
                if done is not None:
                    done()

    def _copy(self, fd: int, offset: int, count: int) -> None:
        self.out.flush()  # what went through the buffer goes first
        end = offset + count
        while offset < end:
            try:
                sent = os.sendfile(self.fd, fd, offset, end - offset)
            except OSError as exc:
                # an output or a system sendfile does not take (not Linux): read and write instead
                if exc.errno not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSOCK, errno.EOPNOTSUPP):
                    raise
                sent = 0
            if not sent:  # an output sendfile cannot write to: copy the rest by reading
                self.out.write(os.pread(fd, end - offset, offset))
                return
            offset += sent

    def put(self, parts: list[bytes | memoryview | Span], done: Callable[[], None] | None = None) -> None:
        if self.errors:
            if done is not None:
                done()
            raise self.errors[0]
        self.q.put((parts, done))

    def close(self) -> None:
        self.q.put(None)
        self.thread.join()
        if self.path == "-":
            self.out.flush()
        else:
            self.out.close()
        if self._release is not None:
            self._release.join()
        if self.errors:
            raise self.errors[0]


RELEASE_MIN_BYTES = 64 << 20


def _create(path: str) -> tuple[IO[bytes], threading.Thread | None]:
    """The output file, created empty, and the thread releasing the file it replaced, if any.

    Truncating a large earlier output (regenerated benchmark data) frees its pages and blocks
    before the first write: measured 1.5-3 s for 1.9 GB on ext4, with the CPU idle, waiting. A
    regular file with no other link is unlinked instead, and its last descriptor closed on a
    thread while the new lines are rendered and written; the new file keeps the old one's mode.
    Anything else (a symlink, a device, a hard-linked file, an unwritable directory) is truncated
    in place as `open` does."""
    try:
        st = os.lstat(path)
    except OSError:
        st = None
    if st is not None and stat.S_ISREG(st.st_mode) and st.st_nlink == 1 and st.st_size >= RELEASE_MIN_BYTES:
        try:
            old = os.open(path, os.O_RDONLY)
        except OSError:
            old = -1
        if old >= 0:
            try:
                os.unlink(path)
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                os.fchmod(fd, stat.S_IMODE(st.st_mode))  # exactly the old mode, whatever the umask
            except OSError:
                os.close(old)
            else:
                release = threading.Thread(target=os.close, args=(old,), name="simulate-release", daemon=True)
                release.start()
                return os.fdopen(fd, "wb"), release
    return open(path, "wb"), None


def simulate(opts: Options, progress: Callable[[int, int], None] | None = None) -> Stats:
    wall = time.perf_counter()
    reuse_large_allocations()
    cluster = load_cluster(opts.cluster, opts.seed)
    rng = SimRandom(opts.seed)
    builder = FlowBuilder(cluster, rng)
    traffic = Traffic(cluster, builder, rng)
    gen = np.random.default_rng(opts.seed)
    per_edge = [_mean_flows(e.make) for e in traffic.edges]
    starts, edges, scale = schedule(cluster, traffic, opts, gen, per_edge)
    makers = [e.make for e in traffic.edges] + [traffic.background_drop]

    # scenarios: each gets a tag (1-based) carried by its flows into the ground truth
    truths: list[Truth] = []
    extra: list[tuple[int, int, list[Event]]] = []
    ctx = Context(cluster, builder, traffic, rng, opts.start_ns, opts.duration_ns)
    for text in opts.scenarios:
        sc, params = parse_scenario(text)
        run = sc.run(ctx, params)
        truths.append(Truth(sc, params, run))
        tag = len(truths)
        extra.extend((t, tag, ev) for t, ev in run.sessions)
        for ns, t0, t1 in run.suppress:
            hit = np.array([e.server_ns == ns for e in traffic.edges] + [False])
            keep = ~(hit[edges] & (starts >= t0) & (starts < t1))
            starts, edges = starts[keep], edges[keep]

    end_ns = opts.start_ns + opts.duration_ns
    # Fixed segments of simulated time, rendered independently (own random streams per
    # segment) and stitched in order: the output depends on the seed only, not on how many
    # processes render it.
    flows_per_s = (opts.rate if opts.rate is not None else
                   sum(e.rate * m for e, m in zip(traffic.edges, per_edge, strict=True)))
    seg_ns = int(max(1.0, SEGMENT_FLOWS / max(flows_per_s, 1e-9)) * NS)
    bounds = [*range(opts.start_ns, end_ns, seg_ns), end_ns]
    extra.sort(key=itemgetter(0))
    extra_t = np.array([x[0] for x in extra], dtype=np.int64)
    job = _SegmentJob(cluster=cluster, builder=builder, traffic=traffic, makers=makers, starts=starts,
                      edges=edges, extra=extra, extra_t=extra_t, bounds=bounds, end_ns=end_ns, seed=opts.seed)
    writer = _Writer(opts.output)
    stats = Stats(scale=scale)
    carry: list[tuple[int, str, int, str]] = []  # (time, line, tag, uuid) spilled past their segment
    nseg = len(bounds) - 1
    workers = max(1, min(opts.workers or (os.cpu_count() or 1), nseg))
    slots: _Slots | None = None
    try:
        if workers > 1 and writer.spans and _crender is not None:
            slots = _make_slots(workers)
        for k, seg in enumerate(_render_all(job, nseg, workers, slots)):
            hi = bounds[k + 1]
            carry = sorted([*carry, *seg.spill])
            take = bisect_left(carry, hi, key=itemgetter(0))
            early, carry = carry[:take], carry[take:]
            blob, done = _open_blob(seg, writer.spans)
            size = end = len(blob) if not isinstance(blob, int) else int(seg.offsets[-1])
            piece = functools.partial(_piece, blob)
            parts: list[bytes | memoryview | Span] = []
            last = 0
            if early:
                # earlier segments' late events go between this segment's lines by time
                pos = np.searchsorted(seg.times, np.array([e[0] for e in early], dtype=np.int64), side="right")
                for p_, e in zip(pos.tolist(), early, strict=True):
                    off = int(seg.offsets[p_])
                    if off > last:
                        parts.append(piece(last, off))
                    line = e[1].encode()
                    parts.append(line)
                    size += len(line)
                    last = off
            if last < end:
                parts.append(piece(last, end))
            del blob
            writer.put(parts, done)
            stats.flows += len(seg.times) + len(early)
            stats.bytes += size
            stats.sessions += seg.sessions
            seg.truth.extend((tag, t, uid) for t, _, tag, uid in early if tag)
            for tag, t, uid in sorted(seg.truth, key=itemgetter(1)):
                tr = truths[tag - 1]
                if not tr.uuids:
                    tr.first_ns = t
                tr.uuids.append(uid)
                tr.last_ns = max(tr.last_ns, t)
            if progress is not None:
                progress(k + 1, nseg)
    finally:
        try:
            writer.close()
        finally:
            if slots is not None:
                slots.close()
    stats.seconds = time.perf_counter() - wall
    stats.truth = [t.record() for t in truths]
    if opts.truth:
        with open(opts.truth, "wb") as fh:
            for rec in stats.truth:
                fh.write(orjson.dumps(rec) + b"\n")
    return stats


@dataclass
class _SegmentJob:
    cluster: Cluster
    builder: FlowBuilder
    traffic: Traffic
    makers: list[Callable[[], list[Event]]]
    starts: np.ndarray
    edges: np.ndarray
    extra: list[tuple[int, int, list[Event]]]
    extra_t: np.ndarray
    bounds: list[int]
    end_ns: int
    seed: int


@dataclass
class _Segment:
    blob: bytes  # lines whose time falls in the segment, sorted (empty when in blob_path)
    times: np.ndarray  # their times
    offsets: np.ndarray  # byte offset of each line in blob, plus the end
    spill: list[tuple[int, str, int, str]]  # later events: (time, line, tag, uuid)
    truth: list[tuple[int, int, str]]  # (tag, time, uuid) of tagged lines in blob
    sessions: int
    blob_path: str = ""  # the lines, written by a worker process to a file in the spool directory
    slot: int = -1  # the lines are at the start of this shared buffer (_Slots)
    slot_fd: int = -1  # in the parent: that buffer's descriptor, and what gives it back
    release: Callable[[], None] | None = None


SLOT_BYTES = 128 << 20  # a segment's lines: ~36 MB expected (20k flows); larger ones go to a file


class _Slots:
    """Shared-memory buffers (memfd) that workers render segments into and the writer copies from.

    Files in the spool cost a page allocation and a copy per written page in the worker, and the
    freeing of every page once the writer closed them: ~10 % of the simulator's CPU at 1M flows.
    These stay allocated for the whole run: a worker maps them once and writes the lines straight
    in, the writer copies spans of them to the output (sendfile), then hands the slot back."""

    def __init__(self, count: int, size: int | None = None) -> None:
        self.size = size = SLOT_BYTES if size is None else size
        self.fds: list[int] = []
        self.free: queue.SimpleQueue[int] = queue.SimpleQueue()
        try:
            for i in range(count):
                fd = os.memfd_create(f"flowtrail-segment-{i}")
                self.fds.append(fd)
                os.ftruncate(fd, size)  # sparse: pages exist once written
                self.free.put(i)
        except BaseException:
            self.close()
            raise

    def take(self, block: bool) -> int | None:
        try:
            return self.free.get(block)
        except queue.Empty:
            return None

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds = []


_JOB: _SegmentJob | None = None
_SPOOL: str | None = None  # set in worker processes: where rendered segments are left for the parent
_SLOT_FDS: list[int] = []  # set in worker processes: the _Slots buffers, and their mappings there
_SLOT_MAPS: dict[int, mmap.mmap] = {}
_SLOT_BYTES = 0


def _piece(blob: bytes | memoryview | int, a: int, b: int) -> bytes | memoryview | Span:
    """Bytes [a, b) of a segment's lines: a slice, or a span of the descriptor they are in."""
    return (blob, a, b - a) if isinstance(blob, int) else blob[a:b]


def _open_blob(seg: _Segment, spans: bool) -> tuple[bytes | memoryview | int, Callable[[], None] | None]:
    """The segment's lines (with `spans`, a descriptor of their file, as the writer copies spans
    of it), and what to call once they are written.

    A worker hands its lines over as a file: sending tens of MB through the pool's pipe cost the
    parent more CPU (pickling, a pipe read per 64 KB into a buffer of the whole message) than
    rendering them cost the worker. The parent opens the file and unlinks it at once."""
    if seg.slot_fd >= 0:
        return seg.slot_fd, seg.release
    if not seg.blob_path:
        return seg.blob, None
    if spans:
        fd = os.open(seg.blob_path, os.O_RDONLY)
        os.unlink(seg.blob_path)
        return fd, lambda: os.close(fd)
    with open(seg.blob_path, "rb") as fh:
        os.unlink(seg.blob_path)
        size = os.fstat(fh.fileno()).st_size
        if not size:
            return b"", None
        # populated in one call: faulting in 4 KB pages one by one cost more system time
        mm = mmap.mmap(fh.fileno(), size, flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0),
                       prot=mmap.PROT_READ)
    view = memoryview(mm)

    def done() -> None:
        view.release()
        # a slice still alive elsewhere: the collector unmaps it later
        with contextlib.suppress(BufferError):
            mm.close()
    return view, done


def _render_all(job: _SegmentJob, nseg: int, workers: int, slots: _Slots | None = None) -> Iterator[_Segment]:
    """The segments in order; worker processes render into `slots` where they can (the caller
    closes them once the writer is done with them)."""
    global _JOB
    _JOB = job
    try:
        if workers <= 1:
            for k in range(nseg):
                yield _render(k)
            return
        # freeze the parent's heap before forking: otherwise the children's garbage collector
        # walks (and so copies, page by page) every inherited object
        gc.collect()
        gc.freeze()
        try:
            # segments are handed over as files in the spool (tmpfs where there is one: read
            # back once, at memory speed), or through the pool's pipe where there is none; the
            # pool (inner) stops its workers before the spool is removed
            # a window of segments in flight: workers never run far ahead of the writer (a
            # slow gzip or pipe), so spooled segments stay few
            window = workers + 2
            with spool_dir() as spool, \
                    mp.get_context("fork").Pool(workers, initializer=_set_spool,
                                                initargs=(spool, slots.fds if slots else [],
                                                          slots.size if slots else 0)) as pool:
                pending: deque[Any] = deque()
                submitted = 0
                while submitted < nseg or pending:
                    while submitted < nseg and len(pending) < window:
                        # a free buffer if there is one (else the segment goes to a file); with
                        # nothing in flight, the writer is holding them all: wait for one
                        slot = slots.take(block=not pending) if slots is not None else None
                        slot = -1 if slot is None else slot
                        pending.append((pool.apply_async(_render, (submitted, slot)), slot))
                        submitted += 1
                    result, slot = pending.popleft()
                    seg = result.get()
                    if slots is not None and slot >= 0:
                        if seg.slot == slot:
                            seg.slot_fd = slots.fds[slot]
                            seg.release = functools.partial(slots.free.put, slot)
                        else:  # the lines did not fit: they are in a file
                            slots.free.put(slot)
                    yield seg
        finally:
            gc.unfreeze()
    finally:
        _JOB = None


def _make_slots(workers: int) -> _Slots | None:
    """Buffers for the segments in flight (workers + 2), those queued in the writer (2), and the
    one it writes."""
    try:
        return _Slots(workers + 5)
    except (OSError, AttributeError):  # no memfd here: spool files, as before
        return None


def _set_spool(path: str | None, slot_fds: list[int], slot_bytes: int) -> None:
    global _SPOOL, _SLOT_FDS, _SLOT_BYTES
    _SPOOL, _SLOT_FDS, _SLOT_BYTES = path, slot_fds, slot_bytes


def _slot_buffer(slot: int) -> mmap.mmap:
    mm = _SLOT_MAPS.get(slot)
    if mm is None:
        mm = _SLOT_MAPS[slot] = mmap.mmap(_SLOT_FDS[slot], _SLOT_BYTES, flags=mmap.MAP_SHARED,
                                          prot=mmap.PROT_READ | mmap.PROT_WRITE)
    return mm


def _render(k: int, slot: int = -1) -> _Segment:
    """Sessions starting in segment k, expanded, timed, formatted; the lines into shared buffer
    `slot` if given and they fit, else into a spool file in worker processes."""
    was = gc.isenabled()
    gc.disable()  # short-lived strings and tuples only; no cycles to collect
    try:
        path = os.path.join(_SPOOL, f"segment-{k}") if _SPOOL is not None else None
        seg = _render_segment(k, path, slot)
        if seg.slot < 0 and path is not None and not seg.blob_path:
            with open(path, "wb") as fh:
                fh.write(seg.blob)
            seg.blob, seg.blob_path = b"", path
        return seg
    finally:
        if was:
            gc.enable()


def _render_segment(k: int, path: str | None = None, slot: int = -1) -> _Segment:
    """Segment k; its lines in shared buffer `slot` if given and they fit (else `slot` is -1),
    else written to `path` (then in `blob_path`), else in `blob`."""
    job = _JOB
    assert job is not None
    lo, hi = job.bounds[k], job.bounds[k + 1]
    rng = SimRandom(f"{job.seed}:segment:{k}")
    job.builder.rng = rng
    job.traffic.rng = rng
    uuid_gen = np.random.default_rng([job.seed, k, 0x0055_1D])
    i0, i1 = np.searchsorted(job.starts, [lo, hi], side="left").tolist()
    j0, j1 = np.searchsorted(job.extra_t, [lo, hi], side="left").tolist()
    makers = job.makers
    # Sessions expanded, then flattened into columns: one (offset, node, body) tuple per flow
    # from the makers and no other per-flow Python object until the lines are written.
    chunks = [makers[edge]() for edge in job.edges[i0:i1].tolist()]
    extra = job.extra[j0:j1]
    chunks += [evs for _, _, evs in extra]
    sess_start = np.concatenate([job.starts[i0:i1], np.array([x[0] for x in extra], dtype=np.int64)])
    sess_tag = np.concatenate([np.zeros(i1 - i0, dtype=np.int64), np.array([x[1] for x in extra], dtype=np.int64)])
    if _crender is not None:
        raw_offs, raw_nodes, raw_counts, bodies_l = _crender.flatten(chunks)
        offs = np.frombuffer(raw_offs, dtype=np.int64)
        counts = np.frombuffer(raw_counts, dtype=np.int64)
        nodes_flat = np.frombuffer(raw_nodes, dtype=np.int64)
    else:
        counts = np.fromiter(map(len, chunks), dtype=np.int64, count=len(chunks))
        flat = list(chain.from_iterable(chunks))
        offs_t, nodes_t, bodies_t = zip(*flat, strict=True) if flat else ((), (), ())
        offs = np.fromiter(offs_t, dtype=np.int64, count=len(flat))
        nodes_flat = np.fromiter(nodes_t, dtype=np.int64, count=len(flat))
        bodies_l = [body_text(b) for b in bodies_t]
    times_all = np.repeat(sess_start, counts) + offs
    # stable: flows of one instant keep session order, then the order their session made them
    order = np.argsort(times_all, kind="stable")
    times_arr = times_all[order]
    n = int(np.searchsorted(times_arr, job.end_ns, side="left"))  # nothing after the simulated span
    order, times_arr = order[:n], times_arr[:n]
    tags = np.repeat(sess_tag, counts)[order]
    nodes = nodes_flat[order]
    split = int(np.searchsorted(times_arr, hi, side="left"))
    uuids = uuid4_bytes(uuid_gen, n)
    cluster = job.cluster
    head = '{"flow":{"time":"'
    emitter = f'","emitter":{{"name":"Hubble","version":"{cluster.hubble_version}"}},'
    tails = [f'}},"node_name":"{nd.name}","time":"' for nd in cluster.nodes]
    blob_path = ""
    in_slot = -1
    if _crender is not None:
        args = (bodies_l, np.ascontiguousarray(order, dtype=np.int64), times_arr, nodes, uuids,
                [t.encode() for t in tails], head.encode(), emitter.encode(), split)
        raw_blob: bytes | None
        if slot >= 0:
            raw_blob, raw_offsets, spill_lines = _crender.lines(*args, _slot_buffer(slot))
            if raw_blob is None:
                in_slot = slot
        elif path is not None:
            with open(path, "wb") as fh:
                raw_blob, raw_offsets, spill_lines = _crender.lines(*args, fh.fileno())
            blob_path = path
        else:
            raw_blob, raw_offsets, spill_lines = _crender.lines(*args)
        blob = raw_blob or b""
        offsets = np.frombuffer(raw_offsets, dtype=np.int64)
    else:
        blob, offsets, spill_lines = _lines_py(bodies_l, order, times_arr, nodes, uuids, tails, head, emitter, split)
    times_list = times_arr.tolist()

    def uid(i: int) -> str:
        return bytes(uuids[i]).decode()
    truth = [(int(tags[i]), times_list[i], uid(i)) for i in np.flatnonzero(tags[:split]).tolist()]
    spill = [(times_list[split + j], line, int(tags[split + j]), uid(split + j)) for j, line in enumerate(spill_lines)]
    return _Segment(blob=blob, times=times_arr[:split], offsets=offsets, spill=spill, truth=truth,
                    sessions=(i1 - i0) + (j1 - j0), blob_path=blob_path, slot=in_slot)


def _lines_py(bodies_l: list[Body], order: np.ndarray, times_arr: np.ndarray, nodes: np.ndarray, uuids: np.ndarray,
              tails: list[str], head: str, emitter: str, split: int) -> tuple[bytes, np.ndarray, list[str]]:
    """What _render.lines does, where the extension is not built."""
    n = len(order)
    bodies = np.empty(len(bodies_l), dtype=object)
    bodies[:] = bodies_l
    bodies = bodies[order]
    tails_a = np.array(tails, dtype=object)
    texts = timestamps(times_arr)
    uid_list: list[str] = uuids.view("S36").ravel().astype("U36").tolist() if n else []
    # each line is nine pieces: joined once per segment instead of formatted once per flow
    pieces = np.empty((n, 9), dtype=object)
    pieces[:, 0] = head
    pieces[:, 1] = texts
    pieces[:, 2] = '","uuid":"'
    pieces[:, 3] = uid_list
    pieces[:, 4] = emitter
    pieces[:, 5] = bodies
    pieces[:, 6] = tails_a[nodes] if n else tails_a[:0]
    pieces[:, 7] = texts
    pieces[:, 8] = '"}\n'
    fixed = len(head) + len('","uuid":"') + 36 + len(emitter) + len('"}\n')
    tail_len = np.fromiter(map(len, tails), dtype=np.int64, count=len(tails))
    lens = (fixed + 2 * np.fromiter(map(len, texts[:split]), dtype=np.int64, count=split)
            + np.fromiter(map(len, bodies[:split].tolist()), dtype=np.int64, count=split) + tail_len[nodes[:split]])
    offsets = np.zeros(split + 1, dtype=np.int64)
    np.cumsum(lens, out=offsets[1:])
    spill = ["".join(pieces[i].tolist()) for i in range(split, n)]
    return "".join(pieces[:split].ravel().tolist()).encode(), offsets, spill


__all__ = ["ClusterError", "Options", "Stats", "simulate"]
