"""HTTP filters: status code, method, path, URL, header."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote, urlsplit

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from flowtrail.filters.base import (
    Columns,
    FilterError,
    Mask,
    Predicate,
    list_any,
    per_unique,
    str_list,
    to_mask,
)
from flowtrail.filters.fqdn import check_re2, regex_any

_FULL = re.compile(r"^[1-5][0-9]{2}$")
_PREFIX = re.compile(r"^[1-5][0-9]?\+$")
_HTTP_NEEDLES = (b'"http"',)


def http_status_code(values: Any) -> Predicate:
    codes = str_list("http_status_code", values)
    for c in codes:
        if not (_FULL.match(c) or _PREFIX.match(c)):
            raise FilterError(f"invalid status code filter {c!r}: expected 3 digits or a prefix like 5+")
    exact = [int(c) for c in codes if _FULL.match(c)]
    prefixes = [c[:-1] for c in codes if _PREFIX.match(c)]

    def fn(cols: Columns) -> Mask:
        code = pc.fill_null(cols.get("l7.http.code"), 0)
        out = to_mask(pc.is_in(code, pa.array(exact, pa.int64()))) if exact else np.zeros(cols.n, bool)
        if prefixes:
            text = pc.utf8_lpad(pc.cast(code, pa.string()), 3, "0")
            for p in prefixes:
                out |= to_mask(pc.starts_with(text, p))
        return out & to_mask(pc.greater(code, 0))

    return Predicate("http_status_code", ("l7.http.code",), fn, (b'"code"',))


def http_method(values: Any) -> Predicate:
    methods = [m.upper() for m in str_list("http_method", values)]

    def fn(cols: Columns) -> Mask:
        method = pc.utf8_upper(cols.get("l7.http.method"))
        return to_mask(pc.is_in(method, pa.array(methods, pa.string())))

    return Predicate("http_method", ("l7.http.method",), fn, _HTTP_NEEDLES)


def request_path(url: str | None) -> str | None:
    """Path of Go's url.ParseRequestURI(url), or None when it would not parse."""
    if not url:
        return None
    if not (url.startswith("/") or re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", url)):
        return None
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    if parts.scheme and not url.startswith("/") and not parts.netloc and not parts.path.startswith("/"):
        return None  # opaque URIs ("mailto:x") have no path in Go
    return unquote(parts.path)


def http_path(values: Any) -> Predicate:
    patterns = str_list("http_path", values)
    for p in patterns:
        check_re2(p, "http_path")

    def fn(cols: Columns) -> Mask:
        urls = cols.get("l7.http.url")
        enc = pc.dictionary_encode(urls)
        paths = pa.array([request_path(u) for u in enc.dictionary.to_pylist()], pa.string())
        path_col = paths.take(enc.indices)
        return regex_any(path_col, patterns)

    return Predicate("http_path", ("l7.http.url",), fn, _HTTP_NEEDLES)


def http_url(values: Any) -> Predicate:
    patterns = str_list("http_url", values)
    for p in patterns:
        check_re2(p, "http_url")

    def fn(cols: Columns) -> Mask:
        return regex_any(cols.get("l7.http.url"), patterns)

    return Predicate("http_url", ("l7.http.url",), fn, _HTTP_NEEDLES)


def http_header(values: Any) -> Predicate:
    if not isinstance(values, list) or not all(isinstance(v, dict) for v in values):
        raise FilterError("http_header: expected a list of {key, value} objects")
    wanted = [(str(v.get("key", "")), str(v.get("value", ""))) for v in values]

    def fn(cols: Columns) -> Mask:
        def items(flat: pa.Array) -> Mask:
            keys = pc.fill_null(pc.struct_field(flat, ["key"]), "")
            vals = pc.fill_null(pc.struct_field(flat, ["value"]), "")
            hit = np.zeros(len(flat), dtype=bool)
            for k, v in wanted:
                hit |= to_mask(pc.and_(pc.equal(keys, k), pc.equal(vals, v)))
            return hit

        return list_any(cols.get("l7.http.headers"), items, cols.n)

    return Predicate("http_header", ("l7.http.headers",), fn, _HTTP_NEEDLES)


_ = per_unique
