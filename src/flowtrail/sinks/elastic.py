"""Flow export to Elasticsearch or OpenSearch through the ``_bulk`` API.

Config entry (``type: elasticsearch``, alias ``opensearch``), besides the common keys of
:mod:`flowtrail.sinks.export` (filters, ``fieldMask``, ``end``, ``rateLimit``, ``dnsSampling``)::

    - type: elasticsearch
      name: siem
      url: https://es.example:9200      # the cluster; "/_bulk" is appended unless the URL ends in it
      index: hubble-flows-%Y.%m.%d      # strftime on the flow time (UTC), lower-cased
      username: flowtrail               # basic auth, or:
      password: secret
      api_key: <base64 id:key>          # "Authorization: ApiKey ..."
      op_type: index                    # "create" for data streams (a 409 on retry counts as exported)
      timestamp_field: "@timestamp"     # added to each document from the flow time; null: not added
      batch_max: 5000                   # rows per bulk request (also batch_max_mb, default 8)
      flush_interval_s: 1               # longest a row waits in the buffer
      max_buffer: 100000                # rows held in memory at most (also max_buffer_mb); more are dropped
      spool_max_mb: 1024                # with state_dir: the disk spool's cap (spool: false: no spool)
      tls_verify: true                  # or a CA bundle path, or false

Wire format: ``POST <url>/_bulk`` with ``Content-Type: application/x-ndjson``; per row an action
line ``{"index":{"_index":"hubble-flows-2026.11.26","_id":"<flow uuid>"}}`` and a source line,
the flow's Hubble JSON (field-masked when configured) with ``"@timestamp"`` first. The uuid as
``_id`` makes a retried request idempotent: a document is never indexed twice. Lost events
have no uuid and get an id from Elasticsearch.

The response's ``items`` are read one by one: 2xx is exported; 429 (a full write queue) and
5xx (a shard unavailable) are sent again with backoff, only those rows; any other item error
(a mapping conflict: ``mapper_parsing_exception``, 400) would fail again, so it is not retried:
it counts in ``errors`` and its reason is logged (at most once per interval). HTTP-level
retries, buffering, the disk spool and load shedding are those of
:class:`~flowtrail.sinks.export.HttpFlowExport`; a spooled row is its two lines (a record of
``record_lines = 2``), so a retried row is sent with the ``_id`` and index it had.

Per-row Python is confined to building each row's two lines (bytes that must be produced per
row anyway); index names and timestamps are computed for the whole batch with Arrow.
"""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import requests

from flowtrail.filters.base import Columns
from flowtrail.sinks.export import (
    ExportConfigError,
    HttpFlowExport,
    Selector,
    envelope_times_ns,
    http_options,
)
from flowtrail.sinks.fieldmask import FieldMask
from flowtrail.sinks.spool import EMPTY_BLOCK, Block
from flowtrail.sources.decode import Rows
from flowtrail.util import compute as pc

DEFAULT_INDEX = "hubble-flows-%Y.%m.%d"
# characters Elasticsearch refuses in index names (besides upper case and a leading -, _ or +)
_BAD_INDEX_CHARS = re.compile(r'[\\/*?"<>| ,#:]')


def index_pattern_check(pattern: str) -> None:
    sample = time.strftime(pattern, time.gmtime(0)).lower()
    if not sample or sample[0] in "-_+" or _BAD_INDEX_CHARS.search(sample) or sample in (".", ".."):
        raise ExportConfigError(f"index {pattern!r} gives {sample!r}, not a valid index name")


class ElasticFlowExport(HttpFlowExport):
    """Bulk-indexes flows into Elasticsearch/OpenSearch."""

    kind = "elasticsearch"
    content_type = "application/x-ndjson"
    record_lines = 2  # the action line and the document

    def __init__(
        self,
        name: str,
        url: str,
        selector: Selector,
        field_mask: FieldMask | None = None,
        *,
        index: str = DEFAULT_INDEX,
        username: str | None = None,
        password: str | None = None,
        api_key: str | None = None,
        op_type: str = "index",
        timestamp_field: str | None = "@timestamp",
        **http: Any,
    ) -> None:
        index_pattern_check(index)
        if op_type not in ("index", "create"):
            raise ExportConfigError(f"op_type must be index or create, not {op_type!r}")
        bulk_url = url if url.rstrip("/").endswith("/_bulk") else url.rstrip("/") + "/_bulk"
        headers = dict(http.pop("headers", None) or {})
        if api_key:
            headers["Authorization"] = f"ApiKey {api_key}"
        elif username is not None:
            token = base64.b64encode(f"{username}:{password or ''}".encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        super().__init__(name, bulk_url, selector, field_mask, headers=headers, **http)
        self.index = index
        self.op_type = op_type
        self.timestamp_prefix = (b'{' + orjson.dumps(timestamp_field) + b':') if timestamp_field else None
        self.paths.add("uuid")

    @classmethod
    def from_entry(cls, entry: Mapping[str, Any], selector: Selector, mask: FieldMask,
                   spool_dir: Path | None = None) -> ElasticFlowExport:
        return cls(
            entry["name"], entry["url"], selector, mask,
            index=entry.get("index", DEFAULT_INDEX), username=entry.get("username"),
            password=entry.get("password"), api_key=entry.get("api_key"),
            op_type=entry.get("op_type", "index"), timestamp_field=entry.get("timestamp_field", "@timestamp"),
            spool_dir=spool_dir, **http_options(entry),
        )

    def index_names(self, ns: np.ndarray, valid: np.ndarray) -> pa.Array:
        """Index name per row from its flow time (the current time where it has none)."""
        ns = np.where(valid, ns, time.time_ns())
        ts = pa.array(ns, pa.int64()).cast(pa.timestamp("ns", "UTC"))
        return pc.utf8_lower(pc.strftime(ts, format=self.index))

    def encode(self, table: pa.Table | None, rows: Rows, idx: np.ndarray) -> list[bytes]:
        if table is None:
            raise ValueError("the Elasticsearch exporter needs decoded columns (time, uuid)")
        ns, valid, times = envelope_times_ns(table, idx)
        names = self.index_names(ns, valid).dictionary_encode()
        action_heads = [b'{"' + self.op_type.encode() + b'":{"_index":' + orjson.dumps(n) for n in
                        names.dictionary.to_pylist()]
        which = names.indices.to_numpy(zero_copy_only=False)
        uuids = Columns(table).get("uuid").take(pa.array(idx, pa.int64())).to_pylist()
        time_list = times.to_pylist()
        sel = rows.take(idx)
        sources = self.mask.lines(sel.to_list()) if self.mask is not None else [r + b"\n" for r in sel.to_list()]
        ts_prefix = self.timestamp_prefix
        dumps = orjson.dumps
        out = []
        # per row: the action line and the source line are bytes that exist only per row
        for i, src in enumerate(sources):
            uid = uuids[i]
            action = action_heads[which[i]] + (b',"_id":' + dumps(uid) + b"}}\n" if uid else b"}}\n")
            t = time_list[i]
            if ts_prefix is not None and t and len(src) > 2:
                src = ts_prefix + dumps(t) + b"," + src[1:]
            out.append(action + src)
        return out

    def handle(self, resp: requests.Response, batch: Block) -> tuple[int, int, Block] | None:
        if not 200 <= resp.status_code < 300:
            return None
        try:
            body = orjson.loads(resp.content)
        except orjson.JSONDecodeError:
            return 0, len(batch), EMPTY_BLOCK  # not Elasticsearch: nothing is known to be indexed
        if not isinstance(body, dict):
            return 0, len(batch), EMPTY_BLOCK
        if not body.get("errors"):
            items = body.get("items")
            if isinstance(items, list) and len(items) != len(batch):
                with self._cond:
                    self._warn("items", f"bulk response has {len(items)} items for {len(batch)} rows ({{n}})", 1)
            return len(batch), 0, EMPTY_BLOCK
        items = body.get("items")
        if not isinstance(items, list) or len(items) != len(batch):
            return 0, len(batch), EMPTY_BLOCK
        ok = bad = 0
        retry: list[int] = []
        reasons: dict[str, int] = {}
        # per item: the response has one result per row, read only when some failed
        for i, item in enumerate(items):
            result: Any = next(iter(item.values()), {}) if isinstance(item, dict) and item else {}
            status = int(result.get("status", 0)) if isinstance(result, dict) else 0
            if 200 <= status < 300 or (status == 409 and self.op_type == "create"):
                ok += 1
            elif status == 429 or status >= 500:
                retry.append(i)
            else:
                bad += 1
                err = result.get("error") if isinstance(result, dict) else None
                kind = err.get("type", "?") if isinstance(err, dict) else str(err)
                key = f"{status} {kind}"
                reasons[key] = reasons.get(key, 0) + 1
        if reasons:
            detail = ", ".join(f"{k} x{v}" for k, v in sorted(reasons.items()))
            with self._cond:
                self._warn("item-errors", f"bulk items refused, not retried: {detail} ({{n}} in all)", bad)
        return ok, bad, batch.take(retry) if retry else EMPTY_BLOCK
