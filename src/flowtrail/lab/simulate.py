"""Schedule sessions over simulated time and write them as Hubble flows, with ground truth.

Session start times come from a Poisson process per traffic edge whose rate follows the time of
day (a cosine with its peak at `diurnal.peak_hour` UTC) and a per-minute log-normal jitter, drawn
with numpy for the whole run. Sessions are then expanded in start order; an event is written once
no later session can precede it (every session starts after the current one), so the output is
sorted by flow time like a Hubble Relay stream, with bounded memory.
"""

from __future__ import annotations

import gzip
import math
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
FLUSH_SESSIONS = 256  # sessions expanded between two sorted flushes
CHUNK_BYTES = 2 << 20


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
        self.q: queue.Queue[bytes | None] = queue.Queue(maxsize=8)
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


def _sessions(starts: np.ndarray, edges: np.ndarray, extra: list[tuple[int, int, list[Event]]],
              makers: list[Callable[[], list[Event]]]) -> Iterator[tuple[int, int, list[Event] | None, int]]:
    """Scheduled sessions merged with scenario sessions, in start order: (start, tag, events, edge)."""
    extra.sort(key=itemgetter(0))
    j = 0
    n_extra = len(extra)
    for start, edge in zip(starts.tolist(), edges.tolist(), strict=True):
        while j < n_extra and extra[j][0] <= start:
            t, tag, ev = extra[j]
            yield t, tag, ev, -1
            j += 1
        yield start, 0, None, edge
    for t, tag, ev in extra[j:]:
        yield t, tag, ev, -1


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
    head = '{"flow":{"time":"'
    emitter = f'","emitter":{{"name":"Hubble","version":"{cluster.hubble_version}"}},'
    tails = [f'}},"node_name":"{n.name}","time":"' for n in cluster.nodes]
    uuid_gen = np.random.default_rng([opts.seed, 0x0055_1D])
    writer = _Writer(opts.output)
    stats = Stats(scale=scale)
    pending: list[tuple[int, int, str, int]] = []
    buf: list[str] = []
    buf_bytes = 0
    total = len(starts) + len(extra)

    def emit(upto: int) -> None:
        nonlocal pending, buf, buf_bytes
        pending.sort(key=itemgetter(0))
        cut = bisect_left(pending, min(upto, end_ns), key=itemgetter(0))
        ready, pending = pending[:cut], pending[cut:]
        if upto == sys.maxsize:
            pending = []  # events after the end of the simulated span
        if ready:
            times = [ev[0] for ev in ready]
            texts = timestamps(times)
            uids = uuid4_block(uuid_gen, len(ready))
            lines = [f'{head}{t}","uuid":"{uids[36 * i:36 * i + 36]}{emitter}{ev[2]}{tails[ev[1]]}{t}"}}\n'
                     for i, (t, ev) in enumerate(zip(texts, ready, strict=True))]
            for i in [i for i, ev in enumerate(ready) if ev[3]]:
                tr = truths[ready[i][3] - 1]
                if not tr.uuids:
                    tr.first_ns = times[i]
                tr.uuids.append(uids[36 * i:36 * i + 36])
                tr.last_ns = times[i]
            buf.extend(lines)
            buf_bytes += sum(map(len, lines))
            stats.flows += len(lines)
        if buf_bytes >= CHUNK_BYTES or upto == sys.maxsize:
            writer.put("".join(buf).encode())
            stats.bytes += buf_bytes
            buf, buf_bytes = [], 0

    try:
        count = 0
        for start, tag, events, edge in _sessions(starts, edges, extra, makers):
            if events is None:
                events = makers[edge]()
            pending.extend((start + off, node, body, tag) for off, node, body in events)
            count += 1
            if count % FLUSH_SESSIONS == 0:
                emit(start)
                if progress is not None:
                    progress(count, total)
        emit(sys.maxsize)
    finally:
        writer.close()
    stats.sessions = count
    stats.seconds = time.perf_counter() - wall
    stats.truth = [t.record() for t in truths]
    if opts.truth:
        with open(opts.truth, "wb") as fh:
            for rec in stats.truth:
                fh.write(orjson.dumps(rec) + b"\n")
    return stats


__all__ = ["ClusterError", "Options", "Stats", "simulate"]
