"""IP address filters: source_ip, destination_ip, source_ip_xlated (addresses or CIDRs)."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Any

from flowtrail.filters.base import Columns, FilterError, Mask, Predicate, per_unique, quoted, str_list

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def first_network(ip: str | None, nets: Sequence[Network]) -> Network | None:
    """The first of `nets` holding address `ip` (same family); None for a missing or malformed
    address. Shared by FlowFilter IPs, rule exceptions and threat-intel CIDRs."""
    if not ip or not nets:
        return None
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return None
    return next((n for n in nets if addr.version == n.version and addr in n), None)


def _ip_predicate(field: str, values: Any, path: str) -> Predicate:
    exact: set[str] = set()
    nets: list[Network] = []
    for v in str_list(field, values):
        try:
            if "/" in v:
                nets.append(ipaddress.ip_network(v, strict=False))
            else:
                ipaddress.ip_address(v)
                exact.add(v)
        except ValueError as exc:
            raise FilterError(f"{field}: invalid IP address or CIDR {v!r}") from exc

    def match(ip: str | None) -> bool:
        if not ip:
            return False
        if ip in exact:
            return True
        return first_network(ip, nets) is not None

    def fn(cols: Columns) -> Mask:
        return per_unique(cols.get(path), match)

    needles = None if nets else quoted(sorted(exact))
    return Predicate(field, (path,), fn, needles)


def source_ip(values: Any) -> Predicate:
    return _ip_predicate("source_ip", values, "IP.source")


def destination_ip(values: Any) -> Predicate:
    return _ip_predicate("destination_ip", values, "IP.destination")


def source_ip_xlated(values: Any) -> Predicate:
    return _ip_predicate("source_ip_xlated", values, "IP.source_xlated")
