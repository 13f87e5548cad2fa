"""Flow export for SIEMs: Hubble-exporter-compatible files, Elasticsearch/OpenSearch, Splunk HEC.

Configuration is a list of entries (:data:`EXPORT_SCHEMA`), built by :func:`build_flow_exports`.
File entries take the keys of Cilium's dynamic exporter (``flowLogs`` in ``flowlogs.yaml``), so
an existing Cilium exporter config can be pasted as is::

    - name: drops                       # required, unique
      filePath: /var/log/flowtrail/drops.log   # required, unique; "stdout" writes to stdout
      fieldMask: [time, verdict, source.namespace, source.pod_name, destination, l4, node_name]
      includeFilters: [{verdict: [DROPPED]}]     # allowList: any matches (empty: all flows)
      excludeFilters: [{source_pod: [kube-system/]}]   # denyList: none may match
      end: "2027-01-01T00:00:00Z"       # stop exporting after this (wall-clock) time
      fileMaxSizeMb: 10                 # 0 or absent: 10, as in Hubble
      fileMaxBackups: 5                 # 0 or absent: 5, as in Hubble
      fileCompress: false
      rateLimit: 0                      # flowtrail: flows/s, 0 = no limit
      dnsSampling: 1.0                  # flowtrail: fraction of DNS flows kept (uuid hash)

``allowList``/``denyList`` are accepted for ``includeFilters``/``excludeFilters``; filters may
also be given as the JSON string of the static exporter's ConfigMap keys (``'{"verdict":
["DROPPED"]},{"source_pod":["kube-system/"]}'``) and the field mask as its space-separated string.
``type`` defaults to ``file``; ``elasticsearch`` (alias ``opensearch``) and ``splunk-hec`` are
documented in :mod:`flowtrail.sinks.elastic` and :mod:`flowtrail.sinks.splunk`.

Pipeline of every exporter, per decoded batch, vectorized (numpy/Arrow) up to the last step:

1. **filters** -- the compiled FlowFilters (``FilterSet.compile(include, exclude).mask``), with
   Hubble's ``filters.Apply`` semantics. Lost-event rows (``flow`` null) are exported like
   Hubble's exporter does for non-flow events: they pass an empty allowlist and any denylist
   (a filter never matches a missing flow), and fail a non-empty allowlist;
2. **end** -- past ``end`` every row that passed the filters counts as ``expired`` (Hubble
   checks ``end`` after its filters too);
3. **DNS sampling** and 4. **rate limit** -- see :mod:`flowtrail.sinks.ratelimit`;
5. **output** -- the file exporter writes the selected rows' JSON lines (the decoder's
   canonical bytes, so without a field mask the file holds exactly what ``hubble observe -o
   json`` / ``flowtrail observe -o json`` prints for the same filters), through
   :class:`~flowtrail.sinks.rotate.RotatingWriter`. A field mask (:mod:`.fieldmask`) rewrites
   each line: per-row Python, as each output line is built anyway.

HTTP exporters queue the encoded rows in memory or, given a spool directory (``state_dir``), in
an on-disk spool that survives outages and restarts; see :class:`HttpFlowExport`.

Counters (``stats``; all exporters have all keys)::

    input + recovered == filtered + expired + sampled + rate_limited + dropped + errors + exported + pending

``input`` rows given to ``write``; ``recovered`` rows found in the disk spool at start (queued
by an earlier run); ``filtered`` rejected by the allow/deny lists; ``expired`` after ``end``;
``sampled`` DNS flows sampled out; ``rate_limited`` over the token bucket; ``dropped`` shed by
an HTTP exporter (policy: the newest rows are refused, never blocking the pipeline; the reason
of each is counted in ``drops``: ``buffer_full``, ``spool_full``, ``closed``); ``errors`` rows
the destination refused or that could not be written; ``exported`` rows written to the file or
acknowledged by the server; ``pending`` rows queued, spooled or in flight (always 0 for the
file exporter; rows left in a disk spool at close stay pending: the next run sends them).
``bytes`` counts bytes written or sent (accepted payload only). HTTP exporters also count
``retries`` (failed attempts retried) and ``spool_bytes`` (bytes in the disk spool now).
"""

from __future__ import annotations

import hashlib
import logging
import random
import re
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from datetime import date, datetime
from pathlib import Path
from typing import Any, BinaryIO, Protocol, cast, runtime_checkable

import jsonschema
import numpy as np
import orjson
import pyarrow as pa
import requests

from flowtrail.filters import FilterError, FilterSet
from flowtrail.model.timeutil import parse_rfc3339_ns
from flowtrail.sinks.fieldmask import FieldMask, FieldMaskError
from flowtrail.sinks.ratelimit import DnsSampler, TokenBucket
from flowtrail.sinks.rotate import RotatingWriter
from flowtrail.sinks.spool import EMPTY_BLOCK, Block, DiskSpool, MemorySpool, Spool, SpoolError, record_ends
from flowtrail.sources.decode import Rows
from flowtrail.util import compute as pc

log = logging.getLogger(__name__)

STAT_KEYS = ("input", "recovered", "exported", "filtered", "expired", "sampled", "rate_limited", "dropped",
             "errors", "pending", "bytes")
# why rows were dropped: the memory buffer (or the disk spool's inbox) was full; the disk spool
# reached spool_max_mb; undelivered when the exporter closed without a disk spool
DROP_REASONS = ("buffer_full", "spool_full", "closed")
DEFAULT_FILE_MAX_SIZE_MB = 10  # Hubble's DefaultFileMaxSizeMB
DEFAULT_FILE_MAX_BACKUPS = 5  # Hubble's DefaultFileMaxBackups
# 1 GiB: about 570k flows as Elasticsearch documents or HEC events of the real samples and lab
# flows the tests use (1.9 KB each, unmasked), ten minutes of 1000 flows/s; the alert spool's
# 256 MB would hold under three. Size it as flows/s x bytes per flow x the outage to ride out.
DEFAULT_SPOOL_MAX_MB = 1024
RETRY_STATUS = frozenset({408, 429})  # 4xx that mean "later", like 5xx
MB = 1 << 20
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class ExportConfigError(ValueError):
    """An export config entry that cannot be built (message names the entry)."""


@runtime_checkable
class FlowExport(Protocol):
    """One configured flow exporter."""

    name: str
    paths: set[str]  # flow paths the decoder must project for this exporter's filters/sampling
    stats: dict[str, int]
    drops: dict[str, int]  # stats["dropped"] by reason (DROP_REASONS)

    def write(self, table: pa.Table | None, rows: Rows) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


# -- JSON schema ---------------------------------------------------------------------------------

_FILTERS = {
    "description": "FlowFilters (Hubble JSON names), or the static exporter's JSON string of them",
    "anyOf": [{"type": "array", "items": {"type": "object"}}, {"type": "string"}, {"type": "null"}],
}
_COMMON_PROPS: dict[str, Any] = {
    "type": {"enum": ["file", "elasticsearch", "opensearch", "splunk-hec"], "default": "file"},
    "name": {"type": "string", "minLength": 1},
    "fieldMask": {"description": "Flow field paths kept (Hubble field mask)",
                  "anyOf": [{"type": "array", "items": {"type": "string"}}, {"type": "string"}, {"type": "null"}]},
    "includeFilters": _FILTERS,
    "excludeFilters": _FILTERS,
    "allowList": _FILTERS,
    "denyList": _FILTERS,
    "end": {"description": "RFC 3339 time after which nothing is exported",
            "anyOf": [{"type": "string"}, {"type": "null"}]},
    "rateLimit": {"type": "number", "minimum": 0, "default": 0, "description": "flows/s, 0 = off"},
    "rateBurst": {"type": "number", "minimum": 0, "description": "token bucket size (default: rateLimit)"},
    "dnsSampling": {"type": "number", "minimum": 0, "maximum": 1, "default": 1,
                    "description": "fraction of DNS flows kept, by uuid hash"},
}
_FILE_PROPS: dict[str, Any] = {
    "filePath": {"type": "string", "minLength": 1, "description": "file, or 'stdout'"},
    "fileMaxSizeMb": {"type": "integer", "minimum": 0, "default": DEFAULT_FILE_MAX_SIZE_MB},
    "fileMaxBackups": {"type": "integer", "minimum": 0, "default": DEFAULT_FILE_MAX_BACKUPS},
    "fileCompress": {"type": "boolean", "default": False},
}
_HTTP_PROPS: dict[str, Any] = {
    "url": {"type": "string", "pattern": "^https?://"},
    "batch_max": {"type": "integer", "minimum": 1, "default": 5000},
    "batch_max_mb": {"type": "number", "exclusiveMinimum": 0, "default": 8},
    "flush_interval_s": {"type": "number", "exclusiveMinimum": 0, "default": 1},
    "max_buffer": {"type": "integer", "minimum": 1, "default": 100000},
    "max_buffer_mb": {"type": "number", "exclusiveMinimum": 0, "default": 256},
    "timeout_s": {"type": "number", "exclusiveMinimum": 0, "default": 10},
    "retry_backoff_s": {"type": "number", "exclusiveMinimum": 0, "default": 0.5},
    "retry_backoff_max_s": {"type": "number", "exclusiveMinimum": 0, "default": 30},
    "close_timeout_s": {"type": "number", "minimum": 0, "default": 10},
    "spool": {"type": "boolean", "default": True,
              "description": "with state_dir: queue rows in a disk spool (state_dir/export-spool/<name>)"},
    "spool_max_mb": {"type": "number", "exclusiveMinimum": 0, "default": DEFAULT_SPOOL_MAX_MB,
                     "description": "disk spool cap; beyond it the newest rows are dropped"},
    "tls_verify": {"anyOf": [{"type": "boolean"}, {"type": "string"}], "default": True,
                   "description": "false, or a CA bundle path"},
    "headers": {"type": "object", "additionalProperties": {"type": "string"}},
}
_ES_PROPS: dict[str, Any] = {
    "index": {"type": "string", "minLength": 1, "default": "hubble-flows-%Y.%m.%d",
              "description": "strftime pattern applied to the flow time (UTC)"},
    "username": {"type": "string"},
    "password": {"type": "string"},
    "api_key": {"type": "string"},
    "op_type": {"enum": ["index", "create"], "default": "index"},
    "timestamp_field": {"anyOf": [{"type": "string", "minLength": 1}, {"type": "null"}], "default": "@timestamp"},
}
_HEC_PROPS: dict[str, Any] = {
    "token": {"type": "string", "minLength": 1},
    "index": {"type": "string", "minLength": 1},
    "sourcetype": {"type": "string", "minLength": 1, "default": "cilium:hubble:flow"},
    "source": {"type": "string", "minLength": 1},
}


def _when_type(*names: str) -> dict[str, Any]:
    return {"properties": {"type": {"enum": list(names)}}, "required": ["type"]}


EXPORT_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "flowtrail flow export entry",
    "type": "object",
    "required": ["name"],
    "properties": _COMMON_PROPS,
    "allOf": [
        {
            "if": {"anyOf": [{"not": {"required": ["type"]}}, _when_type("file")]},
            "then": {"properties": _FILE_PROPS, "required": ["filePath"]},
        },
        {
            "if": _when_type("elasticsearch", "opensearch"),
            "then": {"properties": {**_HTTP_PROPS, **_ES_PROPS}, "required": ["url"],
                     "dependentRequired": {"username": ["password"], "password": ["username"]}},
        },
        {
            "if": _when_type("splunk-hec"),
            "then": {"properties": {**_HTTP_PROPS, **_HEC_PROPS}, "required": ["url", "token"]},
        },
    ],
    "unevaluatedProperties": False,
}
_VALIDATOR = jsonschema.Draft202012Validator(EXPORT_SCHEMA)


# -- selection -------------------------------------------------------------------------------------


def _filter_list(value: Any, key: str) -> list[dict[str, Any]]:
    if value is None:
        return []
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return []
        try:  # the static exporter's form: comma-separated JSON objects
            value = orjson.loads("[" + text + "]")
        except orjson.JSONDecodeError as exc:
            raise ExportConfigError(f"{key}: not JSON FlowFilters: {exc}") from exc
    if not isinstance(value, list) or not all(isinstance(f, dict) for f in value):
        raise ExportConfigError(f"{key}: expected a list of FlowFilter objects")
    return value


def _end_ns(value: Any) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, datetime):  # YAML reads an unquoted timestamp as a datetime
        if value.tzinfo is None:
            raise ExportConfigError(f"end: {value} has no time zone")
        return int(value.timestamp()) * 10**9 + value.microsecond * 1000
    if isinstance(value, date):
        raise ExportConfigError(f"end: {value} is a date, expected an RFC 3339 time")
    ns = parse_rfc3339_ns(str(value))
    if ns is None:
        raise ExportConfigError(f"end: {value!r} is not an RFC 3339 time")
    return ns


class Selector:
    """Filters, ``end``, DNS sampling and rate limiting of one exporter, over whole batches."""

    def __init__(
        self,
        include: Sequence[Mapping[str, Any]] = (),
        exclude: Sequence[Mapping[str, Any]] = (),
        end_ns: int | None = None,
        rate_limit: float = 0,
        rate_burst: float | None = None,
        dns_sampling: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.filters = FilterSet.compile(list(include), list(exclude))
        self.end_ns = end_ns
        self.bucket = TokenBucket(rate_limit, rate_burst, clock) if rate_limit and rate_limit > 0 else None
        self.sampler = DnsSampler(dns_sampling) if dns_sampling < 1.0 else None
        self.wall_clock_ns = wall_clock_ns
        self.paths: set[str] = set(self.filters.paths) | (set(self.sampler.paths) if self.sampler else set())

    def select(self, table: pa.Table | None, n: int, stats: dict[str, int]) -> np.ndarray:
        """Indices of the rows to export; ``stats`` gets input/filtered/expired/sampled/rate_limited."""
        stats["input"] += n
        if table is None:
            if not self.filters.empty or self.sampler is not None:
                raise ValueError("this exporter filters or samples: decode with columns (its .paths)")
            mask = np.ones(n, bool)
        else:
            if table.num_rows != n:
                raise ValueError(f"table has {table.num_rows} rows, rows has {n}")
            mask = self.filters.mask(table) if not self.filters.empty else np.ones(n, bool)
        passed = int(mask.sum())
        stats["filtered"] += n - passed
        if self.end_ns is not None and self.wall_clock_ns() > self.end_ns:
            stats["expired"] += passed
            return np.zeros(0, np.int64)
        if self.sampler is not None and passed and table is not None:
            keep, _ = self.sampler.keep(table)
            out = mask & ~keep
            stats["sampled"] += int(out.sum())
            mask &= keep
        idx = np.flatnonzero(mask)
        if self.bucket is not None and len(idx):
            sel = self.bucket.select(len(idx))
            stats["rate_limited"] += len(idx) - len(sel)
            idx = idx[sel]
        return idx


def new_stats() -> dict[str, int]:
    return dict.fromkeys(STAT_KEYS, 0)


# -- file exporter ---------------------------------------------------------------------------------


class _Counting:
    """File-like adapter counting the bytes that pass (Rows.write_lines ignores return values)."""

    def __init__(self, out: RotatingWriter | BinaryIO) -> None:
        self.out = out
        self.count = 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self.out.write(data)
        n = len(data) if not isinstance(data, memoryview) else data.nbytes
        self.count += n
        return n

    def flush(self) -> None:
        self.out.flush()


class FileFlowExport:
    """Hubble's file exporter: ExportEvent JSON lines to a size-rotated file (or stdout)."""

    kind = "file"

    def __init__(
        self,
        name: str,
        file_path: str,
        selector: Selector,
        field_mask: FieldMask | None = None,
        max_size_mb: float = DEFAULT_FILE_MAX_SIZE_MB,
        max_backups: int = DEFAULT_FILE_MAX_BACKUPS,
        compress: bool = False,
    ) -> None:
        self.name = name
        self.file_path = file_path
        self.selector = selector
        self.mask = field_mask if field_mask is not None and field_mask.active else None
        self.paths = set(selector.paths)
        self.stats = new_stats()
        self.drops = dict.fromkeys(DROP_REASONS, 0)  # a file exporter never drops: it writes or errs
        self.writer: RotatingWriter | None = None
        if file_path == "stdout":
            self._out = _Counting(sys.stdout.buffer)
        else:
            self.writer = RotatingWriter(file_path, int(max_size_mb * MB), max_backups, compress)
            self._out = _Counting(self.writer)
        self._closed = False

    def write(self, table: pa.Table | None, rows: Rows) -> None:
        if self._closed:
            raise ValueError(f"export {self.name!r} is closed")
        idx = self.selector.select(table, len(rows), self.stats)
        if not len(idx):
            return
        sel = rows.take(idx)
        before = self._out.count
        try:
            if self.mask is None:
                sel.write_lines(cast(BinaryIO, self._out))  # only .write is used
            else:
                self._out.write(b"".join(self.mask.lines(sel.to_list())))
        except (OSError, ValueError) as exc:  # ValueError: a row the field mask could not parse
            self.stats["errors"] += len(idx)
            log.error("export %s: writing %s failed: %s", self.name, self.file_path, exc)
        else:
            self.stats["exported"] += len(idx)
        self.stats["bytes"] += self._out.count - before

    def flush(self) -> None:
        try:
            self._out.flush()
        except OSError as exc:
            log.error("export %s: flushing %s failed: %s", self.name, self.file_path, exc)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.writer is not None:
            self.writer.close()
        else:
            self.flush()


# -- HTTP exporters: shared machinery --------------------------------------------------------------


def spool_dir_name(name: str) -> str:
    """A directory name for an exporter's spool: the name itself when it is a safe file name,
    else a slug of it plus a hash (two names never share a spool)."""
    if _SAFE_NAME.fullmatch(name):
        return name
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:40].strip("._-") or "export"
    return f"{slug}-{hashlib.sha256(name.encode()).hexdigest()[:10]}"


class HttpFlowExport:
    """Base of the HTTP exporters: bounded buffering, an optional disk spool, one sender, retries.

    ``write`` selects rows and encodes one document per row (subclass ``encode``) in the caller's
    thread and queues them; it never waits for the network or the disk. Two ways to queue:

    * **without a spool directory** the documents go to a memory buffer (``max_buffer`` rows,
      ``max_buffer_mb``) that the sender posts from; an outage longer than the buffer holds
      loses flows, and what is left at ``close`` (after ``close_timeout_s`` of trying) is lost;
    * **with a spool directory** (``spool_dir``: ``state_dir/export-spool/<name>``) the buffer
      is only the inbox of a mover thread that appends the documents to a
      :class:`~flowtrail.sinks.spool.DiskSpool` (fsync'd, bounded by ``spool_max_mb``); the
      sender posts from the spool and removes a batch once every row of it is resolved
      (exported or refused). What is undelivered at ``close`` stays on disk and a new exporter
      on the same directory sends it first (``stats["recovered"]``).

    Either way, rows that do not fit are the newest: they are refused and counted ``dropped``
    with a reason in ``drops`` (``buffer_full``: the memory buffer or the inbox; ``spool_full``:
    the disk spool's cap; ``closed``: lost at close without a spool), and a warning is logged at
    most once per ``log_interval_s``. Rows already queued are never discarded to make room, and
    once a row has been refused for want of room every later one is until the sender frees
    some, so the flows that reach the SIEM after an outage are its oldest ones, in order, then a
    gap, then the flows from the recovery on.

    The sender posts a batch when ``batch_max`` rows (or ``batch_max_mb``) are queued or the
    oldest has waited ``flush_interval_s``, one batch at a time, in order. HTTP 408, 429, 5xx and
    connection errors are retried with exponential backoff (``retry_backoff_s`` doubling up to
    ``retry_backoff_max_s``, with jitter; a server's ``Retry-After`` in seconds is honoured up to
    that cap) for as long as it takes. A subclass's ``handle`` reads per-row results (bulk
    items, HEC's invalid event): only the rows it returns are sent again. 413 splits the batch;
    other 4xx count as ``errors``. Delivery is at-least-once: a batch interrupted by ``close``
    or a crash is sent again whole by the next exporter on the spool.
    """

    kind = "http"
    content_type = "application/json"
    record_lines = 1  # lines per encoded row (an Elasticsearch bulk item is two)

    def __init__(
        self,
        name: str,
        url: str,
        selector: Selector,
        field_mask: FieldMask | None = None,
        *,
        batch_max: int = 5000,
        batch_max_mb: float = 8,
        flush_interval_s: float = 1.0,
        max_buffer: int = 100_000,
        max_buffer_mb: float = 256,
        timeout_s: float = 10.0,
        retry_backoff_s: float = 0.5,
        retry_backoff_max_s: float = 30.0,
        close_timeout_s: float = 10.0,
        tls_verify: bool | str = True,
        headers: Mapping[str, str] | None = None,
        spool_dir: Path | None = None,
        spool_max_mb: float = DEFAULT_SPOOL_MAX_MB,
        log_interval_s: float = 10.0,
    ) -> None:
        self.name = name
        self.url = url
        self.selector = selector
        self.mask = field_mask if field_mask is not None and field_mask.active else None
        self.paths: set[str] = set(selector.paths)
        self.stats = new_stats()
        self.stats["retries"] = 0
        self.stats["spool_bytes"] = 0
        self.drops = dict.fromkeys(DROP_REASONS, 0)
        self.batch_max = batch_max
        self.batch_max_bytes = int(batch_max_mb * MB)
        self.flush_interval_s = flush_interval_s
        self.max_buffer = max_buffer
        self.max_buffer_bytes = int(max_buffer_mb * MB)
        self.timeout_s = timeout_s
        self.retry_backoff_s = retry_backoff_s
        self.retry_backoff_max_s = retry_backoff_max_s
        self.close_timeout_s = close_timeout_s
        self.log_interval_s = log_interval_s
        self.spool_dir = spool_dir
        self._spool: Spool
        if spool_dir is not None:
            self._spool = DiskSpool(spool_dir, int(spool_max_mb * MB), record_lines=self.record_lines,
                                    kind=self.kind, noun="flow")
        else:
            self._spool = MemorySpool(self.max_buffer_bytes)
        self.session = requests.Session()
        self.session.verify = tls_verify
        self.session.headers.update({"Content-Type": self.content_type, "User-Agent": "flowtrail"})
        if headers:
            self.session.headers.update(headers)
        self.stats["recovered"] = self.stats["pending"] = self._spool.pending
        # the disk spool's inbox: encoded rows the mover has not appended yet
        self._inbox: deque[Block] = deque()
        self._inbox_rows = 0
        self._inbox_bytes = 0
        self._inbox_in = 0  # rows ever put in the inbox / taken out by the mover (persist() waits on these)
        self._inbox_out = 0
        self._oldest_at = 0.0  # when the oldest queued row arrived (recovered rows: long ago)
        self._unresolved = 0  # rows of the batch in flight not yet counted exported or errors
        # set when a row did not fit; until delivery frees room every later row is refused too, so
        # a smaller row cannot slip in after a dropped one: the queue is an unbroken run of rows
        self._full = False
        self._flush_now = False
        self._closing = False
        self._closed = False
        self._deadline = float("inf")
        self._cond = threading.Condition()
        self._last_log: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._refresh_spool_stat()
        self._threads = [threading.Thread(target=self._run, name=f"export:{name}", daemon=True)]
        if spool_dir is not None:
            self._threads.append(threading.Thread(target=self._move, name=f"export-spool:{name}", daemon=True))
        for t in self._threads:
            t.start()

    # subclass hooks -----------------------------------------------------------------------------

    def encode(self, table: pa.Table | None, rows: Rows, idx: np.ndarray) -> list[bytes]:
        """One request-body fragment per selected row, of ``record_lines`` newline-terminated lines."""
        raise NotImplementedError

    def handle(self, resp: requests.Response, batch: Block) -> tuple[int, int, Block] | None:
        """(exported, errors, rows to send again) for a response the subclass understands, else None."""
        return None

    def post(self, body: bytes) -> requests.Response:
        return self.session.post(self.url, data=body, timeout=self.timeout_s)

    # FlowExport ---------------------------------------------------------------------------------

    @property
    def on_disk(self) -> bool:
        return self.spool_dir is not None

    def _queued(self) -> int:
        """Rows held in memory, the bound ``max_buffer`` applies to (call with ``_cond`` held)."""
        return self._inbox_rows if self.on_disk else self._spool.pending

    def _refusing(self) -> bool:
        """A row was refused for want of room and the sender has not freed any since."""
        self._full = self._full and self._spool.pending > 0  # an empty queue has room again
        return self._full

    def write(self, table: pa.Table | None, rows: Rows) -> None:
        if self._closing:
            raise ValueError(f"export {self.name!r} is closed")
        with self._cond:
            idx = self.selector.select(table, len(rows), self.stats)
            if self._refusing():
                room, reason = 0, "spool_full" if self.on_disk else "buffer_full"
            else:
                room, reason = self.max_buffer - self._queued(), "buffer_full"
        if not len(idx):
            return
        # rows that cannot be queued are shed before they are encoded: during an outage encoding
        # rows only to drop them would cost the pipeline for nothing
        keep = idx[: max(room, 0)]
        refused = len(idx) - len(keep)
        block = EMPTY_BLOCK
        if len(keep):
            try:
                block = Block.from_records(self.encode(table, rows, keep))
            except (ValueError, KeyError, pa.ArrowException) as exc:
                with self._cond:
                    self.stats["errors"] += len(keep)
                    self._warn("encode", f"could not encode rows ({exc}): {{n}} rows not exported", len(keep))
        with self._cond:
            empty = self._queued() == 0 and (not self.on_disk or self._spool.pending == 0)
            if not len(block):
                accepted = 0
            elif self.on_disk:
                accepted = block.fit(self.max_buffer - self._inbox_rows, self.max_buffer_bytes - self._inbox_bytes)
                if accepted:
                    part = block.slice(0, accepted)
                    self._inbox.append(part)
                    self._inbox_rows += accepted
                    self._inbox_bytes += part.nbytes
                    self._inbox_in += accepted
            elif self._refusing():
                accepted = 0
            else:
                accepted = self._spool.append_block(block)  # bounded by max_buffer_mb
                self._full = accepted < len(block)
            if accepted:
                if empty:
                    self._oldest_at = time.monotonic()
                self.stats["pending"] += accepted
                self._cond.notify_all()
            if refused:
                self._drop(reason, refused, False)
            if len(block) > accepted:
                self._drop("buffer_full", len(block) - accepted, False)

    def flush(self) -> None:
        """Ask the sender to post what is queued now; does not wait (see :meth:`drain`)."""
        with self._cond:
            if self._inbox_rows or self._spool.pending:
                self._flush_now = True
                self._cond.notify_all()

    def persist(self, timeout_s: float = 5.0) -> bool:
        """Wait until every row written so far is in the disk spool (fsync'd) or dropped by its
        cap: the monitor calls this before it saves the input offsets those rows came from, so a
        crash loses none. True at once without a disk spool; False on timeout (a disk error)."""
        end = time.monotonic() + timeout_s
        with self._cond:
            target = self._inbox_in
            while self._inbox_out < target and not self._closed:
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def drain(self, timeout: float | None = None) -> bool:
        """Flush and wait until nothing is queued, spooled or in flight; False on timeout."""
        end = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            self._flush_now = True
            self._cond.notify_all()
            while self._inbox_rows or self._spool.pending:
                left = None if end is None else end - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def close(self) -> None:
        with self._cond:
            if self._closing:
                return
            self._closing = True
            self._deadline = time.monotonic() + self.close_timeout_s
            self._cond.notify_all()
        for t in reversed(self._threads):  # the mover first: what it moves, the sender may still send
            t.join(self.close_timeout_s + self.timeout_s + 1)
        with self._cond:
            self._closed = True
            # without a spool: every row not exported or refused yet (part of a batch in flight
            # may be); with one: what the mover could not write (a disk error)
            lost = self._inbox_rows if self.on_disk else self.stats["pending"]
            if lost:
                self.stats["dropped"] += lost
                self.drops["closed"] += lost
                self.stats["pending"] -= lost
                log.warning("export %s: closed with %d rows undelivered (counted as dropped)", self.name, lost)
            if self.on_disk and self._spool.pending:
                log.warning("export %s: closed with %d rows (%d bytes) undelivered; they stay in %s for the "
                            "next start", self.name, self._spool.pending, self._spool.pending_bytes, self.spool_dir)
            self._inbox.clear()
            self._inbox_rows = self._inbox_bytes = 0
            self._flush_warnings()
        self._spool.close()
        self.session.close()

    # the mover: inbox -> disk spool ---------------------------------------------------------------

    def _move(self) -> None:
        failures = 0
        while True:
            with self._cond:
                while not self._inbox:
                    if self._closing:
                        return
                    self._cond.wait()
                blocks = list(self._inbox)
            block = Block.concat(blocks)
            good = self._well_formed(block)
            try:
                with self._cond:
                    refusing = self._refusing()
                accepted = 0 if refusing else self._spool.append_block(good)
            except (OSError, SpoolError) as exc:
                # keep them in the inbox (bounded: new rows are shed meanwhile) and try again
                failures += 1
                with self._cond:
                    self._warn("spool-io", f"cannot write the spool {self.spool_dir}: {exc} ({{n}} failures)", 1)
                    if self._closing:
                        return  # close() counts the inbox as dropped
                    self._cond.wait(self._backoff_delay(failures))
                continue
            failures = 0
            with self._cond:
                for _ in blocks:
                    self._inbox.popleft()
                self._inbox_rows -= len(block)
                self._inbox_bytes -= block.nbytes
                self._inbox_out += len(block)
                if len(good) < len(block):
                    bad = len(block) - len(good)
                    self.stats["errors"] += bad
                    self.stats["pending"] -= bad
                    self._warn("malformed", "the encoder made malformed rows: {n} rows not exported", bad)
                if accepted < len(good):
                    self._full = True
                    self._drop("spool_full", len(good) - accepted, True)
                self._refresh_spool_stat()
                self._cond.notify_all()

    def _well_formed(self, block: Block) -> Block:
        """The block without records that are not ``record_lines`` whole lines (an encoder bug):
        one would shift every record after it in the spool."""
        if np.array_equal(record_ends(block.data, self.record_lines), block.ends):
            return block
        records = block.records()
        return block.take([i for i, r in enumerate(records)
                           if r.count(b"\n") == self.record_lines and r.endswith(b"\n")])

    # the sender ---------------------------------------------------------------------------------

    def _due(self) -> bool:
        pending = self._spool.pending
        if not pending:
            return False
        return (self._closing or self._flush_now or pending >= self.batch_max
                or self._spool.pending_bytes >= self.batch_max_bytes
                or time.monotonic() >= self._oldest_at + self.flush_interval_s)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._due():
                    if self._closed:
                        return
                    now = time.monotonic()
                    if self._closing and (now >= self._deadline or not (self._inbox_rows or self._spool.pending)):
                        return
                    until = self._oldest_at + self.flush_interval_s if self._spool.pending else None
                    if self._closing:
                        until = self._deadline if until is None else min(until, self._deadline)
                    self._cond.wait(None if until is None else until - now)
                if self._closed or (self._closing and time.monotonic() >= self._deadline):
                    return
            batch = self._spool.peek_block(self.batch_max, self.batch_max_bytes)
            with self._cond:
                if not len(batch):
                    # rows counted but unreadable (segment files removed behind our back): do not spin
                    self._warn("spool-read", f"spool {self.spool_dir}: {{n}} reads found no rows", 1)
                    self._cond.wait(max(0.0, min(self.retry_backoff_max_s, self._deadline - time.monotonic())))
                    continue
                if self._spool.pending > len(batch):
                    self._oldest_at = time.monotonic()
                else:
                    self._flush_now = False
                self._unresolved = len(batch)
            try:
                done = self._deliver(batch)
            except Exception as exc:  # a bug must not kill the sender, nor make it resend a batch forever
                log.exception("export %s: sender failed", self.name)
                with self._cond:
                    self._account(0, self._unresolved, 0, f"sender failed: {exc}")
                done = True
            self._spool.ack(len(batch) if done else 0)
            with self._cond:
                if done:
                    self._full = False
                self._refresh_spool_stat()
                self._cond.notify_all()
            if not done:
                return  # closing and out of time: the rest stays spooled (or is counted at close)

    def _account(self, ok: int, bad: int, nbytes: int, reason: str | None = None) -> None:
        """Count rows of the batch in flight as exported / errors (call with ``_cond`` held)."""
        if self._closed:
            return  # a sender that outlived close(): close() has counted what was left
        self.stats["exported"] += ok
        self.stats["errors"] += bad
        self.stats["pending"] -= ok + bad
        self.stats["bytes"] += nbytes
        self._unresolved -= ok + bad
        if bad and reason:
            self._warn("errors", f"{reason}: {{n}} rows not exported", bad)

    def _drop(self, reason: str, n: int, was_pending: bool) -> None:
        """Count ``n`` rows dropped for ``reason`` (call with ``_cond`` held)."""
        self.stats["dropped"] += n
        self.drops[reason] += n
        if was_pending:
            self.stats["pending"] -= n
        if reason == "spool_full":
            what = f"spool full ({self._spool.pending_bytes} bytes in {self.spool_dir})"
        else:
            what = f"buffer full ({self._queued()} rows in memory)"
        self._warn(f"dropped-{reason}", f"{what}: dropped {{n}} rows", n)

    def _refresh_spool_stat(self) -> None:
        self.stats["spool_bytes"] = self._spool.pending_bytes if self.on_disk else 0

    def _deliver(self, batch: Block) -> bool:
        """Send ``batch`` until every row is exported or refused (True), or until ``close`` runs
        out of time (False: the batch stays spooled)."""
        attempt = 0
        while len(batch):
            status: int | None = None
            reason = ""
            resp: requests.Response | None = None
            try:
                resp = self.post(batch.data)
                status = resp.status_code
            except requests.RequestException as exc:
                reason = f"{type(exc).__name__}: {exc}"
            if resp is not None and status is not None:
                handled = self.handle(resp, batch)
                if handled is not None:
                    ok, bad, retry = handled
                    with self._cond:
                        self._account(ok, bad, batch.nbytes - retry.nbytes, f"{self.kind} refused rows (HTTP {status})")
                    if not len(retry):
                        return True
                    batch, reason = retry, f"HTTP {status}, {len(retry)} rows to retry"
                elif 200 <= status < 300:
                    with self._cond:
                        self._account(len(batch), 0, batch.nbytes)
                    return True
                elif status == 413 and len(batch) > 1:
                    half = len(batch) // 2
                    return self._deliver(batch.slice(0, half)) and self._deliver(batch.slice(half, len(batch)))
                elif status not in RETRY_STATUS and status < 500:
                    with self._cond:
                        self._account(0, len(batch), 0, f"HTTP {status} {_snippet(resp)}")
                    return True
                else:
                    reason = f"HTTP {status} {_snippet(resp)}"
            delay = self._backoff_delay(attempt + 1)
            if resp is not None and resp.headers.get("Retry-After", "").strip().isdigit():
                delay = max(delay, min(float(resp.headers["Retry-After"]), self.retry_backoff_max_s))
            attempt += 1
            with self._cond:
                self.stats["retries"] += 1
                self._warn("retry", f"{self.url}: {reason}; retrying ({{n}} retries)", 1)
                until = time.monotonic() + delay
                while True:
                    now = time.monotonic()
                    if self._closing and now >= self._deadline:
                        return False
                    if now >= until:
                        break
                    self._cond.wait(min(until, self._deadline) - now)
        return True

    def _backoff_delay(self, failures: int) -> float:
        # jitter: exporters that failed together do not retry together
        base = min(self.retry_backoff_max_s, self.retry_backoff_s * 2 ** min(failures - 1, 30))
        return base * random.uniform(0.5, 1.0)

    def _warn(self, key: str, template: str, n: int) -> None:
        """Log at most once per ``log_interval_s`` per key; counts in between are summed into the
        ``{n}`` of ``template`` (replaced, not formatted: server text may hold braces)."""
        now = time.monotonic()
        total = self._suppressed.get(key, 0) + n
        if now - self._last_log.get(key, -1e18) >= self.log_interval_s:
            self._last_log[key] = now
            self._suppressed[key] = 0
            log.warning("export %s: %s", self.name, template.replace("{n}", str(total)))
        else:
            self._suppressed[key] = total

    def _flush_warnings(self) -> None:
        for key, n in self._suppressed.items():
            if n:
                log.warning("export %s: %d more %s since the last report", self.name, n, key)
        self._suppressed.clear()


def _snippet(resp: requests.Response, limit: int = 200) -> str:
    try:
        text = resp.text
    except Exception:  # a body that will not decode is not worth failing for
        return ""
    return text[:limit].replace("\n", " ")


# -- time helpers for HTTP encoders ----------------------------------------------------------------


def envelope_times_ns(table: pa.Table, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, pa.Array]:
    """(epoch ns, valid mask, the time strings) of rows ``idx`` from the envelope ``time``."""
    col = table.column("time").take(pa.array(idx, pa.int64()))
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    try:
        ts = pc.cast(col, pa.timestamp("ns", "UTC"))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        # not every value is ISO 8601 to Arrow: parse each distinct value ourselves
        enc = col.dictionary_encode()
        parsed = [parse_rfc3339_ns(v) for v in enc.dictionary.to_pylist()]
        ts = pa.array([parsed[i] if i is not None else None for i in enc.indices.to_pylist()],
                      pa.int64()).cast(pa.timestamp("ns", "UTC"))
    valid = np.asarray(ts.is_valid().to_numpy(zero_copy_only=False), bool)
    ns = np.asarray(pc.fill_null(ts.cast(pa.int64()), 0).to_numpy(zero_copy_only=False), np.int64)
    return ns, valid, col


# -- factory ---------------------------------------------------------------------------------------


def validate_entry(entry: Mapping[str, Any], where: str = "export") -> None:
    data = dict(entry)
    kinds = _COMMON_PROPS["type"]["enum"]
    if data.get("type", "file") not in kinds:
        raise ExportConfigError(f"{where}: unknown export type {data['type']!r} (one of {', '.join(kinds)})")
    if isinstance(data.get("end"), date):  # YAML's reading of an unquoted timestamp; checked by _end_ns
        data["end"] = data["end"].isoformat()
    errors = sorted(_VALIDATOR.iter_errors(data), key=lambda e: list(e.absolute_path))
    if errors:
        best = jsonschema.exceptions.best_match(errors)
        path = ".".join(str(p) for p in best.absolute_path)
        raise ExportConfigError(f"{where}: {path + ': ' if path else ''}{best.message}")


def common_options(entry: Mapping[str, Any], clock: Callable[[], float] = time.monotonic) -> tuple[Selector, FieldMask]:
    """The selector and field mask an entry asks for (shared by every exporter type)."""
    for a, b in (("includeFilters", "allowList"), ("excludeFilters", "denyList")):
        if entry.get(a) and entry.get(b):
            raise ExportConfigError(f"give {a} or its alias {b}, not both")
    include = _filter_list(entry.get("includeFilters") or entry.get("allowList"), "includeFilters")
    exclude = _filter_list(entry.get("excludeFilters") or entry.get("denyList"), "excludeFilters")
    try:
        selector = Selector(include, exclude, _end_ns(entry.get("end")), float(entry.get("rateLimit") or 0),
                            entry.get("rateBurst"), float(entry.get("dnsSampling", 1.0)), clock=clock)
        mask = FieldMask(entry.get("fieldMask"))
    except (FilterError, FieldMaskError) as exc:
        raise ExportConfigError(str(exc)) from exc
    return selector, mask


def http_options(entry: Mapping[str, Any]) -> dict[str, Any]:
    keys = ("batch_max", "batch_max_mb", "flush_interval_s", "max_buffer", "max_buffer_mb", "timeout_s",
            "retry_backoff_s", "retry_backoff_max_s", "close_timeout_s", "tls_verify", "headers", "spool_max_mb")
    return {k: entry[k] for k in keys if k in entry}


def build_flow_export(entry: Mapping[str, Any], clock: Callable[[], float] = time.monotonic,
                      spool_root: Path | None = None) -> FlowExport:
    """One exporter from one validated config entry; HTTP exporters spool under
    ``spool_root/<name>`` unless the entry says ``spool: false``."""
    kind = entry.get("type", "file")
    name = entry["name"]
    selector, mask = common_options(entry, clock)
    spool_dir = spool_root / spool_dir_name(name) if spool_root is not None and entry.get("spool", True) else None
    if kind == "file":
        return FileFlowExport(
            name, entry["filePath"], selector, mask,
            max_size_mb=entry.get("fileMaxSizeMb") or DEFAULT_FILE_MAX_SIZE_MB,
            max_backups=entry.get("fileMaxBackups") or DEFAULT_FILE_MAX_BACKUPS,
            compress=bool(entry.get("fileCompress", False)),
        )
    if kind in ("elasticsearch", "opensearch"):
        from flowtrail.sinks.elastic import ElasticFlowExport

        return ElasticFlowExport.from_entry(entry, selector, mask, spool_dir)
    if kind == "splunk-hec":
        from flowtrail.sinks.splunk import SplunkHecFlowExport

        return SplunkHecFlowExport.from_entry(entry, selector, mask, spool_dir)
    raise ExportConfigError(f"unknown export type {kind!r}")


def build_flow_exports(config: Sequence[Mapping[str, Any]] | Mapping[str, Any] | None,
                       spool_root: Path | None = None) -> list[FlowExport]:
    """Exporters for a list of entries (or a Cilium ``flowlogs.yaml`` dict with ``flowLogs``).

    Every entry is validated first (names and file paths unique, as Hubble requires), so a bad
    config builds nothing; errors name the entry. ``spool_root`` (the monitor passes
    ``state_dir/export-spool``) holds one disk spool per HTTP exporter; None: memory buffers."""
    if config is None:
        return []
    if isinstance(config, Mapping):
        if set(config) - {"flowLogs"}:
            raise ExportConfigError("expected a list of export entries or {flowLogs: [...]}")
        config = config.get("flowLogs") or []
    if not isinstance(config, Sequence) or isinstance(config, str | bytes):
        raise ExportConfigError("expected a list of export entries")
    names: set[str] = set()
    paths: set[str] = set()
    for i, entry in enumerate(config):
        where = f"export[{i}]" + (f" ({entry.get('name')})" if isinstance(entry, Mapping) and entry.get("name") else "")
        if not isinstance(entry, Mapping):
            raise ExportConfigError(f"{where}: expected a mapping")
        validate_entry(entry, where)
        if entry["name"] in names:
            raise ExportConfigError(f"{where}: duplicated export name {entry['name']}")
        names.add(entry["name"])
        fp = entry.get("filePath")
        if fp and fp != "stdout":
            if fp in paths:
                raise ExportConfigError(f"{where}: duplicated export path {fp}")
            paths.add(fp)
        try:
            common_options(entry)
        except ExportConfigError as exc:
            raise ExportConfigError(f"{where}: {exc}") from exc
    built: list[FlowExport] = []
    try:
        for i, entry in enumerate(config):
            try:
                built.append(build_flow_export(entry, spool_root=spool_root))
            except (ExportConfigError, OSError, ValueError, SpoolError) as exc:
                raise ExportConfigError(f"export[{i}] ({entry['name']}): {exc}") from exc
    except ExportConfigError:
        for b in built:
            b.close()
        raise
    return built


__all__ = [
    "DROP_REASONS",
    "EXPORT_SCHEMA",
    "STAT_KEYS",
    "ExportConfigError",
    "FileFlowExport",
    "FlowExport",
    "HttpFlowExport",
    "Selector",
    "build_flow_exports",
]
