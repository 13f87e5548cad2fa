"""Flow export over HTTP to servers speaking Elasticsearch's _bulk API and Splunk HEC.

The servers are real HTTP servers (http.server threads on 127.0.0.1) that check the wire format
strictly (paths, headers, NDJSON action/source pairs, HEC event objects) and answer as the real
products do: per-item bulk results with errors for some items, 429 items, 503 while "busy",
HEC's invalid-event-number. Flows are real samples and lab flows.
"""

from __future__ import annotations

import base64
import gzip
import json
import logging
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
import pytest

from flowtrail.sinks.elastic import ElasticFlowExport
from flowtrail.sinks.export import FlowExport, HttpFlowExport, build_flow_exports
from flowtrail.sinks.fieldmask import FieldMask
from flowtrail.sinks.splunk import SplunkHecFlowExport
from flowtrail.sources.decode import Decoder
from tests.conftest import BUNDLED, REPO, SAMPLES_DIR
from tests.helpers import free_port

FIXTURES = REPO / "src" / "flowtrail" / "detect" / "rules" / "fixtures"
FAST = {"flush_interval_s": 0.05, "retry_backoff_s": 0.02, "retry_backoff_max_s": 0.1, "close_timeout_s": 5}
SUMMED = ("filtered", "expired", "sampled", "rate_limited", "dropped", "errors", "exported", "pending")


def load_lines() -> list[bytes]:
    """Real sample flows and lab flows (DNS C2 and a drop spike), as canonical lines."""
    out: list[bytes] = []
    for p in sorted(SAMPLES_DIR.glob("*.jsonl")) if SAMPLES_DIR.is_dir() else [BUNDLED / "hubble-samples.jsonl"]:
        out += p.read_bytes().splitlines()
    seen: set[str] = set()
    for name in ("dns-c2.jsonl.gz", "drop-spike.jsonl.gz"):  # the two share their benign traffic
        for line in gzip.decompress((FIXTURES / name).read_bytes()).splitlines():
            uuid = orjson.loads(line)["flow"]["uuid"]
            if uuid not in seen:
                seen.add(uuid)
                out.append(line)
    dec = Decoder(None)
    d = dec.decode_lines(out)
    return d.rows.to_list()  # what the decoder keeps (agent/debug events are not flows)


@pytest.fixture(scope="module")
def lines() -> list[bytes]:
    return load_lines()


def feed(ex: FlowExport, rows: list[bytes], batch: int = 700) -> None:
    dec = Decoder(ex.paths)
    for i in range(0, len(rows), batch):
        d = dec.decode_lines(rows[i : i + batch])
        ex.write(d.table, d.rows)


def check_sum(stats: dict[str, int]) -> None:
    assert stats["input"] + stats["recovered"] == sum(stats[k] for k in SUMMED), stats


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, handler: type[BaseHTTPRequestHandler], port: int = 0) -> None:
        super().__init__(("127.0.0.1", port), handler)
        self.lock = threading.Lock()
        self.wire_errors: list[str] = []
        self.requests = 0
        self.busy = 0  # answer this many requests with 503 first
        self.retry_after: str | None = None  # sent with those 503s
        self.times: list[float] = []  # when each request came (monotonic)
        self.docs: dict[str, list[bytes]] = {}  # id -> source lines indexed
        self.no_id: list[bytes] = []
        self.item_status: Callable[[dict[str, Any], int], int] = lambda src, seen: 201
        self.seen: dict[str, int] = {}
        self.events: list[dict[str, Any]] = []
        self.order: list[bytes] = []  # documents indexed, in arrival order
        self.items: list[tuple[int, str, int]] = []  # (request number, row key, item status) per bulk item
        self.token = "tok-123"
        self.bad_uuids: set[str] = set()
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Server

    def log_message(self, *args: Any) -> None:
        pass

    def reply(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def wrong(self, msg: str) -> None:
        with self.server.lock:
            self.server.wire_errors.append(msg)
        self.reply(400, {"error": {"type": "parse_exception", "reason": msg}, "status": 400})

    def body(self) -> bytes:
        return self.rfile.read(int(self.headers["Content-Length"]))

    def busy(self) -> bool:
        with self.server.lock:
            self.server.requests += 1
            self.server.times.append(time.monotonic())
            if self.server.busy > 0:
                self.server.busy -= 1
                return True
        return False


class BulkHandler(_Handler):
    """Elasticsearch `POST /_bulk`: NDJSON action/source pairs, per-item results."""

    auth = "Basic " + base64.b64encode(b"elastic:changeme").decode()

    def do_POST(self) -> None:
        body = self.body()
        if self.busy():
            self.reply(503, {"error": {"type": "unavailable_shards_exception"}, "status": 503})
            return
        if self.path != "/_bulk":
            return self.wrong(f"path {self.path}")
        if self.headers.get("Content-Type") != "application/x-ndjson":
            return self.wrong(f"content type {self.headers.get('Content-Type')}")
        if self.headers.get("Authorization") != self.auth:
            return self.reply(401, {"error": {"type": "security_exception"}, "status": 401})
        if not body.endswith(b"\n"):
            return self.wrong("bulk body must end with a newline")
        raw = body[:-1].split(b"\n")
        if len(raw) % 2:
            return self.wrong("odd number of NDJSON lines")
        items = []
        for action_line, source_line in zip(raw[::2], raw[1::2], strict=True):
            action, src = json.loads(action_line), json.loads(source_line)
            if list(action) != ["index"] or not set(action["index"]) <= {"_index", "_id"}:
                return self.wrong(f"action {action_line!r}")
            meta = action["index"]
            t = src.get("time")
            if src.get("@timestamp") != t or not source_line.startswith(b'{"@timestamp":'):
                return self.wrong(f"@timestamp of {source_line[:80]!r}")
            if meta.get("_index") != "hubble-flows-" + t[:10].replace("-", "."):
                return self.wrong(f"index {meta.get('_index')} for time {t}")
            uuid = (src.get("flow") or {}).get("uuid")
            if meta.get("_id") != uuid:
                return self.wrong(f"_id {meta.get('_id')} for uuid {uuid}")
            original = b"{" + source_line[len(b'{"@timestamp":') + len(json.dumps(t)) + 1 :]
            with self.server.lock:
                key = uuid or f"no-id-{len(self.server.no_id)}"
                seen = self.server.seen.get(key, 0)
                self.server.seen[key] = seen + 1
                status = self.server.item_status(src, seen)
                self.server.items.append((self.server.requests, key, status))
                if status < 300:
                    self.server.order.append(original)
                    if uuid:
                        self.server.docs.setdefault(uuid, []).append(original)
                    else:
                        self.server.no_id.append(original)
            item: dict[str, Any] = {"_index": meta["_index"], "status": status}
            if uuid:
                item["_id"] = uuid
            if status == 400:
                item["error"] = {"type": "mapper_parsing_exception", "reason": "failed to parse field [flow.l4]"}
            elif status == 429:
                item["error"] = {"type": "es_rejected_execution_exception", "reason": "queue full"}
            else:
                item["result"] = "created"
            items.append({"index": item})
        self.reply(200, {"took": 3, "errors": any(i["index"]["status"] >= 300 for i in items), "items": items})


class HecHandler(_Handler):
    """Splunk `POST /services/collector/event`: concatenated JSON event objects."""

    def do_POST(self) -> None:
        body = self.body()
        if self.busy():
            retry_after = self.server.retry_after
            self.reply(503, {"text": "Server is busy", "code": 9}, {"Retry-After": retry_after} if retry_after else None)
            return
        if self.path != "/services/collector/event":
            return self.wrong(f"path {self.path}")
        auth = self.headers.get("Authorization", "")
        if not auth.startswith("Splunk "):
            return self.reply(401, {"text": "Token is required", "code": 2})
        if auth != f"Splunk {self.server.token}":
            return self.reply(403, {"text": "Invalid token", "code": 4})
        dec = json.JSONDecoder()
        text = body.decode()
        pos = 0
        events = []
        while pos < len(text):
            while pos < len(text) and text[pos] in " \r\n\t":
                pos += 1
            if pos == len(text):
                break
            obj, pos = dec.raw_decode(text, pos)
            events.append(obj)
        for n, ev in enumerate(events):
            if not isinstance(ev, dict) or not set(ev) <= {"time", "host", "source", "sourcetype", "index", "event"}:
                return self.wrong(f"event keys {sorted(ev)}")
            if not isinstance(ev.get("event"), dict) or ev.get("sourcetype") != "cilium:hubble:flow":
                return self.wrong("event/sourcetype")
            if not isinstance(ev.get("time"), (int, float)):
                return self.wrong(f"time {ev.get('time')!r}")
            uuid = (ev["event"].get("flow") or {}).get("uuid")
            if uuid in self.server.bad_uuids:
                with self.server.lock:
                    self.server.events += events[:n]
                return self.reply(400, {"text": "Invalid data format", "code": 6, "invalid-event-number": n})
        with self.server.lock:
            self.server.events += events
        self.reply(200, {"text": "Success", "code": 0})


def es_entry(url: str, **kw: Any) -> dict[str, Any]:
    return {"type": "elasticsearch", "name": "es", "url": url, "username": "elastic", "password": "changeme",
            **FAST, **kw}


def test_elasticsearch_bulk_with_item_errors_and_429(lines: list[bytes], servers: list[Server]) -> None:
    srv = Server(BulkHandler)
    servers.append(srv)
    bad = {u for u in ((orjson.loads(x).get("flow") or {}).get("uuid") for x in lines) if u and u.endswith("7")}

    def status(src: dict[str, Any], seen: int) -> int:
        uuid = (src.get("flow") or {}).get("uuid") or ""
        if uuid in bad:
            return 400
        if uuid.endswith("3") and seen == 0:
            return 429  # the write queue is full the first time
        return 201

    srv.item_status = status
    (ex,) = build_flow_exports([es_entry(srv.url, batch_max=300, excludeFilters=[{"verdict": ["DROPPED"]}])])
    assert isinstance(ex, ElasticFlowExport)
    feed(ex, lines)
    assert ex.drain(20)
    ex.close()
    assert srv.wire_errors == []
    selected = [x for x in lines if b'"verdict":"DROPPED"' not in x]
    sel_uuids = [(orjson.loads(x).get("flow") or {}).get("uuid") for x in selected]
    assert ex.stats["filtered"] == len(lines) - len(selected) > 0
    n_bad = sum(u in bad for u in sel_uuids)
    assert n_bad > 0 and ex.stats["errors"] == n_bad
    assert ex.stats["exported"] == len(selected) - n_bad
    assert ex.stats["retries"] >= 1 and ex.stats["pending"] == 0
    check_sum(ex.stats)
    # every selected row indexed exactly once, byte for byte, and nothing else
    assert all(len(v) == 1 for v in srv.docs.values())
    indexed = sorted([v[0] for v in srv.docs.values()] + srv.no_id)
    assert indexed == sorted(x for x, u in zip(selected, sel_uuids, strict=True) if u not in bad)
    assert srv.no_id  # lost events have no uuid: no _id


def test_elasticsearch_retries_503_and_masks(lines: list[bytes], servers: list[Server]) -> None:
    srv = Server(BulkHandler)
    srv.busy = 3
    servers.append(srv)
    mask = ["time", "uuid", "verdict", "source.namespace", "destination.namespace", "l4"]
    (ex,) = build_flow_exports([es_entry(srv.url + "/_bulk", type="opensearch", batch_max=5000, fieldMask=mask,
                                         includeFilters=[{"protocol": ["UDP"]}])])
    feed(ex, lines)
    assert isinstance(ex, HttpFlowExport)
    assert ex.drain(20)
    ex.close()
    assert srv.wire_errors == [] and srv.requests >= 4
    assert ex.stats["retries"] >= 3 and ex.stats["errors"] == 0
    fm = FieldMask(mask)
    udp = [fm.line(x) for x in lines if b'"UDP":' in x]
    assert sorted([v[0] for v in srv.docs.values()] + srv.no_id) == sorted(udp)
    assert ex.stats["exported"] == len(udp) > 0
    check_sum(ex.stats)


def test_outage_buffers_then_sheds_newest(lines: list[bytes], servers: list[Server],
                                          caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()  # nothing listens there yet: connection refused
    (ex,) = build_flow_exports([es_entry(f"http://127.0.0.1:{port}", batch_max=200, max_buffer=1000)])
    assert isinstance(ex, HttpFlowExport)
    rows = lines[:2000]
    assert len(rows) == 2000
    with caplog.at_level(logging.WARNING, logger="flowtrail.sinks.export"):
        feed(ex, rows, batch=500)
    assert ex.stats["dropped"] == 1000 and ex.stats["pending"] == 1000 and ex.stats["exported"] == 0
    assert ex.drops == {"buffer_full": 1000, "spool_full": 0, "closed": 0}
    shed_logs = [r for r in caplog.records if "buffer full" in r.getMessage()]
    assert len(shed_logs) == 1 and "dropped 500 rows" in shed_logs[0].getMessage()  # once per interval
    assert ex.stats["retries"] >= 1
    srv = Server(BulkHandler, port)
    servers.append(srv)
    assert ex.drain(20)
    ex.close()
    assert srv.wire_errors == []
    assert ex.stats["exported"] == 1000 and ex.stats["pending"] == 0
    check_sum(ex.stats)
    # drop-newest: what arrived first was kept
    got = sorted([v[0] for v in srv.docs.values()] + srv.no_id)
    assert got == sorted(rows[:1000])


def test_close_during_outage_counts_undelivered_as_dropped(lines: list[bytes]) -> None:
    (ex,) = build_flow_exports([es_entry(f"http://127.0.0.1:{free_port()}", close_timeout_s=0.3)])
    feed(ex, lines[:800])
    ex.close()
    assert ex.stats["dropped"] == 800 and ex.stats["pending"] == 0 and ex.stats["exported"] == 0
    assert ex.drops["closed"] == 800  # no state_dir: an outage that outlasts the process loses them
    check_sum(ex.stats)
    with pytest.raises(ValueError, match="closed"):
        feed(ex, lines[:10])


def test_splunk_hec_events_and_invalid_event(lines: list[bytes], servers: list[Server]) -> None:
    srv = Server(HecHandler)
    servers.append(srv)
    flows = [orjson.loads(x) for x in lines]
    uuids = [(f.get("flow") or {}).get("uuid") for f in flows]
    srv.bad_uuids = {next(u for u in uuids[500:] if u)}
    srv.busy = 1
    (ex,) = build_flow_exports([{"type": "splunk-hec", "name": "hec", "url": srv.url, "token": "tok-123",
                                 "index": "network", "batch_max": 400, **FAST}])
    assert isinstance(ex, SplunkHecFlowExport)
    feed(ex, lines)
    assert ex.drain(20)
    ex.close()
    assert srv.wire_errors == []
    assert ex.stats["errors"] == 1 and ex.stats["exported"] == len(lines) - 1 and ex.stats["retries"] >= 1
    check_sum(ex.stats)
    got = srv.events
    assert len(got) == len(lines) - 1
    expected = [f for f, u in zip(flows, uuids, strict=True) if u not in srv.bad_uuids]
    assert [e["event"] for e in got] == expected  # in order, each once
    for e, f in zip(got, expected, strict=True):
        assert e["index"] == "network" and e["source"] == "flowtrail:hec"
        assert e.get("host") == f.get("node_name")
        t = f.get("time")
        assert f"{e['time']:.6f}"[:-3] == f"{_epoch(t):.6f}"[:-3]


def _epoch(t: str) -> float:
    from flowtrail.model.timeutil import parse_rfc3339_ns

    ns = parse_rfc3339_ns(t)
    assert ns is not None
    return ns / 1e9


def test_splunk_bad_token_is_an_error_not_a_retry(lines: list[bytes], servers: list[Server]) -> None:
    srv = Server(HecHandler)
    servers.append(srv)
    (ex,) = build_flow_exports([{"type": "splunk-hec", "name": "hec", "url": srv.url + "/services/collector/event",
                                 "token": "wrong", "fieldMask": ["verdict"], **FAST}])
    feed(ex, lines[:300])
    assert isinstance(ex, HttpFlowExport)
    assert ex.drain(10)
    ex.close()
    assert ex.stats["errors"] == 300 and ex.stats["exported"] == 0 and ex.stats["retries"] == 0
    assert srv.events == [] and srv.wire_errors == []
    check_sum(ex.stats)


def test_http_entries_validate() -> None:
    from flowtrail.sinks.export import ExportConfigError

    with pytest.raises(ExportConfigError, match="password"):
        build_flow_exports([{"type": "elasticsearch", "name": "e", "url": "http://x:9200", "username": "u"}])
    with pytest.raises(ExportConfigError, match="not a valid index name"):
        build_flow_exports([{"type": "elasticsearch", "name": "e", "url": "http://x:9200", "index": "flows/%Y"}])
    with pytest.raises(ExportConfigError, match="url"):
        build_flow_exports([{"type": "splunk-hec", "name": "s", "url": "x:8088", "token": "t"}])


def test_api_key_header(lines: list[bytes], servers: list[Server]) -> None:
    class KeyHandler(BulkHandler):
        auth = "ApiKey a2V5OnNlY3JldA=="

    srv = Server(KeyHandler)
    servers.append(srv)
    (ex,) = build_flow_exports([{"type": "elasticsearch", "name": "k", "url": srv.url, "api_key": "a2V5OnNlY3JldA==",
                                 **FAST}])
    feed(ex, lines[:50])
    assert isinstance(ex, HttpFlowExport)
    assert ex.drain(10)
    ex.close()
    assert ex.stats["exported"] == 50 and srv.wire_errors == []


def test_paths_cover_what_the_encoders_read() -> None:
    (ex,) = build_flow_exports([es_entry("http://127.0.0.1:9", dnsSampling=0.5,
                                         includeFilters=[{"source_pod": ["kube-system/"]}])])
    assert {"uuid", "l7.dns.query", "source.namespace"} <= ex.paths
    ex.close()

