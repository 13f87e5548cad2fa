"""`policy generate`: least-privilege policies from flows, verified by replaying the flows."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from flowtrail.cli.main import cli
from flowtrail.lab.simulate import NS, Options, simulate
from flowtrail.policy.endpoints import Inventory
from flowtrail.policy.evaluate import Evaluator
from flowtrail.policy.generate import Observer, generate, plain, render, stable_labels
from flowtrail.policy.load import load_policies
from flowtrail.policy.replay import REPLAY_PATHS, Group, Replayer, classify_whatif, group_rows
from flowtrail.sources.batches import batches
from flowtrail.sources.decode import Decoder
from flowtrail.sources.files import expand_inputs

ATTACKS = ["policy-gap:at=0.4,span=1m", "namespace-breach:at=0.6,span=1m"]


@pytest.fixture(scope="module")
def captures(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[dict[str, Any]]]:
    d = tmp_path_factory.mktemp("gen")
    base, attack, truth = d / "base.jsonl", d / "attack.jsonl", d / "truth.jsonl"
    # the same seed: the attack capture is the baseline traffic plus the scenarios' flows
    simulate(Options(duration_ns=240 * NS, seed=5, rate=100, output=str(base), workers=1))
    simulate(Options(scenarios=ATTACKS, duration_ns=240 * NS, seed=5, rate=100, output=str(attack),
                     truth=str(truth), workers=1))
    return base, attack, [json.loads(x) for x in truth.read_text().splitlines()]


def tables(path: Path) -> list[Any]:
    return [b.table for b in batches(expand_inputs([str(path)]), Decoder(REPLAY_PATHS), None, 1) if b.table.num_rows]


def replay(policies: Path, flows: Path, cni: str) -> tuple[dict[tuple[Any, ...], Group], set[str]]:
    ps = load_policies([str(policies)])
    rp = Replayer(Evaluator(ps, cni, Inventory()), Inventory())  # type: ignore[arg-type]
    groups: dict[tuple[Any, ...], Group] = {}
    broken: set[str] = set()
    for t in tables(flows):
        rv = rp.feed(t)
        masks = classify_whatif(rv)
        for kind, mask in masks.items():
            group_rows(groups, kind, mask, rv)
        uuids = np.asarray(rv.feats.column("uuid").to_pylist(), dtype=object)
        broken.update(uuids[masks["breaks"]].tolist())
    return groups, broken


@pytest.mark.parametrize("fmt", ["cilium", "kubernetes"])
def test_generated_policies_allow_what_was_seen_and_deny_the_attacks(
        captures: tuple[Path, Path, list[dict[str, Any]]], tmp_path: Path, fmt: str) -> None:
    base, attack, truth = captures
    out = tmp_path / "policies"
    res = CliRunner().invoke(cli, ["policy", "generate", "--input-file", str(base), "--format", fmt,
                                   "-o", str(out), "--workers", "1"])
    assert res.exit_code == 0, res.output
    assert (out / "database.yaml").is_file() and (out / "kube-system.yaml").is_file()
    # every forwarded flow of the capture the policies came from passes them
    groups, _ = replay(out, base, fmt)
    assert [g for g in groups.values() if g.kind == "breaks"] == []
    # the attack capture: exactly the scenarios' flows are denied
    groups, broken = replay(out, attack, fmt)
    breaks = {(g.src, g.dst, g.port) for g in groups.values() if g.kind == "breaks"}
    assert ("frontend/web", "database/postgres", 5432) in breaks
    assert ("dev/sandbox", "production/orders", 8080) in breaks
    assert {s for s, _, _ in breaks} <= {"frontend/web", "dev/sandbox"}
    planted = {u for t in truth for u in t["uuids"]}
    assert broken and broken <= planted


def test_cilium_output_uses_entities_fqdns_and_dns_rules(captures: tuple[Path, Path, list[dict[str, Any]]]) -> None:
    base, _, _ = captures
    obs = Observer()
    for t in tables(base):
        obs.feed(t)
    gen = generate(obs.obs, "cilium")
    docs = {(d.namespace, d.name): plain(d.obj) for d in gen.docs}
    assert docs[("app", "default-deny")]["spec"] == {"endpointSelector": {}, "ingress": [{}], "egress": [{}]}
    egress = docs[("app", "worker-egress")]["spec"]
    assert egress["endpointSelector"] == {"matchLabels": {"app": "worker", "tier": "backend"}}
    rules = egress["egress"]
    dns = rules[0]
    assert dns["toEndpoints"] == [{"matchLabels": {"k8s:io.kubernetes.pod.namespace": "kube-system",
                                                   "k8s-app": "kube-dns"}}]
    assert dns["toPorts"][0]["rules"] == {"dns": [{"matchPattern": "*"}]}
    assert {p["protocol"] for p in dns["toPorts"][0]["ports"]} == {"UDP", "TCP"}
    assert {"matchName": "api.stripe.com"} in [f for r in rules for f in r.get("toFQDNs", [])]
    assert not any("toCIDR" in r for r in rules)  # every outside peer was reached by name
    api = docs[("monitoring", "prometheus-egress")]["spec"]["egress"]
    assert any(r.get("toEntities") == ["kube-apiserver"] for r in api)
    ingress = docs[("ingress-nginx", "ingress-nginx-controller-ingress")]["spec"]["ingress"]
    assert {"fromEntities": ["world"], "toPorts": [{"ports": [{"port": "443", "protocol": "TCP"}]}]} in ingress
    assert any(r.get("fromEntities") == ["host"] for r in ingress)
    # the statefulset's per-pod label is not part of its selector
    pg = docs[("database", "postgres-ingress")]["spec"]["endpointSelector"]
    assert pg == {"matchLabels": {"app": "postgres"}}
    # dropped flows are never allowed: dev/sandbox -> postgres was only ever dropped
    assert "dev" not in json.dumps(docs[("database", "postgres-ingress")])
    # deterministic and readable back as the same objects
    text = render(gen.docs)
    assert text == render(generate(obs.obs, "cilium").docs)
    assert list(yaml.safe_load_all(text)) == [plain(d.obj) for d in gen.docs]
    assert "# from frontend/web:" in text and "opening flows" in text


def test_kubernetes_output_uses_ipblocks(captures: tuple[Path, Path, list[dict[str, Any]]]) -> None:
    base, _, _ = captures
    obs = Observer()
    for t in tables(base):
        obs.feed(t)
    docs = {(d.namespace, d.name): plain(d.obj) for d in generate(obs.obs, "kubernetes", ["monitoring", "app"]).docs}
    assert {ns for ns, _ in docs} == {"monitoring", "app"}
    assert docs[("monitoring", "default-deny")]["spec"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    eg = docs[("monitoring", "prometheus-egress")]["spec"]
    assert eg["policyTypes"] == ["Egress"]
    api = [r for r in eg["egress"] if any(p.get("ipBlock", {}).get("cidr", "").startswith("52.30.11.")
                                          for p in r["to"])]
    assert api and api[0]["ports"] == [{"port": 443, "protocol": "TCP"}]
    dns = docs[("app", "worker-egress")]["spec"]["egress"][0]
    assert dns["to"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                          "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}]
    assert dns["ports"] == [{"port": 53, "protocol": "TCP"}, {"port": 53, "protocol": "UDP"}]


def flow(uuid: str, src: dict[str, Any], dst: dict[str, Any], port: int, *, syn: bool = True,
         verdict: str = "FORWARDED", t: int = 0) -> str:
    f = {"time": f"2026-01-01T00:00:{t:02d}Z", "uuid": uuid, "verdict": verdict, "is_reply": False,
         "IP": {"source": src.pop("ip"), "destination": dst.pop("ip"), "ipVersion": "IPv4"},
         "l4": {"TCP": {"source_port": 40000, "destination_port": port, "flags": {"SYN": syn, "ACK": not syn}}},
         "source": src, "destination": dst, "Type": "L3_L4", "traffic_direction": "EGRESS",
         "event_type": {"type": 1 if verdict == "DROPPED" else 4}}
    return json.dumps({"flow": f}) + "\n"


def pod(ns: str, name: str, ip: str, **labels: str) -> dict[str, Any]:
    return {"namespace": ns, "pod_name": name, "ip": ip, "identity": 5000,
            "labels": [f"k8s:{k.replace('_', '-')}={v}" for k, v in labels.items()]
            + [f"k8s:io.kubernetes.pod.namespace={ns}"]}


def test_stable_labels_openings_only_and_cli_stdout(tmp_path: Path) -> None:
    assert stable_labels({"app": "a", "pod-template-hash": "x", "io.cilium.k8s.policy.cluster": "c",
                          "statefulset.kubernetes.io/pod-name": "db-0"}) == {"app": "a"}
    f = tmp_path / "flows.jsonl"
    f.write_text(
        flow("u1", pod("x", "a-1", "10.0.0.1", app="a", pod_template_hash="h1"), pod("y", "b-1", "10.0.0.3", app="b"),
             80, t=1)
        + flow("u2", pod("x", "a-2", "10.0.0.2", app="a", pod_template_hash="h2"),
               pod("y", "b-1", "10.0.0.3", app="b"), 80, t=2)
        + flow("u3", pod("x", "a-1", "10.0.0.1", app="a"), pod("y", "b-1", "10.0.0.3", app="b"), 81,
               verdict="DROPPED", t=3)
        + flow("u4", pod("x", "a-1", "10.0.0.1", app="a"), pod("y", "b-1", "10.0.0.3", app="b"), 82, syn=False, t=4))
    res = CliRunner().invoke(cli, ["policy", "generate", str(f), "--format", "kubernetes", "--namespace", "y",
                                   "--workers", "1"])
    assert res.exit_code == 0, res.output
    docs = list(yaml.safe_load_all(res.stdout))
    assert [d["metadata"]["name"] for d in docs] == ["default-deny", "b-ingress"]
    (rule,) = docs[1]["spec"]["ingress"]
    assert rule == {"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "x"}},
                              "podSelector": {"matchLabels": {"app": "a"}}}],
                    "ports": [{"port": 80, "protocol": "TCP"}]}  # not the dropped 81, not mid-stream 82
    assert "2 opening flows, 2026-01-01T00:00:01Z..2026-01-01T00:00:02Z, e.g. u1" in res.stdout
    assert "x/a -> y/b 82/TCP: 1 flows seen without the connection's SYN" in res.stderr
