"""Flow export to Splunk through the HTTP Event Collector (HEC).

Config entry (``type: splunk-hec``), besides the common keys of :mod:`flowtrail.sinks.export`
(filters, ``fieldMask``, ``end``, ``rateLimit``, ``dnsSampling``) and the HTTP keys of
:class:`~flowtrail.sinks.export.HttpFlowExport` (``batch_max``, ``flush_interval_s``,
``max_buffer``, ``tls_verify`` …)::

    - type: splunk-hec
      name: splunk
      url: https://splunk.example:8088   # "/services/collector/event" is appended unless present
      token: 6f5c…                       # sent as "Authorization: Splunk <token>"
      index: network                     # optional: the token's default index otherwise
      sourcetype: cilium:hubble:flow     # default
      source: flowtrail                  # default: "flowtrail:<name>"

Wire format: ``POST /services/collector/event``, ``Content-Type: application/json``, a body of
concatenated JSON event objects (one per line), each::

    {"time":1795680000.017436,"host":"<node_name>","source":"…","sourcetype":"cilium:hubble:flow",
     "index":"network","event":{"flow":{…},"node_name":…,"time":…}}

``time`` is the flow time in epoch seconds with microseconds, ``host`` the flow's node (left out
when it has none), ``event`` the flow's Hubble JSON (field-masked when configured).

Responses: 2xx means every event of the request was accepted. A 400 naming an
``invalid-event-number`` N: HEC indexes the events before the bad one and stops there, so events
before N count as exported, event N as an error and the rest are sent again. 429, 5xx (503 is
"server busy": HEC's queue is full or an indexer is down) and connection errors are retried
with backoff, honouring ``Retry-After``; meanwhile rows wait in the memory buffer or the disk
spool of :class:`~flowtrail.sinks.export.HttpFlowExport`. 413 splits the batch; other 4xx (401
no token, 403 bad token, 400 other) count every row of the request as ``errors``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import requests

from flowtrail.sinks.export import HttpFlowExport, Selector, envelope_times_ns, http_options
from flowtrail.sinks.fieldmask import FieldMask
from flowtrail.sinks.spool import Block
from flowtrail.sources.decode import Rows

EVENT_PATH = "/services/collector/event"
DEFAULT_SOURCETYPE = "cilium:hubble:flow"


class SplunkHecFlowExport(HttpFlowExport):
    """Sends flows to a Splunk HEC endpoint as JSON events."""

    kind = "splunk-hec"
    content_type = "application/json"

    def __init__(
        self,
        name: str,
        url: str,
        token: str,
        selector: Selector,
        field_mask: FieldMask | None = None,
        *,
        index: str | None = None,
        sourcetype: str = DEFAULT_SOURCETYPE,
        source: str | None = None,
        **http: Any,
    ) -> None:
        base = url.rstrip("/")
        event_url = base if base.endswith(EVENT_PATH) else base + EVENT_PATH
        headers = dict(http.pop("headers", None) or {})
        headers["Authorization"] = f"Splunk {token}"
        super().__init__(name, event_url, selector, field_mask, headers=headers, **http)
        # the metadata every event shares, encoded once
        meta: dict[str, str] = {"source": source or f"flowtrail:{name}", "sourcetype": sourcetype}
        if index:
            meta["index"] = index
        self._meta = orjson.dumps(meta)[1:-1]

    @classmethod
    def from_entry(cls, entry: Mapping[str, Any], selector: Selector, mask: FieldMask,
                   spool_dir: Path | None = None) -> SplunkHecFlowExport:
        return cls(
            entry["name"], entry["url"], entry["token"], selector, mask,
            index=entry.get("index"), sourcetype=entry.get("sourcetype", DEFAULT_SOURCETYPE),
            source=entry.get("source"), spool_dir=spool_dir, **http_options(entry),
        )

    def encode(self, table: pa.Table | None, rows: Rows, idx: np.ndarray) -> list[bytes]:
        if table is None:
            raise ValueError("the Splunk HEC exporter needs decoded columns (time, node_name)")
        ns, valid, _ = envelope_times_ns(table, idx)
        secs, micros = np.divmod(ns // 1000, 1_000_000)
        # "time" for each row, formatted for the whole batch at once
        stamps = np.char.add(np.char.add(secs.astype(str), "."), np.char.zfill(micros.astype(str), 6))
        node = table.column("node_name").take(pa.array(idx, pa.int64())).to_pylist()
        sel = rows.take(idx).to_list()
        events = self.mask.lines(sel) if self.mask is not None else sel
        strip = self.mask is not None
        meta = self._meta
        dumps = orjson.dumps
        out = []
        # per row: each event object is bytes that exist only per row
        for i, ev in enumerate(events):
            head = b'{"time":' + stamps[i].encode() + b"," if valid[i] else b"{"
            host = b'"host":' + dumps(node[i]) + b"," if node[i] else b""
            out.append(head + host + meta + b',"event":' + (ev[:-1] if strip else ev) + b"}\n")
        return out

    def handle(self, resp: requests.Response, batch: Block) -> tuple[int, int, Block] | None:
        if resp.status_code != 400:
            return None
        try:
            body = orjson.loads(resp.content)
            bad_at = int(body["invalid-event-number"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return None
        if not 0 <= bad_at < len(batch):
            return None
        with self._cond:
            self._warn("invalid-event", f"HEC refused an event: {body.get('text', '?')} ({{n}} in all)", 1)
        return bad_at, 1, batch.slice(bad_at + 1, len(batch))
