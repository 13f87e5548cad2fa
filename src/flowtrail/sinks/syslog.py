"""Syslog alert sink: RFC 5424 messages over UDP (RFC 5426) or TCP (RFC 6587 octet counting).

One message per alert. Header: PRI (facility*8 + severity, severity mapped below), version 1,
TIMESTAMP = the alert's detected_at (UTC, microseconds: RFC 5424 allows six fractional digits),
HOSTNAME, APP-NAME, PROCID (our pid) and MSGID = the alert's category (rule ids may exceed the
32-character MSGID limit; the rule is in the structured data).

`format: rfc5424`: structured data `[flowtrail@32473 id=… rule=… severity=… category=… namespace=…
pod=… workload=… count=… peers=… mitre=… first_seen=… last_seen=… detected_at=…]` and a one-line text.
`format: cef`: no structured data; the message is ArcSight CEF:
``CEF:0|flowtrail|flowtrail|<version>|<rule>|<title>|<0-10>|<extension>`` with header fields escaped
(``\\`` and ``|``) and extension values escaped (``\\``, ``=``, newlines as ``\\n``/``\\r``).

Severity: critical → 2 crit / CEF 10, high → 3 err / 8, medium → 4 warning / 5, low → 5 notice / 3,
info → 6 info / 1.

UDP gives no delivery guarantee (a lost datagram is not noticed); TCP errors are retried by the
Delivery, and a connection the receiver has closed is detected before the next send rather than
after losing what was written into it.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import socket
import time
from typing import Any
from urllib.parse import urlsplit

from flowtrail import __version__
from flowtrail.model.timeutil import parse_rfc3339_ns
from flowtrail.sinks.alerting import SinkError

FACILITIES = {
    "kern": 0, "user": 1, "mail": 2, "daemon": 3, "auth": 4, "syslog": 5, "lpr": 6, "news": 7, "uucp": 8,
    "cron": 9, "authpriv": 10, "ftp": 11, "ntp": 12, "security": 13, "audit": 13, "console": 14, "clock": 15,
    **{f"local{i}": 16 + i for i in range(8)},
}
SYSLOG_SEVERITY = {"critical": 2, "high": 3, "medium": 4, "low": 5, "info": 6}
CEF_SEVERITY = {"critical": 10, "high": 8, "medium": 5, "low": 3, "info": 1}
DEFAULT_SD_ID = "flowtrail@32473"  # 32473: the enterprise number RFC 5612 reserves for documentation
CEF_VENDOR = "flowtrail"
CEF_PRODUCT = "flowtrail"

_SD_NAME = re.compile(r'^[!#-<>-\\^-~]{1,32}$')  # PRINTUSASCII except '=', ']', '"'
_NOT_PRINTUSASCII = re.compile(r"[^!-~]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


def _header_token(value: str | None, limit: int) -> str:
    if not value:
        return "-"
    return _NOT_PRINTUSASCII.sub("_", value)[:limit]


def syslog_timestamp(ns: int) -> str:
    sec, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + f".{frac // 1000:06d}Z"


def sd_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def cef_header_escape(value: str) -> str:
    # Newlines are not allowed in the header at all.
    return _CONTROL.sub(" ", value.replace("\\", "\\\\").replace("|", "\\|"))


def cef_ext_escape(value: str) -> str:
    v = value.replace("\\", "\\\\").replace("=", "\\=")
    v = v.replace("\r\n", "\\n").replace("\n", "\\n").replace("\r", "\\r")
    return _CONTROL.sub(" ", v)


def _ms(rfc3339: Any) -> str | None:
    ns = parse_rfc3339_ns(rfc3339) if isinstance(rfc3339, str) else None
    return None if ns is None else str(ns // 1_000_000)


def _actor(entity: dict[str, Any]) -> str:
    if entity.get("pod"):
        return f"{entity.get('namespace')}/{entity['pod']}"
    return str(entity.get("namespace") or entity.get("node") or entity.get("name") or "-")


def _cut_utf8(data: bytes, limit: int) -> bytes:
    if len(data) <= limit:
        return data
    return data[:limit].decode("utf-8", "ignore").encode()


class SyslogSink:
    def __init__(self, name: str, address: str, *, fmt: str = "rfc5424", facility: str = "local0",
                 app_name: str = "flowtrail", hostname: str | None = None, sd_id: str = DEFAULT_SD_ID,
                 max_message_bytes: int = 8192, timeout_s: float = 5.0) -> None:
        self.name = name
        u = urlsplit(address)
        if u.scheme not in ("udp", "tcp") or not u.hostname:
            raise ValueError(f"address {address!r}: expected udp://host:port or tcp://host:port")
        try:
            port = u.port or 514
        except ValueError:
            raise ValueError(f"address {address!r}: bad port") from None
        if fmt not in ("rfc5424", "cef"):
            raise ValueError(f"format {fmt!r}: expected rfc5424 or cef")
        if facility not in FACILITIES:
            raise ValueError(f"facility {facility!r}: expected one of {', '.join(FACILITIES)}")
        if not _SD_NAME.match(sd_id):
            raise ValueError(f"sd_id {sd_id!r}: 1-32 printable ASCII characters, without '=', ']', '\"' or space")
        if u.scheme == "udp" and max_message_bytes > 65507:
            raise ValueError("max_message_bytes: a UDP datagram holds at most 65507 bytes")
        self.transport = u.scheme
        self.host, self.port = u.hostname, port
        self.fmt = fmt
        self.facility = FACILITIES[facility]
        self.app_name = _header_token(app_name, 48)
        self.hostname = _header_token(hostname or socket.gethostname(), 255)
        self.procid = str(os.getpid())
        self.sd_id = sd_id
        self.max_message_bytes = max_message_bytes
        self.timeout_s = timeout_s
        self._sock: socket.socket | None = None

    @classmethod
    def from_config(cls, name: str, entry: dict[str, Any]) -> SyslogSink:
        return cls(name, entry["address"], fmt=entry.get("format", "rfc5424"), facility=entry.get("facility", "local0"),
                   app_name=entry.get("app_name", "flowtrail"), hostname=entry.get("hostname"),
                   sd_id=entry.get("sd_id", DEFAULT_SD_ID), max_message_bytes=entry.get("max_message_bytes", 8192),
                   timeout_s=entry.get("timeout_s", 5.0))

    # -- formatting (per alert: each alert is one message that must become bytes anyway)

    def format(self, alert: dict[str, Any]) -> bytes:
        sev = str(alert.get("severity", ""))
        pri = self.facility * 8 + SYSLOG_SEVERITY.get(sev, 4)
        ns = parse_rfc3339_ns(alert.get("detected_at")) or time.time_ns()
        header = (f"<{pri}>1 {syslog_timestamp(ns)} {self.hostname} {self.app_name} {self.procid} "
                  f"{_header_token(alert.get('category'), 32)}")
        if self.fmt == "cef":
            sd, msg = "-", self.cef(alert)
        else:
            sd, msg = self.structured_data(alert), self.text(alert)
        head = f"{header} {sd} ".encode()
        body = _cut_utf8(msg.encode(), max(0, self.max_message_bytes - len(head)))
        if self.fmt == "cef" and len(body) < len(msg.encode()):
            # Do not leave half an escape sequence at the cut.
            stripped = body.rstrip(b"\\")
            body = stripped + b"\\" * ((len(body) - len(stripped)) // 2 * 2)
        return head + body

    def structured_data(self, alert: dict[str, Any]) -> str:
        entity = alert.get("entity") or {}
        params = {
            "id": alert.get("id"), "rule": alert.get("rule"), "severity": alert.get("severity"),
            "category": alert.get("category"), "namespace": entity.get("namespace"), "pod": entity.get("pod"),
            "workload": entity.get("workload"), "node": entity.get("node"), "entity": entity.get("name"),
            "count": alert.get("count"), "peers": (alert.get("peers") or {}).get("distinct"),
            "mitre": ",".join(alert.get("mitre") or []), "first_seen": alert.get("first_seen"),
            "last_seen": alert.get("last_seen"), "detected_at": alert.get("detected_at"),
        }
        body = " ".join(f'{k}="{sd_escape(str(v))}"' for k, v in params.items() if v not in (None, ""))
        return f"[{self.sd_id} {body}]" if body else "-"

    def text(self, alert: dict[str, Any]) -> str:
        top = (alert.get("peers") or {}).get("top") or []
        peers = ", ".join(str(p.get("peer")) for p in top[:3])
        distinct = (alert.get("peers") or {}).get("distinct") or 0
        more = f" (+{distinct - 3})" if distinct > 3 else ""
        line = (f"{str(alert.get('severity', '')).upper()} {alert.get('title')}: "
                f"{_actor(alert.get('entity') or {})} -> {peers or '-'}{more} count={alert.get('count')}")
        return _CONTROL.sub(" ", line)

    def cef(self, alert: dict[str, Any]) -> str:
        entity = alert.get("entity") or {}
        top = (alert.get("peers") or {}).get("top") or []
        header = "|".join(cef_header_escape(str(x)) for x in (
            CEF_VENDOR, CEF_PRODUCT, __version__, alert.get("rule", ""), alert.get("title", ""),
        ))
        sev = CEF_SEVERITY.get(str(alert.get("severity", "")), 5)
        ext: list[tuple[str, Any]] = [
            ("rt", _ms(alert.get("detected_at"))), ("start", _ms(alert.get("first_seen"))),
            ("end", _ms(alert.get("last_seen"))), ("externalId", alert.get("id")), ("cat", alert.get("category")),
            ("cnt", alert.get("count")), ("msg", (alert.get("description") or "")[:1023]),
            ("cs1Label", "namespace"), ("cs1", entity.get("namespace")),
            ("cs2Label", "pod"), ("cs2", entity.get("pod")),
            ("cs3Label", "workload"), ("cs3", entity.get("workload")),
            ("cs4Label", "mitre"), ("cs4", ",".join(alert.get("mitre") or [])),
            ("cs5Label", "peers"), ("cs5", ", ".join(f"{p.get('peer')} ({p.get('count')})" for p in top)[:4000]),
            ("cs6Label", "remediation"), ("cs6", (alert.get("remediation") or "")[:4000]),
            ("cn1Label", "distinctPeers"), ("cn1", (alert.get("peers") or {}).get("distinct")),
        ]
        if entity.get("node") or entity.get("name"):
            ext.append(("dvchost" if entity.get("node") else "duser", entity.get("node") or entity.get("name")))
        # A label whose value is absent is dropped with it.
        labels_with_value = {k for k, v in ext if not k.endswith("Label") and v not in (None, "")}
        parts = [f"{k}={cef_ext_escape(str(v))}" for k, v in ext
                 if v not in (None, "") and (not k.endswith("Label") or k[:-5] in labels_with_value)]
        return f"CEF:0|{header}|{sev}|{' '.join(parts)}"

    # -- transport

    def _connect(self) -> socket.socket:
        kind = socket.SOCK_DGRAM if self.transport == "udp" else socket.SOCK_STREAM
        try:
            infos = socket.getaddrinfo(self.host, self.port, type=kind)
        except OSError as exc:
            raise SinkError(f"syslog {self.host}:{self.port}: cannot resolve: {exc}") from None
        last: OSError | None = None
        for family, stype, proto, _, addr in infos:
            s = socket.socket(family, stype, proto)
            s.settimeout(self.timeout_s)
            try:
                s.connect(addr)  # UDP too: a refused port then shows up as an error on send
                return s
            except OSError as exc:
                last = exc
                s.close()
        raise SinkError(f"syslog {self.transport}://{self.host}:{self.port}: cannot connect: {last}")

    @staticmethod
    def _peer_closed(s: socket.socket) -> bool:
        """True when the receiver has closed (or reset) the connection we hold."""
        try:
            readable, _, _ = select.select([s], [], [], 0)
            if not readable:
                return False
            # Receivers do not talk back, so anything readable is an EOF or an error.
            return s.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except (BlockingIOError, InterruptedError, TimeoutError):
            return False
        except OSError:
            return True

    def send(self, alerts: list[dict[str, Any]]) -> None:
        msgs = [self.format(a) for a in alerts]
        if self._sock is not None and self.transport == "tcp" and self._peer_closed(self._sock):
            self._drop_socket()
        if self._sock is None:
            self._sock = self._connect()
        try:
            if self.transport == "tcp":
                self._sock.sendall(b"".join(b"%d %s" % (len(m), m) for m in msgs))
            else:
                for m in msgs:
                    self._sock.send(m)
        except OSError as exc:
            self._drop_socket()
            raise SinkError(f"syslog {self.transport}://{self.host}:{self.port}: {exc}") from None

    def _drop_socket(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None

    def close(self) -> None:
        self._drop_socket()
