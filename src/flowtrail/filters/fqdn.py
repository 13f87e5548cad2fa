"""DNS name filters: source_fqdn / destination_fqdn (wildcards) and dns_query (RE2 regex)."""

from __future__ import annotations

import re
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from flowtrail.filters.base import Columns, FilterError, Mask, Predicate, list_any, str_list, to_mask

_FQDN_CHARS = re.compile(r"^[-0-9_a-z.*]*$")


def fqdn_regex(patterns: list[str], field: str) -> str:
    """Anchored RE2 for Hubble's FQDN wildcard patterns (``*`` ⇒ ``[-.0-9a-z]*``)."""
    parts = []
    for raw in patterns:
        p = raw.strip()
        if p.endswith("."):
            p = p[:-1]
        p = p.lower()
        if not _FQDN_CHARS.match(p):
            raise FilterError(f"{field}: invalid FQDN pattern {raw!r}: only [-a-zA-Z0-9_.*] allowed")
        parts.append(p.replace(".", "[.]").replace("*", "[-.0-9a-z]*"))
    return r"\A(?:" + "|".join(parts) + r")\z"


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
    combined = "|".join(f"(?:{p})" for p in patterns)
    return to_mask(pc.match_substring_regex(pc.fill_null(arr, ""), combined)) & to_mask(arr.is_valid())


def dns_query(values: Any) -> Predicate:
    patterns = str_list("dns_query", values)
    for p in patterns:
        check_re2(p, "dns_query")

    def fn(cols: Columns) -> Mask:
        return regex_any(cols.get("l7.dns.query"), patterns) & cols.valid("l7.dns")

    return Predicate("dns_query", ("l7.dns",), fn, (b'"dns"',))
