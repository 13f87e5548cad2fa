"""FlowFilter lists compiled into one batch predicate: allowlist OR-ed, denylist NOR-ed.

A :class:`FilterSet` is built once from JSON FlowFilters (the form of ``--allowlist``, exporter
allow/deny lists and ``--print-raw-filters``) and then applied to any number of decoded batches.
It also tells the reader which fields to decode (``paths``) and which lines it may skip without
decoding (``needle_groups``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import pyarrow as pa

from flowtrail.filters import event, fqdn, http, ip, k8s, l4, node
from flowtrail.filters.base import Columns, FilterError, Mask, Predicate
from flowtrail.filters.protojson import FIELD_ORDER, canonical_filter

# FlowFilter fields in flow.proto declaration order (the order protojson prints them in).
FIELD_BUILDERS: dict[str, Callable[[Any], Predicate]] = {
    "uuid": event.uuid,
    "source_ip": ip.source_ip,
    "source_ip_xlated": ip.source_ip_xlated,
    "source_pod": k8s.source_pod,
    "source_fqdn": fqdn.source_fqdn,
    "source_label": k8s.source_label,
    "source_service": k8s.source_service,
    "source_workload": k8s.source_workload,
    "source_cluster_name": k8s.source_cluster_name,
    "destination_ip": ip.destination_ip,
    "destination_pod": k8s.destination_pod,
    "destination_fqdn": fqdn.destination_fqdn,
    "destination_label": k8s.destination_label,
    "destination_service": k8s.destination_service,
    "destination_workload": k8s.destination_workload,
    "destination_cluster_name": k8s.destination_cluster_name,
    "traffic_direction": event.traffic_direction,
    "verdict": event.verdict,
    "drop_reason_desc": event.drop_reason_desc,
    "interface": event.interface,
    "event_type": event.event_type,
    "http_status_code": http.http_status_code,
    "protocol": l4.protocol,
    "source_port": l4.source_port,
    "destination_port": l4.destination_port,
    "reply": event.reply,
    "dns_query": fqdn.dns_query,
    "source_identity": k8s.source_identity,
    "destination_identity": k8s.destination_identity,
    "http_method": http.http_method,
    "http_path": http.http_path,
    "http_url": http.http_url,
    "http_header": http.http_header,
    "tcp_flags": l4.tcp_flags,
    "node_name": node.node_name,
    "node_labels": k8s.node_labels,
    "ip_version": event.ip_version,
    "trace_id": event.trace_id,
    "ip_trace_id": event.ip_trace_id,
    "encrypted": event.encrypted,
}
if [*FIELD_BUILDERS, "experimental"] != FIELD_ORDER:
    raise ImportError("FIELD_BUILDERS must follow flow.proto's FlowFilter declaration order")
_HTTP_FIELDS = ("http_status_code", "http_method", "http_path", "http_url", "http_header")
_L7_EVENT_TYPE = 129

_NEEDLE_PRIORITY = [
    "uuid", "trace_id", "source_ip", "destination_ip", "source_ip_xlated", "source_pod", "destination_pod",
    "source_service", "destination_service", "source_workload", "destination_workload",
    "source_cluster_name", "destination_cluster_name", "drop_reason_desc", "source_label",
    "destination_label", "source_port", "destination_port", "source_identity", "destination_identity",
    "verdict", "dns_query", "http_header", "http_url", "http_path", "http_method", "http_status_code",
    "source_fqdn", "destination_fqdn", "tcp_flags", "encrypted", "interface", "event_type", "protocol",
    "traffic_direction", "ip_version",
]

# Lines where a needle could hide behind an unusual spelling are always decoded: tabs or CRs as
# JSON whitespace, and \u / \/ escapes (found via their backslash, checked per occurrence).
# Needles themselves are written to survive spaces around ':' (quoted values, bare digits).
NONCANONICAL_MARKERS = (b"\t", b"\r", b"\\u", b"\\/")

_JSON_SPACE = " \t\r\n"


def parse_filter_json(text: str) -> list[dict[str, Any]]:
    """Parse ``--allowlist``/``--denylist``: JSON FlowFilters one after another (``{...}{...}``,
    ``{...} {...}``, one per line), as hubble's ``json.Decoder`` loop reads them; each in its
    canonical form (see :mod:`flowtrail.filters.protojson`)."""
    filters: list[dict[str, Any]] = []
    pos = 0
    while True:
        while pos < len(text) and text[pos] in _JSON_SPACE:
            pos += 1
        if pos >= len(text):
            break
        end = _value_end(text, pos)
        chunk = text[pos:end]
        try:
            obj = orjson.loads(chunk)
        except orjson.JSONDecodeError as exc:
            raise FilterError(f"failed to decode {chunk!r}: {exc}") from exc
        # protojson refuses a field given twice, which a dict no longer shows
        json.loads(chunk, object_pairs_hook=_no_duplicate_keys)
        filters.append(canonical_filter(obj))
        pos = end
    return filters


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        dup = next(k for k in keys if keys.count(k) > 1)
        raise FilterError(f"duplicate field {dup!r} in flow filter")
    return dict(pairs)


def _value_end(s: str, start: int) -> int:
    """End of the JSON object starting at ``start`` (anything else is an error, as in hubble)."""
    if s[start] != "{":
        raise FilterError(f"failed to decode {s[start:start + 40]!r}: invalid character {s[start]!r} "
                          "looking for beginning of a flow filter object")
    depth = 0
    in_str = False
    esc = False
    for i in range(start, len(s)):
        c = s[i]
        if in_str:
            if esc:
                esc = False
            elif c == "\\":
                esc = True
            elif c == '"':
                in_str = False
        elif c == '"':
            in_str = True
        elif c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return i + 1
    raise FilterError(f"failed to decode {s[start:]!r}: unexpected end of JSON input")


@dataclass(frozen=True)
class CompiledFilter:
    """One FlowFilter: the AND of its field predicates."""

    spec: dict[str, Any]
    predicates: tuple[Predicate, ...]

    def mask(self, cols: Columns) -> Mask:
        out = np.ones(cols.n, dtype=bool)
        for p in self.predicates:
            out &= p.fn(cols)
            if not out.any():
                break
        return out

    def needle_groups(self) -> list[tuple[bytes, ...]] | None:
        """Needle groups of the predicates, the likely rarest first (the reader scans the first
        group over the whole block and checks the others only on the lines it found)."""
        preds = sorted(
            (p for p in self.predicates if p.needles),
            key=lambda p: _NEEDLE_PRIORITY.index(p.field) if p.field in _NEEDLE_PRIORITY else 99,
        )
        return [p.needles for p in preds if p.needles] or None


def compile_filter(spec: Mapping[str, Any]) -> CompiledFilter:
    spec = canonical_filter(spec)
    if spec.get("experimental", {}).get("cel_expression"):
        raise FilterError("CEL expressions (experimental.cel_expression) are not supported yet")
    # an event_type list is compatible with http fields when any of its entries asks for l7
    http_field = next((f for f in _HTTP_FIELDS if f in spec), None)
    if http_field and "event_type" in spec and not any(e.get("type", 0) == _L7_EVENT_TYPE for e in spec["event_type"]):
        raise FilterError(f"filtering by {http_field.replace('_', ' ')} requires the event type filter to only "
                          "match 'l7' events")
    preds = tuple(FIELD_BUILDERS[name](value) for name, value in spec.items() if name != "experimental")
    return CompiledFilter(spec, preds)


class FilterSet:
    """Allowlist and denylist of FlowFilters, applied as hubble's ``filters.Apply``."""

    def __init__(self, allow: Sequence[CompiledFilter], deny: Sequence[CompiledFilter]) -> None:
        self.allow = list(allow)
        self.deny = list(deny)

    @classmethod
    def compile(
        cls, allowlist: Sequence[Mapping[str, Any]] = (), denylist: Sequence[Mapping[str, Any]] = ()
    ) -> FilterSet:
        return cls([compile_filter(f) for f in allowlist], [compile_filter(f) for f in denylist])

    @property
    def empty(self) -> bool:
        return not self.allow and not self.deny

    @property
    def paths(self) -> set[str]:
        """Flow fields the filters read (for a projected decode)."""
        return {p for f in self.allow + self.deny for pred in f.predicates for p in pred.paths}

    def needle_groups(self) -> list[list[tuple[bytes, ...]]] | None:
        """Prefilter: a line can pass only if, for some allowlist filter, it contains a needle of
        every group of that filter. None when any line may pass."""
        if not self.allow:
            return None
        out = []
        for f in self.allow:
            groups = f.needle_groups()
            if groups is None:
                return None
            out.append(groups)
        return out

    def mask(self, table: pa.Table) -> Mask:
        """Boolean mask of the rows of a decoded batch that pass."""
        cols = Columns(table)
        if self.allow:
            keep = np.zeros(cols.n, dtype=bool)
            for f in self.allow:
                keep |= f.mask(cols)
        else:
            keep = np.ones(cols.n, dtype=bool)
        for f in self.deny:
            if keep.any():
                keep &= ~f.mask(cols)
        return keep

    def raw(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        return [f.spec for f in self.allow], [f.spec for f in self.deny]


__all__ = ["FIELD_ORDER", "FilterError", "FilterSet", "canonical_filter", "parse_filter_json"]
