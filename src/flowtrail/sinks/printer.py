"""Hubble's flow printer: the compact, dict, table and JSON formats of `hubble observe -o`.

Matches hubble/pkg/printer of Cilium v1.19.4 byte for byte for compact, dict and table (see
../shared/data/hubble-golden). Records are canonical GetFlowsResponse dicts.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from flowtrail.model import enums
from flowtrail.model.timeutil import format_ns, parse_rfc3339_ns

OUTPUT_FORMATS = ("compact", "dict", "json", "jsonpb", "table", "tab")

_RESET = "\x1b[0m"
_COLORS = {"host": "\x1b[36m", "id": "\x1b[35m", "ok": "\x1b[32m", "bad": "\x1b[31m", "warn": "\x1b[33m"}


@dataclass(frozen=True)
class PrintOptions:
    output: str = "compact"
    time_format: str = "StampMilli"
    node_name: bool = False
    ip_translation: bool = True
    color: bool = False
    policy_names: bool = False


def _paint(opts: PrintOptions, kind: str, text: str) -> str:
    return f"{_COLORS[kind]}{text}{_RESET}" if opts.color and text else text


def _enum_name(value: Any, table: dict[str, int]) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        value = 0
    names = {v: k for k, v in table.items()}
    return names.get(int(value), str(value))


def _ports(flow: dict[str, Any]) -> tuple[str, str]:
    l4 = flow.get("l4") or {}
    for proto in ("TCP", "UDP", "SCTP"):
        h = l4.get(proto)
        if h is not None:
            return str(h.get("source_port", 0)), str(h.get("destination_port", 0))
    return "", ""


def _join_host_port(host: str, port: str) -> str:
    if ":" in host:
        return f"[{host}]:{port}"
    return f"{host}:{port}"


def _hostname(opts: PrintOptions, ip: str, port: str, ns: str, pod: str, svc: str, names: list[str]) -> str:
    host = ip
    if opts.ip_translation:
        if pod:
            host = f"{ns}/{pod}" if ns else pod
        elif svc:
            host = f"{ns}/{svc}" if ns else svc
        elif names:
            host = ",".join(names)
    if port and port != "0":
        return _join_host_port(host, port)
    return host


def host_names(flow: dict[str, Any], opts: PrintOptions) -> tuple[str, str]:
    ip = flow.get("IP")
    if ip is None:
        eth = flow.get("ethernet")
        if eth is not None:
            return eth.get("source", ""), eth.get("destination", "")
        return "", ""
    src_ep = flow.get("source") or {}
    dst_ep = flow.get("destination") or {}
    src_ns, src_pod = src_ep.get("namespace", ""), src_ep.get("pod_name", "")
    dst_ns, dst_pod = dst_ep.get("namespace", ""), dst_ep.get("pod_name", "")
    src_svc = dst_svc = ""
    if flow.get("source_service") is not None:
        src_ns = flow["source_service"].get("namespace", "")
        src_svc = flow["source_service"].get("name", "")
    if flow.get("destination_service") is not None:
        dst_ns = flow["destination_service"].get("namespace", "")
        dst_svc = flow["destination_service"].get("name", "")
    sport, dport = _ports(flow)
    src = _hostname(opts, ip.get("source", ""), sport, src_ns, src_pod, src_svc, flow.get("source_names") or [])
    dst = _hostname(opts, ip.get("destination", ""), dport, dst_ns, dst_pod, dst_svc,
                    flow.get("destination_names") or [])
    return src, dst


def fmt_identity(identity: int) -> str:
    if identity < 256:
        return f"({enums.RESERVED_IDENTITY_NAMES.get(identity, str(identity))})"
    return f"(ID:{identity})"


def flow_type(flow: dict[str, Any]) -> str:
    l7 = flow.get("l7")
    if l7 is not None:
        l7type = _enum_name(l7.get("type"), enums.L7_FLOW_TYPE).lower()
        if "http" in l7:
            return f"http-{l7type}"
        if "dns" in l7:
            return f"dns-{l7type} {l7['dns'].get('observation_source', '')}"
        if "kafka" in l7:
            return f"kafka-{l7type}"
        return f"l7-{l7type}"
    et = flow.get("event_type") or {}
    typ = int(et.get("type", 0) or 0)
    sub = int(et.get("sub_type", 0) or 0)
    if typ == enums.EVENT_TRACE:
        return enums.TRACE_SUBTYPE_BY_NUMBER.get(sub, str(sub))
    if typ == enums.EVENT_DROP:
        return enums.DROP_REASON_TEXT.get(sub, str(sub))
    if typ == enums.EVENT_POLICY_VERDICT:
        match = enums.POLICY_MATCH_TYPE.get(int(flow.get("policy_match_type", 0) or 0), "unknown")
        direction = _enum_name(flow.get("traffic_direction"), enums.TRAFFIC_DIRECTION)
        return f"policy-verdict:{match} {direction}"
    if typ == enums.EVENT_CAPTURE:
        return _enum_name(flow.get("debug_capture_point"), enums.DEBUG_CAPTURE_POINT)
    if typ == enums.EVENT_TRACE_SOCK:
        point = _enum_name(flow.get("sock_xlate_point"), enums.SOCKET_TRANSLATION_POINT)
        return {
            "SOCK_XLATE_POINT_PRE_DIRECTION_FWD": "pre-xlate-fwd",
            "SOCK_XLATE_POINT_POST_DIRECTION_FWD": "post-xlate-fwd",
            "SOCK_XLATE_POINT_PRE_DIRECTION_REV": "pre-xlate-rev",
            "SOCK_XLATE_POINT_POST_DIRECTION_REV": "post-xlate-rev",
        }.get(point, "UNKNOWN")
    return "UNKNOWN"


def verdict_text(flow: dict[str, Any], opts: PrintOptions) -> str:
    verdict = _enum_name(flow.get("verdict"), enums.VERDICT)
    et = flow.get("event_type") or {}
    text = verdict
    kind = "ok" if verdict in ("FORWARDED", "REDIRECTED") else "bad" if verdict in ("DROPPED", "ERROR") else "warn"
    if int(et.get("type", 0) or 0) == enums.EVENT_POLICY_VERDICT:
        text = {"FORWARDED": "ALLOWED", "REDIRECTED": "ALLOWED", "DROPPED": "DENIED", "ERROR": "DENIED",
                "AUDIT": "AUDITED"}.get(verdict, verdict)
        if opts.policy_names:
            pols = _policy_names(flow, verdict)
            if pols:
                text += " BY " + ", ".join(pols)
    return _paint(opts, kind, text)


def _policy_names(flow: dict[str, Any], verdict: str) -> list[str]:
    denied = verdict in ("DROPPED", "ERROR")
    direction = _enum_name(flow.get("traffic_direction"), enums.TRAFFIC_DIRECTION)
    prefix = "egress" if direction == "EGRESS" else "ingress"
    key = f"{prefix}_{'denied' if denied else 'allowed'}_by"
    out = []
    for p in flow.get(key) or []:
        name = p.get("name", "")
        if p.get("namespace"):
            name = f"{p['namespace']}/{name}"
        out.append(f"{name} ({p.get('kind', '')})")
    return out


def summary(flow: dict[str, Any]) -> str:
    parts = ""
    trace = (flow.get("ip_trace_id") or {}).get("trace_id")
    if trace and int(trace) > 0:
        parts = f"IP Trace ID: {trace}; "
    parts += flow.get("Summary", "")
    auth = flow.get("auth_type")
    if auth and _enum_name(auth, enums.AUTH_TYPE) != "DISABLED":
        parts += f"; Auth: {_enum_name(auth, enums.AUTH_TYPE)}"
    return parts


def _time(value: str | None, opts: PrintOptions) -> str:
    try:
        return _time_text(value, opts)
    except (ValueError, OverflowError, OSError):
        # years 1 and 9999 can leave datetime's range in the local zone; never fail a line on it
        return format_ns(None, opts.time_format)


def _time_text(value: str | None, opts: PrintOptions) -> str:
    # Flows come many to the second: the calendar work is done once per second and layout, and
    # only the fraction is formatted per flow (for the protojson spelling, UTC with 'Z').
    if value and len(value) >= 20 and value[-1] == "Z" and value[19] in ".Z" and value[10] == "T":
        frac = value[20:-1]
        secs = _utc_seconds(value[:19])
        if secs is not None and ((frac.isdigit() and len(frac) <= 9) or not frac):
            head, width, tail = _second_parts(secs, opts.time_format)
            if not width:
                return head + tail
            nanos = int(frac.ljust(9, "0")) if frac else 0
            if width == 9:
                digits = f"{nanos:09d}".rstrip("0")
                return f"{head}.{digits}{tail}" if digits else head + tail
            return f"{head}.{nanos // 10 ** (9 - width):0{width}d}{tail}"
    return format_ns(parse_rfc3339_ns(value), opts.time_format)


@functools.lru_cache(maxsize=1 << 16)
def _utc_seconds(text: str) -> int | None:
    ns = parse_rfc3339_ns(text + "Z")
    return None if ns is None else ns // 10**9


# digits of the fraction each layout prints (RFC3339Nano: up to 9, trailing zeros trimmed)
_FRACTION_DIGITS = {"StampMilli": 3, "RFC3339Milli": 3, "RFC3339Micro": 6, "RFC3339Nano": 9}


@functools.lru_cache(maxsize=1 << 16)
def _second_parts(secs: int, layout: str) -> tuple[str, int, str]:
    """A whole second in ``layout`` and the local zone, split around its fraction: (text before
    it, digits of fraction, text after it)."""
    width = _FRACTION_DIGITS.get(layout, 0)
    whole = format_ns(secs * 10**9, layout)
    if not width:
        return whole, 0, ""
    if layout == "RFC3339Nano":  # a zero fraction is not printed at all: split before the zone
        zone = 1 if whole.endswith("Z") else 6
        return whole[:-zone], 9, whole[-zone:]
    cut = whole.rindex(".")
    return whole[:cut], width, whole[cut + 1 + width :]


def _identities(flow: dict[str, Any], opts: PrintOptions) -> tuple[str, str]:
    s = fmt_identity(int((flow.get("source") or {}).get("identity", 0) or 0))
    d = fmt_identity(int((flow.get("destination") or {}).get("identity", 0) or 0))
    return _paint(opts, "id", s), _paint(opts, "id", d)


def _numeric_hosts(flow: dict[str, Any], opts: PrintOptions) -> tuple[str, str]:
    src, dst = host_names(flow, opts)
    return _paint(opts, "host", src), _paint(opts, "host", dst)


def _lost(env: dict[str, Any]) -> tuple[str, int, int]:
    lost = env.get("lost_events") or {}
    source = _enum_name(lost.get("source"), enums.LOST_EVENT_SOURCE)
    return source, int(lost.get("cpu", 0) or 0), int(lost.get("num_events_lost", 0) or 0)


def format_compact(env: dict[str, Any], opts: PrintOptions) -> str:
    if "lost_events" in env:
        source, cpu, num = _lost(env)
        return f"{_time(env.get('time'), opts)} EVENTS LOST: {source} CPU({cpu}) {num}\n"
    flow = env["flow"]
    src, dst = _numeric_hosts(flow, opts)
    sid, did = _identities(flow, opts)
    node = f" [{flow.get('node_name', '')}]" if opts.node_name else ""
    is_reply = flow.get("is_reply")
    arrow = "->"
    if is_reply is None:
        arrow = "<>"
    elif is_reply:
        arrow = "<-"
        src, dst, sid, did = dst, src, did, sid
    return (
        f"{_time(flow.get('time'), opts)}{node}: {src} {sid} {arrow} {dst} {did} "
        f"{flow_type(flow)} {verdict_text(flow, opts)} ({summary(flow)})\n"
    )


def format_dict(env: dict[str, Any], opts: PrintOptions) -> str:
    if "lost_events" in env:
        source, cpu, num = _lost(env)
        rows = [("TIMESTAMP", _time(env.get("time"), opts))]
        if opts.node_name:
            rows.append(("NODE", env.get("node_name", "")))
        rows += [("SOURCE", source), ("TYPE", "EVENTS LOST"), ("VERDICT", "-"), ("SUMMARY", f"CPU({cpu}) - {num}")]
    else:
        flow = env["flow"]
        src, dst = _numeric_hosts(flow, opts)
        rows = [("TIMESTAMP", _time(flow.get("time"), opts))]
        if opts.node_name:
            rows.append(("NODE", flow.get("node_name", "")))
        rows += [
            ("SOURCE", src),
            ("DESTINATION", dst),
            ("TYPE", flow_type(flow)),
            ("VERDICT", verdict_text(flow, opts)),
            ("SUMMARY", summary(flow)),
        ]
    return "".join(f"{k:>11}: {v}\n" for k, v in rows)


def table_cells(env: dict[str, Any], opts: PrintOptions) -> list[str]:
    if "lost_events" in env:
        source, cpu, num = _lost(env)
        cells = [_time(env.get("time"), opts)]
        if opts.node_name:
            cells.append(env.get("node_name", ""))
        return [*cells, source, "", "EVENTS LOST", "-", f"CPU({cpu}) - {num}"]
    flow = env["flow"]
    src, dst = _numeric_hosts(flow, opts)
    cells = [_time(flow.get("time"), opts)]
    if opts.node_name:
        cells.append(flow.get("node_name", ""))
    return [*cells, src, dst, flow_type(flow), verdict_text(flow, opts), summary(flow)]


def table_header(opts: PrintOptions) -> list[str]:
    head = ["TIMESTAMP"]
    if opts.node_name:
        head.append("NODE")
    return [*head, "SOURCE", "DESTINATION", "TYPE", "VERDICT", "SUMMARY"]


def tabulate(rows: Iterable[list[str]], padding: int = 3) -> Iterator[str]:
    """Go text/tabwriter with minwidth 2, padding 3: every column but the last padded to its widest cell."""
    materialised = list(rows)
    if not materialised:
        return
    ncols = max(len(r) for r in materialised)
    widths = [0] * ncols
    for r in materialised:
        for i, cell in enumerate(r[:-1]):
            widths[i] = max(widths[i], _display_width(cell))
    for r in materialised:
        out = []
        for i, cell in enumerate(r):
            if i < len(r) - 1:
                out.append(cell + " " * (max(widths[i] + padding, 2) - _display_width(cell)))
            else:
                out.append(cell)
        yield "".join(out) + "\n"


def _display_width(s: str) -> int:
    if "\x1b" not in s:
        return len(s)
    import re

    return len(re.sub(r"\x1b\[[0-9;]*m", "", s))


def is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
