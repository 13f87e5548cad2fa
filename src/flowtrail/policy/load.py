"""Reading policy objects from YAML/JSON files and directories, validating and translating them.

Accepted input: files ending .yaml/.yml/.json (directories are walked recursively, in name
order); multi-document YAML; ``kind: List`` / ``*List`` objects; a JSON array of objects; and a
conformance case file (its ``policies``). Kinds other than NetworkPolicy, CiliumNetworkPolicy and
CiliumClusterwideNetworkPolicy are skipped with a note. Every error names the file, the document
and the object (``kind namespace/name``) and the field path.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from flowtrail.policy.model import (
    KIND_CCNP,
    KIND_CNP,
    KIND_NP,
    CIDRPeer,
    Direction,
    EndpointPeer,
    EntityPeer,
    FQDNPeer,
    HTTPRule,
    ICMPSpec,
    K8sPeer,
    L7Rules,
    Peer,
    Policy,
    PolicyRef,
    PortRule,
    PortSpec,
    Rule,
    ServicePeer,
    Subject,
)
from flowtrail.policy.schema import CILIUM_POLICY, NETWORK_POLICY
from flowtrail.policy.selectors import (
    NS_KEY,
    NS_LABELS_PREFIX,
    FQDNSelector,
    LabelSelector,
    Requirement,
    SelectorError,
    parse_selector,
)

SUFFIXES = (".yaml", ".yml", ".json")
API_VERSIONS = {KIND_NP: ("networking.k8s.io/v1",), KIND_CNP: ("cilium.io/v2",), KIND_CCNP: ("cilium.io/v2",)}

# ICMP type names Cilium accepts in `icmps[].fields[].type` (IANA names, IPv4 / IPv6)
ICMP_NAMES = {
    "IPv4": {"EchoReply": 0, "DestinationUnreachable": 3, "Redirect": 5, "EchoRequest": 8,
             "RouterAdvertisement": 9, "RouterSelection": 10, "TimeExceeded": 11, "ParameterProblem": 12,
             "Timestamp": 13, "TimestampReply": 14, "Photuris": 40, "ExtendedEchoRequest": 42,
             "ExtendedEchoReply": 43},
    "IPv6": {"DestinationUnreachable": 1, "PacketTooBig": 2, "TimeExceeded": 3, "ParameterProblem": 4,
             "EchoRequest": 128, "EchoReply": 129, "MulticastListenerQuery": 130,
             "MulticastListenerReport": 131, "MulticastListenerDone": 132, "RouterSolicitation": 133,
             "RouterAdvertisement": 134, "NeighborSolicitation": 135, "NeighborAdvertisement": 136,
             "RedirectMessage": 137, "RouterRenumbering": 138, "ICMPNodeInformationQuery": 139,
             "ICMPNodeInformationResponse": 140, "InverseNeighborDiscoverySolicitation": 141,
             "InverseNeighborDiscoveryAdvertisement": 142, "HomeAgentAddressDiscoveryRequest": 144,
             "HomeAgentAddressDiscoveryReply": 145, "MobilePrefixSolicitation": 146,
             "MobilePrefixAdvertisement": 147, "DuplicateAddressRequestCodeSuffix": 157,
             "DuplicateAddressConfirmationCodeSuffix": 158, "ExtendedEchoRequest": 160,
             "ExtendedEchoReply": 161},
}


class PolicyLoadError(ValueError):
    def __init__(self, errors: Sequence[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = list(errors)


@dataclass
class PolicySet:
    policies: list[Policy] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # skipped objects, unsupported fields

    @property
    def kinds(self) -> set[str]:
        return {p.ref.kind for p in self.policies}


# ---- reading documents --------------------------------------------------------------------------

def _files(paths: Sequence[str]) -> Iterator[Path]:
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            yield from sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in SUFFIXES)
        elif p.exists():
            yield p
        else:
            raise PolicyLoadError([f"{raw}: no such file or directory"])


# libyaml's loader parses a 500-policy directory ~8x faster than the pure-Python one; both are
# the safe loader, so what is accepted does not change
_YAML_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _documents(path: Path) -> Iterator[tuple[str, Any]]:
    """(location, object) for every object of a file, flattening Lists and case files."""
    text = path.read_text()
    try:
        if path.suffix.lower() == ".json":
            docs: list[Any] = [json.loads(text)]
        else:
            docs = list(yaml.load_all(text, Loader=_YAML_LOADER))
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise PolicyLoadError([f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {exc}"]) from None
    multi = len(docs) > 1
    for i, doc in enumerate(docs):
        where = f"{path}" + (f" (document {i + 1})" if multi else "")
        yield from _flatten(where, doc)


def _flatten(where: str, doc: Any) -> Iterator[tuple[str, Any]]:
    if doc is None:
        return
    if isinstance(doc, list):
        for j, item in enumerate(doc):
            yield from _flatten(f"{where} [{j}]", item)
    elif isinstance(doc, dict) and "kind" not in doc and isinstance(doc.get("policies"), list):
        # a conformance case file (netpol-conformance format)
        for j, item in enumerate(doc["policies"]):
            yield from _flatten(f"{where} policies[{j}]", item)
    elif isinstance(doc, dict) and str(doc.get("kind", "")).endswith("List") and isinstance(doc.get("items"), list):
        for j, item in enumerate(doc["items"]):
            yield from _flatten(f"{where} items[{j}]", item)
    else:
        yield where, doc


def load_policies(paths: Sequence[str]) -> PolicySet:
    """Load, validate and translate every policy under ``paths``; raise PolicyLoadError on any error."""
    out = PolicySet()
    errors: list[str] = []
    seen: dict[tuple[str, str, str], str] = {}
    for f in _files(paths):
        try:
            docs = list(_documents(f))
        except OSError as exc:
            errors.append(f"{f}: {exc.strerror}")
            continue
        except PolicyLoadError as exc:
            errors.extend(exc.errors)
            continue
        for where, obj in docs:
            if not isinstance(obj, dict):
                errors.append(f"{where}: expected an object, got {type(obj).__name__}")
                continue
            kind = obj.get("kind")
            if kind not in API_VERSIONS:
                name = (obj.get("metadata") or {}).get("name", "?") if isinstance(obj.get("metadata"), dict) else "?"
                out.notes.append(f"{where}: skipped {kind or 'object without kind'} {name} (not a network policy)")
                continue
            if obj.get("apiVersion") not in API_VERSIONS[kind]:
                out.notes.append(f"{where}: skipped {kind} with apiVersion {obj.get('apiVersion')!r} "
                                 f"(supported: {', '.join(API_VERSIONS[kind])})")
                continue
            try:
                pols, notes = translate(obj, where)
            except PolicyLoadError as exc:
                errors.extend(exc.errors)
                continue
            for p in pols[:1]:
                key = (p.ref.kind, p.ref.namespace, p.ref.name)
                if key in seen:
                    errors.append(f"{where}: {p.ref} is defined twice (first in {seen[key]})")
                    continue
                seen[key] = where
            out.policies.extend(pols)
            out.notes.extend(notes)
    if errors:
        raise PolicyLoadError(errors)
    return out


def policies_from_objects(objs: Sequence[dict[str, Any]], where: str = "<memory>") -> PolicySet:
    out = PolicySet()
    errors: list[str] = []
    for i, obj in enumerate(objs):
        try:
            pols, notes = translate(obj, f"{where} [{i}]")
        except PolicyLoadError as exc:
            errors.extend(exc.errors)
            continue
        out.policies.extend(pols)
        out.notes.extend(notes)
    if errors:
        raise PolicyLoadError(errors)
    return out


# ---- translation ----------------------------------------------------------------------------------

class _Ctx:
    """Error collection for one object."""

    def __init__(self, where: str, obj: dict[str, Any]) -> None:
        raw = obj.get("metadata")
        meta: dict[str, Any] = raw if isinstance(raw, dict) else {}
        self.kind = str(obj.get("kind"))
        self.name = str(meta.get("name", "?"))
        self.namespace = "" if self.kind == KIND_CCNP else str(meta.get("namespace") or "default")
        self.where = where
        self.errors: list[str] = []
        self.notes: list[str] = []

    @property
    def label(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}" if self.namespace else f"{self.kind} {self.name}"

    def error(self, path: str, msg: str) -> None:
        self.errors.append(f"{self.where}: {self.label}: {path}: {msg}")

    def note(self, path: str, msg: str) -> None:
        self.notes.append(f"{self.where}: {self.label}: {path}: {msg}")

    def selector(self, obj: Any, path: str) -> LabelSelector:
        try:
            return parse_selector(obj, path)
        except SelectorError as exc:
            self.error(path, str(exc).removeprefix(f"{path}: "))
            return LabelSelector()

    def cidr(self, s: Any, path: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
        try:
            return ipaddress.ip_network(str(s), strict=False)
        except ValueError:
            self.error(path, f"invalid CIDR {s!r}")
            return None


def translate(obj: dict[str, Any], where: str) -> tuple[list[Policy], list[str]]:
    ctx = _Ctx(where, obj)
    schema = NETWORK_POLICY if ctx.kind == KIND_NP else CILIUM_POLICY
    v = jsonschema.Draft202012Validator(schema)
    for err in sorted(v.iter_errors(obj), key=lambda e: list(e.absolute_path)):
        ctx.error(_json_path(err.absolute_path) or "(object)", err.message)
    if ctx.errors:
        raise PolicyLoadError(ctx.errors)
    if "namespace" not in (obj.get("metadata") or {}) and ctx.kind != KIND_CCNP:
        ctx.note("metadata.namespace", "not set; assuming namespace default (as kubectl would without -n)")
    pols = [_network_policy(obj, ctx)] if ctx.kind == KIND_NP else _cilium_policy(obj, ctx)
    if ctx.errors:
        raise PolicyLoadError(ctx.errors)
    return pols, ctx.notes


def _json_path(parts: Any) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


# ---- NetworkPolicy ----------------------------------------------------------------------------------

def _network_policy(obj: dict[str, Any], ctx: _Ctx) -> Policy:
    spec = obj["spec"]
    ref = PolicyRef(KIND_NP, ctx.namespace, ctx.name, ctx.where)
    types = spec.get("policyTypes") or []
    if not types:
        # API-server defaulting (policy-reference.md §1.2, K8S-DEF SetDefaults_NetworkPolicy)
        types = ["Ingress"] + (["Egress"] if spec.get("egress") else [])
    isolates = frozenset(t.lower() for t in types)
    rules: list[Rule] = []
    for direction, key, peer_key in (("ingress", "ingress", "from"), ("egress", "egress", "to")):
        items = spec.get(key) or []
        if direction not in isolates:
            if items:
                ctx.note(f"spec.{key}", f"ignored: policyTypes {types} does not include {key.capitalize()}")
            continue
        for i, r in enumerate(items):
            path = f"spec.{key}[{i}]"
            peers = _k8s_peers(r.get(peer_key), f"{path}.{peer_key}", ctx)
            ports = _k8s_ports(r.get("ports"), f"{path}.ports", ctx)
            rules.append(Rule(ref, direction, False, path, peers, ports, flavour="k8s"))  # type: ignore[arg-type]
    subject = Subject(ctx.selector(spec.get("podSelector"), "spec.podSelector"), ctx.namespace)
    return Policy(ref, "k8s", subject, isolates, tuple(rules))


def _k8s_peers(items: Any, path: str, ctx: _Ctx) -> tuple[Peer, ...] | None:
    if not items:
        return None  # empty or missing from/to: every peer (K8S-API)
    peers: list[Peer] = []
    for j, p in enumerate(items):
        pp = f"{path}[{j}]"
        if "ipBlock" in p:
            if "podSelector" in p or "namespaceSelector" in p:
                ctx.error(pp, "ipBlock cannot be combined with podSelector/namespaceSelector in one peer")
                continue
            cidr = ctx.cidr(p["ipBlock"]["cidr"], f"{pp}.ipBlock.cidr")
            excepts = []
            for k, e in enumerate(p["ipBlock"].get("except") or []):
                net = ctx.cidr(e, f"{pp}.ipBlock.except[{k}]")
                if net is not None and cidr is not None and not (net.version == cidr.version and net.subnet_of(cidr)):  # type: ignore[arg-type]
                    ctx.error(f"{pp}.ipBlock.except[{k}]", f"{e} is not inside cidr {cidr}")
                elif net is not None:
                    excepts.append(net)
            if cidr is not None:
                peers.append(CIDRPeer(cidr, tuple(excepts)))
            continue
        if "podSelector" not in p and "namespaceSelector" not in p:
            ctx.error(pp, "a peer needs podSelector, namespaceSelector or ipBlock")
            continue
        pod = ctx.selector(p["podSelector"], f"{pp}.podSelector") if "podSelector" in p else None
        ns = ctx.selector(p["namespaceSelector"], f"{pp}.namespaceSelector") if "namespaceSelector" in p else None
        peers.append(K8sPeer(pod, ns, ctx.namespace))
    return tuple(peers)


def _k8s_ports(items: Any, path: str, ctx: _Ctx) -> tuple[PortRule, ...] | None:
    if not items:
        return None  # all ports (K8S-API)
    specs = []
    for j, p in enumerate(items):
        pp = f"{path}[{j}]"
        proto = p.get("protocol") or "TCP"  # K8S-DEF SetDefaults_NetworkPolicyPort
        port = p.get("port")
        end = p.get("endPort")
        if isinstance(port, str):
            if port.isdigit():
                ctx.error(f"{pp}.port", f"{port!r} is a string of digits: the API reads it as a port *name*, "
                                         "which must contain a letter; write the number without quotes")
                continue
            _check_port_name(port, f"{pp}.port", ctx)
        elif isinstance(port, int) and not 1 <= port <= 65535:
            ctx.error(f"{pp}.port", f"{port} is not in 1-65535")
        if end is not None:
            if not isinstance(port, int):
                ctx.error(f"{pp}.endPort", "endPort needs a numeric port")
                continue
            if not port <= end <= 65535:
                ctx.error(f"{pp}.endPort", f"endPort {end} must be >= port {port} and <= 65535")
        specs.append(PortSpec(proto, port, end))
    return (PortRule(tuple(specs)),)


def _check_port_name(name: str, path: str, ctx: _Ctx) -> None:
    ok = (1 <= len(name) <= 15 and all(c.islower() or c.isdigit() or c == "-" for c in name)
          and any(c.isalpha() for c in name) and not name.startswith("-") and not name.endswith("-")
          and "--" not in name)
    if not ok:
        ctx.error(path, f"{name!r} is not a valid port name (IANA_SVC_NAME: 1-15 lowercase letters, digits, '-')")


# ---- CiliumNetworkPolicy / CiliumClusterwideNetworkPolicy -----------------------------------------

def _cilium_policy(obj: dict[str, Any], ctx: _Ctx) -> list[Policy]:
    specs: list[tuple[str, dict[str, Any]]] = []
    if obj.get("spec") is not None:
        specs.append(("spec", obj["spec"]))
    for i, s in enumerate(obj.get("specs") or []):
        specs.append((f"specs[{i}]", s))
    if not specs:
        ctx.error("spec", "a Cilium policy needs spec or specs")
    ref = PolicyRef(ctx.kind, ctx.namespace, ctx.name, ctx.where)
    out = []
    for path, spec in specs:
        p = _cilium_rule(spec, path, ref, ctx)
        if p is not None:
            out.append(p)
    return out


def _cilium_rule(spec: dict[str, Any], path: str, ref: PolicyRef, ctx: _Ctx) -> Policy | None:
    has_ep = "endpointSelector" in spec and spec["endpointSelector"] is not None
    has_node = "nodeSelector" in spec and spec["nodeSelector"] is not None
    if has_ep == has_node:
        ctx.error(path, "exactly one of endpointSelector and nodeSelector is required (rule_validation.go)")
        return None
    if has_node and ctx.kind != KIND_CCNP:
        ctx.error(f"{path}.nodeSelector", "nodeSelector is only allowed in a CiliumClusterwideNetworkPolicy")
        return None
    sections = ("ingress", "ingressDeny", "egress", "egressDeny")
    if not any(spec.get(s) for s in sections):
        ctx.error(path, "a rule needs at least one non-empty ingress, ingressDeny, egress or egressDeny "
                        "(rule_validation.go)")
        return None
    if has_node:
        ctx.note(f"{path}.nodeSelector", "host policies (nodeSelector) are not evaluated; rule skipped")
        return None
    sel = ctx.selector(spec["endpointSelector"], f"{path}.endpointSelector")
    if ctx.kind == KIND_CNP:
        # the namespace of a CNP's subject is always its own (CIL-NS ParseToCiliumRule)
        if sel.constrains(NS_KEY):
            ctx.note(f"{path}.endpointSelector", f"namespace constraint replaced by the policy namespace {ctx.namespace}")
            sel = sel.without_key(NS_KEY)
        subject = Subject(sel, ctx.namespace)
    else:
        subject = Subject(sel, None)
    dd = spec.get("enableDefaultDeny") or {}
    isolates = set()
    rules: list[Rule] = []
    for section in sections:
        items = spec.get(section) or []
        direction: Direction = "ingress" if section.startswith("ingress") else "egress"
        deny = section.endswith("Deny")
        # a direction with any rule (allow or deny) is in default deny unless enableDefaultDeny
        # says otherwise (policy-reference.md §2.2)
        if items and dd.get(direction, True):
            isolates.add(direction)
        for i, r in enumerate(items):
            rp = f"{path}.{section}[{i}]"
            rules.append(_cilium_l3l4(r, rp, ref, direction, deny, ctx))
    return Policy(ref, "cilium", subject, frozenset(isolates), tuple(rules))


def _scope(sel: LabelSelector, ctx: _Ctx) -> LabelSelector:
    """Namespace scoping of from/toEndpoints selectors (CIL-NS getEndpointSelector, §2.3)."""
    if sel.uses_source("reserved") or sel.constrains(NS_KEY):
        return sel
    if ctx.kind == KIND_CCNP:
        return sel.with_requirement(Requirement(f"k8s:{NS_KEY}", "Exists"))
    if sel.uses_prefix(NS_LABELS_PREFIX):
        # v1.19 code leaves such selectors cross-namespace (policy-reference.md §2.3, §5 item 1)
        return sel
    return sel.with_requirement(Requirement(f"k8s:{NS_KEY}", "In", frozenset([ctx.namespace])))


def _cilium_l3l4(r: dict[str, Any], path: str, ref: PolicyRef, direction: Direction, deny: bool,
                 ctx: _Ctx) -> Rule:
    p = "from" if direction == "ingress" else "to"
    peers: list[Peer] = []
    l3_set = False
    for j, s in enumerate(r.get(f"{p}Endpoints") or []):
        peers.append(EndpointPeer(_scope(ctx.selector(s, f"{path}.{p}Endpoints[{j}]"), ctx)))
    for j, c in enumerate(r.get(f"{p}CIDR") or []):
        net = ctx.cidr(c, f"{path}.{p}CIDR[{j}]")
        if net is not None:
            peers.append(CIDRPeer(net))
    for j, c in enumerate(r.get(f"{p}CIDRSet") or []):
        cp = f"{path}.{p}CIDRSet[{j}]"
        if "cidr" not in c:
            ctx.note(cp, "cidrGroupRef/cidrGroupSelector need CiliumCIDRGroup objects, not evaluated: matches nothing")
            continue
        net = ctx.cidr(c["cidr"], f"{cp}.cidr")
        excepts = []
        for k, e in enumerate(c.get("except") or []):
            en = ctx.cidr(e, f"{cp}.except[{k}]")
            if en is not None and net is not None and not (en.version == net.version and en.subnet_of(net)):  # type: ignore[arg-type]
                ctx.error(f"{cp}.except[{k}]", f"{e} is not inside cidr {net}")
            elif en is not None:
                excepts.append(en)
        if net is not None:
            peers.append(CIDRPeer(net, tuple(excepts)))
    for e in r.get(f"{p}Entities") or []:
        peers.append(EntityPeer(e))
    fqdns = r.get("toFQDNs") or []
    for j, f in enumerate(fqdns):
        if f.get("matchName") and f.get("matchPattern"):
            ctx.error(f"{path}.toFQDNs[{j}]", "only one of matchName and matchPattern is allowed")
        elif not f.get("matchName") and not f.get("matchPattern"):
            ctx.error(f"{path}.toFQDNs[{j}]", "matchName or matchPattern is required")
        else:
            peers.append(FQDNPeer(FQDNSelector(f.get("matchName"), f.get("matchPattern"))))
    if fqdns and any(r.get(k) for k in ("toEndpoints", "toCIDR", "toCIDRSet", "toEntities", "toServices")):
        ctx.error(f"{path}.toFQDNs", "toFQDNs cannot be combined with other L3 selectors in one rule (§2.7)")
    for j, s in enumerate(r.get("toServices") or [] if direction == "egress" else []):
        if "k8sService" in s:
            k = s["k8sService"]
            peers.append(ServicePeer(k["serviceName"], k.get("namespace") or ctx.namespace, None))
        elif "k8sServiceSelector" in s:
            k = s["k8sServiceSelector"]
            peers.append(ServicePeer(None, k.get("namespace") or ctx.namespace,
                                     ctx.selector(k["selector"], f"{path}.toServices[{j}].k8sServiceSelector.selector")))
    for unsupported in (f"{p}Groups", f"{p}Nodes"):
        if r.get(unsupported):
            ctx.note(f"{path}.{unsupported}", "not evaluated (needs cloud groups / node labels): matches nothing")
    for key in (f"{p}Endpoints", f"{p}CIDR", f"{p}CIDRSet", f"{p}Entities", "toFQDNs", "toServices",
                f"{p}Groups", f"{p}Nodes"):
        if r.get(key) is not None and (key != "toServices" or direction == "egress"):
            l3_set = True
    ports, icmps = _cilium_ports(r, path, deny, ctx)
    if l3_set:
        peer_tuple: tuple[Peer, ...] | None = tuple(peers)
    elif ports is not None or icmps:
        # nil from/to with toPorts (or icmps): wildcard peer (CIL-API ingress.go comment)
        peer_tuple = None
    else:
        # `- {}`: selects no peer, yet puts the endpoint into default deny (§2.2)
        peer_tuple = ()
    return Rule(ref, direction, deny, path, peer_tuple, ports, icmps, flavour="cilium")


def _cilium_ports(r: dict[str, Any], path: str, deny: bool, ctx: _Ctx) -> tuple[tuple[PortRule, ...] | None,
                                                                                 tuple[ICMPSpec, ...]]:
    icmps = []
    for j, ic in enumerate(r.get("icmps") or []):
        for k, fld in enumerate(ic.get("fields") or []):
            fam = fld.get("family") or "IPv4"
            t = fld["type"]
            if isinstance(t, str) and not t.isdigit():
                if t not in ICMP_NAMES[fam]:
                    ctx.error(f"{path}.icmps[{j}].fields[{k}].type", f"unknown {fam} ICMP type name {t!r}")
                    continue
                t = ICMP_NAMES[fam][t]
            icmps.append(ICMPSpec(fam, int(t)))
    if r.get("icmps") and r.get("toPorts"):
        ctx.error(f"{path}.icmps", "icmps cannot be combined with toPorts in one rule (rule_validation.go)")
    to_ports = r.get("toPorts")
    if to_ports is None:
        return None, tuple(icmps)
    rules = []
    for j, pr in enumerate(to_ports):
        pp = f"{path}.toPorts[{j}]"
        specs: list[PortSpec] = []
        for k, pp_ in enumerate(pr.get("ports") or []):
            spec = _cilium_port(pp_, f"{pp}.ports[{k}]", ctx)
            if spec is not None:
                specs.append(spec)
        l7 = None if deny else _l7(pr.get("rules"), f"{pp}.rules", ctx)
        if l7 is not None and any(s.protocol not in (None, "TCP", "UDP") for s in specs):
            ctx.error(f"{pp}.rules", "L7 rules need TCP or UDP ports")
        if not deny and (pr.get("terminatingTLS") or pr.get("originatingTLS") or pr.get("serverNames")
                         or pr.get("listener")):
            ctx.note(pp, "TLS interception / serverNames / listener are not evaluated")
        rules.append(PortRule(tuple(specs), l7))
    return tuple(rules), tuple(icmps)


def _cilium_port(p: dict[str, Any], path: str, ctx: _Ctx) -> PortSpec | None:
    proto = str(p.get("protocol") or "ANY").upper()
    raw = p.get("port")
    port: int | str | None
    if raw is None or str(raw) in ("", "0"):
        port = None
    elif isinstance(raw, int) or str(raw).isdigit():
        port = int(raw)
        if not 1 <= port <= 65535:
            ctx.error(f"{path}.port", f"{raw} is not in 0-65535")
            return None
    else:
        port = str(raw)
        _check_port_name(port, f"{path}.port", ctx)
    end = p.get("endPort")
    if end is not None and end != 0:
        if not isinstance(port, int):
            ctx.error(f"{path}.endPort", "endPort needs a numeric port")
            return None
        if not port <= end <= 65535:
            ctx.error(f"{path}.endPort", f"endPort {end} must be >= port {port} and <= 65535")
            return None
    else:
        end = None
    return PortSpec(None if proto == "ANY" else proto, port, end)


def _l7(rules: Any, path: str, ctx: _Ctx) -> L7Rules | None:
    if not rules:
        return None
    kinds = [k for k in ("http", "dns", "kafka", "l7proto") if rules.get(k)]
    if len(kinds) > 1:
        ctx.error(path, f"only one L7 rule kind per port rule, found {kinds}")
    http = None
    if rules.get("http") is not None:
        items = []
        for j, h in enumerate(rules["http"]):
            for key in ("method", "path", "host"):
                if h.get(key):
                    try:
                        HTTPRule(**{key: h[key]}).compiled()
                    except Exception as exc:
                        ctx.error(f"{path}.http[{j}].{key}", f"invalid regex {h[key]!r}: {exc}")
            headers: list[tuple[str, str | None]] = []
            for hd in h.get("headers") or []:
                name, sep, value = str(hd).partition(":")
                headers.append((name.strip(), value.strip() if sep else None))
            for hm in h.get("headerMatches") or []:
                if hm.get("mismatch"):
                    continue  # a mismatch action other than drop lets the request through
                if hm.get("secret"):
                    ctx.note(f"{path}.http[{j}].headerMatches", "secret header values are unknown; "
                                                                 "treated as a presence check")
                    headers.append((hm["name"], None))
                else:
                    headers.append((hm["name"], hm.get("value")))
            items.append(HTTPRule(h.get("method") or None, h.get("path") or None, h.get("host") or None,
                                  tuple(headers)))
        http = tuple(items)
    dns = None
    if rules.get("dns") is not None:
        sels = []
        for j, d in enumerate(rules["dns"]):
            if bool(d.get("matchName")) == bool(d.get("matchPattern")):
                ctx.error(f"{path}.dns[{j}]", "exactly one of matchName and matchPattern is required")
                continue
            sels.append(FQDNSelector(d.get("matchName"), d.get("matchPattern")))
        dns = tuple(sels)
    other = None
    if rules.get("kafka") or rules.get("l7proto"):
        other = "kafka" if rules.get("kafka") else f"l7proto {rules['l7proto']}"
        ctx.note(path, f"{other} L7 rules are not evaluated (only HTTP and DNS are)")
    return L7Rules(http, dns, other)
