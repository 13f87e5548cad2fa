"""Flat, enriched feature columns of a decoded batch: what rule conditions and groupings read.

Everything is columnar. Per-value Python work (PSL lookups, IP classes, intel matching, workload
names from pod names) runs once per *distinct* value of a batch through `map_unique`, never per
flow. Feature names are documented in docs/rules.md; rules may also use any Hubble FlowFilter in
their scope.

Features are built lazily (`Batch`, `Frame`): most rules look at a small share of a batch (drops,
DNS answers, world egress), so the engine asks for the expensive features (joined keys, name
shapes, IP classes) only on the rows a rule still considers. Every feature is a row-wise function
of its flow, so computing it on a subset of rows gives exactly the values a whole-batch build
gives for those rows; `build` materialises every feature for every row.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

from flowtrail.enrich.dnsname import NameFeatures
from flowtrail.enrich.dnsname import features as name_features
from flowtrail.enrich.intel import Intel
from flowtrail.enrich.ipclass import IPClasses
from flowtrail.util import compute as pc
from flowtrail.util.arrays import bool_mask, first_item, list_parents, string_bytes

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

# reserved entities by the Hubble label that marks them, with their feature names
_RESERVED = (("world", "reserved:world"), ("host", "reserved:host"), ("apiserver", "reserved:kube-apiserver"),
             ("remote_node", "reserved:remote-node"), ("health", "reserved:health"))
_RESERVED_LABELS = pa.array([label for _, label in _RESERVED], pa.string())
_NULL_STR = pa.scalar(None, pa.string())
_PROTOS = pa.array(["TCP", "UDP", "SCTP", "ICMPv4", "ICMPv6"], pa.string())
_PROTO_PATHS = ("l4.TCP.destination_port", "l4.UDP.destination_port", "l4.SCTP.destination_port",
                "l4.ICMPv4.type", "l4.ICMPv6.type")


class RawColumns(Protocol):
    """Decoded flow columns by dotted proto path (filters.base.Columns, or a Frame's rows)."""

    def get(self, path: str) -> pa.Array: ...


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


def _scatter(values: pa.Array, rows: np.ndarray, n: int) -> pa.Array:
    """`values` of `rows`, placed at those rows of an n-row array that is null elsewhere."""
    pos = np.full(n, -1, dtype=np.int64)
    pos[rows] = np.arange(len(rows))
    return pc.take(values, pa.array(pos, mask=pos < 0))


def _fill(values: pa.Array, make: Callable[[np.ndarray], pa.Array]) -> pa.Array:
    """coalesce(values, fallback) where `make(rows)` gives the fallback of the null rows only:
    the fallback of the other rows would be computed for nothing."""
    if values.null_count == 0:
        return values
    rows = np.flatnonzero(np.asarray(values.is_null().to_numpy(zero_copy_only=False), dtype=bool))
    return pc.coalesce(values, _scatter(make(rows), rows, len(values)))


def reserved_flags(labels: pa.Array, n: int) -> dict[str, np.ndarray]:
    """Per reserved entity (world, host, apiserver, remote_node, health): rows whose labels carry
    its `reserved:` label."""
    out = {name: np.zeros(n, dtype=bool) for name, _ in _RESERVED}
    flat, parents = list_parents(labels)
    if len(flat) == 0:
        return out
    cand = _maybe_reserved(flat)
    if cand is None:
        cand = np.arange(len(flat))
    if len(cand) == 0:
        return out
    which = np.asarray(pc.fill_null(pc.index_in(pc.take(flat, pa.array(cand)), value_set=_RESERVED_LABELS), -1)
                       .to_numpy(zero_copy_only=False), dtype=np.int64)
    hit = which >= 0
    if hit.any():
        rows, kinds = parents[cand[hit]], which[hit]
        for k, (name, _) in enumerate(_RESERVED):
            out[name][rows[kinds == k]] = True
    return out


_RESERVED_LENGTHS = sorted({len(label.encode()) for _, label in _RESERVED})
_PREFIX = b"reserved:"


def _maybe_reserved(flat: pa.Array) -> np.ndarray | None:
    """Positions of the labels that may be a reserved one (the right length, "r" first and ":"
    ninth), from the string offsets and bytes; None where the layout is not plain (large) utf8.
    A batch holds ~5 labels per endpoint, almost none reserved: hashing them all for an exact
    lookup costs several times this."""
    got = string_bytes(flat)
    if got is None:
        return None
    offsets, data = got
    starts = offsets[:-1]
    lengths = offsets[1:] - starts
    ok = lengths == _RESERVED_LENGTHS[0]
    for size in _RESERVED_LENGTHS[1:]:
        ok |= lengths == size
    cand = np.flatnonzero(ok)
    at = starts[cand]
    return cand[(data[at] == _PREFIX[0]) & (data[at + len(_PREFIX) - 1] == _PREFIX[-1])]


@dataclass
class Enrichment:
    """Configuration of the enrichment step (from --config / --intel)."""

    ip_classes: IPClasses = field(default_factory=IPClasses)
    intel: Intel = field(default_factory=Intel)


def _workload(pod: pa.Array, workloads: pa.Array, n: int) -> pa.Array:
    """The first `workloads` name, else the owner derived from the pod name."""
    first_wl = first_item(workloads, n, "name")
    return _fill(first_wl, lambda rows: map_unique(pc.take(pod, pa.array(rows)), workload_from_pod, pa.string()))


def _reserved_key(flags: dict[str, np.ndarray], ip: pa.Array) -> pa.Array:
    """What identifies an endpoint that is not a pod: its reserved entity, else its address."""
    return pc.if_else(flags["apiserver"], "kube-apiserver",
                      pc.if_else(flags["world"], pc.binary_join_element_wise("world", ip, ":"),
                                 pc.if_else(flags["host"], "host",
                                            pc.if_else(flags["remote_node"], "remote-node", ip))))


def side_keys(ns: pa.Array, pod: pa.Array, ip: pa.Array, workloads: pa.Array, labels: pa.Array,
              n: int) -> dict[str, pa.Array]:
    """One side's `workload` (the first `workloads` name, else derived from the pod name), its
    reserved-entity flags, `key` and `wl_key` (also used by the policy replay for the rows it
    reports, without the rest of the features)."""
    flags = reserved_flags(labels, n)
    out: dict[str, pa.Array] = {"workload": _workload(pod, workloads, n)}
    for name, _ in _RESERVED:
        out[name] = pa.array(flags[name])
    # "ns/pod" for pods, the reserved entity or the address otherwise
    def reserved(rows: np.ndarray) -> pa.Array:
        return _reserved_key({k: v[rows] for k, v in flags.items()}, pc.take(ip, pa.array(rows)))
    out["key"] = _fill(pc.binary_join_element_wise(ns, pod, "/"), reserved)
    out["wl_key"] = _fill(pc.binary_join_element_wise(ns, out["workload"], "/"), reserved)
    return out


def flow_times(cols: RawColumns) -> pa.Array:
    """Flow times in ns (RFC 3339 text parsed one by one where Arrow's cast refuses it)."""
    tcol = cols.get("time")
    try:
        return pc.cast(pc.cast(tcol, pa.timestamp("ns", tz="UTC")), pa.int64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        from flowtrail.model.timeutil import parse_rfc3339_ns
        return pa.array([parse_rfc3339_ns(v) for v in tcol.to_pylist()], pa.int64())


def proto_and_port(cols: RawColumns) -> tuple[pa.Array, pa.Array]:
    """The L4 protocol name (TCP, UDP, SCTP, ICMPv4, ICMPv6 or null) and destination port."""
    tcp = cols.get("l4.TCP.destination_port")
    udp = cols.get("l4.UDP.destination_port")
    sctp = cols.get("l4.SCTP.destination_port")
    # the first protocol whose section is present, picked from the five names by index (nested
    # if_else would copy strings once per level)
    which = np.full(len(tcp), -1, dtype=np.int64)
    for k in reversed(range(len(_PROTOS))):
        which[np.asarray(cols.get(_PROTO_PATHS[k]).is_valid().to_numpy(zero_copy_only=False), dtype=bool)] = k
    proto = pc.take(_PROTOS, pa.array(which, mask=which < 0))
    return proto, pc.coalesce(tcp, udp, sctp)


# ---------------------------------------------------------------------------- lazy feature frames
class Batch:
    """One decoded batch (flow rows only) whose features are computed on demand.

    `all` is the frame of every row; `Frame.subset` gives frames of fewer rows. Frames of the same
    rows are one object, so rules whose conditions narrow to the same rows share what was computed
    for them. The batch owns its frames: hold it while using them."""

    def __init__(self, table: pa.Table, enrich: Enrichment) -> None:
        self.enrich = enrich
        self.n = table.num_rows
        flow = table.column("flow")
        # one chunk (the usual decoded batch) is read in place; combining chunks would copy every
        # nested column of the struct, read or not
        if isinstance(flow, pa.ChunkedArray):
            self._flow: pa.Array | pa.ChunkedArray = flow.chunk(0) if flow.num_chunks == 1 else flow
        else:
            self._flow = flow
        self._raw: dict[str, pa.Array] = {}
        self._frames: dict[bytes, Frame] = {}
        self.all = Frame(self, None)

    def column(self, path: str) -> pa.Array:
        """A decoded flow column of every row, by dotted proto path."""
        arr = self._raw.get(path)
        if arr is None:
            got = pc.struct_field(self._flow, path.split("."))
            arr = got.combine_chunks() if isinstance(got, pa.ChunkedArray) else got
            self._raw[path] = arr
        return arr

    def add(self, name: str, values: pa.Array) -> None:
        """A feature computed elsewhere for every row (the policy replay's `policy.*`)."""
        self.all.put(name, values)

    def frame(self, rows: np.ndarray) -> Frame:
        """The frame of these rows (indices into the batch, in the order given)."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) == self.n and (self.n == 0 or (rows[0] == 0 and rows[-1] == self.n - 1
                                                    and bool((np.diff(rows) == 1).all()))):
            return self.all
        key = rows.tobytes()
        fr = self._frames.get(key)
        if fr is None:
            fr = self._frames[key] = Frame(self, rows)
        return fr


class Frame:
    """Features of some rows of a batch (in a fixed order), each computed on first use and kept.

    Reads like a feature table: `frame[name]`, `num_rows`; `get(path)` reads a decoded column of
    the same rows (the `Columns` interface the feature functions use)."""

    def __init__(self, batch: Batch, rows: np.ndarray | None) -> None:
        # the batch owns its frames; a strong reference back would make each batch a reference
        # cycle, freed (with its Arrow buffers) only when the cycle collector next runs
        self._batch = weakref.ref(batch)
        self.rows = rows  # None: every row of the batch, in order
        self.num_rows = batch.n if rows is None else len(rows)
        self._at = None if rows is None else pa.array(rows, pa.int64())
        self._raw: dict[str, pa.Array] = {}
        self._features: dict[str, pa.Array] = {}
        self._memo: dict[Any, Any] = {}

    @property
    def batch(self) -> Batch:
        batch = self._batch()
        if batch is None:
            raise ReferenceError("the Batch of this frame is gone: keep a reference to it while reading features")
        return batch

    def get(self, path: str) -> pa.Array:
        arr = self._raw.get(path)
        if arr is None:
            full = self.batch.column(path)
            arr = full if self._at is None else pc.take(full, self._at)
            self._raw[path] = arr
        return arr

    def __getitem__(self, name: str) -> pa.Array:
        arr = self._features.get(name)
        if arr is None:
            base = self.batch.all._features.get(name) if self._at is not None else None
            if base is not None:
                # already known for every row: picking is cheaper than computing again
                arr = pc.take(base, self._at)
            else:
                fn = _FEATURES.get(name)
                if fn is None:
                    raise KeyError(name)
                arr = fn(self)
                if isinstance(arr, pa.ChunkedArray):
                    arr = arr.combine_chunks()
            self._features[name] = arr
        return arr

    def put(self, name: str, values: pa.Array) -> None:
        self._features[name] = values

    def memo(self, key: Any, make: Callable[[], Any]) -> Any:
        """Something derived from these rows that several features or conditions share."""
        try:
            return self._memo[key]
        except KeyError:
            value = self._memo[key] = make()
            return value

    def has(self, key: Any) -> bool:
        return key in self._memo

    def subset(self, local: np.ndarray) -> Frame:
        """The frame of rows `local` (positions in this frame)."""
        return self.batch.frame(local if self.rows is None else self.rows[local])

    def table(self, names: list[str]) -> pa.Table:
        return pa.table([self[k] for k in names], names=names)

    def where(self, cond: np.ndarray, make: Callable[[Frame], pa.Array], type_: pa.DataType) -> pa.Array:
        """`make` computed on the rows where `cond` holds, null elsewhere: for features that only
        exist for some rows (world egress, external DNS names)."""
        rows = np.flatnonzero(cond)
        if len(rows) == 0:
            return pa.nulls(self.num_rows, type_)
        if len(rows) == self.num_rows:
            return make(self)
        return _scatter(make(self.subset(rows)), rows, self.num_rows)


# ---------------------------------------------------------------------------- feature definitions
Feature = Callable[[Frame], pa.Array]
_FEATURES: dict[str, Feature] = {}


def _feature(*names: str) -> Callable[[Feature], Feature]:
    def register(fn: Feature) -> Feature:
        for name in names:
            _FEATURES[name] = fn
        return fn
    return register


def _raw(name: str, path: str) -> None:
    _FEATURES[name] = lambda fr: fr.get(path)


for _name, _path in (("uuid", "uuid"), ("node", "node_name"), ("verdict", "verdict"),
                     ("drop_reason", "drop_reason_desc"), ("type", "Type"), ("is_reply", "is_reply"),
                     ("direction", "traffic_direction"), ("dns.ips", "l7.dns.ips")):
    _raw(_name, _path)

_feature("time")(flow_times)


@_feature("proto")
def _proto(fr: Frame) -> pa.Array:
    return fr.memo("proto_and_port", lambda: proto_and_port(fr))[0]


@_feature("dst.port")
def _dst_port(fr: Frame) -> pa.Array:
    return fr.memo("proto_and_port", lambda: proto_and_port(fr))[1]


@_feature("src.port")
def _src_port(fr: Frame) -> pa.Array:
    return pc.coalesce(fr.get("l4.TCP.source_port"), fr.get("l4.UDP.source_port"), fr.get("l4.SCTP.source_port"))


@_feature("syn")
def _syn(fr: Frame) -> pa.Array:
    syn = pc.fill_null(fr.get("l4.TCP.flags.SYN"), False)
    ack = pc.fill_null(fr.get("l4.TCP.flags.ACK"), False)
    return pc.and_(syn, pc.invert(ack))


@_feature("rst")
def _rst(fr: Frame) -> pa.Array:
    return pc.fill_null(fr.get("l4.TCP.flags.RST"), False)


def _side(side: str, prefix: str, ip_path: str) -> None:
    def flags(fr: Frame) -> dict[str, np.ndarray]:
        def make() -> dict[str, np.ndarray]:
            root = fr.batch.all
            if fr.rows is None or (4 * fr.num_rows < fr.batch.n and not root.has((prefix, "flags"))):
                return reserved_flags(fr.get(f"{side}.labels"), fr.num_rows)
            # picking the label lists of a large share of the batch costs more than the lookup
            # over the whole batch, which other subsets then share
            return {k: v[fr.rows] for k, v in flags(root).items()}
        return fr.memo((prefix, "flags"), make)

    def reserved(fr: Frame, rows: np.ndarray) -> pa.Array:
        # only asked for the rows that are no pod (usually few); rows with the same such rows
        # share one frame, so key and wl_key compute it once
        sub = fr.subset(rows) if len(rows) < fr.num_rows else fr
        return sub.memo((prefix, "reserved"), lambda: _reserved_key(flags(sub), sub.get(ip_path)))

    _raw(f"{prefix}.namespace", f"{side}.namespace")
    _raw(f"{prefix}.pod", f"{side}.pod_name")
    _raw(f"{prefix}.ip", ip_path)
    _FEATURES[f"{prefix}.identity"] = lambda fr: pc.cast(fr.get(f"{side}.identity"), pa.int64())
    _FEATURES[f"{prefix}.workload"] = lambda fr: _workload(fr.get(f"{side}.pod_name"), fr.get(f"{side}.workloads"),
                                                          fr.num_rows)

    def flag(name: str) -> Feature:
        return lambda fr: pa.array(flags(fr)[name])

    for name, _ in _RESERVED:
        _FEATURES[f"{prefix}.{name}"] = flag(name)
    _FEATURES[f"{prefix}.class"] = lambda fr: map_unique(fr.get(ip_path), fr.batch.enrich.ip_classes.classify,
                                                        pa.string())
    _FEATURES[f"{prefix}.key"] = lambda fr: _fill(
        pc.binary_join_element_wise(fr.get(f"{side}.namespace"), fr.get(f"{side}.pod_name"), "/"),
        lambda rows: reserved(fr, rows))
    _FEATURES[f"{prefix}.wl_key"] = lambda fr: _fill(
        pc.binary_join_element_wise(fr.get(f"{side}.namespace"), fr[f"{prefix}.workload"], "/"),
        lambda rows: reserved(fr, rows))


_side("source", "src", "IP.source")
_side("destination", "dst", "IP.destination")


@_feature("dst.name")
def _dst_name(fr: Frame) -> pa.Array:
    return first_item(fr.get("destination_names"), fr.num_rows)


# DNS (L7 records from the DNS proxy)
@_feature("dns.request")
def _dns_request(fr: Frame) -> pa.Array:
    return pc.fill_null(pc.and_(fr.get("l7.dns.query").is_valid(), pc.equal(fr.get("l7.type"), "REQUEST")), False)


@_feature("dns.response")
def _dns_response(fr: Frame) -> pa.Array:
    return pc.fill_null(pc.and_(fr.get("l7.dns.query").is_valid(), pc.equal(fr.get("l7.type"), "RESPONSE")), False)


@_feature("dns.rcode")
def _dns_rcode(fr: Frame) -> pa.Array:
    return pc.if_else(fr["dns.response"], pc.fill_null(fr.get("l7.dns.rcode"), 0), pa.scalar(None, pa.int64()))


@_feature("dns.qtype")
def _dns_qtype(fr: Frame) -> pa.Array:
    return first_item(fr.get("l7.dns.qtypes"), fr.num_rows)


def _query_names(fr: Frame) -> tuple[list[NameFeatures], pa.Array]:
    """Name features per distinct query of the rows, and each row's index into them."""
    def make() -> tuple[list[NameFeatures], pa.Array]:
        enc = pc.dictionary_encode(fr.get("l7.dns.query"))
        if isinstance(enc, pa.ChunkedArray):
            enc = enc.combine_chunks()
        return [name_features(q) for q in enc.dictionary.to_pylist()], enc.indices
    return fr.memo("query_names", make)


def _dns_name(name: str, getter: Callable[[NameFeatures], Any], type_: pa.DataType) -> None:
    def feature(fr: Frame) -> pa.Array:
        feats, idx = _query_names(fr)
        return pc.take(pa.array([getter(x) for x in feats], type=type_), idx)
    _FEATURES[name] = feature


_dns_name("dns.query", lambda x: x.name, pa.string())
_dns_name("dns.registered", lambda x: x.registered or None, pa.string())
_dns_name("dns.tld", lambda x: x.tld, pa.string())
_dns_name("dns.subdomain", lambda x: x.subdomain, pa.string())
_dns_name("dns.length", lambda x: x.length, pa.int64())
_dns_name("dns.labels", lambda x: x.labels, pa.int64())
_dns_name("dns.max_label", lambda x: x.max_label, pa.int64())
_dns_name("dns.entropy", lambda x: x.entropy, pa.float64())
_dns_name("dns.dga", lambda x: x.dga, pa.float64())
_dns_name("dns.cluster_local", lambda x: x.cluster_local, pa.bool_())


# threat intel
@_feature("intel.ip")
def _intel_ip(fr: Frame) -> pa.Array:
    intel = fr.batch.enrich.intel
    if not intel:
        return pa.nulls(fr.num_rows, pa.string())
    hits = map_unique(fr.get("IP.destination"), intel.match_ip, pa.string())
    return pc.if_else(pc.not_equal(hits, ""), hits, _NULL_STR)


@_feature("intel.domain")
def _intel_domain(fr: Frame) -> pa.Array:
    intel = fr.batch.enrich.intel
    if not intel:
        return pa.nulls(fr.num_rows, pa.string())
    dom = pc.coalesce(map_unique(fr["dns.query"], intel.match_domain, pa.string()), pa.scalar("", pa.string()))
    dom2 = pc.coalesce(map_unique(fr["dst.name"], intel.match_domain, pa.string()), pa.scalar("", pa.string()))
    both = pc.if_else(pc.not_equal(dom, ""), dom, dom2)
    return pc.if_else(pc.not_equal(both, ""), both, _NULL_STR)


@_feature("intel.answer")
def _intel_answer(fr: Frame) -> pa.Array:
    """The first answer address of a DNS record that the feed lists."""
    intel = fr.batch.enrich.intel
    n = fr.num_rows
    if not intel:
        return pa.nulls(n, pa.string())
    flat, parents = list_parents(fr.get("l7.dns.ips"))
    if len(flat) == 0:
        return pa.nulls(n, pa.string())
    hits = map_unique(flat, intel.match_ip, pa.string())
    listed = np.flatnonzero(bool_mask(pc.greater(pc.utf8_length(hits), 0)))
    idx = np.full(n, -1, dtype=np.int64)
    if len(listed):
        # answers are in list order: the first listed one of a row is where its parent changes
        first = listed[np.concatenate(([True], parents[listed][1:] != parents[listed][:-1]))]
        idx[parents[first]] = first
    return pc.take(hits, pa.array(idx, mask=idx < 0))


# names reached by connection (destination_names): the shape of the name the client resolved
def _connected_names(fr: Frame) -> dict[str, NameFeatures]:
    """Name features of the batch's distinct destination names by normalised name. Built from
    the whole batch, whatever rows ask: a row's lookup key is its own name lower-cased by Arrow,
    which may only be found among another row's names."""
    def make() -> dict[str, NameFeatures]:
        names = pc.unique(fr.batch.all["dst.name"]).to_pylist()
        nf = [name_features(q) if q else None for q in names]
        return {x.name: x for x in nf if x is not None}
    return fr.batch.all.memo("connected_names", make)


def _dst_name_feature(name: str, getter: Callable[[NameFeatures], Any], type_: pa.DataType) -> None:
    def feature(fr: Frame) -> pa.Array:
        lookup = _connected_names(fr)
        dn = fr.memo("dst_name_norm", lambda: pc.utf8_lower(pc.utf8_rtrim(fr["dst.name"], characters=".")))
        return map_unique(dn, lambda v: getter(lookup[v]) if v in lookup else None, type_)
    _FEATURES[name] = feature


_dst_name_feature("dst.name_tld", lambda x: x.tld, pa.string())
_dst_name_feature("dst.name_dga", lambda x: x.dga, pa.float64())
_dst_name_feature("dst.name_registered", lambda x: x.registered, pa.string())


# the connection's client and server, whichever way this packet goes
def _reply(fr: Frame) -> pa.Array:
    return fr.memo("reply", lambda: pc.fill_null(fr["is_reply"], False))


def _conn(name: str, if_reply: str, if_not: str) -> None:
    _FEATURES[name] = lambda fr: pc.if_else(_reply(fr), fr[if_reply], fr[if_not])


_conn("conn.client", "dst.key", "src.key")
_conn("conn.client_wl", "dst.wl_key", "src.wl_key")
_conn("conn.client_ns", "dst.namespace", "src.namespace")
_conn("conn.server", "src.key", "dst.key")
_conn("conn.server_ip", "src.ip", "dst.ip")
_conn("conn.server_port", "src.port", "dst.port")
_conn("conn.server_world", "src.world", "dst.world")


@_feature("drop.namespace")
def _drop_namespace(fr: Frame) -> pa.Array:
    """Where a policy drop happened: the namespace whose policy decided."""
    egress = pc.fill_null(pc.equal(fr["direction"], "EGRESS"), False)
    return pc.if_else(egress, pc.coalesce(fr["src.namespace"], fr["dst.namespace"]),
                      pc.coalesce(fr["dst.namespace"], fr["src.namespace"]))


@_feature("ext")
def _ext(fr: Frame) -> pa.Array:
    world = bool_mask(pc.and_(fr["dst.world"], pc.invert(fr["dst.apiserver"])))
    return fr.where(world, lambda sub: pc.binary_join_element_wise(
        sub["src.wl_key"], pc.coalesce(sub["dst.name_registered"], sub["dst.ip"]), "|"), pa.string())


@_feature("wl_domain")
def _wl_domain(fr: Frame) -> pa.Array:
    external = pc.and_(fr["dns.request"], pc.invert(pc.fill_null(fr["dns.cluster_local"], True)))
    return fr.where(bool_mask(external), lambda sub: pc.binary_join_element_wise(
        sub["src.wl_key"], sub["dns.registered"], "|"), pa.string())


@_feature("ns_pair")
def _ns_pair(fr: Frame) -> pa.Array:
    return pc.binary_join_element_wise(pc.coalesce(fr["src.namespace"], fr["src.key"]),
                                       pc.coalesce(fr["dst.namespace"], fr["dst.key"]), "->")


@_feature("edge")
def _edge(fr: Frame) -> pa.Array:
    return pc.binary_join_element_wise(fr["src.wl_key"], fr["dst.wl_key"],
                                       pc.cast(pc.coalesce(fr["dst.port"], 0), pa.string()), "|")


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
_BUILT = [k for k in FEATURE_NAMES if k in _FEATURES]

# Decoded columns and what a pass or two of Arrow kernels derives from them (no string joins, no
# list lookups, no per-value Python): rule conditions on them run first, and over the whole batch
# (once, for every rule) while a rule still considers a large share of it.
CHEAP_FEATURES = frozenset({
    "time", "uuid", "node", "verdict", "drop_reason", "type", "is_reply", "direction", "proto", "src.port",
    "dst.port", "syn", "rst", "src.namespace", "src.pod", "src.identity", "src.ip", "dst.namespace", "dst.pod",
    "dst.identity", "dst.ip", "dst.name", "dns.request", "dns.response", "dns.rcode", "dns.ips",
    "conn.server_port", "policy.bypass", "policy.unexpected_drop", "policy.explain",
})


def build(table: pa.Table, enrich: Enrichment) -> pa.Table:
    """Feature table (one row per flow row of ``table``; lost events are dropped by the caller)."""
    batch = Batch(table, enrich)
    return batch.all.table(_BUILT)
