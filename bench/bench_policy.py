"""Speed of the policy engine against a realistic 500-policy set: evaluator verdicts/s and
end-to-end `flowtrail policy audit` flows/s with peak RSS.

    python bench/bench_policy.py [--flows 1000000] [--policies 500] [--probes 20000] [--repeat 3]
                                 [--write-md docs/benchmarks.md] [--keep-policies DIR]

Policies are built deterministically (seeded): for the demo cluster's namespaces
(src/flowtrail/lab/clusters/demo.yaml, the same workloads the flow files carry) default denies,
DNS egress, one ingress NetworkPolicy and one egress CiliumNetworkPolicy per traffic edge (HTTP L7
rules where the server speaks HTTP, toFQDNs with a DNS rule for internet peers, toEntities
kube-apiserver), metrics scraping over an endPort range, ipBlock with except, and clusterwide
deny rules; the rest, up to --policies, are tenant namespaces with the same mix
(matchExpressions, namespaceSelector, CIDR sets, deny rules, L7). Flows are the core benchmark
file bench/data/flows-N.jsonl (bench/genflows.py) when present, else `flowtrail simulate` output.

(a) evaluator: Evaluator.evaluate over --probes distinct connections between demo and tenant
pods, outside addresses and reserved identities; "cold" is a fresh Evaluator (selector caches
empty), "warm" the same connections again. (b) audit: the whole CLI (decode, reduce to distinct
connections, evaluate, classify, report), flows replayed per second, peak RSS of the child.
Medians of --repeat runs; on a shared machine the numbers are noisy, the median is what to quote.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from flowtrail.policy.evaluate import Connection, HTTPRequest

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "src" / "flowtrail" / "lab" / "clusters" / "demo.yaml"
NS_NAME = "kubernetes.io/metadata.name"
MARKER = "## flowtrail policy"
# Assumed per-node flow rate for "a day of a 50-node cluster". Hubble's default ring buffer holds
# 4095 flows per node (cilium `hubble-event-buffer-capacity`); busy production nodes are commonly
# quoted at a few hundred flows/s. 300 flows/s/node is our planning figure, not a measurement.
FLOWS_PER_NODE_S = 300
NODES = 50


# ---- policies -----------------------------------------------------------------------------------

def _np(ns: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": ns}, "spec": spec}


def _cnp(ns: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
            "metadata": {"name": name, "namespace": ns}, "spec": spec}


def _ccnp(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "cilium.io/v2", "kind": "CiliumClusterwideNetworkPolicy",
            "metadata": {"name": name}, "spec": spec}


def _dns_egress(ns: str) -> dict[str, Any]:
    return _np(ns, "allow-dns", {
        "podSelector": {}, "policyTypes": ["Egress"],
        "egress": [{"to": [{"namespaceSelector": {"matchLabels": {NS_NAME: "kube-system"}},
                            "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
                    "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]}]})


def demo_policies(cluster: dict[str, Any]) -> list[dict[str, Any]]:
    """Policies for the workloads the benchmark flows carry: mostly what the traffic needs."""
    wls = {f"{w['namespace']}/{w['name']}": w for w in cluster["workloads"]}
    out: list[dict[str, Any]] = []
    for ns in cluster["namespaces"]:
        out.append(_np(ns, "default-deny", {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}))
        out.append(_dns_egress(ns))
    for i, edge in enumerate(cluster["traffic"]):
        src, dst, port = edge.get("from"), edge.get("to"), edge.get("port")
        if src in wls and dst in wls:
            s, d = wls[src], wls[dst]
            http = any(p.get("l7") == "http" and p["port"] == port for p in d.get("ports", []))
            out.append(_np(d["namespace"], f"ingress-{i}-{d['name']}", {
                "podSelector": {"matchLabels": d["labels"]}, "policyTypes": ["Ingress"],
                "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {NS_NAME: s["namespace"]}},
                                       "podSelector": {"matchLabels": s["labels"]}}],
                             "ports": [{"protocol": "TCP" if port != 9125 else "UDP", "port": port}]}]}))
            to_ports: dict[str, Any] = {"ports": [{"port": str(port), "protocol": "UDP" if port == 9125 else "TCP"}]}
            if http:
                to_ports["rules"] = {"http": [{"method": "GET|POST|PUT|DELETE", "path": "/.*"}]}
            out.append(_cnp(s["namespace"], f"egress-{i}-{s['name']}", {
                "endpointSelector": {"matchLabels": s["labels"]},
                "egress": [{"toEndpoints": [{"matchLabels": {"k8s:io.kubernetes.pod.namespace": d["namespace"],
                                                             **d["labels"]}}],
                            "toPorts": [to_ports]}]}))
        elif src in wls and isinstance(dst, str) and dst.startswith("world:"):
            s = wls[src]
            out.append(_cnp(s["namespace"], f"fqdn-{i}-{s['name']}", {
                "endpointSelector": {"matchLabels": s["labels"]},
                "egress": [{"toEndpoints": [{"matchLabels": {"k8s:io.kubernetes.pod.namespace": "kube-system",
                                                             "k8s:k8s-app": "kube-dns"}}],
                            "toPorts": [{"ports": [{"port": "53", "protocol": "ANY"}],
                                         "rules": {"dns": [{"matchPattern": "*"}]}}]},
                           {"toFQDNs": [{"matchName": dst.split(":", 1)[1]}, {"matchPattern": "*.amazonaws.com"}],
                            "toPorts": [{"ports": [{"port": str(port), "protocol": "TCP"}]}]}]}))
        elif src in wls and dst == "kube-apiserver":
            s = wls[src]
            out.append(_cnp(s["namespace"], f"apiserver-{i}-{s['name']}", {
                "endpointSelector": {"matchLabels": s["labels"]},
                "egress": [{"toEntities": ["kube-apiserver"], "toPorts": [{"ports": [{"port": "443"}]}]}]}))
        elif src == "world" and dst in wls:
            d = wls[dst]
            out.append(_cnp(d["namespace"], f"from-world-{i}", {
                "endpointSelector": {"matchLabels": d["labels"]},
                "ingress": [{"fromEntities": ["world"], "toPorts": [{"ports": [{"port": str(port), "protocol": "TCP"}]}]}],
                "ingressDeny": [{"fromCIDRSet": [{"cidr": "185.220.0.0/16"}, {"cidr": "45.0.0.0/8",
                                                                              "except": ["45.1.0.0/16"]}]}]}))
    for ns in cluster["namespaces"]:
        # metrics scraping from monitoring over a port range; kubelet probes from the host
        out.append(_np(ns, "allow-scrape", {
            "podSelector": {"matchExpressions": [{"key": "app", "operator": "Exists"}]},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {NS_NAME: "monitoring"}},
                                   "podSelector": {"matchLabels": {"app": "prometheus"}}}],
                         "ports": [{"protocol": "TCP", "port": 8000, "endPort": 10300}]}]}))
        out.append(_cnp(ns, "allow-host-probes", {
            "endpointSelector": {}, "ingress": [{"fromEntities": ["host", "remote-node", "health"]}]}))
    out.append(_np("monitoring", "prometheus-scrape-egress", {
        "podSelector": {"matchLabels": {"app": "prometheus"}}, "policyTypes": ["Egress"],
        "egress": [{"to": [{"namespaceSelector": {}}], "ports": [{"protocol": "TCP", "port": 8000, "endPort": 10300}]},
                   {"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.10.0.0/16"]}}]}]}))
    out.append(_ccnp("deny-metadata", {"endpointSelector": {},
                                       "egressDeny": [{"toCIDR": ["169.254.169.254/32"]}]}))
    out.append(_ccnp("deny-world-to-data", {
        "endpointSelector": {"matchExpressions": [{"key": "k8s:io.kubernetes.pod.namespace", "operator": "In",
                                                   "values": ["database", "payments"]}]},
        "ingressDeny": [{"fromEntities": ["world"]}]}))
    out.append(_ccnp("cluster-dns", {"endpointSelector": {}, "egress": [{
        "toEndpoints": [{"matchLabels": {"k8s:io.kubernetes.pod.namespace": "kube-system", "k8s:k8s-app": "kube-dns"}}],
        "toPorts": [{"ports": [{"port": "53", "protocol": "UDP"}], "rules": {"dns": [{"matchPattern": "*"}]}}]}]}))
    return out


TENANT_APPS = ["web", "api", "worker", "db", "cache", "queue"]


def tenant_policies(t: int, rng: random.Random) -> list[dict[str, Any]]:
    """Twelve policies of one synthetic tenant namespace, a mix of every construct."""
    ns = f"tenant-{t:03d}"
    tier = rng.choice(["gold", "silver", "bronze"])
    port = rng.choice([8080, 8443, 9000, 3000])
    cidr = f"{rng.randrange(1, 223)}.{rng.randrange(256)}.0.0/16"
    return [
        _np(ns, "default-deny", {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
        _dns_egress(ns),
        _np(ns, "web-from-ingress", {
            "podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Ingress"],
            "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {NS_NAME: "ingress-nginx"}}},
                                  {"podSelector": {"matchExpressions": [
                                      {"key": "app", "operator": "In", "values": ["api", "worker"]}]}}],
                         "ports": [{"port": port}]}]}),
        _np(ns, "api-from-web", {
            "podSelector": {"matchLabels": {"app": "api"}},
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}},
                                  {"namespaceSelector": {"matchExpressions": [
                                      {"key": "tier", "operator": "In", "values": [tier, "platform"]},
                                      {"key": "env", "operator": "NotIn", "values": ["dev"]}]},
                                   "podSelector": {"matchLabels": {"role": "client"}}}],
                         "ports": [{"protocol": "TCP", "port": 8080}, {"protocol": "TCP", "port": 9000,
                                                                         "endPort": 9100}]}]}),
        _np(ns, "db-from-api", {
            "podSelector": {"matchLabels": {"app": "db"}},
            "ingress": [{"from": [{"podSelector": {"matchExpressions": [
                {"key": "app", "operator": "In", "values": ["api", "worker"]},
                {"key": "version", "operator": "Exists"}]}}],
                "ports": [{"port": 5432}]}]}),
        _np(ns, "egress-partners", {
            "podSelector": {"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["db", "cache"]}]},
            "policyTypes": ["Egress"],
            "egress": [{"to": [{"ipBlock": {"cidr": cidr, "except": [cidr.replace(".0.0/16", ".128.0/17")]}},
                               {"ipBlock": {"cidr": "10.0.0.0/8"}}],
                        "ports": [{"protocol": "TCP", "port": 443}, {"protocol": "UDP", "port": 5000,
                                                                       "endPort": 5100}]}]}),
        _cnp(ns, "api-l7", {
            "endpointSelector": {"matchLabels": {"app": "api"}},
            "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "web"}}],
                         "toPorts": [{"ports": [{"port": "8080", "protocol": "TCP"}],
                                      "rules": {"http": [{"method": "GET", "path": "/v1/.*"},
                                                         {"method": "POST", "path": "/v1/orders"}]}}]}]}),
        _cnp(ns, "worker-fqdn", {
            "endpointSelector": {"matchLabels": {"app": "worker"}},
            "egress": [{"toEndpoints": [{"matchLabels": {"k8s:io.kubernetes.pod.namespace": "kube-system",
                                                         "k8s:k8s-app": "kube-dns"}}],
                        "toPorts": [{"ports": [{"port": "53", "protocol": "ANY"}],
                                     "rules": {"dns": [{"matchPattern": f"*.{ns}.example.com"},
                                                       {"matchName": "api.stripe.com"}]}}]},
                       {"toFQDNs": [{"matchPattern": f"*.{ns}.example.com"}, {"matchName": "api.stripe.com"}],
                        "toPorts": [{"ports": [{"port": "443", "protocol": "TCP"}]}]}]}),
        _cnp(ns, "deny-world-db", {
            "endpointSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["db", "cache"]}]},
            "ingressDeny": [{"fromEntities": ["world"]}],
            "egressDeny": [{"toCIDRSet": [{"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8", "172.16.0.0/12"]}]}]}),
        _cnp(ns, "cache-from-app", {
            "endpointSelector": {"matchLabels": {"app": "cache"}},
            "ingress": [{"fromEndpoints": [{"matchExpressions": [
                {"key": "k8s:app", "operator": "In", "values": ["api", "worker", "web"]}]}],
                "toPorts": [{"ports": [{"port": "6379", "protocol": "TCP"}]}]}]}),
        _cnp(ns, "queue-cross-ns", {
            "endpointSelector": {"matchLabels": {"app": "queue"}},
            "ingress": [{"fromEndpoints": [{"matchLabels": {
                "k8s:io.cilium.k8s.namespace.labels.tier": tier, "k8s:role": "client"}}],
                "toPorts": [{"ports": [{"port": "5672", "protocol": "TCP"}]}]}]}),
        _cnp(ns, "allow-monitoring", {
            "endpointSelector": {},
            "ingress": [{"fromEndpoints": [{"matchLabels": {"k8s:io.kubernetes.pod.namespace": "monitoring",
                                                            "k8s:app": "prometheus"}}],
                         "toPorts": [{"ports": [{"port": "9100"}, {"port": "8080"}]}]},
                        {"fromEntities": ["host", "health"]}]}),
    ]


def build_policies(n: int, seed: int = 1) -> tuple[list[dict[str, Any]], dict[str, Any], int]:
    """Exactly n policy objects (demo cluster first), the demo cluster and the tenant count."""
    cluster = yaml.safe_load(DEMO.read_text())
    rng = random.Random(seed)
    out = demo_policies(cluster)
    t = 0
    while len(out) < n:
        out.extend(tenant_policies(t, rng))
        t += 1
    return out[:n], cluster, t


def write_policies(objs: list[dict[str, Any]], d: Path) -> None:
    by_ns: dict[str, list[dict[str, Any]]] = {}
    for o in objs:
        by_ns.setdefault(o["metadata"].get("namespace", "_clusterwide"), []).append(o)
    for ns, docs in by_ns.items():
        (d / f"{ns}.yaml").write_text(yaml.safe_dump_all(docs, sort_keys=False))


# ---- (a) evaluator ------------------------------------------------------------------------------

def make_connections(cluster: dict[str, Any], tenants: int, n: int, seed: int = 2) -> list[Connection]:
    """n distinct connections between demo and tenant pods, outside addresses and reserved ones."""
    from flowtrail.policy.endpoints import from_identity_labels

    rng = random.Random(seed)
    pods = []
    ns_labels = {ns: (v or {}).get("labels") or {} for ns, v in cluster["namespaces"].items()}
    for t in range(tenants):
        ns_labels[f"tenant-{t:03d}"] = {"tier": rng.choice(["gold", "silver", "bronze", "platform"]),
                                        "env": rng.choice(["prod", "dev", "staging"])}
    ip = iter(ipaddress.IPv4Network("10.0.0.0/12").hosts())
    for w in cluster["workloads"]:
        for r in range(w.get("replicas", 1)):
            pods.append((w["namespace"], f"{w['name']}-{r}", dict(w["labels"])))
    for t in range(tenants):
        for app in TENANT_APPS:
            for r in range(2):
                labels = {"app": app, "version": f"v{rng.randrange(3)}"}
                if rng.random() < 0.5:
                    labels["role"] = "client"
                pods.append((f"tenant-{t:03d}", f"{app}-{r}", labels))
    eps = []
    for ns, name, labels in pods:
        ident = [f"k8s:{k}={v}" for k, v in labels.items()]
        ident += [f"k8s:io.cilium.k8s.namespace.labels.{k}={v}" for k, v in ns_labels[ns].items()]
        ident += [f"k8s:io.kubernetes.pod.namespace={ns}", "k8s:io.cilium.k8s.policy.cluster=default"]
        eps.append(from_identity_labels(ident, next(ip), ns, name, None))
    outside = [from_identity_labels(["reserved:world"], ipaddress.ip_address(f"{rng.randrange(1, 223)}.{rng.randrange(256)}."
                                                                             f"{rng.randrange(256)}.{rng.randrange(1, 255)}"),
                                    None, None, 2) for _ in range(200)]
    reserved = [from_identity_labels([f"reserved:{e}"], None, None, None, None)
                for e in ("host", "remote-node", "kube-apiserver", "health")]
    ports = [53, 80, 443, 5432, 6379, 5672, 8080, 8443, 9000, 9090, 9100, 9125, 10250, 29500]
    seen = set()
    conns: list[Connection] = []
    while len(conns) < n:
        pick = rng.random()
        src = rng.choice(eps) if pick < 0.9 else rng.choice(reserved)
        dst = rng.choice(outside) if pick < 0.15 else rng.choice(reserved) if pick < 0.2 else rng.choice(eps)
        port = rng.choice(ports) if rng.random() < 0.9 else rng.randrange(1, 65536)
        proto = "UDP" if port in (53, 9125) or rng.random() < 0.05 else "TCP"
        http = HTTPRequest(rng.choice(["GET", "POST"]), f"/v1/orders/{rng.randrange(50)}") \
            if port == 8080 and rng.random() < 0.5 else None
        names = frozenset({"api.stripe.com"}) if dst.kind == "external" and rng.random() < 0.3 else frozenset()
        key = (id(src), id(dst), proto, port, http, names)
        if key in seen:
            continue
        seen.add(key)
        conns.append(Connection(src, dst, proto, port, None, http, "api.stripe.com." if port == 53 else None, names))
    return conns


def bench_evaluator(policy_dir: Path, cluster: dict[str, Any], tenants: int, n: int, repeat: int
                    ) -> dict[str, float]:
    from flowtrail.policy.evaluate import Evaluator
    from flowtrail.policy.load import load_policies

    t = time.perf_counter()
    ps = load_policies([str(policy_dir)])
    load_s = time.perf_counter() - t
    conns = make_connections(cluster, tenants, n)
    cold, warm, allowed = [], [], 0
    for _ in range(repeat):
        ev = Evaluator(ps, "cilium")
        t = time.perf_counter()
        vs = [ev.evaluate(c) for c in conns]
        cold.append(time.perf_counter() - t)
        t = time.perf_counter()
        for c in conns:
            ev.evaluate(c)
        warm.append(time.perf_counter() - t)
        allowed = sum(v.allowed for v in vs)
    return {"policies": len(ps.policies), "load_s": load_s, "n": n, "cold_s": statistics.median(cold),
            "warm_s": statistics.median(warm), "allowed": allowed}


# ---- (b) audit ----------------------------------------------------------------------------------

def flows_file(n: int, tmp: Path) -> tuple[Path, str]:
    core = REPO / "bench" / "data" / f"flows-{n}.jsonl"
    if core.exists():
        return core, "bench/genflows.py"
    out = tmp / "sim.jsonl"
    ft = str(REPO / ".venv" / "bin" / "flowtrail")
    subprocess.run([ft, "simulate", "--duration", "1h", "--rate", f"{n / 3600:.3f}", "-o", str(out), "-q",
                    "--scenario", "policy-gap", "--scenario", "port-scan"], check=True)
    return out, "flowtrail simulate (demo cluster, 1 h, policy-gap + port-scan)"


def bench_audit(policy_dir: Path, data: Path, repeat: int) -> dict[str, Any]:
    ft = str(REPO / ".venv" / "bin" / "flowtrail")
    cmd = [ft, "policy", "audit", "--policies", str(policy_dir), "--input-file", str(data), "-o", "json"]
    walls, rss = [], []
    summary = ""
    for _ in range(repeat):
        # ru_maxrss of children is a high-water mark: measure each run in a fresh child
        proc = subprocess.run([sys.executable, "-c",
                               "import resource,subprocess,sys,time;t=time.perf_counter();"
                               "p=subprocess.run(sys.argv[1:],stdout=subprocess.PIPE,stderr=subprocess.DEVNULL);"
                               "w=time.perf_counter()-t;r=resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss;"
                               "sys.stderr.buffer.write(p.stdout.splitlines()[-1] if p.stdout else b'');"
                               "print(w,r,p.returncode)", *cmd], capture_output=True, text=True, check=True)
        w, r, rc = proc.stdout.split()
        if int(rc) != 0:
            raise RuntimeError(f"policy audit exited {rc}")
        walls.append(float(w))
        rss.append(int(r))
        summary = proc.stderr
    return {"wall_s": statistics.median(walls), "walls": walls, "rss_mb": max(rss) / 1024, "summary": summary}


def bench_stage(policy_dir: Path, data: Path, repeat: int) -> dict[str, float]:
    """The policy stage alone, in process: decoded tables in, findings out (what `audit` does
    after JSON parsing), in the CLI's batches. Decoding (worker processes, as in the CLI) runs
    first and is not timed: run alongside, its workers would take this 2-CPU machine's CPU from
    the timed stage (the decoded tables take about 1 GB per million flows)."""
    import pyarrow as pa

    from flowtrail.policy.endpoints import Inventory
    from flowtrail.policy.evaluate import Evaluator
    from flowtrail.policy.load import load_policies
    from flowtrail.policy.replay import Group, ReplayDecoder, Replayer, classify_audit, group_rows
    from flowtrail.sources.batches import batches
    from flowtrail.sources.files import expand_inputs

    ps = load_policies([str(policy_dir)])
    stage, lines, conns, evaluations = [], 0, 0, 0
    batched: list[list[pa.Table]] = [[]]
    rows = 0
    decoder = ReplayDecoder(Replayer(Evaluator(ps, "cilium"), Inventory()).uses_fqdn)
    for b in batches(expand_inputs([str(data)]), decoder, None, None):
        lines += b.lines
        if b.table.num_rows:
            batched[-1].append(b.table)
            rows += b.table.num_rows
        if rows >= 65_536:  # the CLI's batch size (cli/policy.py BATCH_ROWS)
            batched.append([])
            rows = 0
    for _ in range(repeat):
        rp = Replayer(Evaluator(ps, "cilium"), Inventory())
        groups: dict[tuple[Any, ...], Group] = {}
        t = time.perf_counter()
        for pending in batched:
            if pending:
                rv = rp.feed(pa.concat_tables(pending))
                for kind, mask in classify_audit(rv).items():
                    group_rows(groups, kind, mask, rv)
        stage.append(time.perf_counter() - t)
        conns, evaluations = len(rp.verdicts), rp.evaluations
    return {"stage_s": statistics.median(stage), "flows": lines, "connections": conns, "evaluations": evaluations}


def count_lines(p: Path) -> int:
    with p.open("rb") as f:
        return sum(buf.count(b"\n") for buf in iter(lambda: f.read(1 << 24), b""))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--flows", type=int, default=1_000_000,
                    help="flows for the audit run: bench/data/flows-N.jsonl if present, else simulated")
    ap.add_argument("--policies", type=int, default=500)
    ap.add_argument("--probes", type=int, default=20_000, help="distinct connections for the evaluator run")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--write-md")
    ap.add_argument("--keep-policies", metavar="DIR", help="also write the policy set here")
    args = ap.parse_args(argv)
    objs, cluster, tenants = build_policies(args.policies)
    kinds = {k: sum(o["kind"] == k for o in objs) for k in
             ("NetworkPolicy", "CiliumNetworkPolicy", "CiliumClusterwideNetworkPolicy")}
    if args.keep_policies:
        Path(args.keep_policies).mkdir(parents=True, exist_ok=True)
        write_policies(objs, Path(args.keep_policies))
    with tempfile.TemporaryDirectory(dir=REPO / "bench") as tmp:
        pdir = Path(tmp) / "policies"
        pdir.mkdir()
        write_policies(objs, pdir)
        ev = bench_evaluator(pdir, cluster, tenants, args.probes, args.repeat)
        data, origin = flows_file(args.flows, Path(tmp))
        nflows = count_lines(data)
        au = bench_audit(pdir, data, args.repeat)
        st = bench_stage(pdir, data, args.repeat)
    cold_vps, warm_vps = ev["n"] / ev["cold_s"], ev["n"] / ev["warm_s"]
    fps = nflows / au["wall_s"]
    day = FLOWS_PER_NODE_S * NODES * 86_400
    day_min = day / fps / 60
    kind_txt = ", ".join(f"{v} {k}" for k, v in kinds.items())
    rows = [
        ("evaluator, cold caches (fresh Evaluator)", f"{ev['cold_s']:.2f}", f"{cold_vps:,.0f} verdicts/s", "-"),
        ("evaluator, warm caches", f"{ev['warm_s']:.2f}", f"{warm_vps:,.0f} verdicts/s", "-"),
        (f"policy stage only (decoded tables in, findings out), {nflows:,} flows", f"{st['stage_s']:.2f}",
         f"{nflows / st['stage_s']:,.0f} flows/s", "-"),
        (f"`policy audit -o json` end to end, {nflows:,} flows", f"{au['wall_s']:.2f}", f"{fps:,.0f} flows/s",
         f"{au['rss_mb']:,.0f}"),
    ]
    print(f"{ev['policies']} policies ({kind_txt}; {tenants} tenant namespaces), loaded in {ev['load_s']:.2f} s")
    print(f"evaluator: {ev['n']:,} distinct connections, {ev['allowed']:,} allowed")
    print(f"audit: {data} ({origin}); runs {', '.join(f'{w:.2f}' for w in au['walls'])} s; summary {au['summary']}")
    print(f"policy stage: {st['connections']:,} distinct connections, {st['evaluations']:,} verdict evaluations "
          "(one per class of connections that share their verdict, and per request L7 rules read)")
    for r in rows:
        print(f"{r[0]:<72} {r[1]:>8} s  {r[2]:>22}  peak RSS {r[3]} MB")
    print(f"a day of a {NODES}-node cluster at {FLOWS_PER_NODE_S} flows/s/node = {day / 1e9:.2f} G flows: "
          f"~{day_min:,.0f} min of audit at the measured rate")
    if args.write_md:
        md = Path(args.write_md)
        text = md.read_text() if md.exists() else "# Benchmarks\n"
        head, _, rest = text.partition(MARKER)
        tail = rest.split("\n## ", 1)[1] if "\n## " in rest else ""
        size = data.stat().st_size / 1e6
        body = (
            f"{MARKER}\n\n`python bench/bench_policy.py --flows {args.flows} --policies {args.policies} "
            f"--probes {args.probes} --repeat {args.repeat}` on {platform.processor() or platform.machine()}, "
            f"{os.cpu_count()} CPUs shared with other work (noisy: medians of {args.repeat} runs), "
            f"{time.strftime('%Y-%m-%d')}.\n\n"
            f"Policy set: {ev['policies']} policies built by the script ({kind_txt}): the demo cluster's "
            f"namespaces (default deny, DNS, per-edge ingress NetworkPolicies and egress CNPs with HTTP rules, "
            f"toFQDNs + DNS rules, kube-apiserver entity, endPort ranges, ipBlock except, clusterwide deny "
            f"rules) and {tenants} tenant namespaces with the same mix (matchExpressions, namespaceSelector, "
            f"CIDR sets, deny rules, L7); loaded in {ev['load_s']:.2f} s. Evaluator: {ev['n']:,} distinct "
            f"connections (demo and tenant pods, world addresses, reserved identities). Audit: {nflows:,} "
            f"flows ({size:,.0f} MB, {origin}), the whole CLI (decode, reduce to distinct connections, "
            f"evaluate, classify, report); peak RSS from wait4. The policy stage row times the same replay "
            f"in process without JSON parsing ({st['connections']:,} distinct connections, {st['evaluations']:,} "
            f"verdict evaluations): what the engine does per flow once flows are decoded.\n\n"
            "| run | median s | rate | peak RSS MB |\n|---|---:|---:|---:|\n"
            + "".join(f"| {a} | {b} | {c} | {d} |\n" for a, b, c, d in rows)
            + f"\nA day of a {NODES}-node cluster: at an assumed {FLOWS_PER_NODE_S} flows/s per node (a planning "
            f"figure, not a measurement; Hubble's per-node ring buffer holds 4,095 flows by default) that is "
            f"{day / 1e9:.2f} G flows, about {day_min:,.0f} min of `policy audit` at the measured rate on this "
            "machine (the audit is linear in flows; distinct connections are evaluated once).\n")
        text = head.rstrip() + "\n\n" + body + (f"\n## {tail}" if tail else "")
        md.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
