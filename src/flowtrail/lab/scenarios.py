"""Attack scenarios injected into simulated traffic, each with its ground truth.

`--scenario NAME[:key=value,...]`; list values are joined with `+` (e.g. `open=9187+9121`);
`at` is an offset from the start (`20m`) or a fraction of the duration (`0.6`).
Categories are the detection vocabulary: scan, policy-gap, external-egress, dns-c2, kube-api,
namespace-breach, drop-spike, threat-intel, anomaly.
"""

from __future__ import annotations

import base64
import random
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flowtrail.lab.cluster import Cluster, ClusterError, Pod
from flowtrail.lab.flows import Event, FlowBuilder, Peer
from flowtrail.lab.traffic import Traffic, then
from flowtrail.model.timeutil import parse_go_duration_ns

NS = 1_000_000_000
# ports an nmap-style scan tries first (nmap's top TCP ports) before random ones
COMMON_PORTS = [22, 80, 443, 3306, 5432, 6379, 8080, 8443, 9200, 27017, 2379, 2380, 10250, 10255, 5000,
                9090, 9100, 11211, 5672, 15672, 25, 53, 110, 139, 445, 1433, 1521, 3389, 5900, 8000, 8888]
LOW_REP_TLDS = ["top", "xyz", "tk", "pw", "click", "gq", "cyou", "icu"]


@dataclass
class Context:
    cluster: Cluster
    builder: FlowBuilder
    traffic: Traffic
    rng: random.Random
    start_ns: int
    duration_ns: int


@dataclass
class Run:
    """What a scenario injects: sessions at absolute times, and what it stops (drop-spike)."""

    actor: str
    sessions: list[tuple[int, list[Event]]] = field(default_factory=list)
    suppress: list[tuple[str, int, int]] = field(default_factory=list)  # (server namespace, t0, t1)
    indicators: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Scenario:
    name: str
    category: str
    mitre: tuple[str, ...]
    summary: str
    defaults: dict[str, str]
    run: Callable[[Context, dict[str, str]], Run]


SCENARIOS: dict[str, Scenario] = {}


def scenario(name: str, category: str, mitre: tuple[str, ...], summary: str,
             **defaults: str) -> Callable[[Callable[[Context, dict[str, str]], Run]], Callable[[Context, dict[str, str]], Run]]:
    def register(fn: Callable[[Context, dict[str, str]], Run]) -> Callable[[Context, dict[str, str]], Run]:
        SCENARIOS[name] = Scenario(name, category, mitre, summary, dict(defaults), fn)
        return fn
    return register


def parse_scenario(text: str) -> tuple[Scenario, dict[str, str]]:
    name, _, rest = text.partition(":")
    sc = SCENARIOS.get(name)
    if sc is None:
        raise ClusterError(f"unknown scenario {name!r} (known: {', '.join(sorted(SCENARIOS))})")
    params = dict(sc.defaults)
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq or key not in sc.defaults:
            raise ClusterError(f"scenario {name}: bad parameter {item!r} (parameters: {', '.join(sc.defaults)})")
        params[key] = value
    return sc, params


# ------------------------------------------------------------------------ helpers
def at_ns(ctx: Context, value: str) -> int:
    """Absolute start: `20m` after the start, or a fraction `0.6` of the duration."""
    try:
        frac = float(value)
    except ValueError:
        offset = dur_ns(value)
    else:
        if not 0 <= frac <= 1:
            raise ClusterError(f"at={value}: a fraction must be between 0 and 1")
        offset = int(frac * ctx.duration_ns)
    return ctx.start_ns + min(max(offset, 0), ctx.duration_ns)


def dur_ns(value: str) -> int:
    ns = parse_go_duration_ns(value)
    if ns is None or ns < 0:
        raise ClusterError(f"{value!r}: not a duration like 90s, 5m or 1h30m")
    return ns


def actor_pod(ctx: Context, key: str) -> Pod:
    return ctx.cluster.pod(key)


def integer(params: dict[str, str], key: str) -> int:
    try:
        return int(params[key])
    except ValueError:
        raise ClusterError(f"{key}={params[key]}: not an integer") from None


def spread(ctx: Context, start: int, span: int, count: int) -> list[int]:
    """`count` sorted times over [start, start+span), jittered; squeezed into the run's end so a
    short simulation still holds the whole scenario."""
    if count <= 0:
        return []
    span = max(min(span, ctx.start_ns + ctx.duration_ns - start - NS), NS)
    step = span / count
    return [start + int(i * step + ctx.rng.random() * step) for i in range(count)]


def targets_in(ctx: Context, spec: str) -> list[Pod]:
    """Pods of a namespace, of a workload `ns/name`, or one pod `ns/pod`."""
    c = ctx.cluster
    if spec in c.namespaces:
        return [p for p in c.pods if p.wl.ns == spec]
    if spec in c.workloads:
        return list(c.workloads[spec].pods)
    return [c.pod(spec)]


# ------------------------------------------------------------------------ scenarios
@scenario("port-scan", "scan", ("T1046",), "one pod probes many ports of the database pods, mostly policy-denied",
          actor="dev/sandbox", target="database", ports="120", open="9187", at="0.55", rate="25")
def port_scan(ctx: Context, p: dict[str, str]) -> Run:
    actor = actor_pod(ctx, p["actor"])
    n_ports = integer(p, "ports")
    ports = list(dict.fromkeys(COMMON_PORTS + ctx.rng.sample(range(1024, 65536), max(n_ports, 0))))[:n_ports]
    open_ports = {int(x) for x in p["open"].split("+") if x}
    run = Run(actor.key)
    t = at_ns(ctx, p["at"])
    gap = int(NS / max(float(p["rate"]), 0.1))
    for target in targets_in(ctx, p["target"]):
        server = Peer(target.ip, target)
        for port in ports:
            outcome = "open" if port in open_ports else "dropped"
            run.sessions.append((t, ctx.builder.syn_probe(actor, server, port, outcome, retries=0)))
            t += int(gap * (0.5 + ctx.rng.random()))
    return run


@scenario("ip-sweep", "scan", ("T1018", "T1046"), "one pod tries one port on many hosts of the pod network",
          actor="dev/ci-runner", port="22", hosts="40", at="0.6", rate="10")
def ip_sweep(ctx: Context, p: dict[str, str]) -> Run:
    actor = actor_pod(ctx, p["actor"])
    port = integer(p, "port")
    pods = [q for q in ctx.cluster.pods if q is not actor]
    ctx.rng.shuffle(pods)
    run = Run(actor.key)
    t = at_ns(ctx, p["at"])
    gap = int(NS / max(float(p["rate"]), 0.1))
    for target in pods[:integer(p, "hosts")]:
        # namespaces without ingress policy answer with a reset; the rest drop the SYN
        outcome = "closed" if target.wl.ns in ("dev", "ml-training") else "dropped"
        run.sessions.append((t, ctx.builder.syn_probe(actor, Peer(target.ip, target), port, outcome, retries=1)))
        t += int(gap * (0.5 + ctx.rng.random()))
    return run


@scenario("policy-gap", "policy-gap", ("T1210",),
          "a forwarded connection to the database from a workload that should not reach it",
          actor="frontend/web", target="database/postgres", port="5432", connections="4", at="0.5", span="2m")
def policy_gap(ctx: Context, p: dict[str, str]) -> Run:
    return _connections(ctx, p, http=False, requests=(1, 3), lookup_share=0.0)


def _connections(ctx: Context, p: dict[str, str], *, http: bool | None, requests: tuple[int, int],
                 lookup_share: float) -> Run:
    """`connections` forwarded connections from the actor to the target's pods over the span;
    `http` None = HTTP when the server speaks it; each preceded by a DNS lookup with
    probability `lookup_share`."""
    actor = actor_pod(ctx, p["actor"])
    servers = targets_in(ctx, p["target"])
    run = Run(actor.key)
    for t in spread(ctx, at_ns(ctx, p["at"]), dur_ns(p["span"]), integer(p, "connections")):
        server = ctx.traffic.pick(servers)
        run.sessions.append((t, ctx.traffic.connect(
            actor, Peer(server.ip, server), integer(p, "port"),
            http=bool(server.wl.http) if http is None else http, requests=requests, verdict="FORWARDED",
            lookup=server.wl.key if lookup_share > 0 else "", lookup_share=lookup_share)))
    return run


@scenario("exfiltration", "external-egress", ("T1048", "T1041"),
          "large transfers to an external IP from a namespace that never talks to the internet",
          actor="database/postgres", ip="185.220.101.47", port="443", connections="12", at="0.65", span="8m")
def exfiltration(ctx: Context, p: dict[str, str]) -> Run:
    actor = actor_pod(ctx, p["actor"])
    run = Run(actor.key, indicators=[p["ip"]])
    peer = Peer(p["ip"])
    for t in spread(ctx, at_ns(ctx, p["at"]), dur_ns(p["span"]), integer(p, "connections")):
        run.sessions.append((t, ctx.builder.tcp_connection(Peer(actor.ip, actor), peer, integer(p, "port"),
                                                           requests=ctx.rng.randint(20, 60))))
    return run


def _dga_name(rng: random.Random) -> str:
    length = rng.randint(12, 22)
    return "".join(rng.choice(string.ascii_lowercase + string.digits[:4]) for _ in range(length)) + \
        "." + rng.choice(LOW_REP_TLDS)


@scenario("dns-c2", "dns-c2", ("T1071.004", "T1568.002", "T1572"),
          "C2 over DNS: an NXDOMAIN C2 name, DGA names under low-reputation TLDs, TXT tunnelling, then a "
          "connection to the resolved C2 address",
          actor="app/worker", c2="cdn-update-check.top", c2_ip="45.133.1.20", dga="40", tunnel="30",
          tunnel_domain="t.telemetry-sync.xyz", at="0.7", span="4m")
def dns_c2(ctx: Context, p: dict[str, str]) -> Run:
    rng = ctx.rng
    actor = actor_pod(ctx, p["actor"])
    b = ctx.builder
    run = Run(actor.key, indicators=[p["c2"], p["c2_ip"], p["tunnel_domain"]])
    start = at_ns(ctx, p["at"])
    span = max(min(dur_ns(p["span"]), ctx.start_ns + ctx.duration_ns - start - 2 * NS), 4 * NS)
    # 1. beacon to a C2 name that is not registered yet
    for t in spread(ctx, start, span // 4, 3):
        run.sessions.append((t, b.dns_lookup(actor, f"api.{p['c2']}", rcode=3)))
    # 2. DGA: a burst of random names, nearly all NXDOMAIN
    for t in spread(ctx, start + span // 4, span // 4, integer(p, "dga")):
        run.sessions.append((t, b.dns_lookup(actor, _dga_name(rng), rcode=3)))
    # 3. TXT tunnelling: data encoded in long labels
    for i, t in enumerate(spread(ctx, start + span // 2, span // 4, integer(p, "tunnel"))):
        chunk = base64.b32encode(rng.randbytes(37)).decode().rstrip("=").lower()
        name = f"{chunk[:56]}.{i:04x}{chunk[56:]}.{p['tunnel_domain']}"
        run.sessions.append((t, b.dns_lookup(actor, name, qtypes=("TXT",), answers={"TXT": []}, search=False)))
    # 4. the C2 name resolves; the implant connects
    t = start + 3 * span // 4
    lookup = b.dns_lookup(actor, p["c2"], answers={"A": [p["c2_ip"]]})
    conn = b.tcp_connection(Peer(actor.ip, actor), Peer(p["c2_ip"], name=p["c2"]), 443, requests=3)
    run.sessions.append((t, then(lookup, conn, 300_000)))
    return run


@scenario("kube-api", "kube-api", ("T1613", "T1552.007"),
          "a workload that never uses the Kubernetes API starts listing it",
          actor="ml-training/trainer", connections="25", at="0.6", span="5m")
def kube_api(ctx: Context, p: dict[str, str]) -> Run:
    actor = actor_pod(ctx, p["actor"])
    run = Run(actor.key)
    c = ctx.cluster
    for t in spread(ctx, at_ns(ctx, p["at"]), dur_ns(p["span"]), integer(p, "connections")):
        run.sessions.append((t, ctx.traffic.connect(actor, ctx.traffic.apiserver_peer(), c.apiserver_port,
                                                    http=False, requests=(1, 4), verdict="FORWARDED",
                                                    lookup="kubernetes.default.svc", lookup_share=0.0)))
    return run


@scenario("namespace-breach", "namespace-breach", ("T1210", "T1021"),
          "a dev workload reaches a production service",
          actor="dev/sandbox", target="production/orders", port="8080", connections="6", at="0.75", span="3m")
def namespace_breach(ctx: Context, p: dict[str, str]) -> Run:
    return _connections(ctx, p, http=None, requests=(1, 3), lookup_share=1.0)


@scenario("drop-spike", "drop-spike", (), "a bad policy rollout: every connection into a namespace is dropped",
          namespace="app", at="0.8", window="3m")
def drop_spike(ctx: Context, p: dict[str, str]) -> Run:
    ns = p["namespace"]
    if ns not in ctx.cluster.namespaces:
        raise ClusterError(f"drop-spike: unknown namespace {ns!r}")
    t0 = at_ns(ctx, p["at"])
    t1 = min(t0 + dur_ns(p["window"]), ctx.start_ns + ctx.duration_ns)
    run = Run(ns, suppress=[(ns, t0, t1)])
    # the clients keep connecting at their usual rates; every attempt is now denied
    for edge_spec, edge in zip(ctx.cluster.spec["traffic"], ctx.traffic.edges, strict=True):
        if edge.server_ns != ns or edge_spec.get("from") in (None, "world", "host"):
            continue
        client_wl = ctx.cluster.workloads[edge_spec["from"]]
        server_wl = ctx.cluster.workloads[edge.server_key]
        n = max(1, int(edge.rate * (t1 - t0) / NS))
        for t in spread(ctx, t0, t1 - t0, n):
            client = ctx.traffic.pick(client_wl.pods)
            server = ctx.traffic.pick(server_wl.pods, avoid=client)
            run.sessions.append((t, ctx.builder.syn_probe(client, Peer(server.ip, server), int(edge_spec["port"]),
                                                          "dropped", retries=ctx.rng.choice((1, 2)))))
    return run


@scenario("threat-intel", "threat-intel", ("T1071.001", "T1105"),
          "contact with a threat-intel IP and a known-bad domain",
          actor="payments/billing", ip="194.26.192.77", domain="invoice-cdn.duckdns.org", domain_ip="91.92.247.12",
          at="0.45")
def threat_intel(ctx: Context, p: dict[str, str]) -> Run:
    actor = actor_pod(ctx, p["actor"])
    b = ctx.builder
    run = Run(actor.key, indicators=[p["ip"], p["domain"], p["domain_ip"]])
    t = at_ns(ctx, p["at"])
    run.sessions.append((t, b.tcp_connection(Peer(actor.ip, actor), Peer(p["ip"]), 443, requests=2)))
    lookup = b.dns_lookup(actor, p["domain"], answers={"A": [p["domain_ip"]]})
    conn = b.tcp_connection(Peer(actor.ip, actor), Peer(p["domain_ip"], name=p["domain"]), 443, requests=1)
    run.sessions.append((t + 40 * NS, then(lookup, conn, 250_000)))
    return run


@scenario("new-edge", "anomaly", ("T1210",), "a workload pair that never talked before starts talking",
          actor="app/cart", target="production/search", port="9200", connections="5", at="0.85", span="2m")
def new_edge(ctx: Context, p: dict[str, str]) -> Run:
    return _connections(ctx, p, http=None, requests=(1, 2), lookup_share=0.5)


def describe() -> list[dict[str, Any]]:
    return [{"name": s.name, "category": s.category, "mitre": list(s.mitre), "summary": s.summary,
             "parameters": s.defaults} for s in SCENARIOS.values()]
