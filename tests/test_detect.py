"""Detection engine and rule pack: fixtures, streaming = batch, end-to-end on lab scenarios."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

from flowtrail.detect.fixtures import fixture_dir, run_fixtures, run_rule_on
from flowtrail.detect.rules import RuleError, apply_config, builtin_rule_files, load_rules, parse_rules
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


def test_builtin_pack_is_schema_valid_and_user_files_are_checked(tmp_path: Path) -> None:
    """`detect` skips the schema check of the built-in pack (it is checked here, and by `rules
    validate`); a user's rule file is always checked."""
    for source, text in builtin_rule_files():
        assert parse_rules(text, source, validate=True)
    assert flowtrail("rules", "validate").returncode == 0
    f = tmp_path / "r.yaml"
    f.write_text("rules:\n  - id: my.rule\n    title: t\n    category: scan\n    severity: loud\n    description: d\n")
    with pytest.raises(RuleError, match=r"r.yaml:5: rules/0/severity"):
        load_rules([str(f)])


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
    assert data["format"] == "flowtrail-baseline/2" and data["sets"]["edges"]
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


# ---------------------------------------------------------------- learned rates (baseline /2)
def _learn_files(paths: list[Path], rows: int | None = None) -> dict[str, object]:
    """Baseline.learn over flow files, the way `baseline learn` feeds it (optionally in slices of
    `rows`); the baseline's JSON."""
    from flowtrail.detect.baseline import Baseline
    from flowtrail.detect.features import FEATURE_PATHS, Enrichment, build
    from flowtrail.sources.batches import batches
    from flowtrail.sources.decode import Decoder
    from flowtrail.sources.files import Input
    b = Baseline()
    for bt in batches([Input(str(p)) for p in paths], Decoder(FEATURE_PATHS), None, workers=1):
        ft = build(bt.table.filter(bt.table.column("flow").is_valid()), Enrichment())
        step = rows or ft.num_rows
        for start in range(0, ft.num_rows, step):
            b.learn(ft.slice(start, step))
    return b.to_json()


def _expected_rates(*paths: Path) -> dict[str, dict[tuple[str, int], list[int]]]:
    """Per family, (entity, UTC hour) -> per-minute counts, straight from the JSON lines."""
    from collections import Counter

    from flowtrail.model.timeutil import parse_rfc3339_ns
    per_min: dict[str, Counter[tuple[str, int]]] = {"flows": Counter(), "drops": Counter()}
    for p in paths:
        for line in p.read_text().splitlines():
            f = json.loads(line).get("flow")
            if not f:
                continue
            t = parse_rfc3339_ns(f["time"])
            assert t is not None
            minute = t // 60_000_000_000
            src, dst = f.get("source") or {}, f.get("destination") or {}
            if src.get("namespace") and f.get("is_reply") is not True:
                per_min["flows"][(f"{src['namespace']}/{src['workloads'][0]['name']}", minute)] += 1
            if f.get("verdict") == "DROPPED":
                order = (src, dst) if f.get("traffic_direction") == "EGRESS" else (dst, src)
                ns = order[0].get("namespace") or order[1].get("namespace")
                if ns:
                    per_min["drops"][(ns, minute)] += 1
    out: dict[str, dict[tuple[str, int], list[int]]] = {}
    for fam, counts in per_min.items():
        out[fam] = {}
        for (ent, minute), n in counts.items():
            out[fam].setdefault((ent, (minute // 60) % 24), []).append(n)
    return out


@pytest.fixture(scope="module")
def two_hours(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Benign traffic at 02:00 and 08:00 UTC of one day (the simulator's night trough and morning)."""
    from flowtrail.model.timeutil import parse_rfc3339_ns
    d = tmp_path_factory.mktemp("rates")
    night, day = d / "night.jsonl", d / "day.jsonl"
    for out, start, seed in ((night, "2026-11-26T02:00:00Z", 31), (day, "2026-11-26T08:00:00Z", 32)):
        simulate(Options(duration_ns=720 * NS, seed=seed, rate=40, start_ns=parse_rfc3339_ns(start) or 0,
                         output=str(out)))
    return night, day


def test_baseline_learns_rates_per_utc_hour(two_hours: tuple[Path, Path], tmp_path: Path) -> None:
    night, day = two_hours
    base = tmp_path / "base.json"
    res = flowtrail("baseline", "learn", str(night), str(day), "-o", str(base))
    assert res.returncode == 0, res.stderr.decode()
    data = json.loads(base.read_text())
    assert data["format"] == "flowtrail-baseline/2" and data["sets"]["edges"]
    rates = data["rates"]
    assert rates["bin_ns"] == 60_000_000_000 and rates["hours"] == "UTC"
    assert len(rates["coverage"]) == 2  # two 12-minute spans, not one per minute
    expected = _expected_rates(night, day)
    for fam in ("flows", "drops"):
        got = {(ent, int(h)): v for ent, e in rates[fam].items() for h, v in e["hours"].items()}
        assert got.keys() == expected[fam].keys(), fam
        for key, counts in expected[fam].items():
            assert got[key] == {"active": len(counts), "sum": sum(counts), "sumsq": sum(n * n for n in counts),
                                "peak": max(counts)}, (fam, key)
    web = rates["flows"]["frontend/web"]
    assert set(web["hours"]) == {"02", "08"} and web["first_ns"] < web["last_ns"]
    # the diurnal cycle is learned: the same workload is quieter at 02:00 than at 08:00
    from flowtrail.detect.baseline import Baseline
    prof = Baseline.load(base).rate_profile("flows")
    i = prof.index["frontend/web"]
    assert prof.mean[i, 2] < 0.8 * prof.mean[i, 8]
    assert abs(prof.mean[i, 8] - web["hours"]["08"]["sum"] / 12) < 1e-9  # 12 covered minutes
    assert not prof.pooled[i, 2] and prof.pooled[i, 14]  # an unseen hour falls back to all hours


def test_baseline_update_equals_learning_at_once(two_hours: tuple[Path, Path], tmp_path: Path) -> None:
    night, day = two_hours
    once, first, updated = tmp_path / "once.json", tmp_path / "first.json", tmp_path / "updated.json"
    assert flowtrail("baseline", "learn", str(night), str(day), "-o", str(once)).returncode == 0
    assert flowtrail("baseline", "learn", str(night), "-o", str(first)).returncode == 0
    res = flowtrail("baseline", "learn", str(day), "--update", str(first), "-o", str(updated))
    assert res.returncode == 0, res.stderr.decode()
    assert json.loads(updated.read_text()) == json.loads(once.read_text())
    # and learning in slices of 333 rows gives the same per-minute statistics as whole batches
    assert _learn_files([night, day], rows=333) == _learn_files([night, day])


def test_baseline_rates_age_out(two_hours: tuple[Path, Path], tmp_path: Path) -> None:
    night, day = two_hours
    # two days later the dev namespace is gone: its workloads must leave the rates with --max-age
    later = tmp_path / "later.jsonl"
    lines = []
    for line in day.read_text().splitlines(keepends=True):
        f = json.loads(line)["flow"]
        if "dev" in ((f.get("source") or {}).get("namespace"), (f.get("destination") or {}).get("namespace")):
            continue
        lines.append(line.replace('"2026-11-26T08:', '"2026-11-28T08:'))
    later.write_text("".join(lines))
    first, aged = tmp_path / "first.json", tmp_path / "aged.json"
    assert flowtrail("baseline", "learn", str(night), str(day), "-o", str(first)).returncode == 0
    res = flowtrail("baseline", "learn", str(later), "--update", str(first), "--max-age", "24h", "-o", str(aged))
    assert res.returncode == 0, res.stderr.decode()
    before, after = json.loads(first.read_text()), json.loads(aged.read_text())
    gone = {e for e in before["rates"]["flows"] if e.startswith("dev/")}
    assert gone and not gone & set(after["rates"]["flows"])
    assert "dev" in before["rates"]["drops"] and "dev" not in after["rates"]["drops"]
    assert not any(k.startswith("dev/") for k in after["sets"]["edges"])
    # live entities keep their history (and the coverage it is divided by)
    web = after["rates"]["flows"]["frontend/web"]
    assert set(web["hours"]) == {"02", "08"}
    assert web["hours"]["02"] == before["rates"]["flows"]["frontend/web"]["hours"]["02"]
    assert after["rates"]["coverage"][0] == before["rates"]["coverage"][0] and len(after["rates"]["coverage"]) == 3


def test_baseline_v1_loads_without_rates(tmp_path: Path) -> None:
    from flowtrail.detect.baseline import Baseline
    fixtures = fixture_dir(RULES[0])
    v2 = json.loads((fixtures / "baseline.json").read_text())
    v1 = {"format": "flowtrail-baseline/1", "flows": v2["flows"], "first_ns": v2["first_ns"],
          "last_ns": v2["last_ns"], "sets": v2["sets"]}
    path = tmp_path / "v1.json"
    path.write_text(json.dumps(v1))
    b = Baseline.load(path)
    assert b.sets == v2["sets"] and not b.rate_profile("flows").index
    out = tmp_path / "v2.json"
    b.save(out)
    again = json.loads(out.read_text())
    assert again["format"] == "flowtrail-baseline/2" and again["sets"] == v2["sets"]
    assert again["rates"]["flows"] == {} and again["rates"]["coverage"] == []
    # rate rules still run: no entity is known, so the floor alone decides
    res = flowtrail("detect", str(fixtures / "flow-burst.jsonl.gz"), "--baseline", str(path), "-o", "json")
    assert res.returncode == 0, res.stderr.decode()
    spikes = [a for a in map(json.loads, res.stdout.splitlines()) if a["rule"] == "anomaly.flow-rate-spike"]
    assert spikes and all(a["details"]["baseline"] == "entity not in the baseline: floor only" for a in spikes)
    assert spikes[0]["details"]["threshold"] == 300
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**v2, "rates": {**v2["rates"], "bin_ns": 1}}))
    with pytest.raises(ValueError, match="bad rates section"):
        Baseline.load(bad)


def _rate_alerts(rule_id: str, path: Path, baseline: object, batch_lines: int | None = None,
                 drain: bool = False) -> tuple[list[dict], int, bool]:
    """The rule alone over a fixture file with a baseline, as one batch per decoded block or in
    slices of `batch_lines` rows; `drain`: hand alerts out like the live monitor does. Returns the
    alerts, the groups evicted, and whether every group's state spans at most the window."""
    from flowtrail.detect.aggregate import BaselineRate
    from flowtrail.detect.engine import Engine
    from flowtrail.detect.features import Enrichment
    from flowtrail.sources.batches import batches
    from flowtrail.sources.decode import Decoder
    from flowtrail.sources.files import Input
    from flowtrail.sources.peek import first_time_ns
    rule = next(r for r in load_rules() if r.id == rule_id)
    engine = Engine([rule], Enrichment(), baseline)
    assert engine.rules, "a baseline_rate rule runs when a baseline is given"
    engine.start_at(first_time_ns(Input(str(path))))
    drained = []
    for b in batches([Input(str(path))], Decoder(engine.paths), engine.prefilter(), workers=1):
        step = batch_lines or b.table.num_rows
        for start in range(0, b.table.num_rows, step):
            engine.process(b.table.slice(start, step))
            if drain:
                drained.extend(engine.drain())
    alerts = drained if drain else engine.alerts()
    agg = engine.rules[0].agg
    assert isinstance(agg, BaselineRate)
    bounded = all(int(t[-1]) - int(t[0]) <= agg.window for t in agg.tails.values())
    return [a.to_json() for a in alerts if a.rule == rule_id], engine.stats.evicted, bounded


@pytest.mark.parametrize(("rule_id", "fixture"), [("anomaly.flow-rate-spike", "flow-burst.jsonl.gz"),
                                                  ("anomaly.drop-rate-spike", "drop-spike.jsonl.gz")])
def test_baseline_rate_streaming_equals_batch(rule_id: str, fixture: str) -> None:
    from flowtrail.detect.baseline import Baseline
    d = fixture_dir(RULES[0])
    whole, _, _ = _rate_alerts(rule_id, d / fixture, Baseline.load(d / "baseline.json"))
    small, _, _ = _rate_alerts(rule_id, d / fixture, Baseline.load(d / "baseline.json"), batch_lines=7)
    assert whole and whole == small
    live, evicted, bounded = _rate_alerts(rule_id, d / fixture, Baseline.load(d / "baseline.json"),
                                          batch_lines=50, drain=True)
    assert [a["id"] for a in live] == [a["id"] for a in whole]
    assert [a["details"] for a in live] == [a["details"] for a in whole]
    # state is the window's flows per group; drain() forgets the groups idle for a while (the
    # flow fixture has workloads that go quiet; the drop spike lasts to the end of its file)
    assert bounded
    assert evicted > 0 or rule_id == "anomaly.drop-rate-spike"


def test_baseline_rate_fires_at_the_right_flow() -> None:
    """flow-burst: app/worker opens 60 connections in a minute at 02:10 UTC. The alert fires at
    the first of its flows at which the last minute holds more than 3x its learned normal for
    02:00 (mean + 3 sd per minute), recomputed here from the baseline file; the same flows six
    hours later, at 08:10, stay under the daytime normal and raise nothing."""
    import gzip as gz
    import math

    from flowtrail.detect.alerts import iso_ns
    from flowtrail.detect.baseline import Baseline
    from flowtrail.model.timeutil import parse_rfc3339_ns
    d = fixture_dir(RULES[0])
    path = d / "flow-burst.jsonl.gz"
    alerts, _, _ = _rate_alerts("anomaly.flow-rate-spike", path, Baseline.load(d / "baseline.json"))
    assert len(alerts) == 1
    a = alerts[0]
    assert a["entity"]["workload"] == "worker" and a["entity"]["namespace"] == "app"
    base = json.loads((d / "baseline.json").read_text())
    h = base["rates"]["flows"]["app/worker"]["hours"]["02"]
    covered = 30  # the baseline's night history: 02:00-02:30, the worker active from its first minute
    mean = h["sum"] / covered
    normal = mean + 3 * math.sqrt(h["sumsq"] / covered - mean * mean)
    limit = max(300, math.floor(3 * normal) + 1)
    assert a["details"]["threshold"] == limit and a["details"]["hour_utc"] == 2
    assert a["details"]["baseline"]["normal"] == pytest.approx(normal, abs=0.01)
    lines = gz.decompress(path.read_bytes()).decode().splitlines(keepends=True)
    times = []
    for line in lines:
        f = json.loads(line)["flow"]
        if (f["source"].get("workloads") or [{}])[0].get("name") == "worker" and f.get("is_reply") is not True:
            times.append(parse_rfc3339_ns(f["time"]) or 0)
    times.sort()
    window = 60 * NS
    first = next(i for i, t in enumerate(times) if sum(1 for u in times[:i + 1] if u >= t - window) >= limit)
    assert a["detected_at"] == iso_ns(times[first])
    assert a["details"]["events_in_window"] == limit
    # the same burst in the morning is within the worker's daytime normal
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        morning = Path(tmp) / "morning.jsonl"
        morning.write_text("".join(x.replace('"2026-11-27T02:', '"2026-11-27T08:') for x in lines))
        day_alerts, _, _ = _rate_alerts("anomaly.flow-rate-spike", morning, Baseline.load(d / "baseline.json"))
    assert day_alerts == []


def test_baseline_rate_rule_validation() -> None:
    head = ("rules:\n  - id: my.rate\n    title: t\n    category: anomaly\n    severity: medium\n"
            "    description: d\n")
    ok = head + "    group_by: [src.wl_key]\n    aggregate: {function: baseline_rate, rates: flows, threshold: 10}\n"
    assert parse_rules(ok, "x.yaml")[0].aggregate["rates"] == "flows"
    with pytest.raises(RuleError, match=r"needs aggregate\.rates"):
        parse_rules(ok.replace("rates: flows, ", ""), "x.yaml")
    with pytest.raises(RuleError, match=r"groups by \[drop.namespace\]"):
        parse_rules(ok.replace("rates: flows", "rates: drops"), "x.yaml")
    with pytest.raises(RuleError, match="rates"):
        parse_rules(ok.replace("rates: flows", "rates: bytes"), "x.yaml")
    with pytest.raises(RuleError, match="takes no baseline_window"):
        parse_rules(ok.replace("threshold: 10", "threshold: 10, baseline_window: 1h"), "x.yaml")
    with pytest.raises(RuleError, match="for baseline_rate only"):
        parse_rules(ok.replace("baseline_rate", "event_count"), "x.yaml")
    # without --baseline the rate rules stay off, like the other anomaly rules
    from flowtrail.detect.engine import Engine
    assert not Engine(parse_rules(ok, "x.yaml")).rules


def test_json_spelled_with_spaces_raises_the_same_alerts(attack_run: tuple[Path, list[dict]],
                                                         tmp_path: Path) -> None:
    """Rule prefilters are written for Hubble's compact spelling; a capture re-spelled with
    spaces (as Go's protojson and most JSON writers may print it) is decoded line by line where
    it has to be, and raises exactly the same alerts."""
    out, _ = attack_run
    lines = out.read_bytes().splitlines()
    spaced = tmp_path / "spaced.jsonl"
    # every other line re-spelled: `{"a": 1, "b": [1, 2]}`
    spaced.write_bytes(b"".join((json.dumps(json.loads(ln)).encode() if i % 2 else ln) + b"\n"
                                for i, ln in enumerate(lines)))
    a = flowtrail("detect", str(out), "-o", "json")
    b = flowtrail("detect", str(spaced), "-o", "json")
    assert a.returncode == b.returncode == 0
    assert len(a.stdout.splitlines()) > 5
    assert b.stdout == a.stdout
