"""Flat, enriched feature columns of a decoded batch: what rule conditions and groupings read.

Everything is columnar. Per-value Python work (PSL lookups, IP classes, intel matching, workload
names from pod names) runs once per *distinct* value of a batch through `map_unique`, never per
flow. Feature names are documented in docs/rules.md; rules may also use any Hubble FlowFilter in
their scope.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from flowtrail.enrich.dnsname import features as name_features
from flowtrail.enrich.intel import Intel
from flowtrail.enrich.ipclass import IPClasses
from flowtrail.filters.base import Columns, list_any
from flowtrail.util.arrays import bool_mask

# what the decoder must project for features (rule scopes add their own filter paths)
FEATURE_PATHS = [
    "time", "uuid", "node_name", "verdict", "drop_reason_desc", "Type", "is_reply", "traffic_direction",
    "IP.source", "IP.destination",
    "l4.TCP.source_port", "l4.TCP.destination_port", "l4.TCP.flags.SYN", "l4.TCP.flags.ACK", "l4.TCP.flags.RST",
    "l4.UDP.source_port", "l4.UDP.destination_port", "l4.SCTP.source_port", "l4.SCTP.destination_port",
    "l4.ICMPv4.type", "l4.ICMPv6.type",
    "source.namespace", "source.pod_name", "source.labels", "source.workloads", "source.identity",
    "destination.namespace", "destination.pod_name", "destination.labels", "destination.workloads",
    "destination.identity", "destination_names",
    "l7.type", "l7.dns.query", "l7.dns.rcode", "l7.dns.qtypes", "l7.dns.ips",
]

_DEPLOYMENT = re.compile(r"^(.+)-[bcdfghjklmnpqrstvwxz2456789]{6,10}-[bcdfghjklmnpqrstvwxz2456789]{5}$")
_STATEFUL = re.compile(r"^(.+)-\d+$")
_DAEMON = re.compile(r"^(.+)-[bcdfghjklmnpqrstvwxz2456789]{5}$")


def workload_from_pod(pod: str | None) -> str | None:
    """Owner name from a pod name when Hubble did not send `workloads` (older Cilium, Retina)."""
    if not pod:
        return None
    for rx in (_DEPLOYMENT, _STATEFUL, _DAEMON):
        m = rx.match(pod)
        if m:
            return m.group(1)
    return pod


def map_unique(arr: pa.Array, fn: Callable[[Any], Any], type_: pa.DataType) -> pa.Array:
    """Apply a Python function once per distinct value (nulls included) and expand back."""
    enc = pc.dictionary_encode(arr)
    if isinstance(enc, pa.ChunkedArray):
        enc = enc.combine_chunks()
    values = [fn(v) for v in enc.dictionary.to_pylist()]
    null_value = fn(None)
    mapped = pa.array([*values, null_value], type=type_)
    idx = pc.fill_null(enc.indices, len(values))
    return pc.take(mapped, idx)


def first_item(lists: pa.Array, n: int) -> pa.Array:
    """First element of each list; null for null or empty lists."""
    flat = pc.list_flatten(lists)
    if len(flat) == 0:
        return pa.nulls(n, lists.type.value_type)
    parents = np.asarray(pc.list_parent_indices(lists).to_numpy(zero_copy_only=False))
    rows, first = np.unique(parents, return_index=True)
    idx = np.full(n, -1, dtype=np.int64)
    idx[rows] = first
    return pc.take(flat, pa.array(idx, mask=idx < 0))


@dataclass
class Enrichment:
    """Configuration of the enrichment step (from --config / --intel)."""

    ip_classes: IPClasses = field(default_factory=IPClasses)
    intel: Intel = field(default_factory=Intel)


def _label_is(label: str) -> Callable[[pa.Array], np.ndarray]:
    def match(values: pa.Array) -> np.ndarray:
        return bool_mask(pc.equal(values, label))
    return match


def _side(cols: Columns, side: str, n: int, ip: pa.Array, enrich: Enrichment) -> dict[str, pa.Array]:
    ns = cols.get(f"{side}.namespace")
    pod = cols.get(f"{side}.pod_name")
    keys = side_keys(ns, pod, ip, cols.get(f"{side}.workloads"), cols.get(f"{side}.labels"), n)
    out: dict[str, pa.Array] = {"namespace": ns, "pod": pod, "workload": keys.pop("workload"),
                                "identity": pc.cast(cols.get(f"{side}.identity"), pa.int64())}
    reserved = {k: keys.pop(k) for k in ("world", "host", "apiserver", "remote_node", "health")}
    out.update(reserved)
    out["class"] = map_unique(ip, enrich.ip_classes.classify, pa.string())
    out.update(keys)
    out["ip"] = ip
    return out


def side_keys(ns: pa.Array, pod: pa.Array, ip: pa.Array, workloads: pa.Array, labels: pa.Array,
              n: int) -> dict[str, pa.Array]:
    """One side's `workload` (the first `workloads` name, else derived from the pod name), its
    reserved-entity flags, `key` and `wl_key` (also used by the policy replay for the rows it
    reports, without the rest of the features)."""
    first_wl = pc.struct_field(first_item(workloads, n), "name")
    out: dict[str, pa.Array] = {"workload": pc.coalesce(first_wl, map_unique(pod, workload_from_pod, pa.string()))}
    for name in ("world", "host", "kube-apiserver", "remote-node", "health"):
        key = "apiserver" if name == "kube-apiserver" else name.replace("-", "_")
        out[key] = pa.array(list_any(labels, _label_is(f"reserved:{name}"), n))
    # "ns/pod" for pods, the reserved entity or the address otherwise
    reserved = pc.if_else(out["apiserver"], "kube-apiserver",
                          pc.if_else(out["world"], pc.binary_join_element_wise("world", ip, ":"),
                                     pc.if_else(out["host"], "host", pc.if_else(out["remote_node"], "remote-node",
                                                                                 ip))))
    out["key"] = pc.coalesce(pc.binary_join_element_wise(ns, pod, "/"), reserved)
    out["wl_key"] = pc.coalesce(pc.binary_join_element_wise(ns, out["workload"], "/"), reserved)
    return out


def flow_times(cols: Columns) -> pa.Array:
    """Flow times in ns (RFC 3339 text parsed one by one where Arrow's cast refuses it)."""
    tcol = cols.get("time")
    try:
        return pc.cast(pc.cast(tcol, pa.timestamp("ns", tz="UTC")), pa.int64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        from flowtrail.model.timeutil import parse_rfc3339_ns
        return pa.array([parse_rfc3339_ns(v) for v in tcol.to_pylist()], pa.int64())


def proto_and_port(cols: Columns) -> tuple[pa.Array, pa.Array]:
    """The L4 protocol name (TCP, UDP, SCTP, ICMPv4, ICMPv6 or null) and destination port."""
    tcp = cols.get("l4.TCP.destination_port")
    udp = cols.get("l4.UDP.destination_port")
    sctp = cols.get("l4.SCTP.destination_port")
    proto = pc.if_else(tcp.is_valid(), "TCP", pc.if_else(udp.is_valid(), "UDP", pc.if_else(
        sctp.is_valid(), "SCTP", pc.if_else(cols.get("l4.ICMPv4.type").is_valid(), "ICMPv4", pc.if_else(
            cols.get("l4.ICMPv6.type").is_valid(), "ICMPv6", pa.scalar(None, pa.string()))))))
    return proto, pc.coalesce(tcp, udp, sctp)


def build(table: pa.Table, enrich: Enrichment) -> pa.Table:
    """Feature table (one row per flow row of ``table``; lost events are dropped by the caller)."""
    cols = Columns(table)
    n = cols.n
    times = flow_times(cols)
    src_ip, dst_ip = cols.get("IP.source"), cols.get("IP.destination")
    f: dict[str, pa.Array] = {
        "time": times, "uuid": cols.get("uuid"), "node": cols.get("node_name"), "verdict": cols.get("verdict"),
        "drop_reason": cols.get("drop_reason_desc"), "type": cols.get("Type"), "is_reply": cols.get("is_reply"),
        "direction": cols.get("traffic_direction"),
    }
    f["proto"], dst_port = proto_and_port(cols)
    f["src.port"] = pc.coalesce(cols.get("l4.TCP.source_port"), cols.get("l4.UDP.source_port"),
                                cols.get("l4.SCTP.source_port"))
    f["dst.port"] = dst_port
    syn = pc.fill_null(cols.get("l4.TCP.flags.SYN"), False)
    ack = pc.fill_null(cols.get("l4.TCP.flags.ACK"), False)
    f["syn"] = pc.and_(syn, pc.invert(ack))
    f["rst"] = pc.fill_null(cols.get("l4.TCP.flags.RST"), False)
    for side, ip, prefix in (("source", src_ip, "src"), ("destination", dst_ip, "dst")):
        for k, v in _side(cols, side, n, ip, enrich).items():
            f[f"{prefix}.{k}"] = v
    names = cols.get("destination_names")
    f["dst.name"] = first_item(names, n)
    # DNS (L7 records from the DNS proxy)
    l7type = cols.get("l7.type")
    query = cols.get("l7.dns.query")
    f["dns.request"] = pc.fill_null(pc.and_(query.is_valid(), pc.equal(l7type, "REQUEST")), False)
    f["dns.response"] = pc.fill_null(pc.and_(query.is_valid(), pc.equal(l7type, "RESPONSE")), False)
    f["dns.rcode"] = pc.if_else(f["dns.response"], pc.fill_null(cols.get("l7.dns.rcode"), 0),
                                pa.scalar(None, pa.int64()))
    qtypes = cols.get("l7.dns.qtypes")
    f["dns.qtype"] = first_item(qtypes, n)
    enc = pc.dictionary_encode(query)
    if isinstance(enc, pa.ChunkedArray):
        enc = enc.combine_chunks()
    feats = [name_features(q) for q in enc.dictionary.to_pylist()]
    idx = enc.indices

    def col(getter: Callable[[Any], Any], type_: pa.DataType) -> pa.Array:
        return pc.take(pa.array([getter(x) for x in feats], type=type_), idx)
    f["dns.query"] = col(lambda x: x.name, pa.string())
    f["dns.registered"] = col(lambda x: x.registered or None, pa.string())
    f["dns.tld"] = col(lambda x: x.tld, pa.string())
    f["dns.subdomain"] = col(lambda x: x.subdomain, pa.string())
    f["dns.length"] = col(lambda x: x.length, pa.int64())
    f["dns.labels"] = col(lambda x: x.labels, pa.int64())
    f["dns.max_label"] = col(lambda x: x.max_label, pa.int64())
    f["dns.entropy"] = col(lambda x: x.entropy, pa.float64())
    f["dns.dga"] = col(lambda x: x.dga, pa.float64())
    f["dns.cluster_local"] = col(lambda x: x.cluster_local, pa.bool_())
    ips = cols.get("l7.dns.ips")
    f["dns.ips"] = ips
    intel = enrich.intel
    if intel:
        f["intel.ip"] = pc.if_else(pc.not_equal(map_unique(dst_ip, intel.match_ip, pa.string()), ""),
                                   map_unique(dst_ip, intel.match_ip, pa.string()), pa.scalar(None, pa.string()))
        dom = pc.coalesce(map_unique(f["dns.query"], intel.match_domain, pa.string()),
                          pa.scalar("", pa.string()))
        dom2 = pc.coalesce(map_unique(f["dst.name"], intel.match_domain, pa.string()), pa.scalar("", pa.string()))
        both = pc.if_else(pc.not_equal(dom, ""), dom, dom2)
        f["intel.domain"] = pc.if_else(pc.not_equal(both, ""), both, pa.scalar(None, pa.string()))
        flat = pc.list_flatten(ips)
        answer = np.full(n, None, dtype=object)
        if len(flat):
            hits = map_unique(flat, intel.match_ip, pa.string()).to_pylist()
            parents = pc.list_parent_indices(ips).to_numpy(zero_copy_only=False)
            for p, h in zip(parents.tolist(), hits, strict=True):
                if h and answer[p] is None:
                    answer[p] = h
        f["intel.answer"] = pa.array(answer.tolist(), pa.string())
    else:
        for k in ("intel.ip", "intel.domain", "intel.answer"):
            f[k] = pa.nulls(n, pa.string())
    # names reached by connection (destination_names): the shape of the name the client resolved
    nf = [name_features(q) if q else None for q in pc.unique(f["dst.name"]).to_pylist()]
    lookup = {x.name + "": x for x in nf if x is not None}
    dn = pc.utf8_lower(pc.utf8_rtrim(f["dst.name"], characters="."))
    f["dst.name_tld"] = map_unique(dn, lambda v: lookup[v].tld if v in lookup else None, pa.string())
    f["dst.name_dga"] = map_unique(dn, lambda v: lookup[v].dga if v in lookup else None, pa.float64())
    f["dst.name_registered"] = map_unique(dn, lambda v: lookup[v].registered if v in lookup else None, pa.string())
    # the connection's client and server, whichever way this packet goes
    reply = pc.fill_null(f["is_reply"], False)
    f["conn.client"] = pc.if_else(reply, f["dst.key"], f["src.key"])
    f["conn.client_wl"] = pc.if_else(reply, f["dst.wl_key"], f["src.wl_key"])
    f["conn.client_ns"] = pc.if_else(reply, f["dst.namespace"], f["src.namespace"])
    f["conn.server"] = pc.if_else(reply, f["src.key"], f["dst.key"])
    f["conn.server_ip"] = pc.if_else(reply, src_ip, dst_ip)
    f["conn.server_port"] = pc.if_else(reply, f["src.port"], f["dst.port"])
    f["conn.server_world"] = pc.if_else(reply, f["src.world"], f["dst.world"])
    # where a policy drop happened: the namespace whose policy decided
    egress = pc.fill_null(pc.equal(f["direction"], "EGRESS"), False)
    f["drop.namespace"] = pc.if_else(egress, pc.coalesce(f["src.namespace"], f["dst.namespace"]),
                                     pc.coalesce(f["dst.namespace"], f["src.namespace"]))
    world = pc.and_(f["dst.world"], pc.invert(f["dst.apiserver"]))
    f["ext"] = pc.if_else(world, pc.binary_join_element_wise(
        f["src.wl_key"], pc.coalesce(f["dst.name_registered"], dst_ip), "|"), pa.scalar(None, pa.string()))
    f["wl_domain"] = pc.if_else(pc.and_(f["dns.request"], pc.invert(pc.fill_null(f["dns.cluster_local"], True))),
                                pc.binary_join_element_wise(f["src.wl_key"], f["dns.registered"], "|"),
                                pa.scalar(None, pa.string()))
    f["ns_pair"] = pc.binary_join_element_wise(pc.coalesce(f["src.namespace"], f["src.key"]),
                                               pc.coalesce(f["dst.namespace"], f["dst.key"]), "->")
    f["edge"] = pc.binary_join_element_wise(f["src.wl_key"], f["dst.wl_key"],
                                            pc.cast(pc.coalesce(f["dst.port"], 0), pa.string()), "|")
    arrays = [a.combine_chunks() if isinstance(a, pa.ChunkedArray) else a for a in f.values()]
    return pa.table(arrays, names=list(f))


FEATURE_NAMES: tuple[str, ...] = (
    "time", "uuid", "node", "verdict", "drop_reason", "type", "is_reply", "direction", "proto", "src.port",
    "dst.port", "syn", "rst",
    *(f"{s}.{k}" for s in ("src", "dst") for k in ("namespace", "pod", "workload", "identity", "world", "host",
                                                   "apiserver", "remote_node", "health", "class", "key", "wl_key",
                                                   "ip")),
    "dst.name", "dns.request", "dns.response", "dns.rcode", "dns.qtype", "dns.query", "dns.registered", "dns.tld",
    "dns.subdomain", "dns.length", "dns.labels", "dns.max_label", "dns.entropy", "dns.dga", "dns.cluster_local",
    "dns.ips", "intel.ip", "intel.domain", "intel.answer", "dst.name_tld", "dst.name_dga", "dst.name_registered",
    "conn.client", "conn.client_wl", "conn.client_ns", "conn.server", "conn.server_ip", "conn.server_port", "conn.server_world",
    "drop.namespace", "ext", "wl_domain", "ns_pair", "edge",
    # with --policies (added by the engine from the policy evaluator)
    "policy.bypass", "policy.unexpected_drop", "policy.explain",
)
