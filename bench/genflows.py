"""Generate realistic Hubble flows (exporter/jsonpb lines) for benchmarks.

Shapes follow the real samples in ../shared/data/hubble-samples: TCP trace events with flag
progression, UDP, DNS and HTTP L7 records, world egress, ~5 % policy drops.

    python bench/genflows.py -n 1000000 -o bench/data/flows-1m.jsonl --seed 1
"""

from __future__ import annotations

import argparse
import random
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import orjson

NAMESPACES = ["frontend", "app", "database", "payments", "production", "dev", "monitoring", "kube-system"]
WORKLOADS = {
    "frontend": ["web", "gateway"], "app": ["api", "worker", "cart"], "database": ["postgres", "redis"],
    "payments": ["billing", "ledger"], "production": ["orders", "search"], "dev": ["sandbox", "ci-runner"],
    "monitoring": ["prometheus", "grafana"], "kube-system": ["coredns", "metrics-server"],
}
PORTS = {"postgres": 5432, "redis": 6379, "coredns": 53, "prometheus": 9090}
NODES = [f"prod-eu1/node-{i:02d}" for i in range(8)]
WORLD = ["52.94.236.248", "140.82.112.3", "151.101.1.69", "34.117.59.81"]
WORLD_NAMES = {"52.94.236.248": "sqs.eu-west-1.amazonaws.com", "140.82.112.3": "api.github.com",
               "151.101.1.69": "pypi.org", "34.117.59.81": "ipinfo.io"}


def make_pods(rng: random.Random) -> list[dict[str, Any]]:
    pods = []
    ident = 10000
    for ns in NAMESPACES:
        for wl in WORKLOADS[ns]:
            ident += 17
            rs = "".join(rng.choice("bcdfghjklmnpqrstvwxz2456789") for _ in range(10))
            for r in range(3):
                suffix = "".join(rng.choice("bcdfghjklmnpqrstvwxz2456789") for _ in range(5))
                pods.append({
                    "ns": ns, "wl": wl, "pod": f"{wl}-{rs}-{suffix}", "identity": ident,
                    "ip": f"10.{NAMESPACES.index(ns)}.{len(pods) % 250}.{10 + r}", "id": rng.randrange(100, 4000),
                    "labels": [
                        f"k8s:app={wl}",
                        f"k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name={ns}",
                        "k8s:io.cilium.k8s.policy.cluster=prod-eu1",
                        f"k8s:io.cilium.k8s.policy.serviceaccount={wl}",
                        f"k8s:io.kubernetes.pod.namespace={ns}",
                        f"k8s:pod-template-hash={rs}",
                    ],
                    "port": PORTS.get(wl, 8080),
                })
    return pods


def endpoint(p: dict[str, Any]) -> dict[str, Any]:
    return {"ID": p["id"], "identity": p["identity"], "cluster_name": "prod-eu1", "namespace": p["ns"],
            "labels": p["labels"], "pod_name": p["pod"], "workloads": [{"name": p["wl"], "kind": "Deployment"}]}


def ts(ns: int) -> str:
    secs, frac = divmod(ns, 10**9)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{frac:09d}Z"


def flow_line(rng: random.Random, pods: list[dict[str, Any]], now: int) -> bytes:
    src = rng.choice(pods)
    kind = rng.random()
    node = rng.choice(NODES)
    flow: dict[str, Any] = {"time": ts(now), "uuid": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                            "emitter": {"name": "Hubble", "version": "1.19.4"}}
    dst_ep: dict[str, Any]
    if kind < 0.05:  # policy drop
        dst = rng.choice([p for p in pods if p["ns"] == "database"])
        sport = rng.randrange(32768, 60999)
        flow.update({"verdict": "DROPPED", "drop_reason": 133, "ethernet": {"source": "6e:1f:aa:01:02:03", "destination": "7a:22:bb:04:05:06"},
                     "IP": {"source": src["ip"], "destination": dst["ip"], "ipVersion": "IPv4"},
                     "l4": {"TCP": {"source_port": sport, "destination_port": dst["port"], "flags": {"SYN": True}}},
                     "source": endpoint(src), "destination": endpoint(dst), "Type": "L3_L4", "node_name": node,
                     "event_type": {"type": 1, "sub_type": 133}, "traffic_direction": "INGRESS",
                     "drop_reason_desc": "POLICY_DENIED", "Summary": "TCP Flags: SYN"})
    elif kind < 0.20:  # DNS
        dns = rng.choice([p for p in pods if p["wl"] == "coredns"])
        reply = rng.random() < 0.5
        q = rng.choice(["orders.production.svc.cluster.local.", "api.github.com.", "postgres.database.svc.cluster.local.",
                        "api.github.com.app.svc.cluster.local.", "sqs.eu-west-1.amazonaws.com."])
        nx = q.endswith(".app.svc.cluster.local.")
        dns_rec: dict[str, Any] = {"query": q, "qtypes": ["A"], "observation_source": "proxy"}
        if reply:
            if nx:
                dns_rec.update(rcode=3, ttl=4294967295)
                summary = f"DNS Answer RCode: Non-Existent Domain TTL: 4294967295 (Proxy {q} A)"
            else:
                ip = rng.choice(WORLD)
                dns_rec.update(ips=[ip], ttl=30, rrtypes=["A"])
                summary = f'DNS Answer "{ip}" TTL: 30 (Proxy {q} A)'
        else:
            summary = f"DNS Query {q} A"
        a, b = (dns, src) if reply else (src, dns)
        sport = rng.randrange(32768, 60999)
        flow.update({"verdict": "FORWARDED", "IP": {"source": a["ip"], "destination": b["ip"], "ipVersion": "IPv4"},
                     "l4": {"UDP": {"source_port": 53 if reply else sport, "destination_port": sport if reply else 53}},
                     "source": endpoint(a), "destination": endpoint(b), "Type": "L7", "node_name": node,
                     "l7": {"type": "RESPONSE" if reply else "REQUEST", "dns": dns_rec}, "is_reply": reply,
                     "event_type": {"type": 129}, "traffic_direction": "EGRESS", "Summary": summary})
    elif kind < 0.30:  # HTTP
        dst = rng.choice([p for p in pods if p["ns"] in ("app", "production")])
        reply = rng.random() < 0.5
        path = rng.choice(["/api/v1/orders", "/healthz", "/api/v1/cart/42", "/metrics"])
        code = rng.choice([200, 200, 200, 201, 404, 503])
        http: dict[str, Any] = {"method": "GET", "url": f"http://{dst['wl']}.{dst['ns']}:8080{path}", "protocol": "HTTP/1.1",
                                "headers": [{"key": "User-Agent", "value": "Go-http-client/1.1"},
                                            {"key": "X-Request-Id", "value": str(uuid.UUID(int=rng.getrandbits(128)))}]}
        l7: dict[str, Any] = {"type": "RESPONSE" if reply else "REQUEST"}
        if reply:
            http["code"] = code
            lat = rng.randrange(200_000, 90_000_000)
            l7["latency_ns"] = str(lat)
            summary = f"HTTP/1.1 {code} {lat // 1_000_000}ms (GET {http['url']})"
        else:
            summary = f"HTTP/1.1 GET {http['url']}"
        l7["http"] = http
        a, b = (dst, src) if reply else (src, dst)
        sport = rng.randrange(32768, 60999)
        flow.update({"verdict": "FORWARDED", "IP": {"source": a["ip"], "destination": b["ip"], "ipVersion": "IPv4"},
                     "l4": {"TCP": {"source_port": 8080 if reply else sport, "destination_port": sport if reply else 8080}},
                     "source": endpoint(a), "destination": endpoint(b), "Type": "L7", "node_name": node, "l7": l7,
                     "is_reply": reply, "event_type": {"type": 129},
                     "traffic_direction": "INGRESS", "proxy_port": 15001, "Summary": summary})
    else:  # TCP / UDP trace events, some to the world
        world = rng.random() < 0.08
        reply = rng.random() < 0.45
        flags = rng.choice([{"SYN": True}, {"SYN": True, "ACK": True}, {"ACK": True}, {"ACK": True, "PSH": True},
                            {"ACK": True, "FIN": True}])
        fname = ", ".join(k for k in ("SYN", "ACK", "FIN", "PSH") if k in flags)
        sport = rng.randrange(32768, 60999)
        if world:
            wip = rng.choice(WORLD)
            dst_ep = {"identity": 2, "labels": ["reserved:world"]}
            dip, dport = wip, 443
            names = {"destination_names": [WORLD_NAMES[wip]]}
        else:
            dstp = rng.choice(pods)
            dst_ep, dip, dport, names = endpoint(dstp), dstp["ip"], dstp["port"], {}
        flow.update({"verdict": "FORWARDED", "ethernet": {"source": "6e:1f:aa:01:02:03", "destination": "7a:22:bb:04:05:06"},
                     "IP": {"source": src["ip"], "destination": dip, "ipVersion": "IPv4"},
                     "l4": {"TCP": {"source_port": sport, "destination_port": dport, "flags": flags}},
                     "source": endpoint(src), "destination": dst_ep, "Type": "L3_L4", "node_name": node,
                     "node_labels": ["kubernetes.io/hostname=" + node.split("/")[1], "topology.kubernetes.io/zone=eu1-a"],
                     **names, "event_type": {"type": 4, "sub_type": 3 if not reply else 0},
                     "traffic_direction": "EGRESS",
                     "trace_observation_point": "TO_STACK" if not reply else "TO_ENDPOINT",
                     "trace_reason": "ESTABLISHED" if "SYN" not in flags else "NEW",
                     "is_reply": reply, "interface": {"index": 12, "name": "lxc1a2b3c4d"}, "Summary": f"TCP Flags: {fname}"})
    return orjson.dumps({"flow": flow, "node_name": node, "time": flow["time"]})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=1_000_000)
    ap.add_argument("-o", required=True)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    pods = make_pods(rng)
    Path(args.o).parent.mkdir(parents=True, exist_ok=True)
    now = 1_760_000_000 * 10**9
    total = 0
    start = time.perf_counter()
    with open(args.o, "wb") as out:
        buf: list[bytes] = []
        for _ in range(args.n):
            now += rng.randrange(50_000, 400_000)
            line = flow_line(rng, pods, now)
            buf.append(line)
            total += len(line) + 1
            if len(buf) >= 20000:
                out.write(b"\n".join(buf) + b"\n")
                buf.clear()
        if buf:
            out.write(b"\n".join(buf) + b"\n")
    dt = time.perf_counter() - start
    print(f"wrote {args.n} flows, {total / 1e6:.0f} MB, mean {total / max(args.n, 1):.0f} B/line, "
          f"{args.n / dt:,.0f} flows/s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
