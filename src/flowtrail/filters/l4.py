"""Layer-4 filters: protocol, source/destination port, TCP flags."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from flowtrail.filters.base import Columns, FilterError, Mask, Predicate, digits, str_list, to_mask
from flowtrail.filters.golang import NumError, parse_uint, quote, to_lower
from flowtrail.model.schema import TCP_FLAGS
from flowtrail.util import compute as pc

# protocol name → (paths that must be present, needles)
_PROTOCOLS: dict[str, tuple[tuple[str, ...], tuple[bytes, ...]]] = {
    "tcp": (("l4.TCP",), (b'"TCP"',)),
    "udp": (("l4.UDP",), (b'"UDP"',)),
    "sctp": (("l4.SCTP",), (b'"SCTP"',)),
    "icmp": (("l4.ICMPv4", "l4.ICMPv6"), (b'"ICMPv4"', b'"ICMPv6"')),
    "icmpv4": (("l4.ICMPv4",), (b'"ICMPv4"',)),
    "icmpv6": (("l4.ICMPv6",), (b'"ICMPv6"',)),
    "vrrp": (("l4.VRRP",), (b'"VRRP"',)),
    "igmp": (("l4.IGMP",), (b'"IGMP"',)),
    "dns": (("l7.dns",), (b'"dns"',)),
    "http": (("l7.http",), (b'"http"',)),
    "kafka": (("l7.kafka",), (b'"kafka"',)),
}
_PORT_L4 = ("TCP", "UDP", "SCTP")


def protocol(values: Any) -> Predicate:
    raw = str_list("protocol", values)
    wanted = [to_lower(v) for v in raw]
    for w, r in zip(wanted, raw, strict=True):
        if w not in _PROTOCOLS:
            raise FilterError(f"invalid protocol filter: unknown protocol: {quote(r)}")
    paths = tuple(sorted({p for w in wanted for p in _PROTOCOLS[w][0]}))
    needles = tuple(sorted({n for w in wanted for n in _PROTOCOLS[w][1]}))

    def fn(cols: Columns) -> Mask:
        out = np.zeros(cols.n, dtype=bool)
        for p in paths:
            out |= cols.valid(p)
        return out

    return Predicate("protocol", paths, fn, needles)


def port_column(cols: Columns, side: str) -> tuple[np.ndarray, Mask]:
    """(port, has_port) per row: the side's port of a TCP, UDP or SCTP header; 0 when unset."""
    port = np.zeros(cols.n, dtype=np.int64)
    has = np.zeros(cols.n, dtype=bool)
    for l4 in _PORT_L4:
        valid = cols.valid(f"l4.{l4}") & ~has
        vals = pc.fill_null(cols.get(f"l4.{l4}.{side}_port"), 0).to_numpy(zero_copy_only=False)
        port = np.where(valid, vals, port)
        has |= valid
    return port, has


def _port_predicate(side: str, values: Any) -> Predicate:
    field = f"{side}_port"
    ports: list[int] = []
    for v in str_list(field, values):
        try:
            ports.append(parse_uint(v, 10, 16))
        except NumError as exc:
            raise FilterError(f"invalid {side} port filter: invalid port {quote(v)}: {exc}") from None
    paths = tuple(f"l4.{l4}" for l4 in _PORT_L4)

    def fn(cols: Columns) -> Mask:
        port, has = port_column(cols, side)
        return has & np.isin(port, ports)

    needles = None if 0 in ports else digits(ports)
    return Predicate(field, paths, fn, needles)


def source_port(values: Any) -> Predicate:
    return _port_predicate("source", values)


def destination_port(values: Any) -> Predicate:
    return _port_predicate("destination", values)


def tcp_flags(values: Any) -> Predicate:
    if not isinstance(values, list) or not all(isinstance(v, dict) for v in values):
        raise FilterError("tcp_flags: expected a list of flag objects")
    entries: list[list[str]] = []
    for v in values:
        unknown = set(v) - set(TCP_FLAGS)
        if unknown:
            raise FilterError(f"tcp_flags: unknown flag(s) {sorted(unknown)}")
        entries.append([k for k, on in v.items() if on is True])

    def fn(cols: Columns) -> Mask:
        has_flags = cols.valid("l4.TCP.flags")
        out = np.zeros(cols.n, dtype=bool)
        for flags in entries:
            m = has_flags.copy()
            for f in flags:
                m &= to_mask(cols.get(f"l4.TCP.flags.{f}"))
            out |= m
        return out

    needles: tuple[bytes, ...] | None = tuple(f'"{flags[0]}"'.encode() if flags else b'"flags"' for flags in entries)
    return Predicate("tcp_flags", ("l4.TCP.flags",), fn, needles)


_ = pa  # re-exported type namespace for annotations in callers
