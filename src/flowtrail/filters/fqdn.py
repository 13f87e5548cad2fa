"""DNS name filters: source_fqdn / destination_fqdn (wildcards) and dns_query (RE2 regex)."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from flowtrail.filters.base import Columns, FilterError, Mask, Predicate, list_any, str_list, to_mask
from flowtrail.filters.golang import to_lower, trim_space
from flowtrail.util import compute as pc

# A non-empty lower-case FQDN: what an empty cluster or node part of a node name pattern stands for.
FQDN_RE = r"(?:[-0-9_a-z]+(?:\.[-0-9_a-z]+)*)"


def fqdn_pattern_regex(raw: str, field: str) -> str:
    """RE2 for one of Hubble's FQDN wildcard patterns (``*`` ⇒ ``[-.0-9a-z]*``), unanchored.

    As hubble canonicalises it: surrounding space and one trailing dot go, case folds to lower; what
    is left must be non-empty, not end in another dot, and use only ``[-0-9_a-z.*]``.
    """
    p = to_lower(trim_space(raw).removesuffix("."))
    if p == "":
        raise FilterError(f"{field}: invalid FQDN pattern {raw!r}: empty pattern")
    if p.endswith("."):
        raise FilterError(f"{field}: invalid FQDN pattern {raw!r}: multiple trailing dots in pattern")
    out = []
    for ch in p:
        if ch == ".":
            out.append(r"\.")
        elif ch == "*":
            out.append("[-.0-9a-z]*")
        elif ch in "-_" or "0" <= ch <= "9" or "a" <= ch <= "z":
            out.append(ch)
        else:
            raise FilterError(f"{field}: invalid FQDN pattern {raw!r}: {ch!r}: invalid rune in pattern")
    return "".join(out)


def fqdn_regex(patterns: list[str], field: str) -> str:
    """Anchored RE2 matching any of the FQDN wildcard patterns."""
    return r"\A(?:" + "|".join(fqdn_pattern_regex(p, field) for p in patterns) + r")\z"


def _fqdn_predicate(field: str, values: Any, path: str) -> Predicate:
    regex = fqdn_regex(str_list(field, values), field)

    def fn(cols: Columns) -> Mask:
        return list_any(cols.get(path), lambda flat: to_mask(pc.match_substring_regex(flat, regex)), cols.n)

    key = path.split(".")[-1]
    camel = "sourceNames" if key == "source_names" else "destinationNames"
    return Predicate(field, (path,), fn, (f'"{key}"'.encode(), f'"{camel}"'.encode()))


def source_fqdn(values: Any) -> Predicate:
    return _fqdn_predicate("source_fqdn", values, "source_names")


def destination_fqdn(values: Any) -> Predicate:
    return _fqdn_predicate("destination_fqdn", values, "destination_names")


def check_re2(pattern: str, field: str) -> None:
    """Reject patterns RE2 (Go's regexp) cannot compile, as hubble does when building the filter."""
    try:
        pc.match_substring_regex(pa.array([""]), pattern)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise FilterError(f"{field}: invalid regular expression {pattern!r}: {exc}") from exc


def regex_any(arr: pa.Array, patterns: list[str]) -> Mask:
    """Per row: does any pattern match the string (a null one is matched as ``""``, as Go reads it)?"""
    combined = "|".join(f"(?:{p})" for p in patterns)
    return to_mask(pc.match_substring_regex(pc.fill_null(arr, ""), combined))


def dns_query(values: Any) -> Predicate:
    patterns = str_list("dns_query", values)
    for p in patterns:
        check_re2(p, "dns_query")

    def fn(cols: Columns) -> Mask:
        return regex_any(cols.get("l7.dns.query"), patterns) & cols.valid("l7.dns")

    return Predicate("dns_query", ("l7.dns",), fn, (b'"dns"',))
