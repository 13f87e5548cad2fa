"""Replaying decoded Hubble flows through the evaluator: audit and what-if.

Vectorized per distinct connection: each batch is reduced to the distinct connections (source
endpoint, destination endpoint, protocol, port, and the L7 / DNS facts the policy set can look
at), numbered across batches, and their verdict flags are mapped back to the flows with numpy.
The flags are evaluated once per class of connections that provably share them (pods of one
identity, addresses no CIDR rule tells apart, requests no L7 rule reads: see Replayer._add); a
connection's full `Verdict`, with its explanation, only when a report asks for it. Python work
is per distinct value, class and finding group, never per flow.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, overload
from urllib.parse import urlsplit

import numpy as np
import pyarrow as pa

from flowtrail.detect.features import FEATURE_PATHS, flow_times, proto_and_port, side_keys
from flowtrail.filters.base import Columns
from flowtrail.policy.endpoints import Endpoint, Inventory, IPAddr, from_identity_labels, parse_ip
from flowtrail.policy.evaluate import Connection, DirectionResult, Evaluator, HTTPRequest, Verdict
from flowtrail.policy.model import CIDRPeer, FQDNPeer, IPNet, Rule
from flowtrail.sources import lineclass
from flowtrail.sources.decode import Decoded, Decoder, LineIndex, needle_matcher
from flowtrail.util import compute as pc
from flowtrail.util.arrays import bool_mask, one_array

REPLAY_PATHS = sorted(set(FEATURE_PATHS) | {
    "event_type.type", "l7.http.method", "l7.http.url", "l7.http.headers", "l7.dns.query", "l7.dns.ips",
    "source.labels", "destination.labels", "destination_names"})

_CLASS_COLUMNS = [lineclass.LINE, lineclass.WEIGHT, lineclass.T_FIRST, lineclass.T_LAST, *lineclass.EX_LINES,
                  *lineclass.EX_UUIDS]
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

    Of the other lines, those equal but for what the replay never reads (sources.lineclass) are
    decoded once: the table has a row per class, with its weight, first and last time and first
    uuids (the lineclass columns), and a row of weight 1 for every line in no class.
    """

    def __init__(self, keep_dns_answers: bool, classes: bool = True) -> None:
        super().__init__(REPLAY_PATHS)
        self.keep_dns_answers = keep_dns_answers
        # lines equal but for what the replay never reads are decoded once (sources.lineclass)
        self.classes = classes and lineclass.AVAILABLE

    def decode_block(self, data: bytes | bytearray, source: str = "<block>", first_line: int = 1,
                     needle_groups: Any = None, markers: Any = (), columns: bool = True,
                     wanted: np.ndarray | None = None, index: LineIndex | None = None) -> Decoded:
        if wanted is None and needle_groups is None and columns and data:
            matcher = needle_matcher(((_REPLY,), (_DNS_ANSWERS,)))  # ~5 GB/s here, ~0.7 for bytes.find
            if matcher is not None:
                if index is None:
                    # the index (handed on: the decoder indexes once) made in the search's pass
                    index, line, which = LineIndex.with_matches(data, self.max_line, matcher)
                else:
                    line, which = matcher.lines(data, index.starts)
                skip = np.zeros(index.count, bool)
                skip[line[which == 0]] = True
                if self.keep_dns_answers:
                    skip[line[which == 1]] = False
            else:
                if index is None:
                    index = LineIndex(data, self.max_line)
                skip = _lines_with(data, _REPLY, index.starts)
                if self.keep_dns_answers and skip.any():
                    skip &= ~_lines_with(data, _DNS_ANSWERS, index.starts)
            wanted = ~skip
        if not columns:
            return super().decode_block(data, source, first_line, needle_groups, markers, columns, wanted, index)
        if index is None:
            index = LineIndex(data, self.max_line)
        lc = None
        if self.classes and needle_groups is None and data:
            look = np.ones(index.count, bool) if wanted is None else wanted.copy()
            look &= ~index.empty
            lines = np.flatnonzero(look)
            lc = lineclass.classify(data, index.starts, index.ends, lines, (index.flow & index.plain)[lines],
                                    self.keep_dns_answers)
        if lc is None or not len(lc.rep):
            dec = super().decode_block(data, source, first_line, needle_groups, markers, columns, wanted, index)
            assert dec.table is not None
            dec.table = lineclass.weighted_columns(dec.table, dec.line_numbers - first_line, first_line, None,
                                                   index.count)
            return dec
        assert wanted is not None
        wanted = wanted.copy()
        wanted[lc.classed] = False
        wanted[lc.rep] = True
        dec = super().decode_block(data, source, first_line, None, (), True, wanted, index)
        assert dec.table is not None
        row_lines = dec.line_numbers - first_line
        failed = ~np.isin(lc.rep, row_lines)
        if failed.any():
            # a representative the decoder refused: its class's lines are decoded one by one, so
            # each is reported (or kept) as without classes
            dec = self._declass(data, source, first_line, index, lc, failed, dec)
            row_lines = dec.line_numbers - first_line
        kept = lc.rep >= 0
        dec.stats.flows += int(lc.count[kept].sum()) - int(kept.sum())
        assert dec.table is not None
        dec.table = lineclass.weighted_columns(dec.table, row_lines, first_line, lc, index.count)
        return dec

    def _declass(self, data: bytes | bytearray, source: str, first_line: int, index: LineIndex,
                 lc: lineclass.LineClasses, failed: np.ndarray, dec: Decoded) -> Decoded:
        """``dec`` with the lines of the ``failed`` classes (but their representatives) decoded
        too; those classes are dissolved (their representatives get weight 1)."""
        members = lc.lines[(lc.cls >= 0) & failed[np.maximum(lc.cls, 0)]]
        members = members[~np.isin(members, lc.rep)]
        wanted = np.zeros(index.count, bool)
        wanted[members] = True
        more = super().decode_block(data, source, first_line, None, (), True, wanted, index)
        # the decoder adds lines that are not plain JSON objects itself: those are in `dec` already
        keep = np.isin(more.line_numbers - first_line, members)
        assert dec.table is not None and more.table is not None
        lines = np.concatenate([dec.line_numbers, more.line_numbers[keep]])
        order = np.argsort(lines, kind="stable")
        table = pa.concat_tables([dec.table, more.table.filter(pa.array(keep))]).take(pa.array(order))
        mine = set((members + first_line).tolist())
        errors = sorted([*dec.errors, *(e for e in more.errors if e.line in mine)], key=lambda e: e.line)
        stats = dec.stats
        stats.errors = len(errors)
        stats.flows += int(keep.sum())
        for k in np.flatnonzero(failed).tolist():
            lc.rep[k] = -1  # no longer a class: its rows are weight 1
        dec.table, dec.line_numbers, dec.errors = table, lines[order], errors
        return dec


def _lines_with(data: bytes | bytearray | memoryview, needle: bytes, starts: np.ndarray) -> np.ndarray:
    """Which of the lines of ``data`` (beginning at ``starts``) contain ``needle``, without
    Hyperscan. (re reads bytes and a mapped range, a memoryview with no find(), alike.)"""
    hits = [m.start() for m in re.finditer(re.escape(needle), data)]
    out = np.zeros(len(starts), bool)
    if hits:
        out[np.searchsorted(starts, np.asarray(hits, np.int64), side="right") - 1] = True
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
    """One batch: per flow row the index of its distinct connection (-1: not evaluated), and per
    connection (indexed by that) the verdict's flags; the full `Verdict` is built on access."""

    key: np.ndarray
    verdicts: Sequence[Verdict]
    # per row: uuid, verdict, drop_reason, direction, is_reply, proto, dst.port and the endpoint
    # columns, named as in detect.features (the replay needs none of the other features)
    feats: pa.Table
    allowed: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    egress_denied: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    ingress_denied: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    uncertain: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    protocols: Sequence[str] = ()  # per connection, as in its Connection
    ports: Sequence[int | None] = ()
    cols: Columns | None = None  # the batch's flows, for the features read on demand
    workloads: Callable[[np.ndarray], tuple[list[str | None], list[str | None]]] | None = None
    _workloads: dict[int, tuple[str | None, str | None]] = field(default_factory=dict)
    _times: np.ndarray | None = None
    # the line-class columns (sources.lineclass) when a row may stand for several flows
    classes: pa.Table | None = None

    def times(self) -> np.ndarray:
        """Flow times (ns) of every row, as detect.features computes them for the batch."""
        if self._times is None:
            assert self.cols is not None
            self._times = np.asarray(flow_times(self.cols).to_numpy(zero_copy_only=False)).astype(np.int64)
        return self._times

    def weights(self, rows: np.ndarray) -> np.ndarray:
        """How many flows each of ``rows`` stands for."""
        if self.classes is None:
            return np.ones(len(rows), np.int64)
        return _ints(pc.take(_col(self.classes, lineclass.WEIGHT), pa.array(rows, pa.int64())))

    def time_bounds(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """First and last time (ns) of the flows each of ``rows`` stands for."""
        t = self.times()[rows]
        if self.classes is None:
            return t, t
        at = pa.array(rows, pa.int64())
        first, last = (pc.take(_col(self.classes, name), at) for name in (lineclass.T_FIRST, lineclass.T_LAST))
        if not first.null_count:
            return _ints(first), _ints(last)
        has = bool_mask(first.is_valid())
        return np.where(has, _ints(first), t), np.where(has, _ints(last), t)

    def examples(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[str | None]]:
        """The example flows of ``rows``, in input order per row: for each, the position of its
        row in ``rows``, its place in the input and its uuid. A row stands for itself, or for
        the first EXAMPLES flows with a uuid of its line class."""
        at = pa.array(rows, pa.int64())
        own = pc.take(_col(self.feats, "uuid"), at).to_pylist()
        if self.classes is None:
            return np.arange(len(rows)), rows.astype(np.int64), own
        line = _ints(pc.take(_col(self.classes, lineclass.LINE), at))
        ex_line = np.stack([_ints(pc.take(_col(self.classes, c), at)) for c in lineclass.EX_LINES], axis=1)
        ex_uuid = [pc.take(_col(self.classes, c), at).to_pylist() for c in lineclass.EX_UUIDS]
        classed = bool_mask(pc.take(_col(self.classes, lineclass.T_FIRST), at).is_valid())
        pos: list[int] = []
        places: list[int] = []
        uuids: list[str | None] = []
        for i in range(len(rows)):
            if not classed[i]:
                pos.append(i)
                places.append(int(line[i]))
                uuids.append(own[i])
                continue
            for k in range(lineclass.EXAMPLES):
                if ex_line[i, k] >= 0:
                    pos.append(i)
                    places.append(int(ex_line[i, k]))
                    uuids.append(ex_uuid[k][i])
        return np.array(pos, np.int64), np.array(places, np.int64), uuids

    def workload_keys(self, rows: np.ndarray) -> tuple[list[str | None], list[str | None]]:
        """`src.wl_key` and `dst.wl_key` of the given rows (see Replayer._workload_keys)."""
        missing = [r for r in dict.fromkeys(rows.tolist()) if r not in self._workloads]
        if missing:
            assert self.workloads is not None
            for r, src, dst in zip(missing, *self.workloads(np.array(missing, np.int64)), strict=True):
                self._workloads[r] = (src, dst)
        got = [self._workloads[r] for r in rows.tolist()]
        return [src for src, _ in got], [dst for _, dst in got]


class _Facts(NamedTuple):
    """What the evaluation of a connection reads, from its first row (as the flow gave it)."""

    s_labels: list[str] | None
    s_ns: str | None
    s_pod: str | None
    s_ip: str | None
    s_id: int | None
    d_labels: list[str] | None
    d_ns: str | None
    d_pod: str | None
    d_ip: str | None
    d_id: int | None
    protocol: str
    port: int | None
    icmp: int | None
    method: str | None
    url: str | None
    headers: list[dict[str, str]] | None
    query: str | None
    dst_names: frozenset[str]  # destination_names plus the names learned for the address by then


Flags = tuple[bool, bool, bool, bool]  # allowed, egress denied, ingress denied, uncertain


@dataclass
class _Class:
    """Connections that provably get the same verdict flags (see Replayer._add)."""

    src: Endpoint
    dst: Endpoint
    dirs: tuple[DirectionResult, DirectionResult] | None
    needs_http: bool = False
    needs_dns: bool = False
    flags: Flags | None = None  # None: the L7 facts decide, see by_l7
    by_l7: dict[tuple[HTTPRequest | None, str | None], Flags] = field(default_factory=dict)


class _LazyVerdicts(Sequence[Verdict]):
    """The replay's connections in order of first appearance; a `Verdict` (with its explanation)
    is evaluated when first read: reports need one per finding group, the flags come cheaper."""

    def __init__(self, replayer: Replayer) -> None:
        self._rp = replayer
        self._done: dict[int, Verdict] = {}

    def __len__(self) -> int:
        return self._rp._n

    @overload
    def __getitem__(self, i: int) -> Verdict: ...

    @overload
    def __getitem__(self, i: slice) -> list[Verdict]: ...

    def __getitem__(self, i: int | slice) -> Verdict | list[Verdict]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        v = self._done.get(i)
        if v is None:
            v = self._done[i] = self._rp._verdict(i)
        return v


class _Batch:
    """One batch being fed: its flows, row features, and each column's codes once computed."""

    def __init__(self, cols: Columns, feats: pa.Table) -> None:
        self.cols = cols
        self.feats = feats
        self._codes: dict[str, tuple[list[Any], np.ndarray]] = {}
        # per row the names learned from DNS answers for its destination address by then (toFQDNs)
        self.learned = np.zeros(feats.num_rows, np.int64)

    def workload_codes(self, side: str) -> np.ndarray:
        """Per row the index of its ``side.workloads`` list among the batch's distinct ones
        (items by name and kind, a null apart from an empty string)."""
        name = f"{side}.workloads"
        hit = self._codes.get(name)
        if hit is None:
            lists = self.cols.get(name)
            flat = pc.list_flatten(lists)
            if len(flat):
                # "=" before a value, so that a null ("\x00") and an empty name differ
                text = pc.binary_join_element_wise(
                    *[pc.fill_null(pc.binary_join_element_wise("=", pc.struct_field(flat, f), ""), "\x00")
                      for f in ("name", "kind")], "\x1f")
                offsets = pc.subtract(lists.offsets, lists.offsets[0])  # flatten starts at the first
                lists = pa.ListArray.from_arrays(offsets, text, mask=lists.is_null())
            else:
                lists = pa.array([None if v is None else [] for v in lists.to_pylist()], pa.list_(pa.string()))
            hit = self._codes[name] = _list_codes(lists)
        return hit[1]

    def codes(self, name: str) -> tuple[list[Any], np.ndarray]:
        """Distinct values of a row feature or flow field (lists as tuples) and per row the
        index of its value; see `_codes` and `_list_codes`."""
        hit = self._codes.get(name)
        if hit is None:
            if name in self.feats.column_names:
                hit = _codes(_col(self.feats, name))
            elif name.endswith("labels") or name == "destination_names":
                hit = _list_codes(self.cols.get(name))
            else:
                hit = _codes(self.cols.get(name))
            self._codes[name] = hit
        return hit


class Replayer:
    """Evaluates the connection-opening flows of each batch; the caller classifies them.

    A connection is what the evaluator is given: both endpoints as the flow names them (pod, IP,
    identity labels), protocol, port and the L7 / DNS facts; each is counted, reported and
    explained as before. Its verdict *flags* (allowed, which side denies, uncertain) are
    computed once per class of connections that provably share them (see `_add`): pod names and
    addresses only matter to a pod's traffic to itself, to CIDR rules (through which of the
    policy set's CIDRs hold the address) and to what the inventory knows about that pod or
    address; the request only matters to the L7 rules of the directions that allow it. With
    ``identity_keys=False`` every connection is evaluated in full (the reference for tests).
    """

    def __init__(self, evaluator: Evaluator, inventory: Inventory, identity_keys: bool = True) -> None:
        self.ev = evaluator
        self.inv = inventory
        self.identity_keys = identity_keys
        pols = evaluator.policies
        rules = [r for p in pols for r in p.rules]
        self.uses_http = any(pr.l7 is not None and pr.l7.http for r in rules for pr in r.ports or ())
        self.uses_http_headers = any(
            h.headers for r in rules for pr in r.ports or () if pr.l7 is not None for h in pr.l7.http or ())
        self.uses_dns = any(pr.l7 is not None and pr.l7.dns for r in rules for pr in r.ports or ())
        self.uses_fqdn = any(isinstance(p, FQDNPeer) for r in rules for p in r.peers or ())
        self.dns_names: dict[str, set[str]] = {}  # answer IP -> names, from DNS responses seen
        # the sets of names learned for an address at some row, numbered (0: none)
        self._learned_sets: list[frozenset[str]] = [frozenset()]
        self._learned_text: list[str] = [""]
        self._learned_ids: dict[frozenset[str], int] = {frozenset(): 0}
        self.verdicts: Sequence[Verdict] = _LazyVerdicts(self)
        self.used_rules: set[Rule] = set()
        self.endpoints: dict[str, Endpoint] = {}  # workload key -> an endpoint (for selection reports)
        self.evaluations = 0  # verdict flags evaluated: one per class and per request its L7 rules read
        # connections: key -> number; per number its first row (chunk, row), names and flags
        self._cache: dict[tuple[int, ...], int] = {}
        self._numbers: dict[str, dict[Any, int]] = {}  # per key part: value -> number
        self._n = 0
        self._chunks: list[dict[str, pa.Array]] = []
        self._where = np.zeros((0, 2), np.int64)
        self._names_of = np.zeros(0, np.int64)
        self._flags = np.zeros((0, 4), bool)
        self._protocols: list[str] = []
        self._ports: list[int | None] = []
        # interned facts: the class key of a connection is a tuple of these numbers
        self._parsed: dict[tuple[Any, ...], Endpoint] = {}  # identity -> endpoint without pod and address
        self._identity_ids: dict[tuple[Any, ...], int] = {}
        self._identity_base: list[Endpoint] = []
        self._ips: dict[str, IPAddr | None] = {}
        self._addr_ids: dict[IPAddr, int] = {}
        self._sig_ids: dict[tuple[int, bytes], int] = {}
        self._raw_ids: dict[tuple[str | None, str | None], int] = {}
        self._proto_ids: dict[str, int] = {}
        self._names: list[frozenset[str]] = [frozenset()]
        self._names_ids: dict[frozenset[str], int] = {frozenset(): 0}
        self._classes: dict[tuple[int, ...], _Class] = {}
        self._urls: dict[str, tuple[str, str]] = {}
        # which CIDRs of the policy set hold an address: all that CIDR rules can tell apart
        self._cidrs = list(dict.fromkeys(p for r in rules for p in r.peers or () if isinstance(p, CIDRPeer)))
        self._sigs: dict[str, tuple[int, bytes]] = {}
        # pods and addresses the inventory can fill facts in for (Inventory.enrich)
        self._inv_pods = {name for _, name in inventory.pods}

    def feed(self, table: pa.Table) -> RowVerdicts:
        if "flow" in table.column_names and table.column("flow").null_count:
            table = table.filter(table.column("flow").is_valid())
        cols = Columns(table)
        feats = _row_features(cols)
        batch = _Batch(cols, feats)
        n = table.num_rows
        if self.uses_fqdn:
            self._learn_dns(batch)
        reply = pc.fill_null(_col(feats, "is_reply"), False)
        # replies of allowed connections are allowed (§1.7): only the opening direction is judged
        usable = pc.and_(pc.is_valid(_col(feats, "proto")), pc.invert(reply))
        usable = pc.and_(usable, pc.is_in(_col(feats, "verdict"),
                                          pa.array(["FORWARDED", "REDIRECTED", "DROPPED", "AUDIT"])))
        mask = np.asarray(usable.to_numpy(zero_copy_only=False), dtype=bool)
        key_idx = np.full(n, -1, dtype=np.int64)
        if mask.any():
            key_idx[mask] = self._connections(batch, mask)
        flags = self._flags[:self._n]
        classes = table.select(_CLASS_COLUMNS) if lineclass.WEIGHT in table.column_names else None
        return RowVerdicts(key_idx, self.verdicts, feats, flags[:, 0], flags[:, 1], flags[:, 2], flags[:, 3],
                           self._protocols, self._ports, cols, lambda rows: self._workload_keys(batch, rows),
                           classes=classes)

    # ---- keys and connections ----

    def _connections(self, b: _Batch, mask: np.ndarray) -> np.ndarray:
        """The connection number of each masked row, numbering new connections.

        A connection is identified by its key: the parts of `_key_codes`, each value numbered
        once for the whole replay, as a tuple. Rows are grouped on those numbers with numpy and
        each group's key is looked up once. Connections are numbered in order of their key's
        first row in the batch, and described by their first masked row.
        """
        parts = self._key_codes(b)
        first, inverse = _distinct(parts)
        keys: list[tuple[int, ...]] = list(map(tuple, np.stack([p[first] for p in parts], axis=1).tolist()))
        rows = np.flatnonzero(mask)
        first_masked = np.full(len(first), -1, np.int64)
        groups, at_masked = np.unique(inverse[rows], return_index=True)
        first_masked[groups] = rows[at_masked]
        number = np.array([self._cache.get(k, -1) for k in keys], np.int64)
        # the numbers are exact, so one group is one key
        new = np.flatnonzero((first_masked >= 0) & (number < 0))
        new = new[np.argsort(first[new], kind="stable")]
        number[new] = self._n + np.arange(len(new))
        if len(new):
            self._add(b, first_masked[new], [keys[j] for j in new.tolist()])
        return number[inverse[rows]]

    def _key_codes(self, b: _Batch) -> list[np.ndarray]:
        """A connection's key, part by part: per row the number of the part's value. Values are
        numbered the first time the replay meets them (`_number`); a null is the empty value
        (as a missing pod name and an empty one are the same endpoint)."""
        cols = b.cols
        names = []
        for long, short in (("source", "src"), ("destination", "dst")):
            names.append(f"{long}.labels")
            names += [f"{short}.{f}" for f in ("namespace", "pod", "ip", "identity")]
        names += ["proto", "dst.port"]
        out = [self._number(name, *b.codes(name)) for name in names]
        icmp = pc.coalesce(cols.get("l4.ICMPv4.type"), cols.get("l4.ICMPv6.type"))
        out.append(self._number("icmp", *_codes(icmp)))
        if self.uses_http:
            out += [self._number(p, *_codes(cols.get(p))) for p in ("l7.http.method", "l7.http.url")]
            if self.uses_http_headers:
                hdr = cols.get("l7.http.headers")
                flat = pc.list_flatten(hdr)
                kv = pc.binary_join_element_wise(pc.struct_field(flat, "key"), pc.struct_field(flat, "value"), ":")
                text = (pc.binary_join(pa.ListArray.from_arrays(hdr.offsets, kv), "\n")
                        if len(flat) else pa.nulls(len(hdr), pa.string()))
                out.append(self._number("headers", *_codes(text)))
        if self.uses_dns:
            out.append(self._number("l7.dns.query", *b.codes("l7.dns.query")))
        if self.uses_fqdn:
            out.append(self._number("destination_names", *b.codes("destination_names")))
            out.append(b.learned)  # numbered sets of learned names already
        return out

    def _number(self, part: str, values: list[Any], codes: np.ndarray) -> np.ndarray:
        """Per row the replay-wide number of its value of ``part`` (values and per-row codes as
        `_codes` and `_list_codes` give them; null counts as empty)."""
        seen = self._numbers.setdefault(part, {})
        ids = np.array([seen.setdefault("" if v is None else v, len(seen)) for v in values], np.int64)
        return ids[codes] if len(codes) else np.zeros(0, np.int64)

    def _learn_dns(self, b: _Batch) -> None:
        """Per row of the batch, the names learned for its destination address by then (from the
        answers of earlier batches, earlier rows and its own: Cilium's DNS proxy learns an
        answer before the client sees it); then this batch's answers are learned."""
        vals, codes = b.codes("dst.ip")
        ids = np.array([self._learned_id(self.dns_names.get(ip, ())) if ip else 0 for ip in vals], np.int64)
        learned = ids[codes]
        cols = b.cols
        q = cols.get("l7.dns.query")
        ips = cols.get("l7.dns.ips")
        has = pc.and_(pc.is_valid(q), pc.greater(pc.fill_null(pc.list_value_length(ips), 0), 0))
        if pc.any(has).as_py():
            rows = np.flatnonzero(bool_mask(has))
            sub_ips = pc.filter(ips, has)
            parent = np.asarray(pc.list_parent_indices(sub_ips).to_numpy(zero_copy_only=False), np.int64)
            a_vals, a_codes = _codes(pc.list_flatten(sub_ips))
            n_vals, n_codes = _codes(pc.take(pc.filter(q, has), pa.array(parent)))
            # each distinct (address, name) pair once, at its first row: a busy resolver repeats
            pairs, first = np.unique(a_codes * len(n_vals) + n_codes, return_index=True)
            new: dict[str, list[tuple[int, str]]] = {}
            for pair, at in zip(pairs.tolist(), first.tolist(), strict=True):
                ip, name = a_vals[pair // len(n_vals)], n_vals[pair % len(n_vals)]
                if ip is None or name is None:
                    continue
                known = self.dns_names.setdefault(ip, set())
                if name not in known:
                    known.add(name)
                    new.setdefault(ip, []).append((int(rows[parent[at]]), name))
            where = {ip: k for k, ip in enumerate(vals) if ip}
            for ip, events in new.items():
                k = where.get(ip)
                if k is None:
                    continue  # no flow of this batch goes there
                events.sort()
                names = set(self._learned_sets[int(ids[k])])
                steps = [int(ids[k])]
                for _, name in events:
                    names.add(name)
                    steps.append(self._learned_id(names))
                to = np.flatnonzero(codes == k)
                learned[to] = np.array(steps, np.int64)[np.searchsorted([r for r, _ in events], to, side="right")]
        b.learned = learned

    def _learned_id(self, names: Iterable[str]) -> int:
        key = frozenset(names)
        got = self._learned_ids.get(key)
        if got is None:
            got = self._learned_ids[key] = len(self._learned_sets)
            self._learned_sets.append(key)
            self._learned_text.append(",".join(sorted(key)))
        return got

    def _add(self, b: _Batch, rows: np.ndarray, keys: list[tuple[int, ...]]) -> None:
        """Number the new connections (first rows ``rows``) and compute their verdict flags.

        The flags are those of the connection's class: per endpoint its identity (labels,
        namespace, numeric identity: the Endpoint less pod name and address), which CIDRs of the
        policy set hold its address (CIDR peers; the family, for world-ipv4/-ipv6) and, where the
        inventory may know the pod or address (it fills in container ports, labels, service
        account), pod name and address themselves; then whether both are the same pod (never
        blocked), protocol, port, ICMP type and the names the destination resolved from
        (toFQDNs). Every one of these is interned as a number, so classes are found with numpy;
        each new class is evaluated once, and the request of a connection whose class has L7
        rules once per distinct request.
        """
        c0 = self._n
        chunk = self._store(b, rows, keys)

        def sub(name: str) -> tuple[list[Any], np.ndarray]:
            vals, codes = b.codes(name)
            return vals, codes[rows]
        s_ident = self._identities(sub("source.labels"), sub("src.namespace"), sub("src.identity"))
        d_ident = self._identities(sub("destination.labels"), sub("dst.namespace"), sub("dst.identity"))
        s_sig, s_addr, s_raw = self._addresses(sub("src.ip"), sub("src.pod"))
        d_sig, d_addr, d_raw = self._addresses(sub("dst.ip"), sub("dst.pod"))
        if self.uses_fqdn:
            self._names_of[c0:self._n] = self._dst_names(sub("destination_names"), b.learned[rows])
        self._note_workloads(b, rows, c0, ((s_ident, s_raw), (d_ident, d_raw)))
        if not self.identity_keys:
            self.evaluations += self._n - c0
            for c in range(c0, self._n):
                v = self.verdicts[c]
                self.used_rules.update(v.egress.allowed_by)
                self.used_rules.update(v.ingress.allowed_by)
                self._flags[c] = (v.allowed, v.egress.denied, v.ingress.denied, v.uncertain)
            return

        def named(pods: pa.Array) -> np.ndarray:
            return bool_mask(pc.not_equal(pods, ""))
        same_name = bool_mask(pc.equal(chunk["s_pod"], chunk["d_pod"]))
        same_ip = (s_addr >= 0) & (s_addr == d_addr)
        # Evaluator._same_pod: by name when both have one, else by address
        same = np.where(named(chunk["s_pod"]) & named(chunk["d_pod"]), same_name, same_ip)
        p_vals, p_codes = _codes(chunk["protocol"])
        p_ids = np.array([self._proto_ids.setdefault(v, len(self._proto_ids)) for v in p_vals], np.int64)[p_codes]
        key = [s_ident, s_sig, s_raw, d_ident, d_sig, d_raw, same.astype(np.int64), p_ids, _ints(chunk["port"]),
               _ints(chunk["icmp"]), self._names_of[c0:self._n]]
        first, inverse = _distinct([k + 1 for k in key])  # -1 (none) becomes code 0
        flags = np.zeros((len(first), 4), bool)
        l7: list[_Class | None] = [None] * len(first)
        for j, ck in enumerate(map(tuple, np.stack(key, axis=1)[first].tolist())):
            cls = self._classes.get(ck)
            if cls is None:
                cls = self._classes[ck] = self._new_class(self._facts(c0 + int(first[j])))
            if cls.flags is not None:
                flags[j] = cls.flags
            else:
                l7[j] = cls
        self._flags[c0:self._n] = flags[inverse]
        by_request = [i for i, j in enumerate(inverse.tolist()) if l7[j] is not None]
        if by_request:
            self._l7_flags(chunk, c0, by_request, [l7[inverse[i]] for i in by_request])

    def _store(self, b: _Batch, rows: np.ndarray, keys: list[tuple[int, ...]]) -> dict[str, pa.Array]:
        """Number the new connections and keep their facts (their first rows' columns), read
        back when a Verdict is wanted."""
        cols, feats = b.cols, b.feats
        at = pa.array(rows, pa.int64())

        def take(arr: pa.Array) -> pa.Array:
            return pc.take(arr, at)
        proto = take(_col(feats, "proto"))
        chunk: dict[str, pa.Array] = {
            "s_labels": take(cols.get("source.labels")), "s_ns": take(_col(feats, "src.namespace")),
            "s_pod": take(_col(feats, "src.pod")), "s_ip": take(_col(feats, "src.ip")),
            "s_id": take(_col(feats, "src.identity")),
            "d_labels": take(cols.get("destination.labels")), "d_ns": take(_col(feats, "dst.namespace")),
            "d_pod": take(_col(feats, "dst.pod")), "d_ip": take(_col(feats, "dst.ip")),
            "d_id": take(_col(feats, "dst.identity")),
            "protocol": pc.if_else(pc.equal(proto, "ICMPv4"), "ICMP", proto),
            "port": pc.cast(take(_col(feats, "dst.port")), pa.int64()),
            "icmp": pc.cast(take(pc.coalesce(cols.get("l4.ICMPv4.type"), cols.get("l4.ICMPv6.type"))), pa.int64())}
        if self.uses_http:
            chunk["method"], chunk["url"] = take(cols.get("l7.http.method")), take(cols.get("l7.http.url"))
        if self.uses_http_headers:
            chunk["headers"] = take(cols.get("l7.http.headers"))
        if self.uses_dns:
            chunk["query"] = take(cols.get("l7.dns.query"))
        if self.uses_fqdn:
            chunk["names"] = take(cols.get("destination_names"))
        c0, m = self._n, len(keys)
        self._cache.update(zip(keys, range(c0, c0 + m), strict=True))
        self._grow(c0 + m)
        self._where[c0:c0 + m, 0] = len(self._chunks)
        self._where[c0:c0 + m, 1] = np.arange(m)
        self._chunks.append(chunk)
        self._protocols.extend(chunk["protocol"].to_pylist())
        self._ports.extend(chunk["port"].to_pylist())
        self._n = c0 + m
        return chunk

    def _note_workloads(self, b: _Batch, rows: np.ndarray, c0: int,
                        sides: tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]) -> None:
        """Keep the first pod endpoint seen of each workload, for the selection reports; ``sides``
        are the new connections' (identity, inventory) numbers of source and destination."""
        s_wl, d_wl = self._workload_keys(b, rows)
        for i in range(len(rows)):
            for wl, (ident, raw), side in ((s_wl[i], sides[0], "src"), (d_wl[i], sides[1], "dst")):
                # only a pod identity makes a pod endpoint, or the inventory (for an address)
                if wl and wl not in self.endpoints and (self._identity_base[ident[i]].is_pod or raw[i] >= 0):
                    ep = self._side(self._facts(c0 + i), side)
                    if ep.is_pod:
                        self.endpoints[wl] = ep

    def _l7_flags(self, chunk: dict[str, pa.Array], c0: int, idx: list[int], classes: list[_Class | None]) -> None:
        """Flags of the new connections ``c0 + idx`` whose class has L7 rules: per request."""
        at = pa.array(idx, pa.int64())

        def col(name: str) -> list[Any]:
            return pc.take(chunk[name], at).to_pylist() if name in chunk else [None] * len(idx)
        method, url, headers, query = col("method"), col("url"), col("headers"), col("query")
        for k, (i, cls) in enumerate(zip(idx, classes, strict=True)):
            assert cls is not None and cls.dirs is not None
            http = self._http(method[k], url[k], headers[k]) if cls.needs_http else None
            q = query[k] if cls.needs_dns else None
            hit = cls.by_l7.get((http, q))
            if hit is None:
                self.evaluations += 1
                eg, ig = cls.dirs
                c = c0 + i
                # l7_allows reads the request and the query only
                conn = Connection(cls.src, cls.dst, self._protocols[c], self._ports[c], None, http, q)
                hit = cls.by_l7[(http, q)] = (self.ev.l7_allows(eg, ig, conn), False, False,
                                              eg.unresolved or ig.unresolved)
            self._flags[c0 + i] = hit

    def _workload_keys(self, b: _Batch, rows: np.ndarray) -> tuple[list[str | None], list[str | None]]:
        """`src.wl_key` and `dst.wl_key` of ``rows`` as detect.features.build computes them, for
        these rows only: the replay does not pay for the whole feature set."""
        out: list[list[str | None]] = []
        for side, short, ip in (("source", "src", "IP.source"), ("destination", "dst", "IP.destination")):
            # a pure function of the side's namespace, pod, address, workloads and labels: computed
            # once per distinct endpoint (connections share them: ~20x fewer rows)
            parts = [b.codes(name)[1][rows] for name in (f"{short}.namespace", f"{short}.pod", f"{short}.ip",
                                                         f"{side}.labels")]
            parts.append(b.workload_codes(side)[rows])
            first, inverse = _distinct(parts)
            at = pa.array(rows[first], pa.int64())
            ns, pod, addr, wls, labels = (pc.take(b.cols.get(path), at) for path in (
                f"{side}.namespace", f"{side}.pod_name", ip, f"{side}.workloads", f"{side}.labels"))
            keys = side_keys(ns, pod, addr, wls, labels, len(first))["wl_key"].to_pylist()
            out.append([keys[j] for j in inverse.tolist()])
        return out[0], out[1]

    def _grow(self, n: int) -> None:
        if n <= len(self._flags):
            return
        cap = max(n, 2 * len(self._flags), 1024)
        for name in ("_where", "_names_of", "_flags"):
            old = getattr(self, name)
            new = np.zeros((cap, *old.shape[1:]), old.dtype)
            new[:len(old)] = old
            setattr(self, name, new)

    def _identities(self, labels: tuple[list[Any], np.ndarray], ns: tuple[list[Any], np.ndarray],
                    identity: tuple[list[Any], np.ndarray]) -> np.ndarray:
        """Per row the number of its endpoint identity (labels, namespace, numeric identity);
        each argument is (distinct values, per-row codes)."""
        first, inverse = _distinct([labels[1], ns[1], identity[1]])
        ids = np.empty(len(first), np.int64)
        for j, r in enumerate(first.tolist()):
            key = (labels[0][labels[1][r]], ns[0][ns[1][r]], identity[0][identity[1][r]])
            got = self._identity_ids.get(key)
            if got is None:
                got = self._identity_ids[key] = len(self._identity_base)
                self._identity_base.append(self._base(*key))
            ids[j] = got
        return ids[inverse]

    def _addresses(self, ips: tuple[list[Any], np.ndarray], pods: tuple[list[Any], np.ndarray]
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per row: the number of its address's CIDR signature and of the address (-1: none), and
        of (pod, address) where the inventory may know them (-1: it cannot)."""
        vals, codes = ips
        self._learn_sigs(vals)
        sig = np.full(len(vals), -1, np.int64)
        addr = np.full(len(vals), -1, np.int64)
        for j, ip in enumerate(vals):
            a = self._addr(ip)
            if a is not None:
                sig[j] = self._sig_ids.setdefault(self._cidr_sig(ip, a), len(self._sig_ids))
                addr[j] = self._addr_ids.setdefault(a, len(self._addr_ids))
        raw = np.full(len(codes), -1, np.int64)
        if self._inv_pods or self.inv.by_ip:
            p_vals, p_codes = pods
            known_ip = np.array([self._addr(v) in self.inv.by_ip for v in vals], bool)
            known_pod = np.array([v in self._inv_pods for v in p_vals], bool)
            for i in np.flatnonzero(known_ip[codes] | known_pod[p_codes]).tolist():
                raw[i] = self._raw_ids.setdefault((p_vals[p_codes[i]], vals[codes[i]]), len(self._raw_ids))
        return sig[codes], addr[codes], raw

    def _dst_names(self, names: tuple[list[Any], np.ndarray], learned: np.ndarray) -> np.ndarray:
        """Per row the number of its destination's names: destination_names and the names
        learned by then from DNS answers for its address (``learned``, see `_learn_dns`)."""
        first, inverse = _distinct([names[1], learned])
        ids = np.empty(len(first), np.int64)
        for j, r in enumerate(first.tolist()):
            key = frozenset(names[0][names[1][r]]) | self._learned_sets[int(learned[r])]
            ids[j] = self._names_ids.get(key, -1)
            if ids[j] < 0:
                ids[j] = self._names_ids[key] = len(self._names)
                self._names.append(key)
        return ids[inverse]

    def _cidr_sig(self, ip: str, addr: IPAddr) -> tuple[int, bytes]:
        sig = self._sigs.get(ip)
        if sig is None:
            sig = self._sigs[ip] = (addr.version, bytes(p.contains(addr) for p in self._cidrs))
        return sig

    def _learn_sigs(self, ips: Iterable[str | None]) -> None:
        """CIDR signatures of new IPv4 addresses, all at once: an address against each CIDR of a
        few hundred policies is a few hundred µs in Python (the rest go through `_cidr_sig`)."""
        new = [(ip, a) for ip in dict.fromkeys(ips) if ip and ip not in self._sigs
               for a in (self._addr(ip),) if a is not None and a.version == 4]
        if not new:
            return
        if not self._cidrs:
            self._sigs.update((ip, (4, b"")) for ip, _ in new)
            return
        values = np.array([int(a) for _, a in new], np.int64)[:, None]

        def within(nets: list[IPNet]) -> np.ndarray:
            lo = np.array([int(n.network_address) if n.version == 4 else -1 for n in nets], np.int64)
            hi = np.array([int(n.broadcast_address) if n.version == 4 else -2 for n in nets], np.int64)
            return (values >= lo) & (values <= hi)
        hits = within([p.cidr for p in self._cidrs])
        for j, p in enumerate(self._cidrs):
            if p.excepts:
                hits[:, j] &= ~within(list(p.excepts)).any(axis=1)
        for (ip, _), row in zip(new, hits.astype(np.uint8), strict=True):
            self._sigs[ip] = (4, row.tobytes())

    # ---- verdicts ----

    def _facts(self, c: int) -> _Facts:
        chunk, row = self._where[c].tolist()
        # one value per column: a one-row slice's to_pylist costs 4x as much
        r = {name: arr[row].as_py() for name, arr in self._chunks[chunk].items()}
        return _Facts(r["s_labels"], r["s_ns"], r["s_pod"], r["s_ip"], r["s_id"], r["d_labels"], r["d_ns"],
                      r["d_pod"], r["d_ip"], r["d_id"], r["protocol"], r["port"], r["icmp"], r.get("method"),
                      r.get("url"), r.get("headers"), r.get("query"), self._names[int(self._names_of[c])])

    def _verdict(self, c: int) -> Verdict:
        """The full verdict of connection ``c``, evaluated from its first row as it always was."""
        f = self._facts(c)
        conn = Connection(self._side(f, "src"), self._side(f, "dst"), f.protocol, f.port, f.icmp,
                          self._http(f.method, f.url, f.headers), f.query, f.dst_names)
        return self.ev.evaluate(conn)

    def _new_class(self, f: _Facts) -> _Class:
        self.evaluations += 1
        src, dst = self._side(f, "src"), self._side(f, "dst")
        dirs = self.ev.directions(Connection(src, dst, f.protocol, f.port, f.icmp, None, None, f.dst_names))
        cls = _Class(src, dst, dirs)
        if dirs is None:
            cls.flags = (True, False, False, False)
            return cls
        eg, ig = dirs
        self.used_rules.update(eg.allowed_by)
        self.used_rules.update(ig.allowed_by)
        uncertain = eg.unresolved or ig.unresolved
        if eg.denied or ig.denied:
            cls.flags = (False, eg.denied, ig.denied, uncertain)
            return cls
        # Evaluator.l7_allows reads the request only for directions with HTTP rules and the query
        # only for those with DNS rules: without either, every request gets through
        cls.needs_http = bool(eg.l7_http or ig.l7_http)
        cls.needs_dns = bool(eg.l7_dns or ig.l7_dns)
        if not (cls.needs_http or cls.needs_dns):
            cls.flags = (True, False, False, uncertain)
        return cls

    def _http(self, method: str | None, url: str | None, headers: list[dict[str, str]] | None) -> HTTPRequest | None:
        if not (method or url):
            return None
        split = self._urls.get(url or "")
        if split is None:
            parts = urlsplit(url or "")
            split = self._urls[url or ""] = (parts.path + (f"?{parts.query}" if parts.query else ""), parts.netloc)
        return HTTPRequest(method or "", split[0], split[1], tuple((h["key"], h["value"]) for h in headers or ()))

    def _side(self, f: _Facts, side: str) -> Endpoint:
        if side == "src":
            return self._endpoint(f.s_labels, f.s_ns, f.s_pod, f.s_ip, f.s_id)
        return self._endpoint(f.d_labels, f.d_ns, f.d_pod, f.d_ip, f.d_id)

    def _addr(self, ip: str | None) -> IPAddr | None:
        if not ip:
            return None
        addr = self._ips.get(ip)
        if addr is None and ip not in self._ips:
            addr = self._ips[ip] = parse_ip(ip)
        return addr

    def _base(self, labels: tuple[str, ...], ns: str | None, identity: int | None) -> Endpoint:
        """The endpoint of an identity, without pod name and address (neither decides its kind)."""
        key = (labels, ns, identity)
        base = self._parsed.get(key)
        if base is None:
            base = self._parsed[key] = from_identity_labels(list(labels), None, ns, None, identity)
        return base

    def _endpoint(self, labels: list[str] | None, ns: str | None, pod: str | None, ip: str | None,
                  identity: int | None) -> Endpoint:
        base = self._base(tuple(labels or ()), ns, identity)
        # the constructor directly: dataclasses.replace costs 3x as much
        ep = Endpoint(base.kind, self._addr(ip), base.namespace, pod if base.is_pod else None, base.labels,
                      base.ns_labels, base.ports, base.node, base.entities, base.service_account, base.cluster,
                      base.extra_labels)
        return self.inv.enrich(ep)


def _col(table: pa.Table, name: str) -> pa.Array:
    return one_array(table.column(name))


def _ints(arr: pa.Array) -> np.ndarray:
    """An integer Arrow array as int64 numpy, null as -1 (ports and ICMP types are never negative)."""
    return np.asarray(pc.fill_null(pc.cast(arr, pa.int64()), -1).to_numpy(zero_copy_only=False), dtype=np.int64)


def _distinct(codes: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Rows of equal codes in every column: the first row of each distinct combination and
    each row's combination. Codes are non-negative; they are combined into one int64 (mixed
    radix, renumbered densely before it could overflow), which numpy sorts far faster than
    rows of a 2-D array."""
    n = len(codes[0])
    comp = np.zeros(n, np.int64)
    card = 1
    for c in codes:
        radix = int(c.max()) + 1 if n else 1
        if card * radix >= 1 << 62:
            _, comp = np.unique(comp, return_inverse=True)
            comp = comp.reshape(-1)
            card = int(comp.max()) + 1
        comp = comp * radix + c
        card *= radix
    _, first, inverse = np.unique(comp, return_index=True, return_inverse=True)
    return first, inverse.reshape(-1)


def _ids(arr: pa.Array) -> np.ndarray:
    """Each element's index into the distinct values (nulls: one more)."""
    enc = pc.dictionary_encode(arr)
    return np.asarray(pc.fill_null(enc.indices, len(enc.dictionary)).to_numpy(zero_copy_only=False), np.int64)


def _codes(arr: pa.Array) -> tuple[list[Any], np.ndarray]:
    """Distinct values (None last, for nulls) and each element's index into them."""
    enc = pc.dictionary_encode(arr)
    values = enc.dictionary.to_pylist()
    idx = pc.fill_null(enc.indices, len(values)).to_numpy(zero_copy_only=False)
    return [*values, None], np.asarray(idx, dtype=np.int64)


def _list_codes(lists: pa.Array) -> tuple[list[tuple[Any, ...]], np.ndarray]:
    """Distinct lists (as tuples, a null list as the empty one) and each row's index into them.

    Lists are told apart by their items joined with commas, which is exact unless an item is
    null, empty or holds a comma; then by their length and item codes by position (slower).
    """
    flat = pc.list_flatten(lists)
    if not flat.null_count and not _holds_byte(flat, ord(",")) and not (
            len(flat) and pc.any(pc.equal(pc.binary_length(flat), 0)).as_py()):
        vals, idx = _codes(pc.binary_join(lists, ","))
        return [tuple(v.split(",")) if v else () for v in vals], idx
    lengths = np.asarray(pc.fill_null(pc.list_value_length(lists), 0).to_numpy(zero_copy_only=False), np.int64)
    values, items = _codes(flat)
    starts = np.cumsum(lengths) - lengths
    by_position = [lengths]
    for p in range(int(lengths.max()) if len(lengths) else 0):
        has = lengths > p
        by_position.append(np.where(has, items[np.where(has, starts + p, 0)] + 1, 0))
    first, inverse = _distinct(by_position)
    return ([tuple(values[i] for i in items[starts[r]:starts[r] + lengths[r]].tolist()) for r in first.tolist()],
            inverse)


def _holds_byte(strings: pa.Array, byte: int) -> bool:
    """Whether any of the strings holds ``byte``: one numpy scan of their data (Arrow's
    match_substring takes ten times as long)."""
    if not len(strings):
        return False
    _, offsets_buf, data = strings.buffers()
    if data is None:
        return False
    wide = pa.types.is_large_string(strings.type) or pa.types.is_large_binary(strings.type)
    offsets = np.frombuffer(offsets_buf, np.int64 if wide else np.int32)[strings.offset:strings.offset + len(strings) + 1]
    return bool((np.frombuffer(data, np.uint8)[offsets[0]:offsets[-1]] == byte).any())


def _row_features(cols: Columns) -> pa.Table:
    """The per-row features the replay reads, computed as detect.features.build does."""
    proto, dst_port = proto_and_port(cols)
    f: dict[str, pa.Array] = {
        "uuid": cols.get("uuid"), "verdict": cols.get("verdict"), "drop_reason": cols.get("drop_reason_desc"),
        "direction": cols.get("traffic_direction"), "is_reply": cols.get("is_reply"), "proto": proto,
        "dst.port": dst_port}
    for side, ip, prefix in (("source", "IP.source", "src"), ("destination", "IP.destination", "dst")):
        f[f"{prefix}.namespace"] = cols.get(f"{side}.namespace")
        f[f"{prefix}.pod"] = cols.get(f"{side}.pod_name")
        f[f"{prefix}.identity"] = pc.cast(cols.get(f"{side}.identity"), pa.int64())
        f[f"{prefix}.ip"] = cols.get(ip)
    return pa.table(list(f.values()), names=list(f))


# ---- classification ------------------------------------------------------------------------------

def _per_row(rv: RowVerdicts, values: np.ndarray) -> np.ndarray:
    out = np.zeros(len(rv.key), dtype=bool)
    valid = rv.key >= 0
    out[valid] = values[rv.key[valid]]
    return out


def _is(rv: RowVerdicts, name: str, values: tuple[str, ...]) -> np.ndarray:
    """Rows whose feature ``name`` is one of ``values`` (null: no)."""
    col = rv.feats.column(name).combine_chunks()
    hit = pc.is_in(col, pa.array(values, col.type)) if len(values) > 1 else pc.equal(col, values[0])
    return bool_mask(hit)


def classify_audit(rv: RowVerdicts) -> dict[str, np.ndarray]:
    """Row masks of the audit findings of one batch."""
    valid = rv.key >= 0
    eg_denied = _per_row(rv, rv.egress_denied)
    ig_denied = _per_row(rv, rv.ingress_denied)
    any_denied = ~_per_row(rv, rv.allowed) & valid
    passed = valid & _is(rv, "verdict", ("FORWARDED", "REDIRECTED"))
    # a packet forwarded at the source's egress has not met the destination's ingress yet, so it
    # only proves the egress side; one seen at ingress (or of unknown direction) passed both
    at_egress = _is(rv, "direction", ("EGRESS",))
    at_ingress = _is(rv, "direction", ("INGRESS",))
    uncertain = _per_row(rv, rv.uncertain)
    bypass = passed & np.where(at_egress, eg_denied, any_denied)
    # a deny that rests on facts the flows do not carry (container ports for named ports) is
    # reported apart, never as a bypass
    unresolved = bypass & uncertain
    bypass &= ~uncertain
    dropped = valid & _is(rv, "verdict", ("DROPPED",)) & _is(rv, "drop_reason", _POLICY_DROPS)
    unexpected = dropped & np.where(at_egress, ~eg_denied, np.where(at_ingress, ~ig_denied, ~any_denied))
    audit = valid & _is(rv, "verdict", ("AUDIT",))
    unexpected &= ~uncertain
    return {"bypass": bypass, "unexpected-drop": unexpected, "audit-would-drop": audit, "unresolved": unresolved}


def classify_whatif(rv: RowVerdicts) -> dict[str, np.ndarray]:
    """Rows the candidate set would newly drop (observed passing) or newly allow (observed dropped)."""
    valid = rv.key >= 0
    allowed = _per_row(rv, rv.allowed)
    passed = valid & _is(rv, "verdict", ("FORWARDED", "REDIRECTED"))
    was_denied = valid & ((_is(rv, "verdict", ("DROPPED",)) & _is(rv, "drop_reason", _POLICY_DROPS))
                          | _is(rv, "verdict", ("AUDIT",)))
    return {"breaks": passed & ~allowed, "newly-allowed": was_denied & allowed}


def group_rows(groups: dict[tuple[Any, ...], Group], kind: str, mask: np.ndarray, rv: RowVerdicts,
               observed: str = "") -> None:
    """Fold the masked rows into groups keyed by (kind, workload pair, protocol, port).

    A connection's rows join the group of its first masked row's workloads; groups take the
    verdict of their lowest-numbered connection and, as examples, the uuids of their first flows
    in input order. A row counts as the flows it stands for (RowVerdicts.weights).
    """
    idx = np.flatnonzero(mask)
    if not len(idx):
        return
    key = rv.key[idx]
    # rows grouped by connection with one stable sort (first rows stay first within a connection)
    order = np.argsort(key, kind="stable")
    rows = idx[order]
    conns, starts = np.unique(key[order], return_index=True)
    first = rows[starts]
    counts = np.add.reduceat(rv.weights(rows), starts)
    t_lo, t_hi = rv.time_bounds(rows)
    t_first, t_last = np.minimum.reduceat(t_lo, starts), np.maximum.reduceat(t_hi, starts)
    src_wl, dst_wl = rv.workload_keys(first)
    observed_of: list[Any] | None = None
    gid = np.empty(len(conns), np.int64)
    slots: dict[tuple[Any, ...], int] = {}
    targets: list[Group] = []
    for j, k in enumerate(conns.tolist()):
        src = src_wl[j] or rv.verdicts[k].connection.src.key()
        dst = dst_wl[j] or rv.verdicts[k].connection.dst.key()
        gk = (kind, src, dst, rv.protocols[k], rv.ports[k])
        slot = slots.get(gk)
        if slot is None:
            g = groups.get(gk)
            if g is None:
                if not observed and observed_of is None:
                    observed_of = pc.take(_col(rv.feats, "verdict"), pa.array(first)).to_pylist()
                g = groups[gk] = Group(kind, src, dst, rv.protocols[k], rv.ports[k], verdict=rv.verdicts[k],
                                       observed=observed or str(observed_of[j] if observed_of else None))
            slot = slots[gk] = len(targets)
            targets.append(g)
        gid[j] = slot
    count = np.zeros(len(targets), np.int64)
    np.add.at(count, gid, counts)
    lo = np.full(len(targets), np.iinfo(np.int64).max, np.int64)
    np.minimum.at(lo, gid, t_first)
    hi = np.full(len(targets), np.iinfo(np.int64).min, np.int64)
    np.maximum.at(hi, gid, t_last)
    examples: dict[int, list[str]] = {}
    # example uuids: only for groups still short of them, their first flows in input order. A
    # row stands for at most EXAMPLES of them, and (unclassed) rows are in input order within a
    # connection: the first EXAMPLES rows of each connection hold its first examples.
    short = np.array([len(g.uuids) < MAX_EXAMPLES for g in targets])
    conn_of = np.repeat(np.arange(len(conns)), np.diff(np.append(starts, len(rows))))
    rank = np.arange(len(rows)) - starts[conn_of]
    pick = short[gid[conn_of]]
    if rv.classes is None:
        pick &= rank < MAX_EXAMPLES
    if pick.any():
        picked = rows[pick]
        pos, places, uuids = rv.examples(picked)
        slot_of = gid[conn_of[np.flatnonzero(pick)]][pos]
        for i in np.lexsort((places, slot_of)).tolist():
            u = uuids[i]
            if u:
                examples.setdefault(int(slot_of[i]), []).append(u)
    for s, g in enumerate(targets):
        g.add(int(count[s]), int(lo[s]), int(hi[s]), examples.get(s, ()))
