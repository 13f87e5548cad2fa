"""FlowFilter JSON as hubble reads and prints it: protojson with proto field names.

hubble unmarshals ``--allowlist``/``--denylist`` (and its own flag filters) into ``flow.FlowFilter``
and prints them back with ``protojson.MarshalOptions{UseProtoNames: true}``. So whatever spelling
came in (lowerCamel names, enum numbers, 64-bit integers as numbers or strings), what is printed
and filtered on is one canonical form: proto field names in declaration order, enum names, 32-bit
integers as numbers, 64-bit integers as strings, zero values and empty lists left out.
:func:`canonical_filter` produces that form and rejects what protojson rejects.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

from flowtrail.filters.base import FilterError
from flowtrail.filters.golang import quote
from flowtrail.model import enums

# A message is its fields in declaration order: (proto name, kind, repeated), where kind is a scalar
# type name, an enum's name → number table, or a nested message.
Message = tuple[tuple[str, Any, bool], ...]

_WORKLOAD: Message = (("name", "string", False), ("kind", "string", False))
_EVENT_TYPE_FILTER: Message = (("type", "int32", False), ("match_sub_type", "bool", False), ("sub_type", "int32", False))
_NETWORK_INTERFACE: Message = (("index", "uint32", False), ("name", "string", False))
_HTTP_HEADER: Message = (("key", "string", False), ("value", "string", False))
_TCP_FLAGS: Message = tuple((f, "bool", False) for f in ("FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR", "NS"))
_EXPERIMENTAL: Message = (("cel_expression", "string", True),)

# flow.proto FlowFilter (protojson prints fields in declaration order).
FLOW_FILTER: Message = (
    ("uuid", "string", True),
    ("source_ip", "string", True),
    ("source_ip_xlated", "string", True),
    ("source_pod", "string", True),
    ("source_fqdn", "string", True),
    ("source_label", "string", True),
    ("source_service", "string", True),
    ("source_workload", _WORKLOAD, True),
    ("source_cluster_name", "string", True),
    ("destination_ip", "string", True),
    ("destination_pod", "string", True),
    ("destination_fqdn", "string", True),
    ("destination_label", "string", True),
    ("destination_service", "string", True),
    ("destination_workload", _WORKLOAD, True),
    ("destination_cluster_name", "string", True),
    ("traffic_direction", enums.TRAFFIC_DIRECTION, True),
    ("verdict", enums.VERDICT, True),
    ("drop_reason_desc", enums.DROP_REASON, True),
    ("interface", _NETWORK_INTERFACE, True),
    ("event_type", _EVENT_TYPE_FILTER, True),
    ("http_status_code", "string", True),
    ("protocol", "string", True),
    ("source_port", "string", True),
    ("destination_port", "string", True),
    ("reply", "bool", True),
    ("dns_query", "string", True),
    ("source_identity", "uint32", True),
    ("destination_identity", "uint32", True),
    ("http_method", "string", True),
    ("http_path", "string", True),
    ("http_url", "string", True),
    ("http_header", _HTTP_HEADER, True),
    ("tcp_flags", _TCP_FLAGS, True),
    ("node_name", "string", True),
    ("node_labels", "string", True),
    ("ip_version", enums.IP_VERSION, True),
    ("trace_id", "string", True),
    ("ip_trace_id", "uint64", True),
    ("encrypted", "bool", True),
    ("experimental", _EXPERIMENTAL, False),
)
FIELD_ORDER = [name for name, _, _ in FLOW_FILTER]

_JSON_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_INT_RANGES = {"int32": (-(1 << 31), (1 << 31) - 1), "uint32": (0, (1 << 32) - 1), "uint64": (0, (1 << 64) - 1)}


def json_name(name: str) -> str:
    """protoc's lowerCamelCase JSON name of a proto field."""
    head, *rest = name.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def proto_int(value: Any, kind: str, where: str) -> int:
    """A protojson integer: a JSON number with an integral value, or a string holding one."""
    lo, hi = _INT_RANGES[kind]
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise FilterError(f"invalid value for {kind} field {where}: {value!r}")
    if isinstance(value, str):
        if not _JSON_NUMBER.fullmatch(value):
            raise FilterError(f"invalid value for {kind} field {where}: {quote(value)}")
        try:
            number = Decimal(value)
        except InvalidOperation:
            raise FilterError(f"invalid value for {kind} field {where}: {quote(value)}") from None
    elif isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise FilterError(f"invalid value for {kind} field {where}: {value!r}")
        number = Decimal(value)
    else:
        number = Decimal(value)
    if number != number.to_integral_value() or not lo <= number <= hi:
        raise FilterError(f"invalid value for {kind} field {where}: {value!r}")
    return int(number)


def proto_uint(value: Any, bits: int, where: str) -> int:
    return proto_int(value, f"uint{bits}", where)


def _scalar(value: Any, kind: Any, where: str) -> Any:
    if value is None:
        raise FilterError(f"invalid value for field {where}: null")
    if isinstance(kind, tuple):
        return canonical_message(value, kind, where)
    if isinstance(kind, dict):  # enum: a known name, or any int32 number (printed by name when known)
        if isinstance(value, str):
            if value not in kind:
                raise FilterError(f"invalid value for enum field {where}: {quote(value)}")
            return value
        number = proto_int(value, "int32", where)
        names = [name for name, num in kind.items() if num == number]
        return names[0] if names else number
    if kind == "string":
        if not isinstance(value, str):
            raise FilterError(f"invalid value for string field {where}: {value!r}")
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise FilterError(f"invalid value for bool field {where}: {value!r}")
        return value
    number = proto_int(value, kind, where)
    return str(number) if kind == "uint64" else number


def _is_zero(value: Any) -> bool:
    return value == "" or value is False or (type(value) is int and value == 0)


def canonical_message(obj: Any, fields: Message, where: str = "") -> dict[str, Any]:
    """One message in protojson's printed form; unknown or repeated fields are errors."""
    if not isinstance(obj, Mapping):
        raise FilterError(f"invalid value for message field {where or 'FlowFilter'}: expected a JSON object")
    by_name = {}
    for name, kind, repeated in fields:
        by_name[name] = (name, kind, repeated)
        by_name.setdefault(json_name(name), (name, kind, repeated))
    values: dict[str, Any] = {}
    seen: set[str] = set()
    for key, value in obj.items():
        if key not in by_name:
            raise FilterError(f"unknown field {quote(str(key))} in {where or 'flow filter'}")
        name, kind, repeated = by_name[key]
        if name in seen:
            raise FilterError(f"duplicate field {quote(str(key))} in {where or 'flow filter'}")
        seen.add(name)
        if value is None:
            continue  # null is "not set" for every field
        path = f"{where}.{name}" if where else name
        if repeated:
            if not isinstance(value, list):
                raise FilterError(f"invalid value for repeated field {path}: expected a JSON array")
            if value:
                values[name] = [_scalar(v, kind, path) for v in value]
        else:
            converted = _scalar(value, kind, path)
            if isinstance(kind, tuple) or not _is_zero(converted):
                values[name] = converted
    return {name: values[name] for name, _, _ in fields if name in values}


def canonical_filter(obj: Any) -> dict[str, Any]:
    """A FlowFilter as hubble prints it back (see the module docstring)."""
    return canonical_message(obj, FLOW_FILTER)
