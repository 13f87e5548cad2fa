"""Generate realistic Cilium Hubble flows for benchmarks (stdlib only).

Writes one `observer.GetFlowsResponse` / exporter `ExportEvent` per line, exactly as
`hubble observe -o jsonpb` or the Hubble exporter (`events.log`) writes them:

    {"flow":{"time":…,"uuid":…,"emitter":…,"verdict":…,…,"Summary":…},"node_name":"cluster/node","time":…}

Shapes copy the real samples in ../shared/data/hubble-samples (proto field names, proto
declaration order of keys, enums as names, uint64 as strings, zero values omitted, timestamps with
0/3/6/9 fractional digits). The simulated cluster `prod-eu1` has 6 nodes and ~45 pods in the
namespaces frontend, app, database, payments, production, dev, monitoring and kube-system.
Traffic is simulated as interleaved sessions:

* TCP connections traced at both ends (TO_STACK on the sender's node, TO_ENDPOINT on the
  receiver's), with flag progression SYN → SYN,ACK → ACK → ACK,PSH … → ACK,FIN → ACK and
  trace_reason NEW / ESTABLISHED / REPLY; some with a policy-verdict event on the SYN;
* HTTP L7 request/response records (Type L7, event_type 129, headers, latency_ns as a string,
  trace_context from a traceparent header) inside connections to HTTP services, and Prometheus
  scrapes by pod IP;
* DNS L7 lookups through the search path (NXDOMAIN rcode 3 for the search-path expansions,
  answers with ips/ttl/rrtypes), UDP statsd traffic, kubelet probes from reserved:host;
* world egress (reserved:world, identity 2, destination_names) and world ingress;
* ~5 % policy drops: verdict DROPPED, drop_reason 133, drop_reason_desc POLICY_DENIED,
  event_type {type:1, sub_type:133}, no is_reply; most of them payments → database:5432.

Output is deterministic for a given --seed and -n.

    python bench/genflows.py -n 1000000 -o bench/data/flows-1m.jsonl [--seed 1]
"""

from __future__ import annotations

import argparse
import json
import queue
import random
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

CLUSTER = "prod-eu1"
HUBBLE_VERSION = "1.19.4"
START_NS = 1_795_680_000 * 10**9  # 2026-11-20T08:00:00Z
SESSIONS_IN_FLIGHT = 256  # concurrently active sessions whose events are interleaved
CHUNK_LINES = 20_000  # lines per write() call

RS_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # what Kubernetes uses for ReplicaSet/pod suffixes

# event kinds, for the mix statistics printed at the end
K_TCP, K_UDP, K_ICMP, K_PV, K_DNS, K_HTTP, K_DROP = range(7)
KIND_NAMES = ["TCP trace", "UDP trace", "ICMP trace", "policy-verdict", "DNS L7", "HTTP L7", "DROPPED"]

TCP_FLAGS = {  # key: (flags object in proto field order FIN,SYN,RST,PSH,ACK, Summary text)
    "SYN": ('{"SYN":true}', "TCP Flags: SYN"),
    "SYNACK": ('{"SYN":true,"ACK":true}', "TCP Flags: SYN, ACK"),
    "ACK": ('{"ACK":true}', "TCP Flags: ACK"),
    "PSH": ('{"PSH":true,"ACK":true}', "TCP Flags: ACK, PSH"),
    "FIN": ('{"FIN":true,"ACK":true}', "TCP Flags: ACK, FIN"),
    "RST": ('{"RST":true}', "TCP Flags: RST"),
}

WORLD_EP = '{"identity":2,"labels":["reserved:world"]}'
HOST_EP = '{"identity":1,"labels":["reserved:host"]}'
EV_TO_STACK = '{"type":4,"sub_type":3}'
EV_TO_PROXY = '{"type":4,"sub_type":1}'
EV_TO_ENDPOINT = '{"type":4}'  # sub_type 0 is omitted by protojson
EV_DROP_POLICY = '{"type":1,"sub_type":133}'
EV_L7 = '{"type":129}'
EV_POLICY_VERDICT = '{"type":5}'
REPLY_FRAG = {True: '"reply":true,', False: ""}  # deprecated Flow.reply, false is omitted
BOOL = {True: "true", False: "false"}

EXTERNAL = {  # FQDN → (A records, AAAA records)
    "api.stripe.com": (["54.187.174.169", "54.187.205.235", "54.187.216.72"], []),
    "sqs.eu-west-1.amazonaws.com": (["52.119.188.146"], []),
    "s3.eu-west-1.amazonaws.com": (["52.218.100.162", "52.92.17.138"], []),
    "api.github.com": (["140.82.121.6"], []),
    "pypi.org": (["151.101.0.223", "151.101.64.223"], ["2a04:4e42::223"]),
    "registry-1.docker.io": (["54.236.113.205", "3.216.34.172"], []),
    "hooks.slack.com": (["3.120.245.128"], []),
    "grafana.com": (["34.120.177.193"], ["2600:1901:0:b3ea::"]),
}
SEARCH_SUFFIXES = ["svc.cluster.local", "cluster.local", "eu-west-1.compute.internal"]
USER_AGENTS = ["Go-http-client/1.1", "python-requests/2.32.3", "okhttp/4.12.0", "axios/1.7.7"]


@dataclass
class Workload:
    ns: str
    app: str
    kind: str  # Deployment | StatefulSet
    replicas: int
    port: int  # 0 = serves nothing
    proto: str  # http | tcp | udp | dns | none
    part_of: str
    paths: list[tuple[str, str]] = field(default_factory=list)  # (method, path) for HTTP services
    metrics_port: int = 0
    identity: int = 0
    svc_ip: str = ""
    svc_json: str = ""  # Service {name, namespace}
    pods: list[Pod] = field(default_factory=list)


@dataclass
class Pod:
    wl: Workload
    name: str
    ip: str
    node: int
    mac: str
    lxc_mac: str
    ifindex: int
    ifname: str
    ep_local: str = ""  # Endpoint JSON with ID (endpoint is on the observing node)
    ep_remote: str = ""  # Endpoint JSON without ID


WORKLOADS: list[tuple[str, str, str, int, int, str, str, list[tuple[str, str]], int]] = [
    # ns, app, kind, replicas, port, proto, part-of, HTTP (method, path), metrics port
    ("frontend", "web", "Deployment", 3, 8080, "http", "storefront",
     [("GET", "/"), ("GET", "/static/js/main.4f9c2a1e.js"), ("GET", "/api/session"), ("GET", "/product/{id}")], 9100),
    ("frontend", "gateway", "Deployment", 2, 8443, "tcp", "storefront", [], 9100),
    ("app", "api", "Deployment", 4, 8080, "http", "shop",
     [("GET", "/api/v1/orders/{id}"), ("POST", "/api/v1/orders"), ("GET", "/api/v1/products?page={n}"),
      ("GET", "/api/v1/customers/{id}/addresses"), ("PUT", "/api/v1/orders/{id}/status")], 8080),
    ("app", "cart", "Deployment", 2, 8080, "http", "shop",
     [("GET", "/v1/carts/{id}"), ("POST", "/v1/carts/{id}/items"), ("DELETE", "/v1/carts/{id}/items/{n}")], 8080),
    ("app", "worker", "Deployment", 3, 0, "none", "shop", [], 9100),
    ("database", "postgres", "StatefulSet", 2, 5432, "tcp", "data", [], 9187),
    ("database", "redis", "StatefulSet", 1, 6379, "tcp", "data", [], 9121),
    ("payments", "billing", "Deployment", 2, 8080, "http", "payments",
     [("POST", "/v1/invoices"), ("GET", "/v1/invoices/{id}"), ("POST", "/v1/charges")], 8080),
    ("payments", "ledger", "Deployment", 2, 8080, "http", "payments",
     [("POST", "/v1/entries"), ("GET", "/v1/accounts/{id}/balance")], 8080),
    ("payments", "payments-api", "Deployment", 2, 8443, "tcp", "payments", [], 9100),
    ("production", "orders", "Deployment", 3, 8080, "http", "fulfilment",
     [("GET", "/orders/{id}"), ("POST", "/orders/{id}/ship"), ("GET", "/orders?status=pending")], 8080),
    ("production", "search", "Deployment", 2, 9200, "http", "fulfilment",
     [("GET", "/products/_search?q=sku-{n}"), ("POST", "/products/_bulk")], 0),
    ("dev", "sandbox", "Deployment", 1, 0, "none", "sandbox", [], 0),
    ("dev", "ci-runner", "Deployment", 2, 0, "none", "ci", [], 0),
    ("monitoring", "prometheus", "StatefulSet", 1, 9090, "http", "observability",
     [("GET", "/api/v1/query_range"), ("GET", "/api/v1/query"), ("GET", "/api/v1/labels")], 0),
    ("monitoring", "grafana", "Deployment", 1, 3000, "http", "observability", [("GET", "/api/health")], 0),
    ("monitoring", "statsd-exporter", "Deployment", 1, 9125, "udp", "observability", [], 0),
    ("kube-system", "coredns", "Deployment", 2, 53, "dns", "kube-dns", [], 0),
    ("kube-system", "metrics-server", "Deployment", 1, 10250, "tcp", "metrics-server", [], 0),
    ("kube-system", "hubble-relay", "Deployment", 1, 4245, "tcp", "cilium", [], 0),
]
NS_LABELS = {  # extra namespace labels (→ k8s:io.cilium.k8s.namespace.labels.*)
    "frontend": [], "app": [], "database": ["tier=data"], "payments": ["pci=true"], "production": [],
    "dev": ["env=dev"], "monitoring": [], "kube-system": [],
}


def protojson_time(ns: int, cache: dict[int, str]) -> str:
    """RFC 3339 UTC with 0, 3, 6 or 9 fractional digits, as Go protojson prints a Timestamp."""
    secs, nanos = divmod(ns, 1_000_000_000)
    prefix = cache.get(secs)
    if prefix is None:
        cache.clear()
        prefix = cache[secs] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs))
    if nanos == 0:
        return prefix + "Z"
    if nanos % 1_000_000 == 0:
        return f"{prefix}.{nanos // 1_000_000:03d}Z"
    if nanos % 1_000 == 0:
        return f"{prefix}.{nanos // 1_000:06d}Z"
    return f"{prefix}.{nanos:09d}Z"


def js(value: object) -> str:
    """Compact JSON, for fragments built once."""
    return json.dumps(value, separators=(",", ":"))


def jstr(text: str) -> str:
    """JSON string literal for ASCII text without control characters (the hot path's json.dumps)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


class Cluster:
    """Pods, nodes and the per-session event builders. Event bodies are JSON text fragments."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.nodes: list[str] = []
        self.node_frag: list[str] = []  # '"node_name":…,"node_labels":[…]'
        self.node_ip: list[str] = []
        for i in range(6):
            zone = "eu-west-1" + "abc"[i % 3]
            host = f"k8s-worker-{i + 1:02d}"
            name = f"{CLUSTER}/{host}"
            labels = [f"kubernetes.io/hostname={host}", f"topology.kubernetes.io/zone={zone}"]
            self.nodes.append(name)
            self.node_ip.append(f"10.10.{16 * (i % 3) + rng.randrange(1, 15)}.{rng.randrange(10, 250)}")
            self.node_frag.append(f'"node_name":{js(name)},"node_labels":{js(labels)}')
        self.workloads: dict[str, Workload] = {}
        used_ids: list[int] = []
        # cilium-health endpoint per node (reserved:health, identity 4)
        self.health: list[tuple[str, str, str, str, int]] = []  # ip, local ep, mac, lxc mac, ifindex
        for i in range(6):
            ep_id = rng.randrange(10, 4000)
            used_ids.append(ep_id)
            macs = [":".join(f"{rng.randrange(256) & 0xFE | 0x02 if k == 0 else rng.randrange(256):02x}"
                             for k in range(6)) for _ in range(2)]
            self.health.append((f"10.0.{i * 4}.{rng.randrange(2, 254)}",
                                f'{{"ID":{ep_id},"identity":4,"labels":["reserved:health"]}}', macs[0], macs[1],
                                rng.randrange(12, 400)))
        for ns, app, kind, replicas, port, proto, part_of, paths, mport in WORKLOADS:
            wl = Workload(ns, app, kind, replicas, port, proto, part_of, paths, mport)
            wl.identity = rng.randrange(1000, 65000)
            wl.svc_ip = f"172.20.{rng.randrange(0, 255)}.{rng.randrange(1, 255)}"
            wl.svc_json = js({"name": app, "namespace": ns})
            rs_hash = "".join(rng.choice(RS_ALPHABET) for _ in range(rng.choice((9, 10))))
            sa = "coredns" if app == "coredns" else app
            labels = sorted([
                f"k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name={ns}",
                *(f"k8s:io.cilium.k8s.namespace.labels.{nl}" for nl in NS_LABELS[ns]),
                f"k8s:io.cilium.k8s.policy.cluster={CLUSTER}",
                f"k8s:io.cilium.k8s.policy.serviceaccount={sa}",
                f"k8s:io.kubernetes.pod.namespace={ns}",
                "k8s:k8s-app=kube-dns" if app == "coredns" else f"k8s:app={app}",
            ])
            for r in range(replicas):
                if kind == "StatefulSet":
                    pod_name = f"{app}-{r}"
                else:
                    pod_name = f"{app}-{rs_hash}-" + "".join(rng.choice(RS_ALPHABET) for _ in range(5))
                node = rng.randrange(6)
                ep_id = rng.randrange(10, 4000)
                while ep_id in used_ids:
                    ep_id = rng.randrange(10, 4000)
                used_ids.append(ep_id)
                mac = ":".join(f"{rng.randrange(256) & 0xFE | 0x02 if k == 0 else rng.randrange(256):02x}"
                               for k in range(6))
                lxc_mac = ":".join(f"{rng.randrange(256) & 0xFE | 0x02 if k == 0 else rng.randrange(256):02x}"
                                   for k in range(6))
                pod = Pod(wl, pod_name, f"10.0.{node * 4 + rng.randrange(4)}.{rng.randrange(2, 254)}", node,
                          mac, lxc_mac, rng.randrange(12, 400), "lxc" + f"{rng.getrandbits(48):012x}")
                ep = {"ID": ep_id, "identity": wl.identity, "namespace": ns,
                      "labels": labels, "pod_name": pod_name, "workloads": [{"name": app, "kind": kind}]}
                pod.ep_local = js(ep)
                del ep["ID"]
                pod.ep_remote = js(ep)
                wl.pods.append(pod)
            self.workloads[f"{ns}/{app}"] = wl
        self.all_pods = [p for wl in self.workloads.values() for p in wl.pods]
        self.scrape_targets = [p for p in self.all_pods if p.wl.metrics_port]
        self.coredns = self.workloads["kube-system/coredns"].pods
        self.sessions: list[tuple[float, Callable[[], list[tuple[int, int, str]]]]] = self._session_table()
        total = sum(w for w, _ in self.sessions)
        acc = 0.0
        self.cum: list[float] = []
        for w, _ in self.sessions:
            acc += w / total
            self.cum.append(acc)

    # ----------------------------------------------------------------- helpers
    def pod(self, key: str) -> Pod:
        return self.rng.choice(self.workloads[key].pods)

    def eport(self) -> int:
        return self.rng.randrange(32768, 60999)

    def uuid4(self) -> str:
        h = f"{self.rng.getrandbits(128):032x}"
        return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[int(h[16], 16) & 3]}{h[17:20]}-{h[20:]}"

    def new_session(self) -> list[tuple[int, int, str]]:
        x = self.rng.random()
        for i, c in enumerate(self.cum):
            if x < c:
                return self.sessions[i][1]()
        return self.sessions[-1][1]()

    # --------------------------------------------------------------- event bodies
    # Each event is (node index, kind, body) where body is the Flow object's members after
    # "time","uuid","emitter", in proto declaration order.
    @staticmethod
    def trace_body(*, eth: str, sip: str, dip: str, l4: str, src: str, dst: str, node_frag: str, names: str,
                   reply: bool, event_type: str, svc: str, direction: str, point: str, reason: str,
                   iface: str, summary: str) -> str:
        return (f'"verdict":"FORWARDED",{eth}"IP":{{"source":"{sip}","destination":"{dip}","ipVersion":"IPv4"}},'
                f'{l4},"source":{src},"destination":{dst},"Type":"L3_L4",{node_frag},{names}'
                f'{REPLY_FRAG[reply]}"event_type":{event_type},{svc}"traffic_direction":"{direction}",'
                f'"trace_observation_point":"{point}","trace_reason":"{reason}",'
                f'"is_reply":{BOOL[reply]},{iface}"Summary":"{summary}"')

    @staticmethod
    def l7_body(*, sip: str, dip: str, l4: str, src: str, dst: str, node_frag: str, l7: str, reply: bool,
                svc: str, direction: str, trace_ctx: str, summary: str) -> str:
        return (f'"verdict":"FORWARDED","IP":{{"source":"{sip}","destination":"{dip}","ipVersion":"IPv4"}},'
                f'{l4},"source":{src},"destination":{dst},"Type":"L7",{node_frag},"l7":{l7},'
                f'{REPLY_FRAG[reply]}"event_type":{EV_L7},{svc}"traffic_direction":"{direction}",'
                f'"is_reply":{BOOL[reply]},{trace_ctx}"Summary":{summary}')

    # ------------------------------------------------------------------ sessions
    def tcp_connection(self, client: Pod | None, server: Pod | None, port: int, *, world_ip: str = "",
                       fqdn: str = "", http: list[tuple[str, str, str]] | None = None, requests: int = 1,
                       policy_verdict: bool = False, host_client: int = -1) -> list[tuple[int, int, str]]:
        """A whole TCP connection. client/server None = world (world_ip) or host (host_client = node)."""
        rng = self.rng
        sport = self.eport()
        c_ip = client.ip if client else (self.node_ip[host_client] if host_client >= 0 else world_ip)
        s_ip = server.ip if server else world_ip
        c_node = client.node if client else host_client
        s_node = server.node if server else -1
        c_remote = client.ep_remote if client else (HOST_EP if host_client >= 0 else WORLD_EP)
        s_remote = server.ep_remote if server else WORLD_EP
        svc_fwd = svc_rev = ""
        if server is not None and client is not None and port == server.wl.port:
            sv = server.wl.svc_json
            svc_fwd, svc_rev = f'"destination_service":{sv},', f'"source_service":{sv},'
        names_fwd = f'"destination_names":["{fqdn}"],' if fqdn else ""
        names_rev = f'"source_names":["{fqdn}"],' if fqdn else ""
        # Monitor aggregation (the default) reports a packet only when it adds TCP flags to the
        # connection, so one PSH per direction; further HTTP requests show up only as L7 records.
        packets: list[tuple[int, str]] = [(0, "SYN"), (1, "SYNACK"), (0, "ACK"), (0, "PSH"), (1, "PSH")]
        packets += [(0, "FIN"), (1, "FIN"), (0, "ACK")] if rng.random() < 0.95 else [(0, "RST")]
        events: list[tuple[int, int, str]] = []
        l7_pending: list[tuple[int, int, str]] = []
        syn_seen = False
        for idx, (direction, flag) in enumerate(packets):
            if http is not None and idx == 3 and server is not None:  # first PSH: the first request
                for r in range(requests):
                    req, resp = self.http_pair(client, server, c_ip, sport, port, http, c_remote)
                    if r == 0:
                        events.append(req)
                        l7_pending = [resp]
                    else:
                        l7_pending += [req, resp]
            fwd = direction == 0
            flags, summary = TCP_FLAGS[flag]
            if fwd:
                sip, dip, sp, dp, snd, rcv, s_node_, r_node_ = c_ip, s_ip, sport, port, client, server, c_node, s_node
                names, svc, reason = names_fwd, svc_fwd, ("ESTABLISHED" if syn_seen else "NEW")
                syn_seen = True
            else:
                sip, dip, sp, dp, snd, rcv, s_node_, r_node_ = s_ip, c_ip, port, sport, server, client, s_node, c_node
                names, svc, reason = names_rev, svc_rev, "REPLY"
            l4 = f'"l4":{{"TCP":{{"source_port":{sp},"destination_port":{dp},"flags":{flags}}}}}'
            # traffic direction is the connection's direction as seen by the observed endpoint
            same_node = snd is not None and rcv is not None and s_node_ == r_node_
            if snd is not None and not same_node:
                src = snd.ep_local
                dst = (rcv.ep_remote if rcv else (s_remote if fwd else c_remote))
                events.append((s_node_, K_TCP, self.trace_body(
                    eth=f'"ethernet":{{"source":"{snd.mac}","destination":"{snd.lxc_mac}"}},', sip=sip, dip=dip,
                    l4=l4, src=src, dst=dst, node_frag=self.node_frag[s_node_], names=names, reply=not fwd,
                    event_type=EV_TO_STACK, svc=svc, direction="EGRESS" if fwd else "INGRESS",
                    point="TO_STACK", reason=reason, iface="", summary=summary)))
            if rcv is not None:
                if snd is None:
                    src = (c_remote if fwd else s_remote)
                else:
                    src = snd.ep_local if same_node else snd.ep_remote
                if fwd and flag == "SYN" and policy_verdict:
                    events.append((r_node_, K_PV, self.policy_verdict_body(
                        sip, dip, l4, src, rcv.ep_local, self.node_frag[r_node_], names, svc, rcv, summary)))
                events.append((r_node_, K_TCP, self.trace_body(
                    eth=f'"ethernet":{{"source":"{rcv.lxc_mac}","destination":"{rcv.mac}"}},', sip=sip, dip=dip,
                    l4=l4, src=src, dst=rcv.ep_local, node_frag=self.node_frag[r_node_], names=names,
                    reply=not fwd, event_type=EV_TO_ENDPOINT, svc=svc,
                    direction="INGRESS" if fwd else "EGRESS", point="TO_ENDPOINT", reason=reason,
                    iface=f'"interface":{{"index":{rcv.ifindex},"name":"{rcv.ifname}"}},', summary=summary)))
            if not fwd and l7_pending:
                events += l7_pending
                l7_pending = []
        return events

    def policy_verdict_body(self, sip: str, dip: str, l4: str, src: str, dst: str, node_frag: str, names: str,
                            svc: str, server: Pod, summary: str) -> str:
        policy = js([{"name": f"allow-{server.wl.app}-ingress", "namespace": server.wl.ns,
                      "labels": ["k8s:io.cilium.k8s.policy.derived-from=CiliumNetworkPolicy",
                                 f"k8s:io.cilium.k8s.policy.name=allow-{server.wl.app}-ingress",
                                 f"k8s:io.cilium.k8s.policy.namespace={server.wl.ns}"],
                      "revision": str(40 + len(server.wl.app)), "kind": "CiliumNetworkPolicy"}])
        eth = f'"ethernet":{{"source":"{server.lxc_mac}","destination":"{server.mac}"}},'
        return (f'"verdict":"FORWARDED",{eth}"IP":{{"source":"{sip}","destination":"{dip}","ipVersion":"IPv4"}},'
                f'{l4},"source":{src},"destination":{dst},"Type":"L3_L4",{node_frag},{names}'
                f'"event_type":{EV_POLICY_VERDICT},{svc}"traffic_direction":"INGRESS","policy_match_type":2,'
                f'"is_reply":false,"Summary":"{summary}","ingress_allowed_by":{policy}')

    def http_pair(self, client: Pod | None, server: Pod, c_ip: str, sport: int, port: int,
                  http: list[tuple[str, str, str]], c_remote: str) -> tuple[tuple[int, int, str], tuple[int, int, str]]:
        """L7 request and response seen by the proxy on the server's node (ingress L7 policy)."""
        rng = self.rng
        method, path, ua = rng.choice(http)
        path = path.replace("{id}", str(rng.randrange(1000, 999999))).replace("{n}", str(rng.randrange(1, 60)))
        if ua.startswith("Prometheus"):
            url = f"http://{server.ip}:{port}{path}"
            headers = [("Accept", "application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
                        "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"),
                       ("Accept-Encoding", "gzip"), ("User-Agent", ua),
                       ("X-Prometheus-Scrape-Timeout-Seconds", "10")]
            trace_id = ""
        else:
            same_ns = client is not None and client.wl.ns == server.wl.ns
            host = server.wl.app if same_ns else f"{server.wl.app}.{server.wl.ns}"
            url = f"http://{host}:{port}{path}"
            headers = [("Accept", "application/json")]
            if method in ("POST", "PUT"):
                headers.append(("Content-Type", "application/json"))
            trace_id = f"{rng.getrandbits(128):032x}"
            headers += [("Traceparent", f"00-{trace_id}-{rng.getrandbits(64):016x}-01"),
                        ("User-Agent", ua), ("X-Request-Id", self.uuid4())]
        hdrs = "[" + ",".join(f'{{"key":"{k}","value":"{v}"}}' for k, v in headers) + "]"
        code = 200
        x = rng.random()
        if x < 0.04:
            code = 404
        elif x < 0.055:
            code = 503
        elif x < 0.06:
            code = 500
        elif method == "POST":
            code = 201
        latency = int(rng.lognormvariate(15.2, 1.0))  # ~4 ms median
        l4_req = f'"l4":{{"TCP":{{"source_port":{sport},"destination_port":{port}}}}}'
        l4_resp = f'"l4":{{"TCP":{{"source_port":{port},"destination_port":{sport}}}}}'
        node = server.node
        src_ep = client.ep_local if client and client.node == node else c_remote
        sv = server.wl.svc_json
        ctx = f'"trace_context":{{"parent":{{"trace_id":"{trace_id}"}}}},' if trace_id else ""
        req_l7 = f'{{"type":"REQUEST","http":{{"method":"{method}","url":"{url}","protocol":"HTTP/1.1","headers":{hdrs}}}}}'
        resp_l7 = (f'{{"type":"RESPONSE","latency_ns":"{latency}","http":{{"code":{code},"method":"{method}",'
                   f'"url":"{url}","protocol":"HTTP/1.1","headers":{hdrs}}}}}')
        req = self.l7_body(sip=c_ip, dip=server.ip, l4=l4_req, src=src_ep, dst=server.ep_local,
                           node_frag=self.node_frag[node], l7=req_l7, reply=False,
                           svc=f'"destination_service":{sv},' if client else "", direction="INGRESS",
                           trace_ctx=ctx, summary=f'"HTTP/1.1 {method} {url}"')
        resp = self.l7_body(sip=server.ip, dip=c_ip, l4=l4_resp, src=server.ep_local, dst=src_ep,
                            node_frag=self.node_frag[node], l7=resp_l7, reply=True,
                            svc=f'"source_service":{sv},' if client else "", direction="INGRESS", trace_ctx=ctx,
                            summary=f'"HTTP/1.1 {code} {latency // 1_000_000}ms ({method} {url})"')
        return (node, K_HTTP, req), (node, K_HTTP, resp)

    def dns_lookup(self, client: Pod, target: str) -> list[tuple[int, int, str]]:
        """A resolver walk through the pod's search path (ndots:5), seen by the DNS proxy on the
        client's node: NXDOMAIN (rcode 3) for each expansion that does not exist, then the answer.
        target is a workload key "ns/app" (resolved via its Service) or an external FQDN."""
        rng = self.rng
        ns = client.wl.ns
        if target in self.workloads:
            wl = self.workloads[target]
            if wl.ns == ns:  # short name, first expansion hits
                candidates = [f"{wl.app}.{ns}.svc.cluster.local."]
            else:  # "app.ns": first expansion misses
                candidates = [f"{wl.app}.{wl.ns}.{ns}.svc.cluster.local.", f"{wl.app}.{wl.ns}.svc.cluster.local."]
            answers = {"A": [wl.svc_ip]}
            ttl = rng.randrange(1, 31)
        else:
            candidates = [f"{target}.{ns}.svc.cluster.local.", *(f"{target}.{s}." for s in SEARCH_SUFFIXES),
                          f"{target}."]
            a, aaaa = EXTERNAL[target]
            answers = {"A": a, "AAAA": aaaa} if aaaa else {"A": a}
            ttl = rng.randrange(1, 61)
        coredns = rng.choice(self.coredns)
        node = client.node
        c_ep = client.ep_local
        d_ep = coredns.ep_local if coredns.node == node else coredns.ep_remote
        node_frag = self.node_frag[node]
        events: list[tuple[int, int, str]] = []
        for i, q in enumerate(candidates):
            last = i == len(candidates) - 1
            sport = self.eport()
            l4_req = f'"l4":{{"UDP":{{"source_port":{sport},"destination_port":53}}}}'
            l4_resp = f'"l4":{{"UDP":{{"source_port":53,"destination_port":{sport}}}}}'
            if i == 0:  # the datagram redirected to the DNS proxy
                events.append((node, K_UDP, self.trace_body(
                    eth=f'"ethernet":{{"source":"{client.mac}","destination":"{client.lxc_mac}"}},',
                    sip=client.ip, dip=coredns.ip, l4=l4_req, src=c_ep, dst=d_ep, node_frag=node_frag,
                    names="", reply=False, event_type=EV_TO_PROXY, svc="", direction="EGRESS", point="TO_PROXY",
                    reason="NEW", iface="", summary="UDP")))
            for qt in (answers if last else ["A"]):
                req = f'{{"type":"REQUEST","dns":{{"query":"{q}","observation_source":"proxy","qtypes":["{qt}"]}}}}'
                events.append((node, K_DNS, self.l7_body(
                    sip=client.ip, dip=coredns.ip, l4=l4_req, src=c_ep, dst=d_ep, node_frag=node_frag,
                    l7=req, reply=False, svc="", direction="EGRESS", trace_ctx="", summary=f'"DNS Query {q} {qt}"')))
                if last:
                    ips = answers[qt]
                    ips_json = '["' + '","'.join(ips) + '"]'
                    resp = (f'{{"type":"RESPONSE","dns":{{"query":"{q}","ips":{ips_json},"ttl":{ttl},'
                            f'"observation_source":"proxy","qtypes":["{qt}"],"rrtypes":["{qt}"]}}}}')
                    summary = f'DNS Answer "{",".join(ips)}" TTL: {ttl} (Proxy {q} {qt})'
                else:
                    resp = (f'{{"type":"RESPONSE","dns":{{"query":"{q}","ttl":4294967295,"observation_source":"proxy",'
                            f'"rcode":3,"qtypes":["{qt}"]}}}}')
                    summary = f"DNS Answer RCode: Non-Existent Domain TTL: 4294967295 (Proxy {q} {qt})"
                events.append((node, K_DNS, self.l7_body(
                    sip=coredns.ip, dip=client.ip, l4=l4_resp, src=d_ep, dst=c_ep, node_frag=node_frag,
                    l7=resp, reply=True, svc="", direction="EGRESS", trace_ctx="", summary=jstr(summary))))
        return events

    def health_ping(self) -> list[tuple[int, int, str]]:
        """cilium-health ICMP echo from another node's health endpoint, seen on the target node."""
        a, b = self.rng.sample(range(6), 2)
        sip, dip = self.health[a][0], self.health[b][0]
        _, local, mac, lxc_mac, ifindex = self.health[b]
        remote = '{"identity":4,"labels":["reserved:health"]}'
        node_frag = self.node_frag[b]
        req = self.trace_body(eth=f'"ethernet":{{"source":"{lxc_mac}","destination":"{mac}"}},', sip=sip, dip=dip,
                              l4='"l4":{"ICMPv4":{"type":8}}', src=remote, dst=local, node_frag=node_frag,
                              names="", reply=False, event_type=EV_TO_ENDPOINT, svc="", direction="INGRESS",
                              point="TO_ENDPOINT", reason="NEW",
                              iface=f'"interface":{{"index":{ifindex},"name":"lxc_health"}},',
                              summary="ICMPv4 EchoRequest")
        rep = self.trace_body(eth=f'"ethernet":{{"source":"{mac}","destination":"{lxc_mac}"}},', sip=dip, dip=sip,
                              l4='"l4":{"ICMPv4":{}}', src=local, dst=remote, node_frag=node_frag, names="",
                              reply=True, event_type=EV_TO_STACK, svc="", direction="INGRESS", point="TO_STACK",
                              reason="REPLY", iface="", summary="ICMPv4 EchoReply")
        return [(b, K_ICMP, req), (b, K_ICMP, rep)]

    def drop(self, client: Pod, server: Pod | None, port: int, *, world_ip: str = "",
             fqdn: str = "") -> list[tuple[int, int, str]]:
        """A SYN denied by policy, retransmitted 1-3 times: ingress drop at the server's node, or
        egress drop at the client's node for world destinations."""
        rng = self.rng
        sport = self.eport()
        l4 = f'"l4":{{"TCP":{{"source_port":{sport},"destination_port":{port},"flags":{{"SYN":true}}}}}}'
        if server is None:
            node, src, dst, direction = client.node, client.ep_local, WORLD_EP, "EGRESS"
            eth = f'"ethernet":{{"source":"{client.mac}","destination":"{client.lxc_mac}"}},'
            dip, svc, line = world_ip, "", 1348
        else:
            node, direction = server.node, "INGRESS"
            src = client.ep_local if client.node == node else client.ep_remote
            dst = server.ep_local
            eth = f'"ethernet":{{"source":"{server.lxc_mac}","destination":"{server.mac}"}},'
            dip, line = server.ip, 2161
            svc = f'"destination_service":{server.wl.svc_json},'
        names = f'"destination_names":["{fqdn}"],' if fqdn else ""
        body = (f'"verdict":"DROPPED","drop_reason":133,{eth}"IP":{{"source":"{client.ip}","destination":"{dip}",'
                f'"ipVersion":"IPv4"}},{l4},"source":{src},"destination":{dst},"Type":"L3_L4",{self.node_frag[node]},'
                f'{names}"event_type":{EV_DROP_POLICY},{svc}"traffic_direction":"{direction}",'
                f'"file":{{"name":"bpf_lxc.c","line":{line}}},"drop_reason_desc":"POLICY_DENIED",'
                f'"Summary":"TCP Flags: SYN"')
        return [(node, K_DROP, body)] * rng.choice((1, 1, 2, 3))

    def udp_datagrams(self, client: Pod, server: Pod, port: int) -> list[tuple[int, int, str]]:
        sport = self.eport()
        l4 = f'"l4":{{"UDP":{{"source_port":{sport},"destination_port":{port}}}}}'
        sv = f'"destination_service":{server.wl.svc_json},'
        events: list[tuple[int, int, str]] = []
        for i in range(self.rng.randrange(1, 5)):
            reason = "NEW" if i == 0 else "ESTABLISHED"
            same = client.node == server.node
            if not same:
                events.append((client.node, K_UDP, self.trace_body(
                    eth=f'"ethernet":{{"source":"{client.mac}","destination":"{client.lxc_mac}"}},',
                    sip=client.ip, dip=server.ip, l4=l4, src=client.ep_local, dst=server.ep_remote,
                    node_frag=self.node_frag[client.node], names="", reply=False, event_type=EV_TO_STACK, svc=sv,
                    direction="EGRESS", point="TO_STACK", reason=reason, iface="", summary="UDP")))
            events.append((server.node, K_UDP, self.trace_body(
                eth=f'"ethernet":{{"source":"{server.lxc_mac}","destination":"{server.mac}"}},',
                sip=client.ip, dip=server.ip, l4=l4, src=client.ep_local if same else client.ep_remote,
                dst=server.ep_local, node_frag=self.node_frag[server.node], names="", reply=False,
                event_type=EV_TO_ENDPOINT, svc=sv, direction="INGRESS", point="TO_ENDPOINT", reason=reason,
                iface=f'"interface":{{"index":{server.ifindex},"name":"{server.ifname}"}},', summary="UDP")))
        return events

    # --------------------------------------------------------------- the mix
    def _session_table(self) -> list[tuple[float, Callable[[], list[tuple[int, int, str]]]]]:
        rng = self.rng
        w = self.workloads
        def http_conn(client_key: str, server_key: str) -> Callable[[], list[tuple[int, int, str]]]:
            server_wl = w[server_key]
            reqs = [(m, p, rng.choice(USER_AGENTS)) for m, p in server_wl.paths]

            def make() -> list[tuple[int, int, str]]:
                return self.tcp_connection(self.pod(client_key), self.pod(server_key), server_wl.port, http=reqs,
                                           requests=rng.choice((1, 2, 4, 6, 8)), policy_verdict=rng.random() < 0.3)
            return make

        def tcp_conn(client_key: str, server_key: str) -> Callable[[], list[tuple[int, int, str]]]:
            def make() -> list[tuple[int, int, str]]:
                return self.tcp_connection(self.pod(client_key), self.pod(server_key), w[server_key].port,
                                           requests=rng.choice((1, 2, 3)), policy_verdict=rng.random() < 0.3)
            return make

        def world_egress(client_key: str, fqdns: list[str]) -> Callable[[], list[tuple[int, int, str]]]:
            def make() -> list[tuple[int, int, str]]:
                fqdn = rng.choice(fqdns)
                return self.tcp_connection(self.pod(client_key), None, 443, world_ip=rng.choice(EXTERNAL[fqdn][0]),
                                           fqdn=fqdn, requests=rng.choice((1, 2)))
            return make

        def world_ingress() -> list[tuple[int, int, str]]:
            ip = f"{rng.choice((81, 88, 92, 176, 185, 213))}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
            return self.tcp_connection(None, self.pod("frontend/gateway"), 8443, world_ip=ip, requests=rng.choice((1, 2)))

        def probe() -> list[tuple[int, int, str]]:
            pod = rng.choice(self.scrape_targets)
            return self.tcp_connection(None, pod, pod.wl.metrics_port, host_client=pod.node, requests=1)

        def scrape() -> list[tuple[int, int, str]]:
            target = rng.choice(self.scrape_targets)
            prom = w["monitoring/prometheus"].pods[0]
            return self.tcp_connection(prom, target, target.wl.metrics_port,
                                       http=[("GET", "/metrics", "Prometheus/2.53.1")], requests=1)

        def dns(client_keys: list[str], names: list[str]) -> Callable[[], list[tuple[int, int, str]]]:
            def make() -> list[tuple[int, int, str]]:
                return self.dns_lookup(self.pod(rng.choice(client_keys)), rng.choice(names))
            return make

        def statsd() -> list[tuple[int, int, str]]:
            client = rng.choice([p for p in self.all_pods if p.wl.ns in ("app", "payments", "production")])
            return self.udp_datagrams(client, self.pod("monitoring/statsd-exporter"), 9125)

        def drop(client_key: str, server_key: str) -> Callable[[], list[tuple[int, int, str]]]:
            def make() -> list[tuple[int, int, str]]:
                return self.drop(self.pod(client_key), self.pod(server_key), w[server_key].port)
            return make

        def drop_world(client_key: str) -> list[tuple[int, int, str]]:
            fqdn = rng.choice(["hooks.slack.com", "registry-1.docker.io", ""])
            ip = rng.choice(EXTERNAL[fqdn][0]) if fqdn else f"45.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
            return self.drop(self.pod(client_key), None, 443, world_ip=ip, fqdn=fqdn)

        app_clients = ["app/api", "app/cart", "app/worker", "payments/billing", "payments/ledger",
                       "payments/payments-api", "production/orders", "production/search", "frontend/web"]
        internal_names = ["database/postgres", "database/redis", "app/api", "app/cart", "payments/billing",
                          "payments/ledger", "production/orders", "production/search", "monitoring/statsd-exporter"]
        return [
            (10.0, http_conn("frontend/web", "app/api")),
            (4.0, http_conn("frontend/web", "app/cart")),
            (5.0, http_conn("frontend/gateway", "frontend/web")),
            (3.0, http_conn("production/orders", "app/api")),
            (3.0, http_conn("payments/payments-api", "payments/billing")),
            (2.0, http_conn("payments/billing", "payments/ledger")),
            (2.0, http_conn("production/search", "production/orders")),
            (1.5, http_conn("app/api", "production/search")),
            (1.5, http_conn("monitoring/grafana", "monitoring/prometheus")),
            (6.0, scrape),
            (5.0, tcp_conn("app/api", "database/postgres")),
            (3.0, tcp_conn("app/api", "database/redis")),
            (2.0, tcp_conn("app/cart", "database/redis")),
            (1.5, tcp_conn("app/worker", "database/postgres")),
            (1.5, tcp_conn("payments/billing", "database/postgres")),
            (1.0, tcp_conn("payments/ledger", "database/postgres")),
            (1.0, tcp_conn("production/orders", "database/postgres")),
            (1.5, tcp_conn("app/api", "payments/payments-api")),
            (1.0, tcp_conn("production/orders", "payments/payments-api")),
            (0.5, tcp_conn("kube-system/hubble-relay", "kube-system/metrics-server")),
            (3.0, world_ingress),
            (3.0, probe),
            (2.0, world_egress("app/worker", ["api.stripe.com", "s3.eu-west-1.amazonaws.com", "hooks.slack.com"])),
            (2.0, world_egress("payments/billing", ["api.stripe.com"])),
            (1.5, world_egress("production/orders", ["sqs.eu-west-1.amazonaws.com", "s3.eu-west-1.amazonaws.com"])),
            (1.0, world_egress("dev/ci-runner", ["api.github.com", "pypi.org", "registry-1.docker.io"])),
            (0.5, world_egress("monitoring/grafana", ["grafana.com"])),
            (50.0, dns(app_clients, internal_names)),
            (9.0, dns(["app/worker", "payments/billing", "production/orders", "dev/ci-runner", "monitoring/grafana"],
                      list(EXTERNAL))),
            (15.0, statsd),
            # policy drops (~5 % of events): mostly payments/ledger → database/postgres:5432
            (5.0, self.health_ping),
            (23.0, drop("payments/ledger", "database/postgres")),
            (5.5, drop("dev/sandbox", "database/postgres")),
            (5.5, drop("dev/ci-runner", "database/postgres")),
            (4.0, drop("dev/ci-runner", "payments/billing")),
            (4.0, drop("frontend/web", "database/redis")),
            (4.0, lambda: drop_world("app/worker")),
            (3.0, lambda: drop_world("dev/sandbox")),
        ]


def parse_count(text: str) -> int:
    t = text.strip().lower().replace("_", "")
    mult = {"k": 1_000, "m": 1_000_000}.get(t[-1:], 1)
    return int(float(t[:-1]) * mult) if mult > 1 else int(t)


def generate(n: int, out_path: Path, seed: int) -> dict[str, float]:
    """Write n lines to out_path; returns size and mix statistics. A writer thread overlaps the
    (GIL-free) file writes with generation."""
    rng = random.Random(seed)
    cluster = Cluster(rng)
    pool = [list(reversed(cluster.new_session())) for _ in range(SESSIONS_IN_FLIGHT)]
    kinds = [0] * len(KIND_NAMES)
    head = '{"flow":{"time":"'
    mid = f'","emitter":{{"name":"Hubble","version":"{HUBBLE_VERSION}"}},'
    tails = [f'}},"node_name":"{name}","time":"' for name in cluster.nodes]
    variant = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}
    getrandbits, rand = rng.getrandbits, rng.random
    ts_cache: dict[int, str] = {}
    now = START_NS
    total_bytes = 0
    min_len, max_len = 1 << 30, 0
    out_path.parent.mkdir(parents=True, exist_ok=True)
    chunks: queue.Queue[bytes | None] = queue.Queue(maxsize=4)
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            with open(out_path, "wb", buffering=0) as out:
                while (data := chunks.get()) is not None:
                    view = memoryview(data)
                    while view:
                        view = view[out.write(view):]
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
            while chunks.get() is not None:
                pass

    thread = threading.Thread(target=writer, name="genflows-writer", daemon=True)
    thread.start()
    written = 0
    try:
        while written < n and not errors:
            chunk = min(CHUNK_LINES, n - written)
            buf: list[str] = []
            append = buf.append
            for _ in range(chunk):
                i = int(rand() * SESSIONS_IN_FLIGHT)
                events = pool[i]
                node, kind, body = events.pop()
                if not events:
                    pool[i] = list(reversed(cluster.new_session()))
                kinds[kind] += 1
                now += 15_000 + int(rand() * 70_000)  # ~20k events/s cluster-wide
                secs, nanos = divmod(now, 1_000_000_000)
                prefix = ts_cache.get(secs) or protojson_time(secs * 1_000_000_000, ts_cache)[:-1]
                ts = f"{prefix}.{nanos:09d}Z" if nanos % 1_000 else protojson_time(now, ts_cache)
                h = f"{getrandbits(128):032x}"
                append(f"{head}{ts}\",\"uuid\":\"{h[:8]}-{h[8:12]}-4{h[13:16]}-{variant[h[16]]}{h[17:20]}-{h[20:]}"
                       f'{mid}{body}{tails[node]}{ts}"}}\n')
            lens = list(map(len, buf))
            total_bytes += sum(lens)
            min_len, max_len = min(min_len, *lens), max(max_len, *lens)
            chunks.put("".join(buf).encode("ascii"))
            written += chunk
    finally:
        chunks.put(None)
        thread.join()
    if errors:
        raise errors[0]
    stats: dict[str, float] = {"lines": n, "bytes": total_bytes, "min_len": min_len, "max_len": max_len}
    for name, count in zip(KIND_NAMES, kinds, strict=True):
        stats[name] = count
    return stats


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=parse_count, default=1_000_000, help="number of flows (e.g. 1000000, 100k, 1m)")
    ap.add_argument("-o", "--output", required=True, type=Path, help="output .jsonl path")
    ap.add_argument("--seed", type=int, default=1, help="random seed (output is deterministic per seed and -n)")
    args = ap.parse_args(argv)
    start = time.perf_counter()
    stats = generate(args.n, args.output, args.seed)
    dt = time.perf_counter() - start
    n = max(int(stats["lines"]), 1)
    print(f"wrote {int(stats['lines']):,} flows to {args.output}: {stats['bytes'] / 1e6:,.1f} MB, "
          f"mean line {stats['bytes'] / n:,.0f} B (min {int(stats['min_len'])}, max {int(stats['max_len'])}), "
          f"{dt:.1f} s, {stats['lines'] / dt:,.0f} lines/s")
    print("mix: " + ", ".join(f"{k} {stats[k] / n * 100:.1f} %" for k in KIND_NAMES))
    return 0


if __name__ == "__main__":
    sys.exit(main())
