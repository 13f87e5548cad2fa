"""Least-privilege policies from observed traffic: `flowtrail policy generate`.

Two pure steps. `Observer.feed` reduces decoded Arrow batches to the distinct connections that
were opened and forwarded (TCP SYN without ACK, the non-reply packets of UDP/SCTP, ICMP echo
requests); Python work is per distinct connection per batch, never per flow. `generate` turns the
aggregate into NetworkPolicy or CiliumNetworkPolicy objects (default deny per namespace, one
ingress and one egress allow policy per workload) and `render` writes them as YAML whose comments
give the evidence of every allowed peer.

Workloads are selected by their pods' stable `k8s:` labels: the labels every pod of the workload
carries, minus those a controller sets per pod or per revision (pod-template-hash, …), so the
policy keeps selecting the workload after a rollout.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import yaml

from flowtrail.detect.features import Enrichment, build
from flowtrail.filters.base import Columns
from flowtrail.policy.endpoints import Endpoint, from_identity_labels, parse_ip
from flowtrail.policy.selectors import NS_KEY
from flowtrail.util import compute as pc

Format = Literal["cilium", "kubernetes"]

# labels a controller sets per pod or per revision: selecting on them would pin the policy to
# today's pods (the rest of io.kubernetes.* / io.cilium.* are Cilium-internal identity labels)
UNSTABLE_LABELS = frozenset({
    "pod-template-hash", "controller-revision-hash", "pod-template-generation",
    "statefulset.kubernetes.io/pod-name", "apps.kubernetes.io/pod-index",
    "controller-uid", "batch.kubernetes.io/controller-uid", "job-name", "batch.kubernetes.io/job-name",
    "batch.kubernetes.io/job-completion-index", "app.kubernetes.io/version", "helm.sh/chart",
})
UNSTABLE_PREFIXES = ("io.kubernetes.", "io.cilium.", "io.cilium/")

# which Cilium entity names a reserved endpoint, most specific first
_ENTITY_ORDER = ("kube-apiserver", "host", "remote-node", "health", "ingress", "init", "unmanaged")
_ICMP_ECHO = {"ICMPv4": 8, "ICMPv6": 128}
_SEP = "\x1e"
DNS_PORT = 53


def stable_labels(labels: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in labels.items() if k not in UNSTABLE_LABELS and not k.startswith(UNSTABLE_PREFIXES)}


# ---- the aggregate --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Peer:
    """One end of an observed connection: a workload, a reserved entity or an outside address."""

    kind: Literal["pod", "entity", "world"]
    workload: str = ""  # "namespace/name" for pods
    namespace: str = ""
    entity: str = ""  # for kind entity
    ip: str = ""  # for entity and world


@dataclass
class Evidence:
    count: int = 0
    first_ns: int = 0
    last_ns: int = 0
    uuid: str = ""

    def add(self, count: int, first: int, last: int, uuid: str) -> None:
        if not self.count:
            self.first_ns, self.last_ns, self.uuid = first, last, uuid
        else:
            if first < self.first_ns:
                self.first_ns, self.uuid = first, uuid or self.uuid
            self.last_ns = max(self.last_ns, last)
        self.count += count

    def merge(self, other: Evidence) -> None:
        if other.count:
            self.add(other.count, other.first_ns, other.last_ns, other.uuid)


@dataclass(frozen=True)
class ConnKey:
    src: Peer
    dst: Peer
    protocol: str  # TCP, UDP, SCTP, ICMPv4, ICMPv6
    port: int | None  # destination port; ICMP: the type


@dataclass
class Observed:
    """Everything `generate` needs, accumulated over all batches."""

    conns: dict[ConnKey, Evidence] = field(default_factory=dict)
    # outside destinations: names the client had resolved (destination_names, or a DNS answer it
    # received earlier); `unnamed` marks connections seen at least once without such a name
    names: dict[ConnKey, set[str]] = field(default_factory=dict)
    unnamed: set[ConnKey] = field(default_factory=set)
    midstream: dict[ConnKey, Evidence] = field(default_factory=dict)  # TCP seen without its SYN
    labels: dict[str, set[tuple[tuple[str, str], ...]]] = field(default_factory=dict)  # workload -> label sets
    entity_ips: dict[str, set[str]] = field(default_factory=dict)
    flows: int = 0
    openings: int = 0


class Observer:
    """Folds decoded Hubble batches (REPLAY_PATHS projection) into an `Observed`."""

    def __init__(self) -> None:
        self.obs = Observed()
        # (client workload, answer IP) -> (first answer time, names)
        self._answers: dict[tuple[str, str], tuple[int, set[str]]] = {}
        self._peers: dict[str, Peer | None] = {}

    def feed(self, table: pa.Table) -> None:
        if "flow" in table.column_names:
            table = table.filter(table.column("flow").is_valid())
        if not table.num_rows:
            return
        cols = Columns(table)
        feats = build(table, Enrichment())
        self.obs.flows += table.num_rows
        self._learn_labels(cols, feats)
        self._learn_dns(feats)
        proto = feats.column("proto").combine_chunks()
        reply = pc.fill_null(feats.column("is_reply").combine_chunks(), False)
        verdict = feats.column("verdict").combine_chunks()
        forwarded = pc.and_(pc.fill_null(pc.is_in(verdict, pa.array(["FORWARDED", "REDIRECTED"])), False),
                            pc.invert(reply))
        syn = feats.column("syn").combine_chunks()
        icmp = pc.coalesce(cols.get("l4.ICMPv4.type"), cols.get("l4.ICMPv6.type"))
        is_tcp = pc.fill_null(pc.equal(proto, "TCP"), False)
        datagram = pc.fill_null(pc.is_in(proto, pa.array(["UDP", "SCTP"])), False)
        echo = pc.fill_null(pc.or_(pc.and_(pc.equal(proto, "ICMPv4"), pc.equal(icmp, 8)),
                                   pc.and_(pc.equal(proto, "ICMPv6"), pc.equal(icmp, 128))), False)
        # Cilium's conntrack marks the reply direction, so every non-reply UDP/SCTP packet comes
        # from the side that opened the flow; for TCP only the SYN proves who opened it
        opening = pc.and_(forwarded, pc.or_(pc.or_(pc.and_(is_tcp, syn), datagram), echo))
        mid = pc.and_(forwarded, pc.and_(is_tcp, pc.invert(syn)))
        parts = self._key_parts(cols, feats, icmp)
        self._fold(parts, np.asarray(opening.to_numpy(zero_copy_only=False), dtype=bool), cols, feats, True)
        self._fold(parts, np.asarray(mid.to_numpy(zero_copy_only=False), dtype=bool), cols, feats, False)

    # ---- per batch ----

    def _learn_labels(self, cols: Columns, feats: pa.Table) -> None:
        empty = pa.scalar([], pa.list_(pa.string()))
        for side, prefix in (("source", "src"), ("destination", "dst")):
            wl = feats.column(f"{prefix}.wl_key").combine_chunks()
            ns = feats.column(f"{prefix}.namespace").combine_chunks()
            labels = pc.binary_join(pc.fill_null(cols.get(f"{side}.labels"), empty), _SEP)
            key = pc.binary_join_element_wise(wl, labels, _SEP)
            key = pc.if_else(pc.is_valid(ns), key, pa.scalar(None, pa.string()))
            for k in pc.unique(pc.drop_null(key)).to_pylist():
                wl_key, _, joined = k.partition(_SEP)
                ep = from_identity_labels(joined.split(_SEP) if joined else [], None, wl_key.split("/")[0], None, None)
                if ep.is_pod:
                    self.obs.labels.setdefault(wl_key, set()).add(tuple(sorted(stable_labels(ep.labels).items())))

    def _learn_dns(self, feats: pa.Table) -> None:
        resp = feats.column("dns.response").combine_chunks()
        ips = feats.column("dns.ips").combine_chunks()
        has = pc.and_(resp, pc.greater(pc.fill_null(pc.list_value_length(ips), 0), 0))
        if not pc.any(has).as_py():
            return
        # the response goes to the client: its destination is the workload that resolved the name
        sub = feats.filter(has)
        client = sub.column("dst.wl_key").combine_chunks()
        query = sub.column("dns.query").combine_chunks()
        joined = pc.binary_join(sub.column("dns.ips").combine_chunks(), ",")
        key = pc.binary_join_element_wise(pc.fill_null(client, ""), pc.fill_null(query, ""), joined, _SEP)
        enc = pc.dictionary_encode(key)
        codes = np.asarray(enc.indices.to_numpy(zero_copy_only=False))
        times = np.asarray(sub.column("time").combine_chunks().to_numpy(zero_copy_only=False), dtype=np.int64)
        first = np.full(len(enc.dictionary), np.iinfo(np.int64).max, dtype=np.int64)
        np.minimum.at(first, codes, times)
        for k, t in zip(enc.dictionary.to_pylist(), first.tolist(), strict=True):
            wl, name, addrs = k.split(_SEP)
            if not wl or not name:
                continue
            name = name.rstrip(".").lower()
            for ip in addrs.split(","):
                known = self._answers.get((wl, ip))
                if known is None:
                    self._answers[(wl, ip)] = (t, {name})
                else:
                    known[1].add(name)
                    if t < known[0]:
                        self._answers[(wl, ip)] = (t, known[1])

    def _key_parts(self, cols: Columns, feats: pa.Table, icmp: pa.Array) -> list[pa.Array]:
        def f(name: str) -> pa.Array:
            return feats.column(name).combine_chunks()
        empty = pa.scalar([], pa.list_(pa.string()))
        none = pa.scalar(None, pa.string())
        parts: list[pa.Array] = []
        for side, prefix in (("source", "src"), ("destination", "dst")):
            pod = pc.is_valid(f(f"{prefix}.namespace"))
            parts += [pc.binary_join(pc.fill_null(cols.get(f"{side}.labels"), empty), ","),
                      f(f"{prefix}.namespace"), f(f"{prefix}.wl_key"),
                      # the address and identity only matter for ends that are not pods
                      pc.if_else(pod, none, f(f"{prefix}.ip")),
                      pc.if_else(pod, none, pc.cast(f(f"{prefix}.identity"), pa.string()))]
        names = pc.binary_join(pc.fill_null(cols.get("destination_names"), empty), ",")
        parts += [f("proto"), pc.cast(pc.coalesce(f("dst.port"), icmp), pa.string()),
                  pc.if_else(pc.is_valid(f("dst.namespace")), none, names)]
        return parts

    def _fold(self, parts: list[pa.Array], mask: np.ndarray, cols: Columns, feats: pa.Table, opening: bool) -> None:
        if not mask.any():
            return
        idx = pa.array(np.flatnonzero(mask))
        sub = [pc.take(p, idx) for p in parts]
        keys = pc.binary_join_element_wise(*[pc.fill_null(pc.cast(p, pa.string()), "") for p in sub], _SEP)
        enc = pc.dictionary_encode(keys)
        codes = np.asarray(enc.indices.to_numpy(zero_copy_only=False))
        n = len(enc.dictionary)
        times = np.asarray(pc.take(feats.column("time").combine_chunks(), idx).to_numpy(zero_copy_only=False),
                           dtype=np.int64)
        counts = np.bincount(codes, minlength=n)
        first = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
        last = np.full(n, np.iinfo(np.int64).min, dtype=np.int64)
        np.minimum.at(first, codes, times)
        np.maximum.at(last, codes, times)
        _, first_row = np.unique(codes, return_index=True)
        uuids = pc.take(pc.take(feats.column("uuid").combine_chunks(), idx), pa.array(first_row)).to_pylist()
        values = [pc.take(p, pa.array(first_row)).to_pylist() for p in sub]
        if opening:
            self.obs.openings += int(mask.sum())
        for c in range(n):
            (s_lab, s_ns, s_wl, s_ip, s_id, d_lab, d_ns, d_wl, d_ip, d_id, proto, port, names) = (
                v[c] for v in values)
            src = self._peer(s_lab, s_ns, s_wl, s_ip, s_id)
            dst = self._peer(d_lab, d_ns, d_wl, d_ip, d_id)
            if src is None or dst is None or (src.kind != "pod" and dst.kind != "pod"):
                continue
            key = ConnKey(src, dst, proto, int(port) if port is not None else None)
            target = self.obs.conns if opening else self.obs.midstream
            target.setdefault(key, Evidence()).add(int(counts[c]), int(first[c]), int(last[c]), uuids[c] or "")
            if opening and dst.kind == "world":
                self._name(key, names, src.workload, dst.ip, int(first[c]))

    def _name(self, key: ConnKey, names: str | None, client: str, ip: str, first_ns: int) -> None:
        got = {n.rstrip(".").lower() for n in (names or "").split(",") if n}
        if not got:
            # a DNS answer the client received before this connection opened is what Cilium's
            # toFQDNs would have learned the address from
            known = self._answers.get((client, ip))
            if known is not None and known[0] <= first_ns:
                got = set(known[1])
        if got:
            self.obs.names.setdefault(key, set()).update(got)
        else:
            self.obs.unnamed.add(key)

    def _peer(self, labels: str | None, ns: str | None, wl: str | None, ip: str | None,
              identity: str | None) -> Peer | None:
        ck = _SEP.join((labels or "", ns or "", wl or "", ip or "", identity or ""))
        if ck in self._peers:
            return self._peers[ck]
        ep = from_identity_labels(labels.split(",") if labels else [], parse_ip(ip) if ip else None, ns, None,
                                  int(identity) if identity else None)
        peer = _classify(ep, wl, ip)
        if peer is not None and peer.kind != "pod" and peer.ip:
            self.obs.entity_ips.setdefault(peer.entity or "world", set()).add(peer.ip)
        self._peers[ck] = peer
        return peer


def _classify(ep: Endpoint, wl: str | None, ip: str | None) -> Peer | None:
    if ep.is_pod:
        if not wl or ep.namespace is None:
            return None
        return Peer("pod", workload=wl, namespace=ep.namespace)
    if ep.kind == "reserved":
        entity = next((e for e in _ENTITY_ORDER if e in ep.entities), None)
        if entity is None:
            return None
        return Peer("entity", entity=entity, ip=ip or "")
    if not ip:
        return None
    return Peer("world", ip=ip)


# ---- policies ---------------------------------------------------------------------------------------

@dataclass
class Commented:
    """A YAML list item with comment lines above it."""

    value: Any
    comments: list[str]


@dataclass
class PolicyDoc:
    namespace: str
    name: str
    obj: dict[str, Any]
    comments: list[str] = field(default_factory=list)


@dataclass
class Generated:
    docs: list[PolicyDoc]
    notes: list[str]


@dataclass
class _Group:
    """Allowed traffic between one local workload and one peer group, by (protocol, port)."""

    title: str
    ports: dict[tuple[str, int | None], Evidence] = field(default_factory=dict)
    names: set[str] = field(default_factory=set)  # FQDN peers: the name; CIDR peers: names seen later

    def add(self, proto: str, port: int | None, ev: Evidence) -> None:
        self.ports.setdefault((proto, port), Evidence()).merge(ev)


def _time(ns: int) -> str:
    return f"{datetime.fromtimestamp(ns // 10**9, UTC):%Y-%m-%dT%H:%M:%SZ}"


def _evidence(proto: str, port: int | None, ev: Evidence) -> str:
    what = f"{port}/{proto}" if not proto.startswith("ICMP") else f"{proto} type {port}"
    if not ev.count:
        return f"  {what}: not observed, allowed with the other DNS protocol"
    span = _time(ev.first_ns) if ev.first_ns // 10**9 == ev.last_ns // 10**9 else \
        f"{_time(ev.first_ns)}..{_time(ev.last_ns)}"
    return f"  {what}: {ev.count} opening flow{'s' if ev.count != 1 else ''}, {span}, e.g. {ev.uuid}"


def generate(obs: Observed, fmt: Format = "cilium", namespaces: Iterable[str] = ()) -> Generated:
    """Default deny per namespace plus per-workload ingress and egress allows for what was observed."""
    only = set(namespaces)
    notes: list[str] = []
    selectors = {wl: _selector_labels(sets) for wl, sets in obs.labels.items()}
    local_ns = sorted({wl.split("/", 1)[0] for wl in obs.labels} | {
        p.namespace for k in obs.conns for p in (k.src, k.dst) if p.kind == "pod"})
    if only:
        local_ns = [ns for ns in local_ns if ns in only]
    dns_servers = sorted({k.dst.workload for k in obs.conns
                          if k.dst.kind == "pod" and k.port == DNS_PORT and k.protocol in ("UDP", "TCP")})
    ingress: dict[str, dict[tuple[Any, ...], _Group]] = {}
    egress: dict[str, dict[tuple[Any, ...], _Group]] = {}
    for key, ev in obs.conns.items():
        if key.dst.kind == "pod" and key.dst.namespace in local_ns:
            _ingress_group(ingress.setdefault(key.dst.workload, {}), key, ev)
        if key.src.kind == "pod" and key.src.namespace in local_ns:
            _egress_groups(egress.setdefault(key.src.workload, {}), key, ev, obs, fmt)
    docs: list[PolicyDoc] = []
    workloads = sorted({*ingress, *egress, *(wl for wl in obs.labels if wl.split("/", 1)[0] in local_ns)})
    for ns in local_ns:
        docs.append(_default_deny(ns, fmt))
        for wl in (w for w in workloads if w.split("/", 1)[0] == ns):
            sel = selectors.get(wl, {})
            if not sel:
                notes.append(f"{wl}: its pods share no stable label to select them by; no allow policy written "
                             "(the namespace default deny applies to it)")
                continue
            overlap = [o for o, sets in sorted(obs.labels.items())
                       if o != wl and o.split("/", 1)[0] == ns and any(_matches(sel, s) for s in sets)]
            for direction, groups in (("ingress", ingress.get(wl)), ("egress", egress.get(wl))):
                if not groups:
                    continue
                if direction == "egress" and fmt == "cilium":
                    _dns_for_fqdns(groups, dns_servers)
                doc = _policy(ns, wl, sel, direction, groups, fmt, selectors, obs, notes)
                if overlap:
                    doc.comments.append(f"note: this selector also matches pods of {', '.join(overlap)}")
                docs.append(doc)
    for key, ev in sorted(obs.midstream.items(), key=lambda kv: _conn_sort(kv[0])):
        if key in obs.conns or not any(p.kind == "pod" and p.namespace in local_ns for p in (key.src, key.dst)):
            continue
        notes.append(f"{_peer_name(key.src)} -> {_peer_name(key.dst)} {key.port}/{key.protocol}: {ev.count} "
                     f"flows seen without the connection's SYN (opened before the capture); not allowed")
    return Generated(docs, notes)


def _selector_labels(sets: set[tuple[tuple[str, str], ...]]) -> dict[str, str]:
    common: set[tuple[str, str]] | None = None
    for s in sets:
        common = set(s) if common is None else common & set(s)
    return dict(sorted(common or ()))


def _matches(sel: Mapping[str, str], labels: Iterable[tuple[str, str]]) -> bool:
    have = dict(labels)
    return all(have.get(k) == v for k, v in sel.items())


def _peer_name(p: Peer) -> str:
    if p.kind == "pod":
        return p.workload
    return f"{p.entity}({p.ip})" if p.kind == "entity" else f"world({p.ip})"


def _conn_sort(k: ConnKey) -> tuple[Any, ...]:
    return (_peer_name(k.src), _peer_name(k.dst), k.protocol, k.port or 0)


def _ingress_group(groups: dict[tuple[Any, ...], _Group], key: ConnKey, ev: Evidence) -> None:
    src = key.src
    if src.kind == "pod":
        gk: tuple[Any, ...] = ("pod", src.workload)
        title = f"from {src.workload}"
    elif src.kind == "entity":
        gk, title = ("entity", src.entity), f"from the {src.entity} entity"
    else:
        gk, title = ("world",), "from the world (addresses outside the cluster)"
    g = groups.setdefault(gk, _Group(title))
    _add_ports(g, key, ev)


def _egress_groups(groups: dict[tuple[Any, ...], _Group], key: ConnKey, ev: Evidence, obs: Observed,
                   fmt: Format) -> None:
    dst = key.dst
    targets: list[tuple[tuple[Any, ...], str, set[str]]] = []
    if dst.kind == "pod":
        dns = key.port == DNS_PORT and key.protocol in ("UDP", "TCP")
        gk: tuple[Any, ...] = ("dns" if dns else "pod", dst.workload)
        targets.append((gk, f"{'DNS ' if dns else ''}to {dst.workload}", set()))
    elif dst.kind == "entity":
        targets.append((("entity", dst.entity), f"to the {dst.entity} entity", set()))
    else:
        names = obs.names.get(key, set())
        if fmt == "cilium":
            targets += [(("fqdn", n), f"to {n}", {n}) for n in sorted(names)]
        if fmt == "kubernetes" or key in obs.unnamed:
            why = "" if fmt == "kubernetes" or not names else " (some connections without a resolved name)"
            seen = f" ({', '.join(sorted(names))})" if names else ""
            targets.append((("cidr", _ip_sort(dst.ip), dst.ip), f"to {dst.ip}{seen}{why}", set()))
    for gk, title, names_ in targets:
        g = groups.setdefault(gk, _Group(title))
        g.names |= names_
        _add_ports(g, key, ev)


def _ip_sort(ip: str) -> tuple[int, int]:
    a = ipaddress.ip_address(ip)
    return (a.version, int(a))


def _add_ports(g: _Group, key: ConnKey, ev: Evidence) -> None:
    g.add(key.protocol, key.port, ev)
    # DNS falls back to TCP for truncated answers: a DNS server reached on 53 gets both protocols
    if key.dst.kind == "pod" and key.port == DNS_PORT and key.protocol in ("UDP", "TCP"):
        g.add("TCP" if key.protocol == "UDP" else "UDP", DNS_PORT, Evidence())


def _dns_for_fqdns(groups: dict[tuple[Any, ...], _Group], dns_servers: Sequence[str]) -> None:
    # toFQDNs only learns addresses from lookups the DNS proxy sees: a workload with FQDN rules
    # needs a DNS rule even when its lookups happened before the capture
    if not any(gk[0] == "fqdn" for gk in groups) or any(gk[0] == "dns" for gk in groups):
        return
    for server in dns_servers or ["kube-system/kube-dns"]:
        groups[("dns", server)] = _Group(f"DNS to {server} (for the toFQDNs rules; no lookup "
                                         "of this workload was captured)")


def _sort_key(gk: tuple[Any, ...]) -> tuple[Any, ...]:
    order = ("dns", "pod", "entity", "world", "fqdn", "cidr")
    return (order.index(gk[0]), *gk[1:])


def _default_deny(ns: str, fmt: Format) -> PolicyDoc:
    comments = [f"default deny for namespace {ns}: only what the allow policies below list may pass"]
    if fmt == "kubernetes":
        obj = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
               "metadata": {"name": "default-deny", "namespace": ns},
               "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}}
    else:
        # a Cilium rule `- {}` matches nothing but puts the direction in default deny
        obj = {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
               "metadata": {"name": "default-deny", "namespace": ns},
               "spec": {"endpointSelector": {}, "ingress": [{}], "egress": [{}]}}
    return PolicyDoc(ns, "default-deny", obj, comments)


def _policy(ns: str, wl: str, sel: dict[str, str], direction: str, groups: dict[tuple[Any, ...], _Group],
            fmt: Format, selectors: Mapping[str, dict[str, str]], obs: Observed, notes: list[str]) -> PolicyDoc:
    name = f"{wl.split('/', 1)[1]}-{direction}"
    rules: list[Any] = []
    for gk in sorted(groups, key=_sort_key):
        g = groups[gk]
        ev_lines = [f"{g.title}:"] + [_evidence(p, n, ev) for (p, n), ev in sorted(
            g.ports.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0))]
        made = _cilium_rules(gk, g, direction, selectors) if fmt == "cilium" else \
            _k8s_rules(gk, g, ns, direction, selectors, obs)
        if fmt == "kubernetes" and _split_ports(g)[1]:
            notes.append(f"{ns}/{name}: {g.title}: ICMP cannot be expressed in a NetworkPolicy without "
                         "allowing every port; left out")
        if not made:
            continue
        if gk[0] == "pod" and not selectors.get(gk[1]):
            ev_lines.append("  (its pods share no stable label: the whole namespace is allowed)")
        rules.append(Commented(made[0], ev_lines))
        rules += made[1:]
    head = [f"{direction} of {wl}, selected by its pods' stable labels"]
    if fmt == "kubernetes":
        obj: dict[str, Any] = {
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"podSelector": {"matchLabels": sel}, "policyTypes": [direction.capitalize()], direction: rules}}
    else:
        obj = {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
               "metadata": {"name": name, "namespace": ns},
               "spec": {"endpointSelector": {"matchLabels": sel}, direction: rules}}
    return PolicyDoc(ns, name, obj, head)


def _split_ports(g: _Group) -> tuple[list[tuple[str, int]], list[tuple[str, int | None]]]:
    l4 = sorted(((p, n) for p, n in g.ports if not p.startswith("ICMP") and n is not None),
                key=lambda x: (x[1], x[0]))
    icmp = sorted(((p, n) for p, n in g.ports if p.startswith("ICMP")), key=lambda x: (x[0], x[1] or 0))
    return l4, icmp


def _cilium_rules(gk: tuple[Any, ...], g: _Group, direction: str,
                  selectors: Mapping[str, dict[str, str]]) -> list[dict[str, Any]]:
    pre = "from" if direction == "ingress" else "to"
    rule: dict[str, Any] = {}
    kind = gk[0]
    if kind in ("pod", "dns"):
        wl = gk[1]
        ns = wl.split("/", 1)[0]
        labels = selectors.get(wl)
        if labels is None and kind == "dns":
            labels = {"k8s-app": "kube-dns"}  # the conventional CoreDNS label, for the fallback rule
        rule[f"{pre}Endpoints"] = [{"matchLabels": {f"k8s:{NS_KEY}": ns, **(labels or {})}}]
    elif kind == "entity":
        rule[f"{pre}Entities"] = [gk[1]]
    elif kind == "world":
        rule["fromEntities"] = ["world"]
    elif kind == "fqdn":
        rule["toFQDNs"] = [{"matchName": gk[1]}]
    else:
        rule["toCIDR"] = [_host_cidr(gk[2])]
    l4, icmp = _split_ports(g)
    if kind == "dns":
        # the DNS proxy must see the lookups for toFQDNs to learn addresses; "*" refuses nothing
        rule["toPorts"] = [{"ports": [{"port": str(DNS_PORT), "protocol": "UDP"},
                                      {"port": str(DNS_PORT), "protocol": "TCP"}],
                            "rules": {"dns": [{"matchPattern": "*"}]}}]
        l4 = [(p, n) for p, n in l4 if n != DNS_PORT]
        if l4:
            rule["toPorts"].append({"ports": [{"port": str(n), "protocol": p} for p, n in l4]})
    elif l4:
        rule["toPorts"] = [{"ports": [{"port": str(n), "protocol": p} for p, n in l4]}]
    out = [rule] if "toPorts" in rule else []
    if icmp:
        # icmps and toPorts cannot share a rule: the same peer again, for the echo requests
        peer = {k: v for k, v in rule.items() if k != "toPorts"}
        out.append({**peer, "icmps": [{"fields": [{"type": n, "family": "IPv4" if p == "ICMPv4" else "IPv6"}
                                                  for p, n in icmp]}]})
    return out


def _k8s_rules(gk: tuple[Any, ...], g: _Group, ns: str, direction: str, selectors: Mapping[str, dict[str, str]],
               obs: Observed) -> list[dict[str, Any]]:
    key = "from" if direction == "ingress" else "to"
    kind = gk[0]
    peers: list[dict[str, Any]]
    if kind in ("pod", "dns"):
        wl = gk[1]
        pns = wl.split("/", 1)[0]
        peer: dict[str, Any] = {}
        if pns != ns:
            peer["namespaceSelector"] = {"matchLabels": {"kubernetes.io/metadata.name": pns}}
        peer["podSelector"] = {"matchLabels": dict(selectors.get(wl) or {})}
        peers = [peer]
    elif kind == "entity":
        # nodes get rescheduled pods and the API server balances over its addresses: every
        # address seen for the entity, not only those this workload happened to use
        peers = [{"ipBlock": {"cidr": _host_cidr(ip)}} for ip in sorted(obs.entity_ips.get(gk[1], ()), key=_ip_sort)]
    elif kind == "world":
        fams = {ipaddress.ip_address(ip).version for ip in obs.entity_ips.get("world", ())} or {4}
        peers = [{"ipBlock": {"cidr": "0.0.0.0/0" if v == 4 else "::/0"}} for v in sorted(fams)]
    else:
        peers = [{"ipBlock": {"cidr": _host_cidr(gk[2])}}]
    l4 = _split_ports(g)[0]
    if not l4:
        return []
    return [{key: peers, "ports": [{"port": n, "protocol": p} for p, n in l4]}]


def _host_cidr(ip: str) -> str:
    a = ipaddress.ip_address(ip)
    return f"{a}/{a.max_prefixlen}"


# ---- YAML ---------------------------------------------------------------------------------------

_PLAIN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_./:@-]*")


@lru_cache(maxsize=4096)
def _str(s: str) -> str:
    # plain only when YAML reads it back as the same string ("53", "true", "1e3" need quotes)
    if _PLAIN.fullmatch(s) and not s.endswith(":"):
        try:
            if yaml.safe_load(s) == s and yaml.safe_load(f"{s}: x") == {s: "x"}:
                return s
        except yaml.YAMLError:
            pass
    return json.dumps(s)


def _scalar(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if v == {}:
        return "{}"
    if v == []:
        return "[]"
    return _str(str(v))


def _inline(v: Any) -> bool:
    return not isinstance(v, dict | list) or not v


def _lines(v: dict[str, Any] | list[Any], indent: int) -> list[str]:
    pad = " " * indent
    out: list[str] = []
    if isinstance(v, dict):
        for k, x in v.items():
            if _inline(x):
                out.append(f"{pad}{_str(k)}: {_scalar(x)}")
            else:
                out.append(f"{pad}{_str(k)}:")
                # lists sit at their key's indentation, as kubectl writes them
                out += _lines(x, indent + 2 if isinstance(x, dict) else indent)
        return out
    for item in v:
        if isinstance(item, Commented):
            out += [f"{pad}# {c}".rstrip() for c in item.comments]
            item = item.value
        if _inline(item):
            out.append(f"{pad}- {_scalar(item)}")
        else:
            sub = _lines(item, indent + 2)
            out.append(f"{pad}- {sub[0][indent + 2:]}")
            out += sub[1:]
    return out


def plain(v: Any) -> Any:
    """The object without comment wrappers (what a YAML parser reads back)."""
    if isinstance(v, Commented):
        return plain(v.value)
    if isinstance(v, dict):
        return {k: plain(x) for k, x in v.items()}
    if isinstance(v, list):
        return [plain(x) for x in v]
    return v


def render(docs: Sequence[PolicyDoc], header: Sequence[str] = ()) -> str:
    """A multi-document YAML stream; comments carry the evidence."""
    parts = []
    for i, d in enumerate(docs):
        lines = [f"# {c}" for c in header] if i == 0 else []
        lines += [f"# {c}" for c in d.comments]
        parts.append("\n".join([*lines, *_lines(d.obj, 0)]) + "\n")
    return "---\n".join(parts)


def summary_header(obs: Observed) -> list[str]:
    if not obs.conns:
        return ["generated by flowtrail policy generate: no forwarded connection openings observed"]
    first = min(e.first_ns for e in obs.conns.values())
    last = max(e.last_ns for e in obs.conns.values())
    return [f"generated by flowtrail policy generate from {obs.openings} forwarded connection openings "
            f"({len(obs.conns)} distinct connections) seen {_time(first)}..{_time(last)}"]
