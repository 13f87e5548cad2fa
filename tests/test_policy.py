"""Policy engine: loading, endpoints, evaluation semantics, the conformance corpus, the CLI."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from flowtrail.cli.main import cli
from flowtrail.policy.endpoints import (
    Endpoint,
    from_hubble,
    inventory_from_case,
    inventory_from_objects,
    parse_ip,
)
from flowtrail.policy.evaluate import Connection, Evaluator, HTTPRequest
from flowtrail.policy.load import PolicyLoadError, load_policies, policies_from_objects
from flowtrail.policy.probes import connection, parse_probe
from flowtrail.policy.selectors import FQDNSelector, parse_selector

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO.parent / "shared" / "data" / "netpol-conformance"
CASES = sorted(CORPUS.glob("*.json")) if CORPUS.is_dir() else []


def case_cni(case: dict[str, Any]) -> str:
    return "kubernetes" if case["flavour"] == "k8s-networkpolicy" else "cilium"


def run_case(case: dict[str, Any], cni: str | None = None) -> list[tuple[dict[str, Any], str, str]]:
    inv = inventory_from_case(case)
    ev = Evaluator(policies_from_objects(case["policies"]), cni or case_cni(case), inv)  # type: ignore[arg-type]
    out = []
    for i, p in enumerate(case["probes"]):
        v = ev.evaluate(connection(parse_probe(p, f"probe {i}"), inv))
        assert v.explanation
        out.append((p, v.verdict, v.explanation))
    return out


# ---- the conformance corpus (../shared/data/netpol-conformance) ------------------------------------

@pytest.mark.skipif(not CASES, reason="conformance corpus not present")
@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_conformance_case(path: Path) -> None:
    case = json.loads(path.read_text())
    inv = inventory_from_case(case)
    ev = Evaluator(policies_from_objects(case["policies"]), case_cni(case), inv)  # type: ignore[arg-type]
    wrong = []
    for i, p in enumerate(case["probes"]):
        v = ev.evaluate(connection(parse_probe(p, f"probe {i}"), inv))
        if v.verdict != p["expected"]:
            wrong.append(f"{p['from']} -> {p['to']} {p['port']}/{p['protocol']}: got {v.verdict}: {v.explanation}")
        detail = p.get("expected_detail") or {}
        if "drop_reason_desc" in detail and v.verdict == "deny":
            # Hubble-level expectation: which direction dropped it and whether a deny rule matched
            assert (v.drop_reason, v.denied_at) == (detail["drop_reason_desc"], detail["direction"].lower()), p
        if detail.get("layer") == "L7" and p["expected"] == "deny":
            assert v.denied_at == "l7", p
    assert not wrong, "\n".join(wrong)


@pytest.mark.skipif(not CASES, reason="conformance corpus not present")
def test_conformance_cli_case_option() -> None:
    runner = CliRunner()
    for path in [p for p in CASES if p.stem.startswith(("cilium-09", "k8s-e2e-13", "npa-03"))]:
        res = runner.invoke(cli, ["policy", "check", "--case", str(path), "-o", "json"])
        assert res.exit_code == 0, res.output
        lines = [json.loads(x) for x in res.stdout.splitlines()]
        probes = json.loads(path.read_text())["probes"]
        assert [x["verdict"] for x in lines] == [p["expected"] for p in probes]
        assert all(x["as_expected"] and x["explanation"] for x in lines)


@pytest.mark.skipif(not CASES, reason="conformance corpus not present")
def test_conformance_cli_separate_files(tmp_path: Path) -> None:
    path = next(p for p in CASES if p.stem.startswith("k8s-e2e-08"))
    case = json.loads(path.read_text())
    pol = tmp_path / "policies.yaml"
    pol.write_text(yaml.safe_dump_all(case["policies"]))
    probes = tmp_path / "probes.jsonl"
    probes.write_text("".join(json.dumps({k: p[k] for k in ("from", "to", "port", "protocol")}) + "\n"
                              for p in case["probes"]))
    res = CliRunner().invoke(cli, ["policy", "check", "--policies", str(pol), "--inventory", str(path),
                                   "--probes", str(probes), "-o", "json"])
    assert res.exit_code == 0, res.output
    got = [json.loads(x)["verdict"] for x in res.stdout.splitlines()]
    assert got == [p["expected"] for p in case["probes"]]
    # a single probe from flags, text output
    p = case["probes"][0]
    res = CliRunner().invoke(cli, ["policy", "check", "--policies", str(pol), "--inventory", str(path),
                                   "--from", p["from"], "--to", p["to"], "--port", str(p["port"])])
    assert res.exit_code == 0, res.output
    assert res.stdout.startswith(p["expected"].upper())


def test_cli_reports_mismatch_with_exit_status(tmp_path: Path) -> None:
    case = cilium_case([{"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
                         "metadata": {"name": "deny", "namespace": "cilium-test"},
                         "spec": {"endpointSelector": {}, "ingress": [{}]}}],
                       [{"from": "cilium-test/client", "to": "cilium-test/echo-same-node", "port": 8080,
                         "protocol": "TCP", "expected": "allow"}])
    f = tmp_path / "case.json"
    f.write_text(json.dumps(case))
    res = CliRunner().invoke(cli, ["policy", "check", "--case", str(f)])
    assert res.exit_code == 1
    assert "MISMATCH" in res.stdout and "0/1 probes as expected" in res.stderr


# ---- Cilium scenarios beyond the local corpus (cilium-cli connectivity tests) ---------------------

def cilium_case(policies: list[dict[str, Any]], probes: list[dict[str, Any]]) -> dict[str, Any]:
    pods = []
    for name, labels, ip, node in [
        ("client", {"name": "client", "kind": "client"}, "10.0.1.10", "node-1"),
        ("client2", {"name": "client2", "kind": "client", "other": "client"}, "10.0.1.11", "node-1"),
        ("client3", {"name": "client3", "kind": "client", "other": "client-other-node"}, "10.0.2.12", "node-2"),
        ("echo-same-node", {"name": "echo-same-node", "kind": "echo", "other": "echo"}, "10.0.1.20", "node-1"),
        ("echo-other-node", {"name": "echo-other-node", "kind": "echo", "first": "echo"}, "10.0.2.21", "node-2"),
    ]:
        ports = [{"name": "http-8080", "port": 8080, "protocol": "TCP"}] if "echo" in name else []
        pods.append({"namespace": "cilium-test", "name": name, "labels": labels, "ip": ip, "node": node,
                     "ports": ports})
    pods.append({"namespace": "kube-system", "name": "coredns", "labels": {"k8s-app": "kube-dns"},
                 "ip": "10.0.1.53", "node": "node-1",
                 "ports": [{"name": "dns", "port": 53, "protocol": "UDP"}]})
    return {"flavour": "cilium", "namespaces": {"cilium-test": {}, "kube-system": {}}, "pods": pods,
            "policies": policies, "probes": probes}


ALLOW_ALL = [
    {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
     "metadata": {"name": "allow-all-egress", "namespace": "cilium-test"},
     "spec": {"endpointSelector": {}, "egress": [{"toEndpoints": [{}]}, {"toCIDR": ["0.0.0.0/0"]}]}},
    {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
     "metadata": {"name": "allow-all-ingress", "namespace": "cilium-test"},
     "spec": {"endpointSelector": {}, "ingress": [{"fromEndpoints": [{}]}]}},
]


def probe(src: str, dst: str, port: int | None = 8080, proto: str = "TCP", **kw: Any) -> dict[str, Any]:
    return {"from": src, "to": dst, "port": port, "protocol": proto, **kw}


def verdicts(case: dict[str, Any], cni: str | None = None) -> list[str]:
    return [v for _, v, _ in run_case(case, cni)]


def test_egress_deny_beats_allow_all_and_leaves_icmp() -> None:
    deny = {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
            "metadata": {"name": "client-egress-to-echo-deny", "namespace": "cilium-test"},
            "spec": {"endpointSelector": {"matchLabels": {"kind": "client"}}, "egressDeny": [{
                "toPorts": [{"ports": [{"port": "8080", "protocol": "TCP"}]}],
                "toEndpoints": [{"matchLabels": {"io.kubernetes.pod.namespace": "cilium-test", "kind": "echo"},
                                 "matchExpressions": [{"key": "io.cilium.k8s.policy.cluster",
                                                       "operator": "Exists"}]}]}]}}
    case = cilium_case([*ALLOW_ALL, deny], [
        probe("cilium-test/client", "cilium-test/echo-same-node"),
        probe("cilium-test/client3", "cilium-test/echo-other-node"),
        probe("cilium-test/client", "cilium-test/client2", None, "ICMP", icmp_type=8),
    ])
    res = run_case(case)
    assert [v for _, v, _ in res] == ["deny", "deny", "allow"]
    assert "egressDeny[0]" in res[0][2]


def test_to_entities_world_and_cluster() -> None:
    world = {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
             "metadata": {"name": "client-egress-to-entities-world", "namespace": "cilium-test"},
             "spec": {"endpointSelector": {"matchLabels": {"kind": "client"}}, "egress": [
                 {"toEntities": ["world"], "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}]}]},
                 {"toEndpoints": [{"matchExpressions": [
                     {"key": "k8s-app", "operator": "In", "values": ["kube-dns"]},
                     {"key": "io.kubernetes.pod.namespace", "operator": "In", "values": ["kube-system"]}]}],
                  "toPorts": [{"ports": [{"port": "53", "protocol": "UDP"}]}]}]}}
    case = cilium_case([world], [
        probe("cilium-test/client", "1.1.1.1", 80, fqdn="one.one.one.one"),
        probe("cilium-test/client", "1.1.1.1", 443),
        probe("cilium-test/client", "kube-system/coredns", 53, "UDP"),
        probe("cilium-test/client", "cilium-test/echo-same-node"),
    ])
    assert verdicts(case) == ["allow", "deny", "allow", "deny"]
    cluster = {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
               "metadata": {"name": "entity-cluster", "namespace": "cilium-test"},
               "spec": {"endpointSelector": {"matchLabels": {"kind": "client"}},
                        "egress": [{"toEntities": ["cluster"]}]}}
    case = cilium_case([cluster], [probe("cilium-test/client", "cilium-test/echo-same-node"),
                                   probe("cilium-test/client", "kube-system/coredns", 53, "UDP"),
                                   probe("cilium-test/client", "1.1.1.1", 443)])
    assert verdicts(case) == ["allow", "allow", "deny"]


def test_deny_only_policy_puts_direction_in_default_deny() -> None:
    deny = {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
            "metadata": {"name": "client-egress-to-cidr-deny", "namespace": "cilium-test"},
            "spec": {"endpointSelector": {"matchLabels": {"kind": "client"}},
                     "egressDeny": [{"toCIDRSet": [{"cidr": "1.0.0.0/8", "except": ["1.1.1.1/32"]}]}]}}
    case = cilium_case([deny], [probe("cilium-test/client", "1.0.0.1", 443), probe("cilium-test/client", "1.1.1.1", 443)])
    inv = inventory_from_case(case)
    ev = Evaluator(policies_from_objects(case["policies"]), "cilium", inv)
    a, b = (ev.evaluate(connection(parse_probe(p, "p"), inv)) for p in case["probes"])
    assert (a.verdict, a.drop_reason, a.denied_at) == ("deny", "POLICY_DENY", "egress")
    assert (b.verdict, b.drop_reason, b.denied_at) == ("deny", "POLICY_DENIED", "egress")
    assert "isolated by CiliumNetworkPolicy cilium-test/client-egress-to-cidr-deny" in b.explanation


def test_knp_on_cilium_endport_and_derived_labels() -> None:
    knp = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
           "metadata": {"name": "port-range", "namespace": "cilium-test"},
           "spec": {"podSelector": {"matchExpressions": [{"key": "other", "operator": "Exists"}]},
                    "policyTypes": ["Egress"],
                    "egress": [{"to": [{"podSelector": {"matchLabels": {"kind": "echo"}, "matchExpressions": [
                        {"key": "io.cilium.k8s.policy.cluster", "operator": "Exists"}]}}],
                        "ports": [{"protocol": "TCP", "port": 4096, "endPort": 8191}]}]}}
    case = cilium_case([knp], [probe("cilium-test/client2", "cilium-test/echo-same-node"),
                               probe("cilium-test/client2", "cilium-test/echo-same-node", 8192),
                               probe("cilium-test/client", "cilium-test/echo-same-node", 9000),
                               probe("cilium-test/client2", "1.1.1.1", 443)])
    assert verdicts(case) == ["allow", "deny", "allow", "deny"]


def test_ipblock_pod_ips_depend_on_cni() -> None:
    knp = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
           "metadata": {"name": "to-cidr", "namespace": "cilium-test"},
           "spec": {"podSelector": {"matchLabels": {"kind": "client"}}, "policyTypes": ["Egress"],
                    "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.0.2.0/24"]}},
                                       {"ipBlock": {"cidr": "1.0.0.0/8", "except": ["1.0.0.1/32"]}}]}]}}
    case = cilium_case([knp], [probe("cilium-test/client", "cilium-test/echo-same-node"),
                               probe("cilium-test/client", "cilium-test/echo-other-node"),
                               probe("cilium-test/client", "1.1.1.1", 443),
                               probe("cilium-test/client", "1.0.0.1", 443)])
    assert verdicts(case, "kubernetes") == ["allow", "deny", "allow", "deny"]
    # Cilium: CIDR selectors never select pods (policy-reference.md §1.4)
    assert verdicts(case, "cilium") == ["deny", "deny", "allow", "deny"]


def test_fqdn_and_dns_rules() -> None:
    pol = {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
           "metadata": {"name": "fqdn", "namespace": "cilium-test"},
           "spec": {"endpointSelector": {"matchLabels": {"kind": "client"}}, "egress": [
               {"toEndpoints": [{"matchLabels": {"k8s:io.kubernetes.pod.namespace": "kube-system",
                                                 "k8s:k8s-app": "kube-dns"}}],
                "toPorts": [{"ports": [{"port": "53", "protocol": "ANY"}],
                             "rules": {"dns": [{"matchPattern": "*"}]}}]},
               {"toFQDNs": [{"matchName": "one.one.one.one"}, {"matchPattern": "*.cilium.io"}],
                "toPorts": [{"ports": [{"port": "443"}]}]}]}}
    case = cilium_case([pol], [
        probe("cilium-test/client", "1.1.1.1", 443, fqdn="one.one.one.one"),
        probe("cilium-test/client", "1.1.1.1", 443),
        probe("cilium-test/client", "104.198.14.52", 443, fqdn="docs.cilium.io"),
        probe("cilium-test/client", "104.198.14.52", 443, fqdn="a.docs.cilium.io"),
        probe("cilium-test/client", "1.1.1.1", 80, fqdn="one.one.one.one"),
        probe("cilium-test/client", "kube-system/coredns", 53, "UDP", fqdn="example.com"),
    ])
    assert verdicts(case) == ["allow", "deny", "allow", "deny", "deny", "allow"]


def test_l7_http_rules_and_l4_only_rule_widening() -> None:
    rule = {"fromEndpoints": [{"matchLabels": {"kind": "client"}}],
            "toPorts": [{"ports": [{"port": "8080", "protocol": "TCP"}],
                         "rules": {"http": [{"method": "GET", "path": "/public"},
                                            {"method": "POST", "path": "/api/.*",
                                             "headers": ["X-Token: 42"]}]}}]}
    pol = {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
           "metadata": {"name": "l7", "namespace": "cilium-test"},
           "spec": {"endpointSelector": {"matchLabels": {"kind": "echo"}}, "ingress": [rule]}}
    ps = policies_from_objects([pol])
    inv = inventory_from_case(cilium_case([], []))
    ev = Evaluator(ps, "cilium", inv)
    src, dst = inv.resolve("cilium-test/client"), inv.resolve("cilium-test/echo-same-node")

    def http(method: str, path: str, headers: tuple[tuple[str, str], ...] = ()) -> str:
        return ev.evaluate(Connection(src, dst, "TCP", 8080, http=HTTPRequest(method, path, "", headers))).verdict
    assert http("GET", "/public") == "allow"
    assert http("GET", "/public/x") == "deny"  # regexes match the whole path
    assert http("POST", "/api/v1") == "deny"
    assert http("POST", "/api/v1", (("x-token", "42"),)) == "allow"
    # an L4-only allow for the same port lets every request through
    wide = json.loads(json.dumps(pol))
    wide["metadata"]["name"] = "l4"
    wide["spec"]["ingress"] = [{"fromEndpoints": [{}], "toPorts": [{"ports": [{"port": "8080"}]}]}]
    ev = Evaluator(policies_from_objects([pol, wide]), "cilium", inv)
    assert ev.evaluate(Connection(src, dst, "TCP", 8080, http=HTTPRequest("DELETE", "/x"))).verdict == "allow"


def test_ccnp_scope_and_namespace_scoping() -> None:
    ccnp = {"apiVersion": "cilium.io/v2", "kind": "CiliumClusterwideNetworkPolicy", "metadata": {"name": "cw"},
            "spec": {"endpointSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
                     "ingress": [{"fromEndpoints": [{"matchLabels": {"kind": "client"}}]}]}}
    cnp = {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
           "metadata": {"name": "ns", "namespace": "kube-system"},
           "spec": {"endpointSelector": {}, "egress": [{"toEndpoints": [{"matchLabels": {"kind": "client"}}]}]}}
    case = cilium_case([ccnp, cnp], [probe("cilium-test/client", "kube-system/coredns", 53, "UDP"),
                                     probe("cilium-test/echo-same-node", "kube-system/coredns", 53, "UDP"),
                                     probe("kube-system/coredns", "cilium-test/client", 80)])
    # the CCNP's fromEndpoints spans namespaces; the CNP's toEndpoints is pinned to kube-system
    assert verdicts(case) == ["allow", "deny", "deny"]


def test_self_and_node_local_traffic() -> None:
    case = cilium_case([{"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
                         "metadata": {"name": "d", "namespace": "cilium-test"},
                         "spec": {"endpointSelector": {}, "ingress": [{}]}}], [])
    inv = inventory_from_case(case)
    inv.node_ips[parse_ip("192.168.0.1")] = "node-1"  # type: ignore[index]
    ev = Evaluator(policies_from_objects(case["policies"]), "cilium", inv)
    echo = inv.resolve("cilium-test/echo-same-node")
    assert ev.evaluate(Connection(echo, echo, "TCP", 8080)).verdict == "allow"
    local = inv.endpoint_for_ip(parse_ip("192.168.0.1"), "node-1")  # type: ignore[arg-type]
    remote = inv.endpoint_for_ip(parse_ip("192.168.0.1"), "node-2")  # type: ignore[arg-type]
    v = ev.evaluate(Connection(local, echo, "TCP", 8080))
    assert v.verdict == "allow" and "own node" in v.explanation
    other = inv.resolve("cilium-test/echo-other-node")
    assert ev.evaluate(Connection(remote, other, "TCP", 8080)).verdict == "deny"


# ---- loading ------------------------------------------------------------------------------------

NP_YAML = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: egress-only, namespace: a}
spec:
  podSelector: {}
  egress:
  - to: [{namespaceSelector: {matchLabels: {team: b}}}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: junk}
---
apiVersion: v1
kind: List
items:
- apiVersion: networking.k8s.io/v1
  kind: NetworkPolicy
  metadata: {name: ingress-default, namespace: a}
  spec:
    podSelector: {matchLabels: {app: x}}
    ingress: [{ports: [{port: 80}]}]
"""


def test_load_multidoc_list_defaulting_and_notes(tmp_path: Path) -> None:
    d = tmp_path / "pols"
    d.mkdir()
    (d / "a.yaml").write_text(NP_YAML)
    (d / "b.json").write_text(json.dumps([ALLOW_ALL[0]]))
    (d / "README.txt").write_text("not a policy")
    ps = load_policies([str(d)])
    by_name = {p.ref.name: p for p in ps.policies}
    assert set(by_name) == {"egress-only", "ingress-default", "allow-all-egress"}
    # policyTypes defaulting: egress rules present -> Ingress and Egress (§1.2)
    assert by_name["egress-only"].isolates == {"ingress", "egress"}
    assert by_name["ingress-default"].isolates == {"ingress"}
    port = by_name["ingress-default"].rules[0].ports[0].ports[0]  # type: ignore[index]
    assert (port.protocol, port.port) == ("TCP", 80)
    assert any("skipped ConfigMap junk" in n for n in ps.notes)


@pytest.mark.parametrize("spec, message", [
    ({"podSelector": {}, "ingress": [{"from": [{"podSelecter": {}}]}]}, "podSelecter"),
    ({"podSelector": {}, "ingress": [{"ports": [{"port": "80"}]}]}, "string of digits"),
    ({"podSelector": {}, "ingress": [{"ports": [{"port": "http", "endPort": 90}]}]}, "endPort needs a numeric"),
    ({"podSelector": {}, "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["11.0.0.0/8"]}}]}]},
     "not inside cidr"),
    ({"podSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}}, "needs values"),
])
def test_load_errors_name_file_and_object(tmp_path: Path, spec: dict[str, Any], message: str) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text(yaml.safe_dump({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                                 "metadata": {"name": "bad", "namespace": "n"}, "spec": spec}))
    with pytest.raises(PolicyLoadError) as exc:
        load_policies([str(f)])
    text = str(exc.value)
    assert str(f) in text and "NetworkPolicy n/bad" in text and message in text


def test_load_cilium_validation(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump_all([
        {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy", "metadata": {"name": "x", "namespace": "n"},
         "spec": {"endpointSelector": {}, "ingress": []}},
        {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy", "metadata": {"name": "y", "namespace": "n"},
         "spec": {"endpointSelector": {}, "egress": [{"toFQDNs": [{"matchName": "a.b"}], "toCIDR": ["1.1.1.1/32"]}]}},
        {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy", "metadata": {"name": "z", "namespace": "n"},
         "spec": {"endpointSelector": {}, "egress": [{"toEndpoint": [{}]}]}},
    ]))
    with pytest.raises(PolicyLoadError) as exc:
        load_policies([str(f)])
    errs = exc.value.errors
    assert any("(document 1)" in e and "CiliumNetworkPolicy n/x" in e and "at least one" in e for e in errs)
    assert any("CiliumNetworkPolicy n/y" in e and "toFQDNs cannot be combined" in e for e in errs)
    assert any("CiliumNetworkPolicy n/z" in e and "toEndpoint" in e for e in errs)


def test_cilium_empty_rule_vs_k8s_empty_rule() -> None:
    cnp = policies_from_objects([{"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
                                  "metadata": {"name": "c", "namespace": "n"},
                                  "spec": {"endpointSelector": {}, "ingress": [{}]}}]).policies[0]
    assert cnp.isolates == {"ingress"} and cnp.rules[0].peers == ()
    np_ = policies_from_objects([{"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                                  "metadata": {"name": "k", "namespace": "n"},
                                  "spec": {"podSelector": {}, "ingress": [{}]}}]).policies[0]
    assert np_.rules[0].peers is None and np_.rules[0].ports is None


# ---- selectors ------------------------------------------------------------------------------------

def test_selector_operators() -> None:
    sel = parse_selector({"matchLabels": {"app": "web"}, "matchExpressions": [
        {"key": "tier", "operator": "NotIn", "values": ["db"]},
        {"key": "env", "operator": "Exists"}, {"key": "legacy", "operator": "DoesNotExist"}]}, "s")
    assert sel.matches_plain({"app": "web", "env": "prod"})
    assert sel.matches_plain({"app": "web", "env": "prod", "tier": "fe"})
    assert not sel.matches_plain({"app": "web", "env": "prod", "tier": "db"})
    assert not sel.matches_plain({"app": "web"})
    assert not sel.matches_plain({"app": "web", "env": "x", "legacy": "1"})
    assert parse_selector({}, "s").matches_plain({})


@pytest.mark.parametrize("pattern, name, ok", [
    ("*.cilium.io", "www.cilium.io", True), ("*.cilium.io", "cilium.io", False),
    ("*.cilium.io", "a.b.cilium.io", False), ("*cilium.io", "cilium.io", True),
    ("*cilium.io", "subcilium.io", True), ("*cilium.io", "www.cilium.io", False),
    ("sub*.cilium.io", "subdomain.cilium.io", True), ("**.cilium.io", "app.cilium.io", True),
    ("**.cilium.io", "test.app.cilium.io", True), ("**.cilium.io", "cilium.io", False),
    ("*", "anything.example.com.", True), ("CILIUM.io", "cilium.IO.", True),
])
def test_fqdn_patterns(pattern: str, name: str, ok: bool) -> None:
    assert FQDNSelector(match_pattern=pattern).matches(name) is ok


# ---- endpoints ------------------------------------------------------------------------------------

def test_endpoint_from_hubble_labels() -> None:
    ep = from_hubble({"identity": 25339, "namespace": "bookinfo", "pod_name": "reviews-v1-x",
                      "labels": ["k8s:app=reviews", "k8s:io.cilium.k8s.namespace.labels.istio-injection=enabled",
                                 "k8s:io.cilium.k8s.policy.cluster=default",
                                 "k8s:io.cilium.k8s.policy.serviceaccount=bookinfo-reviews",
                                 "k8s:io.kubernetes.pod.namespace=bookinfo"]}, "10.0.2.16")
    assert ep.is_pod and ep.labels == {"app": "reviews"} and ep.service_account == "bookinfo-reviews"
    assert ep.ns_labels == {"istio-injection": "enabled", "kubernetes.io/metadata.name": "bookinfo"}
    host = from_hubble({"identity": 1, "labels": ["reserved:host"]}, "10.0.2.1")
    assert host.kind == "reserved" and "cluster" in host.all_entities()
    world = from_hubble({"identity": 2, "labels": ["reserved:world"]}, "8.8.8.8")
    assert world.kind == "external" and {"world", "world-ipv4", "all"} <= world.all_entities()
    api = from_hubble({"identity": 7, "labels": ["reserved:kube-apiserver"]}, "10.0.0.1")
    assert "kube-apiserver" in api.all_entities() and "cluster" in api.all_entities()


def test_kubectl_inventory_named_ports_and_host_network() -> None:
    items = [
        {"kind": "Namespace", "metadata": {"name": "shop", "labels": {"team": "a"}}},
        {"kind": "Pod", "metadata": {"name": "web-1", "namespace": "shop", "labels": {"app": "web"}},
         "spec": {"nodeName": "n1", "containers": [{"ports": [{"name": "http", "containerPort": 8080}]}]},
         "status": {"podIP": "10.1.0.5", "hostIP": "192.168.1.1", "podIPs": [{"ip": "10.1.0.5"}]}},
        {"kind": "Pod", "metadata": {"name": "agent", "namespace": "shop", "labels": {"app": "agent"}},
         "spec": {"nodeName": "n1", "hostNetwork": True}, "status": {"podIP": "192.168.1.1"}},
        {"kind": "Service", "metadata": {"name": "web", "namespace": "shop"},
         "spec": {"selector": {"app": "web"}, "clusterIP": "10.96.0.10"}},
    ]
    inv = inventory_from_objects(items, "inv.json")
    web = inv.resolve("shop/web-1")
    assert web.ports and web.ports[0].name == "http" and web.ports[0].protocol == "TCP"
    assert web.ns_labels == {"team": "a", "kubernetes.io/metadata.name": "shop"}
    assert inv.resolve("192.168.1.1", "n1").entities == {"host"}
    assert inv.resolve("192.168.1.1", "n2").entities == {"remote-node"}
    assert inv.resolve("10.1.0.5") is web
    np_ = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "p", "namespace": "shop"},
           "spec": {"podSelector": {}, "ingress": [{"ports": [{"port": "http"}]}]}}
    ev = Evaluator(policies_from_objects([np_]), "kubernetes", inv)
    outside = Endpoint("external", parse_ip("8.8.8.8"))
    assert ev.evaluate(Connection(outside, web, "TCP", 8080)).verdict == "allow"
    assert ev.evaluate(Connection(outside, web, "TCP", 8081)).verdict == "deny"
    # the same pod seen only in a flow (no container ports) gets them from the inventory
    bare = from_hubble({"namespace": "shop", "pod_name": "web-1", "labels": ["k8s:app=web"]}, "10.1.0.5")
    assert bare.ports is None and inv.enrich(bare).ports == web.ports


# ---- audit and whatif (flows replayed through the CLI) ---------------------------------------------

def hubble_flow(uuid: str, src: tuple[str, str, str], dst: tuple[str, str, str], port: int, verdict: str,
                direction: str, reply: bool | None = False, drop: str | None = None, t: int = 0) -> str:
    def ep(ns: str, pod: str, app: str) -> dict[str, Any]:
        return {"identity": 1000 + len(pod), "namespace": ns, "pod_name": pod,
                "labels": [f"k8s:app={app}", f"k8s:io.kubernetes.pod.namespace={ns}",
                           f"k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name={ns}"],
                "workloads": [{"name": app, "kind": "Deployment"}]}
    flow: dict[str, Any] = {
        "time": f"2026-01-01T00:00:{t:02d}Z", "uuid": uuid, "verdict": verdict,
        "IP": {"source": "10.0.0.1" if src[1] == "a-1" else "10.0.0.2",
               "destination": "10.0.0.2" if dst[1] == "b-1" else "10.0.0.1", "ipVersion": "IPv4"},
        "l4": {"TCP": {"source_port": 40000, "destination_port": port, "flags": {"SYN": True}}},
        "source": ep(*src), "destination": ep(*dst), "Type": "L3_L4", "traffic_direction": direction,
        "event_type": {"type": 1 if verdict == "DROPPED" else 4}}
    if reply is not None:
        flow["is_reply"] = reply
    if drop:
        flow["drop_reason_desc"] = drop
    return json.dumps({"flow": flow, "time": flow["time"]}) + "\n"


A = ("x", "a-1", "a")
B = ("x", "b-1", "b")
DENY_A_INGRESS = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                  "metadata": {"name": "deny-a", "namespace": "x"},
                  "spec": {"podSelector": {"matchLabels": {"app": "a"}}, "policyTypes": ["Ingress"]}}
ALLOW_B = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
           "metadata": {"name": "allow-b", "namespace": "x"},
           "spec": {"podSelector": {"matchLabels": {"app": "b"}},
                    "ingress": [{"from": [{"podSelector": {}}], "ports": [{"port": 80}, {"port": 9999}]}]}}


def write_flows(tmp_path: Path) -> Path:
    f = tmp_path / "flows.jsonl"
    f.write_text(
        hubble_flow("u1", B, A, 80, "FORWARDED", "INGRESS", t=1)          # planted bypass
        + hubble_flow("u2", B, A, 80, "FORWARDED", "INGRESS", t=5)
        + hubble_flow("u3", A, B, 80, "FORWARDED", "INGRESS", reply=True)  # a reply: not judged
        + hubble_flow("u4", A, B, 80, "DROPPED", "INGRESS", None, "POLICY_DENIED", t=2)  # unexpected drop
        + hubble_flow("u5", A, B, 81, "DROPPED", "INGRESS", None, "POLICY_DENIED", t=3)  # expected drop
        + hubble_flow("u6", B, A, 81, "AUDIT", "INGRESS", t=4)
        + hubble_flow("u7", B, A, 80, "FORWARDED", "EGRESS", t=6))   # egress side only: not a bypass
    return f


def test_audit_reports_bypass_drops_audit_and_coverage(tmp_path: Path) -> None:
    pol = tmp_path / "p.yaml"
    pol.write_text(yaml.safe_dump_all([DENY_A_INGRESS, ALLOW_B]))
    res = CliRunner().invoke(cli, ["policy", "audit", "--policies", str(pol), "--input-file",
                                   str(write_flows(tmp_path)), "-o", "json", "--workers", "1"])
    assert res.exit_code == 0, res.output
    out = [json.loads(x) for x in res.stdout.splitlines()]
    by_type: dict[str, list[dict[str, Any]]] = {}
    for o in out:
        by_type.setdefault(o["type"], []).append(o)
    (bypass,) = by_type["bypass"]
    assert (bypass["src"], bypass["dst"], bypass["port"], bypass["count"]) == ("x/b", "x/a", 80, 2)
    assert bypass["example_uuids"] == ["u1", "u2"]
    assert bypass["first_seen"] == "2026-01-01T00:00:01.000000000Z"
    assert bypass["last_seen"] == "2026-01-01T00:00:05.000000000Z"
    assert "NetworkPolicy x/deny-a" in bypass["explanation"]
    (drop,) = by_type["unexpected-drop"]
    assert (drop["src"], drop["dst"], drop["port"], drop["example_uuids"]) == ("x/a", "x/b", 80, ["u4"])
    assert "allow-b spec.ingress[0]" in drop["explanation"]
    (audit,) = by_type["audit-would-drop"]
    assert audit["example_uuids"] == ["u6"] and audit["policy_verdict"] == "deny"
    unselected = {(o["direction"], o["workload"]) for o in by_type["unselected"]}
    assert unselected == {("egress", "x/a"), ("egress", "x/b")}
    assert by_type.get("unused-rule") is None  # allow-b ingress[0] was used by u4
    text = CliRunner().invoke(cli, ["policy", "audit", "--policies", str(pol), str(write_flows(tmp_path)),
                                    "--workers", "1"])
    assert "BYPASS" in text.stdout and "bypass" in text.stdout


def test_whatif_reports_breakage_and_new_allows(tmp_path: Path) -> None:
    pol = tmp_path / "candidate.yaml"
    pol.write_text(yaml.safe_dump_all([DENY_A_INGRESS, {**ALLOW_B, "spec": {**ALLOW_B["spec"], "ingress": [
        {"from": [{"podSelector": {}}], "ports": [{"port": 81}]}]}}]))
    res = CliRunner().invoke(cli, ["policy", "whatif", "--policies", str(pol), "--input-file",
                                   str(write_flows(tmp_path)), "-o", "json", "--workers", "1"])
    assert res.exit_code == 0, res.output
    out = [json.loads(x) for x in res.stdout.splitlines()]
    newly = [o for o in out if o["type"] == "newly-allowed"]
    assert {(o["dst"], o["port"]) for o in newly} == {("x/b", 81)}
    (breaks,) = [o for o in out if o["type"] == "breaks"]
    assert (breaks["src"], breaks["dst"], breaks["port"], breaks["count"]) == ("x/b", "x/a", 80, 3)
    assert out[-1]["type"] == "summary" and out[-1]["breaks"] == 3


# ---- the replay shares verdicts between pods of one identity: reports as if it did not -----------

# the database policy the demo cluster means to enforce (frontend/web is not among its clients:
# the policy-gap scenario plants that bypass), plus constructs whose verdicts depend on more than
# the endpoints' identities: ipBlock over the pod network (pod IPs count with --cni kubernetes),
# named ports (resolved with an inventory), CIDR rules that tell apart addresses of one name,
# HTTP rules with a header, DNS rules, toFQDNs, toServices, ICMP, world-ipv4
LAB_POLICIES = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: postgres-clients, namespace: database}
spec:
  podSelector: {matchLabels: {app: postgres}}
  policyTypes: [Ingress]
  ingress:
    - from:
        - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: app}}
          podSelector: {matchExpressions: [{key: app, operator: In, values: [api, worker]}]}
        - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: payments}}
        - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: dev}}
      ports: [{port: 5432}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: redis-from-nodes-0-3, namespace: database}
spec:
  podSelector: {matchLabels: {app: redis}}
  policyTypes: [Ingress]
  ingress:
    - from: [{ipBlock: {cidr: 10.0.0.0/20, except: [10.0.4.0/22]}}]
      ports: [{port: 6379}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: api-named-port, namespace: app}
spec:
  podSelector: {matchLabels: {app: api}}
  policyTypes: [Ingress]
  ingress:
    - from: [{namespaceSelector: {matchLabels: {team: web}}}]
      ports: [{port: http}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web-http, namespace: frontend}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
    - fromEntities: [world, cluster]
      toPorts:
        - ports: [{port: "8080", protocol: TCP}]
          rules: {http: [{method: GET, path: "/(static/.*|api/session)", headers: [Accept]}]}
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: ingress-to-web, namespace: ingress-nginx}
spec:
  endpointSelector: {}
  egress:
    - toEndpoints: [{matchLabels: {k8s:io.kubernetes.pod.namespace: frontend, app: web}}]
      toPorts: [{ports: [{port: "8080"}]}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: worker-egress, namespace: app}
spec:
  endpointSelector: {matchLabels: {app: worker}}
  egress:
    - toEndpoints: [{matchLabels: {k8s:io.kubernetes.pod.namespace: kube-system, k8s:k8s-app: kube-dns}}]
      toPorts:
        - ports: [{port: "53", protocol: ANY}]
          rules: {dns: [{matchPattern: "*.eu-west-1.amazonaws.com"}, {matchName: api.stripe.com}]}
    - toFQDNs: [{matchPattern: "*.eu-west-1.amazonaws.com"}]
      toPorts: [{ports: [{port: "443"}]}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: cart-egress, namespace: app}
spec:
  endpointSelector: {matchLabels: {app: cart}}
  egress:
    - toServices: [{k8sService: {serviceName: postgres, namespace: database}}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: sandbox-egress, namespace: dev}
spec:
  endpointSelector: {matchLabels: {app: sandbox}}
  egress:
    - toEndpoints: [{matchLabels: {k8s:io.kubernetes.pod.namespace: database}}]
      toPorts: [{ports: [{port: "5432"}]}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: ci-egress, namespace: dev}
spec:
  endpointSelector: {matchLabels: {app: ci-runner}}
  egress:
    - toEntities: [world-ipv4]
      toPorts: [{ports: [{port: "443"}]}]
---
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: deny-bad-nets}
spec:
  endpointSelector: {}
  egressDeny:
    - toCIDRSet: [{cidr: 45.0.0.0/8, except: [45.1.0.0/16]}, {cidr: 185.220.0.0/16}, {cidr: 151.101.64.0/18}]
    - icmps: [{fields: [{type: 8, family: IPv4}]}]
      toEntities: [world]
"""


@pytest.fixture(scope="module")
def lab_replay(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A lab capture with a planted bypass (and scans, C2, exfiltration), its policies and an
    inventory knowing every other pod of it (with named container ports)."""
    from flowtrail.lab.simulate import NS, Options, simulate

    d = tmp_path_factory.mktemp("replay")
    flows = d / "flows.jsonl"
    simulate(Options(scenarios=["policy-gap:at=0.3,span=1m", "port-scan:at=0.5,ports=40", "dns-c2:at=0.6,span=1m",
                                "exfiltration:at=0.7,span=1m", "namespace-breach:at=0.8,span=1m"],
                     duration_ns=180 * NS, seed=11, rate=60, output=str(flows), workers=1))
    # pods of one workload and one identity: traffic to itself is never blocked, to a sibling is
    with flows.open("a") as f:
        f.write(hubble_flow("self-1", A, A, 80, "FORWARDED", "INGRESS", t=7)
                + hubble_flow("sibling-1", ("x", "a-2", "a"), A, 80, "FORWARDED", "INGRESS", t=8)
                + hubble_flow("self-2", A, A, 80, "FORWARDED", "INGRESS", t=9))
    pol = d / "policies.yaml"
    pol.write_text(LAB_POLICIES + "---\n" + yaml.safe_dump_all([DENY_A_INGRESS, ALLOW_B]))
    pods: dict[tuple[str, str], dict[str, Any]] = {}
    for line in flows.read_text().splitlines():
        flow = json.loads(line)["flow"]
        for side, ip in (("source", flow["IP"]["source"]), ("destination", flow["IP"]["destination"])):
            ep = flow.get(side) or {}
            if ep.get("pod_name") and ep.get("namespace"):
                labels = dict(x[4:].split("=", 1) for x in ep.get("labels", [])
                              if x.startswith("k8s:") and not x.startswith(("k8s:io.cilium", "k8s:io.kubernetes")))
                pods[(ep["namespace"], ep["pod_name"])] = {"ip": ip, "labels": labels}
    items: list[dict[str, Any]] = [{"kind": "Namespace", "metadata": {"name": ns, "labels": {"team": "web"}}}
                                   for ns in ("frontend",)]
    for (ns, name), p in sorted(pods.items())[::2]:
        items.append({"kind": "Pod", "metadata": {"name": name, "namespace": ns, "labels": p["labels"]},
                      "spec": {"containers": [{"name": "c", "ports": [
                          {"name": "http", "containerPort": 8080}, {"name": "postgres", "containerPort": 5432}]}]},
                      "status": {"podIP": p["ip"]}})
    items.append({"kind": "Service", "metadata": {"name": "postgres", "namespace": "database"},
                  "spec": {"selector": {"app": "postgres"}, "clusterIP": "172.20.5.5"}})
    inv = d / "inventory.json"
    inv.write_text(json.dumps({"kind": "List", "items": items}))
    return flows, pol, inv


@pytest.mark.parametrize("cni,with_inventory", [("cilium", False), ("kubernetes", True)])
def test_replay_identity_keying_reports_as_per_connection(lab_replay: tuple[Path, Path, Path], cni: str,
                                                          with_inventory: bool) -> None:
    flows, pol, inv = lab_replay
    args = ["--policies", str(pol), "--input-file", str(flows), "-o", "json", "--workers", "1", "--cni", cni]
    if with_inventory:
        args += ["--inventory", str(inv)]
    for cmd in ("audit", "whatif"):
        fast = CliRunner().invoke(cli, ["policy", cmd, *args])
        reference = CliRunner().invoke(cli, ["policy", cmd, *args, "--per-connection"])
        assert fast.exit_code == 0 and reference.exit_code == 0, fast.output + reference.output
        # groups, counts, example uuids, first/last seen, explanations, coverage, unused rules
        assert fast.stdout == reference.stdout
        out = [json.loads(x) for x in fast.stdout.splitlines()]
        assert out[-1]["type"] == "summary" and out[-1]["connections"] > 1000
        if cmd == "audit":
            bypass = {(o["src"], o["dst"], o["port"]) for o in out if o["type"] == "bypass"}
            assert ("frontend/web", "database/postgres", 5432) in bypass
            assert ("x/a", "x/a", 80) in bypass  # the sibling; never the pod's traffic to itself
            (sib,) = [o for o in out if o["type"] == "bypass" and o["src"] == "x/a"]
            assert sib["example_uuids"] == ["sibling-1"] and "x/a-2" in sib["explanation"]
            assert {o["type"] for o in out} >= {"bypass", "unselected", "unused-rule"}


@pytest.mark.parametrize("cmd", ["audit", "whatif"])
def test_line_classes_report_as_every_line(lab_replay: tuple[Path, Path, Path], cmd: str, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Lines that differ only in what the replay never reads are decoded once and weighted
    (sources.lineclass): the same report, byte for byte, as decoding every line; in one process,
    in workers over small ranges, and with the flows split over two inputs. The lab policies
    have toFQDNs rules, so DNS answers are learned in flow order throughout."""
    import flowtrail.sources.batches as batches_mod
    from flowtrail.sources import files

    flows, pol, inv = lab_replay
    lines = flows.read_bytes().splitlines(keepends=True)
    half = len(lines) // 2
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    first.write_bytes(b"".join(lines[:half]))
    second.write_bytes(b"".join(lines[half:]))
    base = ["policy", cmd, "--policies", str(pol), "--inventory", str(inv), "-o", "json"]
    one = ["--input-file", str(flows)]
    reference = CliRunner().invoke(cli, [*base, *one, "--workers", "1", "--every-line"])
    assert reference.exit_code == 0, reference.output
    out = [json.loads(x) for x in reference.stdout.splitlines()]
    assert out[-1]["type"] == "summary" and sum(o.get("count", 0) for o in out) > 1000
    runs = {"one process": [*one, "--workers", "1"],
            "two inputs": ["--input-file", str(first), "--input-file", str(second), "--workers", "1"]}
    for name, args in runs.items():
        got = CliRunner().invoke(cli, [*base, *args])
        assert got.exit_code == 0 and got.stdout == reference.stdout, name
    # workers, each over ranges of ~64 kB (the lab file is far below the parallel threshold)
    monkeypatch.setattr(batches_mod, "PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(batches_mod, "split_ranges", lambda path: files.split_ranges(path, 64 << 10))
    # a gzip input: inflated by one more process into blocks (~64 kB here) that the workers decode
    packed = tmp_path / "flows.jsonl.gz"
    packed.write_bytes(gzip.compress(flows.read_bytes(), compresslevel=1))
    monkeypatch.setattr(batches_mod, "BLOCK_SIZE", 16 << 10)
    for args in ([*one, "--workers", "2"], ["--input-file", str(first), "--input-file", str(second),
                                             "--workers", "2"], ["--input-file", str(packed), "--workers", "2"]):
        got = CliRunner().invoke(cli, [*base, *args])
        assert got.exit_code == 0 and got.stdout == reference.stdout, args
        plain = CliRunner().invoke(cli, [*base, *args, "--every-line"])
        assert plain.exit_code == 0 and plain.stdout == reference.stdout, args


def test_dns_answers_are_learned_in_flow_order(tmp_path: Path) -> None:
    """toFQDNs allows an address only once a DNS answer named it: a flow to it before the answer
    is denied (here: a bypass), one after it allowed, within one batch and with or without line
    classes."""
    client = ("x", "a-1", "a")

    def to_world(uuid: str, t: int) -> dict[str, Any]:
        flow = json.loads(hubble_flow(uuid, client, B, 443, "FORWARDED", "EGRESS", t=t))
        flow["flow"]["IP"]["destination"] = "203.0.113.7"
        flow["flow"]["destination"] = {"identity": 2, "labels": ["reserved:world"]}
        return flow

    answer = json.loads(hubble_flow("dns", ("kube-system", "coredns-1", "coredns"), client, 40000, "FORWARDED",
                                    "INGRESS", reply=True, t=3))
    answer["flow"]["l4"] = {"UDP": {"source_port": 53, "destination_port": 40000}}
    answer["flow"]["l7"] = {"type": "RESPONSE", "dns": {"query": "api.example.com.", "ips": ["203.0.113.7"],
                                                        "rcode": 0}}
    rows = [to_world("before-1", 1), to_world("before-2", 2), answer, to_world("after-1", 4),
            to_world("after-2", 5)]
    flows = tmp_path / "flows.jsonl"
    flows.write_text("".join(json.dumps(r) + "\n" for r in rows))
    pol = tmp_path / "pol.yaml"
    pol.write_text(yaml.safe_dump({
        "apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy", "metadata": {"name": "fqdn", "namespace": "x"},
        "spec": {"endpointSelector": {"matchLabels": {"app": "a"}},
                 "egress": [{"toFQDNs": [{"matchName": "api.example.com"}]}]}}))
    outs = []
    for extra in ([], ["--every-line"]):
        res = CliRunner().invoke(cli, ["policy", "audit", "--policies", str(pol), "--input-file", str(flows),
                                       "-o", "json", "--workers", "1", *extra])
        assert res.exit_code == 0, res.output
        outs.append(res.stdout)
        found = [json.loads(x) for x in res.stdout.splitlines()]
        bypass = [o for o in found if o["type"] == "bypass"]
        assert len(bypass) == 1 and bypass[0]["count"] == 2, found
        assert bypass[0]["example_uuids"] == ["before-1", "before-2"]
    assert outs[0] == outs[1]


def test_replay_workload_keys_match_detect_features(lab_replay: tuple[Path, Path, Path]) -> None:
    """The replay computes detect.features' `wl_key` for the rows it reports, not the whole
    feature set: the same values."""
    from flowtrail.detect.features import Enrichment, build
    from flowtrail.policy.endpoints import Inventory
    from flowtrail.policy.evaluate import Evaluator
    from flowtrail.policy.load import load_policies
    from flowtrail.policy.replay import REPLAY_PATHS, Replayer
    from flowtrail.sources.batches import batches
    from flowtrail.sources.decode import Decoder
    from flowtrail.sources.files import expand_inputs

    flows, pol, _ = lab_replay
    rp = Replayer(Evaluator(load_policies([str(pol)]), "cilium"), Inventory())
    checked = 0
    for b in batches(expand_inputs([str(flows)]), Decoder(REPLAY_PATHS), None, 1):
        table = b.table.filter(b.table.column("flow").is_valid())
        if not table.num_rows:
            continue
        feats = build(table, Enrichment())
        rv = rp.feed(table)
        src, dst = rv.workload_keys(np.arange(table.num_rows))
        assert src == feats.column("src.wl_key").to_pylist()
        assert dst == feats.column("dst.wl_key").to_pylist()
        checked += 2 * table.num_rows
    assert checked > 10_000


def test_replay_groups_match_folding_connection_by_connection(lab_replay: tuple[Path, Path, Path]) -> None:
    """group_rows folds a batch's finding rows with numpy: the same groups (counts, first/last
    seen, verdict, observed verdict) as folding them one connection at a time, connections in
    order of first appearance; each group's example uuids are its first flows in input order."""
    import numpy as np

    from flowtrail.policy.endpoints import Inventory
    from flowtrail.policy.replay import REPLAY_PATHS, Group, Replayer, RowVerdicts, classify_audit, group_rows
    from flowtrail.sources.batches import batches
    from flowtrail.sources.decode import Decoder
    from flowtrail.sources.files import expand_inputs

    def fold(groups: dict[tuple[Any, ...], Group], kind: str, mask: np.ndarray, rv: RowVerdicts) -> None:
        times, uuids = rv.times(), rv.feats.column("uuid").to_pylist()
        observed = rv.feats.column("verdict").to_pylist()
        rows_of: dict[int, list[int]] = {}
        for r in np.flatnonzero(mask).tolist():
            rows_of.setdefault(int(rv.key[r]), []).append(r)
        in_group: dict[tuple[Any, ...], list[int]] = {}
        for k, rows in sorted(rows_of.items()):
            (src,), (dst,) = rv.workload_keys(np.array(rows[:1]))
            v = rv.verdicts[k]
            gk = (kind, src or v.connection.src.key(), dst or v.connection.dst.key(), v.connection.protocol,
                  v.connection.port)
            g = groups.setdefault(gk, Group(*gk, verdict=v, observed=str(observed[rows[0]])))
            g.add(len(rows), int(times[rows].min()), int(times[rows].max()), [])
            in_group.setdefault(gk, []).extend(rows)
        for gk, rows in in_group.items():
            groups[gk].add(0, groups[gk].first_ns, groups[gk].last_ns, [uuids[r] for r in sorted(rows) if uuids[r]])

    flows, pol, _ = lab_replay
    rp = Replayer(Evaluator(load_policies([str(pol)]), "cilium"), Inventory())
    fast: dict[tuple[Any, ...], Group] = {}
    slow: dict[tuple[Any, ...], Group] = {}
    numbered = 0
    for b in batches(expand_inputs([str(flows)]), Decoder(REPLAY_PATHS), None, 1):
        if not b.table.num_rows:
            continue
        rv = rp.feed(b.table)
        # connections new in this batch are numbered in the order of their first rows
        firsts = [int(np.flatnonzero(rv.key == c)[0]) for c in range(numbered, len(rv.verdicts))]
        assert firsts == sorted(firsts)
        numbered = len(rv.verdicts)
        for kind, mask in classify_audit(rv).items():
            group_rows(fast, kind, mask, rv)
            fold(slow, kind, mask, rv)
    assert numbered > 1000 and len(fast) > 20
    assert list(fast) == list(slow) and fast == slow
    # pods of one identity share their verdict flags: far fewer evaluations than connections
    assert rp.evaluations < numbered / 2


def test_audit_shows_progress_on_a_terminal(lab_replay: tuple[Path, Path, Path], tmp_path: Path) -> None:
    """A long replay draws a progress bar on stderr when that is a terminal; stdout keeps only
    the report (here a file)."""
    import os
    import pty
    import subprocess
    import sys

    flows, pol, _ = lab_replay
    big = tmp_path / "big.jsonl"
    text = flows.read_bytes()
    with big.open("wb") as f:
        for _ in range((70 << 20) // len(text) + 1):  # past the 64 MB threshold
            f.write(text)
    out = tmp_path / "report.json"
    main, child = pty.openpty()
    with out.open("wb") as stdout:
        proc = subprocess.Popen([sys.executable, "-m", "flowtrail.cli.main", "policy", "audit", "--policies",
                                 str(pol), "--input-file", str(big), "-o", "json"], stdout=stdout, stderr=child)
    os.close(child)
    seen = b""
    while True:
        try:
            chunk = os.read(main, 65536)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
    assert proc.wait(timeout=300) == 0, seen[-2000:]
    os.close(main)
    assert b"replaying" in seen and b"100%" in seen
    lines = out.read_text().splitlines()
    assert all(line.startswith("{") for line in lines) and json.loads(lines[-1])["type"] == "summary"
