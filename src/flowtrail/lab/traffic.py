"""The benign traffic matrix: cluster YAML edges turned into session makers with rates."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flowtrail.lab.cluster import Cluster, ClusterError, Pod
from flowtrail.lab.flows import HOST_EP, WORLD_EP, Event, FlowBuilder, Peer

# A Go/glibc client resolves a Service name again for most new connections; long-lived pools
# reuse connections, so only a share of connections is preceded by a lookup.
INTERNAL_LOOKUP_SHARE = 0.25
SessionMaker = Callable[[], list[Event]]


@dataclass
class Edge:
    label: str  # "from -> to:port" for messages and statistics
    rate: float  # sessions per second at the daily mean
    make: SessionMaker
    server_ns: str = ""  # namespace of the server workload ("" outside the pod network)
    server_key: str = ""


def world_client_ip(rng: random.Random) -> str:
    """A public client address (residential/cloud ranges, never private or reserved)."""
    while True:
        first = 1 + int(rng.random() * 222)
        if first in (10, 100, 127, 169, 172, 192, 198, 203):  # private, CGNAT, loopback, doc ranges
            continue
        r = rng.getrandbits(24)
        return f"{first}.{r >> 16}.{(r >> 8) & 255}.{1 + (r & 255) % 254}"


def then(first: list[Event], second: list[Event], gap: int) -> list[Event]:
    """Events of `second` shifted to start `gap` ns after the last event of `first`."""
    if not first:
        return second
    end = max(e[0] for e in first) + gap
    return first + [(t + end, n, b) for t, n, b in second]


class Traffic:
    def __init__(self, cluster: Cluster, builder: FlowBuilder, rng: random.Random) -> None:
        self.c = cluster
        self.b = builder
        self.rng = rng
        self.edges: list[Edge] = []
        self.pod_pairs: list[tuple[list[Pod], list[Pod], int]] = []  # (clients, servers, port) of pod edges
        self._pod_peers: dict[Pod, Peer] = {}
        for i, e in enumerate(cluster.spec["traffic"]):
            self.edges.append(self._edge(e, f"{cluster.source}: traffic/{i}"))

    # ---------------------------------------------------------------- building blocks
    def pick(self, pods: list[Pod], avoid: Pod | None = None) -> Pod:
        """A pod drawn uniformly, other than `avoid` unless it is the only one. The draw indexes
        the list without `avoid` (not built: it was one list per session)."""
        n = len(pods)
        if avoid is not None and n > 1 and avoid in pods:  # Pod compares by identity
            k = pods.index(avoid)
            i = int(self.rng.random() * (n - 1))
            return pods[i + 1 if i >= k else i]
        return pods[int(self.rng.random() * n)]

    def pod_peer(self, pod: Pod) -> Peer:
        peer = self._pod_peers.get(pod)
        if peer is None:  # Peer is frozen: building one costs more than looking it up
            peer = self._pod_peers[pod] = Peer(pod.ip, pod)
        return peer

    def world_peer(self, name: str) -> Peer:
        addrs = [a for a in self.c.external[name] if ":" not in a]
        return Peer(addrs[int(self.rng.random() * len(addrs))], ep=WORLD_EP, name=name)

    def apiserver_peer(self) -> Peer:
        ips = self.c.apiserver_ips
        return Peer(ips[int(self.rng.random() * len(ips))], ep=self.c.apiserver_ep)

    def connect(self, client: Pod, server: Peer, port: int, *, http: bool, requests: tuple[int, int],
                verdict: str, lookup: str = "", lookup_share: float = 0.0) -> list[Event]:
        """Optional DNS lookup, then a connection (or a policy-denied attempt)."""
        rng = self.rng
        events: list[Event] = []
        if lookup and rng.random() < lookup_share:
            events = self.b.dns_lookup(client, lookup)
        if verdict == "DROPPED":
            attempt = self.b.syn_probe(client, server, port, "dropped", retries=rng.choice((0, 1, 1, 2)))
            return then(events, attempt, rng.randrange(50_000, 400_000))
        close = "FIN" if rng.random() < 0.96 else "RST"
        conn = self.b.tcp_connection(self.pod_peer(client), server, port, http=http,
                                     requests=rng.randint(*requests), policy_verdict=rng.random() < 0.2, close=close)
        return then(events, conn, rng.randrange(50_000, 400_000))

    # ---------------------------------------------------------------- edges
    def _edge(self, e: dict[str, Any], where: str) -> Edge:
        c = self.c
        kind = e.get("kind", "")
        src, dst = e.get("from", ""), e.get("to", "")
        rate = float(e["rate"])
        requests = tuple(e.get("requests", [1, 3]))
        req: tuple[int, int] = (int(requests[0]), int(requests[1]))
        verdict = e.get("verdict", "FORWARDED")
        label = f"{src or kind} -> {dst or kind}" + (f":{e['port']}" if "port" in e else "")

        if kind == "health":
            return Edge(label, rate, self.b.health_ping)
        if kind == "probe":
            targets = [p for p in c.pods if p.wl.metrics_port or p.wl.ports]

            def probe() -> list[Event]:
                pod = self.pick(targets)
                port = pod.wl.metrics_port or pod.wl.ports[0]["port"]
                node = c.nodes[pod.node]
                host = Peer(node.ip, ep=HOST_EP, node=pod.node)
                return self.b.tcp_connection(host, self.pod_peer(pod), port)
            return Edge(label, rate, probe)
        if kind == "scrape":
            prom = c.workload(src, where).pods
            targets = [p for p in c.pods if p.wl.metrics_port]

            def scrape() -> list[Event]:
                target = self.pick(targets)
                return self.b.tcp_connection(self.pod_peer(self.pick(prom)), self.pod_peer(target),
                                             target.wl.metrics_port, http=True)
            return Edge(label, rate, scrape)
        if "port" not in e or not dst:
            raise ClusterError(f"{where}: an edge needs `to` and `port` (or kind scrape/probe/health)")
        port = int(e["port"])
        if src == "world":
            server_wl = c.workload(dst, where)

            def ingress() -> list[Event]:
                client = Peer(world_client_ip(self.rng), ep=WORLD_EP)
                return self.b.tcp_connection(client, self.pod_peer(self.pick(server_wl.pods)), port,
                                             requests=self.rng.randint(*req))
            return Edge(label, rate, ingress, server_wl.ns, server_wl.key)
        client_wl = c.workload(src, where)
        if dst == "kube-apiserver":
            def api() -> list[Event]:
                return self.connect(self.pick(client_wl.pods), self.apiserver_peer(), c.apiserver_port, http=False,
                                    requests=req, verdict=verdict)
            return Edge(label, rate, api)
        if dst.startswith("world:"):
            name = dst.removeprefix("world:")
            if name not in c.external:
                raise ClusterError(f"{where}: {name!r} is not listed under external")

            if (e.get("protocol") or "TCP").upper() == "UDP":
                def egress_udp() -> list[Event]:
                    peer = self.world_peer(name)
                    return self.b.udp_to_peer(self.pick(client_wl.pods), Peer(peer.ip, ep=WORLD_EP), port,
                                              self.rng.randint(1, 3))
                return Edge(label, rate, egress_udp)

            def egress() -> list[Event]:
                return self.connect(self.pick(client_wl.pods), self.world_peer(name), port, http=False,
                                    requests=req, verdict=verdict, lookup=name, lookup_share=1.0)
            return Edge(label, rate, egress)
        server_wl = c.workload(dst, where)
        spec = server_wl.port_spec(port)
        proto = (e.get("protocol") or (spec or {}).get("protocol") or "TCP").upper()
        l7 = (spec or {}).get("l7", "none")
        edge_kind = kind or ("udp" if proto == "UDP" else "http" if l7 == "http" else "tcp")
        if edge_kind == "udp":
            def udp() -> list[Event]:
                client = self.pick(client_wl.pods)
                server = self.pick(server_wl.pods, avoid=client)
                return self.b.udp_datagrams(client, server, port, self.rng.randint(1, 4))
            return Edge(label, rate, udp, server_wl.ns, server_wl.key)

        self.pod_pairs.append((client_wl.pods, server_wl.pods, port))

        def conn() -> list[Event]:
            client = self.pick(client_wl.pods)
            server = self.pick(server_wl.pods, avoid=client)
            return self.connect(client, self.pod_peer(server), port, http=edge_kind == "http", requests=req,
                                verdict=verdict, lookup=server_wl.key, lookup_share=INTERNAL_LOOKUP_SHARE)
        return Edge(label, rate, conn, server_wl.ns, server_wl.key)

    def background_drop(self) -> list[Event]:
        """A drop that is not a policy decision (stale IP, CT map full) on one of the cluster's
        real client/server pairs."""
        if not self.pod_pairs:
            return []
        clients, servers, port = self.pod_pairs[int(self.rng.random() * len(self.pod_pairs))]
        client = self.pick(clients)
        return self.b.other_drop(client, self.pick(servers, avoid=client), port)
