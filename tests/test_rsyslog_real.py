"""The syslog sink against a real rsyslogd: RFC 5424 over UDP and TCP, and CEF.

Each test starts its own rsyslogd (`-n`, tmp work directory, imudp and imtcp on free ports of
127.0.0.1) writing everything it receives to a file with the RSYSLOG_SyslogProtocol23Format
template, then parses that file back: PRI (facility and severity), timestamp, hostname, app name,
procid, msgid, structured data, and the CEF header and extension with their escaping undone.
Alerts are real (`flowtrail detect` over the rule fixtures) plus copies given awkward characters.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flowtrail import __version__
from flowtrail.model.timeutil import parse_rfc3339_ns
from flowtrail.sinks.alerting import Delivery, build_alert_sinks
from flowtrail.sinks.syslog import SyslogSink
from tests.helpers import fixture_alerts, free_port, stop_process

RSYSLOGD = shutil.which("rsyslogd") or "/usr/sbin/rsyslogd"
pytestmark = pytest.mark.skipif(not Path(RSYSLOGD).exists(), reason="rsyslogd is not installed (apt install rsyslog)")

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "src" / "flowtrail" / "detect" / "rules" / "fixtures"
FAST: dict[str, Any] = {"backoff_initial_s": 0.05, "backoff_max_s": 0.2}
# RFC 5424 severities we promise (independent of the module's own table)
EXPECTED_SEVERITY = {"critical": 2, "high": 3, "medium": 4, "low": 5, "info": 6}
EXPECTED_CEF_SEVERITY = {"critical": 10, "high": 8, "medium": 5, "low": 3, "info": 1}
LOCAL4 = 20


@pytest.fixture(scope="module")
def alerts() -> list[dict[str, Any]]:
    out = fixture_alerts()
    # One that needs every kind of escaping, in the header, the structured data and the CEF fields.
    odd = json.loads(json.dumps(out[0]))
    odd["id"] = "odd0000000000000001"
    odd["title"] = 'Pipes | back\\slashes = equals\nand a newline'
    odd["description"] = 'key=value \\ path | pipe\r\nsecond "line" ] bracket'
    odd["entity"]["workload"] = 'we"ird]na\\me'
    odd["remediation"] = "Ünïcödé — fine"
    return [*out, odd]


class Rsyslog:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.udp_port = free_port(socket.SOCK_DGRAM)
        self.tcp_port = free_port(socket.SOCK_STREAM)
        self.out = workdir / "received.log"
        (workdir / "work").mkdir()
        self.conf = workdir / "rsyslog.conf"
        self.conf.write_text(f"""
global(workDirectory="{workdir / 'work'}" maxMessageSize="64k")
module(load="imudp")
module(load="imtcp")
input(type="imudp" address="127.0.0.1" port="{self.udp_port}")
input(type="imtcp" address="127.0.0.1" port="{self.tcp_port}")
*.* action(type="omfile" file="{self.out}" template="RSYSLOG_SyslogProtocol23Format")
""")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = open(self.workdir / "rsyslogd.log", "ab")  # noqa: SIM115 -- owned by the process
        self.proc = subprocess.Popen([RSYSLOGD, "-n", "-f", str(self.conf), "-i", str(self.workdir / "rsyslogd.pid")],
                                     stdout=log, stderr=log)
        log.close()
        # Ready when a UDP probe comes out in the file (TCP listens by then too).
        deadline = time.monotonic() + 15
        probe = f"<14>1 - - probe - - - ready {time.monotonic_ns()}".encode()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"rsyslogd exited: {(self.workdir / 'rsyslogd.log').read_text()}")
                s.sendto(probe, ("127.0.0.1", self.udp_port))
                time.sleep(0.1)
                if self.out.exists() and probe.split()[-1] in self.out.read_bytes():
                    with socket.create_connection(("127.0.0.1", self.tcp_port), timeout=2):
                        return
        raise RuntimeError("rsyslogd did not become ready")

    def stop(self) -> None:
        stop_process(self.proc)

    def messages(self, want: int, timeout_s: float = 10.0) -> list[dict[str, Any]]:
        """Parsed lines from our app, once at least `want` arrived."""
        deadline = time.monotonic() + timeout_s
        while True:
            text = self.out.read_text(encoding="utf-8") if self.out.exists() else ""
            got = [parse_5424(line) for line in text.splitlines()]
            got = [m for m in got if m["app"] == "flowtrail"]
            if len(got) >= want or time.monotonic() > deadline:
                return got
            time.sleep(0.05)


@pytest.fixture
def rsyslog(tmp_path: Path) -> Iterator[Rsyslog]:
    r = Rsyslog(tmp_path)
    r.start()
    yield r
    r.stop()


# -- parsing what rsyslog wrote (our own reader, written from RFC 5424 and the CEF spec)

_HEADER = re.compile(r"^<(\d{1,3})>1 (\S+) (\S+) (\S+) (\S+) (\S+) ")
_SD_PARAM = re.compile(r'([^\s="\]]+)="((?:[^"\\\]]|\\.)*)"')


def parse_5424(line: str) -> dict[str, Any]:
    m = _HEADER.match(line)
    assert m, line
    pri, ts, host, app, procid, msgid = m.groups()
    rest = line[m.end():]
    sd: dict[str, dict[str, str]] = {}
    if rest.startswith("-"):
        rest = rest[2:]
    else:
        while rest.startswith("["):
            sd_id, _, rest = rest[1:].partition(" ")
            params: dict[str, str] = {}
            while not rest.startswith("]"):
                pm = _SD_PARAM.match(rest)
                assert pm, rest
                params[pm.group(1)] = re.sub(r"\\(.)", r"\1", pm.group(2))
                rest = rest[pm.end():].lstrip(" ")
            sd[sd_id] = params
            rest = rest[1:]
        rest = rest[1:] if rest.startswith(" ") else rest
    return {"pri": int(pri), "ts": ts, "host": host, "app": app, "procid": procid, "msgid": msgid, "sd": sd,
            "msg": rest}


def split_unescaped(text: str, sep: str, limit: int) -> list[str]:
    parts: list[str] = []
    cur, i = "", 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            cur += text[i:i + 2]
            i += 2
            continue
        if c == sep and len(parts) < limit:
            parts.append(cur)
            cur = ""
        else:
            cur += c
        i += 1
    return [*parts, cur]


def parse_cef(msg: str) -> tuple[list[str], dict[str, str]]:
    assert msg.startswith("CEF:"), msg
    fields = split_unescaped(msg[4:], "|", 7)
    assert len(fields) == 8, fields
    header = [re.sub(r"\\([\\|])", r"\1", f) for f in fields[:7]]
    ext: dict[str, str] = {}
    # A key starts after a space and runs to an unescaped '='; its value runs to the next such key.
    keys = list(re.finditer(r"(?:^| )([A-Za-z0-9_]+)=", fields[7]))
    keys = [k for k in keys if not _escaped(fields[7], k.end() - 1)]
    for k, nxt in zip(keys, [*keys[1:], None], strict=True):
        raw = fields[7][k.end(): nxt.start() if nxt else None]
        ext[k.group(1)] = re.sub(r"\\(.)", lambda m: {"n": "\n", "r": "\r"}.get(m.group(1), m.group(1)), raw)
    return header, ext


def _escaped(text: str, pos: int) -> bool:
    n = 0
    while pos - 1 - n >= 0 and text[pos - 1 - n] == "\\":
        n += 1
    return n % 2 == 1


def us(rfc3339: str) -> int:
    ns = parse_rfc3339_ns(rfc3339)
    assert ns is not None
    return ns // 1000


# -- tests


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_rfc5424_over_udp_and_tcp(tmp_path: Path, rsyslog: Rsyslog, alerts: list[dict[str, Any]],
                                  transport: str) -> None:
    port = rsyslog.udp_port if transport == "udp" else rsyslog.tcp_port
    [d] = build_alert_sinks([{"type": "syslog", "address": f"{transport}://127.0.0.1:{port}", "facility": "local4",
                              "hostname": "node-1.lab", "batch_max": 10, **FAST}], tmp_path / "spool")
    d.submit(alerts)
    assert d.flush(10)
    d.close()
    got = rsyslog.messages(len(alerts))
    assert len(got) == len(alerts)  # one message per alert: UDP one per datagram, TCP framed
    by_id = {m["sd"]["flowtrail@32473"]["id"]: m for m in got}
    for a in alerts:
        m = by_id[a["id"]]
        assert m["pri"] == LOCAL4 * 8 + EXPECTED_SEVERITY[a["severity"]]
        assert us(m["ts"]) == us(a["detected_at"])
        assert (m["host"], m["app"], m["procid"], m["msgid"]) == ("node-1.lab", "flowtrail", str(os.getpid()),
                                                                  a["category"])
        sd = m["sd"]["flowtrail@32473"]
        e = a["entity"]
        want = {"id": a["id"], "rule": a["rule"], "severity": a["severity"], "category": a["category"],
                "count": str(a["count"]), "peers": str(a["peers"]["distinct"]), "first_seen": a["first_seen"],
                "last_seen": a["last_seen"], "detected_at": a["detected_at"],
                **({"mitre": ",".join(a["mitre"])} if a["mitre"] else {}),
                **{k: e[k] for k in ("namespace", "pod", "workload") if e.get(k)}}
        assert sd == want
        assert m["msg"].startswith(f"{a['severity'].upper()} {a['title'].replace(chr(10), ' ')}: ")
        assert f"count={a['count']}" in m["msg"]
    assert by_id["odd0000000000000001"]["sd"]["flowtrail@32473"]["workload"] == 'we"ird]na\\me'


def test_cef_with_escaping_and_truncation(tmp_path: Path, rsyslog: Rsyslog, alerts: list[dict[str, Any]]) -> None:
    d = Delivery(SyslogSink("cef", f"tcp://127.0.0.1:{rsyslog.tcp_port}", fmt="cef", hostname="h1"),
                 tmp_path / "spool", **FAST)
    d.submit(alerts)
    assert d.flush(10)
    d.close()
    got = rsyslog.messages(len(alerts))
    assert len(got) == len(alerts)
    parsed = {}
    for m in got:
        assert m["sd"] == {}
        header, ext = parse_cef(m["msg"])
        parsed[ext["externalId"]] = (m, header, ext)
    for a in alerts:
        m, header, ext = parsed[a["id"]]
        assert m["pri"] == 16 * 8 + EXPECTED_SEVERITY[a["severity"]]  # local0 by default
        assert header == ["0", "flowtrail", "flowtrail", __version__, a["rule"], a["title"].replace("\n", " "),
                          str(EXPECTED_CEF_SEVERITY[a["severity"]])]
        assert ext["cat"] == a["category"] and ext["cnt"] == str(a["count"])
        assert ext["msg"] == a["description"].replace("\r\n", "\n")
        assert ext["rt"] == str(us(a["detected_at"]) // 1000)
        assert ext["start"] == str(us(a["first_seen"]) // 1000) and ext["end"] == str(us(a["last_seen"]) // 1000)
        assert ext["cs6Label"] == "remediation" and ext["cs6"] == a["remediation"]
        e = a["entity"]
        for i, k in ((1, "namespace"), (2, "pod"), (3, "workload")):
            assert ext.get(f"cs{i}") == e.get(k) and (f"cs{i}Label" in ext) == bool(e.get(k))
        if a["mitre"]:
            assert ext["cs4"] == ",".join(a["mitre"])

    # A message over max_message_bytes is cut without leaving half an escape sequence.
    big = json.loads(json.dumps(alerts[-1]))
    big["id"] = "big0000000000000001"
    big["description"] = "a=b\\c " * 50
    big["remediation"] = "r\\" * 3000
    sink = SyslogSink("cef", f"udp://127.0.0.1:{rsyslog.udp_port}", fmt="cef", max_message_bytes=2048)
    sink.send([big])
    sink.close()
    m = next(m for m in rsyslog.messages(len(alerts) + 1) if "big0000000000000001" in m["msg"])
    assert len(m["msg"].encode()) < 2048
    _, ext = parse_cef(m["msg"])
    assert ext["msg"] == big["description"]
    assert set(ext["cs6"]) <= {"r", "\\"} and ext["cs6"].startswith("r\\r\\")


def test_tcp_reconnects_when_rsyslog_restarts(tmp_path: Path, rsyslog: Rsyslog,
                                              alerts: list[dict[str, Any]]) -> None:
    d = Delivery(SyslogSink("s", f"tcp://127.0.0.1:{rsyslog.tcp_port}", timeout_s=1), tmp_path / "spool", **FAST)
    d.submit(alerts[:5])
    assert d.flush(5)
    assert len(rsyslog.messages(5)) == 5
    rsyslog.stop()
    # rsyslog is gone: the connection we hold is dead, and writes into it would vanish.
    d.submit(alerts[5:10])
    assert not d.flush(0.5)
    rsyslog.start()
    d.submit(alerts[10:15])
    assert d.flush(10)
    d.close()
    got = rsyslog.messages(15)
    assert sorted(m["sd"]["flowtrail@32473"]["id"] for m in got) == sorted(a["id"] for a in alerts[:15])
    assert d.stats["failures"] >= 1 and d.stats["sent"] == 15
