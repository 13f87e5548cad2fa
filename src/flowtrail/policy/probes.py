"""Probes for `flowtrail policy check`: a connection described by names, resolved to endpoints."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flowtrail.policy.endpoints import Inventory, parse_ip
from flowtrail.policy.evaluate import ICMP_PROTOCOLS, Connection, http_request

PROTOCOLS = ("TCP", "UDP", "SCTP", "ICMP", "ICMPV4", "ICMPV6")


class ProbeError(ValueError):
    pass


@dataclass(frozen=True)
class Probe:
    src: str
    dst: str
    protocol: str
    port: int | None
    http: Mapping[str, Any] | None = None
    fqdn: str | None = None
    icmp_type: int | None = None
    expected: str | None = None
    where: str = ""


def parse_probe(obj: Any, where: str) -> Probe:
    if not isinstance(obj, dict):
        raise ProbeError(f"{where}: a probe must be a JSON object")
    for k in ("from", "to"):
        if not isinstance(obj.get(k), str) or not obj[k]:
            raise ProbeError(f"{where}: `{k}` is required (NAMESPACE/POD or an IP address)")
    proto = str(obj.get("protocol") or "TCP").upper()
    if proto not in PROTOCOLS:
        raise ProbeError(f"{where}: unknown protocol {obj.get('protocol')!r} (one of {', '.join(PROTOCOLS)})")
    port = obj.get("port")
    if port is not None:
        try:
            port = int(port)
        except (TypeError, ValueError):
            raise ProbeError(f"{where}: port must be a number") from None
        if not 0 <= port <= 65535:
            raise ProbeError(f"{where}: port {port} out of range")
    elif proto not in ICMP_PROTOCOLS:
        raise ProbeError(f"{where}: `port` is required for {proto}")
    http = obj.get("http")
    if http is not None and not isinstance(http, dict):
        raise ProbeError(f"{where}: `http` must be an object with method and path")
    exp = obj.get("expected")
    if exp is not None and exp not in ("allow", "deny"):
        raise ProbeError(f"{where}: `expected` must be allow or deny")
    icmp = obj.get("icmp_type")
    return Probe(obj["from"], obj["to"], proto, port, http, obj.get("fqdn") or None,
                 int(icmp) if icmp is not None else None, exp, where)


def read_probes(path: str) -> Iterator[Probe]:
    """JSON lines of probes; also a JSON array, or a conformance case file (its ``probes``)."""
    import sys
    text = sys.stdin.read() if path == "-" else Path(path).read_text()
    stripped = text.lstrip()
    if stripped.startswith("{") or stripped.startswith("["):
        try:
            whole = json.loads(text)
        except json.JSONDecodeError:
            whole = None
        if isinstance(whole, dict) and isinstance(whole.get("probes"), list):
            for i, p in enumerate(whole["probes"]):
                yield parse_probe(p, f"{path} probes[{i}]")
            return
        if isinstance(whole, list):
            for i, p in enumerate(whole):
                yield parse_probe(p, f"{path} [{i}]")
            return
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ProbeError(f"{path}:{n}: not JSON: {exc.msg}") from None
        yield parse_probe(obj, f"{path}:{n}")


def connection(probe: Probe, inv: Inventory) -> Connection:
    """Resolve a probe's endpoints; addresses of nodes become host/remote-node relative to the pod."""
    src_ip, dst_ip = parse_ip(probe.src), parse_ip(probe.dst)
    src = inv.resolve(probe.src) if src_ip is None else None
    dst = inv.resolve(probe.dst) if dst_ip is None else None
    if src is None:
        src = inv.resolve(probe.src, dst.node if dst else None)
    if dst is None:
        dst = inv.resolve(probe.dst, src.node)
    proto = {"ICMPV4": "ICMP", "ICMPV6": "ICMPv6"}.get(probe.protocol, probe.protocol)
    names = frozenset([probe.fqdn]) if probe.fqdn else frozenset()
    return Connection(src, dst, proto, probe.port, probe.icmp_type, http_request(probe.http),
                      probe.fqdn if probe.port == 53 else None, names)
