"""Kubernetes label-selector syntax over Cilium labels (``source:key=value``).

Hubble's label filters (source_label, destination_label, node_labels) take k8s selectors whose
keys may carry a Cilium source (``k8s:app=foo``, ``reserved:world``); a key without one matches
labels of any source. hubble rewrites ``source:key`` to ``source.key`` (and a bare key to
``any.key``) and hands the result to the k8s selector parser, whose lexer, grammar and key/value
validation this module follows. A requirement looks its key up in the endpoint's labels sorted by
key: the *first* label with that key decides, not any of them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from flowtrail.filters.base import FilterError
from flowtrail.filters.golang import (
    Address,
    NumError,
    is_space,
    parse_int,
    parse_prefix,
    prefix_contains,
    quote,
)

ANY = "any"
_DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_QUALIFIED_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")

Prefix = tuple[Address, int]


# -- Cilium labels --------------------------------------------------------------------------------


def parse_label(label: str, delim: str = ":") -> tuple[str, str, str]:
    """(source, key, value) of a Cilium label string (pkg/labels parseLabel); no source is ``unspec``.

    The source ends at the first ``delim`` wherever ``=`` is; ``$key`` and ``reserved.key`` (for
    ``:``) are reserved labels.
    """
    source, rest = "", label
    if label.startswith("$"):
        source, rest = "reserved", label[1:]
    elif delim in label:
        source, _, rest = label.partition(delim)
    elif delim == ":" and label.startswith("reserved."):
        source, rest = "reserved", label[len("reserved."):]
    key, eq, value = rest.partition("=")
    if eq and key == "" and source == "reserved":
        key, value = value, ""
    return source or "unspec", key, value


def _cidr_of(source: str, key: str) -> Prefix | None:
    # cidr: label keys are prefixes, with '-' for ':' in IPv6 ones
    return parse_prefix(key.replace("-", ":")) if source == "cidr" else None


class LabelArray:
    """An endpoint's labels as hubble looks them up (pkg/labels LabelArray, sorted by key)."""

    def __init__(self, labels: list[str]) -> None:
        # Go sorts with sort.Slice, stable for up to 12 labels (insertion sort); real endpoints do
        # not repeat a key across sources, so stability beyond that is not modelled.
        self.labels = sorted((parse_label(lbl) for lbl in labels), key=lambda lbl: lbl[1])
        self._first_any: dict[str, str] = {}
        self._first: dict[tuple[str, str], str] = {}
        for src, key, value in self.labels:
            self._first_any.setdefault(key, value)
            self._first.setdefault((src, key), value)

    def lookup(self, source: str, key: str, cidr: Prefix | None) -> tuple[str, bool]:
        """(value, exists) of the first label that has the selector's key."""
        if source == ANY:
            if key in self._first_any:
                return self._first_any[key], True
            return "", False
        if source == "cidr":
            # cidr-aware: a cidr label inside the selector's prefix has its key
            for src, k, v in self.labels:
                if src != "cidr":
                    continue
                mine = _cidr_of(src, k)
                if cidr is not None and mine is not None and cidr[1] <= mine[1] and prefix_contains(cidr, mine[0]):
                    return v, True
            return "", False
        if (source, key) in self._first:
            return self._first[(source, key)], True
        return "", False


# -- selectors --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Requirement:
    key: str  # as the k8s parser saw it, e.g. "any.app"
    source: str  # label source the key selects ("any" = every source)
    name: str  # label key
    op: str  # exists, !, in, notin, gt, lt
    values: tuple[str, ...]
    cidr: Prefix | None = None

    def matches(self, labels: LabelArray) -> bool:
        value, exists = labels.lookup(self.source, self.name, self.cidr)
        if self.op == "exists":
            return exists
        if self.op == "!":
            return not exists
        if self.op == "in":
            return exists and value in self.values
        if self.op == "notin":
            return not exists or value not in self.values
        if not exists:
            return False
        try:
            have, want = parse_int(value), parse_int(self.values[0])
        except NumError:
            return False
        return have > want if self.op == "gt" else have < want

    def needles(self) -> tuple[bytes, ...] | None:
        """Substrings one of which a line whose labels meet this requirement must contain."""
        if self.source == "cidr" or self.op in ("!", "notin"):
            return None
        if self.op == "in" and "" not in self.values:
            return tuple(f"{self.name}={v}".encode() for v in sorted(self.values))
        return (self.name.encode(),)


@dataclass(frozen=True)
class Selector:
    text: str
    requirements: tuple[Requirement, ...]

    def matches(self, labels: list[str] | None) -> bool:
        arr = LabelArray(labels or [])
        return all(r.matches(arr) for r in self.requirements)

    def needles(self) -> tuple[bytes, ...] | None:
        """Substrings one of which a line matching this selector must contain."""
        for r in self.requirements:
            n = r.needles()
            if n is not None:
                return n
        return None


def translate_selector(selector: str) -> str:
    """hubble's labelparser.go: ``src:key`` → ``src.key``; a key without source gets ``any.``."""
    out: list[str] = []
    i, n = 0, len(selector)
    while i < n:
        while i < n and (is_space(selector[i]) or selector[i] == "!"):
            out.append(selector[i])
            i += 1
        j = i
        while j < n and not (is_space(selector[j]) or selector[j] in "=!,"):
            j += 1
        key = selector[i:j]
        if ":" not in key:
            key = "any:" + key
        out.append(key.replace(":", ".", 1))
        i = j
        depth = 0
        while i < n:
            ch = selector[i]
            out.append(ch)
            i += 1
            if ch == "(":
                depth += 1
            elif ch == ")":
                depth -= 1
            elif ch == "," and depth == 0:
                break
    return "".join(out)


# k8s selector lexer: tokens are (kind, literal); kinds below, identifiers "id", end "eos".
_LEX_SPACE = " \t\r\n"
_SPECIAL = "=!(),<>"
_SYMBOLS = {")": ")", ",": ",", "!": "!", "==": "==", "=": "=", ">": ">", "<": "<", "!=": "!=", "(": "("}


def _lex(text: str) -> list[tuple[str, str]]:
    toks: list[tuple[str, str]] = []
    i, n = 0, len(text)
    while True:
        while i < n and text[i] in _LEX_SPACE:
            i += 1
        if i >= n or text[i] == "\0":  # the lexer reads a NUL byte as the end of input
            toks.append(("eos", ""))
            return toks
        if text[i] in _SPECIAL:
            two = text[i:i + 2]
            sym = two if two in ("!=", "==") else text[i]
            toks.append((_SYMBOLS[sym], sym))
            i += len(sym)
            if i < n and text[i] == "\0":
                i += 1  # a NUL right after an operator is swallowed with it
            continue
        j = i
        while j < n and text[j] not in _SPECIAL and text[j] not in _LEX_SPACE and text[j] != "\0":
            j += 1
        word = text[i:j]
        toks.append((word, word) if word in ("in", "notin") else ("id", word))
        i = j + 1 if j < n and text[j] == "\0" else j


def _key_error(key: str) -> str | None:
    """validation.IsQualifiedName: ``[prefix/]name``, prefix a DNS-1123 subdomain."""
    parts = key.split("/")
    if len(parts) > 2:
        return "a qualified name must have at most one '/'"
    if len(parts) == 2:
        prefix = parts[0]
        if prefix == "":
            return "prefix part must be non-empty"
        if len(prefix) > 253 or not _DNS1123_SUBDOMAIN.fullmatch(prefix):
            return "prefix part must be a lowercase RFC 1123 subdomain"
    name = parts[-1]
    if name == "":
        return "name part must be non-empty"
    if len(name) > 63:
        return "name part must be no more than 63 characters"
    if not _QUALIFIED_NAME.fullmatch(name):
        return "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"
    return None


def _value_ok(value: str) -> bool:
    return len(value) <= 63 and _LABEL_VALUE.fullmatch(value) is not None


class _Parser:
    """The k8s label selector grammar (``[!]key [op value | in/notin (values)]``, comma-separated)."""

    def __init__(self, text: str, original: str) -> None:
        self.toks = _lex(text)
        self.pos = 0
        self.original = original

    def fail(self, msg: str) -> FilterError:
        return FilterError(f"invalid label selector {quote(self.original)}: {msg}")

    def peek(self, values: bool = True) -> tuple[str, str]:
        kind, lit = self.toks[self.pos]
        # in value position "in" and "notin" are plain identifiers
        return ("id", lit) if values and kind in ("in", "notin") else (kind, lit)

    def take(self, values: bool = True) -> tuple[str, str]:
        tok = self.peek(values)
        self.pos += 1
        return tok

    def parse(self) -> list[Requirement]:
        reqs: list[Requirement] = []
        while True:
            kind, lit = self.peek()
            if kind == "eos":
                return reqs
            if kind not in ("id", "!"):
                raise self.fail(f"found {quote(lit)}, expected: !, identifier, or 'end of string'")
            reqs.append(self.requirement())
            kind, lit = self.take()
            if kind == "eos":
                return reqs
            if kind != ",":
                raise self.fail(f"found {quote(lit)}, expected: ',' or 'end of string'")
            kind, lit = self.peek()
            if kind not in ("id", "!"):
                raise self.fail(f"found {quote(lit)}, expected: identifier after ','")

    def requirement(self) -> Requirement:
        kind, key = self.take()
        negated = kind == "!"
        if negated:
            kind, key = self.take()
        if kind != "id":
            raise self.fail(f"found {quote(key)}, expected: identifier")
        err = _key_error(key)
        if err:
            raise self.fail(f"key {quote(key)}: {err}")
        if negated or self.peek()[0] in ("eos", ","):
            return self.make(key, "!" if negated else "exists", ())
        kind, lit = self.take(values=False)
        ops = {"in": "in", "notin": "notin", "=": "in", "==": "in", "!=": "notin", ">": "gt", "<": "lt"}
        if kind not in ops:
            raise self.fail(f"found {quote(lit)}, expected: in, notin, =, ==, !=, gt, lt")
        op = ops[kind]
        values = self.value_set() if kind in ("in", "notin") else self.exact_value()
        if op in ("gt", "lt"):
            try:
                parse_int(values[0])
            except NumError:
                raise self.fail("for 'Gt', 'Lt' operators, the value must be an integer") from None
        for v in values:
            if not _value_ok(v):
                raise self.fail(f"invalid label value {quote(v)} for key {quote(key)}")
        return self.make(key, op, values)

    def value_set(self) -> tuple[str, ...]:
        kind, lit = self.take()
        if kind != "(":
            raise self.fail(f"found {quote(lit)} expected: '('")
        kind, lit = self.peek()
        if kind == ")":
            self.take()
            return ("",)
        if kind not in ("id", ","):
            raise self.fail(f"found {quote(lit)}, expected: ',', ')' or identifier")
        values: set[str] = set()
        while True:
            kind, lit = self.take()
            if kind == "id":
                values.add(lit)
                nxt, nlit = self.peek()
                if nxt == ")":
                    break
                if nxt != ",":
                    raise self.fail(f"found {quote(nlit)}, expected: ',' or ')'")
            elif kind == ",":
                # empty entries ("(,a", "a,,b", "a,)") are the empty value
                if not values:
                    values.add("")
                nxt, _ = self.peek()
                if nxt == ")":
                    values.add("")
                    break
                if nxt == ",":
                    values.add("")
            else:
                raise self.fail(f"found {quote(lit)}, expected: ',', or identifier")
        self.take()  # the ")"
        return tuple(sorted(values))

    def exact_value(self) -> tuple[str, ...]:
        kind, _ = self.peek()
        if kind in ("eos", ","):
            return ("",)
        kind, lit = self.take()
        if kind != "id":
            raise self.fail(f"found {quote(lit)}, expected: identifier")
        return (lit,)

    @staticmethod
    def make(key: str, op: str, values: tuple[str, ...]) -> Requirement:
        # the key is looked up as a "source.key" label, an unspecified source meaning any
        source, name, _ = parse_label(key, ".")
        if source == "unspec":
            source = ANY
        return Requirement(key, source, name, op, values, _cidr_of(source, name))


def parse_selector(text: str) -> Selector:
    """Parse one hubble label selector (``k8s:app=a,!b,c in (d, e),n>5``) as hubble does."""
    return Selector(text, tuple(_Parser(translate_selector(text), text).parse()))
