"""Verdicts: does the policy set allow a connection, and why.

Pure: no I/O. A connection is allowed when the source's egress and the destination's ingress both
allow it (policy-reference.md §1.7, §1.9); Cilium deny rules win over every allow (§2.9); replies
are not evaluated (the caller skips them). Each direction yields a `DirectionResult` naming the
rules that decided, and the `Verdict` carries a one-line explanation built from them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from flowtrail.policy.endpoints import Endpoint, Inventory
from flowtrail.policy.load import PolicySet
from flowtrail.policy.model import (
    CIDRPeer,
    Direction,
    EndpointPeer,
    EntityPeer,
    FQDNPeer,
    HTTPRule,
    K8sPeer,
    Peer,
    Policy,
    PortRule,
    PortSpec,
    Rule,
    ServicePeer,
)
from flowtrail.policy.selectors import LabelIndex, LabelSelector

CNI = Literal["kubernetes", "cilium"]
L4_PROTOCOLS = ("TCP", "UDP", "SCTP")
ICMP_PROTOCOLS = {"ICMP": "IPv4", "ICMPV4": "IPv4", "ICMPV6": "IPv6"}


@dataclass(frozen=True)
class HTTPRequest:
    method: str = ""
    path: str = ""
    host: str = ""
    headers: tuple[tuple[str, str], ...] = ()

    def describe(self) -> str:
        return f"{self.method} {self.path}".strip()


@dataclass(frozen=True)
class Connection:
    """A connection as its initiator opened it (post-DNAT destination, destination port)."""

    src: Endpoint
    dst: Endpoint
    protocol: str  # TCP, UDP, SCTP, ICMP, ICMPv6, …
    port: int | None = None
    icmp_type: int | None = None
    http: HTTPRequest | None = None
    dns_query: str | None = None  # the name asked, for a connection to a DNS server
    dst_names: frozenset[str] = frozenset()  # names the destination address was resolved from

    def describe_port(self) -> str:
        p = self.protocol.upper()
        if p in ICMP_PROTOCOLS:
            return f"{self.protocol}" + (f" type {self.icmp_type}" if self.icmp_type is not None else "")
        return f"{self.port}/{self.protocol}" if self.port is not None else self.protocol


Decision = Literal["not-applicable", "not-isolated", "allowed", "denied-by-rule", "default-deny", "node-local",
                   "self"]


@dataclass
class DirectionResult:
    direction: Direction
    subject: Endpoint
    decision: Decision
    isolated_by: list[Policy] = field(default_factory=list)
    allowed_by: list[Rule] = field(default_factory=list)
    denied_by: list[Rule] = field(default_factory=list)
    # L7 rules the allowed traffic is subject to (empty: no L7 restriction)
    l7_http: list[tuple[Rule, HTTPRule]] = field(default_factory=list)
    l7_dns: list[tuple[Rule, Any]] = field(default_factory=list)
    l7_other: list[Rule] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # a rule could not be fully evaluated (named port without container ports, unknown
    # service): the decision may differ in the cluster
    unresolved: bool = False

    @property
    def denied(self) -> bool:
        return self.decision in ("denied-by-rule", "default-deny")

    def summary(self, peer: Endpoint, conn: Connection) -> str:
        who = f"{self.direction} of {self.subject.key()}"
        d = self.decision
        if d == "not-applicable":
            return f"{self.subject.key()} is not a pod: no {self.direction} policy applies"
        if d == "self":
            return f"{who}: a pod cannot block traffic to itself"
        if d == "not-isolated":
            return f"{who}: not isolated (no policy selects it for {self.direction})"
        if d == "node-local":
            return f"{who}: traffic from its own node is always allowed"
        if d == "allowed":
            return f"{who}: allowed by " + "; ".join(f"{r} ({r.describe()})" for r in self.allowed_by)
        if d == "denied-by-rule":
            return f"{who}: denied by " + "; ".join(f"{r} ({r.describe()})" for r in self.denied_by)
        pols = ", ".join(str(p.ref) for p in self.isolated_by)
        side = "from" if self.direction == "ingress" else "to"
        return (f"{who}: isolated by {pols} and no {self.direction} rule allows {side} {peer.key()} "
                f"on {conn.describe_port()}")

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"direction": self.direction, "endpoint": self.subject.key(), "decision": self.decision}
        if self.isolated_by:
            out["isolated_by"] = [p.ref.to_json() for p in self.isolated_by]
        if self.allowed_by:
            out["allowed_by"] = [r.to_json() for r in self.allowed_by]
        if self.denied_by:
            out["denied_by"] = [r.to_json() for r in self.denied_by]
        if self.notes:
            out["notes"] = self.notes
        return out


@dataclass
class Verdict:
    allowed: bool
    connection: Connection
    egress: DirectionResult
    ingress: DirectionResult
    # where it was decided: "egress", "ingress", "l7" or None for allows
    denied_at: str | None = None
    drop_reason: str | None = None  # POLICY_DENIED (no allow) / POLICY_DENY (deny rule) / L7 reason
    l7: str | None = None  # L7 outcome text
    explanation: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        return "allow" if self.allowed else "deny"

    @property
    def uncertain(self) -> bool:
        """Some rule could not be evaluated for lack of facts (see notes)."""
        return self.egress.unresolved or self.ingress.unresolved

    def to_json(self) -> dict[str, Any]:
        c = self.connection
        out: dict[str, Any] = {
            "from": c.src.key(), "to": c.dst.key(), "protocol": c.protocol, "port": c.port,
            "verdict": self.verdict,
        }
        if c.icmp_type is not None:
            out["icmp_type"] = c.icmp_type
        if c.http is not None:
            out["http"] = {"method": c.http.method, "path": c.http.path}
        if self.denied_at:
            out["denied_at"] = self.denied_at
            out["drop_reason_desc"] = self.drop_reason
        if self.l7:
            out["l7"] = self.l7
        out["explanation"] = self.explanation
        out["egress"] = self.egress.to_json()
        out["ingress"] = self.ingress.to_json()
        if self.notes:
            out["notes"] = self.notes
        if self.uncertain:
            out["uncertain"] = True
        return out


class Evaluator:
    """Evaluates connections against one policy set under one CNI profile."""

    def __init__(self, policies: PolicySet, cni: CNI = "kubernetes", inventory: Inventory | None = None) -> None:
        self.policies = policies.policies
        self.cni: CNI = cni
        self.inventory = inventory or Inventory()
        self._subject_cache: dict[tuple[Any, ...], list[Policy]] = {}
        self._index_cache: dict[tuple[Any, ...], tuple[LabelIndex, LabelIndex]] = {}
        # direction results by everything they depend on (see _direction_key): replicas of one
        # workload share identity labels, so a replay of millions of flows evaluates each
        # (subject identity, peer identity, port) once instead of once per pod pair
        self._direction_cache: dict[tuple[Any, ...], DirectionResult] = {}
        rules = [r for p in self.policies for r in p.rules]
        peers = [pe for r in rules for pe in r.peers or ()]
        # a pod's IP only matters to ipBlock rules under the kubernetes profile (Cilium never
        # matches CIDR selectors against pods, §1.4, §2.5)
        self._pod_ip_matters = cni == "kubernetes" and any(
            isinstance(pe, CIDRPeer) and r.flavour == "k8s" for r in rules for pe in r.peers or ())
        self._uses_fqdn = any(isinstance(pe, FQDNPeer) for pe in peers)
        self._uses_named_ports = any(isinstance(s.port, str) for r in rules for pr in r.ports or ()
                                     for s in pr.ports or ())

    def _indexes(self, ep: Endpoint) -> tuple[LabelIndex, LabelIndex]:
        key = _ep_key(ep)
        hit = self._index_cache.get(key)
        if hit is None:
            full = ep.label_index()
            k8s_only = {k: [(s, v) for s, v in vals if s == "k8s"] for k, vals in full.items()}
            hit = self._index_cache[key] = (full, k8s_only)
        return hit

    def _index(self, ep: Endpoint) -> LabelIndex:
        return self._indexes(ep)[0]

    def _k8s_pod_match(self, sel: LabelSelector, ep: Endpoint) -> bool:
        """A NetworkPolicy pod selector.

        Upstream it reads the pod's labels; Cilium translates it to a ``k8s:``-sourced endpoint
        selector, so derived identity labels such as ``io.cilium.k8s.policy.cluster`` match too
        (cilium-cli's KNP manifests rely on this; policy-reference.md §2.12).
        """
        if self.cni == "kubernetes":
            return sel.matches_plain(ep.labels)
        return sel.matches_sourced(self._indexes(ep)[1])

    # ---- subjects ----

    def selecting(self, ep: Endpoint) -> list[Policy]:
        """Policies whose subject selector selects ``ep`` (pods only; host policies are not evaluated)."""
        if not ep.is_pod:
            return []
        key = _ep_key(ep)
        hit = self._subject_cache.get(key)
        if hit is not None:
            return hit
        index = self._index(ep)
        out = []
        for p in self.policies:
            s = p.subject
            if s.namespace is not None and s.namespace != ep.namespace:
                continue
            ok = self._k8s_pod_match(s.selector, ep) if p.flavour == "k8s" else s.selector.matches_sourced(index)
            if ok:
                out.append(p)
        self._subject_cache[key] = out
        return out

    # ---- verdicts ----

    def directions(self, conn: Connection) -> tuple[DirectionResult, DirectionResult] | None:
        """The source's egress and the destination's ingress result; None for a pod's traffic to
        itself, which no policy can block.

        Neither reads the connection's L7 facts (``http``, ``dns_query``): those only matter to
        `l7_allows`, so a replay evaluates the directions once for many requests.
        """
        if conn.src.is_pod and conn.dst.is_pod and _same_pod(conn.src, conn.dst):
            return None
        return (self.direction(conn.src, conn.dst, "egress", conn),
                self.direction(conn.dst, conn.src, "ingress", conn))

    def l7_allows(self, eg: DirectionResult, ig: DirectionResult, conn: Connection) -> bool:
        """Whether the L7 proxies let ``conn`` through, given directions that both allow it: the
        decision of `_l7` without its text (a replay asks once per distinct request)."""
        for res in (eg, ig):
            if res.l7_http:
                if conn.http is not None and not any(_http_matches(h, conn.http) for _, h in res.l7_http):
                    return False
            elif (res.l7_dns and conn.dns_query is not None
                  and not any(s.matches(conn.dns_query) for _, s in res.l7_dns)):
                return False
        return True

    def evaluate(self, conn: Connection) -> Verdict:
        dirs = self.directions(conn)
        if dirs is None:
            eg = DirectionResult("egress", conn.src, "self")
            ig = DirectionResult("ingress", conn.dst, "self")
            v = Verdict(True, conn, eg, ig)
            v.explanation = "allowed: a pod cannot block traffic to itself (Kubernetes docs, §1.7)"
            return v
        eg, ig = dirs
        v = Verdict(True, conn, eg, ig)
        v.notes = eg.notes + ig.notes
        # the packet meets the source's egress first, so an egress drop is what Hubble reports
        for res in (eg, ig):
            if res.denied:
                v.allowed = False
                v.denied_at = res.direction
                v.drop_reason = "POLICY_DENY" if res.decision == "denied-by-rule" else "POLICY_DENIED"
                other = ig if res is eg else eg
                v.explanation = (f"denied at {res.direction}: {res.summary(_peer(res, conn), conn)}"
                                 f" (other direction: {other.summary(_peer(other, conn), conn)})")
                return v
        l7_ok, l7_text = self._l7(eg, ig, conn)
        v.l7 = l7_text
        if not l7_ok:
            v.allowed = False
            v.denied_at = "l7"
            v.drop_reason = "L7_DENIED"
            v.explanation = f"denied by the L7 proxy: {l7_text}"
            return v
        v.explanation = f"allowed: {eg.summary(conn.dst, conn)}; {ig.summary(conn.src, conn)}"
        if l7_text:
            v.explanation += f"; {l7_text}"
        return v

    def _direction_key(self, subject: Endpoint, peer: Endpoint, d: Direction, conn: Connection) -> tuple[Any, ...]:
        """What a direction's rule matching reads: identities, not pod names (see _one_peer, _l4_matches)."""
        ip = peer.ip if (not peer.is_pod or self._pod_ip_matters) else None
        return (d, _ep_key(subject), _ep_key(peer), peer.is_pod, ip, conn.protocol, conn.port, conn.icmp_type,
                conn.dst_names if self._uses_fqdn else None,
                conn.dst.ports if self._uses_named_ports else None)

    def direction(self, subject: Endpoint, peer: Endpoint, d: Direction, conn: Connection) -> DirectionResult:
        if not subject.is_pod:
            return DirectionResult(d, subject, "not-applicable")
        key = self._direction_key(subject, peer, d, conn)
        hit = self._direction_cache.get(key)
        if hit is not None:
            # the rule lists are shared between copies and never mutated after evaluation
            return DirectionResult(d, subject, hit.decision, hit.isolated_by, hit.allowed_by, hit.denied_by,
                                   hit.l7_http, hit.l7_dns, hit.l7_other)
        res = self._direction(subject, peer, d, conn)
        # results with notes name a particular pod or rest on unresolved facts: not shared
        if not res.notes and not res.unresolved:
            self._direction_cache[key] = res
        return res

    def _direction(self, subject: Endpoint, peer: Endpoint, d: Direction, conn: Connection) -> DirectionResult:
        pols = self.selecting(subject)
        res = DirectionResult(d, subject, "not-isolated")
        res.isolated_by = [p for p in pols if d in p.isolates]
        port_rules_l7: list[tuple[Rule, PortRule | None]] = []
        for p in pols:
            for r in p.rules:
                if r.direction != d:
                    continue
                if not self._peer_matches(r, peer, conn, res):
                    continue
                matched, pr = self._l4_matches(r, conn, res)
                if not matched:
                    continue
                if r.deny:
                    res.denied_by.append(r)
                else:
                    res.allowed_by.append(r)
                    port_rules_l7.append((r, pr))
        if res.denied_by:
            res.decision = "denied-by-rule"
            return res
        if res.allowed_by:
            res.decision = "allowed" if res.isolated_by else "not-isolated"
            # an allowing entry for the port without L7 rules lets every request through (§2.8)
            if all(pr is not None and pr.l7 is not None for _, pr in port_rules_l7):
                for r, pr in port_rules_l7:
                    assert pr is not None and pr.l7 is not None
                    res.l7_http.extend((r, h) for h in pr.l7.http or ())
                    res.l7_dns.extend((r, s) for s in pr.l7.dns or ())
                    if pr.l7.other:
                        res.l7_other.append(r)
            return res
        if not res.isolated_by:
            return res
        if d == "ingress" and "host" in peer.entities:
            res.decision = "node-local"
            return res
        res.decision = "default-deny"
        return res

    # ---- L3 ----

    def _peer_matches(self, r: Rule, peer: Endpoint, conn: Connection, res: DirectionResult) -> bool:
        if r.peers is None:
            return True
        return any(self._one_peer(p, r, peer, conn, res) for p in r.peers)

    def _one_peer(self, p: Peer, r: Rule, peer: Endpoint, conn: Connection, res: DirectionResult) -> bool:
        if isinstance(p, K8sPeer):
            if not peer.is_pod:
                return False
            if p.namespace is None:
                if peer.namespace != p.policy_ns:
                    return False
            elif not p.namespace.matches_plain(self._ns_labels(peer)):
                return False
            return p.pod is None or self._k8s_pod_match(p.pod, peer)
        if isinstance(p, CIDRPeer):
            if peer.ip is None:
                return False
            # Cilium never matches CIDR selectors against pods or (by default) nodes; upstream
            # Kubernetes expects ipBlock to match pod IPs (§1.4, §2.5)
            if not (r.flavour == "k8s" and self.cni == "kubernetes"):
                in_cluster = peer.is_pod or bool(peer.entities - {"world", "unmanaged"})
                if in_cluster:
                    return False
            return p.contains(peer.ip)
        if isinstance(p, EndpointPeer):
            if peer.kind == "external" and not p.selector.uses_source("reserved"):
                return False
            return p.selector.matches_sourced(self._index(peer))
        if isinstance(p, EntityPeer):
            return p.entity in peer.all_entities()
        if isinstance(p, FQDNPeer):
            # resolved IPs inside the cluster are ignored (§2.7)
            if peer.is_pod or peer.kind == "reserved":
                return False
            return any(p.selector.matches(n) for n in conn.dst_names)
        if isinstance(p, ServicePeer):
            svcs = self.inventory.services_matching(p.name, p.namespace, p.selector)
            if not svcs:
                res.notes.append(f"{r}: {p.describe()} not found in the inventory")
                res.unresolved = True
            for s in svcs:
                if s.selector is None:
                    res.notes.append(f"{r}: service {s.namespace}/{s.name} has no selector; its endpoints are unknown")
                    res.unresolved = True
                    continue
                if peer.is_pod and peer.namespace == s.namespace and all(
                        peer.labels.get(k) == v for k, v in s.selector.items()):
                    return True
            return False
        raise TypeError(p)

    def _ns_labels(self, ep: Endpoint) -> Mapping[str, str]:
        if ep.ns_labels:
            return ep.ns_labels
        return self.inventory.ns_labels(ep.namespace or "")

    # ---- L4 ----

    def _l4_matches(self, r: Rule, conn: Connection, res: DirectionResult) -> tuple[bool, PortRule | None]:
        proto = conn.protocol.upper()
        if r.ports is None and not r.icmps:
            return True, None
        if proto in ICMP_PROTOCOLS:
            fam = ICMP_PROTOCOLS[proto]
            ok = any(i.family == fam and (conn.icmp_type is None or i.type == conn.icmp_type) for i in r.icmps)
            return ok, None
        for pr in r.ports or ():
            if not pr.ports:
                if proto in L4_PROTOCOLS:
                    return True, pr
                continue
            for spec in pr.ports:
                if self._port_matches(spec, conn, r, res):
                    return True, pr
        return False, None

    def _port_matches(self, s: PortSpec, conn: Connection, r: Rule, res: DirectionResult) -> bool:
        proto = conn.protocol.upper()
        if s.protocol is None:
            if proto not in L4_PROTOCOLS:
                return False
        elif s.protocol != proto:
            return False
        if s.port is None:
            return True
        if conn.port is None:
            return False
        if isinstance(s.port, int):
            if s.end_port is not None:
                return s.port <= conn.port <= s.end_port
            return s.port == conn.port
        # named port: resolved against the destination pod's container ports, by name and
        # protocol (§1.5); an address outside the cluster has none
        dst = conn.dst
        if not dst.is_pod:
            return False
        if dst.ports is None:
            res.notes.append(f"{r}: named port {s.port!r} cannot be resolved: container ports of {dst.key()} "
                             "are unknown (give --inventory)")
            res.unresolved = True
            return False
        return any(cp.name == s.port and cp.port == conn.port and cp.protocol == proto
                   and (s.protocol is None or cp.protocol == s.protocol) for cp in dst.ports)

    # ---- L7 ----

    def _l7(self, eg: DirectionResult, ig: DirectionResult, conn: Connection) -> tuple[bool, str | None]:
        texts = []
        for res in (eg, ig):
            if res.l7_http:
                if conn.http is None:
                    texts.append(f"{res.direction} HTTP is filtered by the L7 proxy "
                                 f"({len(res.l7_http)} HTTP rules); no request given, L3/L4 verdict only")
                    continue
                hit = next(((r, h) for r, h in res.l7_http if _http_matches(h, conn.http)), None)
                if hit is None:
                    rules = sorted({str(r) for r, _ in res.l7_http})
                    return False, (f"{res.direction} HTTP request {conn.http.describe()} matches none of the HTTP "
                                   f"rules of {', '.join(rules)} (the proxy answers 403)")
                texts.append(f"{res.direction} HTTP {conn.http.describe()} allowed by {hit[0]} ({hit[1].describe()})")
            elif res.l7_dns:
                if conn.dns_query is None:
                    texts.append(f"{res.direction} DNS is filtered by the DNS proxy; no query name given, "
                                 "L3/L4 verdict only")
                    continue
                hitd = next(((r, s) for r, s in res.l7_dns if s.matches(conn.dns_query)), None)
                if hitd is None:
                    rules = sorted({str(r) for r, _ in res.l7_dns})
                    return False, (f"{res.direction} DNS query {conn.dns_query} matches none of the DNS rules "
                                   f"of {', '.join(rules)} (the proxy refuses it)")
                texts.append(f"{res.direction} DNS query {conn.dns_query} allowed by {hitd[0]} "
                             f"({hitd[1].describe()})")
            elif res.l7_http == [] and res.l7_other:
                texts.append(f"{res.direction} L7 rules of {res.l7_other[0]} are not evaluated")
        return True, "; ".join(texts) or None


def _http_matches(h: HTTPRule, req: HTTPRequest) -> bool:
    # Envoy matches Cilium's regexes against the whole value (RE2 full match)
    method, path, host = h.compiled()
    if method is not None and not method.fullmatch(req.method):
        return False
    if path is not None and not path.fullmatch(req.path):
        return False
    if host is not None and not host.fullmatch(req.host):
        return False
    have = {k.lower(): v for k, v in req.headers}
    for name, value in h.headers:
        got = have.get(name.lower())
        if got is None or (value is not None and got != value):
            return False
    return True


def _peer(res: DirectionResult, conn: Connection) -> Endpoint:
    return conn.dst if res.direction == "egress" else conn.src


def _same_pod(a: Endpoint, b: Endpoint) -> bool:
    if a.name and b.name:
        return a.namespace == b.namespace and a.name == b.name
    return a.ip is not None and a.ip == b.ip


def _ep_key(ep: Endpoint) -> tuple[Any, ...]:
    return (ep.kind, ep.namespace, tuple(sorted(ep.labels.items())), tuple(sorted(ep.ns_labels.items())),
            ep.service_account, ep.cluster, tuple(sorted(ep.entities)), ep.extra_labels)


def http_request(obj: Mapping[str, Any] | None) -> HTTPRequest | None:
    if not obj:
        return None
    headers = obj.get("headers") or {}
    items: Iterable[tuple[str, str]]
    if isinstance(headers, Mapping):
        items = ((str(k), str(v)) for k, v in headers.items())
    else:
        items = (tuple(str(x).split(":", 1)) if ":" in str(x) else (str(x), "") for x in headers)  # type: ignore[misc]
    return HTTPRequest(str(obj.get("method") or ""), str(obj.get("path") or ""), str(obj.get("host") or ""),
                       tuple((k.strip(), v.strip()) for k, v in items))

