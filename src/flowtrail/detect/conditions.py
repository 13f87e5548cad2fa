"""Rule `where` conditions and exceptions compiled to vectorized masks over a feature table."""

from __future__ import annotations

import fnmatch
import ipaddress
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from flowtrail.detect.features import map_unique
from flowtrail.detect.rules import OPS, Rule, RuleError
from flowtrail.filters.ip import first_network
from flowtrail.util.arrays import bool_mask

MaskFn = Callable[[pa.Table, Any], np.ndarray]


def _compile_one(rule: Rule, cond: dict[str, Any]) -> MaskFn:
    if "any" in cond:
        parts = [_compile_one(rule, c) for c in cond["any"]]
        return lambda t, b: np.logical_or.reduce([p(t, b) for p in parts])
    if "all" in cond:
        parts = [_compile_one(rule, c) for c in cond["all"]]
        return lambda t, b: np.logical_and.reduce([p(t, b) for p in parts])
    if "not" in cond:
        inner = _compile_one(rule, cond["not"])
        return lambda t, b: ~inner(t, b)
    name = cond["field"]
    op = next(o for o in OPS if o in cond)
    value = rule.value(cond[op])
    if op == "eq":
        return lambda t, b: bool_mask(pc.equal(t[name], value))
    if op == "ne":
        return lambda t, b: ~bool_mask(pc.equal(t[name], value))
    if op in ("in", "not_in"):
        values = value if isinstance(value, list) else [value]
        if not values:
            return (lambda t, b: np.zeros(t.num_rows, dtype=bool)) if op == "in" else \
                (lambda t, b: np.ones(t.num_rows, dtype=bool))

        def isin(t: pa.Table, b: Any) -> np.ndarray:
            col = t[name]
            vs = pa.array(values).cast(col.type) if pa.types.is_integer(col.type) else pa.array(
                [str(v) for v in values]) if pa.types.is_string(col.type) else pa.array(values)
            return bool_mask(pc.is_in(col, value_set=vs))
        return isin if op == "in" else (lambda t, b: ~isin(t, b))
    if op in ("gt", "gte", "lt", "lte"):
        fn = {"gt": pc.greater, "gte": pc.greater_equal, "lt": pc.less, "lte": pc.less_equal}[op]
        num = float(value)
        return lambda t, b: bool_mask(fn(t[name], num))
    if op == "present":
        want = bool(value)
        return lambda t, b: bool_mask(t[name].is_valid()) if want else bool_mask(t[name].is_null())
    if op == "regex":
        pattern = str(value)
        return lambda t, b: bool_mask(pc.match_substring_regex(t[name], pattern))
    if op in ("suffix", "not_suffix"):
        suffixes = [str(s).lower() for s in (value if isinstance(value, list) else [value])]

        def ends(t: pa.Table, b: Any) -> np.ndarray:
            col = t[name]
            out = np.zeros(t.num_rows, dtype=bool)
            for s in suffixes:
                out |= bool_mask(pc.ends_with(col, s))
            return out
        return ends if op == "suffix" else (lambda t, b: ~ends(t, b))
    if op in ("in_baseline", "not_in_baseline"):
        kind = str(value)

        def member(t: pa.Table, b: Any) -> np.ndarray:
            if b is None:
                raise RuleError(f"{rule.source}: {rule.id} needs a baseline (--baseline)")
            keys = b.keys(kind)
            return bool_mask(pc.is_in(t[name], value_set=keys))
        return member if op == "in_baseline" else (lambda t, b: ~member(t, b) & bool_mask(t[name].is_valid()))
    raise RuleError(f"{rule.source}: {rule.id}: unsupported operator {op}")


def compile_where(rule: Rule) -> MaskFn:
    parts = [_compile_one(rule, c) for c in rule.where]
    exc = _compile_exceptions(rule)

    def mask(t: pa.Table, baseline: Any) -> np.ndarray:
        m = np.ones(t.num_rows, dtype=bool)
        for p in parts:
            if not m.any():
                break
            m &= p(t, baseline)
        if exc is not None and m.any():
            m &= ~exc(t)
        return m
    return mask


def needs_baseline(rule: Rule) -> bool:
    if rule.aggregate.get("function") == "baseline_rate":
        return True  # compares with the learned per-hour rates

    def walk(conds: list[dict[str, Any]]) -> bool:
        for c in conds:
            if "in_baseline" in c or "not_in_baseline" in c:
                return True
            if walk(c.get("any", [])) or walk(c.get("all", [])) or ("not" in c and walk([c["not"]])):
                return True
        return False
    return walk(rule.where)


def needs_policy(rule: Rule) -> bool:
    """Rules reading `policy.*` features run only with --policies."""
    def walk(conds: list[dict[str, Any]]) -> bool:
        for c in conds:
            if str(c.get("field", "")).startswith("policy."):
                return True
            if walk(c.get("any", [])) or walk(c.get("all", [])) or ("not" in c and walk([c["not"]])):
                return True
        return False
    return walk(rule.where)


def _compile_exceptions(rule: Rule) -> Callable[[pa.Table], np.ndarray] | None:
    ex = rule.exceptions
    checks: list[Callable[[pa.Table], np.ndarray]] = []
    if ex.get("entities"):
        pats = list(ex["entities"])
        checks.append(lambda t: bool_mask(map_unique(
            t[rule.entity], lambda v: v is not None and any(fnmatch.fnmatchcase(str(v), p) for p in pats),
            pa.bool_())))
    if ex.get("namespace_pairs"):
        pairs = list(ex["namespace_pairs"])
        checks.append(lambda t: bool_mask(map_unique(
            t["ns_pair"], lambda v: v is not None and any(fnmatch.fnmatchcase(v, p) for p in pairs), pa.bool_())))
    if ex.get("domains"):
        doms = [d.lower().rstrip(".") for d in ex["domains"]]

        def dom_hit(v: str | None) -> bool:
            return v is not None and any(v == d or v.endswith("." + d) for d in doms)
        checks.append(lambda t: bool_mask(map_unique(t["dns.query"], dom_hit, pa.bool_()))
                      | bool_mask(map_unique(t["dst.name_registered"], dom_hit, pa.bool_())))
    if ex.get("cidrs"):
        nets = [ipaddress.ip_network(c, strict=False) for c in ex["cidrs"]]

        def ip_hit(v: str | None) -> bool:
            return first_network(v, nets) is not None
        checks.append(lambda t: bool_mask(map_unique(t["conn.server_ip"], ip_hit, pa.bool_())))
    if not checks:
        return None
    return lambda t: np.logical_or.reduce([c(t) for c in checks])
