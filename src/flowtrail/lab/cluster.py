"""The simulated cluster: load a cluster YAML, validate it, and give every pod its identity.

Materialisation is deterministic for a seed: node names, pod names in the real
`<deployment>-<replicaset hash>-<suffix>` form (StatefulSets `<name>-<ordinal>`), pod IPs out of
the node's pod CIDR, ClusterIPs, endpoint IDs and one security identity per label set, as the
Cilium identity allocator hands out (pods of a workload share their identity).
"""

from __future__ import annotations

import ipaddress
import random
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import orjson
import yaml

# Kubernetes' alphabet for generated name suffixes (no vowels, no confusable digits)
RS_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"

_PORT = {
    "type": "object",
    "required": ["port"],
    "additionalProperties": False,
    "properties": {
        "port": {"type": "integer", "minimum": 1, "maximum": 65535},
        "protocol": {"enum": ["TCP", "UDP", "SCTP"]},
        "name": {"type": "string"},
        "l7": {"enum": ["http", "dns", "none"]},
    },
}
CLUSTER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["cluster", "namespaces", "workloads", "traffic"],
    "additionalProperties": False,
    "properties": {
        "cluster": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
        "hubble_version": {"type": "string"},
        "nodes": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "count": {"type": "integer", "minimum": 1, "maximum": 250},
                "name": {"type": "string"},
                "zones": {"type": "array", "items": {"type": "string"}, "minItems": 1},
            },
        },
        "pod_cidr": {"type": "string"},
        "node_cidr": {"type": "string"},
        "service_cidr": {"type": "string"},
        "cloud_search_suffix": {"type": "string"},
        "apiserver": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "mode": {"enum": ["managed", "control-plane"]},
                "ips": {"type": "array", "items": {"type": "string"}, "minItems": 1},
                "port": {"type": "integer"},
                "service_ip": {"type": "string"},
            },
        },
        "diurnal": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"amplitude": {"type": "number", "minimum": 0, "maximum": 1},
                           "peak_hour": {"type": "number", "minimum": 0, "maximum": 24}},
        },
        "jitter": {"type": "number", "minimum": 0, "maximum": 2},
        "background_drop_rate": {"type": "number", "minimum": 0, "maximum": 1},
        "namespaces": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "additionalProperties": False,
                "properties": {"labels": {"type": "object", "additionalProperties": {"type": "string"}}},
            },
        },
        "workloads": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["namespace", "name", "labels"],
                "additionalProperties": False,
                "properties": {
                    "namespace": {"type": "string"},
                    "name": {"type": "string"},
                    "kind": {"enum": ["Deployment", "StatefulSet", "DaemonSet"]},
                    "replicas": {"type": "integer", "minimum": 1, "maximum": 500},
                    "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                    "service": {"type": "string"},
                    "service_account": {"type": "string"},
                    "ports": {"type": "array", "items": _PORT},
                    "metrics_port": {"type": "integer", "minimum": 1, "maximum": 65535},
                    "http": {"type": "array", "items": {"type": "string", "pattern": "^[A-Z]+ /"}},
                    "dns_server": {"type": "boolean"},
                },
            },
        },
        "external": {
            "type": "object",
            "additionalProperties": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        },
        "traffic": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["rate"],
                "additionalProperties": False,
                "properties": {
                    "from": {"type": "string"},
                    "to": {"type": "string"},
                    "port": {"type": "integer", "minimum": 1, "maximum": 65535},
                    "protocol": {"enum": ["TCP", "UDP"]},
                    "kind": {"enum": ["http", "tcp", "udp", "scrape", "probe", "health"]},
                    "rate": {"type": "number", "exclusiveMinimum": 0},
                    "requests": {"type": "array", "items": {"type": "integer", "minimum": 1},
                                 "minItems": 2, "maxItems": 2},
                    "verdict": {"enum": ["FORWARDED", "DROPPED"]},
                },
            },
        },
    },
}


class ClusterError(ValueError):
    """A cluster file that cannot be simulated; the message names the file and the place."""


@dataclass(eq=False)
class Workload:
    ns: str
    name: str
    kind: str
    labels: dict[str, str]
    service: str  # Service name ("" when the workload serves nothing)
    service_account: str
    ports: list[dict[str, Any]]
    metrics_port: int
    http: list[tuple[str, str]]
    dns_server: bool
    identity: int = 0
    svc_ip: str = ""
    label_list: list[str] = field(default_factory=list)
    pods: list[Pod] = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"{self.ns}/{self.name}"

    def port_spec(self, port: int) -> dict[str, Any] | None:
        return next((p for p in self.ports if p["port"] == port), None)


@dataclass(eq=False)
class Pod:
    wl: Workload
    name: str
    ip: str
    node: int
    ep_id: int
    mac: str
    lxc_mac: str
    ifindex: int
    ifname: str
    ep_local: str = ""  # Endpoint JSON as the pod's own node reports it (with the endpoint ID)
    ep_remote: str = ""  # as another node reports it (no ID)

    @property
    def key(self) -> str:
        return f"{self.wl.ns}/{self.name}"


@dataclass
class Node:
    name: str  # as Hubble prints node_name: "<cluster>/<node>"
    host: str
    ip: str
    zone: str
    labels: list[str]
    pod_net: ipaddress.IPv4Network
    health_ip: str
    health_ep: str  # local Endpoint JSON of the cilium-health endpoint
    health_mac: tuple[str, str]
    health_ifindex: int


@dataclass
class Cluster:
    """A materialised cluster: everything the flow builders need, fixed for a seed."""

    name: str
    spec: dict[str, Any]
    source: str
    nodes: list[Node] = field(default_factory=list)
    namespaces: dict[str, dict[str, str]] = field(default_factory=dict)
    workloads: dict[str, Workload] = field(default_factory=dict)
    external: dict[str, list[str]] = field(default_factory=dict)
    apiserver_ips: list[str] = field(default_factory=list)
    apiserver_port: int = 443
    apiserver_ep: str = ""
    apiserver_svc_ip: str = "172.20.0.1"
    hubble_version: str = "1.19.4"
    cloud_suffix: str = ""

    @property
    def pods(self) -> list[Pod]:
        return [p for wl in self.workloads.values() for p in wl.pods]

    def workload(self, key: str, where: str = "") -> Workload:
        try:
            return self.workloads[key]
        except KeyError:
            known = ", ".join(sorted(self.workloads))
            raise ClusterError(f"{where or self.source}: unknown workload {key!r} (known: {known})") from None

    def pod(self, key: str) -> Pod:
        """A pod by `ns/pod-name`, or the first pod of `ns/workload`."""
        if key in self.workloads:
            return self.workloads[key].pods[0]
        for p in self.pods:
            if p.key == key:
                return p
        raise ClusterError(f"unknown pod or workload {key!r}")

    def dns_servers(self) -> list[Pod]:
        return [p for wl in self.workloads.values() if wl.dns_server for p in wl.pods]


def _js(value: object) -> str:
    return orjson.dumps(value).decode()


def _mac(rng: random.Random) -> str:
    # locally administered unicast, like the veth MACs Cilium creates
    first = rng.randrange(256) & 0xFE | 0x02
    return ":".join(f"{b:02x}" for b in [first, *(rng.randrange(256) for _ in range(5))])


def load_cluster_spec(path: str | Path | None) -> tuple[dict[str, Any], str]:
    """Read and schema-check a cluster file (the bundled demo cluster when path is None)."""
    if path is None:
        text = resources.files("flowtrail.lab").joinpath("clusters/demo.yaml").read_text()
        source = "demo.yaml"
    else:
        source = str(path)
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ClusterError(f"{source}: {exc.strerror}") from None
    try:
        spec = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        raise ClusterError(f"{where}: invalid YAML: {getattr(exc, 'problem', exc)}") from None
    if path is not None:
        # the bundled cluster is checked by the tests, not on every run (importing jsonschema
        # and checking took ~0.15 s of every `simulate`)
        check_cluster_spec(spec, source)
    return spec, source


def check_cluster_spec(spec: Any, source: str) -> None:
    """Raise ClusterError naming the place of the first schema violation."""
    import jsonschema
    validator = jsonschema.validators.validator_for(CLUSTER_SCHEMA)(CLUSTER_SCHEMA)
    exc = jsonschema.exceptions.best_match(validator.iter_errors(spec))
    if exc is not None:
        where = "/".join(str(p) for p in exc.absolute_path) or "(top level)"
        raise ClusterError(f"{source}: {where}: {exc.message}")


def build_cluster(spec: dict[str, Any], source: str, seed: int) -> Cluster:
    rng = random.Random(f"cluster:{seed}")
    c = Cluster(name=spec["cluster"], spec=spec, source=source)
    c.hubble_version = spec.get("hubble_version", "1.19.4")
    c.cloud_suffix = spec.get("cloud_search_suffix", "")
    nodes = spec.get("nodes", {})
    zones = nodes.get("zones", ["zone-a"])
    pod_cidr = ipaddress.ip_network(spec.get("pod_cidr", "10.0.0.0/16"))
    node_cidr = ipaddress.ip_network(spec.get("node_cidr", "10.10.0.0/16"))
    svc_cidr = ipaddress.ip_network(spec.get("service_cidr", "172.20.0.0/16"))
    count = nodes.get("count", 3)
    if not isinstance(pod_cidr, ipaddress.IPv4Network) or not isinstance(node_cidr, ipaddress.IPv4Network) \
            or not isinstance(svc_cidr, ipaddress.IPv4Network):
        raise ClusterError(f"{source}: pod_cidr, node_cidr and service_cidr must be IPv4 networks")
    per_node = list(pod_cidr.subnets(new_prefix=max(pod_cidr.prefixlen + 1, 22)))
    if len(per_node) < count:
        raise ClusterError(f"{source}: pod_cidr {pod_cidr} is too small for {count} nodes")
    used_ids: set[int] = set()

    def endpoint_id() -> int:
        while (ep := rng.randrange(10, 4096)) in used_ids:
            pass
        used_ids.add(ep)
        return ep

    n_node_addrs = node_cidr.num_addresses
    for i in range(count):
        host = nodes.get("name", "node-{n}").format(n=i + 1)
        zone = zones[i % len(zones)]
        net = per_node[i]
        health_ip = str(net[rng.randrange(2, min(net.num_addresses - 1, 250))])
        macs = (_mac(rng), _mac(rng))
        c.nodes.append(Node(
            name=f"{c.name}/{host}", host=host, ip=str(node_cidr[rng.randrange(10, max(11, min(n_node_addrs - 1, 60000)))]),
            zone=zone, labels=[f"kubernetes.io/hostname={host}", f"topology.kubernetes.io/zone={zone}"],
            pod_net=net, health_ip=health_ip,
            health_ep=_js({"ID": endpoint_id(), "identity": 4, "labels": ["reserved:health"]}),
            health_mac=macs, health_ifindex=rng.randrange(12, 400)))
    used_ips = {n.health_ip for n in c.nodes}
    for ns, body in spec["namespaces"].items():
        c.namespaces[ns] = dict((body or {}).get("labels", {}))
    n_svc = svc_cidr.num_addresses
    used_svc = {spec.get("apiserver", {}).get("service_ip", str(svc_cidr[1]))}
    identities: dict[tuple[str, ...], int] = {}
    for i, w in enumerate(spec["workloads"]):
        where = f"{source}: workloads/{i}"
        if w["namespace"] not in c.namespaces:
            raise ClusterError(f"{where}: namespace {w['namespace']!r} is not declared under namespaces")
        http: list[tuple[str, str]] = []
        for line in w.get("http", []):
            method, _, path = line.partition(" ")
            http.append((method, path))
        wl = Workload(ns=w["namespace"], name=w["name"], kind=w.get("kind", "Deployment"), labels=w["labels"],
                      service=w.get("service", w["name"]) if w.get("ports") else "",
                      service_account=w.get("service_account", w["name"]), ports=w.get("ports", []),
                      metrics_port=w.get("metrics_port", 0), http=http, dns_server=w.get("dns_server", False))
        if wl.key in c.workloads:
            raise ClusterError(f"{where}: duplicate workload {wl.key}")
        ns_labels = c.namespaces[wl.ns]
        labels = sorted([
            f"k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name={wl.ns}",
            *(f"k8s:io.cilium.k8s.namespace.labels.{k}={v}" for k, v in ns_labels.items()),
            f"k8s:io.cilium.k8s.policy.cluster={c.name}",
            f"k8s:io.cilium.k8s.policy.serviceaccount={wl.service_account}",
            f"k8s:io.kubernetes.pod.namespace={wl.ns}",
            *(f"k8s:{k}={v}" for k, v in wl.labels.items()),
        ])
        wl.label_list = labels
        if tuple(labels) not in identities:
            taken = set(identities.values())
            ident = rng.randrange(256, 65536)
            while ident in taken:
                ident = rng.randrange(256, 65536)
            identities[tuple(labels)] = ident
        wl.identity = identities[tuple(labels)]
        if wl.service:
            while (ip := str(svc_cidr[rng.randrange(2, max(3, min(n_svc - 1, 65000)))])) in used_svc:
                pass
            used_svc.add(ip)
            wl.svc_ip = ip
        rs_hash = "".join(rng.choice(RS_ALPHABET) for _ in range(rng.choice((9, 10))))
        replicas = count if wl.kind == "DaemonSet" else w.get("replicas", 1)
        for r in range(replicas):
            if wl.kind == "StatefulSet":
                pod_name = f"{wl.name}-{r}"
            elif wl.kind == "DaemonSet":
                pod_name = f"{wl.name}-" + "".join(rng.choice(RS_ALPHABET) for _ in range(5))
            else:
                pod_name = f"{wl.name}-{rs_hash}-" + "".join(rng.choice(RS_ALPHABET) for _ in range(5))
            node = r if wl.kind == "DaemonSet" else rng.randrange(count)
            hosts = c.nodes[node].pod_net
            while (ip := str(hosts[rng.randrange(2, hosts.num_addresses - 1)])) in used_ips:
                pass
            used_ips.add(ip)
            pod = Pod(wl=wl, name=pod_name, ip=ip, node=node, ep_id=endpoint_id(), mac=_mac(rng),
                      lxc_mac=_mac(rng), ifindex=rng.randrange(12, 400), ifname=f"lxc{rng.getrandbits(48):012x}")
            ep: dict[str, Any] = {"ID": pod.ep_id, "identity": wl.identity, "cluster_name": c.name,
                                  "namespace": wl.ns, "labels": labels, "pod_name": pod_name,
                                  "workloads": [{"name": wl.name, "kind": wl.kind}]}
            pod.ep_local = _js(ep)
            del ep["ID"]
            pod.ep_remote = _js(ep)
            wl.pods.append(pod)
        c.workloads[wl.key] = wl
    for name, addrs in (spec.get("external") or {}).items():
        for a in addrs:
            try:
                ipaddress.ip_address(a)
            except ValueError:
                raise ClusterError(f"{source}: external/{name}: {a!r} is not an IP address") from None
        c.external[name] = list(addrs)
    api = spec.get("apiserver", {})
    c.apiserver_ips = list(api.get("ips", [c.nodes[0].ip]))
    c.apiserver_port = api.get("port", 443 if api.get("mode", "managed") == "managed" else 6443)
    c.apiserver_svc_ip = api.get("service_ip", str(svc_cidr[1]))
    if api.get("mode", "managed") == "managed":
        c.apiserver_ep = _js({"identity": 16777217, "labels": ["reserved:kube-apiserver", "reserved:world"]})
    else:
        c.apiserver_ep = _js({"identity": 7, "labels": ["reserved:kube-apiserver", "reserved:remote-node"]})
    if not c.dns_servers():
        raise ClusterError(f"{source}: no workload has dns_server: true (pods need a resolver)")
    return c


def load_cluster(path: str | Path | None, seed: int) -> Cluster:
    spec, source = load_cluster_spec(path)
    return build_cluster(spec, source, seed)
