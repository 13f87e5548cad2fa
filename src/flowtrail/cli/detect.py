"""`flowtrail detect`, `flowtrail rules …`, `flowtrail baseline learn`."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path
from typing import Any

import click
import orjson
import yaml

from flowtrail.cli.progress import input_progress
from flowtrail.detect.alerts import Alert
from flowtrail.detect.baseline import RATE_ENTITY, Baseline, BaselineError
from flowtrail.detect.engine import Engine
from flowtrail.detect.features import FEATURE_PATHS, Enrichment, build
from flowtrail.detect.rules import SEVERITIES, Rule, RuleError, apply_config, load_rules
from flowtrail.enrich.intel import Intel, IntelError
from flowtrail.enrich.ipclass import IPClasses
from flowtrail.model.timeutil import parse_go_duration_ns
from flowtrail.sources.batches import batches, gathered
from flowtrail.sources.decode import Decoder
from flowtrail.sources.files import expand_inputs
from flowtrail.sources.peek import first_time_ns

MAX_REPORTED_ERRORS = 20
# rows per engine call: enough to amortize its fixed cost (a few hundred vectorized operations).
# With a prefilter a 16 MB block yields ~1k rows, and waiting for 64k of them left the engine idle
# until ~70 % of the file was decoded, then alone on the rest (measured: 4.7 → 4.2 s on the 1M
# benchmark, peak RSS 358 → 216 MB); without one (a baseline's rate rule reads every line) a
# block yields ~10k rows and the larger batch costs less CPU.
ENGINE_BATCH_ROWS = 65_536
PREFILTERED_BATCH_ROWS = 16_384


def load_config(path: str | None) -> dict[str, Any]:
    if not path:
        return {}
    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise click.ClickException(f"{path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise click.ClickException(f"{path}: invalid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise click.ClickException(f"{path}: expected a mapping with `cluster:` and/or `rules:`")
    unknown = set(data) - {"cluster", "rules"}
    if unknown:
        raise click.ClickException(f"{path}: unknown keys {sorted(unknown)} (expected cluster, rules)")
    return data


def enrichment_from(config: dict[str, Any], intel_files: tuple[str, ...]) -> Enrichment:
    c = config.get("cluster") or {}
    try:
        classes = IPClasses.from_config(c.get("pod_cidrs", []), c.get("service_cidrs", []), c.get("node_ips", []),
                                        c.get("apiserver_ips", []))
        intel = Intel.load(intel_files)
    except (ValueError, IntelError) as exc:
        raise click.ClickException(str(exc)) from None
    for msg in intel.skipped[:10]:
        click.echo(f"warning: {msg}", err=True)
    return Enrichment(classes, intel)


def prepare_rules(rule_dirs: tuple[str, ...], config: dict[str, Any], config_path: str | None,
                  enrichment: Enrichment) -> list[Rule]:
    try:
        rules = load_rules(list(rule_dirs))
        apply_config(rules, config, config_path or "config")
    except RuleError as exc:
        raise click.ClickException(str(exc)) from None
    intel = enrichment.intel
    ip_needles: Any = [f'"{ip}"' for ip in intel.ips] if not intel.nets else "all"
    domain_needles = list(intel.domains)
    for r in rules:
        if "ip_needles" in r.tunables:
            r.tunables["ip_needles"]["value"] = ip_needles
        if "domain_needles" in r.tunables:
            r.tunables["domain_needles"]["value"] = domain_needles
        if r.category == "threat-intel" and not intel:
            r.enabled = False
    return rules


def run_engine(engine: Engine, inputs: tuple[str, ...], workers: int | None, strict: bool,
               learn: Baseline | None = None) -> tuple[int, int]:
    """Feed every input to the engine; returns (lines, bad lines)."""
    try:
        ins = expand_inputs(list(inputs) or ["-"])
    except FileNotFoundError as exc:
        raise click.ClickException(str(exc)) from None
    decoder = Decoder(engine.paths)
    if ins:
        engine.start_at(first_time_ns(ins[0]))
    needles = None if learn is not None else engine.prefilter()
    lines = bad = 0
    with input_progress(ins, "detecting") as progress:
        stream = batches(ins, decoder, needles, workers, progress=progress)
        for table, group in gathered(stream, ENGINE_BATCH_ROWS if needles is None else PREFILTERED_BATCH_ROWS):
            # errors are reported before the rows they arrived with are judged
            for b in group:
                lines += b.lines
                for err in b.errors:
                    bad += 1
                    if strict:
                        raise click.ClickException(f"{err} (--strict)")
                    if bad <= MAX_REPORTED_ERRORS:
                        click.echo(f"warning: {err}", err=True)
            if table is None:
                continue
            if learn is not None:
                flows = table.filter(table.column("flow").is_valid()) if "flow" in table.column_names else table
                learn.learn(build(flows, engine.enrichment))
            else:
                engine.process(table)
    if bad:
        click.echo(f"warning: skipped {bad} bad line(s) of {lines}", err=True)
    return lines, bad


def print_alerts(alerts: list[Alert], output: str, stats_line: str) -> None:
    out = sys.stdout
    if output == "json":
        for a in alerts:
            out.write(orjson.dumps(a.to_json()).decode() + "\n")
        return
    for a in alerts:
        out.write(a.compact() + "\n")
    from rich.console import Console
    from rich.table import Table
    table = Table(title=f"{len(alerts)} alert(s) — {stats_line}", title_justify="left")
    for col in ("severity", "category", "rule", "actor", "alerts", "flows"):
        table.add_column(col, justify="right" if col in ("alerts", "flows") else "left")
    rows: Counter[tuple[str, str, str, str]] = Counter()
    flows: Counter[tuple[str, str, str, str]] = Counter()
    for a in alerts:
        k = (a.severity, a.category, a.rule, a.actor())
        rows[k] += 1
        flows[k] += a.count
    order = {s: i for i, s in enumerate(reversed(SEVERITIES))}
    for k in sorted(rows, key=lambda k: (order[k[0]], k[1], k[2], k[3])):
        table.add_row(*k, str(rows[k]), str(flows[k]))
    Console(file=out, width=140, force_terminal=out.isatty()).print(table)


@click.command("detect", context_settings={"help_option_names": ["-h", "--help"]},
               short_help="Run the detection rules over Hubble flows and print alerts.")
@click.option("--input-file", "inputs", multiple=True, metavar="PATH",
              help="Hubble flows (observe -o json / exporter); gzip too; '-' = stdin. Repeatable.")
@click.argument("paths", nargs=-1, type=click.Path())
@click.option("--rules", "rule_dirs", multiple=True, metavar="DIR", help="Extra rule files/directories.")
@click.option("--config", "config_path", default=None, help="YAML: cluster CIDRs and per-rule overrides.")
@click.option("--baseline", "baseline_path", default=None, help="Baseline from `flowtrail baseline learn`.")
@click.option("--intel", "intel_files", multiple=True, metavar="FILE", help="Threat-intel feed (repeatable).")
@click.option("--policies", "policy_paths", multiple=True, metavar="PATH",
              help="NetworkPolicy/CiliumNetworkPolicy files or dirs: forwarded flows they deny become policy-gap alerts.")
@click.option("--inventory", default=None, help="kubectl get namespaces,pods,services -A -o json (for --policies).")
@click.option("--cni", type=click.Choice(["auto", "kubernetes", "cilium"]), default="auto", show_default=True,
              help="Policy semantics where CNIs differ (for --policies).")
@click.option("-o", "--output", type=click.Choice(["json", "compact"]), default="compact", show_default=True)
@click.option("--min-severity", type=click.Choice(SEVERITIES), default="info", show_default=True)
@click.option("--workers", type=int, default=None, help="Decoder processes (default: CPU count).")
@click.option("--strict", is_flag=True, help="A bad input line is fatal.")
def detect_cmd(inputs: tuple[str, ...], paths: tuple[str, ...], rule_dirs: tuple[str, ...],
               config_path: str | None, baseline_path: str | None, intel_files: tuple[str, ...],
               policy_paths: tuple[str, ...], inventory: str | None, cni: str, output: str,
               min_severity: str, workers: int | None, strict: bool) -> None:
    """Detect lateral movement, scans, policy gaps, exfiltration, DNS C2, kube-apiserver access,
    namespace breaches and drop spikes in Hubble flows."""
    config = load_config(config_path)
    enrichment = enrichment_from(config, intel_files)
    rules = prepare_rules(rule_dirs, config, config_path, enrichment)
    baseline = None
    if baseline_path:
        try:
            baseline = Baseline.load(baseline_path)
        except BaselineError as exc:
            raise click.ClickException(str(exc)) from None
    replayer = None
    if policy_paths:
        from flowtrail.cli.policy import _inventory, _load, choose_cni
        from flowtrail.policy.evaluate import Evaluator
        from flowtrail.policy.replay import Replayer
        ps = _load(policy_paths)
        inv = _inventory(inventory)
        replayer = Replayer(Evaluator(ps, choose_cni(cni, inv, ps), inv), inv)
    try:
        engine = Engine(rules, enrichment, baseline, replayer)
    except RuleError as exc:
        raise click.ClickException(str(exc)) from None
    lines, _ = run_engine(engine, inputs + paths, workers, strict)
    floor = SEVERITIES.index(min_severity)
    alerts = [a for a in engine.alerts() if SEVERITIES.index(a.severity) >= floor]
    stats = f"{engine.stats.flows:,} flows decoded of {lines:,} lines, {len(engine.rules)} rules"
    print_alerts(alerts, output, stats)


@click.group("rules", context_settings={"help_option_names": ["-h", "--help"]})
def rules_cmd() -> None:
    """List, validate and test detection rules."""


@rules_cmd.command("list")
@click.option("--rules", "rule_dirs", multiple=True, metavar="DIR")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table")
def rules_list(rule_dirs: tuple[str, ...], output: str) -> None:
    try:
        rules = load_rules(list(rule_dirs))
    except RuleError as exc:
        raise click.ClickException(str(exc)) from None
    if output == "json":
        for r in rules:
            click.echo(orjson.dumps({"id": r.id, "title": r.title, "category": r.category, "severity": r.severity,
                                     "mitre": r.mitre, "maturity": r.maturity, "source": r.source,
                                     "aggregate": r.aggregate, "tunables": {k: v["default"] for k, v in
                                                                            r.tunables.items()}}).decode())
        return
    from rich.console import Console
    from rich.table import Table
    t = Table()
    for col in ("id", "category", "severity", "aggregate", "mitre", "title"):
        t.add_column(col)
    for r in sorted(rules, key=lambda r: (r.category, r.id)):
        agg = r.aggregate["function"]
        if "threshold" in r.aggregate:
            agg += f" ≥{r.value(r.aggregate['threshold'])}/{r.value(r.aggregate.get('timespan', '-'))}"
        t.add_row(r.id, r.category, r.severity, agg, ",".join(r.mitre), r.title)
    Console(width=160).print(t)


@rules_cmd.command("validate")
@click.argument("paths", nargs=-1, type=click.Path(exists=True))
def rules_validate(paths: tuple[str, ...]) -> None:
    """Validate rule files (the built-in pack when no PATH is given)."""
    try:
        rules = load_rules(list(paths), builtin=not paths, validate_builtin=True)
        Engine(rules, Enrichment(), Baseline())
    except RuleError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{len(rules)} rule(s) OK")


@rules_cmd.command("test")
@click.option("--rules", "rule_dirs", multiple=True, metavar="DIR")
@click.option("--rule", "only", multiple=True, help="Only these rule ids.")
def rules_test(rule_dirs: tuple[str, ...], only: tuple[str, ...]) -> None:
    """Run every rule's positive and negative fixtures."""
    from flowtrail.detect.fixtures import run_fixtures
    try:
        rules = load_rules(list(rule_dirs))
    except RuleError as exc:
        raise click.ClickException(str(exc)) from None
    failures = 0
    for res in run_fixtures(rules, only=set(only)):
        mark = "ok  " if res.ok else "FAIL"
        click.echo(f"{mark} {res.rule:<40} {res.kind:<8} {res.message}")
        failures += not res.ok
    if failures:
        raise SystemExit(1)


@click.group("baseline", context_settings={"help_option_names": ["-h", "--help"]})
def baseline_cmd() -> None:
    """Learn normal behaviour from history (for anomaly rules)."""


@baseline_cmd.command("learn")
@click.option("--input-file", "inputs", multiple=True, metavar="PATH")
@click.argument("paths", nargs=-1, type=click.Path())
@click.option("-o", "--output", "out", required=True, help="Baseline JSON to write.")
@click.option("--update", "update", default=None, help="Start from this baseline (incremental update).")
@click.option("--max-age", default="720h", show_default=True,
              help="Forget items (edges, domains, rate entities) not seen for this long.")
@click.option("--config", "config_path", default=None)
@click.option("--workers", type=int, default=None)
def baseline_learn(inputs: tuple[str, ...], paths: tuple[str, ...], out: str, update: str | None, max_age: str,
                   config_path: str | None, workers: int | None) -> None:
    """Learn normal behaviour from history: edges, namespace pairs, external destinations and
    domains per workload, and flows per workload and drops per namespace per minute at each UTC
    hour of the day (for the anomaly rules of `detect --baseline`)."""
    config = load_config(config_path)
    enrichment = enrichment_from(config, ())
    base = Baseline()
    if update:
        try:
            base = Baseline.load(update)
        except BaselineError as exc:
            raise click.ClickException(str(exc)) from None
    age = parse_go_duration_ns(max_age)
    if age is None or age <= 0:
        raise click.BadParameter(f"{max_age!r} is not a duration", param_hint="--max-age")
    engine = Engine([], enrichment)
    engine.paths = sorted(set(FEATURE_PATHS))
    run_engine(engine, inputs + paths, workers, False, learn=base)
    removed = base.age_out(age)
    base.save(out)
    sizes = ", ".join(f"{len(v):,} {k}" for k, v in base.sets.items())
    rates = ", ".join(f"{base.rate_entities(f):,} {RATE_ENTITY[f]} ({f})" for f in RATE_ENTITY)
    click.echo(f"baseline: {base.flows:,} flows learned; {sizes}; rates per UTC hour of {rates} over "
               f"{base.covered_hours():,.1f} h; {removed} aged out -> {out}", err=True)
