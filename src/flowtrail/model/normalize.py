"""Canonicalise any JSON spelling protojson accepts into the one Hubble prints.

This is the slow, exact path of the decoder, taken only by lines the columnar fast path cannot
read as they are: lowerCamelCase names, enums given as numbers, 64-bit integers given as numbers,
legacy bare flows (``HUBBLE_COMPAT=legacy-json-output``), explicit default values. The result is
the dict ``hubble observe -o json`` would print for the line.

hubble reads a line with ``protojson.Unmarshal`` and, when that fails, once more with
``DiscardUnknown`` (hubble/cmd/observe/io_reader_observer.go); what both reject is a bad line.
The second pass drops unknown fields and unknown enum names, so this module drops them too.
"""

from __future__ import annotations

import calendar
import datetime as _dt
import re
from decimal import Decimal, InvalidOperation
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
# protojson reads an integer from a JSON number or a string holding one, in any notation whose
# value is whole (1e3, 10.0); the range of the field's type is checked.
_NUMBER_RE = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?\Z")
_INT_RANGE = {"u32": (0, 2**32 - 1), "i32": (-(2**31), 2**31 - 1), "u64": (0, 2**64 - 1), "i64": (-(2**63), 2**63 - 1)}
# time.Parse(time.RFC3339Nano) as protojson calls it for google.protobuf.Timestamp
_TIMESTAMP_RE = re.compile(r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:([.,])(\d+))?(Z|[+-]\d{2}:\d{2})\Z")
_MIN_SECONDS, _MAX_SECONDS = -62135596800, 253402300799  # 0001-01-01 .. 9999-12-31T23:59:59
# GetFlowsResponse.response_types; agent and debug events exist only in the exporter's
# ExportEvent, so hubble's reader discards them as unknown fields.
_ONEOF = ("flow", "lost_events", "node_status")


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
    present = [k for k in _ONEOF if k in out]
    if len(present) > 1:
        raise NormalizeError(f"more than one event in a line: {', '.join(present)}")
    if present:
        kind = present[0]
    else:
        others = [k for k in OTHER_EVENT_KEYS if k in out]
        if not others:
            raise NormalizeError("empty event")
        kind = others[0]
    for k in OTHER_EVENT_KEYS:
        if k != kind:
            out.pop(k, None)
    return kind, out


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
        if any(v is None for v in value):
            raise NormalizeError(f"{path}: null in a list")
        items = [_value(v, spec.item, path) for v in value]
        items = [v for v in items if v is not _OMIT]
        return items if items else _OMIT
    return _scalar(value, spec, path)


def _scalar(value: Any, spec: Scalar, path: str) -> Any:
    kind = spec.kind
    if kind == "any":
        return value
    if kind == "str":
        if not isinstance(value, str):
            raise NormalizeError(f"{path}: expected a string")
        return value if value else _OMIT
    if kind == "ts":
        return _timestamp(value, path)
    if kind == "bool":
        if not isinstance(value, bool):
            raise NormalizeError(f"{path}: expected a boolean")
        # BoolValue wrappers keep false: absent and false differ for is_reply.
        return value if value or path.endswith("is_reply") else _OMIT
    if spec is ENUM or kind == "enum":
        return _enum(value, path)
    num = _integer(value, path)
    low, high = _INT_RANGE[kind]
    if not low <= num <= high:
        raise NormalizeError(f"{path}: {num} out of range for {kind}")
    if num == 0 and not path.endswith("lost_events.cpu"):
        return _OMIT
    return str(num) if kind in ("u64", "i64") else num


def _integer(value: Any, path: str) -> int:
    if isinstance(value, bool):
        raise NormalizeError(f"{path}: expected an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if value.is_integer():
            return int(value)
        raise NormalizeError(f"{path}: expected an integer, got {value!r}")
    if isinstance(value, str) and _NUMBER_RE.match(value):
        try:
            dec = Decimal(value)
            if dec == dec.to_integral_value():
                return int(dec)
        except (InvalidOperation, OverflowError, ValueError):
            pass
    raise NormalizeError(f"{path}: expected an integer, got {value!r}")


def _timestamp(value: Any, path: str) -> str:
    """The canonical form protojson writes: UTC, 0, 3, 6 or 9 fractional digits."""
    m = _TIMESTAMP_RE.match(value) if isinstance(value, str) else None
    if m is None:
        raise NormalizeError(f"{path}: invalid timestamp {value!r}")
    year, month, day, hour, minute, second, sep, frac, zone = m.groups()
    if frac and sep == "." and len(frac) > 9:
        raise NormalizeError(f"{path}: invalid timestamp {value!r}")
    try:
        _dt.datetime(int(year), int(month), int(day), int(hour), int(minute), int(second))
    except ValueError:
        raise NormalizeError(f"{path}: invalid timestamp {value!r}") from None
    secs = calendar.timegm((int(year), int(month), int(day), int(hour), int(minute), int(second), 0, 0, 0))
    if zone != "Z":
        zh, zm = int(zone[1:3]), int(zone[4:6])
        if zh > 23 or zm > 59:
            raise NormalizeError(f"{path}: invalid timestamp {value!r}")
        secs -= (1 if zone[0] == "+" else -1) * (zh * 3600 + zm * 60)
    if not _MIN_SECONDS <= secs <= _MAX_SECONDS:
        raise NormalizeError(f"{path}: timestamp {value!r} out of range")
    nanos = int(frac[:9].ljust(9, "0")) if frac else 0
    t = _dt.datetime(1970, 1, 1) + _dt.timedelta(seconds=secs)
    digits = f"{nanos:09d}"
    if nanos % 1_000_000 == 0:
        digits = digits[:3]
    elif nanos % 1_000 == 0:
        digits = digits[:6]
    return f"{t.year:04d}-{t:%m-%dT%H:%M:%S}" + (f".{digits}" if nanos else "") + "Z"


def _enum(value: Any, path: str) -> Any:
    key = path.removeprefix("flow.")
    table = enums.ENUM_FIELDS.get(key)
    if table is None:
        table = {"lost_events.source": enums.LOST_EVENT_SOURCE}.get(key, {})
    if isinstance(value, str):
        if value in table:
            return value if table[value] != 0 else _OMIT
        return _OMIT  # an unknown name: hubble's DiscardUnknown pass leaves the field unset
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not -(2**31) <= value < 2**31:
        raise NormalizeError(f"{path}: expected an enum name or number")
    if value == 0:
        return _OMIT
    names = enums.ENUM_NAMES_BY_NUMBER.get(key) or {v: k for k, v in table.items()}
    # protojson prints numbers that have no name (e.g. Retina's verdicts 15, 16) as numbers
    return names.get(value, value)
