"""Replaying decoded Hubble flows through the evaluator: audit and what-if.

Vectorized per distinct connection: each batch is reduced to the distinct tuples (source
endpoint, destination endpoint, protocol, port, and the L7 / DNS facts the policy set can look
at); each tuple is evaluated once (and cached across batches) and the verdicts are mapped back to
the flows with numpy. Python work is per distinct tuple and per finding group, never per flow.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from flowtrail.detect.features import FEATURE_PATHS, Enrichment, build
from flowtrail.filters.base import Columns
from flowtrail.policy.endpoints import Endpoint, Inventory, IPAddr, from_identity_labels, parse_ip
from flowtrail.policy.evaluate import Connection, Evaluator, HTTPRequest, Verdict
from flowtrail.policy.model import FQDNPeer, Rule
from flowtrail.sources.decode import Decoded, Decoder

REPLAY_PATHS = sorted(set(FEATURE_PATHS) | {
    "event_type.type", "l7.http.method", "l7.http.url", "l7.http.headers", "l7.dns.query", "l7.dns.ips",
    "source.labels", "destination.labels", "destination_names"})

_SEP = "\x1e"
_REPLY = b'"is_reply":true'
_DNS_ANSWERS = b'"ips":['
_POLICY_DROPS = ("POLICY_DENIED", "POLICY_DENY")
MAX_EXAMPLES = 3


class ReplayDecoder(Decoder):
    """The decoder of REPLAY_PATHS that does not parse what a replay never judges.

    Replies are not evaluated (§1.7) and are 35-40 % of Hubble flows; JSON parsing is most of the
    cost of a replay, so lines holding the key ``"is_reply":true`` are skipped before parsing.
    The byte sequence cannot occur inside a JSON string (its quotes would be escaped), so a line
    with it is a reply; a reply written any other way (``isReply``, spaces) is simply decoded and
    then skipped as before. Replies carrying DNS answers are kept when toFQDNs rules need them.
    Lines that are not plain JSON objects are still decoded, so bad lines are reported as before.
    """

    def __init__(self, keep_dns_answers: bool) -> None:
        super().__init__(REPLAY_PATHS)
        self.keep_dns_answers = keep_dns_answers

    def decode_block(self, data: bytes | bytearray, source: str = "<block>", first_line: int = 1,
                     needle_groups: Any = None, markers: Any = (), columns: bool = True,
                     wanted: np.ndarray | None = None) -> Decoded:
        if wanted is None and needle_groups is None and columns and data:
            newlines = np.flatnonzero(np.frombuffer(data, np.uint8) == 10)
            count = len(newlines) + (data[-1] != 10)
            skip = _lines_with(data, _REPLY, newlines, count)
            if self.keep_dns_answers and skip.any():
                skip &= ~_lines_with(data, _DNS_ANSWERS, newlines, count)
            wanted = ~skip
        return super().decode_block(data, source, first_line, needle_groups, markers, columns, wanted)


def _lines_with(data: bytes | bytearray, needle: bytes, newlines: np.ndarray, count: int) -> np.ndarray:
    """Which of the ``count`` lines of ``data`` contain ``needle``."""
    # bytes.find is memchr-fast: about 1 ms per MB here, a few % of parsing the same lines
    hits = []
    at = data.find(needle)
    while at != -1:
        hits.append(at)
        at = data.find(needle, at + len(needle))
    out = np.zeros(count, bool)
    if hits:
        out[np.searchsorted(newlines, np.asarray(hits, np.int64))] = True
    return out


@dataclass
class Group:
    """Flows of one finding kind between one workload pair on one port."""

    kind: str
    src: str
    dst: str
    protocol: str
    port: int | None
    count: int = 0
    first_ns: int = 0
    last_ns: int = 0
    uuids: list[str] = field(default_factory=list)
    verdict: Verdict | None = None
    observed: str = ""

    def add(self, count: int, first: int, last: int, uuids: Iterable[str]) -> None:
        self.first_ns = first if not self.count else min(self.first_ns, first)
        self.last_ns = last if not self.count else max(self.last_ns, last)
        self.count += count
        for u in uuids:
            if len(self.uuids) < MAX_EXAMPLES and u and u not in self.uuids:
                self.uuids.append(u)


@dataclass
class RowVerdicts:
    """Per flow row of a batch: the index of its distinct connection, or -1 when not evaluated."""

    key: np.ndarray
    verdicts: list[Verdict]
    feats: pa.Table


class Replayer:
    """Evaluates the connection-opening flows of each batch; the caller classifies them."""

    def __init__(self, evaluator: Evaluator, inventory: Inventory) -> None:
        self.ev = evaluator
        self.inv = inventory
        pols = evaluator.policies
        rules = [r for p in pols for r in p.rules]
        self.uses_http = any(pr.l7 is not None and pr.l7.http for r in rules for pr in r.ports or ())
        self.uses_http_headers = any(
            h.headers for r in rules for pr in r.ports or () if pr.l7 is not None for h in pr.l7.http or ())
        self.uses_dns = any(pr.l7 is not None and pr.l7.dns for r in rules for pr in r.ports or ())
        self.uses_fqdn = any(isinstance(p, FQDNPeer) for r in rules for p in r.peers or ())
        self.dns_names: dict[str, set[str]] = {}  # answer IP -> names, from DNS responses seen
        self._cache: dict[str, int] = {}
        self.verdicts: list[Verdict] = []
        self.used_rules: set[Rule] = set()
        self.endpoints: dict[str, Endpoint] = {}  # workload key -> an endpoint (for selection reports)
        self._parsed: dict[tuple[Any, ...], Endpoint] = {}
        self._ips: dict[str, IPAddr | None] = {}

    def feed(self, table: pa.Table) -> RowVerdicts:
        if "flow" in table.column_names:
            table = table.filter(table.column("flow").is_valid())
        cols = Columns(table)
        feats = build(table, Enrichment())
        n = table.num_rows
        if self.uses_fqdn:
            self._learn_dns(cols)
        proto = feats.column("proto").combine_chunks()
        reply = pc.fill_null(feats.column("is_reply").combine_chunks(), False)
        verdict = feats.column("verdict").combine_chunks()
        # replies of allowed connections are allowed (§1.7): only the opening direction is judged
        usable = pc.and_(pc.is_valid(proto), pc.invert(reply))
        usable = pc.and_(usable, pc.is_in(verdict, pa.array(["FORWARDED", "REDIRECTED", "DROPPED", "AUDIT"])))
        mask = np.asarray(usable.to_numpy(zero_copy_only=False), dtype=bool)
        key_idx = np.full(n, -1, dtype=np.int64)
        if not mask.any():
            return RowVerdicts(key_idx, self.verdicts, feats)
        parts = self._key_parts(cols, feats)
        keys = pc.binary_join_element_wise(*[pc.fill_null(pc.cast(p, pa.string()), "") for p in parts], _SEP)
        enc = pc.dictionary_encode(keys)
        codes = np.asarray(enc.indices.to_numpy(zero_copy_only=False))
        uniq = enc.dictionary.to_pylist()
        sel_codes = np.unique(codes[mask])
        _, first_rows = np.unique(np.where(mask, codes, -1), return_index=True)
        first_of = {int(codes[r]): int(r) for r in first_rows if mask[r]}
        local = np.full(len(uniq), -1, dtype=np.int64)
        pending = [int(c) for c in sel_codes if uniq[c] not in self._cache]
        if pending:
            rows = pa.array([first_of[c] for c in pending], pa.int64())
            self._evaluate(cols, feats, rows, [uniq[c] for c in pending])
        for c in sel_codes:
            local[int(c)] = self._cache[uniq[int(c)]]
        key_idx[mask] = local[codes[mask]]
        return RowVerdicts(key_idx, self.verdicts, feats)

    # ---- keys and connections ----

    def _key_parts(self, cols: Columns, feats: pa.Table) -> list[pa.Array]:
        def f(name: str) -> pa.Array:
            return feats.column(name).combine_chunks()
        parts = [pc.binary_join(pc.fill_null(cols.get("source.labels"), pa.scalar([], pa.list_(pa.string()))), ","),
                 f("src.namespace"), f("src.pod"), f("src.ip"), f("src.identity"),
                 pc.binary_join(pc.fill_null(cols.get("destination.labels"), pa.scalar([], pa.list_(pa.string()))), ","),
                 f("dst.namespace"), f("dst.pod"), f("dst.ip"), f("dst.identity"), f("proto"), f("dst.port"),
                 pc.coalesce(cols.get("l4.ICMPv4.type"), cols.get("l4.ICMPv6.type"))]
        if self.uses_http:
            parts += [cols.get("l7.http.method"), cols.get("l7.http.url")]
            if self.uses_http_headers:
                hdr = cols.get("l7.http.headers")
                flat = pc.list_flatten(hdr)
                joined = pc.binary_join_element_wise(pc.struct_field(flat, "key"), pc.struct_field(flat, "value"), ":")
                parts.append(pc.binary_join(pa.ListArray.from_arrays(hdr.offsets, joined), "\n")
                             if len(flat) else pa.nulls(len(hdr), pa.string()))
        if self.uses_dns:
            parts.append(cols.get("l7.dns.query"))
        if self.uses_fqdn:
            names = cols.get("destination_names")
            parts.append(pc.binary_join(pc.fill_null(names, pa.scalar([], pa.list_(pa.string()))), ","))
            ips = f("dst.ip")
            learned = [",".join(sorted(self.dns_names.get(ip, ()))) if ip else None
                       for ip in pc.unique(ips).to_pylist()]
            lookup = pa.array(learned, pa.string())
            parts.append(pc.take(lookup, pc.index_in(ips, pc.unique(ips))))
        return parts

    def _learn_dns(self, cols: Columns) -> None:
        q = cols.get("l7.dns.query")
        ips = cols.get("l7.dns.ips")
        has = pc.and_(pc.is_valid(q), pc.greater(pc.fill_null(pc.list_value_length(ips), 0), 0))
        if not pc.any(has).as_py():
            return
        sub_q = pc.filter(q, has).to_pylist()
        sub_ips = pc.filter(ips, has).to_pylist()
        for name, answers in zip(sub_q, sub_ips, strict=True):
            for ip in answers or ():
                self.dns_names.setdefault(ip, set()).add(name)

    def _evaluate(self, cols: Columns, feats: pa.Table, rows: pa.Array, keys: list[str]) -> None:
        def take(path: str, feat: bool = False) -> list[Any]:
            arr = feats.column(path).combine_chunks() if feat else cols.get(path)
            return pc.take(arr, rows).to_pylist()
        s_lab, d_lab = take("source.labels"), take("destination.labels")
        s_ns, s_pod, s_ip, s_id = take("src.namespace", True), take("src.pod", True), take("src.ip", True), take("src.identity", True)
        d_ns, d_pod, d_ip, d_id = take("dst.namespace", True), take("dst.pod", True), take("dst.ip", True), take("dst.identity", True)
        proto, port = take("proto", True), take("dst.port", True)
        icmp = pc.take(pc.coalesce(cols.get("l4.ICMPv4.type"), cols.get("l4.ICMPv6.type")), rows).to_pylist()
        s_wl, d_wl = take("src.wl_key", True), take("dst.wl_key", True)
        method = take("l7.http.method") if self.uses_http else [None] * len(keys)
        url = take("l7.http.url") if self.uses_http else [None] * len(keys)
        headers = take("l7.http.headers") if self.uses_http_headers else [None] * len(keys)
        query = take("l7.dns.query") if self.uses_dns else [None] * len(keys)
        names = take("destination_names") if self.uses_fqdn else [None] * len(keys)
        for i, key in enumerate(keys):
            src = self._endpoint(s_lab[i], s_ns[i], s_pod[i], s_ip[i], s_id[i])
            dst = self._endpoint(d_lab[i], d_ns[i], d_pod[i], d_ip[i], d_id[i])
            if src.is_pod and s_wl[i]:
                self.endpoints.setdefault(s_wl[i], src)
            if dst.is_pod and d_wl[i]:
                self.endpoints.setdefault(d_wl[i], dst)
            http = None
            if method[i] or url[i]:
                parts = urlsplit(url[i] or "")
                path = parts.path + (f"?{parts.query}" if parts.query else "")
                http = HTTPRequest(method[i] or "", path, parts.netloc,
                                   tuple((h["key"], h["value"]) for h in headers[i] or ()))
            dst_names = set(names[i] or ())
            if d_ip[i]:
                dst_names |= self.dns_names.get(d_ip[i], set())
            p = {"ICMPv4": "ICMP"}.get(proto[i], proto[i])
            conn = Connection(src, dst, p, port[i], icmp[i], http, query[i], frozenset(dst_names))
            v = self.ev.evaluate(conn)
            self.used_rules.update(v.egress.allowed_by)
            self.used_rules.update(v.ingress.allowed_by)
            self._cache[key] = len(self.verdicts)
            self.verdicts.append(v)

    def _endpoint(self, labels: list[str] | None, ns: str | None, pod: str | None, ip: str | None,
                  identity: int | None) -> Endpoint:
        # replicas and connections of one workload repeat the same identity labels and the same
        # addresses: parse each once (the distinct keys still differ in pod, IP or port)
        lkey = (tuple(labels or ()), ns, identity)
        base = self._parsed.get(lkey)
        if base is None:
            # neither the pod name nor the address decides the kind: they are filled in below
            base = self._parsed[lkey] = from_identity_labels(labels or [], None, ns, None, identity)
        addr = None
        if ip:
            addr = self._ips.get(ip)
            if addr is None and ip not in self._ips:
                addr = self._ips[ip] = parse_ip(ip)
        # the constructor directly: dataclasses.replace costs 3x as much, per distinct connection
        ep = Endpoint(base.kind, addr, base.namespace, pod if base.is_pod else None, base.labels, base.ns_labels,
                      base.ports, base.node, base.entities, base.service_account, base.cluster, base.extra_labels)
        return self.inv.enrich(ep)


# ---- classification ------------------------------------------------------------------------------

def _arr(feats: pa.Table, name: str) -> np.ndarray:
    return np.asarray(feats.column(name).combine_chunks().to_numpy(zero_copy_only=False))


def _per_row(rv: RowVerdicts, values: list[bool]) -> np.ndarray:
    out = np.zeros(len(rv.key), dtype=bool)
    valid = rv.key >= 0
    if values:
        out[valid] = np.array(values, dtype=bool)[rv.key[valid]]
    return out


def _strings(feats: pa.Table, name: str) -> np.ndarray:
    return np.asarray(pc.fill_null(feats.column(name).combine_chunks(), "").to_numpy(zero_copy_only=False),
                      dtype=object)


def classify_audit(rv: RowVerdicts) -> dict[str, np.ndarray]:
    """Row masks of the audit findings of one batch."""
    valid = rv.key >= 0
    eg_denied = _per_row(rv, [v.egress.denied for v in rv.verdicts])
    ig_denied = _per_row(rv, [v.ingress.denied for v in rv.verdicts])
    any_denied = ~_per_row(rv, [v.allowed for v in rv.verdicts]) & valid
    verdict, direction, reason = _strings(rv.feats, "verdict"), _strings(rv.feats, "direction"), _strings(
        rv.feats, "drop_reason")
    passed = valid & np.isin(verdict, ["FORWARDED", "REDIRECTED"])
    # a packet forwarded at the source's egress has not met the destination's ingress yet, so it
    # only proves the egress side; one seen at ingress (or of unknown direction) passed both
    at_egress = direction == "EGRESS"
    at_ingress = direction == "INGRESS"
    uncertain = _per_row(rv, [v.uncertain for v in rv.verdicts])
    bypass = passed & np.where(at_egress, eg_denied, any_denied)
    # a deny that rests on facts the flows do not carry (container ports for named ports) is
    # reported apart, never as a bypass
    unresolved = bypass & uncertain
    bypass &= ~uncertain
    dropped = valid & (verdict == "DROPPED") & np.isin(reason, list(_POLICY_DROPS))
    unexpected = dropped & np.where(at_egress, ~eg_denied, np.where(at_ingress, ~ig_denied, ~any_denied))
    audit = valid & (verdict == "AUDIT")
    unexpected &= ~uncertain
    return {"bypass": bypass, "unexpected-drop": unexpected, "audit-would-drop": audit, "unresolved": unresolved}


def classify_whatif(rv: RowVerdicts) -> dict[str, np.ndarray]:
    """Rows the candidate set would newly drop (observed passing) or newly allow (observed dropped)."""
    valid = rv.key >= 0
    allowed = _per_row(rv, [v.allowed for v in rv.verdicts])
    verdict, reason = _strings(rv.feats, "verdict"), _strings(rv.feats, "drop_reason")
    passed = valid & np.isin(verdict, ["FORWARDED", "REDIRECTED"])
    was_denied = valid & (((verdict == "DROPPED") & np.isin(reason, list(_POLICY_DROPS))) | (verdict == "AUDIT"))
    return {"breaks": passed & ~allowed, "newly-allowed": was_denied & allowed}


def group_rows(groups: dict[tuple[Any, ...], Group], kind: str, mask: np.ndarray, rv: RowVerdicts,
               observed: str = "") -> None:
    """Fold the masked rows into groups keyed by (kind, workload pair, protocol, port)."""
    idx = np.flatnonzero(mask)
    if not len(idx):
        return
    key = rv.key[idx]
    # rows grouped by connection with one stable sort (first rows stay first within a group),
    # not a mask per connection, which is quadratic when a batch has thousands of findings
    order = np.argsort(key, kind="stable")
    uniq, starts, counts = np.unique(key[order], return_index=True, return_counts=True)
    t = _arr(rv.feats, "time")[idx].astype(np.int64)
    uuid_col = rv.feats.column("uuid").combine_chunks()
    src_wl = rv.feats.column("src.wl_key").combine_chunks()
    dst_wl = rv.feats.column("dst.wl_key").combine_chunks()
    verdict_col = rv.feats.column("verdict").combine_chunks()
    for j, k in enumerate(uniq.tolist()):
        members = order[starts[j]:starts[j] + counts[j]]
        rows = idx[members]
        first_rows = rows[:MAX_EXAMPLES]
        v = rv.verdicts[k]
        c = v.connection
        src = src_wl[int(rows[0])].as_py() or c.src.key()
        dst = dst_wl[int(rows[0])].as_py() or c.dst.key()
        gk = (kind, src, dst, c.protocol, c.port)
        g = groups.get(gk)
        if g is None:
            g = groups[gk] = Group(kind, src, dst, c.protocol, c.port, verdict=v,
                                   observed=observed or str(verdict_col[int(rows[0])].as_py()))
        tt = t[members]
        g.add(int(counts[j]), int(tt.min()), int(tt.max()),
              [u for u in pc.take(uuid_col, pa.array(first_rows)).to_pylist() if u])
