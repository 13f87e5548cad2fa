"""Threat-intelligence feeds from files: one IP, CIDR or domain per line, `#` comments.

A domain matches itself and every name below it (`evil.example` matches `a.evil.example`).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from flowtrail.filters.ip import first_network

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class IntelError(ValueError):
    pass


@dataclass
class Intel:
    ips: dict[str, str] = field(default_factory=dict)  # indicator → source "file:line"
    nets: list[tuple[Network, str]] = field(default_factory=list)
    domains: dict[str, str] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, paths: Iterable[str | Path]) -> Intel:
        intel = cls()
        for path in paths:
            try:
                text = Path(path).read_text(errors="replace")
            except OSError as exc:
                raise IntelError(f"{path}: {exc.strerror}") from None
            for no, raw in enumerate(text.splitlines(), 1):
                intel.add(raw.split("#", 1)[0].strip(), f"{path}:{no}")
        return intel

    def add(self, item: str, where: str) -> None:
        if not item:
            return
        item = item.split()[0].lower().rstrip(".")
        try:
            if "/" in item:
                net = ipaddress.ip_network(item, strict=False)
                if net.num_addresses == 1:
                    self.ips[str(net.network_address)] = where
                else:
                    self.nets.append((net, where))
                return
            self.ips[str(ipaddress.ip_address(item))] = where
            return
        except ValueError:
            pass
        if "." in item and all(part and len(part) < 64 for part in item.split(".")):
            self.domains[item] = where
        else:
            self.skipped.append(f"{where}: not an IP, CIDR or domain: {item!r}")

    def __bool__(self) -> bool:
        return bool(self.ips or self.nets or self.domains)

    def match_ip(self, ip: str | None) -> str:
        """The matching indicator, or ""."""
        if not ip:
            return ""
        if ip in self.ips:
            return ip
        net = first_network(ip, [n for n, _ in self.nets])
        return "" if net is None else str(net)

    def match_domain(self, name: str | None) -> str:
        if not name or not self.domains:
            return ""
        name = name.rstrip(".").lower()
        while True:
            if name in self.domains:
                return name
            dot = name.find(".")
            if dot < 0:
                return ""
            name = name[dot + 1:]
