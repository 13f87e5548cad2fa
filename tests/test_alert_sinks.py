"""Alert sinks: file rotation, stdout, webhook retries and refusals, the spool, config validation.

Alerts are real: `flowtrail detect` over the rule fixtures. HTTP receivers are real HTTP servers
(http.server in a thread) that fail, refuse or hang on purpose.
"""

from __future__ import annotations

import gzip
import http.server
import io
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from flowtrail.detect.rules import SEVERITIES
from flowtrail.sinks.alertfile import FileSink, StdoutSink, compact_line
from flowtrail.sinks.alerting import (
    ALERT_SINK_SCHEMA,
    Delivery,
    SinkConfigError,
    build_alert_sinks,
    close_all,
)
from flowtrail.sinks.spool import DiskSpool, SpoolError
from flowtrail.sinks.webhook import WebhookSink
from tests.helpers import free_port

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "src" / "flowtrail" / "detect" / "rules" / "fixtures"
FAST: dict[str, Any] = {"backoff_initial_s": 0.02, "backoff_max_s": 0.1}


def detect(*extra: str) -> str:
    args = [str(p) for p in sorted(FIXTURES.glob("*.jsonl.gz"))]
    r = subprocess.run([sys.executable, "-m", "flowtrail.cli.main", "detect", *args, "--intel",
                        str(FIXTURES / "intel.txt"), "--workers", "1", *extra], capture_output=True, check=True)
    return r.stdout.decode()


@pytest.fixture(scope="module")
def alerts() -> list[dict[str, Any]]:
    out = [json.loads(line) for line in detect("-o", "json").splitlines()]
    assert len(out) >= 20 and {a["severity"] for a in out} >= {"low", "medium", "high", "critical"}
    return out


def ids(alerts: list[dict[str, Any]]) -> list[str]:
    return [a["id"] for a in alerts]


class Receiver:
    """An HTTP server recording JSON bodies; `respond(body) -> (status, headers)` decides the answer."""

    def __init__(self, port: int = 0, respond: Callable[[Any], tuple[int, dict[str, str]]] | None = None) -> None:
        self.bodies: list[Any] = []
        self.statuses: list[int] = []
        self.headers: list[dict[str, str]] = []
        self.respond = respond or (lambda body: (200, {}))
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.headers.append(dict(self.headers))
                status, headers = outer.respond(body)
                outer.statuses.append(status)
                if 200 <= status < 300:
                    outer.bodies.append(body)
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def received(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for b in self.bodies:
            out.extend(b if isinstance(b, list) else [b])
        return out

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.stop()


# -- file


def read_lines(path: Path) -> list[dict[str, Any]]:
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    return [json.loads(line) for line in raw.splitlines()]


def test_file_sink_rotates_like_logrotate_and_compresses(tmp_path: Path, alerts: list[dict[str, Any]]) -> None:
    path = tmp_path / "out" / "alerts.jsonl"
    sink = FileSink("file", path, max_bytes=4096, max_backups=3, compress=True)
    d = Delivery(sink, tmp_path / "spool", batch_max=4, **FAST)
    d.submit(alerts)
    assert d.flush(10)
    d.close()
    names = sorted(p.name for p in path.parent.iterdir())
    assert names == ["alerts.jsonl", "alerts.jsonl.1", "alerts.jsonl.2.gz", "alerts.jsonl.3.gz"]
    assert sink.rotations > 4  # so the oldest were removed
    files = [path.with_name("alerts.jsonl.3.gz"), path.with_name("alerts.jsonl.2.gz"),
             path.with_name("alerts.jsonl.1"), path]
    kept: list[dict[str, Any]] = []
    for f in files:
        lines = read_lines(f)
        assert lines, f
        size = len(gzip.decompress(f.read_bytes())) if f.suffix == ".gz" else f.stat().st_size
        assert size <= 4096  # rotation happens between lines, before the limit
        kept.extend(lines)
    # The kept files hold the newest alerts, in order, with nothing missing in between.
    assert kept == alerts[-len(kept):]
    assert d.stats["sent"] == len(alerts) and d.stats["spooled"] == 0


def test_file_sink_appends_keeps_no_backups_and_follows_external_moves(tmp_path: Path,
                                                                        alerts: list[dict[str, Any]]) -> None:
    path = tmp_path / "alerts.jsonl"
    path.write_bytes(json.dumps(alerts[0]).encode() + b"\n")
    sink = FileSink("f", path, max_bytes=1 << 20, max_backups=0)
    sink.send(alerts[1:3])
    assert ids(read_lines(path)) == ids(alerts[:3])  # appended to what was there
    path.rename(tmp_path / "moved.jsonl")  # an external logrotate
    sink.send(alerts[3:4])
    assert ids(read_lines(path)) == ids(alerts[3:4])
    sink.rotate()
    assert not path.exists() or path.stat().st_size == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alerts.jsonl", "moved.jsonl"]
    sink.close()

    plain = FileSink("g", tmp_path / "b.jsonl", max_bytes=2500, max_backups=2, compress=False)
    plain.send(alerts[:12])
    plain.close()
    assert sorted(p.name for p in tmp_path.glob("b.jsonl*")) == ["b.jsonl", "b.jsonl.1", "b.jsonl.2"]


# -- stdout


def test_stdout_json_and_compact_match_detect(alerts: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    StdoutSink("s", "json", stream=buf).send(alerts)
    assert [json.loads(x) for x in buf.getvalue().splitlines()] == alerts
    buf = io.StringIO()
    StdoutSink("s", "compact", stream=buf).send(alerts)
    # The compact line is the one `flowtrail detect -o compact` prints for the same alert.
    expected = [line for line in detect("-o", "compact").splitlines() if line and not line.startswith(" ")]
    assert buf.getvalue().splitlines() == [compact_line(a) for a in alerts]
    assert set(buf.getvalue().splitlines()) <= set(expected)


def test_stdout_sink_via_delivery_and_closed_stream(capsys: pytest.CaptureFixture[str],
                                                    alerts: list[dict[str, Any]]) -> None:
    d = Delivery(StdoutSink("stdout"), None, **FAST)
    d.submit(alerts[:5])
    assert d.flush(5)
    d.close()
    assert [json.loads(x)["id"] for x in capsys.readouterr().out.splitlines()] == ids(alerts[:5])
    closed = io.StringIO()
    closed.close()
    d = Delivery(StdoutSink("s", stream=closed), None, **FAST)
    d.submit(alerts[:1])
    assert not d.flush(0.3)
    assert d.stats["failures"] >= 1 and d.stats["spooled"] == 1
    d.close(0.1)


# -- webhook


def test_webhook_retries_until_the_receiver_recovers(tmp_path: Path, alerts: list[dict[str, Any]]) -> None:
    answers = iter([(503, {}), (500, {}), (429, {"Retry-After": "0"}), (502, {})])
    r = Receiver(respond=lambda body: next(answers, (200, {})))
    try:
        d = Delivery(WebhookSink("hook", r.url), tmp_path / "spool", batch_max=10, **FAST)
        d.submit(alerts)
        assert d.flush(10)
        d.close()
        assert r.statuses[:4] == [503, 500, 429, 502]
        assert ids(r.received()) == ids(alerts)  # in order, each once
        assert [len(b) for b in r.bodies] == [10, 10, 10, len(alerts) - 30]
        assert d.stats == {**d.stats, "submitted": len(alerts), "sent": len(alerts), "failures": 4, "spooled": 0,
                           "dropped": 0}
    finally:
        r.stop()


def test_webhook_down_then_up_loses_nothing(tmp_path: Path, alerts: list[dict[str, Any]]) -> None:
    port = free_port()
    d = Delivery(WebhookSink("hook", f"http://127.0.0.1:{port}/hook", timeout_s=1), tmp_path / "spool", **FAST)
    d.submit(alerts[:10])
    assert not d.flush(0.5)
    assert d.stats["spooled"] == 10 and d.stats["failures"] >= 2 and d.stats["sent"] == 0
    d.submit(alerts[10:])
    r = Receiver(port)
    try:
        assert d.flush(10)
        d.close()
        assert ids(r.received()) == ids(alerts)
        assert d.stats["sent"] == len(alerts) and d.stats["spooled"] == 0
    finally:
        r.stop()


def test_webhook_refused_alert_does_not_block_the_others(tmp_path: Path, alerts: list[dict[str, Any]]) -> None:
    bad = alerts[3]["id"]

    def respond(body: Any) -> tuple[int, dict[str, str]]:
        batch = body if isinstance(body, list) else [body]
        return (400, {}) if any(a["id"] == bad for a in batch) else (200, {})

    r = Receiver(respond=respond)
    try:
        d = Delivery(WebhookSink("hook", r.url), tmp_path / "spool", batch_max=8, **FAST)
        d.submit(alerts)
        assert d.flush(10)
        d.close()
        assert ids(r.received()) == [i for i in ids(alerts) if i != bad]
        assert d.stats["rejected"] == 1 and d.stats["sent"] == len(alerts) - 1 and d.stats["failures"] == 0
    finally:
        r.stop()


def test_webhook_one_alert_per_request_with_headers(receiver: Receiver, alerts: list[dict[str, Any]]) -> None:
    sink = WebhookSink.from_config("w", {"url": receiver.url, "batch": False, "headers": {"X-Token": "t0k"},
                                         "basic_auth": {"username": "flow", "password": "trail"}})
    sink.send(alerts[:3])
    sink.close()
    assert [type(b) for b in receiver.bodies] == [dict] * 3 and ids(receiver.received()) == ids(alerts[:3])
    h = receiver.headers[0]
    assert h["X-Token"] == "t0k" and h["Content-Type"] == "application/json"
    assert h["Authorization"] == "Basic Zmxvdzp0cmFpbA=="  # flow:trail
    assert h["User-Agent"].startswith("flowtrail/")


def test_close_is_bounded_when_the_receiver_hangs(tmp_path: Path, alerts: list[dict[str, Any]]) -> None:
    # A receiver that accepts connections and never answers: SIGTERM must still finish quickly.
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    try:
        url = f"http://127.0.0.1:{srv.getsockname()[1]}/"
        # A small queue: while the worker waits on the receiver, submit() parks alerts on the spool.
        d = Delivery(WebhookSink("hang", url, timeout_s=0.5), tmp_path / "spool", queue_max=2, **FAST)
        for a in alerts[:6]:
            d.submit([a])
        t0 = time.monotonic()
        d.close(timeout_s=1.0)
        assert time.monotonic() - t0 < 2.0
        assert d.stats["sent"] == 0 and d.stats["spooled"] == 6
    finally:
        srv.close()
    [segment] = (tmp_path / "spool").glob("*.jsonl")
    assert [json.loads(x)["id"] for x in segment.read_bytes().splitlines()] == ids(alerts[:6])  # in order
    # ... and the next run delivers them.
    r = Receiver()
    try:
        d = Delivery(WebhookSink("hang", r.url), tmp_path / "spool", **FAST)
        assert d.stats["recovered"] == 6
        assert d.flush(5)
        d.close()
        assert ids(r.received()) == ids(alerts[:6])
    finally:
        r.stop()


def test_close_all_shares_one_deadline(tmp_path: Path, receiver: Receiver, alerts: list[dict[str, Any]]) -> None:
    good = Delivery(WebhookSink("good", receiver.url), tmp_path / "good", **FAST)
    down = [Delivery(WebhookSink(f"down{i}", f"http://127.0.0.1:{free_port()}/", timeout_s=0.2),
                     tmp_path / f"down{i}", **FAST) for i in range(3)]
    for d in [good, *down]:
        d.submit(alerts)
    t0 = time.monotonic()
    assert not close_all([*down, good], 1.0)
    assert time.monotonic() - t0 < 1.8
    assert ids(receiver.received()) == ids(alerts)
    assert all(d.stats["spooled"] == len(alerts) for d in down)


# -- spool


def test_spool_survives_restart_torn_tail_and_corrupt_line(tmp_path: Path, alerts: list[dict[str, Any]]) -> None:
    spool = tmp_path / "spool"
    dead = f"http://127.0.0.1:{free_port()}/"
    d = Delivery(WebhookSink("w", dead, timeout_s=0.5), spool, **FAST)
    d.submit(alerts[:5])
    d.close(0.2)
    assert d.stats["spooled"] == 5
    segs = sorted(spool.glob("*.jsonl"))
    assert len(segs) == 1 and len(segs[0].read_bytes().splitlines()) == 5
    with open(segs[0], "ab") as fh:
        fh.write(b"not json\n")  # damaged on disk: skipped and counted
        fh.write(json.dumps(alerts[5]).encode() + b"\n")
        fh.write(b'{"id": "half-writ')  # a crash in the middle of an append: never acknowledged
    r = Receiver()
    try:
        d = Delivery(WebhookSink("w", r.url), spool, **FAST)
        assert d.stats["recovered"] == 7
        assert d.flush(5)
        d.close()
        assert ids(r.received()) == ids(alerts[:6])
        assert d.stats["invalid"] == 1 and d.stats["sent"] == 6
    finally:
        r.stop()
    # Delivered means gone from disk: a third start sends nothing.
    d = Delivery(WebhookSink("w", dead), spool, **FAST)
    assert d.stats["recovered"] == 0
    d.close(0.1)


def test_spool_is_owned_by_one_process_and_bounded(tmp_path: Path, alerts: list[dict[str, Any]]) -> None:
    dead = f"http://127.0.0.1:{free_port()}/"
    d = Delivery(WebhookSink("w", dead, timeout_s=0.5), tmp_path / "s", max_spool_bytes=8000, **FAST)
    with pytest.raises(SpoolError, match="in use"):
        Delivery(WebhookSink("w", dead), tmp_path / "s")
    d.submit(alerts)
    assert not d.flush(0.2)
    st = d.stats
    assert st["spooled"] + st["dropped"] == len(alerts) and st["dropped"] > 0
    assert sum(p.stat().st_size for p in (tmp_path / "s").glob("*.jsonl")) <= 8000
    d.close(0.1)


def test_disk_spool_segments_and_partial_acks(tmp_path: Path) -> None:
    lines = [json.dumps({"id": str(i), "pad": "x" * 50}).encode() + b"\n" for i in range(100)]
    s = DiskSpool(tmp_path, 1 << 20, segment_bytes=1000)
    assert s.append(lines) == 100  # one append: one segment past the limit
    assert s.append(lines[:40]) == 40
    assert s.pending == 140
    got = s.peek(30)
    assert got == lines[:30]
    s.ack(10)  # the first 10 only
    assert s.peek(5) == lines[10:15]
    s.ack(5)
    s.close()
    s = DiskSpool(tmp_path, 1 << 20, segment_bytes=1000)
    assert s.pending == 125
    seen: list[bytes] = []
    while True:
        got = s.peek(7)
        if not got:
            break
        seen.extend(got)
        s.ack(len(got))
    assert seen == lines[15:] + lines[:40]
    assert s.pending == 0 and s.pending_bytes == 0
    assert len(list(tmp_path.glob("*.jsonl"))) == 1  # delivered segments are removed
    s.close()


# -- min_severity and config


def test_min_severity(tmp_path: Path, receiver: Receiver, alerts: list[dict[str, Any]]) -> None:
    d = Delivery(WebhookSink("w", receiver.url), None, min_severity="high", **FAST)
    d.submit(alerts)
    assert d.flush(5)
    d.close()
    want = [a for a in alerts if SEVERITIES.index(a["severity"]) >= SEVERITIES.index("high")]
    assert ids(receiver.received()) == ids(want) and 0 < len(want) < len(alerts)
    assert d.stats["filtered"] == len(alerts) - len(want)


def test_build_alert_sinks_from_config(tmp_path: Path, receiver: Receiver, alerts: list[dict[str, Any]]) -> None:
    config: list[dict[str, Any]] = [
        {"type": "file", "path": str(tmp_path / "a.jsonl"), "max_size_mb": 1, "max_backups": 2, "compress": True},
        {"type": "stdout", "format": "compact", "min_severity": "critical"},
        {"type": "webhook", "name": "hook-high", "url": receiver.url, "min_severity": "high", "timeout_s": 2,
         "headers": {"Authorization": "Bearer x"}, "batch": True, "backoff_initial_s": 0.1, "backoff_max_s": 1},
        {"type": "alertmanager", "url": "http://127.0.0.1:9093", "labels": {"cluster": "lab"},
         "resolve_after": "10m", "basic_auth": {"username": "u", "password": "p"}},
        {"type": "syslog", "address": "udp://127.0.0.1:514", "format": "cef", "facility": "local3"},
    ]
    deliveries = build_alert_sinks(config, tmp_path / "spool")
    try:
        assert [d.name for d in deliveries] == ["file", "stdout", "hook-high", "alertmanager", "syslog"]
        assert sorted(p.name for p in (tmp_path / "spool").iterdir()) == sorted(d.name for d in deliveries)
        deliveries[2].submit(alerts)
        deliveries[0].submit(alerts)
        assert deliveries[2].flush(5) and deliveries[0].flush(5)
        assert {a["severity"] for a in receiver.received()} <= {"high", "critical"}
        assert len(read_lines(tmp_path / "a.jsonl")) == len(alerts)
    finally:
        for d in deliveries:
            d.close(0.5)


@pytest.mark.parametrize(("entry", "message"), [
    ({"type": "kafka"}, "'kafka' is not one of"),
    ({"type": "file"}, "'path' is a required property"),
    ({"type": "webhook", "url": "ftp://x"}, "url: 'ftp://x' does not match"),
    ({"type": "stdout", "format": "xml"}, "format: 'xml' is not one of"),
    ({"type": "stdout", "colour": True}, "Additional properties are not allowed"),
    ({"type": "syslog", "address": "tcp://h:514", "facility": "local9"}, "facility 'local9'"),
    ({"type": "alertmanager", "url": "http://h", "labels": {"severity": "x"}}, "set by flowtrail itself"),
    ({"type": "alertmanager", "url": "http://h", "resolve_after": "soon"}, "resolve_after: 'soon' does not match"),
    ({"type": "stdout", "min_severity": "urgent"}, "min_severity: 'urgent' is not one of"),
    ({"type": "stdout", "name": "../x"}, "name: '../x' does not match"),
])
def test_bad_config_is_a_clear_error(tmp_path: Path, entry: dict[str, Any], message: str) -> None:
    with pytest.raises(SinkConfigError, match="alert sink #1") as exc:
        build_alert_sinks([entry], tmp_path)
    assert message in str(exc.value)


def test_duplicate_names_and_schema_is_a_json_schema(tmp_path: Path) -> None:
    with pytest.raises(SinkConfigError, match="used twice"):
        build_alert_sinks([{"type": "stdout"}, {"type": "stdout"}], tmp_path)
    import jsonschema

    jsonschema.Draft202012Validator.check_schema(ALERT_SINK_SCHEMA)
    jsonschema.validate({"type": "syslog", "address": "tcp://[::1]:6514", "format": "rfc5424"}, ALERT_SINK_SCHEMA)
