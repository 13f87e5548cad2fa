"""`hubble observe` filter flags → allowlist/denylist FlowFilters, with hubble's rules.

Either-direction flags (``--pod``, ``--ip``, ``--port``, ``--label``…) write the source field into
a left filter and the destination field into a right filter; ``--from-*``/``--to-*`` write into
both; the two are sent as one filter when equal. ``--not`` sends exactly the next filter flag to
the denylist. Namespaces are applied to pod/service filters when the filters are materialised.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from flowtrail.filters.base import FilterError
from flowtrail.filters.golang import NumError, parse_uint, quote
from flowtrail.filters.protojson import canonical_filter
from flowtrail.model import enums

# Groups of flags that cannot be combined (hubble/cmd/observe/flows_filter.go).
CONFLICTS: list[list[str]] = [
    ["from-fqdn", "from-ip", "ip", "fqdn", "from-namespace", "namespace", "from-all-namespaces", "all-namespaces"],
    ["from-fqdn", "from-ip", "ip", "fqdn", "from-pod", "pod"],
    ["to-fqdn", "to-ip", "ip", "fqdn", "to-namespace", "namespace", "to-all-namespaces", "all-namespaces"],
    ["to-fqdn", "to-ip", "ip", "fqdn", "to-pod", "pod"],
    ["to-pod", "namespace", "all-namespaces"],
    ["from-pod", "namespace", "all-namespaces"],
    ["to-service", "namespace", "all-namespaces"],
    ["from-service", "namespace", "all-namespaces"],
    ["label", "from-label"],
    ["label", "to-label"],
    ["service", "from-service"],
    ["service", "to-service"],
    ["port", "to-port"],
    ["port", "from-port"],
    ["identity", "to-identity"],
    ["identity", "from-identity"],
    ["workload", "to-workload"],
    ["workload", "from-workload"],
    ["encrypted", "unencrypted"],
]

# flag → (left field, right field): either-direction flags.
_EITHER = {
    "fqdn": ("source_fqdn", "destination_fqdn"),
    "pod": ("source_pod", "destination_pod"),
    "ip": ("source_ip", "destination_ip"),
    "label": ("source_label", "destination_label"),
    "service": ("source_service", "destination_service"),
    "port": ("source_port", "destination_port"),
    "workload": ("source_workload", "destination_workload"),
    "identity": ("source_identity", "destination_identity"),
    "cluster": ("source_cluster_name", "destination_cluster_name"),
}
# flag → field written into both filters.
_BOTH = {
    "uuid": "uuid",
    "from-fqdn": "source_fqdn",
    "to-fqdn": "destination_fqdn",
    "from-pod": "source_pod",
    "to-pod": "destination_pod",
    "from-ip": "source_ip",
    "to-ip": "destination_ip",
    "snat-ip": "source_ip_xlated",
    "from-label": "source_label",
    "to-label": "destination_label",
    "from-service": "source_service",
    "to-service": "destination_service",
    "from-port": "source_port",
    "to-port": "destination_port",
    "trace-id": "trace_id",
    "http-status": "http_status_code",
    "http-method": "http_method",
    "http-path": "http_path",
    "http-url": "http_url",
    "protocol": "protocol",
    "from-workload": "source_workload",
    "to-workload": "destination_workload",
    "from-identity": "source_identity",
    "to-identity": "destination_identity",
    "node-name": "node_name",
    "node-label": "node_labels",
    "from-cluster": "source_cluster_name",
    "to-cluster": "destination_cluster_name",
}
_NAMESPACE_FLAGS = {
    "namespace": "ns",
    "all-namespaces": "ns",
    "from-namespace": "src",
    "from-all-namespaces": "src",
    "to-namespace": "dst",
    "to-all-namespaces": "dst",
}
_OTHER = {
    "ipv4", "ipv6", "ip-version", "verdict", "drop-reason-desc", "http-header", "type", "tcp-flags",
    "traffic-direction", "cel-expression", "interface", "encrypted", "unencrypted", "ip-trace-id",
}
FILTER_FLAGS = frozenset(_EITHER) | frozenset(_BOTH) | frozenset(_NAMESPACE_FLAGS) | _OTHER
# Flags that take no value.
BOOL_FILTER_FLAGS = frozenset({"ipv4", "ipv6", "all-namespaces", "from-all-namespaces", "to-all-namespaces",
                               "encrypted", "unencrypted"})


class FlagError(FilterError):
    """A flag hubble would reject; ``flag`` and ``value`` build its message (pflag's, with %q)."""

    def __init__(self, display: str, value: str, message: str) -> None:
        super().__init__(f"invalid argument {quote(value)} for {quote(display)} flag: {message}")


@dataclass
class _Tracker:
    left: dict[str, Any] | None = None
    right: dict[str, Any] | None = None
    ns: list[str] = field(default_factory=list)
    src_ns: list[str] = field(default_factory=list)
    dst_ns: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)

    def _side(self, which: str) -> dict[str, Any]:
        cur = getattr(self, which)
        if cur is None:
            cur = {}
            setattr(self, which, cur)
        return cur

    def append(self, which: str, fieldname: str, value: Any) -> None:
        self._side(which).setdefault(fieldname, []).append(value)

    def both(self, fieldname: str, value: Any) -> None:
        self.append("left", fieldname, value)
        self.append("right", fieldname, copy.deepcopy(value))

    def filters(self) -> list[dict[str, Any]]:
        if self.left is None and self.right is None and not (self.ns or self.src_ns or self.dst_ns):
            return []
        left = copy.deepcopy(self.left or {})
        right = copy.deepcopy(self.right or {})
        if self.dst_ns:
            _apply_ns(left, "destination", self.dst_ns)
            _apply_ns(right, "destination", self.dst_ns)
        if self.src_ns:
            _apply_ns(left, "source", self.src_ns)
            _apply_ns(right, "source", self.src_ns)
        if self.ns:
            _apply_ns(left, "source", self.ns)
            _apply_ns(right, "destination", self.ns)
        # hubble holds these as flow.FlowFilter messages and prints them with protojson
        left, right = canonical_filter(left), canonical_filter(right)
        return [left] if left == right else [left, right]


def _apply_ns(f: dict[str, Any], side: str, namespaces: list[str]) -> None:
    pod, svc = f"{side}_pod", f"{side}_service"
    if not f.get(pod) and not f.get(svc):
        f[pod] = [""]
    for key in (pod, svc):
        if f.get(key):
            out: list[str] = []
            for v in f[key]:
                if "/" in v:
                    out.append(v)
                else:
                    out.extend(f"{ns}/{v}" for ns in namespaces)
            f[key] = out


def _namespace_of(name: str) -> str:
    parts = name.split("/")
    return parts[0] if len(parts) > 1 else ""


class FlagFilters:
    """Accumulates filter flags in command-line order, as hubble's flowFilter does."""

    def __init__(self) -> None:
        self.allow = _Tracker()
        self.deny: _Tracker | None = None
        self._negate = False

    def set(self, name: str, value: str, display: str | None = None) -> None:
        display = display or f"--{name}"
        if name == "not":
            if self._negate:
                raise FlagError(display, "true", "consecutive --not statements")
            self._negate = True
            return
        if self._negate:
            self._negate = False
            if self.deny is None:
                self.deny = _Tracker()
            tracker = self.deny
        else:
            tracker = self.allow
        try:
            self._set(tracker, name, value)
        except FlagError:
            raise
        except FilterError as exc:
            raise FlagError(display, value, str(exc)) from exc

    def finish(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        if self._negate:
            raise FilterError("trailing --not found in the arguments")
        return self.allow.filters(), self.deny.filters() if self.deny else []

    # -- one flag -------------------------------------------------------------------------------

    def _set(self, t: _Tracker, name: str, val: str) -> None:
        if name not in t.changed:
            t.changed.append(name)
        for group in CONFLICTS:
            for flag in group:
                if flag in t.changed:
                    for other in group:
                        if other != flag and other in t.changed:
                            raise FilterError(f"filters --{flag} and --{other} cannot be combined")
        if name in _EITHER:
            lf, rf = _EITHER[name]
            parsed = self._value(name, val)
            t.append("left", lf, parsed)
            t.append("right", rf, copy.deepcopy(parsed))
        elif name in _BOTH:
            t.both(_BOTH[name], self._value(name, val))
        elif name in _NAMESPACE_FLAGS:
            ns = "" if name.endswith("all-namespaces") else val
            {"ns": t.ns, "src": t.src_ns, "dst": t.dst_ns}[_NAMESPACE_FLAGS[name]].append(ns)
        elif name in ("ipv4", "ipv6", "ip-version"):
            v = {"ipv4": "4", "ipv6": "6"}.get(name, val).lower()
            ver = "IPv4" if v in ("4", "v4", "ipv4", "ip4") else "IPv6" if v in ("6", "v6", "ipv6", "ip6") else "IP_NOT_USED"
            t.both("ip_version", ver)
        elif name == "verdict":
            if val not in enums.VERDICT:
                raise FilterError(f"invalid --verdict value: {val}")
            t.both("verdict", val)
        elif name == "drop-reason-desc":
            if val == "":
                raise FilterError("empty --drop-reason-desc value")
            if val not in enums.DROP_REASON:
                raise FilterError(f"invalid --drop-reason-desc value: {val}")
            t.both("drop_reason_desc", val)
        elif name == "http-header":
            key, sep, hval = val.partition(":")
            if not sep:
                raise FilterError(f"invalid http-header value {quote(val)}, expected name:value")
            t.both("http_header", {"key": key, "value": hval})
        elif name == "type":
            t.both("event_type", _event_type(val))
        elif name == "tcp-flags":
            t.both("tcp_flags", _tcp_flags(val))
        elif name == "traffic-direction":
            td = val.lower()
            if td not in ("ingress", "egress"):
                raise FilterError(f"{td}: invalid traffic direction, expected ingress or egress")
            t.both("traffic_direction", td.upper())
        elif name == "cel-expression":
            for side in ("left", "right"):
                t._side(side).setdefault("experimental", {}).setdefault("cel_expression", []).append(val)
        elif name == "interface":
            t.both("interface", {"name": val})
        elif name in ("encrypted", "unencrypted"):
            t.both("encrypted", name == "encrypted")
        elif name == "ip-trace-id":
            # only the literal "0" is refused; "00" parses to 0 and is kept, as in hubble
            if val == "0":
                raise FilterError("invalid --ip-trace-id value; must be greater than 0")
            try:
                trace_id = parse_uint(val, 10, 64)
            except NumError as exc:
                raise FilterError(f"invalid --ip-trace-id value: {exc}") from None
            t.both("ip_trace_id", str(trace_id))
        else:
            raise FilterError(f"unknown filter flag --{name}")
        for materialised in (t.left, t.right):
            _check_namespaces(t, materialised)

    @staticmethod
    def _value(name: str, val: str) -> Any:
        if name.endswith("workload"):
            kind, sep, wname = val.partition("/")
            return {"name": wname, "kind": kind} if sep else {"name": val}
        if name.endswith("identity"):
            return _identity(val)
        return val


# Reserved identity names hubble's --identity takes (identity.GetReservedID; "unknown" is not one).
_RESERVED_IDENTITY_NAMES = {k: v for k, v in enums.RESERVED_IDENTITIES.items() if k != "unknown"}


def _identity(val: str) -> int:
    if val in _RESERVED_IDENTITY_NAMES:
        return _RESERVED_IDENTITY_NAMES[val]
    try:
        # identity.ParseNumericIdentity: strconv.ParseUint(id, 0, 32), so 0x10, 0o20, 1_000 work
        return parse_uint(val, 0, 32)
    except NumError:
        pass
    # the list is reservedIdentitiesNames() printed with %v: sorted by id, a number where the id has
    # no name (11, overlay-to-encrypt)
    ids = sorted(set(_RESERVED_IDENTITY_NAMES.values()))
    listed = " ".join(enums.RESERVED_IDENTITY_NAMES.get(i, str(i)) for i in ids)
    raise FilterError(f"invalid security identity, expected one of [{listed}] or a numeric value")


def _check_namespaces(t: _Tracker, f: dict[str, Any] | None) -> None:
    if not f:
        return
    checks = [
        (t.ns, f.get("source_pod", [])), (t.ns, f.get("source_service", [])),
        (t.ns, f.get("destination_pod", [])), (t.ns, f.get("destination_service", [])),
        (t.src_ns, f.get("source_pod", [])), (t.src_ns, f.get("source_service", [])),
        (t.dst_ns, f.get("destination_pod", [])), (t.dst_ns, f.get("destination_service", [])),
    ]
    for namespaces, names in checks:
        for ns in namespaces:
            for name in names:
                nn = _namespace_of(name)
                if nn and nn != ns:
                    raise FilterError(f"namespace conflict: {quote(ns)} does not contain {quote(name)}")
    for pods, svcs in ((f.get("source_pod", []), f.get("source_service", [])),
                       (f.get("destination_pod", []), f.get("destination_service", []))):
        for pod in pods:
            pod_ns = _namespace_of(pod)
            if pod_ns:
                for svc in svcs:
                    if _namespace_of(svc) != pod_ns:
                        raise FilterError(f"namespace of service {quote(svc)} conflict with pod {quote(pod_ns)}")


# --type agent:<name>: flows_filter.go agentEventSubtypes (monitor API agent notification numbers).
AGENT_SUBTYPE_NAMES = {
    "unspecified": 0,
    "message": 1,
    "agent-started": 2,
    "endpoint-regenerate-success": 3,
    "endpoint-regenerate-failure": 4,
    "policy-updated": 5,
    "policy-deleted": 6,
    "endpoint-created": 7,
    "endpoint-deleted": 8,
    "ipcache-upserted": 9,
    "ipcache-deleted": 10,
}


def _int32(n: int) -> int:
    # hubble stores ParseUint(.., 32) results with int32(): 2^31 and up wrap to negative
    return n - (1 << 32) if n >= 1 << 31 else n


def _event_type(val: str) -> dict[str, Any]:
    head, sep, sub = val.partition(":")
    # sub-type names are only looked up when the type itself was given by name
    named = enums.EVENT_TYPE_NAMES.get(head, 0)
    if head in enums.EVENT_TYPE_NAMES:
        typ = named
    else:
        try:
            typ = _int32(parse_uint(head, 10, 32))
        except NumError as exc:
            raise FilterError(
                f"unable to parse type '{head}', not a known type name and unable to parse as numeric value: {exc}"
            ) from None
    out: dict[str, Any] = {"type": typ}
    if sep:
        if named == enums.EVENT_TRACE and sub in enums.TRACE_SUBTYPE_NAMES:
            out.update(match_sub_type=True, sub_type=enums.TRACE_SUBTYPE_NAMES[sub])
        elif named == enums.EVENT_AGENT and sub in AGENT_SUBTYPE_NAMES:
            out.update(match_sub_type=True, sub_type=AGENT_SUBTYPE_NAMES[sub])
        else:
            try:
                out.update(match_sub_type=True, sub_type=_int32(parse_uint(sub, 10, 32)))
            except NumError as exc:
                raise FilterError(
                    f"unable to parse event sub-type '{sub}', not a known sub-type name and unable to parse as "
                    f"numeric value: {exc}"
                ) from None
    return out


_TCP_FLAG_ORDER = ("FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR", "NS")


def _tcp_flags(val: str) -> dict[str, bool]:
    flags = set()
    for f in val.split(","):
        if f.upper() not in _TCP_FLAG_ORDER:
            raise FilterError(f"unknown tcp flag: {f}")
        flags.add(f.upper())
    return {f: True for f in _TCP_FLAG_ORDER if f in flags}
