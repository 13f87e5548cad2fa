"""Label selectors (Kubernetes and Cilium flavours) and Cilium FQDN patterns.

Kubernetes selectors match a plain ``key -> value`` map. Cilium selectors match identity labels
that carry a *source* (``k8s:``, ``reserved:``, ``cidr:`` …); a selector key without a source
matches any source (policy-reference.md §2.3).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")

# Label sources Cilium knows; anything else before a ':' is part of the key (label keys cannot
# contain ':' in Kubernetes, but be strict about what is treated as a source).
SOURCES = ("any", "k8s", "reserved", "cidr", "fqdn", "unspec", "container", "cilium-generated")

NS_KEY = "io.kubernetes.pod.namespace"
NS_LABELS_PREFIX = "io.cilium.k8s.namespace.labels."

# An identity label index: key -> [(source, value)]
LabelIndex = Mapping[str, Sequence[tuple[str, str]]]


class SelectorError(ValueError):
    pass


def split_source(key: str) -> tuple[str, str]:
    """``k8s:app`` -> ("k8s", "app"); ``app`` -> ("any", "app")."""
    head, sep, tail = key.partition(":")
    if sep and head in SOURCES:
        return head, tail
    return "any", key


@dataclass(frozen=True)
class Requirement:
    key: str
    operator: str
    values: frozenset[str] = frozenset()

    def describe(self) -> str:
        if self.operator == "Exists":
            return self.key
        if self.operator == "DoesNotExist":
            return f"!{self.key}"
        vals = ",".join(sorted(self.values))
        if self.operator == "In" and len(self.values) == 1:
            return f"{self.key}={vals}"
        return f"{self.key} {'in' if self.operator == 'In' else 'notin'} ({vals})"

    def matches_plain(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        if self.operator == "Exists":
            return present
        if self.operator == "DoesNotExist":
            return not present
        if self.operator == "In":
            return present and labels[self.key] in self.values
        return not present or labels[self.key] not in self.values

    def matches_sourced(self, index: LabelIndex) -> bool:
        source, key = split_source(self.key)
        cands = [v for s, v in index.get(key, ()) if source == "any" or s == source]
        if self.operator == "Exists":
            return bool(cands)
        if self.operator == "DoesNotExist":
            return not cands
        if self.operator == "In":
            return any(v in self.values for v in cands)
        return not any(v in self.values for v in cands)


@dataclass(frozen=True)
class LabelSelector:
    """matchLabels and matchExpressions, ANDed; the empty selector matches everything."""

    requirements: tuple[Requirement, ...] = ()
    # a selector that matches nothing (e.g. Cilium's `none` entity); never produced by parsing
    nothing: bool = False
    extra: tuple[str, ...] = field(default=(), compare=False)

    @property
    def empty(self) -> bool:
        return not self.requirements and not self.nothing

    def matches_plain(self, labels: Mapping[str, str]) -> bool:
        return not self.nothing and all(r.matches_plain(labels) for r in self.requirements)

    def matches_sourced(self, index: LabelIndex) -> bool:
        return not self.nothing and all(r.matches_sourced(index) for r in self.requirements)

    def constrains(self, key: str) -> bool:
        """True when some requirement is on ``key`` (with source k8s or any)."""
        for r in self.requirements:
            source, k = split_source(r.key)
            if k == key and source in ("any", "k8s"):
                return True
        return False

    def uses_prefix(self, prefix: str) -> bool:
        return any(split_source(r.key)[1].startswith(prefix) for r in self.requirements)

    def uses_source(self, source: str) -> bool:
        return any(split_source(r.key)[0] == source for r in self.requirements)

    def with_requirement(self, req: Requirement) -> LabelSelector:
        return LabelSelector((*self.requirements, req), self.nothing)

    def without_key(self, key: str) -> LabelSelector:
        return LabelSelector(tuple(r for r in self.requirements if split_source(r.key)[1] != key), self.nothing)

    def describe(self) -> str:
        if self.nothing:
            return "<nothing>"
        if not self.requirements:
            return "{}"
        return "{" + ", ".join(r.describe() for r in self.requirements) + "}"


def parse_selector(obj: Any, where: str) -> LabelSelector:
    """A metav1.LabelSelector from its JSON form (already schema-checked for shape)."""
    if obj is None:
        return LabelSelector()
    if not isinstance(obj, dict):
        raise SelectorError(f"{where}: a label selector must be a mapping")
    reqs: list[Requirement] = []
    for k, v in sorted((obj.get("matchLabels") or {}).items()):
        reqs.append(Requirement(str(k), "In", frozenset([_label_value(v)])))
    for i, e in enumerate(obj.get("matchExpressions") or []):
        op = e.get("operator")
        vals = [_label_value(x) for x in (e.get("values") or [])]
        if op not in OPERATORS:
            raise SelectorError(f"{where}.matchExpressions[{i}]: unknown operator {op!r}")
        if op in ("In", "NotIn") and not vals:
            raise SelectorError(f"{where}.matchExpressions[{i}]: operator {op} needs values")
        if op in ("Exists", "DoesNotExist") and vals:
            raise SelectorError(f"{where}.matchExpressions[{i}]: operator {op} takes no values")
        reqs.append(Requirement(str(e.get("key")), op, frozenset(vals)))
    return LabelSelector(tuple(reqs))


def _label_value(v: Any) -> str:
    # YAML turns `app: true` or `version: 1` into non-strings; the API server sees strings
    if isinstance(v, bool):
        return "true" if v else "false"
    return "" if v is None else str(v)


# ---- Cilium FQDN selectors (matchName / matchPattern) ----------------------------------------

_DNS_CHARS = "[-a-zA-Z0-9_]"


def fqdn_normalize(name: str) -> str:
    name = name.strip().lower()
    return name if name.endswith(".") else name + "."


def pattern_regex(pattern: str) -> re.Pattern[str]:
    """Regex for a Cilium ``matchPattern`` (policy-reference.md §2.7, matchpattern.go semantics).

    ``*`` stays inside one label; a leading ``**.`` spans one or more whole labels; a pattern made
    only of stars (and dots) matches every name.
    """
    p = fqdn_normalize(pattern)
    if p.strip("*.") == "":
        return re.compile(rf"^(?:{_DNS_CHARS}+\.)+$|^\.$")
    prefix = ""
    if p.startswith("**."):
        prefix = rf"(?:{_DNS_CHARS}+\.)+"
        p = p[3:]
    body = "".join(f"{_DNS_CHARS}*" if ch == "*" else re.escape(ch) for ch in p)
    return re.compile(f"^{prefix}{body}$")


@dataclass(frozen=True)
class FQDNSelector:
    match_name: str | None = None
    match_pattern: str | None = None

    def __post_init__(self) -> None:
        if self.match_pattern is not None:
            object.__setattr__(self, "_re", pattern_regex(self.match_pattern))

    def matches(self, name: str) -> bool:
        n = fqdn_normalize(name)
        if self.match_name is not None and n == fqdn_normalize(self.match_name):
            return True
        if self.match_pattern is not None:
            rx: re.Pattern[str] = self.__dict__["_re"]
            return rx.match(n) is not None
        return False

    def describe(self) -> str:
        parts = []
        if self.match_name is not None:
            parts.append(f"matchName={self.match_name}")
        if self.match_pattern is not None:
            parts.append(f"matchPattern={self.match_pattern}")
        return " ".join(parts)
