"""Kubernetes identity filters: pods, services, namespaces, labels, workloads, clusters, identities."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pyarrow as pa

from flowtrail.filters.base import (
    Columns,
    FilterError,
    Mask,
    Predicate,
    digits,
    list_any,
    per_unique,
    quoted,
    str_list,
    to_mask,
)
from flowtrail.filters.labels import parse_selector
from flowtrail.filters.protojson import proto_uint
from flowtrail.util import compute as pc


def parse_namespace_name(value: str) -> tuple[str, str]:
    """Hubble's ParseNamespaceName: ``ns/prefix``, ``ns/``, ``/prefix``; no slash means ``default``.

    It splits on every slash and keeps the first two parts, so ``ns/a/b`` is the name prefix ``a``.
    """
    if value == "":
        raise FilterError("invalid filter, name must not be empty")
    parts = value.split("/")
    if len(parts) > 1:
        return parts[0], parts[1]
    return "default", value


def _ns_name_predicate(field: str, values: Any, ns_path: str, name_path: str, name_key: str) -> Predicate:
    patterns = [parse_namespace_name(v) for v in str_list(field, values)]

    def fn(cols: Columns) -> Mask:
        ns = pc.fill_null(cols.get(ns_path), "")
        name = pc.fill_null(cols.get(name_path), "")
        has = to_mask(pc.or_(pc.not_equal(ns, ""), pc.not_equal(name, "")))
        out = np.zeros(cols.n, dtype=bool)
        for want_ns, prefix in patterns:
            m = np.ones(cols.n, dtype=bool)
            if want_ns:
                m &= to_mask(pc.equal(ns, want_ns))
            if prefix:
                m &= to_mask(pc.starts_with(name, prefix))
            out |= m
        return out & has

    needles: list[bytes] = []
    for want_ns, prefix in patterns:
        if want_ns:
            needles.extend(quoted([want_ns]))
        elif prefix:
            needles.extend(quoted([prefix], prefix=True))
        else:
            needles = []
            break
    return Predicate(field, (ns_path, name_path), fn, tuple(needles) or None)


def source_pod(values: Any) -> Predicate:
    return _ns_name_predicate("source_pod", values, "source.namespace", "source.pod_name", "pod_name")


def destination_pod(values: Any) -> Predicate:
    return _ns_name_predicate(
        "destination_pod", values, "destination.namespace", "destination.pod_name", "pod_name"
    )


def source_service(values: Any) -> Predicate:
    return _ns_name_predicate(
        "source_service", values, "source_service.namespace", "source_service.name", "name"
    )


def destination_service(values: Any) -> Predicate:
    return _ns_name_predicate(
        "destination_service", values, "destination_service.namespace", "destination_service.name", "name"
    )


_SEP = "\x1f"
_ESCAPED = re.compile(r"\\(.)", re.DOTALL)


def _joined_labels(lists: pa.Array) -> tuple[pa.Array, bool]:
    """Each row's labels as one string (for per-distinct-set evaluation), and whether labels that
    contain the separator had to be escaped (``\\`` → ``\\\\``, separator → ``\\s``)."""
    flat = pc.list_flatten(lists)
    if len(flat) == 0 or not pc.any(pc.match_substring(flat, _SEP)).as_py():
        return pc.binary_join(lists, _SEP), False
    offsets = lists.offsets
    start, end = offsets[0].as_py(), offsets[-1].as_py()
    values = lists.values.slice(start, end - start)
    values = pc.replace_substring(pc.replace_substring(values, "\\", "\\\\"), _SEP, "\\s")
    escaped = pa.ListArray.from_arrays(pc.subtract(offsets, start), values, mask=lists.is_null())
    return pc.binary_join(escaped, _SEP), True


def _label_predicate(field: str, values: Any, path: str) -> Predicate:
    selectors = [parse_selector(v) for v in str_list(field, values)]

    def fn(cols: Columns) -> Mask:
        # one evaluation per distinct label set: a batch has few distinct endpoints
        joined, escaped = _joined_labels(cols.get(path))

        def match(key: str | None) -> bool:
            labels = key.split(_SEP) if key else []
            if escaped:
                labels = [_ESCAPED.sub(lambda m: _SEP if m.group(1) == "s" else m.group(1), lbl) for lbl in labels]
            return any(s.matches(labels) for s in selectors)

        return per_unique(joined, match)

    needles: list[bytes] | None = []
    for s in selectors:
        n = s.needles()
        if n is None or needles is None:
            needles = None
            break
        needles.extend(n)
    return Predicate(field, (path,), fn, tuple(needles) if needles else None)


def source_label(values: Any) -> Predicate:
    return _label_predicate("source_label", values, "source.labels")


def destination_label(values: Any) -> Predicate:
    return _label_predicate("destination_label", values, "destination.labels")


def node_labels(values: Any) -> Predicate:
    return _label_predicate("node_labels", values, "node_labels")


def _workload_predicate(field: str, values: Any, path: str) -> Predicate:
    if not isinstance(values, list) or not all(isinstance(v, dict) for v in values):
        raise FilterError(f"{field}: expected a list of {{name, kind}} objects")
    wanted = [(str(v.get("name", "") or ""), str(v.get("kind", "") or "")) for v in values]

    def fn(cols: Columns) -> Mask:
        lists = cols.get(path)

        def items(flat: pa.Array) -> Mask:
            names = pc.fill_null(pc.struct_field(flat, ["name"]), "")
            kinds = pc.fill_null(pc.struct_field(flat, ["kind"]), "")
            hit = np.zeros(len(flat), dtype=bool)
            for name, kind in wanted:
                m = np.ones(len(flat), dtype=bool)
                if name:
                    m &= to_mask(pc.equal(names, name))
                if kind:
                    m &= to_mask(pc.equal(kinds, kind))
                hit |= m
            return hit

        return list_any(lists, items, cols.n)

    needles = None
    if all(name for name, _ in wanted):
        needles = quoted([name for name, _ in wanted])
    return Predicate(field, (path,), fn, needles)


def source_workload(values: Any) -> Predicate:
    return _workload_predicate("source_workload", values, "source.workloads")


def destination_workload(values: Any) -> Predicate:
    return _workload_predicate("destination_workload", values, "destination.workloads")


def _cluster_predicate(field: str, values: Any, path: str) -> Predicate:
    names = str_list(field, values)
    if any(not v for v in names):
        raise FilterError(f"{field}: empty cluster name")

    def fn(cols: Columns) -> Mask:
        return to_mask(pc.is_in(cols.get(path), pa.array(names, pa.string())))

    return Predicate(field, (path,), fn, quoted(names))


def source_cluster_name(values: Any) -> Predicate:
    return _cluster_predicate("source_cluster_name", values, "source.cluster_name")


def destination_cluster_name(values: Any) -> Predicate:
    return _cluster_predicate("destination_cluster_name", values, "destination.cluster_name")


def _identity_predicate(field: str, values: Any, side: str) -> Predicate:
    if not isinstance(values, list):
        raise FilterError(f"{field}: expected a list of identities")
    ids = [proto_uint(v, 32, field) for v in values]
    path = f"{side}.identity"

    def fn(cols: Columns) -> Mask:
        # a flow without the endpoint matches no identity, not even 0; "source":{} has identity 0
        has_endpoint = cols.valid(side)
        return has_endpoint & to_mask(pc.is_in(pc.fill_null(cols.get(path), 0), pa.array(ids, pa.int64())))

    needles = None if 0 in ids else digits(ids)
    return Predicate(field, (path,), fn, needles)


def source_identity(values: Any) -> Predicate:
    return _identity_predicate("source_identity", values, "source")


def destination_identity(values: Any) -> Predicate:
    return _identity_predicate("destination_identity", values, "destination")
