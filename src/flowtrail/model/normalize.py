"""Canonicalise any JSON spelling protojson accepts into the one Hubble prints.

This is the slow, exact path of the decoder, taken only by lines the columnar fast path cannot
read as they are: lowerCamelCase names, enums given as numbers, 64-bit integers given as numbers,
legacy bare flows (``HUBBLE_COMPAT=legacy-json-output``), explicit default values. The result is
the dict ``hubble observe -o json`` would print for the line.
"""

from __future__ import annotations

import re
from typing import Any

from flowtrail.model import enums
from flowtrail.model.schema import (
    ENUM,
    ENVELOPE,
    FLOW,
    OTHER_EVENT_KEYS,
    Message,
    Repeated,
    Scalar,
    Spec,
    camel,
)

# Keys that only a Flow object has: a line carrying any of them at top level is a legacy bare flow.
_LEGACY_FLOW_KEYS = frozenset(
    {"verdict", "IP", "l4", "source", "destination", "Type", "event_type", "eventType", "uuid", "l7"}
)
_INT_RE = re.compile(r"-?\d+\Z")


class NormalizeError(ValueError):
    """The line is JSON but not a GetFlowsResponse / ExportEvent / Flow."""


def normalize_event(obj: Any) -> tuple[str, dict[str, Any]]:
    """Return (kind, canonical envelope) for one decoded JSON line.

    kind is ``flow``, ``lost_events``, or one of agent_event/debug_event/node_status.
    """
    if not isinstance(obj, dict):
        raise NormalizeError(f"expected a JSON object, got {type(obj).__name__}")
    keys = obj.keys()
    for kind in ("flow", "lost_events", *OTHER_EVENT_KEYS):
        if kind in keys or camel(kind) in keys:
            break
    else:
        if keys & _LEGACY_FLOW_KEYS:
            flow = _message(obj, FLOW, "")
            env: dict[str, Any] = {"flow": flow}
            if "node_name" in flow:
                env["node_name"] = flow["node_name"]
            if "time" in flow:
                env["time"] = flow["time"]
            return "flow", env
        raise NormalizeError("no flow, lost_events, agent_event, debug_event or node_status in object")
    out: dict[str, Any] = {}
    for key, value in obj.items():
        name = _ENVELOPE_NAMES.get(key)
        if name is None:
            continue  # unknown fields are discarded, as hubble's reader does on its retry
        if name in OTHER_EVENT_KEYS:
            if not isinstance(value, dict):
                raise NormalizeError(f"{name}: expected an object")
            out[name] = value
            continue
        norm = _value(value, ENVELOPE[name], name)
        if norm is not _OMIT:
            out[name] = norm
    present = [k for k in ("flow", "lost_events", *OTHER_EVENT_KEYS) if k in out]
    if len(present) != 1:
        raise NormalizeError("more than one event in a line" if present else "empty event")
    return present[0], out


_OMIT = object()
_ENVELOPE_NAMES = {**{k: k for k in ENVELOPE}, **{camel(k): k for k in ENVELOPE}}
_ENVELOPE_NAMES.update({k: k for k in OTHER_EVENT_KEYS})
_ENVELOPE_NAMES.update({camel(k): k for k in OTHER_EVENT_KEYS})
_NAME_CACHE: dict[int, dict[str, str]] = {}


def _names(spec: Message) -> dict[str, str]:
    names = _NAME_CACHE.get(id(spec))
    if names is None:
        names = {**{camel(k): k for k in spec}, **{k: k for k in spec}}
        _NAME_CACHE[id(spec)] = names
    return names


def _message(obj: Any, spec: Message, path: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise NormalizeError(f"{path or 'flow'}: expected an object, got {type(obj).__name__}")
    names = _names(spec)
    out: dict[str, Any] = {}
    for key, value in obj.items():
        name = names.get(key)
        if name is None:
            continue
        sub = f"{path}.{name}" if path else name
        norm = _value(value, spec[name], sub)
        if norm is not _OMIT:
            out[name] = norm
    return out


def _value(value: Any, spec: Spec, path: str) -> Any:
    if value is None:
        return _OMIT  # JSON null means "not set" in protojson
    if isinstance(spec, dict):
        return _message(value, spec, path)
    if isinstance(spec, Repeated):
        if not isinstance(value, list):
            raise NormalizeError(f"{path}: expected a list")
        items = [_value(v, spec.item, path) for v in value]
        items = [v for v in items if v is not _OMIT]
        return items if items else _OMIT
    return _scalar(value, spec, path)


def _scalar(value: Any, spec: Scalar, path: str) -> Any:
    kind = spec.kind
    if kind == "any":
        return value
    if kind == "str" or kind == "ts":
        if not isinstance(value, str):
            raise NormalizeError(f"{path}: expected a string")
        return value if value else _OMIT
    if kind == "bool":
        if not isinstance(value, bool):
            raise NormalizeError(f"{path}: expected a boolean")
        # BoolValue wrappers keep false: absent and false differ for is_reply.
        return value if value or path.endswith("is_reply") else _OMIT
    if spec is ENUM or kind == "enum":
        return _enum(value, path)
    # integers: protojson accepts numbers and decimal strings for every integer width
    if isinstance(value, bool):
        raise NormalizeError(f"{path}: expected an integer")
    if isinstance(value, str):
        if not _INT_RE.match(value):
            raise NormalizeError(f"{path}: expected an integer, got {value!r}")
        num = int(value)
    elif isinstance(value, int):
        num = value
    else:
        raise NormalizeError(f"{path}: expected an integer")
    if kind in ("u32", "u64") and num < 0:
        raise NormalizeError(f"{path}: negative value for an unsigned field")
    if num == 0 and not path.endswith("lost_events.cpu"):
        return _OMIT
    return str(num) if kind in ("u64", "i64") else num


def _enum(value: Any, path: str) -> Any:
    key = path.removeprefix("flow.")
    table = enums.ENUM_FIELDS.get(key)
    if table is None:
        table = {"lost_events.source": enums.LOST_EVENT_SOURCE}.get(key, {})
    if isinstance(value, str):
        if value in table:
            return value if table[value] != 0 else _OMIT
        raise NormalizeError(f"{path}: unknown enum value {value!r}")
    if isinstance(value, bool) or not isinstance(value, int):
        raise NormalizeError(f"{path}: expected an enum name or number")
    if value == 0:
        return _OMIT
    names = enums.ENUM_NAMES_BY_NUMBER.get(key) or {v: k for k, v in table.items()}
    # protojson prints numbers that have no name (e.g. Retina's verdicts 15, 16) as numbers
    return names.get(value, value)
