"""The engine's policy model: one representation for NetworkPolicy and Cilium rules.

Loading (load.py) translates each object into `Policy` values with all defaulting applied
(policyTypes, protocol TCP, namespace scoping of Cilium selectors), so evaluation never needs to
know the source format except where the reference says the semantics differ (``Policy.flavour``).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Literal

from flowtrail.policy.selectors import FQDNSelector, LabelSelector

Direction = Literal["ingress", "egress"]
Flavour = Literal["k8s", "cilium"]
IPNet = ipaddress.IPv4Network | ipaddress.IPv6Network

KIND_NP = "NetworkPolicy"
KIND_CNP = "CiliumNetworkPolicy"
KIND_CCNP = "CiliumClusterwideNetworkPolicy"

# Cilium entities (policy-reference.md §2.4)
ENTITIES = ("all", "world", "world-ipv4", "world-ipv6", "cluster", "host", "init", "ingress", "unmanaged",
            "remote-node", "health", "none", "kube-apiserver")


@dataclass(frozen=True)
class PolicyRef:
    kind: str
    namespace: str  # "" for CiliumClusterwideNetworkPolicy
    name: str
    source: str  # file (and document index) it came from

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}" if self.namespace else f"{self.kind} {self.name}"

    def to_json(self) -> dict[str, str]:
        return {"kind": self.kind, "namespace": self.namespace, "name": self.name}


# ---- peers ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class K8sPeer:
    """A NetworkPolicyPeer: pod/namespace selectors (namespace None = the policy's namespace)."""

    pod: LabelSelector | None
    namespace: LabelSelector | None
    policy_ns: str

    def describe(self) -> str:
        parts = []
        if self.namespace is not None:
            parts.append(f"namespaceSelector {self.namespace.describe()}")
        if self.pod is not None:
            parts.append(f"podSelector {self.pod.describe()}")
        if self.namespace is None:
            parts.append(f"(namespace {self.policy_ns})")
        return " and ".join(parts[:2]) + (" " + parts[2] if len(parts) > 2 else "")


@dataclass(frozen=True)
class CIDRPeer:
    """ipBlock, fromCIDR/toCIDR or a CIDRSet entry: ``cidr`` minus ``except``."""

    cidr: IPNet
    excepts: tuple[IPNet, ...] = ()

    def contains(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        if ip.version != self.cidr.version or ip not in self.cidr:
            return False
        return not any(ip in e for e in self.excepts)

    def describe(self) -> str:
        if self.excepts:
            return f"cidr {self.cidr} except {', '.join(str(e) for e in self.excepts)}"
        return f"cidr {self.cidr}"


@dataclass(frozen=True)
class EndpointPeer:
    """A Cilium endpoint selector, with namespace scoping already added."""

    selector: LabelSelector

    def describe(self) -> str:
        return f"endpoints {self.selector.describe()}"


@dataclass(frozen=True)
class EntityPeer:
    entity: str

    def describe(self) -> str:
        return f"entity {self.entity}"


@dataclass(frozen=True)
class FQDNPeer:
    selector: FQDNSelector

    def describe(self) -> str:
        return f"fqdn {self.selector.describe()}"


@dataclass(frozen=True)
class ServicePeer:
    """toServices: resolved against the inventory's Services at evaluation time."""

    name: str | None
    namespace: str
    selector: LabelSelector | None  # k8sServiceSelector.selector

    def describe(self) -> str:
        if self.name is not None:
            return f"service {self.namespace}/{self.name}"
        return f"services {self.selector.describe() if self.selector else '{}'} in {self.namespace or 'any namespace'}"


Peer = K8sPeer | CIDRPeer | EndpointPeer | EntityPeer | FQDNPeer | ServicePeer


# ---- ports and L7 -------------------------------------------------------------------------------

@dataclass(frozen=True)
class PortSpec:
    """One port entry. protocol None = any of TCP/UDP/SCTP (Cilium ANY); port None = all ports."""

    protocol: str | None
    port: int | str | None
    end_port: int | None = None

    def describe(self) -> str:
        proto = self.protocol or "ANY"
        if self.port is None:
            return f"all/{proto}"
        if self.end_port is not None:
            return f"{self.port}-{self.end_port}/{proto}"
        return f"{self.port}/{proto}"


@dataclass(frozen=True)
class HTTPRule:
    method: str | None = None
    path: str | None = None
    host: str | None = None
    headers: tuple[tuple[str, str | None], ...] = ()  # (name, required value or None = presence)

    def compiled(self) -> tuple[re.Pattern[str] | None, re.Pattern[str] | None, re.Pattern[str] | None]:
        return (_rx(self.method), _rx(self.path), _rx(self.host))

    def describe(self) -> str:
        parts = [f"method {self.method}" if self.method else "any method",
                 f"path {self.path}" if self.path else "any path"]
        if self.host:
            parts.append(f"host {self.host}")
        for name, value in self.headers:
            parts.append(f"header {name}: {value}" if value is not None else f"header {name}")
        return " ".join(parts)


def _rx(s: str | None) -> re.Pattern[str] | None:
    return re.compile(s) if s else None


@dataclass(frozen=True)
class L7Rules:
    http: tuple[HTTPRule, ...] | None = None
    dns: tuple[FQDNSelector, ...] | None = None
    # kinds we recognise but cannot evaluate from flows (kafka, l7proto); noted in verdicts
    other: str | None = None


@dataclass(frozen=True)
class PortRule:
    ports: tuple[PortSpec, ...]  # empty = all ports of any protocol
    l7: L7Rules | None = None


@dataclass(frozen=True)
class ICMPSpec:
    family: str  # IPv4 | IPv6
    type: int


# ---- rules and policies ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Rule:
    policy: PolicyRef
    direction: Direction
    deny: bool
    path: str  # e.g. spec.ingress[0], specs[1].egressDeny[2]
    peers: tuple[Peer, ...] | None  # None = any peer
    ports: tuple[PortRule, ...] | None  # None = any port/protocol (incl. ICMP)
    icmps: tuple[ICMPSpec, ...] = ()
    flavour: Flavour = "cilium"

    def __str__(self) -> str:
        return f"{self.policy} {self.path}"

    def describe(self) -> str:
        peer = "any peer" if self.peers is None else (
            " or ".join(p.describe() for p in self.peers) if self.peers else "no peer")
        if self.ports is None and not self.icmps:
            port = "any port"
        else:
            specs = [s.describe() for pr in (self.ports or ()) for s in (pr.ports or (PortSpec(None, None),))]
            specs += [f"icmp type {i.type}/{i.family}" for i in self.icmps]
            port = ", ".join(specs)
        return f"{peer}; {port}"

    def to_json(self) -> dict[str, object]:
        return {**self.policy.to_json(), "rule": self.path, "deny": self.deny, "matches": self.describe()}


@dataclass(frozen=True)
class Subject:
    """Which endpoints a policy applies to."""

    selector: LabelSelector
    namespace: str | None  # None = any namespace (clusterwide)

    def describe(self) -> str:
        scope = f"in namespace {self.namespace}" if self.namespace is not None else "in all namespaces"
        return f"{self.selector.describe()} {scope}"


@dataclass(frozen=True)
class Policy:
    ref: PolicyRef
    flavour: Flavour
    subject: Subject
    # whether selecting an endpoint puts that direction into default deny
    isolates: frozenset[str]
    rules: tuple[Rule, ...] = field(default=())
    notes: tuple[str, ...] = ()
