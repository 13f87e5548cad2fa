"""JSON schemas for the policy kinds flowtrail reads (shape only; semantic checks live in load.py).

Written from the API types cited in ../shared/docs/policy-reference.md (K8S-API, CIL-API). They are
closed (``additionalProperties: false``) where the API is, so a misspelt field such as
``fromEndpoint`` is reported instead of silently widening or narrowing a policy.
"""

from __future__ import annotations

from typing import Any

_STR = {"type": "string"}
_STRS = {"type": ["array", "null"], "items": _STR}
_LABEL_VALUE = {"type": ["string", "number", "boolean", "null"]}

SELECTOR: dict[str, Any] = {
    "type": ["object", "null"],
    "additionalProperties": False,
    "properties": {
        "matchLabels": {"type": ["object", "null"], "additionalProperties": _LABEL_VALUE},
        "matchExpressions": {"type": ["array", "null"], "items": {
            "type": "object", "required": ["key", "operator"], "additionalProperties": False,
            "properties": {"key": _STR, "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                           "values": {"type": ["array", "null"], "items": _LABEL_VALUE}}}},
    },
}

_METADATA = {"type": "object", "required": ["name"],
             "properties": {"name": {"type": "string", "minLength": 1}, "namespace": _STR}}

_K8S_PORT = {"type": "object", "additionalProperties": False, "properties": {
    "protocol": {"enum": ["TCP", "UDP", "SCTP"]},
    "port": {"type": ["integer", "string"]},
    "endPort": {"type": "integer"}}}
_K8S_PEER = {"type": "object", "additionalProperties": False, "properties": {
    "podSelector": SELECTOR, "namespaceSelector": SELECTOR,
    "ipBlock": {"type": "object", "required": ["cidr"], "additionalProperties": False,
                "properties": {"cidr": _STR, "except": _STRS}}}}


def _k8s_rule(peer_key: str) -> dict[str, Any]:
    return {"type": "object", "additionalProperties": False, "properties": {
        peer_key: {"type": ["array", "null"], "items": _K8S_PEER},
        "ports": {"type": ["array", "null"], "items": _K8S_PORT}}}


NETWORK_POLICY: dict[str, Any] = {
    "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "metadata": _METADATA,
        "spec": {"type": "object", "additionalProperties": False, "properties": {
            "podSelector": SELECTOR,
            "policyTypes": {"type": ["array", "null"], "items": {"enum": ["Ingress", "Egress"]}},
            "ingress": {"type": ["array", "null"], "items": _k8s_rule("from")},
            "egress": {"type": ["array", "null"], "items": _k8s_rule("to")}}},
    },
}

ENTITY_NAMES = ["all", "world", "world-ipv4", "world-ipv6", "cluster", "host", "init", "ingress", "unmanaged",
                "remote-node", "health", "none", "kube-apiserver"]
_SELECTORS = {"type": ["array", "null"], "items": SELECTOR}
_CIDR_RULE = {"type": "object", "additionalProperties": False, "properties": {
    "cidr": _STR, "except": _STRS, "cidrGroupRef": _STR, "cidrGroupSelector": SELECTOR}}
_FQDN = {"type": "object", "additionalProperties": False, "properties": {"matchName": _STR, "matchPattern": _STR}}
_PORT_PROTOCOL = {"type": "object", "additionalProperties": False, "properties": {
    "port": {"type": ["string", "integer"]}, "endPort": {"type": "integer"},
    "protocol": {"enum": ["TCP", "UDP", "SCTP", "ICMP", "ICMPV6", "VRRP", "IGMP", "ANY", ""]}}}
_HTTP = {"type": "object", "additionalProperties": False, "properties": {
    "method": _STR, "path": _STR, "host": _STR, "headers": _STRS,
    "headerMatches": {"type": ["array", "null"], "items": {
        "type": "object", "required": ["name"], "additionalProperties": False, "properties": {
            "name": _STR, "value": _STR, "secret": {"type": "object"},
            "mismatch": {"enum": ["LOG", "ADD", "DELETE", "REPLACE", ""]}}}}}}
_L7 = {"type": ["object", "null"], "additionalProperties": False, "properties": {
    "http": {"type": ["array", "null"], "items": _HTTP},
    "dns": {"type": ["array", "null"], "items": _FQDN},
    "kafka": {"type": ["array", "null"]}, "l7proto": _STR, "l7": {"type": ["array", "null"]}}}
_PORT_RULE = {"type": "object", "additionalProperties": False, "properties": {
    "ports": {"type": ["array", "null"], "items": _PORT_PROTOCOL}, "rules": _L7,
    "terminatingTLS": {"type": "object"}, "originatingTLS": {"type": "object"},
    "serverNames": _STRS, "listener": {"type": "object"}}}
_PORT_DENY_RULE = {"type": "object", "additionalProperties": False, "properties": {
    "ports": {"type": ["array", "null"], "items": _PORT_PROTOCOL}}}
_ICMP = {"type": "object", "additionalProperties": False, "properties": {"fields": {
    "type": "array", "items": {"type": "object", "required": ["type"], "additionalProperties": False,
                               "properties": {"type": {"type": ["integer", "string"]},
                                              "family": {"enum": ["IPv4", "IPv6"]}}}}}}
_SERVICE = {"type": "object", "additionalProperties": False, "properties": {
    "k8sService": {"type": "object", "required": ["serviceName"], "additionalProperties": False,
                   "properties": {"serviceName": _STR, "namespace": _STR}},
    "k8sServiceSelector": {"type": "object", "required": ["selector"], "additionalProperties": False,
                           "properties": {"selector": SELECTOR, "namespace": _STR}}}}


def _cilium_rule(direction: str, deny: bool) -> dict[str, Any]:
    p = "from" if direction == "ingress" else "to"
    props: dict[str, Any] = {
        f"{p}Endpoints": _SELECTORS, f"{p}Requires": {"type": ["array", "null"], "maxItems": 0},
        f"{p}CIDR": _STRS, f"{p}CIDRSet": {"type": ["array", "null"], "items": _CIDR_RULE},
        f"{p}Entities": {"type": ["array", "null"], "items": {"enum": ENTITY_NAMES}},
        f"{p}Groups": {"type": ["array", "null"]}, f"{p}Nodes": _SELECTORS,
        "toPorts": {"type": ["array", "null"], "items": _PORT_DENY_RULE if deny else _PORT_RULE},
        "icmps": {"type": ["array", "null"], "items": _ICMP},
    }
    if direction == "egress":
        props["toServices"] = {"type": ["array", "null"], "items": _SERVICE}
        if not deny:
            props["toFQDNs"] = {"type": ["array", "null"], "items": _FQDN}
    if not deny:
        props["authentication"] = {"type": "object"}
    return {"type": "object", "additionalProperties": False, "properties": props}


CILIUM_RULE: dict[str, Any] = {
    "type": "object", "additionalProperties": False, "properties": {
        "endpointSelector": SELECTOR, "nodeSelector": SELECTOR,
        "ingress": {"type": ["array", "null"], "items": _cilium_rule("ingress", False)},
        "ingressDeny": {"type": ["array", "null"], "items": _cilium_rule("ingress", True)},
        "egress": {"type": ["array", "null"], "items": _cilium_rule("egress", False)},
        "egressDeny": {"type": ["array", "null"], "items": _cilium_rule("egress", True)},
        "labels": {"type": ["array", "null"]}, "description": _STR, "log": {"type": "object"},
        "enableDefaultDeny": {"type": "object", "additionalProperties": False,
                              "properties": {"ingress": {"type": "boolean"}, "egress": {"type": "boolean"}}},
    },
}

CILIUM_POLICY: dict[str, Any] = {
    "type": "object", "required": ["apiVersion", "kind", "metadata"],
    "properties": {
        "metadata": _METADATA,
        "spec": CILIUM_RULE,
        "specs": {"type": "array", "items": CILIUM_RULE},
    },
}
