"""Hubble exporter field masks (``fieldMask`` / ``hubble-export-fieldmask``) applied to JSON lines.

Semantics follow cilium/cilium ``pkg/hubble/parser/fieldmask`` and the exporter that uses it
(``pkg/hubble/exporter``), checked against their source and unit tests:

* paths are proto field names below ``Flow`` (``source.pod_name``, ``IP``, ``l4.TCP``), validated
  like ``fieldmaskpb.New``: every component must be a field of the message it is in, and only the
  last may be a repeated field or a scalar. A bad path is a :class:`FieldMaskError` (the
  exporter refuses to start). Paths are normalised: duplicates and paths under another path go;
* a path's last field is copied whole when the flow has it (``source`` copies the endpoint with
  its labels and workloads) and left out otherwise;
* every message on the way to a leaf is always present in the output, empty if need be: with
  ``source.namespace`` a flow without a source namespace prints ``"source":{}`` (the exporter
  pre-allocates those messages with ``FieldMask.Alloc`` and reuses them), as in the exporter
  lines of Cilium's documentation. The same holds for ``time.seconds``/``time.nanos`` (a
  ``Timestamp`` message: ``1970-01-01T00:00:00Z`` when absent) and ``is_reply.value`` (a
  ``BoolValue``: ``false`` when absent);
* the ``ExportEvent`` wrapper takes ``time`` and ``node_name`` from the *masked* flow: a mask
  without ``time`` gives lines without a top-level ``time``, one without ``node_name`` lines
  without ``node_name`` (``{"flow":{…}}``);
* lost events (and any other non-flow event) are written unmasked, as the exporter does;
* an empty mask is inactive: lines are written as they are.

Where Hubble is not deterministic we pick one answer: when a mask reaches into two members of
one ``oneof`` (``l4.TCP.source_port`` and ``l4.UDP.source_port``), Hubble's result depends on
Go's random map order; we keep the member the flow has, or the first masked one when it has
none. Paths below ``extensions`` (a ``google.protobuf.Any``) are refused.

Output JSON is orjson's encoding of the masked dict, keys in Hubble's field order, which is
also how the decoder writes the rows it re-encodes (no HTML escaping of ``<>&``, unlike Go's
``json.Encoder``; JSON readers see the same values).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import orjson

from flowtrail.model.schema import FLOW, LAYER4, LAYER7, Message, Repeated, Spec
from flowtrail.model.timeutil import parse_rfc3339_ns, protojson_timestamp

# Flow fields that are well-known message types in flow.proto but JSON scalars in protojson.
_TIMESTAMP_FIELDS = {"seconds", "nanos"}
_WRAPPERS: dict[str, set[str]] = {"time": _TIMESTAMP_FIELDS, "is_reply": {"value"}, "extensions": set()}
_ONEOFS: list[tuple[Message, tuple[str, ...]]] = [
    (LAYER4, ("TCP", "UDP", "ICMPv4", "ICMPv6", "SCTP", "VRRP", "IGMP")),
    (LAYER7, ("dns", "http", "kafka")),
]

Tree = dict[str, "Tree | None"]
_Copier = Callable[[Any], Any]


class FieldMaskError(ValueError):
    """A field mask path Hubble's exporter would refuse."""


def parse_paths(value: str | Iterable[str] | None) -> list[str]:
    """Mask paths from config: a list, or one string separated by spaces or commas (the form of
    the ``hubble-export-fieldmask`` ConfigMap key)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [p for p in value.replace(",", " ").split() if p]
    out = []
    for p in value:
        if not isinstance(p, str):
            raise FieldMaskError(f"fieldMask: expected strings, got {p!r}")
        out.append(p.strip())
    return out


def normalize(paths: Iterable[str]) -> list[str]:
    """Validate ``paths`` against Flow and normalise them as ``fieldmaskpb.Normalize`` does
    (sorted, duplicates and paths below another path removed)."""
    checked = sorted({_validate(p) for p in paths})
    out: list[str] = []
    for p in checked:
        if not any(p.startswith(q + ".") for q in out):
            out.append(p)
    return out


def _validate(path: str) -> str:
    if not path or any(not part for part in path.split(".")):
        raise FieldMaskError(f"invalid fieldmask path {path!r}")
    spec: Spec | None = FLOW
    parts = path.split(".")
    for i, part in enumerate(parts):
        where = ".".join(parts[:i]) or "Flow"
        if i == 1 and parts[0] in _WRAPPERS:
            allowed = _WRAPPERS[parts[0]]
            if parts[0] == "extensions":
                raise FieldMaskError(f"fieldmask path {path!r}: fields inside extensions (google.protobuf.Any) "
                                     "are not supported; mask 'extensions' as a whole")
            if part not in allowed or len(parts) > 2:
                raise FieldMaskError(f"invalid fieldmask path {path!r}: {part!r} is not a field of {where}")
            return path
        if not isinstance(spec, dict):
            kind = "a repeated field" if isinstance(spec, Repeated) else "not a message"
            raise FieldMaskError(f"invalid fieldmask path {path!r}: {where} is {kind}")
        if part not in spec:
            raise FieldMaskError(f"invalid fieldmask path {path!r}: {part!r} is not a field of {where}")
        spec = spec[part]
    return path


def _tree(paths: Iterable[str]) -> Tree:
    tree: Tree = {}
    for path in paths:
        node = tree
        parts = path.split(".")
        for part in parts[:-1]:
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            node = nxt
        node[parts[-1]] = None
    return tree


def _timestamp_copier(sub: Tree) -> _Copier:
    keep_s, keep_n = "seconds" in sub, "nanos" in sub

    def copy(value: Any) -> str:
        ns = parse_rfc3339_ns(value) if isinstance(value, str) else None
        secs, nanos = divmod(ns or 0, 10**9)
        return protojson_timestamp(secs if keep_s else 0, nanos if keep_n else 0)

    return copy


def _compile(tree: Tree, spec: Message, top: bool = False) -> Callable[[Any], dict[str, Any]]:
    """A function copying the masked part of one message (a dict or None) into a new dict.

    Per-row Python: the output is one JSON line per exported flow and must be built anyway."""
    steps: list[tuple[str, _Copier | None]] = []  # in spec (Hubble print) order; None = leaf
    for name, sub_spec in spec.items():
        if name not in tree:
            continue
        sub = tree[name]
        if sub is None:
            steps.append((name, None))
        elif top and name == "time":
            steps.append((name, _timestamp_copier(sub)))
        elif top and name == "is_reply":
            steps.append((name, lambda v: bool(v)))
        else:
            assert isinstance(sub_spec, dict)
            steps.append((name, _compile(sub, sub_spec)))
    oneof: tuple[str, ...] = ()
    for group_spec, members in _ONEOFS:
        if spec is group_spec:
            masked = tuple(m for m in members if m in tree)
            if len(masked) > 1 and any(tree[m] is not None for m in masked):
                oneof = masked
    if not steps:
        return lambda _src: {}

    def copy(src: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if not isinstance(src, dict):
            src = {}
        for name, fn in steps:
            if fn is None:
                v = src.get(name)
                if v is not None:
                    out[name] = v
            else:
                out[name] = fn(src.get(name))
        if oneof:
            present = next((m for m in oneof if m in src), None)
            keep = present or next(m for m in oneof if m in out)
            for m in oneof:
                if m != keep:
                    out.pop(m, None)
        return out

    return copy


class FieldMask:
    """A compiled field mask. ``active`` is false for an empty mask (lines pass unchanged)."""

    def __init__(self, paths: str | Iterable[str] | None = None) -> None:
        self.paths = normalize(parse_paths(paths))
        self.active = bool(self.paths)
        self._copy_flow = _compile(_tree(self.paths), FLOW, top=True)

    def __repr__(self) -> str:
        return f"FieldMask({self.paths!r})"

    def flow(self, flow: dict[str, Any] | None) -> dict[str, Any]:
        """The masked copy of a Flow dict."""
        return self._copy_flow(flow)

    def event(self, env: dict[str, Any]) -> dict[str, Any]:
        """The ExportEvent an exporter with this mask writes for an event dict."""
        if not self.active or "flow" not in env:
            return env
        masked = self._copy_flow(env["flow"])
        out: dict[str, Any] = {"flow": masked}
        if masked.get("node_name"):
            out["node_name"] = masked["node_name"]
        if masked.get("time"):
            out["time"] = masked["time"]
        return out

    def line(self, line: bytes | bytearray | memoryview) -> bytes:
        """One canonical JSON line (without newline) masked."""
        if not self.active:
            return bytes(line)
        return orjson.dumps(self.event(orjson.loads(line)))

    def lines(self, rows: Iterable[bytes]) -> list[bytes]:
        """Masked lines, each with its newline (per-row: each output line is built anyway)."""
        if not self.active:
            return [bytes(r) + b"\n" for r in rows]
        loads, dumps, event = orjson.loads, orjson.dumps, self.event
        return [dumps(event(loads(r))) + b"\n" for r in rows]


__all__ = ["FieldMask", "FieldMaskError", "normalize", "parse_paths"]
