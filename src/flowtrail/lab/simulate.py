"""Schedule sessions over simulated time and write them as Hubble flows, with ground truth.

Session start times come from a Poisson process per traffic edge whose rate follows the time of
day (a cosine with its peak at `diurnal.peak_hour` UTC) and a per-minute log-normal jitter, drawn
with numpy for the whole run. Sessions are then expanded in start order; an event is written once
no later session can precede it (every session starts after the current one), so the output is
sorted by flow time like a Hubble Relay stream, with bounded memory.
"""

from __future__ import annotations

import gc
import gzip
import math
import multiprocessing as mp
import os
import queue
import random
import sys
import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from operator import itemgetter
from typing import IO, Any

import numpy as np
import orjson

from flowtrail.lab.cluster import Cluster, ClusterError, load_cluster
from flowtrail.lab.flows import Event, FlowBuilder
from flowtrail.lab.scenarios import Context, Run, Scenario, parse_scenario
from flowtrail.lab.traffic import Traffic
from flowtrail.util.memory import reuse_large_allocations

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


def uuid4_block(gen: np.random.Generator, n: int) -> str:
    """n random (version 4) UUIDs as one string of n*36 characters."""
    raw = gen.integers(0, 256, size=(n, 16), dtype=np.uint8)
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x40
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80
    hexed = np.empty((n, 32), dtype=np.uint8)
    hexed[:, 0::2] = _HEX[raw >> 4]
    hexed[:, 1::2] = _HEX[raw & 15]
    out = np.full((n, 36), ord("-"), dtype=np.uint8)
    out[:, 0:8], out[:, 9:13], out[:, 14:18] = hexed[:, 0:8], hexed[:, 8:12], hexed[:, 12:16]
    out[:, 19:23], out[:, 24:36] = hexed[:, 16:20], hexed[:, 20:32]
    return out.tobytes().decode("ascii")


def timestamps(times: list[int]) -> list[str]:
    """protojson Timestamp text: RFC 3339 UTC with 0, 3, 6 or 9 fractional digits."""
    arr = np.array(times, dtype=np.int64)
    texts: list[str] = [t + "Z" for t in np.datetime_as_string(arr.astype("datetime64[ns]"), unit="ns").tolist()]
    for i in np.flatnonzero(arr % 1000 == 0).tolist():  # rare: protojson drops trailing zero groups
        nanos = times[i] % NS
        head = texts[i][:19]
        if nanos == 0:
            texts[i] = head + "Z"
        elif nanos % 1_000_000 == 0:
            texts[i] = f"{head}.{nanos // 1_000_000:03d}Z"
        else:
            texts[i] = f"{head}.{nanos // 1000:06d}Z"
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


class _Writer:
    """Writes chunks on a thread so file I/O and compression overlap the generation."""

    def __init__(self, path: str) -> None:
        self.q: queue.Queue[bytes | None] = queue.Queue(maxsize=2)
        self.errors: list[BaseException] = []
        self.out: IO[bytes] | gzip.GzipFile
        if path == "-":
            self.out = sys.stdout.buffer
        elif path.endswith(".gz"):
            self.out = gzip.open(path, "wb", compresslevel=1)  # noqa: SIM115
        else:
            # the writer thread owns the file; close() closes it
            self.out = open(path, "wb")  # noqa: SIM115
        self.path = path
        self.thread = threading.Thread(target=self._run, name="simulate-writer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            while (data := self.q.get()) is not None:
                self.out.write(data)
        except BaseException as exc:  # reported on the main thread
            self.errors.append(exc)
            while self.q.get() is not None:
                pass

    def put(self, data: bytes) -> None:
        if self.errors:
            raise self.errors[0]
        self.q.put(data)

    def close(self) -> None:
        self.q.put(None)
        self.thread.join()
        if self.path == "-":
            self.out.flush()
        else:
            self.out.close()
        if self.errors:
            raise self.errors[0]


def simulate(opts: Options, progress: Callable[[int, int], None] | None = None) -> Stats:
    wall = time.perf_counter()
    reuse_large_allocations()
    cluster = load_cluster(opts.cluster, opts.seed)
    rng = random.Random(opts.seed)
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
    try:
        for k, seg in enumerate(_render_all(job, nseg, workers)):
            hi = bounds[k + 1]
            carry = sorted([*carry, *seg.spill])
            take = bisect_left(carry, hi, key=itemgetter(0))
            early, carry = carry[:take], carry[take:]
            if early:
                # earlier segments' late events go between this segment's lines by time
                pos = np.searchsorted(seg.times, np.array([e[0] for e in early], dtype=np.int64), side="right")
                parts: list[bytes] = []
                last = 0
                for p_, e in zip(pos.tolist(), early, strict=True):
                    off = int(seg.offsets[p_])
                    parts.append(seg.blob[last:off])
                    parts.append(e[1].encode())
                    last = off
                parts.append(seg.blob[last:])
                data = b"".join(parts)
            else:
                data = seg.blob
            writer.put(data)
            stats.flows += len(seg.times) + len(early)
            stats.bytes += len(data)
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
        writer.close()
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
    blob: bytes  # lines whose time falls in the segment, sorted
    times: np.ndarray  # their times
    offsets: np.ndarray  # byte offset of each line in blob, plus the end
    spill: list[tuple[int, str, int, str]]  # later events: (time, line, tag, uuid)
    truth: list[tuple[int, int, str]]  # (tag, time, uuid) of tagged lines in blob
    sessions: int


_JOB: _SegmentJob | None = None


def _render_all(job: _SegmentJob, nseg: int, workers: int) -> Iterator[_Segment]:
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
            with mp.get_context("fork").Pool(workers) as pool:
                yield from pool.imap(_render, range(nseg))
        finally:
            gc.unfreeze()
    finally:
        _JOB = None


def _render(k: int) -> _Segment:
    """Sessions starting in segment k, expanded, timed, formatted."""
    was = gc.isenabled()
    gc.disable()  # short-lived strings and tuples only; no cycles to collect
    try:
        return _render_segment(k)
    finally:
        if was:
            gc.enable()


def _render_segment(k: int) -> _Segment:
    job = _JOB
    assert job is not None
    lo, hi = job.bounds[k], job.bounds[k + 1]
    rng = random.Random(f"{job.seed}:segment:{k}")
    job.builder.rng = rng
    job.traffic.rng = rng
    uuid_gen = np.random.default_rng([job.seed, k, 0x0055_1D])
    i0, i1 = np.searchsorted(job.starts, [lo, hi], side="left").tolist()
    j0, j1 = np.searchsorted(job.extra_t, [lo, hi], side="left").tolist()
    events: list[tuple[int, int, str, int]] = []
    makers = job.makers
    for start, edge in zip(job.starts[i0:i1].tolist(), job.edges[i0:i1].tolist(), strict=True):
        events.extend([(start + off, node, body, 0) for off, node, body in makers[edge]()])
    for start, tag, evs in job.extra[j0:j1]:
        events.extend([(start + off, node, body, tag) for off, node, body in evs])
    events.sort(key=itemgetter(0))
    cut_end = bisect_left(events, job.end_ns, key=itemgetter(0))
    events = events[:cut_end]  # nothing after the simulated span
    n = len(events)
    cluster = job.cluster
    head = '{"flow":{"time":"'
    emitter = f'","emitter":{{"name":"Hubble","version":"{cluster.hubble_version}"}},'
    tails = [f'}},"node_name":"{nd.name}","time":"' for nd in cluster.nodes]
    times = [ev[0] for ev in events]
    texts = timestamps(times) if n else []
    uids = uuid4_block(uuid_gen, n) if n else ""
    lines = [f'{head}{t}","uuid":"{uids[36 * i:36 * i + 36]}{emitter}{ev[2]}{tails[ev[1]]}{t}"}}\n'
             for i, (t, ev) in enumerate(zip(texts, events, strict=True))]
    split = bisect_left(times, hi)
    own = lines[:split]
    lens = np.fromiter(map(len, own), dtype=np.int64, count=len(own))
    offsets = np.zeros(len(own) + 1, dtype=np.int64)
    np.cumsum(lens, out=offsets[1:])
    truth = [(events[i][3], times[i], uids[36 * i:36 * i + 36]) for i in range(split) if events[i][3]]
    spill = [(times[i], lines[i], events[i][3], uids[36 * i:36 * i + 36]) for i in range(split, n)]
    return _Segment(blob="".join(own).encode(), times=np.array(times[:split], dtype=np.int64), offsets=offsets,
                    spill=spill, truth=truth, sessions=(i1 - i0) + (j1 - j0))


__all__ = ["ClusterError", "Options", "Stats", "simulate"]
