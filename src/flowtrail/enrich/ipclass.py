"""IP classes: pod, service, node, private, public — from configured CIDRs, per distinct address.

World and kube-apiserver come from Hubble's reserved labels on the endpoint (see features.py), not
from addresses: identities alone are not reliable (the reference lists kube-apiserver with
identity 1, 7 and 16777217).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class IPClasses:
    pod_cidrs: tuple[Network, ...] = ()
    service_cidrs: tuple[Network, ...] = ()
    node_ips: frozenset[str] = field(default_factory=frozenset)
    apiserver_ips: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def from_config(cls, pod: Sequence[str] = (), service: Sequence[str] = (), nodes: Sequence[str] = (),
                    apiserver: Sequence[str] = ()) -> IPClasses:
        return cls(tuple(ipaddress.ip_network(c, strict=False) for c in pod),
                   tuple(ipaddress.ip_network(c, strict=False) for c in service),
                   frozenset(nodes), frozenset(apiserver))

    def classify(self, ip: str | None) -> str:
        return _classify(self, ip)


@lru_cache(maxsize=100_000)
def _classify(cls: IPClasses, ip: str | None) -> str:
    if not ip:
        return ""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return "invalid"
    if ip in cls.apiserver_ips:
        return "apiserver"
    if ip in cls.node_ips:
        return "node"
    if any(addr in n for n in cls.pod_cidrs):
        return "pod"
    if any(addr in n for n in cls.service_cidrs):
        return "service"
    if addr.is_loopback:
        return "loopback"
    if addr.is_link_local:
        return "link-local"
    if addr.is_private or addr.is_reserved or addr.is_multicast or addr.is_unspecified:
        return "private"
    return "public"
