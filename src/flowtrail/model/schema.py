"""Cilium's flow.proto as a tree of field specs, and the Arrow schemas derived from it.

The tree is the one place that knows every Flow field Hubble prints (proto names, as in
`hubble observe -o json`). From it come:

* the Arrow schema used to parse JSON lines column-wise (``json_arrow_type``): enums, timestamps and
  64-bit integers stay strings there, exactly as protojson writes them;
* projections of that schema to the fields a filter or a rule needs (``project``), so decoding
  pays only for what is read;
* the lowerCamelCase spelling of each field, which protojson also accepts on input.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Union

import pyarrow as pa


@dataclass(frozen=True)
class Scalar:
    """A leaf field. ``kind`` is one of str, u32, i32, u64, i64, bool, enum, ts, any."""

    kind: str


STR = Scalar("str")
U32 = Scalar("u32")
I32 = Scalar("i32")
U64 = Scalar("u64")
I64 = Scalar("i64")
BOOL = Scalar("bool")
ENUM = Scalar("enum")
TS = Scalar("ts")
ANY = Scalar("any")


@dataclass(frozen=True)
class Repeated:
    item: Spec


Message = dict[str, "Spec"]
Spec = Union[Scalar, Repeated, Message]  # noqa: UP007 - recursive alias needs the string form

WORKLOAD: Message = {"name": STR, "kind": STR}
ENDPOINT: Message = {
    "ID": U32,
    "identity": U32,
    "cluster_name": STR,
    "namespace": STR,
    "labels": Repeated(STR),
    "pod_name": STR,
    "workloads": Repeated(WORKLOAD),
}
SERVICE: Message = {"name": STR, "namespace": STR}
IP: Message = {"source": STR, "source_xlated": STR, "destination": STR, "ipVersion": ENUM, "encrypted": BOOL}
TCP_FLAGS: Message = {f: BOOL for f in ("FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR", "NS")}
PORTS: Message = {"source_port": U32, "destination_port": U32}
LAYER4: Message = {
    "TCP": {**PORTS, "flags": TCP_FLAGS},
    "UDP": dict(PORTS),
    "ICMPv4": {"type": U32, "code": U32},
    "ICMPv6": {"type": U32, "code": U32},
    "SCTP": {**PORTS, "chunk_type": ENUM},
    "VRRP": {"type": U32, "vrid": U32, "priority": U32},
    "IGMP": {"type": U32, "group_address": STR},
}
DNS: Message = {
    "query": STR,
    "ips": Repeated(STR),
    "ttl": U32,
    "cnames": Repeated(STR),
    "observation_source": STR,
    "rcode": U32,
    "qtypes": Repeated(STR),
    "rrtypes": Repeated(STR),
}
HTTP: Message = {
    "code": U32,
    "method": STR,
    "url": STR,
    "protocol": STR,
    "headers": Repeated({"key": STR, "value": STR}),
}
KAFKA: Message = {"error_code": I32, "api_version": I32, "api_key": STR, "correlation_id": I32, "topic": STR}
LAYER7: Message = {"type": ENUM, "latency_ns": U64, "dns": DNS, "http": HTTP, "kafka": KAFKA}
POLICY: Message = {"name": STR, "namespace": STR, "labels": Repeated(STR), "revision": U64, "kind": STR}

# Field order follows what Hubble prints (proto field order as protojson marshals it).
FLOW: Message = {
    "time": TS,
    "uuid": STR,
    "emitter": {"name": STR, "version": STR},
    "verdict": ENUM,
    "drop_reason": U32,
    "auth_type": ENUM,
    "ethernet": {"source": STR, "destination": STR},
    "IP": IP,
    "l4": LAYER4,
    "tunnel": {"protocol": ENUM, "IP": IP, "l4": LAYER4, "vni": U32},
    "source": ENDPOINT,
    "destination": ENDPOINT,
    "Type": ENUM,
    "node_name": STR,
    "node_labels": Repeated(STR),
    "source_names": Repeated(STR),
    "destination_names": Repeated(STR),
    "l7": LAYER7,
    "reply": BOOL,
    "event_type": {"type": I32, "sub_type": I32},
    "source_service": SERVICE,
    "destination_service": SERVICE,
    "traffic_direction": ENUM,
    "policy_match_type": U32,
    "trace_observation_point": ENUM,
    "trace_reason": ENUM,
    "file": {"name": STR, "line": U32},
    "ip_trace_id": {"trace_id": U64, "ip_option_type": U32},
    "drop_reason_desc": ENUM,
    "is_reply": BOOL,
    "debug_capture_point": ENUM,
    "interface": {"index": U32, "name": STR},
    "proxy_port": U32,
    "trace_context": {"parent": {"trace_id": STR}},
    "sock_xlate_point": ENUM,
    "socket_cookie": U64,
    "cgroup_id": U64,
    "Summary": STR,
    "extensions": ANY,
    "egress_allowed_by": Repeated(POLICY),
    "ingress_allowed_by": Repeated(POLICY),
    "egress_denied_by": Repeated(POLICY),
    "ingress_denied_by": Repeated(POLICY),
    "policy_log": Repeated(STR),
    "aggregate": {"ingress_flow_count": U32, "egress_flow_count": U32, "unknown_direction_flow_count": U32},
}

LOST_EVENT: Message = {"source": ENUM, "num_events_lost": U64, "cpu": I32, "first": TS, "last": TS}

# observer.GetFlowsResponse / ExportEvent as one JSON line. agent/debug events and node status are
# recognised by key and carried as raw JSON; their bodies are not needed by any consumer.
ENVELOPE: Message = {"flow": FLOW, "lost_events": LOST_EVENT, "node_name": STR, "time": TS}
OTHER_EVENT_KEYS = ("agent_event", "debug_event", "node_status")

_JSON_SCALARS = {
    "str": pa.string(),
    "u32": pa.int64(),
    "i32": pa.int64(),
    # protojson writes 64-bit integers as strings; they are parsed to integers after decoding.
    "u64": pa.string(),
    "i64": pa.string(),
    "bool": pa.bool_(),
    "enum": pa.string(),
    "ts": pa.string(),
}


def json_arrow_type(spec: Spec) -> pa.DataType:
    """Arrow type that holds ``spec`` exactly as protojson writes it."""
    if isinstance(spec, Scalar):
        return _JSON_SCALARS[spec.kind]
    if isinstance(spec, Repeated):
        return pa.list_(json_arrow_type(spec.item))
    return pa.struct([pa.field(k, json_arrow_type(v)) for k, v in spec.items() if v != ANY])


def lookup(path: str, root: Message = FLOW) -> Spec:
    """Spec of a dotted field path below ``root``; KeyError names the unknown part."""
    spec: Spec = root
    for part in path.split("."):
        if isinstance(spec, Repeated):
            spec = spec.item
        if not isinstance(spec, dict) or part not in spec:
            raise KeyError(f"unknown field {part!r} in path {path!r}")
        spec = spec[part]
    return spec


def project(paths: Iterable[str], root: Message = FLOW) -> Message:
    """The sub-tree of ``root`` holding just ``paths`` (a message path keeps the whole message)."""
    out: Message = {}
    for path in sorted(set(paths)):
        lookup(path, root)
        _insert(out, root, path.split("."))
    return out


def _insert(out: Message, spec: Message, parts: list[str]) -> None:
    head, rest = parts[0], parts[1:]
    child = spec[head]
    if not rest:
        out[head] = child
        return
    inner = child.item if isinstance(child, Repeated) else child
    assert isinstance(inner, dict)
    existing = out.get(head)
    if existing is not None and (existing is child or existing is inner):
        return  # whole message already requested
    sub: Message = {}
    if isinstance(existing, Repeated) and isinstance(existing.item, dict):
        sub = existing.item
    elif isinstance(existing, dict):
        sub = existing
    _insert(sub, inner, rest)
    out[head] = Repeated(sub) if isinstance(child, Repeated) else sub


def envelope_arrow_schema(flow_paths: Iterable[str] | None = None) -> pa.Schema:
    """Schema for parsing JSON lines; ``flow_paths`` None means every Flow field."""
    flow = FLOW if flow_paths is None else project(flow_paths)
    env: Message = {"flow": flow, "lost_events": LOST_EVENT, "node_name": STR, "time": TS}
    return pa.schema([pa.field(k, json_arrow_type(v)) for k, v in env.items()])


def camel(name: str) -> str:
    """protoc's JSON name: drop underscores, upper-case the letter after each."""
    head, *rest = name.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def camel_aliases(root: Message = ENVELOPE) -> dict[str, str]:
    """lowerCamel → proto name for every field whose two spellings differ."""
    out: dict[str, str] = {}

    def walk(spec: Spec) -> None:
        if isinstance(spec, Repeated):
            walk(spec.item)
        elif isinstance(spec, dict):
            for k, v in spec.items():
                if camel(k) != k:
                    out[camel(k)] = k
                walk(v)

    walk(root)
    out.update({camel(k): k for k in OTHER_EVENT_KEYS})
    return out


def path_camel_names(paths: Iterable[str]) -> set[str]:
    """lowerCamel spellings (differing from proto names) of every field on ``paths``."""
    names: set[str] = set()
    for path in paths:
        for part in path.split("."):
            if camel(part) != part:
                names.add(camel(part))
    return names
