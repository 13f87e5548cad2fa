"""Hubble metrics (flowtrail.metrics): exact counter values on real samples and lab flows.

The oracle below computes every expected value with plain Python over the JSON (orjson), one
flow at a time, straight from the reference's description of each handler (§5) — independent
of the columnar implementation under test. Batching must not change any value.
"""

from __future__ import annotations

import gzip
import json
import re
import urllib.error
import urllib.request
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from flowtrail.lab.simulate import NS, Options, simulate
from flowtrail.metrics import DEFAULT_HUBBLE_METRICS, HubbleMetrics, MetricsServer, OwnMetrics
from flowtrail.sources.decode import Decoder

from .conftest import SAMPLES_DIR

Key = tuple[str, tuple[tuple[str, str], ...]]
# series -> value; counts and histogram sums are floats, as in the exposition
Values = defaultdict[Key, float]

# ----------------------------------------------------------------------------------- the oracle
RCODE = {0: "No Error", 1: "Format Error", 2: "Server Failure", 3: "Non-Existent Domain", 4: "Not Implemented",
         5: "Query Refused"}
ICMP = {(4, 0, 0): "EchoReply", (4, 8, 0): "EchoRequest", (4, 3, 3): "DestinationUnreachable(Port)",
        (4, 11, 0): "TimeExceeded(TTLExceeded)", (6, 128, 0): "EchoRequest", (6, 129, 0): "EchoReply",
        (6, 1, 4): "DestinationUnreachable(PortUnreachable)", (6, 133, 0): "RouterSolicitation",
        (6, 135, 0): "NeighborSolicitation"}
TRACE = ["to-endpoint", "to-proxy", "to-host", "to-stack", "to-overlay", "from-endpoint", "from-proxy", "from-host",
         "from-stack", "from-overlay", "from-network", "to-network", "from-crypto", "to-crypto"]
MATCH = ["none", "l3-only", "l3-l4", "l4-only", "all", "l3-proto", "proto-only"]
LABEL_ORDER = ["source_ip", "source_pod", "source_namespace", "source_workload", "source_workload_kind",
               "source_app", "destination_ip", "destination_pod", "destination_namespace", "destination_workload",
               "destination_workload_kind", "destination_app", "traffic_direction"]
GO_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]


def parse(spec: str) -> tuple[str, dict[str, str]]:
    name, _, rest = spec.partition(":")
    opts = {}
    for item in filter(None, rest.split(";")):
        k, _, v = item.partition("=")
        opts[k.lower()] = v
    return name, opts


def ident_value(f: dict[str, Any], ident: str, side: str) -> str:
    e = f.get(side) or {}
    labels = e.get("labels", [])
    ns, pod = e.get("namespace", ""), e.get("pod_name", "")
    wl = (e.get("workloads") or [{}])[0].get("name", "")
    if ident == "namespace":
        return ns
    if ident == "identity":
        return ",".join(labels)
    if ident in ("pod", "pod-short"):
        if ident == "pod-short":
            pod = re.sub(r"^(.+?)(-[a-z0-9]+){1,2}$", r"\1", pod)
        return f"{ns}/{pod}" if ns else pod
    if ident == "pod-name":
        return pod
    if ident == "dns":
        return ",".join(f.get(f"{side}_names", []))
    if ident == "ip":
        return (f.get("IP") or {}).get(side, "")
    if ident == "reserved-identity":
        if "reserved:kube-apiserver" in labels:
            return "reserved:kube-apiserver"
        return next((lab for lab in labels if lab.startswith("reserved:")), "")
    if ident == "workload-name":
        return wl
    if ident == "workload":
        return "" if not wl else (f"{ns}/{wl}" if ns else wl)
    if ident == "app":
        for key in ("k8s:app.kubernetes.io/name", "k8s:k8s-app", "k8s:app"):
            for lab in labels:
                if lab.startswith(key + "=") and len(lab) > len(key) + 1:
                    return lab[len(key) + 1:]
        return ""
    raise AssertionError(ident)


def ctx_labels(f: dict[str, Any], opts: dict[str, str], invert: bool = False) -> dict[str, str]:
    out: dict[str, str] = {}
    wanted = opts.get("labelscontext", "")
    wanted_set = set(filter(None, wanted.split(",")))
    for lab in LABEL_ORDER:
        if lab not in wanted_set:
            continue
        if lab == "traffic_direction":
            d = f.get("traffic_direction")
            out[lab] = d.lower() if d else "unknown"
            continue
        side, _, what = lab.partition("_")
        if invert:
            side = "destination" if side == "source" else "source"
        e = f.get(side) or {}
        wl = (e.get("workloads") or [{}])[0]
        out[lab] = {"ip": (f.get("IP") or {}).get(side, ""), "pod": e.get("pod_name", ""),
                    "namespace": e.get("namespace", ""), "workload": wl.get("name", ""),
                    "workload_kind": wl.get("kind", ""), "app": ident_value(f, "app", side)}[what]
    vals = {}
    direction = f.get("traffic_direction", "")
    for side in ("source", "destination"):
        ids = opts.get(f"{side}context")
        if ids is None:
            continue
        override = opts.get(f"{side}{direction.lower()}context") if direction else None
        chosen = (override or ids).split("|")
        vals[side] = next((v for v in (ident_value(f, i, side) for i in chosen) if v), "")
    if invert:
        vals = {"source": vals.get("destination", ""), "destination": vals.get("source", "")}
    for side in ("source", "destination"):
        if f"{side}context" in opts:
            out[side] = vals[side]
    return out


def protocol(f: dict[str, Any]) -> str:
    t = (f.get("event_type") or {}).get("type", 0)
    if t == 129:
        l7 = f.get("l7") or {}
        return "DNS" if "dns" in l7 else "HTTP" if "http" in l7 else "Kafka" if "kafka" in l7 else "Unknown L7"
    if t in (1, 3, 4, 5):
        l4 = f.get("l4") or {}
        return next((k for k in ("TCP", "UDP", "ICMPv4", "ICMPv6", "SCTP", "VRRP", "IGMP") if k in l4), "Unknown L4")
    return "Unknown flow"


class Oracle:
    def __init__(self, specs: list[str]) -> None:
        self.specs = [parse(s) for s in specs]
        self.values: Values = defaultdict(float)

    def add(self, name: str, labels: dict[str, str], n: float = 1.0) -> None:
        self.values[(name, tuple(sorted(labels.items())))] += n

    def feed(self, lines: list[bytes]) -> None:
        for line in lines:
            obj = orjson.loads(line)
            if "lost_events" in obj:
                le = obj["lost_events"]
                self.add("hubble_lost_events_total",
                         {"source": le.get("source", "UNKNOWN_LOST_EVENT_SOURCE").lower()},
                         int(le.get("num_events_lost", "0")))
            if "flow" in obj:
                for name, opts in self.specs:
                    getattr(self, "h_" + name.replace("-", "_"))(obj["flow"], opts)

    def h_flow(self, f: dict[str, Any], o: dict[str, str]) -> None:
        et = f.get("event_type") or {}
        t = et.get("type", 0)
        typ, sub = {129: ("L7", ""), 1: ("Drop", ""), 3: ("Capture", ""), 4: ("Trace", ""),
                    5: ("PolicyVerdict", "")}.get(t, ("Unknown", str(t)))
        if t == 129:
            l7 = f.get("l7") or {}
            sub = "DNS" if "dns" in l7 else "HTTP" if "http" in l7 else ""
        if t == 4:
            st = et.get("sub_type", 0)
            sub = TRACE[st] if st < len(TRACE) else ""
        self.add("hubble_flows_processed_total", {"protocol": protocol(f), "type": typ, "subtype": sub,
                                                  "verdict": f.get("verdict", "VERDICT_UNKNOWN"), **ctx_labels(f, o)})

    def h_drop(self, f: dict[str, Any], o: dict[str, str]) -> None:
        if f.get("verdict") == "DROPPED":
            self.add("hubble_drop_total", {"reason": f.get("drop_reason_desc", "DROP_REASON_UNKNOWN"),
                                           "protocol": protocol(f), **ctx_labels(f, o)})

    def h_dns(self, f: dict[str, Any], o: dict[str, str]) -> None:
        dns = (f.get("l7") or {}).get("dns")
        if dns is None:
            return
        qtypes = dns.get("qtypes", [])
        if "ignoreaaaa" in o and qtypes == ["AAAA"]:
            return
        base = {"qtypes": ",".join(qtypes), **ctx_labels(f, o)}
        if "query" in o:
            base["query"] = dns.get("query", "")
        ips = str(len(dns.get("ips", [])))
        if f.get("verdict") == "DROPPED":
            self.add("hubble_dns_queries_total", {**base, "rcode": "Policy denied", "ips_returned": ips})
        elif not f.get("is_reply", False):
            self.add("hubble_dns_queries_total", {**base, "rcode": "", "ips_returned": ips})
        else:
            self.add("hubble_dns_responses_total", {**base, "rcode": RCODE.get(dns.get("rcode", 0), ""),
                                                    "ips_returned": ips})
            for rr in dns.get("rrtypes", []):
                self.add("hubble_dns_response_types_total", {**base, "type": rr})

    def h_tcp(self, f: dict[str, Any], o: dict[str, str]) -> None:
        flags = ((f.get("l4") or {}).get("TCP") or {}).get("flags")
        if f.get("verdict") not in ("FORWARDED", "REDIRECTED") or flags is None or "IP" not in f:
            return
        base = {"family": f["IP"].get("ipVersion", "IP_NOT_USED"), **ctx_labels(f, o)}
        if flags.get("FIN"):
            self.add("hubble_tcp_flags_total", {**base, "flag": "FIN"})
        if flags.get("SYN"):
            self.add("hubble_tcp_flags_total", {**base, "flag": "SYN-ACK" if flags.get("ACK") else "SYN"})
        if flags.get("RST"):
            self.add("hubble_tcp_flags_total", {**base, "flag": "RST"})

    def h_icmp(self, f: dict[str, Any], o: dict[str, str]) -> None:
        l4 = f.get("l4") or {}
        for fam, key, family in ((4, "ICMPv4", "IPv4"), (6, "ICMPv6", "IPv6")):
            if key in l4:
                m = l4[key]
                self.add("hubble_icmp_total", {"family": family, "type": ICMP[(fam, m.get("type", 0), m.get("code", 0))],
                                               **ctx_labels(f, o)})

    def h_port_distribution(self, f: dict[str, Any], o: dict[str, str]) -> None:
        l4 = f.get("l4") or {}
        if f.get("verdict") not in ("FORWARDED", "REDIRECTED") or f.get("is_reply") is not False or not l4:
            return
        proto = next(k for k in ("TCP", "UDP", "ICMPv4", "ICMPv6", "SCTP", "VRRP", "IGMP") if k in l4)
        port = str(l4[proto].get("destination_port", 0)) if proto in ("TCP", "UDP", "SCTP") else "0"
        self.add("hubble_port_distribution_total", {"protocol": proto, "port": port, **ctx_labels(f, o)})

    def h_policy(self, f: dict[str, Any], o: dict[str, str]) -> None:
        t = (f.get("event_type") or {}).get("type", 0)
        direction = f.get("traffic_direction", "TRAFFIC_DIRECTION_UNKNOWN").lower()
        action = f.get("verdict", "VERDICT_UNKNOWN").lower()
        if t == 5 and (f.get("source") or {}).get("identity", 0) != 1:
            match = MATCH[f.get("policy_match_type", 0)]
        elif t == 129:
            l7 = f.get("l7") or {}
            match = "l7/" + next((k for k in ("dns", "http", "kafka") if k in l7), "")
        else:
            return
        self.add("hubble_policy_verdicts_total", {"direction": direction, "match": match, "action": action,
                                                  **ctx_labels(f, o)})

    def h_flows_to_world(self, f: dict[str, Any], o: dict[str, str]) -> None:
        l4 = f.get("l4")
        if "reserved:world" not in (f.get("destination") or {}).get("labels", []) or "event_type" not in f or not l4:
            return
        dropped = f.get("verdict") == "DROPPED"
        if dropped and "any-drop" not in o and f.get("drop_reason_desc") != "POLICY_DENIED":
            return
        reply = f.get("is_reply") is True
        if not dropped and reply:
            return
        if "syn-only" in o and (not ((l4.get("TCP") or {}).get("flags") or {}).get("SYN") or reply):
            return
        labels = {"protocol": protocol(f), "verdict": f.get("verdict", "VERDICT_UNKNOWN"), **ctx_labels(f, o)}
        if "port" in o:
            member = next((k for k in ("TCP", "UDP", "SCTP") if k in l4), None)
            labels["port"] = str(l4[member].get("destination_port", 0)) if member else ""
        self.add("hubble_flows_to_world_total", labels)

    def _http(self, f: dict[str, Any], o: dict[str, str], v2: bool) -> None:
        l7 = f.get("l7") or {}
        http = l7.get("http")
        if http is None:
            return
        t = l7.get("type")
        rep = {"EGRESS": "client", "INGRESS": "server"}.get(f.get("traffic_direction", ""), "unknown")
        ctx = ctx_labels(f, o, invert=v2)
        method, proto, status = http.get("method", ""), http.get("protocol", ""), str(http.get("code", 0))
        if t == "REQUEST" and not v2:
            self.add("hubble_http_requests_total", {**ctx, "method": method, "protocol": proto, "reporter": rep})
        if t != "RESPONSE":
            return
        name = "hubble_http_requests_total" if v2 else "hubble_http_responses_total"
        self.add(name, {**ctx, "method": method, "protocol": proto, "status": status, "reporter": rep})
        seconds = int(l7.get("latency_ns", "0")) / 1e9
        self._histogram("hubble_http_request_duration_seconds", {**ctx, "method": method, "reporter": rep}, seconds)

    def _histogram(self, name: str, base: dict[str, str], seconds: float) -> None:
        for b in [*GO_BUCKETS, float("inf")]:
            if seconds <= b:
                le = "+Inf" if b == float("inf") else repr(b)
                self.add(f"{name}_bucket", {**base, "le": le})
        self.add(f"{name}_count", base)
        self.add(f"{name}_sum", base, seconds)

    def h_http(self, f: dict[str, Any], o: dict[str, str]) -> None:
        self._http(f, o, v2=False)

    def h_httpV2(self, f: dict[str, Any], o: dict[str, str]) -> None:
        self._http(f, o, v2=True)

    def h_kafka(self, f: dict[str, Any], o: dict[str, str]) -> None:
        # Cilium kafka/handler.go: requests only, any verdict, the request's own latency
        l7 = f.get("l7") or {}
        kafka = l7.get("kafka")
        if kafka is None or l7.get("type") != "REQUEST":
            return
        rep = {"EGRESS": "client", "INGRESS": "server"}.get(f.get("traffic_direction", ""), "unknown")
        base = {**ctx_labels(f, o), "topic": kafka.get("topic", ""), "api_key": kafka.get("api_key", "")}
        self.add("hubble_kafka_requests_total", {**base, "error_code": str(kafka.get("error_code", 0)),
                                                 "reporter": rep})
        self._histogram("hubble_kafka_request_duration_seconds", {**base, "reporter": rep},
                        int(l7.get("latency_ns", "0")) / 1e9)

    def h_flows_per_pod(self, f: dict[str, Any], o: dict[str, str]) -> None:
        self.add("hubble_flows_per_pod_total", {"protocol": protocol(f), "verdict": f.get("verdict", "VERDICT_UNKNOWN"),
                                                **ctx_labels(f, o)})


def registry_values(reg: CollectorRegistry) -> Values:
    out: Values = defaultdict(float)
    for fam in reg.collect():
        for s in fam.samples:
            if s.name.startswith("hubble_"):
                out[(s.name, tuple(sorted(s.labels.items())))] += s.value
    return out


def assert_same(got: Values, want: Values) -> None:
    # histogram buckets for series never observed, and float sums, need a tolerant compare
    missing = {k: v for k, v in want.items() if abs(got.get(k, 0.0) - v) > 1e-6 * max(1.0, abs(v))}
    extra = {k: v for k, v in got.items() if k not in want and v}
    assert not missing and not extra, f"missing/different: {list(missing.items())[:5]}\n" \
                                      f"got instead: {[(k, got.get(k)) for k in list(missing)[:5]]}\n" \
                                      f"extra: {list(extra.items())[:5]}"


# ---------------------------------------------------------------------------------------- data
def variants(lines: list[bytes]) -> list[bytes]:
    """Real sample flows rewritten into shapes the samples lack: ICMPv6, an HTTP response with a
    trace ID, a flow to a world identity labelled kube-apiserver, a host-originated policy
    verdict, an AAAA-only DNS query, Kafka requests and responses (the HTTP flows with a Kafka
    record). Each is still a flow in Hubble's own JSON form."""
    out = []
    for line in lines:
        obj = orjson.loads(line)
        f = obj.get("flow")
        if not f:
            continue
        l4, l7 = f.get("l4") or {}, f.get("l7") or {}
        if "ICMPv4" in l4:
            g = json.loads(json.dumps(f))
            g["l4"] = {"ICMPv6": {"type": 128 if l4["ICMPv4"].get("type") == 8 else 129}}
            g["IP"]["ipVersion"] = "IPv6"
            out.append(orjson.dumps({**obj, "flow": g}))
        if "http" in l7 and l7.get("type") == "RESPONSE":
            g = json.loads(json.dumps(f))
            g["trace_context"] = {"parent": {"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736"}}
            out.append(orjson.dumps({**obj, "flow": g}))
        if "http" in l7:
            out.append(orjson.dumps({**obj, "flow": kafka_flow(f)}))
        if "dns" in l7 and not f.get("is_reply"):
            g = json.loads(json.dumps(f))
            g["l7"]["dns"]["qtypes"] = ["AAAA"]
            out.append(orjson.dumps({**obj, "flow": g}))
        if (f.get("event_type") or {}).get("type") == 5:
            g = json.loads(json.dumps(f))
            g["source"] = {"identity": 1, "labels": ["reserved:host"]}
            out.append(orjson.dumps({**obj, "flow": g}))
        if "reserved:world" in (f.get("destination") or {}).get("labels", []):
            g = json.loads(json.dumps(f))
            g["destination"]["labels"] = ["reserved:kube-apiserver", "reserved:world"]
            g["verdict"] = "DROPPED"
            g["drop_reason_desc"] = "CT_MAP_INSERTION_FAILED"
            out.append(orjson.dumps({**obj, "flow": g}))
    return out


def kafka_flow(f: dict[str, Any]) -> dict[str, Any]:
    """An HTTP flow as the Kafka exchange it could have been: the same endpoints, direction and
    latency, a Kafka record as Cilium's proxy logs it (protojson omits a zero error_code)."""
    g = json.loads(json.dumps(f))
    http = g["l7"].pop("http")
    kafka: dict[str, Any] = {"api_version": 2, "correlation_id": len(http.get("url", "")),
                             "api_key": "produce" if http.get("method") in ("POST", "PUT") else "fetch",
                             "topic": http.get("url", "").rsplit("/", 1)[-1] or "empire-announce"}
    if http.get("code", 0) >= 400:
        kafka["error_code"] = 29  # TOPIC_AUTHORIZATION_FAILED
    g["l7"]["kafka"] = kafka
    g["Summary"] = f"Kafka {g['l7'].get('type', '').lower()} {kafka['api_key']} topic '{kafka['topic']}'"
    return g


@pytest.fixture(scope="module")
def sample_lines() -> list[bytes]:
    lines: list[bytes] = []
    for path in sorted(SAMPLES_DIR.glob("*.jsonl")):
        lines += [ln for ln in path.read_bytes().splitlines() if ln.strip()]
    assert len(lines) > 50
    return lines + variants(lines)


@pytest.fixture(scope="module")
def lab_lines(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    out = tmp_path_factory.mktemp("lab") / "flows.jsonl"
    simulate(Options(scenarios=["dns-c2:at=0.1,span=60s", "port-scan:at=0.2", "drop-spike:at=0.5,window=30s",
                                "kube-api:at=0.1", "exfiltration:at=0.2", "ip-sweep:at=0.3"],
                     duration_ns=90 * NS, rate=150, seed=3, output=str(out), workers=1))
    lines = out.read_bytes().splitlines()
    assert len(lines) > 5000
    return lines


SPEC_SETS = {
    "default": DEFAULT_HUBBLE_METRICS,
    "alternatives": [
        "dns:query;ignoreAAAA;sourceContext=namespace|pod;destinationContext=ip",
        "drop:sourceContext=namespace;destinationContext=namespace",
        "tcp:sourceContext=pod-short;destinationContext=identity",
        "flow:sourceContext=namespace|pod;destinationContext=dns|ip;"
        "labelsContext=traffic_direction,source_app,destination_app,source_workload_kind",
        "port-distribution:labelsContext=source_pod,destination_pod,destination_workload",
        "icmp:sourceContext=reserved-identity;destinationContext=pod-name",
        "policy:sourceContext=workload|pod;destinationContext=app|reserved-identity|ip",
        "flows-to-world:any-drop;port;syn-only;sourceContext=workload|pod",
        "http:sourceContext=pod;destinationContext=workload-name;labelsContext=source_ip,destination_ip",
        "kafka:sourceContext=namespace|pod;destinationContext=app|ip;labelsContext=traffic_direction,source_pod",
        "flows-per-pod:sourceContext=pod;destinationContext=pod|reserved-identity",
    ],
    "plain": ["dns", "drop", "tcp", "flow", "port-distribution", "icmp", "policy", "flows-to-world", "httpV2",
              "kafka", "flows-per-pod"],
    "directional": [
        "flow:sourceContext=namespace;sourceEgressContext=pod;destinationContext=namespace;"
        "destinationIngressContext=pod-name|reserved-identity",
        "httpV2:exemplars=true;sourceContext=pod;destinationContext=ip;"
        "labelsContext=source_namespace,destination_namespace,traffic_direction",
        "flows-to-world:any-drop",
        "drop:sourceContext=identity",
    ],
}


def run(specs: list[str], lines: list[bytes], chunk: int | None = None) -> tuple[HubbleMetrics, CollectorRegistry]:
    reg = CollectorRegistry()
    hm = HubbleMetrics(specs, reg)
    dec = Decoder(hm.paths)
    step = chunk or len(lines)
    for i in range(0, len(lines), step):
        d = dec.decode_block(b"\n".join(lines[i:i + step]) + b"\n", "<test>", i + 1)
        assert not d.errors, d.errors[:3]
        assert d.table is not None
        hm.observe(d.table)
    return hm, reg


@pytest.mark.parametrize("name", sorted(SPEC_SETS))
def test_samples_match_oracle(name: str, sample_lines: list[bytes]) -> None:
    specs = SPEC_SETS[name]
    oracle = Oracle(specs)
    oracle.feed(sample_lines)
    _, reg = run(specs, sample_lines)
    got = registry_values(reg)
    assert_same(got, oracle.values)
    # the samples exercise every handler of a full set
    names = {k[0] for k in oracle.values}
    if name in ("default", "plain"):
        assert {"hubble_flows_processed_total", "hubble_drop_total", "hubble_dns_queries_total",
                "hubble_dns_responses_total", "hubble_tcp_flags_total", "hubble_icmp_total",
                "hubble_port_distribution_total", "hubble_policy_verdicts_total", "hubble_flows_to_world_total",
                "hubble_http_requests_total"} <= names
    if name in ("alternatives", "plain"):
        assert {"hubble_kafka_requests_total", "hubble_kafka_request_duration_seconds_count",
                "hubble_flows_per_pod_total"} <= names


@pytest.mark.parametrize("name", ["default", "alternatives", "directional"])
def test_lab_flows_match_oracle_in_any_batching(name: str, lab_lines: list[bytes], sample_lines: list[bytes]) -> None:
    lines = lab_lines + sample_lines
    specs = SPEC_SETS[name]
    oracle = Oracle(specs)
    oracle.feed(lines)
    _, one = run(specs, lines)
    _, many = run(specs, lines, chunk=997)
    assert_same(registry_values(one), oracle.values)
    assert_same(registry_values(many), registry_values(one))  # float sums differ in the last bit only
    names = {k[0] for k in oracle.values}
    if name == "default":
        # attack traffic shows up where the shipped alerting rules look for it
        vals = oracle.values
        assert any(k[0] == "hubble_flows_processed_total" and ("destination", "reserved:kube-apiserver") in k[1]
                   and ("source_namespace", "ml-training") in k[1] for k in vals)
        assert any(k[0] == "hubble_flows_to_world_total" and ("source_namespace", "database") in k[1] for k in vals)
        assert "hubble_drop_total" in names and "hubble_dns_responses_total" in names


def test_specific_values(sample_lines: list[bytes]) -> None:
    """A few values checked by hand against the sample files."""
    _, reg = run(["dns:query", "icmp", "drop", "flows-to-world:port"], sample_lines)
    got = registry_values(reg)

    def value(name: str, **labels: str) -> float:
        return got.get((name, tuple(sorted(labels.items()))), 0.0)

    # hubble-otel_basic-sample-icmpv4-flows.jsonl: 18 ICMPv4 flows, echo requests have type 8
    icmp = {k: v for k, v in got.items() if k[0] == "hubble_icmp_total" and ("family", "IPv4") in k[1]}
    assert sum(icmp.values()) == 18
    assert value("hubble_icmp_total", family="IPv4", type="EchoRequest") > 0
    # the docs' exporter sample holds one POLICY_DENIED drop and one INVALID_SOURCE_IP drop (ICMPv6)
    assert value("hubble_drop_total", reason="POLICY_DENIED", protocol="Unknown flow") >= 1
    assert value("hubble_drop_total", reason="INVALID_SOURCE_IP", protocol="Unknown flow") == 1
    nx = [k for k in got if k[0] == "hubble_dns_responses_total" and ("rcode", "Non-Existent Domain") in k[1]]
    assert nx and all(dict(k[1])["query"] for k in nx)


def test_lost_events_are_counted() -> None:
    lines = (SAMPLES_DIR / "cilium-exporter-test_expected_export_events.jsonl").read_bytes().splitlines()
    lines.append(b'{"lost_events":{"source":"PERF_EVENT_RING_BUFFER","num_events_lost":"42","cpu":3},'
                 b'"node_name":"n1","time":"2024-01-01T00:00:00Z"}')
    _, reg = run(["flow"], lines)
    got = registry_values(reg)
    assert got[("hubble_lost_events_total", (("source", "perf_event_ring_buffer"),))] == 42
    assert got[("hubble_lost_events_total", (("source", "unknown_lost_event_source"),))] == 0
    # the one flow of the file (an empty flow) is still a flow
    assert sum(v for k, v in got.items() if k[0] == "hubble_flows_processed_total") == 1


@pytest.mark.parametrize(("spec", "message"), [
    ("nosuch", "unknown metric 'nosuch'"),
    ("dns:querry", "unknown option 'querry' for dns"),
    ("drop:sourceContext=namespace|podd", "unknown context 'podd'"),
    ("flow:labelsContext=source_namespace,source_nope", "unknown label 'source_nope'"),
    ("flow:sourceEgressContext=pod", "needs sourceContext too"),
    ("httpV2:exemplars=yes", "exemplars=true or exemplars=false"),
    ("flows-to-world:port=80", "is a flag"),
    ("nld", "not supported"),
    ("kafka:query", "unknown option 'query' for kafka"),
    ("flows-per-pod:sourceContext=podd", "unknown context 'podd'"),
    (":query", "no metric name"),
])
def test_bad_specs_name_spec_and_option(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)) as err:
        HubbleMetrics([spec], CollectorRegistry())
    assert repr(spec.strip()) in str(err.value) or spec.startswith(":")


def test_conflicting_specs() -> None:
    with pytest.raises(ValueError, match="http and httpV2 cannot be enabled together"):
        HubbleMetrics(["http", "httpV2"], CollectorRegistry())
    with pytest.raises(ValueError, match="already enabled"):
        HubbleMetrics(["dns", "dns:query"], CollectorRegistry())


def test_helm_escaped_commas_and_paths() -> None:
    hm = HubbleMetrics([r"httpV2:exemplars=true;labelsContext=source_ip\,source_namespace"], CollectorRegistry())
    assert {"IP.source", "IP.destination", "source.namespace", "destination.namespace"} <= hm.paths
    assert HubbleMetrics([], CollectorRegistry()).paths == set()


# ------------------------------------------------------- kafka, sctp, flows-per-pod: exact lines
# Hand-written flows in the shape `hubble observe -o json` prints (proto field names, enums by
# name, 64-bit integers as strings, zero values omitted). Endpoints follow Cilium's own kafka
# handler test (pkg/hubble/metrics/kafka/handler_test.go), so the first expected series below
# is the one that test expects from the agent.
SOURCE_EP = {"ID": 1187, "identity": 40521, "namespace": "source-ns",
             "labels": ["k8s:app=sourceapp", "k8s:io.kubernetes.pod.namespace=source-ns"],
             "pod_name": "source-deploy-pod", "workloads": [{"name": "source-deploy", "kind": "Deployment"}]}
DEST_EP = {"ID": 2301, "identity": 28917, "namespace": "destination-ns",
           "labels": ["k8s:app=destinationapp", "k8s:io.kubernetes.pod.namespace=destination-ns"],
           "pod_name": "destination-deploy-pod", "workloads": [{"name": "destination-deploy", "kind": "Deployment"}]}
WORLD_EP = {"identity": 2, "labels": ["reserved:world"]}
NODE = "kind-kind/kind-worker"


def hubble_json(flow: dict[str, Any], second: int = 0) -> bytes:
    t = f"2024-05-06T10:00:{second:02d}.123456789Z"
    return orjson.dumps({"flow": {"time": t, "uuid": f"5f1c3a9e-0d4b-4c1e-9a7e-00000000{second:04d}", **flow,
                                  "node_name": NODE}, "node_name": NODE, "time": t})


def l4_flow(verdict: str, l4: dict[str, Any], src: dict[str, Any] = SOURCE_EP, dst: dict[str, Any] = DEST_EP,
            event: dict[str, int] | None = None, ip_version: str | None = "IPv4", **extra: Any) -> dict[str, Any]:
    """A trace (or drop) event as the threefour parser renders it."""
    f: dict[str, Any] = {"verdict": verdict}
    if ip_version is not None:
        f["IP"] = {"source": "10.244.1.17", "destination": "10.244.2.31", "ipVersion": ip_version}
    f.update({"l4": l4, "source": src, "destination": dst, "Type": "L3_L4",
              "event_type": event or {"type": 4, "sub_type": 0}, **extra})
    return f


def kafka_l7(l7type: str, record: dict[str, Any], direction: str | None = "INGRESS", verdict: str = "FORWARDED",
             latency_ns: int = 0) -> dict[str, Any]:
    """An L7 Kafka event as the proxy's access log turns into a flow."""
    l7: dict[str, Any] = {"type": l7type}
    if latency_ns:
        l7["latency_ns"] = str(latency_ns)
    l7["kafka"] = record
    f: dict[str, Any] = {"verdict": verdict, "IP": {"source": "10.244.1.17", "destination": "10.244.2.31",
                                                    "ipVersion": "IPv4"},
                         "l4": {"TCP": {"source_port": 43122, "destination_port": 9092}},
                         "source": SOURCE_EP, "destination": DEST_EP, "Type": "L7", "l7": l7,
                         "event_type": {"type": 129}}
    if direction is not None:
        f["traffic_direction"] = direction
    f["is_reply"] = l7type == "RESPONSE"
    f["Summary"] = f"Kafka {l7type.lower()} {record.get('api_key', '')} topic '{record.get('topic', '')}'"
    return f


def exposition(specs: list[str], flows: list[dict[str, Any]], prefix: str) -> list[str]:
    """The sample lines of the text exposition whose metric name starts with ``prefix``."""
    _, reg = run(specs, [hubble_json(f, i) for i, f in enumerate(flows)])
    return [ln for ln in generate_latest(reg).decode().splitlines() if ln.startswith(prefix)]


def test_kafka_counts_requests_only() -> None:
    produce_denied = {"error_code": 29, "api_version": 3, "api_key": "produce", "correlation_id": 7,
                      "topic": "deathstar-plans"}
    fetch = {"api_version": 11, "api_key": "fetch", "correlation_id": 8, "topic": "deathstar-plans"}
    flows = [
        # Cilium's test flow: an ingress request with a latency
        kafka_l7("REQUEST", {"api_key": "test-api-key", "topic": "test-topic"}, latency_ns=12345678),
        kafka_l7("REQUEST", fetch, direction="EGRESS"),
        kafka_l7("REQUEST", fetch, direction="EGRESS"),
        # a request the policy denied still counts, with the error code the proxy answered
        kafka_l7("REQUEST", produce_denied, direction="EGRESS", verdict="DROPPED"),
        kafka_l7("REQUEST", {"api_key": "metadata", "topic": "empire-announce"}, direction=None),
        # not counted: responses, samples, other L7 protocols, plain L4 flows to the broker port
        kafka_l7("RESPONSE", {"api_key": "test-api-key", "topic": "test-topic"}, latency_ns=12345678),
        kafka_l7("SAMPLE", fetch, direction="EGRESS"),
        {**kafka_l7("REQUEST", fetch), "l7": {"type": "REQUEST", "http": {"method": "GET", "url": "/",
                                                                          "protocol": "HTTP/1.1"}}},
        l4_flow("FORWARDED", {"TCP": {"source_port": 43122, "destination_port": 9092, "flags": {"SYN": True}}}),
    ]
    spec = "kafka:sourceContext=pod;destinationContext=pod;labelsContext=source_pod,destination_pod"
    # the text format lists labels sorted by name, as the agent's Go client does
    dst = 'destination="destination-ns/destination-deploy-pod",destination_pod="destination-deploy-pod"'
    src = 'source="source-ns/source-deploy-pod",source_pod="source-deploy-pod"'
    assert sorted(exposition([spec], flows, "hubble_kafka_requests_total")) == sorted([
        # Cilium's handler test expects this series from the agent (there printed as `1`)
        f'hubble_kafka_requests_total{{api_key="test-api-key",{dst},error_code="0",reporter="server",{src},'
        f'topic="test-topic"}} 1.0',
        f'hubble_kafka_requests_total{{api_key="fetch",{dst},error_code="0",reporter="client",{src},'
        f'topic="deathstar-plans"}} 2.0',
        f'hubble_kafka_requests_total{{api_key="produce",{dst},error_code="29",reporter="client",{src},'
        f'topic="deathstar-plans"}} 1.0',
        f'hubble_kafka_requests_total{{api_key="metadata",{dst},error_code="0",reporter="unknown",{src},'
        f'topic="empire-announce"}} 1.0',
    ])
    hist = exposition([spec], flows, "hubble_kafka_request_duration_seconds")
    # the buckets Cilium's test expects: 0.012345678 s falls in le=0.025 and above
    test_topic = [ln for ln in hist if 'topic="test-topic"' in ln]
    series = f'reporter="server",{src},topic="test-topic"'
    assert test_topic == [
        *(f'hubble_kafka_request_duration_seconds_bucket{{api_key="test-api-key",{dst},le="{le}",{series}}} {n}'
          for le, n in (("0.005", "0.0"), ("0.01", "0.0"), ("0.025", "1.0"), ("0.05", "1.0"), ("0.1", "1.0"),
                        ("0.25", "1.0"), ("0.5", "1.0"), ("1.0", "1.0"), ("2.5", "1.0"), ("5.0", "1.0"),
                        ("10.0", "1.0"), ("+Inf", "1.0"))),
        f'hubble_kafka_request_duration_seconds_count{{api_key="test-api-key",{dst},{series}}} 1.0',
        f'hubble_kafka_request_duration_seconds_sum{{api_key="test-api-key",{dst},{series}}} 0.012345678',
    ]
    fetch_series = f'api_key="fetch",{dst},reporter="client",{src},topic="deathstar-plans"'
    assert f'hubble_kafka_request_duration_seconds_count{{{fetch_series}}} 2.0' in hist
    assert f'hubble_kafka_request_duration_seconds_sum{{{fetch_series}}} 0.0' in hist
    # one histogram series per topic, api_key and reporter of a counted request: none for the
    # response, the sample or the HTTP request
    assert len([ln for ln in hist if "_count{" in ln]) == 4
    # without context options the label set is just the handler's own
    assert exposition(["kafka"], flows[:1], "hubble_kafka_requests_total") == [
        'hubble_kafka_requests_total{api_key="test-api-key",error_code="0",reporter="server",topic="test-topic"} 1.0']


def test_flows_per_pod() -> None:
    other_pod = {**SOURCE_EP, "pod_name": "source-deploy-pod-2", "ID": 1190}
    flows = [
        l4_flow("FORWARDED", {"TCP": {"source_port": 43122, "destination_port": 8080, "flags": {"SYN": True}}}),
        l4_flow("FORWARDED", {"TCP": {"source_port": 43122, "destination_port": 8080, "flags": {"ACK": True}}}),
        l4_flow("DROPPED", {"UDP": {"source_port": 5353, "destination_port": 53}}, src=other_pod,
                event={"type": 1, "sub_type": 133}, drop_reason=133, drop_reason_desc="POLICY_DENIED"),
        l4_flow("FORWARDED", {"TCP": {"source_port": 43122, "destination_port": 443}}, dst=WORLD_EP),
        kafka_l7("REQUEST", {"api_key": "fetch", "topic": "orders"}),
        # a trace-sock event (type 7): every flow counts, this one as "Unknown flow"
        l4_flow("TRACED", {"TCP": {"source_port": 43122, "destination_port": 8080}}, event={"type": 7},
                ip_version=None),
    ]
    pods = 'destination="destination-ns/destination-deploy-pod",protocol="{}",source="source-ns/source-deploy-pod"'
    assert sorted(exposition(["flows-per-pod:sourceContext=pod;destinationContext=pod"], flows,
                             "hubble_flows_per_pod_total")) == sorted([
        f'hubble_flows_per_pod_total{{{pods.format("TCP")},verdict="FORWARDED"}} 2.0',
        'hubble_flows_per_pod_total{destination="destination-ns/destination-deploy-pod",protocol="UDP",'
        'source="source-ns/source-deploy-pod-2",verdict="DROPPED"} 1.0',
        'hubble_flows_per_pod_total{destination="",protocol="TCP",source="source-ns/source-deploy-pod",'
        'verdict="FORWARDED"} 1.0',
        f'hubble_flows_per_pod_total{{{pods.format("Kafka")},verdict="FORWARDED"}} 1.0',
        f'hubble_flows_per_pod_total{{{pods.format("Unknown flow")},verdict="TRACED"}} 1.0',
    ])
    assert sorted(exposition(["flows-per-pod"], flows, "hubble_flows_per_pod_total")) == sorted([
        'hubble_flows_per_pod_total{protocol="TCP",verdict="FORWARDED"} 3.0',
        'hubble_flows_per_pod_total{protocol="UDP",verdict="DROPPED"} 1.0',
        'hubble_flows_per_pod_total{protocol="Kafka",verdict="FORWARDED"} 1.0',
        'hubble_flows_per_pod_total{protocol="Unknown flow",verdict="TRACED"} 1.0',
    ])


def sctp(chunk_type: str | None, port: int = 38412) -> dict[str, Any]:
    m: dict[str, Any] = {"source_port": 36412, "destination_port": port}
    if chunk_type is not None:
        m["chunk_type"] = chunk_type
    return {"SCTP": m}


def test_sctp_chunk_types() -> None:
    flows = [
        l4_flow("FORWARDED", sctp("INIT")),
        l4_flow("FORWARDED", sctp("INIT")),
        l4_flow("REDIRECTED", sctp("INIT_ACK")),
        l4_flow("FORWARDED", sctp("SHUTDOWN_COMPLETE"), ip_version="IPv6"),
        l4_flow("FORWARDED", sctp("ABORT"), event={"type": 5}),
        # not counted: a DATA chunk (UNSUPPORTED, so absent), an older agent without the field,
        # a drop, a flow without an IP section, TCP
        l4_flow("FORWARDED", sctp(None)),
        l4_flow("FORWARDED", sctp("UNSUPPORTED")),
        l4_flow("DROPPED", sctp("INIT"), event={"type": 1, "sub_type": 133}, drop_reason_desc="POLICY_DENIED"),
        l4_flow("FORWARDED", sctp("INIT"), ip_version=None),
        l4_flow("FORWARDED", {"TCP": {"source_port": 1, "destination_port": 2, "flags": {"SYN": True}}}),
    ]
    assert sorted(exposition(["sctp:sourceContext=namespace;destinationContext=namespace"], flows,
                             "hubble_sctp_chunk_types_total")) == sorted([
        f'hubble_sctp_chunk_types_total{{chunk_type="{chunk}",destination="destination-ns",family="{family}",'
        f'source="source-ns"}} {n}'
        for chunk, family, n in (("INIT", "IPv4", "2.0"), ("INIT_ACK", "IPv4", "1.0"),
                                 ("SHUTDOWN_COMPLETE", "IPv6", "1.0"), ("ABORT", "IPv4", "1.0"))
    ])


# ------------------------------------------------------------------------------ HTTP endpoint
def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def test_metrics_server_endpoints(sample_lines: list[bytes]) -> None:
    specs = ["httpV2:exemplars=true;sourceContext=pod", "drop", "flow"]
    _, reg = run(specs, sample_lines)
    own = OwnMetrics(reg, version="9.9.9")
    own.flows_processed.inc(len(sample_lines))
    own.alerts.labels("kube-api-new-client", "high", "kube-api").inc()
    state = {"ready": False}

    def ready() -> tuple[bool, dict[str, Any]]:
        return state["ready"], {"sources": {"file": "reading"}}

    def health() -> tuple[bool, dict[str, Any]]:
        raise RuntimeError("pipeline thread died")

    with MetricsServer("127.0.0.1:0", reg, health, ready) as srv:
        assert srv.address[0] == "127.0.0.1" and srv.address[1] > 0
        base = f"http://127.0.0.1:{srv.address[1]}"
        code, headers, body = _get(base + "/metrics")
        assert code == 200 and headers["Content-Type"].startswith("text/plain")
        fams = {f.name: f for f in text_string_to_metric_families(body.decode())}
        assert {"hubble_flows_processed", "hubble_drop", "hubble_http_requests", "hubble_lost_events",
                "hubble_http_request_duration_seconds", "flowtrail_alerts", "flowtrail_build_info"} <= set(fams)
        assert not [f for f in fams if f.endswith("_created")]
        text_total = sum(s.value for s in fams["hubble_flows_processed"].samples)
        assert text_total == sum(v for k, v in registry_values(reg).items()
                                 if k[0] == "hubble_flows_processed_total")
        assert 'flowtrail_build_info{python=' in body.decode() and 'version="9.9.9"' in body.decode()
        # OpenMetrics carries the trace-ID exemplars
        code, headers, body = _get(base + "/metrics", {"Accept": "application/openmetrics-text; version=1.0.0"})
        assert code == 200 and "openmetrics" in headers["Content-Type"]
        assert b'# {traceID="4bf92f3577b34da6a3ce929d0e0e4736"}' in body and body.rstrip().endswith(b"# EOF")
        code, headers, body = _get(base + "/metrics?name[]=hubble_drop_total", {"Accept-Encoding": "gzip"})
        assert headers.get("Content-Encoding") == "gzip"
        text = gzip.decompress(body).decode()
        assert "hubble_drop_total{" in text and "hubble_flows_processed_total" not in text
        code, _, body = _get(base + "/readyz")
        assert code == 503 and json.loads(body) == {"status": "fail", "sources": {"file": "reading"}}
        state["ready"] = True
        code, _, body = _get(base + "/readyz")
        assert code == 200 and json.loads(body)["status"] == "ok"
        code, _, body = _get(base + "/healthz")
        assert code == 503 and "pipeline thread died" in json.loads(body)["error"]
        assert _get(base + "/nope")[0] == 404
    with pytest.raises(OSError, match="cannot listen"):
        taken = MetricsServer("127.0.0.1:0", reg, health, ready)
        try:
            MetricsServer(f"127.0.0.1:{taken.address[1]}", reg, health, ready)
        finally:
            taken.close()


@pytest.mark.parametrize("listen", ["9965", "host:port", "[::1:9965", "::1:9965", "127.0.0.1:70000"])
def test_bad_listen_addresses(listen: str) -> None:
    with pytest.raises(ValueError, match="listen address"):
        MetricsServer(listen, CollectorRegistry(), lambda: (True, {}), lambda: (True, {}))


def test_own_metrics_lag() -> None:
    import math
    import time

    reg = CollectorRegistry()
    own = OwnMetrics(reg, process=False)
    lag = reg.get_sample_value("flowtrail_lag_seconds")
    assert lag is not None and math.isnan(lag)
    own.note_flow_time(time.time() - 30)
    own.note_flow_time(time.time() - 300)  # older: ignored
    lag = reg.get_sample_value("flowtrail_lag_seconds")
    assert lag is not None and 29 <= lag < 40
    own.flows_shed.labels("queue_full").inc(5)
    own.export_flows.labels("file", "rate_limited").inc(2)
    assert reg.get_sample_value("flowtrail_flows_shed_total", {"reason": "queue_full"}) == 5
    assert reg.get_sample_value("flowtrail_export_flows_total", {"exporter": "file", "outcome": "rate_limited"}) == 2


def test_decoder_must_project_the_paths(sample_lines: list[bytes]) -> None:
    hm = HubbleMetrics(["flow"], CollectorRegistry())
    d = Decoder(["verdict"]).decode_block(b"\n".join(sample_lines[:5]) + b"\n")
    with pytest.raises(ValueError, match=r"HubbleMetrics\.paths"):
        hm.observe(d.table)


def test_rules_file_is_valid_yaml() -> None:
    import yaml

    rules = yaml.safe_load((Path(__file__).resolve().parents[1] / "deploy" / "prometheus"
                            / "flowtrail-alerts.rules.yaml").read_text())
    alerts = {r["alert"]: r for g in rules["groups"] for r in g["rules"] if "alert" in r}
    for name in ("UnexpectedKubeAPIAccess", "ProductionExternalEgress", "NetworkPolicyDropSpike",
                 "UnexpectedCrossNamespaceFlow"):
        assert name in alerts
        assert alerts[name]["annotations"]["summary"] and alerts[name]["annotations"]["description"]
    for r in alerts.values():
        assert {"summary", "description"} <= set(r["annotations"]) and r["labels"]["severity"]


def test_labels_holding_the_join_separator(lab_lines: list[bytes]) -> None:
    """Label-derived contexts (identity, app, reserved-identity) are computed once per distinct
    label set, found by joining each list with U+001F; a batch where a label holds that character
    must still count each flow under its own labels (the columnar fallback)."""
    lines = list(lab_lines[:4000])
    marked = 0
    for i in range(0, len(lines), 7):
        if b'"k8s:app=' in lines[i]:
            lines[i] = lines[i].replace(b'"k8s:app=', b'"k8s:app=x\\u001f', 1)
            marked += 1
    assert marked > 100
    specs = [*SPEC_SETS["directional"], "tcp:sourceContext=app;destinationContext=identity",
             "policy:sourceContext=app|reserved-identity;destinationContext=identity"]
    oracle = Oracle(specs)
    oracle.feed(lines)
    _, reg = run(specs, lines, chunk=500)
    got = registry_values(reg)
    assert_same(got, oracle.values)
    assert any("\x1f" in v for k in got for _, v in k[1])
