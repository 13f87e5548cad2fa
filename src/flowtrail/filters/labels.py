"""Kubernetes label-selector syntax over Cilium labels (``source:key=value``).

Hubble's label filters (source_label, destination_label, node_labels) take k8s selectors whose
keys may carry a Cilium source (``k8s:app=foo``, ``reserved:world``); a key without one matches
labels of any source.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from flowtrail.filters.base import FilterError

ANY = "any"
_KEY_RE = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_./:]*[A-Za-z0-9])?$")
_VALUE_RE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")


def parse_label(label: str) -> tuple[str, str, str]:
    """(source, key, value) of a Cilium label string; no source means ``unspec``."""
    source = "unspec"
    rest = label
    if label.startswith("$"):
        source, rest = "reserved", label[1:]
    else:
        colon = label.find(":")
        eq = label.find("=")
        if colon >= 0 and (eq < 0 or colon < eq):
            source, rest = label[:colon], label[colon + 1 :]
    key, _, value = rest.partition("=")
    return source, key, value


@dataclass(frozen=True)
class Requirement:
    source: str
    key: str
    op: str  # exists, !exists, in, notin
    values: frozenset[str]

    def matches(self, labels: dict[tuple[str, str], set[str]], by_key: dict[str, set[str]]) -> bool:
        vals = by_key.get(self.key, set()) if self.source == ANY else labels.get((self.source, self.key), set())
        present = self.key in by_key if self.source == ANY else (self.source, self.key) in labels
        if self.op == "exists":
            return present
        if self.op == "!exists":
            return not present
        if self.op == "in":
            return bool(vals & self.values)
        return not (vals & self.values)  # notin / != : absent label also satisfies


@dataclass(frozen=True)
class Selector:
    text: str
    requirements: tuple[Requirement, ...]

    def matches(self, labels: list[str] | None) -> bool:
        table: dict[tuple[str, str], set[str]] = {}
        by_key: dict[str, set[str]] = {}
        for lbl in labels or ():
            src, key, value = parse_label(lbl)
            table.setdefault((src, key), set()).add(value)
            by_key.setdefault(key, set()).add(value)
        return all(r.matches(table, by_key) for r in self.requirements)

    def needles(self) -> tuple[bytes, ...] | None:
        """Substrings one of which a line matching this selector must contain."""
        for r in self.requirements:
            if r.op == "in" and r.values:
                if r.source == ANY:
                    return tuple(f"{r.key}={v}".encode() for v in sorted(r.values))
                return tuple(f'"{r.source}:{r.key}={v}'.encode() for v in sorted(r.values))
            if r.op == "exists":
                return (r.key.encode(),)
        return None


def _split_key(raw: str, text: str) -> tuple[str, str]:
    raw = raw.strip()
    if not raw or not _KEY_RE.match(raw):
        raise FilterError(f"invalid label selector {text!r}: invalid key {raw!r}")
    colon = raw.find(":")
    if colon >= 0:
        return raw[:colon], raw[colon + 1 :]
    return ANY, raw


def _check_value(v: str, text: str) -> str:
    v = v.strip()
    if not _VALUE_RE.match(v):
        raise FilterError(f"invalid label selector {text!r}: invalid value {v!r}")
    return v


def _split_top(text: str) -> list[str]:
    parts: list[str] = []
    cur: list[str] = []
    depth = 0
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return parts


_SET_RE = re.compile(r"^\s*(\S+)\s+(in|notin)\s*\((.*)\)\s*$")


def parse_selector(text: str) -> Selector:
    """Parse a k8s label selector (``a=b,c!=d,e in (f,g),!h,i``)."""
    reqs: list[Requirement] = []
    if not text.strip():
        return Selector(text, ())
    for part in _split_top(text):
        p = part.strip()
        if not p:
            raise FilterError(f"invalid label selector {text!r}: empty requirement")
        m = _SET_RE.match(p)
        if m:
            src, key = _split_key(m.group(1), text)
            vals = frozenset(_check_value(v, text) for v in m.group(3).split(","))
            reqs.append(Requirement(src, key, "in" if m.group(2) == "in" else "notin", vals))
            continue
        if p.startswith("!"):
            src, key = _split_key(p[1:], text)
            reqs.append(Requirement(src, key, "!exists", frozenset()))
            continue
        for op, kind in (("!=", "notin"), ("==", "in"), ("=", "in")):
            if op in p:
                k, _, v = p.partition(op)
                src, key = _split_key(k, text)
                reqs.append(Requirement(src, key, kind, frozenset({_check_value(v, text)})))
                break
        else:
            src, key = _split_key(p, text)
            reqs.append(Requirement(src, key, "exists", frozenset()))
    return Selector(text, tuple(reqs))
