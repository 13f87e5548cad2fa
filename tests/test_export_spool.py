"""Flow export survives outages: the disk spool of the HTTP exporters.

Real HTTP servers (the strict Elasticsearch ``_bulk`` and Splunk HEC servers of
test_export_http) that are down for a while -- nothing listening (connection refused), 503,
per-item 429/503 in a bulk response -- and then recover; real sample and lab flows. What is
checked is what a SIEM sees: every flow exactly once and in order, across a restart of the
exporter in the middle of an outage, and what the spool's cap drops, with the counters saying so.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from flowtrail.sinks.export import (
    ExportConfigError,
    FlowExport,
    HttpFlowExport,
    build_flow_exports,
    spool_dir_name,
)
from flowtrail.sinks.spool import Block, DiskSpool, MemorySpool, SpoolError
from flowtrail.sources.decode import Decoder
from tests.helpers import free_port
from tests.test_export_http import (
    FAST,
    BulkHandler,
    HecHandler,
    Server,
    check_sum,
    es_entry,
    feed,
    load_lines,
)

SPOOL = "export-spool"


@pytest.fixture(scope="module")
def lines() -> list[bytes]:
    return load_lines()


def hec_entry(url: str, **kw: Any) -> dict[str, Any]:
    return {"type": "splunk-hec", "name": "hec", "url": url, "token": "tok-123", **FAST, **kw}


def build(entry: dict[str, Any], root: Path | None) -> HttpFlowExport:
    (ex,) = build_flow_exports([entry], root)
    assert isinstance(ex, HttpFlowExport)
    return ex


def wait_for(cond: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.01)


def settled(ex: FlowExport) -> Callable[[], bool]:
    """Everything written has reached the spool or been dropped (the mover is asynchronous)."""
    return lambda: ex.stats["input"] + ex.stats["recovered"] == sum(
        ex.stats[k] for k in ("dropped", "errors", "exported", "pending")) and not getattr(ex, "_inbox_rows", 0)


def spool_files(root: Path, name: str) -> list[Path]:
    return sorted((root / SPOOL / name).glob("*.jsonl"))


def uuid_of(line: bytes) -> str | None:
    return (orjson.loads(line).get("flow") or {}).get("uuid")


# -- outage, recovery, order -----------------------------------------------------------------------


def test_elasticsearch_outage_refused_then_503_then_recovers(lines: list[bytes], servers: list[Server],
                                                            tmp_path: Path) -> None:
    port = free_port()  # nothing listens: connection refused
    ex = build(es_entry(f"http://127.0.0.1:{port}", batch_max=300), tmp_path / SPOOL)
    feed(ex, lines, batch=400)
    assert ex.persist(10)  # what the monitor waits for before it saves input offsets
    on_disk = b"".join(p.read_bytes() for p in spool_files(tmp_path, "es"))
    assert on_disk.count(b"\n") == 2 * len(lines)  # an action line and a document per flow
    assert ex.stats["pending"] == len(lines) and ex.stats["dropped"] == 0 and ex.stats["exported"] == 0
    assert ex.stats["spool_bytes"] > len(lines) * 1000 and spool_files(tmp_path, "es")
    wait_for(lambda: ex.stats["retries"] >= 2, "retries")
    srv = Server(BulkHandler, port)
    srv.busy = 3  # up, but 503 for three requests first
    servers.append(srv)
    assert ex.drain(30)
    ex.close()
    assert srv.wire_errors == []
    assert srv.order == lines  # every flow once, in the order it was written
    assert all(n == 1 for n in srv.seen.values())
    assert ex.stats["exported"] == len(lines) and ex.stats["pending"] == 0 and ex.stats["spool_bytes"] == 0
    assert ex.stats["retries"] >= 5
    check_sum(ex.stats)


def test_splunk_busy_503_backs_off_and_delivers_in_order(lines: list[bytes], servers: list[Server],
                                                         tmp_path: Path) -> None:
    srv = Server(HecHandler)
    srv.busy = 6  # "Server is busy" (HEC code 9) for six requests
    servers.append(srv)
    t0 = time.monotonic()
    ex = build(hec_entry(srv.url, batch_max=250, retry_backoff_s=0.05, retry_backoff_max_s=0.4), tmp_path / SPOOL)
    feed(ex, lines)
    assert ex.drain(30)
    took = time.monotonic() - t0
    ex.close()
    assert srv.wire_errors == []
    assert [e["event"] for e in srv.events] == [orjson.loads(x) for x in lines]
    assert ex.stats["retries"] == 6 and ex.stats["exported"] == len(lines)
    # backoff doubles from 0.05 s (with jitter down to half): six retries wait at least
    # 0.5 * (0.05 + 0.1 + 0.2 + 0.4 + 0.4 + 0.4) seconds
    assert took >= 0.5 * 1.55
    check_sum(ex.stats)


def test_splunk_busy_honours_retry_after(lines: list[bytes], servers: list[Server], tmp_path: Path) -> None:
    srv = Server(HecHandler)
    srv.busy, srv.retry_after = 1, "1"
    servers.append(srv)
    ex = build(hec_entry(srv.url, retry_backoff_s=0.02, retry_backoff_max_s=5), tmp_path / SPOOL)
    feed(ex, lines[:100])
    assert ex.drain(20)
    ex.close()
    assert len(srv.times) == 2 and srv.times[1] - srv.times[0] >= 1.0  # not the 0.02 s of its own backoff
    assert [e["event"] for e in srv.events] == [orjson.loads(x) for x in lines[:100]]


def test_per_item_429_and_503_retry_only_those_items_and_malformed_are_not_retried(
        lines: list[bytes], servers: list[Server], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    srv = Server(BulkHandler)
    servers.append(srv)
    uuids = [uuid_of(x) for x in lines]
    bad = {u for u in uuids if u and u.endswith("7")}

    def status(src: dict[str, Any], seen: int) -> int:
        uuid = (src.get("flow") or {}).get("uuid") or ""
        if uuid in bad:
            return 400  # mapper_parsing_exception: sending it again cannot help
        if uuid.endswith("3") and seen < 2:
            return 429  # the write queue is full, twice
        if uuid.endswith("5") and seen == 0:
            return 503  # a shard unavailable, once
        return 201

    srv.item_status = status
    ex = build(es_entry(srv.url, batch_max=200), tmp_path / SPOOL)
    with caplog.at_level(logging.WARNING, logger="flowtrail.sinks.export"):
        feed(ex, lines)
        assert ex.drain(30)
    ex.close()
    assert srv.wire_errors == []
    n_bad = sum(u in bad for u in uuids)
    assert n_bad > 0 and ex.stats["errors"] == n_bad and ex.stats["exported"] == len(lines) - n_bad
    assert all(srv.seen[u] == 1 for u in bad)  # refused once, never sent again
    assert any("mapper_parsing_exception" in r.getMessage() and "not retried" in r.getMessage()
               for r in caplog.records)
    # every accepted document once; a retry request holds only rows that got 429/503, and no
    # new row is sent while one is owed: the SIEM gets the flows in order, batch by batch
    assert all(len(v) == 1 for v in srv.docs.values())
    assert sorted(srv.order) == sorted(x for x, u in zip(lines, uuids, strict=True) if u not in bad)
    requests: dict[int, list[tuple[str, int]]] = {}
    for req, key, st in srv.items:
        requests.setdefault(req, []).append((key, st))
    owed: set[str] = set()
    first_sent: list[str] = []
    sent: set[str] = set()
    for req in sorted(requests):
        keys = [k for k, _ in requests[req]]
        new = [k for k in keys if k not in sent]
        assert not new or not owed, f"request {req} sends new rows while {len(owed)} rows wait for a retry"
        assert not new or len(new) == len(keys)
        assert set(keys) - set(new) <= owed
        first_sent += new
        sent.update(keys)
        for k, st in requests[req]:
            if st in (429, 503):
                owed.add(k)
            else:
                owed.discard(k)
    assert not owed
    expected_keys = [u for u in uuids if u]
    assert [k for k in first_sent if not k.startswith("no-id-")] == expected_keys
    assert ex.stats["retries"] >= 2
    check_sum(ex.stats)


# -- restart ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["elasticsearch", "splunk-hec"])
def test_restart_in_the_middle_of_an_outage_resumes_the_spool(lines: list[bytes], servers: list[Server],
                                                              tmp_path: Path, kind: str) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    entry = es_entry(url, batch_max=300, close_timeout_s=0.3) if kind == "elasticsearch" else \
        hec_entry(url, batch_max=300, close_timeout_s=0.3)
    root = tmp_path / SPOOL
    half = len(lines) // 2
    first = build(entry, root)
    feed(first, lines[:half])
    wait_for(lambda: first.stats["retries"] >= 1, "a failed attempt")
    first.close()  # stopped during the outage: what is undelivered stays on disk
    assert first.stats["pending"] == half and first.stats["dropped"] == 0
    check_sum(first.stats)
    # a crash in the middle of an append leaves a torn record (for Elasticsearch: an action line
    # without its document); it was never acknowledged and is cut off
    name = entry["name"]
    with open(spool_files(tmp_path, name)[-1], "ab") as fh:
        fh.write(b'{"index":{"_index":"hubble-flows-2026.01.01","_id":"torn"}}\n' if kind == "elasticsearch"
                 else b'{"time":1,"event":{"flow":')
    second = build(entry, root)
    assert second.stats["recovered"] == half and second.stats["pending"] == half
    feed(second, lines[half:])
    srv = Server(BulkHandler if kind == "elasticsearch" else HecHandler, port)
    servers.append(srv)
    assert second.drain(30)
    second.close()
    assert srv.wire_errors == []
    if kind == "elasticsearch":
        assert srv.order == lines and all(n == 1 for n in srv.seen.values())
    else:
        assert [e["event"] for e in srv.events] == [orjson.loads(x) for x in lines]
    assert second.stats["exported"] == len(lines)
    check_sum(second.stats)
    # delivered means gone: a third start finds nothing to send
    third = build(entry, root)
    assert third.stats["recovered"] == 0
    third.close()


# -- bounds ----------------------------------------------------------------------------------------


def test_spool_cap_drops_the_newest_and_counts_them(lines: list[bytes], servers: list[Server],
                                                    tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()
    cap_mb = 0.25
    ex = build(hec_entry(f"http://127.0.0.1:{port}", spool_max_mb=cap_mb, batch_max=100), tmp_path / SPOOL)
    rows = lines[:600]
    with caplog.at_level(logging.WARNING, logger="flowtrail.sinks.export"):
        feed(ex, rows, batch=100)
        wait_for(settled(ex), "the spool")
    kept = ex.stats["pending"]
    assert 0 < kept < len(rows)
    assert ex.stats["dropped"] == ex.drops["spool_full"] == len(rows) - kept
    assert ex.drops["buffer_full"] == 0 and ex.drops["closed"] == 0
    assert ex.stats["spool_bytes"] <= cap_mb * (1 << 20)
    assert sum(p.stat().st_size for p in spool_files(tmp_path, "hec")) <= cap_mb * (1 << 20)
    assert any("spool full" in r.getMessage() for r in caplog.records)
    srv = Server(HecHandler, port)
    servers.append(srv)
    assert ex.drain(30)
    ex.close()
    # drop-newest: the oldest rows were kept, in order, and nothing else arrived
    assert [e["event"] for e in srv.events] == [orjson.loads(x) for x in rows[:kept]]
    check_sum(ex.stats)


def test_a_hung_sink_never_blocks_write(lines: list[bytes], tmp_path: Path) -> None:
    release = threading.Event()

    class Hung(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server: Server

        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            with self.server.lock:
                self.server.requests += 1
            release.wait(60)
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()

    srv = Server(Hung)

    def stuck(n: int) -> Callable[[], bool]:
        return lambda: srv.requests >= n

    made: list[HttpFlowExport] = []
    try:
        rows = lines[:1500]
        entry = es_entry(srv.url, timeout_s=60, max_buffer=300, close_timeout_s=0.3)
        spooled = build(entry, tmp_path / SPOOL)
        memory = build({**entry, "name": "mem"}, None)
        made += [spooled, memory]
        for n, ex in enumerate((spooled, memory), 1):
            feed(ex, rows[:100])
            ex.flush()
            wait_for(stuck(n), "the exporter to be stuck in a request")
            t0 = time.monotonic()
            for i in range(100, len(rows), 100):
                feed(ex, rows[i : i + 100])
                # the mover keeps the spool's inbox empty, whatever the sink does
                wait_for(settled(ex), "the spool")
            took = time.monotonic() - t0
            assert took < 10.0, f"{ex.name}: writing took {took:.1f} s"  # the sink holds a request for 60 s
        # with a spool the rows wait on disk; in memory the 300-row bound sheds the rest, counted
        assert spooled.stats["pending"] == len(rows) and spooled.stats["dropped"] == 0
        assert memory.stats["pending"] == 300 and memory.drops["buffer_full"] == len(rows) - 300
        check_sum(spooled.stats)
        check_sum(memory.stats)
    finally:
        release.set()
        for ex in made:
            ex.close()
        srv.stop()


def test_rows_that_cannot_be_encoded_are_errors_not_drops(lines: list[bytes], tmp_path: Path) -> None:
    ex = build(es_entry(f"http://127.0.0.1:{free_port()}", close_timeout_s=0.1), tmp_path / SPOOL)
    d = Decoder(None).decode_lines(lines[:50])
    ex.write(None, d.rows)  # the Elasticsearch encoder needs the decoded columns (time, uuid)
    assert ex.persist(5)
    assert ex.stats["errors"] == 50 and ex.stats["dropped"] == 0 and ex.stats["pending"] == 0
    check_sum(ex.stats)
    ex.close()


# -- configuration ---------------------------------------------------------------------------------


def test_spool_directory_ownership_and_kind(tmp_path: Path) -> None:
    root = tmp_path / SPOOL
    dead = f"http://127.0.0.1:{free_port()}"
    es = build(es_entry(dead, name="siem"), root)
    assert (root / "siem" / "lock").exists()
    with pytest.raises(ExportConfigError, match="in use"):
        build(es_entry(dead, name="siem"), root)  # a second monitor on the same state_dir
    es.close()
    with pytest.raises(ExportConfigError, match="holds records of 'elasticsearch 2'"):
        build(hec_entry(dead, name="siem"), root)  # two-line bulk items must not go to HEC
    off = build(es_entry(dead, name="nospool", spool=False), root)
    assert off.spool_dir is None and not (root / "nospool").exists()
    off.close()
    weird = build(es_entry(dead, name="SIEM / prod"), root)
    assert weird.spool_dir is not None and weird.spool_dir.parent == root
    assert weird.spool_dir.name.startswith("SIEM_prod-") and weird.spool_dir.name != spool_dir_name("SIEM_prod")
    weird.close()
    with pytest.raises(ExportConfigError, match="spool_max_mb"):
        build_flow_exports([es_entry(dead, spool_max_mb=0)], root)


# -- the spool's block interface -------------------------------------------------------------------


def _items(n: int) -> list[bytes]:
    """Bulk items of two lines, of varied sizes."""
    return [b'{"index":{"_id":"%d"}}\n{"n":%d,"pad":"%s"}\n' % (i, i, b"x" * (i % 37)) for i in range(n)]


def test_disk_spool_blocks_of_two_line_records(tmp_path: Path) -> None:
    items = _items(300)
    s = DiskSpool(tmp_path, 1 << 20, segment_bytes=2000, record_lines=2, kind="t", noun="flow")
    assert s.append_block(Block.from_records(items[:250])) == 250
    assert len(list(tmp_path.glob("*.jsonl"))) > 5  # one large append is split into segments
    assert all(p.stat().st_size <= 2000 for p in tmp_path.glob("*.jsonl"))
    b = s.peek_block(100, 1 << 20)
    assert b.records() == items[:100] and b.data == b"".join(items[:100])
    s.ack(40)
    b = s.peek_block(1000, 700)  # bounded in bytes
    assert b.records() == items[40 : 40 + len(b)] and 0 < b.nbytes <= 700
    s.ack(0)
    big = s.peek_block(10, 1)  # one record larger than max_bytes still comes, alone
    assert big.records() == items[40:41]
    s.ack(1)
    s.close()
    s = DiskSpool(tmp_path, 1 << 20, segment_bytes=2000, record_lines=2, kind="t", noun="flow")
    assert s.pending == 209
    assert s.append(items[250:]) == 50
    got: list[bytes] = []
    while s.pending:
        b = s.peek_block(37, 1500)
        got += b.records()
        s.ack(len(b))
    assert got == items[41:]
    assert s.pending_bytes == 0 and len(list(tmp_path.glob("*.jsonl"))) == 1
    s.close()


def test_memory_spool_blocks_bound_and_order() -> None:
    items = _items(100)
    size = sum(map(len, items[:60]))
    s = MemorySpool(size)
    assert s.append_block(Block.from_records(items[:30])) == 30
    assert s.append_block(Block.from_records(items[30:])) == 30  # the newest do not fit
    assert s.pending == 60 and s.pending_bytes == size
    b = s.peek_block(45, 1 << 20)
    assert b.records() == items[:45]  # across the two blocks
    s.ack(20)
    b = s.peek_block(1000, 10)
    assert b.records() == items[20:21]
    s.ack(1)
    assert s.peek(100) == items[21:60]
    s.ack(39)
    assert s.pending == 0 and s.pending_bytes == 0


def test_block_take_and_slice() -> None:
    items = _items(10)
    b = Block.from_records(items)
    assert b.slice(3, 7).records() == items[3:7]
    assert b.take([1, 4, 9]).records() == [items[1], items[4], items[9]]
    assert Block.concat([b.slice(0, 2), b.slice(2, 10)]).records() == items
    assert b.fit(100, len(items[0]) + len(items[1])) == 2
    assert np.array_equal(b.ends, np.cumsum([len(x) for x in items]))


def test_spool_error_for_a_second_owner(tmp_path: Path) -> None:
    s = DiskSpool(tmp_path, 1000)
    with pytest.raises(SpoolError, match="in use"):
        DiskSpool(tmp_path, 1000)
    s.close()
