"""Per-sink load shedding, batch at a time: a token bucket in flows per second and DNS sampling.

Both work on whole decoded batches with numpy; nothing here loops over flows in Python.

**Token bucket** (:class:`TokenBucket`): ``rate`` tokens per second accrue up to ``burst``
(default: one second's worth); a batch takes as many tokens as are there. When a batch holds
more flows than tokens, the flows kept are spread evenly over the batch (not its first N), so a
busy second keeps a sample of all of it. The clock is wall time (``time.monotonic``), since the
limit protects the receiver, not a replay: a file read at full speed is limited too.

**DNS sampling** (:class:`DnsSampler`): keeps a ``fraction`` of DNS flows and every other flow.
A DNS flow is one with an ``l7.dns`` record (the proxy's DNS requests and responses) or with
TCP/UDP port 53 on either side (the L3/L4 packets of DNS). The decision is a hash of the flow's
``uuid`` (of its ``time`` when it has none), so it is the same on every node, every run and in
every sink with the same fraction: a flow kept at 10 % is also kept at 50 %, and a request and
its retransmissions with different uuids are sampled independently.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import pyarrow as pa

from flowtrail.filters.base import Columns
from flowtrail.util import compute as pc

DNS_PORT = 53
DNS_PATHS = (
    "uuid",
    "l7.dns.query",
    "l4.TCP.source_port",
    "l4.TCP.destination_port",
    "l4.UDP.source_port",
    "l4.UDP.destination_port",
)
_PRIME = np.uint64(0x100000001B3)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


class TokenBucket:
    """``rate`` flows per second with bursts of ``burst`` (default ``rate``, at least 1)."""

    def __init__(self, rate: float, burst: float | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0:
            raise ValueError("rate limit must be > 0 flows/s (0 means no limit: build no bucket)")
        self.rate = float(rate)
        self.burst = float(burst) if burst else max(self.rate, 1.0)
        self.clock = clock
        self.tokens = self.burst
        self.last = clock()

    def take(self, n: int) -> int:
        """How many of ``n`` flows arriving now may pass (tokens are spent for them)."""
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        allowed = min(n, int(self.tokens))
        self.tokens -= allowed
        return allowed

    def select(self, n: int) -> np.ndarray:
        """Indices (increasing) of the flows of an ``n``-flow batch that pass, evenly spread."""
        allowed = self.take(n)
        if allowed >= n:
            return np.arange(n)
        if allowed <= 0:
            return np.zeros(0, np.int64)
        return np.unique(np.floor(np.arange(allowed) * (n / allowed)).astype(np.int64))


def hash_strings(arr: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A 64-bit hash of every string (0 for nulls), computed over the Arrow buffers with numpy."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if not pa.types.is_large_string(arr.type):
        arr = arr.cast(pa.large_string())
    n = len(arr)
    out = np.zeros(n, np.uint64)
    if n == 0:
        return out
    offsets = np.frombuffer(arr.buffers()[1], np.int64, count=n + 1, offset=arr.offset * 8)
    data_buf = arr.buffers()[2]
    lengths = np.diff(offsets)
    nonempty = np.flatnonzero(lengths > 0)
    if data_buf is None or not nonempty.size:
        return out
    base = int(offsets[0])
    data = np.frombuffer(data_buf, np.uint8)[base : int(offsets[-1])].astype(np.uint64)
    starts = offsets[:-1] - base
    pos = np.arange(len(data), dtype=np.int64) - np.repeat(starts, lengths)
    with np.errstate(over="ignore"):
        powers = np.cumprod(np.full(int(lengths.max()), _PRIME, np.uint64))
        # polynomial hash mod 2**64, then splitmix64's finaliser for avalanche
        h = np.add.reduceat((data + np.uint64(1)) * powers[pos], starts[nonempty])
        h ^= lengths[nonempty].astype(np.uint64)
        h ^= h >> np.uint64(30)
        h *= _M1
        h ^= h >> np.uint64(27)
        h *= _M2
        h ^= h >> np.uint64(31)
    out[nonempty] = h
    valid = arr.is_valid().to_numpy(zero_copy_only=False)
    out[~valid] = 0
    return out


def unit_interval(h: np.ndarray) -> np.ndarray:
    """Hashes mapped to [0, 1)."""
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


class DnsSampler:
    """Keeps ``fraction`` (0..1) of DNS flows, chosen by uuid hash; other rows are all kept."""

    paths = frozenset(DNS_PATHS)

    def __init__(self, fraction: float) -> None:
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"dnsSampling must be between 0 and 1, got {fraction}")
        self.fraction = float(fraction)

    def is_dns(self, cols: Columns) -> np.ndarray:
        out = cols.valid("l7.dns")
        for proto in ("TCP", "UDP"):
            for side in ("source_port", "destination_port"):
                port = cols.get(f"l4.{proto}.{side}")
                out |= np.asarray(pc.fill_null(pc.equal(port, DNS_PORT), False).to_numpy(zero_copy_only=False),
                                  dtype=bool)
        return out

    def keep(self, table: pa.Table) -> tuple[np.ndarray, int]:
        """(mask of rows kept, number of DNS rows sampled out)."""
        cols = Columns(table)
        dns = self.is_dns(cols)
        if self.fraction >= 1.0 or not dns.any():
            return np.ones(cols.n, bool), 0
        idx = np.flatnonzero(dns)
        uuid = cols.get("uuid").take(pa.array(idx))
        h = hash_strings(uuid)
        missing = ~uuid.is_valid().to_numpy(zero_copy_only=False)
        if missing.any():
            t = cols.top("time").take(pa.array(idx[missing]))
            h[missing] = hash_strings(t)
        drop = unit_interval(h) >= self.fraction
        keep = np.ones(cols.n, bool)
        keep[idx[drop]] = False
        return keep, int(drop.sum())
