"""Filters on the flow's own fields: uuid, verdict, drop reason, event type, direction, reply,
IP version, encryption, trace ids, interface."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from flowtrail.filters.base import (
    Columns,
    FilterError,
    Mask,
    Predicate,
    digits,
    key_needles,
    quoted,
    str_list,
    to_mask,
)
from flowtrail.filters.protojson import proto_uint
from flowtrail.model import enums
from flowtrail.model.schema import camel
from flowtrail.util import compute as pc


def uuid(values: Any) -> Predicate:
    ids = str_list("uuid", values)

    def fn(cols: Columns) -> Mask:
        # a lost event (nil flow) never matches; a flow without uuid has the uuid ""
        return cols.is_flow() & to_mask(pc.is_in(pc.fill_null(cols.get("uuid"), ""), pa.array(ids, pa.string())))

    return Predicate("uuid", ("uuid",), fn, None if "" in ids else quoted(ids))


def _enum_names(field: str, values: Any, table: dict[str, int]) -> list[str]:
    if not isinstance(values, list):
        raise FilterError(f"{field}: expected a list")
    by_number = {v: k for k, v in table.items()}
    out = []
    for v in values:
        if isinstance(v, str) and v in table:
            out.append(v)
        elif isinstance(v, int) and not isinstance(v, bool) and v in by_number:
            out.append(by_number[v])
        else:
            raise FilterError(f"{field}: invalid value {v!r}")
    return out


def _enum_needles(path: str, names: list[str], table: dict[str, int]) -> tuple[bytes, ...]:
    key = path.split(".")[-1]
    return quoted(names) + key_needles(sorted({key, camel(key)}), [str(table[n]) for n in names])


def _enum_predicate(field: str, path: str, values: Any, table: dict[str, int]) -> Predicate:
    names = _enum_names(field, values, table)
    default = next(k for k, v in table.items() if v == 0)

    def fn(cols: Columns) -> Mask:
        # an absent enum is its zero name, but a lost event (nil flow) matches no value
        col = pc.fill_null(cols.get(path), default)
        return cols.is_flow() & to_mask(pc.is_in(col, pa.array(names, pa.string())))

    needles = None if default in names else _enum_needles(path, names, table)
    return Predicate(field, (path,), fn, needles)


def verdict(values: Any) -> Predicate:
    return _enum_predicate("verdict", "verdict", values, enums.VERDICT)


def drop_reason_desc(values: Any) -> Predicate:
    names = _enum_names("drop_reason_desc", values, enums.DROP_REASON)
    inner = _enum_predicate("drop_reason_desc", "drop_reason_desc", names, enums.DROP_REASON)

    def fn(cols: Columns) -> Mask:
        # only DROPPED flows carry a drop reason worth matching
        return to_mask(pc.equal(cols.get("verdict"), "DROPPED")) & inner.fn(cols)

    needles = inner.needles or _enum_needles("verdict", ["DROPPED"], enums.VERDICT)
    return Predicate("drop_reason_desc", ("drop_reason_desc", "verdict"), fn, needles)


def traffic_direction(values: Any) -> Predicate:
    return _enum_predicate("traffic_direction", "traffic_direction", values, enums.TRAFFIC_DIRECTION)


def ip_version(values: Any) -> Predicate:
    return _enum_predicate("ip_version", "IP.ipVersion", values, enums.IP_VERSION)


def event_type(values: Any) -> Predicate:
    if not isinstance(values, list) or not all(isinstance(v, dict) for v in values):
        raise FilterError("event_type: expected a list of {type, match_sub_type, sub_type} objects")
    entries = []
    for v in values:
        names = {"type", "match_sub_type", "sub_type", "matchSubType", "subType"}
        if set(v) - names:
            raise FilterError(f"event_type: unknown key(s) {sorted(set(v) - names)}")
        entries.append(
            (
                int(v.get("type", 0) or 0),
                bool(v.get("match_sub_type", v.get("matchSubType", False))),
                int(v.get("sub_type", v.get("subType", 0)) or 0),
            )
        )

    def fn(cols: Columns) -> Mask:
        present = cols.valid("event_type")
        typ = pc.fill_null(cols.get("event_type.type"), 0).to_numpy(zero_copy_only=False)
        sub = pc.fill_null(cols.get("event_type.sub_type"), 0).to_numpy(zero_copy_only=False)
        out = np.zeros(cols.n, dtype=bool)
        for t, match_sub, s in entries:
            m = present.copy()
            if t != 0:
                m &= typ == t
            if match_sub:
                m &= sub == s
            out |= m
        return out

    needles = None
    if all(t != 0 for t, _, _ in entries):
        needles = digits([t for t, _, _ in entries])
    return Predicate("event_type", ("event_type",), fn, needles)


def reply(values: Any) -> Predicate:
    if not isinstance(values, list) or not all(isinstance(v, bool) for v in values):
        raise FilterError("reply: expected a list of booleans")
    wanted = set(values)

    def fn(cols: Columns) -> Mask:
        is_reply = cols.get("is_reply")
        known = to_mask(pc.is_valid(is_reply))
        val = to_mask(is_reply)
        # hubble treats an unknown is_reply on DROPPED flows as false (Hubble UI compatibility)
        dropped = to_mask(pc.equal(cols.get("verdict"), "DROPPED"))
        val = np.where(known, val, False)
        known = known | dropped
        out = np.zeros(cols.n, dtype=bool)
        for w in wanted:
            out |= known & (val == w)
        return out

    return Predicate("reply", ("is_reply", "verdict"), fn, None)


def encrypted(values: Any) -> Predicate:
    if not isinstance(values, list) or not all(isinstance(v, bool) for v in values):
        raise FilterError("encrypted: expected a list of booleans")
    wanted = set(values)

    def fn(cols: Columns) -> Mask:
        enc = to_mask(cols.get("IP.encrypted"))
        out = np.zeros(cols.n, dtype=bool)
        for w in wanted:
            out |= enc == w
        return out

    needles = (b'"encrypted"',) if wanted == {True} else None
    return Predicate("encrypted", ("IP.encrypted",), fn, needles)


def trace_id(values: Any) -> Predicate:
    ids = str_list("trace_id", values)
    path = "trace_context.parent.trace_id"

    def fn(cols: Columns) -> Mask:
        # a flow (or lost event) without trace context has the trace id ""
        return to_mask(pc.is_in(pc.fill_null(cols.get(path), ""), pa.array(ids, pa.string())))

    return Predicate("trace_id", (path,), fn, None if "" in ids else quoted(ids))


def ip_trace_id(values: Any) -> Predicate:
    if not isinstance(values, list):
        raise FilterError("ip_trace_id: expected a list")
    ids = [proto_uint(v, 64, "ip_trace_id") for v in values]

    def fn(cols: Columns) -> Mask:
        # 0 is the trace id of every flow (and lost event) without one
        col = pc.fill_null(cols.get("ip_trace_id.trace_id"), "0")
        return to_mask(pc.is_in(col, pa.array([str(i) for i in ids], pa.string())))

    return Predicate("ip_trace_id", ("ip_trace_id.trace_id",), fn, None)


def interface(values: Any) -> Predicate:
    if not isinstance(values, list) or not all(isinstance(v, dict) for v in values):
        raise FilterError("interface: expected a list of {index, name} objects")
    wanted = [(int(v.get("index", 0) or 0), str(v.get("name", "") or "")) for v in values]

    def fn(cols: Columns) -> Mask:
        present = cols.valid("interface")
        idx = pc.fill_null(cols.get("interface.index"), 0).to_numpy(zero_copy_only=False)
        name = pc.fill_null(cols.get("interface.name"), "")
        out = np.zeros(cols.n, dtype=bool)
        for i, nm in wanted:
            m = present.copy()
            if i > 0:
                m &= idx == i
            if nm:
                m &= to_mask(pc.equal(name, nm))
            out |= m
        return out

    return Predicate("interface", ("interface",), fn, (b'"interface"',))
