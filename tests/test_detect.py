"""Detection engine and rule pack: fixtures, streaming = batch, end-to-end on lab scenarios."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

from flowtrail.detect.fixtures import fixture_dir, run_fixtures, run_rule_on
from flowtrail.detect.rules import RuleError, apply_config, load_rules, parse_rules
from flowtrail.lab.scenarios import SCENARIOS
from flowtrail.lab.simulate import NS, Options, simulate

RULES = load_rules()
CATEGORIES = {r.category for r in RULES}


def flowtrail(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "flowtrail.cli.main", *args], capture_output=True, input=stdin,
                          check=False)


def test_pack_covers_the_threat_model() -> None:
    assert {"scan", "policy-gap", "external-egress", "dns-c2", "kube-api", "namespace-breach", "drop-spike",
            "threat-intel", "anomaly"} <= CATEGORIES
    for r in RULES:
        assert r.fixtures.get("positive") and r.fixtures.get("negative"), r.id
        for t in r.tunables.values():
            assert t["description"]


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.id)
def test_rule_fixtures(rule: object) -> None:
    results = list(run_fixtures([rule]))  # type: ignore[list-item]
    assert [r.kind for r in results] == ["positive", "negative"]
    for r in results:
        assert r.ok, f"{r.rule} {r.kind}: {r.message}"


@pytest.mark.parametrize("rule_id", ["scan.port-scan", "dns.nxdomain-burst", "dns.tunnel-long-names",
                                     "drops.namespace-spike", "kube-api.unexpected-namespace", "intel.ip"])
def test_streaming_equals_batch(rule_id: str) -> None:
    rule = next(r for r in load_rules() if r.id == rule_id)
    d = fixture_dir(rule)
    path = d / rule.fixtures["positive"]
    whole = [a.to_json() for a in run_rule_on(rule, path, d)]
    rule2 = next(r for r in load_rules() if r.id == rule_id)
    small = [a.to_json() for a in run_rule_on(rule2, path, d, batch_lines=7)]
    assert whole and whole == small


@pytest.fixture(scope="module")
def attack_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    d = tmp_path_factory.mktemp("detect")
    out, truth = d / "flows.jsonl", d / "truth.jsonl"
    simulate(Options(scenarios=list(SCENARIOS), duration_ns=600 * NS, seed=21, rate=150, output=str(out),
                     truth=str(truth)))
    return out, [json.loads(x) for x in truth.read_text().splitlines()]


def test_every_scenario_found_with_category_and_actor(attack_run: tuple[Path, list[dict]]) -> None:
    out, truth = attack_run
    fixtures = fixture_dir(RULES[0])
    res = flowtrail("detect", "--input-file", str(out), "-o", "json", "--intel", str(fixtures / "intel.txt"),
                    "--baseline", str(fixtures / "baseline.json"))
    assert res.returncode == 0, res.stderr.decode()[-3000:]
    alerts = [json.loads(x) for x in res.stdout.splitlines()]
    for t in truth:
        actor = t["actor"]
        hits = [a for a in alerts if a["category"] == t["category"]
                and ((a["entity"].get("pod") and f"{a['entity']['namespace']}/{a['entity']['pod']}" == actor)
                     or a["entity"].get("namespace") == actor)]
        assert hits, f"{t['scenario']}: no {t['category']} alert for {actor}"
        first = min(a["detected_at"] for a in hits)
        assert first >= t["start"][:19], t["scenario"]


def test_alert_format(attack_run: tuple[Path, list[dict]]) -> None:
    out, _ = attack_run
    res = flowtrail("detect", str(out), "-o", "json")
    alerts = [json.loads(x) for x in res.stdout.splitlines()]
    assert alerts
    for a in alerts:
        assert set(a) >= {"id", "rule", "title", "category", "severity", "mitre", "entity", "peers", "first_seen",
                          "last_seen", "detected_at", "count", "evidence", "description", "remediation"}
        assert a["first_seen"] <= a["detected_at"] <= a["last_seen"]
        assert 0 < len(a["evidence"]["uuids"]) <= 10 and a["evidence"]["flows"]
    assert len({a["id"] for a in alerts}) == len(alerts)
    again = flowtrail("detect", str(out), "-o", "json", "--workers", "1")
    assert again.stdout == res.stdout  # stable ids and order, whatever the worker count


def test_compact_output_and_stdin_gzip(tmp_path: Path) -> None:
    rule = next(r for r in RULES if r.id == "scan.port-scan")
    data = (fixture_dir(rule) / "port-scan.jsonl.gz").read_bytes()
    res = flowtrail("detect", "-o", "compact", stdin=gzip.decompress(data))
    assert res.returncode == 0, res.stderr.decode()
    text = res.stdout.decode()
    assert "scan.port-scan" in text and "dev/sandbox-" in text and "alert(s)" in text


def test_bad_lines_are_reported_and_skipped(tmp_path: Path) -> None:
    rule = next(r for r in RULES if r.id == "kube-api.unexpected-namespace")
    lines = gzip.decompress((fixture_dir(rule) / "kube-api.jsonl.gz").read_bytes()).splitlines(keepends=True)
    lines.insert(5, b'{"flow":{"time":"2026-11-26T08:00:00Z","verdict":"FORWARDED","source":{"namespace":"ml\n')
    p = tmp_path / "f.jsonl"
    p.write_bytes(b"".join(lines))
    res = flowtrail("detect", str(p), "-o", "json")
    assert res.returncode == 0
    assert f"{p}:6:".encode() in res.stderr
    assert any(json.loads(x)["rule"] == "kube-api.unexpected-namespace" for x in res.stdout.splitlines())
    strict = flowtrail("detect", str(p), "-o", "json", "--strict")
    assert strict.returncode != 0 and f"{p}:6:".encode() in strict.stderr


def test_rule_errors_name_file_and_line(tmp_path: Path) -> None:
    text = "rules:\n  - id: my.rule\n    title: t\n    category: scan\n    severity: loud\n    description: d\n"
    with pytest.raises(RuleError, match=r"^x.yaml:5: rules/0/severity: 'loud' is not one of"):
        parse_rules(text, "x.yaml")
    bad_field = text.replace("loud", "low") + "    where: [{field: nope, eq: 1}]\n"
    with pytest.raises(RuleError, match=r"x.yaml:2: my.rule: unknown feature 'nope'"):
        parse_rules(bad_field, "x.yaml")
    f = tmp_path / "r.yaml"
    f.write_text(text)
    res = flowtrail("rules", "validate", str(f))
    assert res.returncode != 0 and f"{f}:5:".encode() in res.stderr


def test_user_rules_and_config_overrides(tmp_path: Path) -> None:
    user = tmp_path / "rules"
    user.mkdir()
    (user / "mine.yaml").write_text(
        "rules:\n  - id: custom.ml-egress\n    title: ML egress\n    category: external-egress\n"
        "    severity: low\n    description: ML pods reach the internet\n"
        "    scope: {allow: [{source_pod: ['ml-training/']}]}\n"
        "    where: [{field: dst.world, eq: true}, {field: syn, eq: true}]\n")
    rules = load_rules([str(user)])
    assert any(r.id == "custom.ml-egress" for r in rules)
    apply_config(rules, {"rules": {"scan.*": {"enabled": False},
                                   "scan.port-scan": {"tunables": {"threshold": 3}}}})
    ps = next(r for r in rules if r.id == "scan.port-scan")
    assert not ps.enabled and ps.tunables["threshold"]["value"] == 3
    with pytest.raises(RuleError, match="no such tunable"):
        apply_config(load_rules(), {"rules": {"scan.port-scan": {"tunables": {"bogus": 1}}}})
    rule = next(r for r in RULES if r.id == "kube-api.unexpected-namespace")
    res = flowtrail("detect", str(fixture_dir(rule) / "kube-api.jsonl.gz"), "--rules", str(user), "-o", "json")
    assert any(json.loads(x)["rule"] == "custom.ml-egress" for x in res.stdout.splitlines())


def test_rules_list_and_test_commands() -> None:
    res = flowtrail("rules", "list", "-o", "json")
    ids = {json.loads(x)["id"] for x in res.stdout.splitlines()}
    assert {r.id for r in RULES} == ids
    res = flowtrail("rules", "test", "--rule", "scan.port-scan")
    assert res.returncode == 0 and b"ok   scan.port-scan" in res.stdout


def test_baseline_learn_and_anomaly(tmp_path: Path, attack_run: tuple[Path, list[dict]]) -> None:
    benign = tmp_path / "benign.jsonl"
    simulate(Options(duration_ns=300 * NS, seed=5, rate=80, output=str(benign)))
    base = tmp_path / "base.json"
    res = flowtrail("baseline", "learn", str(benign), "-o", str(base))
    assert res.returncode == 0, res.stderr.decode()
    data = json.loads(base.read_text())
    assert data["format"] == "flowtrail-baseline/1" and data["sets"]["edges"]
    assert any(k.startswith("frontend/web|app/api|8080") for k in data["sets"]["edges"])
    out, _ = attack_run
    res = flowtrail("detect", str(out), "--baseline", str(base), "-o", "json", "--min-severity", "medium")
    rules = {json.loads(x)["rule"] for x in res.stdout.splitlines()}
    assert "anomaly.new-edge" in rules and "policy-gap.new-edge-to-sensitive" in rules


def test_detect_policies_raises_bypass_as_policy_gap() -> None:
    rule = next(r for r in RULES if r.id == "policy-gap.policy-bypass")
    d = fixture_dir(rule)
    res = flowtrail("detect", str(d / "policy-gap.jsonl.gz"), "--policies", str(d / "policies"), "-o", "json")
    assert res.returncode == 0, res.stderr.decode()
    alerts = [json.loads(x) for x in res.stdout.splitlines()]
    bypass = [a for a in alerts if a["rule"] == "policy-gap.policy-bypass"]
    assert bypass and bypass[0]["category"] == "policy-gap"
    assert bypass[0]["entity"]["namespace"] == "frontend"
    assert "postgres-clients" in bypass[0]["details"]["explanation"]
    without = flowtrail("detect", str(d / "policy-gap.jsonl.gz"), "-o", "json")
    assert b"policy-gap.policy-bypass" not in without.stdout
