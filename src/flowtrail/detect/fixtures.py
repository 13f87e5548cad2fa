"""Rule fixtures: every rule ships positive and negative flows with the alerts it must (not) raise.

A rule's `fixtures:` names files relative to the rule file's `fixtures/` folder:

    fixtures:
      positive: port-scan.jsonl.gz          # must raise an alert of this rule...
      negative: benign.jsonl.gz             # ...and this must raise none
      expect: [{actor: "dev/sandbox-*"}]    # each expectation must match one alert

Threat-intel rules read `fixtures/intel.txt`; baseline rules compare against
`fixtures/baseline.json` (learned from benign traffic by scripts/make_fixtures.py); policy rules
evaluate `fixtures/policies/`.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from flowtrail.detect.alerts import Alert
from flowtrail.detect.baseline import Baseline
from flowtrail.detect.conditions import needs_baseline, needs_policy
from flowtrail.detect.engine import Engine
from flowtrail.detect.features import Enrichment
from flowtrail.detect.rules import Rule
from flowtrail.enrich.intel import Intel
from flowtrail.sources.batches import batches
from flowtrail.sources.decode import Decoder
from flowtrail.sources.files import Input
from flowtrail.sources.peek import first_time_ns


@dataclass
class FixtureResult:
    rule: str
    kind: str  # positive | negative | missing
    ok: bool
    message: str
    alerts: list[Alert]


def fixture_dir(rule: Rule) -> Path:
    src = rule.source.rsplit(":", 1)[0]
    if src.startswith("rules/"):  # the built-in pack
        return Path(str(resources.files("flowtrail.detect").joinpath("rules/fixtures")))
    return Path(src).parent / "fixtures"


def engine_for(rule: Rule, fixtures: Path) -> Engine:
    """The engine a rule's fixtures run on: with the fixture directory's intel, baseline and
    policies where the rule needs them."""
    intel = Intel.load([fixtures / "intel.txt"]) if rule.category == "threat-intel" else Intel()
    enrichment = Enrichment(intel=intel)
    if "ip_needles" in rule.tunables:
        rule.tunables["ip_needles"]["value"] = [f'"{ip}"' for ip in intel.ips] if not intel.nets else "all"
    if "domain_needles" in rule.tunables:
        rule.tunables["domain_needles"]["value"] = list(intel.domains)
    baseline = Baseline.load(fixtures / "baseline.json") if needs_baseline(rule) else None
    policy = None
    if needs_policy(rule):
        from flowtrail.policy.endpoints import Inventory
        from flowtrail.policy.evaluate import Evaluator
        from flowtrail.policy.load import load_policies
        from flowtrail.policy.replay import Replayer
        inv = Inventory()
        policy = Replayer(Evaluator(load_policies([str(fixtures / "policies")]), "kubernetes", inv), inv)
    return Engine([rule], enrichment, baseline, policy)


def run_rule_on(rule: Rule, path: Path, fixtures: Path, batch_lines: int | None = None) -> list[Alert]:
    engine = engine_for(rule, fixtures)
    decoder = Decoder(engine.paths)
    engine.start_at(first_time_ns(Input(str(path))))
    for b in batches([Input(str(path))], decoder, engine.prefilter(), workers=1):
        if batch_lines:
            # replay as a live stream: many small batches must give the same alerts
            for start in range(0, b.table.num_rows, batch_lines):
                engine.process(b.table.slice(start, batch_lines))
        else:
            engine.process(b.table)
    return [a for a in engine.alerts() if a.rule == rule.id]


def run_fixtures(rules: list[Rule], only: set[str] | None = None) -> Iterator[FixtureResult]:
    for rule in rules:
        if only and rule.id not in only:
            continue
        fx = rule.fixtures
        if not fx.get("positive") or not fx.get("negative"):
            yield FixtureResult(rule.id, "missing", False, "no positive/negative fixtures", [])
            continue
        d = fixture_dir(rule)
        rule.enabled = True
        pos = run_rule_on(rule, d / fx["positive"], d)
        expect = fx.get("expect") or [{}]
        missing = [e for e in expect if not any(_matches(a, e) for a in pos)]
        if missing:
            yield FixtureResult(rule.id, "positive", False,
                                f"{fx['positive']}: no alert matching {missing[0]} (got {len(pos)}: "
                                f"{[a.actor() for a in pos][:5]})", pos)
        else:
            yield FixtureResult(rule.id, "positive", True, f"{fx['positive']}: {len(pos)} alert(s)", pos)
        neg = run_rule_on(rule, d / fx["negative"], d)
        yield FixtureResult(rule.id, "negative", not neg,
                            f"{fx['negative']}: {len(neg)} alert(s)" + (f" e.g. {neg[0].compact()}" if neg else ""),
                            neg)


def _matches(alert: Alert, expect: dict[str, object]) -> bool:
    actor = expect.get("actor")
    if actor is not None and not fnmatch.fnmatchcase(alert.actor(), str(actor)):
        return False
    min_count = expect.get("min_count")
    return not (min_count is not None and alert.count < int(str(min_count)))
