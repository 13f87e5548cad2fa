"""Detection rules as data: YAML validated by a JSON schema, errors with file:line.

A rule file holds `rules:`, a list of rules. The built-in pack lives in detect/rules/*.yaml;
`--rules DIR` adds user files (a user rule with a built-in id replaces it). Tunables are named
values a rule refers to as `$name`; `--config` overrides them per rule.
"""

from __future__ import annotations

import copy
import fnmatch
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from flowtrail.detect.baseline import RATE_ENTITY
from flowtrail.detect.features import FEATURE_NAMES
from flowtrail.model.timeutil import parse_go_duration_ns

CATEGORIES = ["scan", "policy-gap", "external-egress", "dns-c2", "kube-api", "namespace-breach", "drop-spike",
              "threat-intel", "anomaly", "flow-gap"]
SEVERITIES = ["info", "low", "medium", "high", "critical"]
OPS = ["eq", "ne", "in", "not_in", "gt", "gte", "lt", "lte", "present", "regex", "suffix", "not_suffix",
       "in_baseline", "not_in_baseline"]

_COND: dict[str, Any] = {
    "oneOf": [
        {"type": "object", "required": ["field"], "additionalProperties": False,
         "properties": {"field": {"type": "string"}, **{op: {} for op in OPS}},
         "minProperties": 2, "maxProperties": 2},
        {"type": "object", "required": ["any"], "additionalProperties": False,
         "properties": {"any": {"type": "array", "items": {"$ref": "#/$defs/cond"}, "minItems": 1}}},
        {"type": "object", "required": ["all"], "additionalProperties": False,
         "properties": {"all": {"type": "array", "items": {"$ref": "#/$defs/cond"}, "minItems": 1}}},
        {"type": "object", "required": ["not"], "additionalProperties": False,
         "properties": {"not": {"$ref": "#/$defs/cond"}}},
    ]
}
_DURATION = {"type": "string", "pattern": r"^(\$\w+|([0-9.]+(ns|us|ms|s|m|h))+)$"}
_NUM = {"oneOf": [{"type": "number"}, {"type": "string", "pattern": r"^\$\w+$"}]}
RULE_SCHEMA: dict[str, Any] = {
    "$defs": {"cond": _COND},
    "type": "object",
    "required": ["rules"],
    "additionalProperties": False,
    "properties": {"rules": {"type": "array", "items": {
        "type": "object",
        "required": ["id", "title", "category", "severity", "description"],
        "additionalProperties": False,
        "properties": {
            "id": {"type": "string", "pattern": r"^[a-z0-9-]+(\.[a-z0-9-]+)+$"},
            "title": {"type": "string"},
            "category": {"enum": CATEGORIES},
            "severity": {"enum": SEVERITIES},
            "mitre": {"type": "array", "items": {"type": "string", "pattern": r"^T\d{4}(\.\d{3})?$"}},
            "maturity": {"enum": ["experimental", "test", "stable"]},
            "enabled": {"type": "boolean"},
            "description": {"type": "string"},
            "remediation": {"type": "string"},
            "scope": {"type": "object", "additionalProperties": False,
                      "properties": {"allow": {"type": "array", "items": {"type": "object"}},
                                     "deny": {"type": "array", "items": {"type": "object"}}}},
            "prefilter": {"oneOf": [{"const": "all"}, {"type": "string", "pattern": r"^\$\w+$"},
                                    {"type": "array", "items": {"type": "string"}}]},
            "where": {"type": "array", "items": {"$ref": "#/$defs/cond"}},
            "group_by": {"type": "array", "items": {"type": "string"}, "minItems": 1},
            "entity": {"type": "string"},
            "entity_kind": {"enum": ["pod", "namespace", "node", "workload"]},
            "peers": {"type": "string"},
            "explain": {"type": "string"},
            "aggregate": {"type": "object", "required": ["function"], "additionalProperties": False, "properties": {
                "function": {"enum": ["match", "event_count", "value_count", "rate_spike", "baseline_rate"]},
                "field": {"type": "string"},
                "timespan": _DURATION,
                "threshold": _NUM,
                "baseline_window": _DURATION,
                "warmup": _DURATION,
                "factor": _NUM,
                "rates": {"enum": list(RATE_ENTITY)},
            }},
            "suppress": _DURATION,
            "tunables": {"type": "object", "additionalProperties": {
                "type": "object", "required": ["default", "description"], "additionalProperties": False,
                "properties": {"default": {}, "description": {"type": "string"}, "anchor": {"type": "string"}}}},
            "exceptions": {"type": "object", "additionalProperties": False, "properties": {
                "entities": {"type": "array", "items": {"type": "string"}},
                "namespace_pairs": {"type": "array", "items": {"type": "string"}},
                "domains": {"type": "array", "items": {"type": "string"}},
                "cidrs": {"type": "array", "items": {"type": "string"}},
            }},
            "fixtures": {"type": "object", "additionalProperties": False, "properties": {
                "positive": {"type": "string"}, "negative": {"type": "string"},
                "expect": {"type": "array", "items": {"type": "object"}},
            }},
        },
    }}},
}


class RuleError(ValueError):
    """An invalid rule; the message starts with file:line."""


@dataclass
class Rule:
    id: str
    title: str
    category: str
    severity: str
    description: str
    source: str  # file:line of the rule
    mitre: list[str] = field(default_factory=list)
    maturity: str = "stable"
    enabled: bool = True
    remediation: str = ""
    scope: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    prefilter: list[str] | str | None = None
    where: list[dict[str, Any]] = field(default_factory=list)
    group_by: list[str] = field(default_factory=lambda: ["src.key"])
    entity: str = "src.key"
    entity_kind: str = "pod"
    peers: str = "dst.key"
    explain: str = ""  # feature whose value at the firing flow becomes details.explanation
    aggregate: dict[str, Any] = field(default_factory=lambda: {"function": "match"})
    suppress_ns: int = 3600 * 10**9
    tunables: dict[str, dict[str, Any]] = field(default_factory=dict)
    exceptions: dict[str, list[str]] = field(default_factory=dict)
    fixtures: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)

    def value(self, v: Any) -> Any:
        """Resolve `$tunable` references (recursively in lists)."""
        if isinstance(v, str) and v.startswith("$"):
            name = v[1:]
            if name not in self.tunables:
                raise RuleError(f"{self.source}: {self.id}: unknown tunable ${name}")
            return self.tunables[name]["value"]
        if isinstance(v, list):
            out: list[Any] = []
            for item in v:
                r = self.value(item)
                out.extend(r if isinstance(r, list) and isinstance(item, str) and item.startswith("$") else [r])
            return out
        return v

    def duration(self, v: Any) -> int:
        v = self.value(v)
        ns = parse_go_duration_ns(str(v))
        if ns is None or ns <= 0:
            raise RuleError(f"{self.source}: {self.id}: {v!r} is not a positive duration")
        return ns

    def excepted_entity(self, entity: str) -> bool:
        return any(fnmatch.fnmatchcase(entity, pat) for pat in self.exceptions.get("entities", []))


def _locate(node: yaml.Node, path: list[Any]) -> int:
    """Line (1-based) of the YAML node at a JSON-schema error path."""
    line = node.start_mark.line + 1
    for key in path:
        if isinstance(node, yaml.MappingNode):
            nxt = next((v for k, v in node.value if k.value == key), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            nxt = node.value[key]
        else:
            nxt = None
        if nxt is None:
            break
        node = nxt
        line = node.start_mark.line + 1
    return line


def _walk_fields(conds: list[dict[str, Any]]) -> list[str]:
    out: list[str] = []
    for c in conds:
        if "field" in c:
            out.append(c["field"])
        for key in ("any", "all"):
            out.extend(_walk_fields(c.get(key, [])))
        if "not" in c:
            out.extend(_walk_fields([c["not"]]))
    return out


def parse_rules(text: str, source: str, *, validate: bool = True) -> list[Rule]:
    """The rules of one YAML file. ``validate=False`` skips the JSON-schema check, for the
    built-in pack only: the test suite validates it, and importing jsonschema alone costs
    ~0.1 s, which `detect` pays before its decode workers can start."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        node = yaml.compose(text, Loader=loader)
        data = yaml.load(text, Loader=loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        raise RuleError(f"{where}: invalid YAML: {getattr(exc, 'problem', exc)}") from None
    if node is None:
        raise RuleError(f"{source}:1: empty rule file")
    if validate:
        _validate(data, node, source)
    rules: list[Rule] = []
    for i, r in enumerate(data["rules"]):
        line = _locate(node, ["rules", i])
        src = f"{source}:{line}"
        tunables = {k: {**v, "value": copy.deepcopy(v["default"])} for k, v in r.get("tunables", {}).items()}
        rule = Rule(id=r["id"], title=r["title"], category=r["category"], severity=r["severity"],
                    description=r["description"].strip(), source=src, mitre=r.get("mitre", []),
                    maturity=r.get("maturity", "stable"), enabled=r.get("enabled", True),
                    remediation=r.get("remediation", "").strip(), scope=r.get("scope", {}),
                    prefilter=r.get("prefilter"), where=r.get("where", []),
                    group_by=r.get("group_by", ["src.key"]), entity=r.get("entity", r.get("group_by", ["src.key"])[0]),
                    entity_kind=r.get("entity_kind", "pod"), peers=r.get("peers", "dst.key"), explain=r.get("explain", ""),
                    aggregate=r.get("aggregate", {"function": "match"}), tunables=tunables,
                    exceptions=r.get("exceptions", {}), fixtures=r.get("fixtures", {}), raw=r)
        rule.suppress_ns = rule.duration(r.get("suppress", "1h"))
        check_rule(rule)
        rules.append(rule)
    return rules


def _validate(data: Any, node: Any, source: str) -> None:
    import jsonschema

    errors = sorted(jsonschema.Draft202012Validator(RULE_SCHEMA).iter_errors(data), key=lambda e: list(e.path))
    if errors:
        e = min(errors, key=lambda e: len(list(e.absolute_path)) * -1)
        best = jsonschema.exceptions.best_match(errors) or e
        line = _locate(node, list(best.absolute_path))
        where = "/".join(str(p) for p in best.absolute_path)
        raise RuleError(f"{source}:{line}: {where}: {best.message}")


def check_rule(rule: Rule) -> None:
    known = set(FEATURE_NAMES)
    used = [*_walk_fields(rule.where), *rule.group_by, rule.entity, rule.peers, *([rule.explain] if rule.explain else [])]
    if "field" in rule.aggregate:
        used.append(rule.aggregate["field"])
    for f in used:
        if f not in known:
            raise RuleError(f"{rule.source}: {rule.id}: unknown feature {f!r} (see docs/rules.md)")
    fn = rule.aggregate["function"]
    if fn == "value_count" and "field" not in rule.aggregate:
        raise RuleError(f"{rule.source}: {rule.id}: value_count needs aggregate.field")
    if fn in ("event_count", "value_count", "rate_spike", "baseline_rate") and "threshold" not in rule.aggregate:
        raise RuleError(f"{rule.source}: {rule.id}: {fn} needs aggregate.threshold")
    if fn == "baseline_rate":
        # the learned counts are per entity of a fixed family: comparing them with another
        # grouping would compare unlike things
        family = rule.aggregate.get("rates")
        if family is None:
            raise RuleError(f"{rule.source}: {rule.id}: baseline_rate needs aggregate.rates "
                            f"({' or '.join(RATE_ENTITY)})")
        if rule.group_by != [RATE_ENTITY[family]]:
            raise RuleError(f"{rule.source}: {rule.id}: baseline_rate over {family} groups by "
                            f"[{RATE_ENTITY[family]}] (the baseline's entity), not {rule.group_by}")
        extra = sorted(set(rule.aggregate) & {"field", "baseline_window", "warmup"})
        if extra:
            raise RuleError(f"{rule.source}: {rule.id}: baseline_rate takes no {', '.join(extra)}")
    elif "rates" in rule.aggregate:
        raise RuleError(f"{rule.source}: {rule.id}: aggregate.rates is for baseline_rate only")
    for c in _iter_conds(rule.where):
        for op in OPS:
            if op in c and op == "regex":
                try:
                    re.compile(str(rule.value(c[op])))
                except re.error as exc:
                    raise RuleError(f"{rule.source}: {rule.id}: bad regex: {exc}") from None
    # resolve every tunable reference now so a typo fails at load time
    for c in _iter_conds(rule.where):
        for op in OPS:
            if op in c:
                rule.value(c[op])
    for k in ("timespan", "baseline_window", "warmup"):
        if k in rule.aggregate:
            rule.duration(rule.aggregate[k])
    for k in ("threshold", "factor"):
        if k in rule.aggregate:
            float(rule.value(rule.aggregate[k]))


def _iter_conds(conds: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for c in conds:
        out.append(c)
        for key in ("any", "all"):
            out.extend(_iter_conds(c.get(key, [])))
        if "not" in c:
            out.extend(_iter_conds([c["not"]]))
    return out


def builtin_rule_files() -> list[tuple[str, str]]:
    pack = resources.files("flowtrail.detect").joinpath("rules")
    return sorted((f"rules/{p.name}", p.read_text()) for p in pack.iterdir() if p.name.endswith((".yaml", ".yml")))


def load_rules(dirs: list[str] | None = None, *, builtin: bool = True, validate_builtin: bool = False) -> list[Rule]:
    """The built-in pack (unless ``builtin`` is false) and the rule files of ``dirs``, later ids
    replacing earlier ones. Files of ``dirs`` are schema-checked; the built-in pack only with
    ``validate_builtin`` (see parse_rules)."""
    by_id: dict[str, Rule] = {}
    files: list[tuple[str, str]] = builtin_rule_files() if builtin else []
    n_builtin = len(files)
    for d in dirs or []:
        p = Path(d)
        paths = sorted(p.glob("*.y*ml")) if p.is_dir() else [p]
        if not paths:
            raise RuleError(f"{d}: no rule files (*.yaml)")
        for f in paths:
            try:
                files.append((str(f), f.read_text()))
            except OSError as exc:
                raise RuleError(f"{f}: {exc.strerror}") from None
    for k, (source, text) in enumerate(files):
        for rule in parse_rules(text, source, validate=validate_builtin or k >= n_builtin):
            by_id[rule.id] = rule
    return list(by_id.values())


def apply_config(rules: list[Rule], config: dict[str, Any], source: str = "config") -> list[Rule]:
    """Per-rule overrides: `rules: {<id>: {enabled, severity, tunables: {...}, exceptions: {...}}}`."""
    overrides = config.get("rules", {}) or {}
    ids = {r.id for r in rules}
    for rid in overrides:
        if rid not in ids and not any(fnmatch.fnmatchcase(i, rid) for i in ids):
            raise RuleError(f"{source}: rules/{rid}: no such rule")
    for rule in rules:
        for pat, ov in overrides.items():
            if not fnmatch.fnmatchcase(rule.id, pat):
                continue
            if "enabled" in ov:
                rule.enabled = bool(ov["enabled"])
            if "severity" in ov:
                if ov["severity"] not in SEVERITIES:
                    raise RuleError(f"{source}: rules/{pat}/severity: {ov['severity']!r} is not one of {SEVERITIES}")
                rule.severity = ov["severity"]
            for name, value in (ov.get("tunables") or {}).items():
                if name not in rule.tunables:
                    raise RuleError(f"{source}: rules/{pat}/tunables/{name}: {rule.id} has no such tunable")
                rule.tunables[name]["value"] = value
            for kind, items in (ov.get("exceptions") or {}).items():
                rule.exceptions.setdefault(kind, []).extend(items)
            if "suppress" in ov:
                rule.suppress_ns = rule.duration(ov["suppress"])
            check_rule(rule)
    return rules
