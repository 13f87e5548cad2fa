"""Rule `where` conditions and exceptions compiled to vectorized masks over a feature frame.

Every condition is a row-wise test, so a rule's conditions (a conjunction) may be evaluated in
any order and each on the rows the others left: conditions on cheap features run first, over the
whole batch, with their masks shared by every rule (`Frame.memo`); conditions on expensive
features (keys, name shapes, IP classes) then run on the few rows still selected.
"""

from __future__ import annotations

import fnmatch
import ipaddress
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa

from flowtrail.detect.features import CHEAP_FEATURES, Frame, map_unique
from flowtrail.detect.rules import OPS, Rule, RuleError
from flowtrail.filters.ip import first_network
from flowtrail.util import compute as pc
from flowtrail.util.arrays import bool_mask

MaskFn = Callable[[Frame, Any], np.ndarray]


class Cond:
    """A compiled condition: the mask of the frame's rows it selects."""

    cheap = False  # reads cheap features only (features.CHEAP_FEATURES): evaluated first

    def __call__(self, fr: Frame, baseline: Any) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError


class Leaf(Cond):
    def __init__(self, name: str, key: tuple[Any, ...], test: MaskFn) -> None:
        self.cheap = name in CHEAP_FEATURES
        self.key = key  # what it tests, for sharing its mask between rules
        self.test = test

    def __call__(self, fr: Frame, baseline: Any) -> np.ndarray:
        root = fr.batch.all
        if fr.rows is not None and not (root.has(self.key) or (self.cheap and 4 * fr.num_rows >= root.num_rows)):
            # few rows left: cheaper than a pass over the batch
            return self.test(fr, baseline)
        full: np.ndarray = root.memo(self.key, lambda: _frozen(self.test(root, baseline)))
        return full if fr.rows is None else full[fr.rows]


def _frozen(mask: np.ndarray) -> np.ndarray:
    # shared by every rule of the batch: an in-place change would leak into the others
    mask.setflags(write=False)
    return mask


class Not(Cond):
    def __init__(self, inner: Cond) -> None:
        self.inner = inner
        self.cheap = inner.cheap

    def __call__(self, fr: Frame, baseline: Any) -> np.ndarray:
        return ~self.inner(fr, baseline)


def _by_cost(parts: list[Cond]) -> list[Cond]:
    # the order changes no result (row-wise tests): cheap ones first narrow the rows the others see
    return sorted(parts, key=lambda p: not p.cheap)


class _Junction(Cond):
    """all/any of the parts: each part sees only the rows whose answer is still open (not yet
    false for all, not yet true for any)."""

    settles: bool  # the answer a part gives that decides the row

    def __init__(self, parts: list[Cond]) -> None:
        self.parts = _by_cost(parts)
        self.cheap = all(p.cheap for p in parts)

    def __call__(self, fr: Frame, baseline: Any) -> np.ndarray:
        m = np.full(fr.num_rows, not self.settles, dtype=bool)
        for p in self.parts:
            rows = np.flatnonzero(m != self.settles)
            if len(rows) == 0:
                break
            m[rows] = p(fr.subset(rows) if len(rows) < fr.num_rows else fr, baseline)
        return m


class AllOf(_Junction):
    settles = False


class AnyOf(_Junction):
    settles = True


def _compile_one(rule: Rule, cond: dict[str, Any]) -> Cond:
    if "any" in cond:
        return AnyOf([_compile_one(rule, c) for c in cond["any"]])
    if "all" in cond:
        return AllOf([_compile_one(rule, c) for c in cond["all"]])
    if "not" in cond:
        return Not(_compile_one(rule, cond["not"]))
    name = cond["field"]
    op = next(o for o in OPS if o in cond)
    value = rule.value(cond[op])
    key = (name, op, repr(value))
    return Leaf(name, key, _leaf(rule, name, op, value))


def _leaf(rule: Rule, name: str, op: str, value: Any) -> MaskFn:
    if op == "eq":
        return lambda t, b: bool_mask(pc.equal(t[name], value))
    if op == "ne":
        return lambda t, b: ~bool_mask(pc.equal(t[name], value))
    if op in ("in", "not_in"):
        values = value if isinstance(value, list) else [value]
        if not values:
            return (lambda t, b: np.zeros(t.num_rows, dtype=bool)) if op == "in" else \
                (lambda t, b: np.ones(t.num_rows, dtype=bool))

        def isin(t: Frame, b: Any) -> np.ndarray:
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

        def ends(t: Frame, b: Any) -> np.ndarray:
            col = t[name]
            out = np.zeros(t.num_rows, dtype=bool)
            for s in suffixes:
                out |= bool_mask(pc.ends_with(col, s))
            return out
        return ends if op == "suffix" else (lambda t, b: ~ends(t, b))
    if op in ("in_baseline", "not_in_baseline"):
        kind = str(value)

        def member(t: Frame, b: Any) -> np.ndarray:
            if b is None:
                raise RuleError(f"{rule.source}: {rule.id} needs a baseline (--baseline)")
            keys = b.keys(kind)
            return bool_mask(pc.is_in(t[name], value_set=keys))
        return member if op == "in_baseline" else (lambda t, b: ~member(t, b) & bool_mask(t[name].is_valid()))
    raise RuleError(f"{rule.source}: {rule.id}: unsupported operator {op}")


def compile_where(rule: Rule) -> MaskFn:
    """The rule's conditions, then its exceptions, as the mask of a frame's rows it selects."""
    where = AllOf([_compile_one(rule, c) for c in rule.where])
    exc = _compile_exceptions(rule)

    def mask(t: Frame, baseline: Any) -> np.ndarray:
        m = where(t, baseline)
        if exc is not None:
            rows = np.flatnonzero(m)
            if len(rows):
                m[rows] = ~exc(t.subset(rows) if len(rows) < t.num_rows else t)
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


def _compile_exceptions(rule: Rule) -> Callable[[Frame], np.ndarray] | None:
    ex = rule.exceptions
    checks: list[Callable[[Frame], np.ndarray]] = []
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
