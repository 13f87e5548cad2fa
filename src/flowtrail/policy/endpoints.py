"""Endpoints a flow or probe connects: pods, nodes, reserved identities and outside addresses.

Built from Hubble endpoint objects (identity labels) or from an inventory: the JSON of
``kubectl get namespaces,pods,services -A -o json`` (a ``kind: List``; Node objects are used as
well when present), or a conformance case file (``namespaces``/``pods``/``external``).
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from flowtrail.policy.selectors import NS_KEY, NS_LABELS_PREFIX, LabelSelector

NS_NAME_LABEL = "kubernetes.io/metadata.name"
SA_KEY = "io.cilium.k8s.policy.serviceaccount"
CLUSTER_KEY = "io.cilium.k8s.policy.cluster"
# identity labels Cilium derives from the pod's context rather than from its own labels
_DERIVED_PREFIXES = ("io.cilium.k8s.policy.", NS_LABELS_PREFIX)

# reserved identities by Hubble's numeric identity (policy-reference.md §2.4, numericidentity.go)
RESERVED_IDS = {1: "host", 2: "world", 3: "unmanaged", 4: "health", 5: "init", 6: "remote-node",
                7: "kube-apiserver", 8: "ingress", 9: "world", 10: "world"}
# entities that are "in the cluster" (the `cluster` entity covers them and every pod)
CLUSTER_ENTITIES = frozenset({"host", "remote-node", "init", "ingress", "health", "unmanaged", "kube-apiserver"})

IPAddr = ipaddress.IPv4Address | ipaddress.IPv6Address


class InventoryError(ValueError):
    pass


@dataclass(frozen=True)
class ContainerPort:
    name: str | None
    port: int | None
    protocol: str  # TCP | UDP | SCTP


@dataclass(frozen=True)
class Endpoint:
    """One side of a connection.

    ``kind``: ``pod`` (a Cilium-managed workload endpoint), ``reserved`` (host, remote-node,
    kube-apiserver, health, … — ``entities`` says which) or ``external`` (an address with no
    cluster identity: the `world`).
    """

    kind: str
    ip: IPAddr | None = None
    namespace: str | None = None
    name: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    ns_labels: Mapping[str, str] = field(default_factory=dict)
    ports: tuple[ContainerPort, ...] | None = None  # None = unknown (no inventory)
    node: str | None = None
    entities: frozenset[str] = frozenset()
    service_account: str | None = None
    cluster: str = "default"
    # Cilium identity labels (source, key, value) beyond what the fields above imply
    extra_labels: tuple[tuple[str, str, str], ...] = ()

    @property
    def is_pod(self) -> bool:
        return self.kind == "pod"

    def key(self) -> str:
        if self.is_pod:
            return f"{self.namespace}/{self.name}" if self.name else f"{self.namespace}/<pod {self.ip}>"
        if self.kind == "reserved":
            ent = sorted(self.entities - {"cluster", "all", "world-ipv4", "world-ipv6"})
            base = "+".join(ent) or "reserved"
            return f"{base}({self.ip})" if self.ip is not None else base
        return str(self.ip) if self.ip is not None else "world"

    def all_entities(self) -> frozenset[str]:
        """Every Cilium entity name that selects this endpoint."""
        out = set(self.entities) | {"all"}
        if self.is_pod or (self.entities & CLUSTER_ENTITIES):
            out.add("cluster")
        if self.kind == "external" or "world" in self.entities:
            out.add("world")
            if self.ip is not None:
                out.add(f"world-ipv{self.ip.version}")
        return frozenset(out)

    def label_index(self) -> dict[str, list[tuple[str, str]]]:
        """Cilium identity labels as key -> [(source, value)]."""
        idx: dict[str, list[tuple[str, str]]] = {}

        def add(source: str, key: str, value: str) -> None:
            idx.setdefault(key, []).append((source, value))
        if self.is_pod:
            for k, v in self.labels.items():
                add("k8s", k, v)
            if self.namespace is not None:
                add("k8s", NS_KEY, self.namespace)
            for k, v in self.ns_labels.items():
                add("k8s", NS_LABELS_PREFIX + k, v)
            if self.service_account:
                add("k8s", SA_KEY, self.service_account)
            add("k8s", CLUSTER_KEY, self.cluster)
        for e in self.entities:
            add("reserved", e, "")
        if self.kind == "external" or "world" in self.entities:
            add("reserved", "world", "")
        for s, k, v in self.extra_labels:
            add(s, k, v)
        return idx

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "id": self.key()}
        if self.ip is not None:
            out["ip"] = str(self.ip)
        if self.is_pod:
            out.update(namespace=self.namespace, pod=self.name)
        return out


def parse_ip(s: str) -> IPAddr | None:
    try:
        return ipaddress.ip_address(s.strip())
    except ValueError:
        return None


def from_hubble(ep: Mapping[str, Any] | None, ip: str | None) -> Endpoint:
    """An endpoint from a Hubble flow's ``source``/``destination`` object and its IP.

    Pod labels are the ``k8s:`` identity labels minus those Cilium derives (namespace, namespace
    labels ``io.cilium.k8s.namespace.labels.*``, service account, cluster); namespace labels come
    from the ``io.cilium.k8s.namespace.labels.`` ones, plus ``kubernetes.io/metadata.name`` which
    the control plane sets on every namespace.
    """
    ep = ep or {}
    addr = parse_ip(ip) if ip else None
    labels_list: Iterable[str] = ep.get("labels") or ()
    return from_identity_labels(list(labels_list), addr, ep.get("namespace") or None, ep.get("pod_name") or None,
                                _int(ep.get("identity")))


def _int(v: Any) -> int | None:
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


def from_identity_labels(labels: Sequence[str], ip: IPAddr | None, namespace: str | None, pod: str | None,
                         identity: int | None) -> Endpoint:
    pod_labels: dict[str, str] = {}
    ns_labels: dict[str, str] = {}
    entities: set[str] = set()
    extra: list[tuple[str, str, str]] = []
    sa = None
    cluster = "default"
    for lab in labels:
        source, _, kv = lab.partition(":")
        key, _, value = kv.partition("=")
        if source == "reserved":
            entities.add(key)
        elif source == "k8s":
            if key == NS_KEY:
                namespace = namespace or value
            elif key.startswith(NS_LABELS_PREFIX):
                ns_labels[key[len(NS_LABELS_PREFIX):]] = value
            elif key == SA_KEY:
                sa = value
            elif key == CLUSTER_KEY:
                cluster = value
            elif not key.startswith(_DERIVED_PREFIXES):
                pod_labels[key] = value
        else:
            extra.append((source, key, value))
    if identity is not None and identity in RESERVED_IDS and not entities:
        entities.add(RESERVED_IDS[identity])
    entities.discard("world-ipv4")
    entities.discard("world-ipv6")
    if namespace is not None and not (entities - {"kube-apiserver"}):
        ns_labels.setdefault(NS_NAME_LABEL, namespace)
        return Endpoint("pod", ip, namespace, pod, pod_labels, ns_labels, None, None, frozenset(entities), sa,
                        cluster, tuple(extra))
    if entities - {"world"}:
        return Endpoint("reserved", ip, entities=frozenset(entities), extra_labels=tuple(extra))
    return Endpoint("external", ip, extra_labels=tuple(extra))


# ---- inventory ----------------------------------------------------------------------------------

@dataclass
class Service:
    namespace: str
    name: str
    labels: dict[str, str]
    selector: dict[str, str] | None
    ips: tuple[IPAddr, ...]


@dataclass
class Inventory:
    """What is known about the cluster besides the flows."""

    namespaces: dict[str, dict[str, str]] = field(default_factory=dict)
    pods: dict[tuple[str, str], Endpoint] = field(default_factory=dict)
    by_ip: dict[IPAddr, Endpoint] = field(default_factory=dict)
    services: list[Service] = field(default_factory=list)
    node_ips: dict[IPAddr, str] = field(default_factory=dict)
    # addresses a case file declares as outside the cluster (documentation only)
    external: dict[str, str] = field(default_factory=dict)
    flavour: str | None = None  # conformance case flavour, when loaded from a case file
    source: str = ""

    def ns_labels(self, ns: str) -> dict[str, str]:
        labels = dict(self.namespaces.get(ns, {}))
        labels.setdefault(NS_NAME_LABEL, ns)
        return labels

    def add_pod(self, ep: Endpoint) -> None:
        assert ep.namespace is not None and ep.name is not None
        self.pods[(ep.namespace, ep.name)] = ep
        if ep.ip is not None:
            self.by_ip[ep.ip] = ep

    def resolve(self, ref: str, peer_node: str | None = None) -> Endpoint:
        """A probe endpoint: ``NS/POD``, an IP address, or ``reserved:ENTITY``."""
        ref = ref.strip()
        if ref.startswith("reserved:"):
            ent = ref.split(":", 1)[1]
            return Endpoint("reserved", entities=frozenset({ent}))
        addr = parse_ip(ref)
        if addr is not None:
            return self.endpoint_for_ip(addr, peer_node)
        ns, sep, name = ref.partition("/")
        if not sep or not ns or not name:
            raise InventoryError(f"{ref!r}: expected NAMESPACE/POD, an IP address or reserved:ENTITY")
        ep = self.pods.get((ns, name))
        if ep is None:
            where = f" in {self.source}" if self.source else " (no --inventory given)"
            raise InventoryError(f"unknown pod {ref}{where}")
        return ep

    def endpoint_for_ip(self, addr: IPAddr, peer_node: str | None = None) -> Endpoint:
        ep = self.by_ip.get(addr)
        if ep is not None:
            return ep
        node = self.node_ips.get(addr)
        if node is not None:
            local = peer_node is not None and node == peer_node
            return Endpoint("reserved", addr, node=node, entities=frozenset({"host" if local else "remote-node"}))
        return Endpoint("external", addr)

    def enrich(self, ep: Endpoint) -> Endpoint:
        """Fill container ports (named ports) and node of a flow endpoint from the inventory."""
        if not ep.is_pod:
            if ep.kind == "external" and ep.ip is not None and ep.ip in self.by_ip:
                return self.by_ip[ep.ip]
            return ep
        known = None
        if ep.namespace and ep.name:
            known = self.pods.get((ep.namespace, ep.name))
        if known is None and ep.ip is not None:
            known = self.by_ip.get(ep.ip)
        if known is None:
            return ep
        ns_labels = dict(ep.ns_labels) if len(ep.ns_labels) > 1 else self.ns_labels(ep.namespace or "")
        return Endpoint("pod", ep.ip or known.ip, ep.namespace, ep.name or known.name, ep.labels or known.labels,
                        ns_labels, known.ports, known.node, ep.entities, ep.service_account or known.service_account,
                        ep.cluster, ep.extra_labels)

    def services_matching(self, name: str | None, namespace: str, selector: LabelSelector | None) -> list[Service]:
        out = []
        for s in self.services:
            if namespace and s.namespace != namespace:
                continue
            if name is not None and s.name != name:
                continue
            if selector is not None and not selector.matches_plain(s.labels):
                continue
            out.append(s)
        return out


def load_inventory(path: str) -> Inventory:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise InventoryError(f"{path}: {exc.strerror}") from None
    try:
        data = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise InventoryError(f"{path}: not valid JSON/YAML: {exc}") from None
    if not isinstance(data, dict):
        raise InventoryError(f"{path}: expected a kubectl List object or a conformance case")
    if "pods" in data and "namespaces" in data and "kind" not in data:
        return inventory_from_case(data, path)
    items = data.get("items") if data.get("kind", "").endswith("List") else [data]
    if not isinstance(items, list):
        raise InventoryError(f"{path}: `items` must be a list")
    return inventory_from_objects(items, path)


def inventory_from_objects(items: Sequence[Any], source: str = "") -> Inventory:
    inv = Inventory(source=source)
    pods: list[dict[str, Any]] = []
    for i, obj in enumerate(items):
        if not isinstance(obj, dict):
            raise InventoryError(f"{source}: items[{i}] is not an object")
        kind = obj.get("kind")
        meta = obj.get("metadata") or {}
        if kind == "Namespace":
            inv.namespaces[meta.get("name", "")] = {str(k): str(v) for k, v in (meta.get("labels") or {}).items()}
        elif kind == "Pod":
            pods.append(obj)
        elif kind == "Service":
            spec = obj.get("spec") or {}
            ips = [parse_ip(x) for x in (spec.get("clusterIPs") or [spec.get("clusterIP") or ""])]
            sel = spec.get("selector")
            inv.services.append(Service(meta.get("namespace", "default"), meta.get("name", ""),
                                        {str(k): str(v) for k, v in (meta.get("labels") or {}).items()},
                                        {str(k): str(v) for k, v in sel.items()} if sel else None,
                                        tuple(a for a in ips if a is not None)))
        elif kind == "Node":
            for a in (obj.get("status") or {}).get("addresses") or []:
                addr = parse_ip(str(a.get("address", "")))
                if addr is not None:
                    inv.node_ips[addr] = meta.get("name", "")
    for obj in pods:
        meta = obj.get("metadata") or {}
        spec = obj.get("spec") or {}
        status = obj.get("status") or {}
        ns = meta.get("namespace", "default")
        ports = []
        for c in (spec.get("containers") or []) + (spec.get("initContainers") or []):
            for cp in c.get("ports") or []:
                ports.append(ContainerPort(cp.get("name"), _int(cp.get("containerPort")),
                                           str(cp.get("protocol") or "TCP").upper()))
        node = spec.get("nodeName")
        host_ip = parse_ip(str(status.get("hostIP") or ""))
        if host_ip is not None and node:
            inv.node_ips.setdefault(host_ip, node)
        if spec.get("hostNetwork"):
            # hostNetwork pods share the node's address and identity (policy-reference.md §1.8)
            continue
        ips = [parse_ip(str(x.get("ip", ""))) for x in status.get("podIPs") or []] or [parse_ip(str(status.get("podIP") or ""))]
        ep = Endpoint("pod", next((a for a in ips if a is not None), None), ns, meta.get("name", ""),
                      {str(k): str(v) for k, v in (meta.get("labels") or {}).items()}, inv.ns_labels(ns),
                      tuple(ports), node, service_account=spec.get("serviceAccountName") or "default")
        inv.add_pod(ep)
        for a in ips[1:]:
            if a is not None:
                inv.by_ip[a] = ep
    return inv


def inventory_from_case(data: Mapping[str, Any], source: str = "") -> Inventory:
    """A conformance case (see ../shared/data/netpol-conformance/SOURCES.md) as an inventory."""
    inv = Inventory(source=source, flavour=data.get("flavour"))
    for ns, labels in (data.get("namespaces") or {}).items():
        inv.namespaces[ns] = {str(k): str(v) for k, v in (labels or {}).items()}
    for i, p in enumerate(data.get("pods") or []):
        try:
            ns, name = p["namespace"], p["name"]
        except (KeyError, TypeError):
            raise InventoryError(f"{source}: pods[{i}] needs namespace and name") from None
        ports = tuple(ContainerPort(cp.get("name"), _int(cp.get("port")), str(cp.get("protocol") or "TCP").upper())
                      for cp in p.get("ports") or [])
        inv.add_pod(Endpoint("pod", parse_ip(str(p.get("ip") or "")), ns, name,
                             {str(k): str(v) for k, v in (p.get("labels") or {}).items()}, inv.ns_labels(ns),
                             ports, p.get("node"), service_account=p.get("serviceAccount") or "default"))
    inv.external = {str(k): str(v) for k, v in (data.get("external") or {}).items()}
    return inv
