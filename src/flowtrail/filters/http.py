"""HTTP filters: status code, method, path, URL, header."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pyarrow as pa

from flowtrail.filters.base import (
    Columns,
    FilterError,
    Mask,
    Predicate,
    list_any,
    str_list,
    to_mask,
)
from flowtrail.filters.fqdn import check_re2, regex_any
from flowtrail.filters.golang import parse_addr, quote
from flowtrail.util import compute as pc

# fullmatch, not match: Python's "$" would also accept a trailing newline, Go's does not
_FULL = re.compile(r"[1-5][0-9]{2}")
_PREFIX = re.compile(r"[1-5][0-9]?\+")
_HTTP_NEEDLES = (b'"http"',)


def http_status_code(values: Any) -> Predicate:
    codes = str_list("http_status_code", values)
    for c in codes:
        if not (_FULL.fullmatch(c) or _PREFIX.fullmatch(c)):
            raise FilterError(f"invalid http status code filter: invalid status code prefix: {quote(c)}")
    exact = [int(c) for c in codes if _FULL.fullmatch(c)]
    prefixes = [c[:-1] for c in codes if _PREFIX.fullmatch(c)]

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
    # both sides upper-cased the same way, standing in for Go's strings.EqualFold
    methods = pc.utf8_upper(pa.array(str_list("http_method", values), pa.string()))

    def fn(cols: Columns) -> Mask:
        method = cols.get("l7.http.method")
        known = to_mask(pc.not_equal(pc.fill_null(method, ""), ""))
        return known & to_mask(pc.is_in(pc.utf8_upper(method), methods))

    return Predicate("http_method", ("l7.http.method",), fn, _HTTP_NEEDLES)


# Go's net/url, as ParseRequestURI runs it in hubble 1.19.4 (built by go 1.26.4 for a go 1.25 module,
# so urlstrictcolons=0: the last colon of a host starts its port).
_HOST_OK = frozenset("!$&'()*+,;=:[]<>\"-_.~")
_USERINFO_OK = frozenset("-._:~!$&'()*+,;=%@")
_HEX = "0123456789abcdefABCDEF"


def _host_char_ok(c: int) -> bool:
    ch = chr(c)
    return c >= 0x80 or (ch.isalnum() and ch.isascii()) or ch in _HOST_OK


def _unescape(s: str, mode: str) -> bytes | None:
    """net/url unescape in ``path``, ``userinfo``, ``host`` or ``zone`` mode; None where Go errs."""
    raw = s.encode()
    out = bytearray()
    i = 0
    while i < len(raw):
        c = raw[i]
        if c == 0x25:  # '%'
            if i + 2 >= len(raw):
                return None
            h1, h2 = chr(raw[i + 1]), chr(raw[i + 2])
            if h1 not in _HEX or h2 not in _HEX:
                return None
            v = int(h1 + h2, 16)
            # a host may escape only non-ASCII bytes (and %25); a zone only what a host may hold
            if mode == "host" and v < 0x80 and raw[i:i + 3] != b"%25":
                return None
            if mode == "zone" and raw[i:i + 3] != b"%25" and v != 0x20 and not (v < 0x80 and _host_char_ok(v)):
                return None
            out.append(v)
            i += 3
            continue
        if mode in ("host", "zone") and c < 0x80 and not _host_char_ok(c):
            return None
        out.append(c)
        i += 1
    return bytes(out)


def _valid_optional_port(port: str) -> bool:
    return port == "" or (port[0] == ":" and all("0" <= ch <= "9" for ch in port[1:]))


def _valid_host(host: str) -> bool:
    bracket = host.rfind("[")
    if bracket > 0:
        return False
    if bracket == 0:
        close = host.rfind("]")
        if close < 0 or not _valid_optional_port(host[close + 1:]):
            return False
        name = host[1:close]
        zone = name.find("%25")
        if zone >= 0:
            head, tail = _unescape(name[:zone], "host"), _unescape(name[zone:], "zone")
            unescaped = None if head is None or tail is None else head + tail
        else:
            unescaped = _unescape(name, "host")
        if unescaped is None or not unescaped.isascii():
            return False
        # only an IPv6 address (IPv4-mapped included) may stand in brackets
        addr = parse_addr(unescaped.decode())
        return addr is not None and addr.version == 6
    colon = host.rfind(":")
    if colon >= 0 and not _valid_optional_port(host[colon:]):
        return False
    return _unescape(host, "host") is not None


def _valid_authority(authority: str) -> bool:
    at = authority.rfind("@")
    if not _valid_host(authority[at + 1:]):
        return False
    if at < 0:
        return True
    userinfo = authority[:at]
    if not all((ch.isascii() and ch.isalnum()) or ch in _USERINFO_OK for ch in userinfo):
        return False
    return all(_unescape(part, "userinfo") is not None for part in userinfo.split(":", 1))


def _go_string(b: bytes) -> str:
    # Go's regexp reads each byte of invalid UTF-8 as one U+FFFD
    text = b.decode("utf-8", "surrogateescape")
    return "".join("\ufffd" if "\udc80" <= ch <= "\udcff" else ch for ch in text) if not text.isascii() else text


def request_path(url: str | None) -> str | None:
    """Path of Go's url.ParseRequestURI(url), or None when it returns an error.

    Unlike a browser it does not split off a ``#fragment`` (the ``#`` stays in the path), an invalid
    ``%`` escape anywhere in the path, host or userinfo is an error, and so is a non-numeric port.
    """
    if not url or any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url):
        return None
    if url == "*":
        return "*"
    scheme, rest = "", url
    for i, ch in enumerate(url):
        if "a" <= ch <= "z" or "A" <= ch <= "Z":
            continue
        if "0" <= ch <= "9" or ch in "+-.":
            if i == 0:
                break
            continue
        if ch == ":":
            if i == 0:
                return None  # missing protocol scheme
            scheme, rest = url[:i], url[i + 1:]
        break
    # a lone trailing '?' is ForceQuery; otherwise the query starts at the first '?'
    rest = rest[:-1] if rest.endswith("?") and rest.count("?") == 1 else rest.partition("?")[0]
    if not rest.startswith("/"):
        # with a scheme it is an opaque URI (empty path); without, not a request URI
        return "" if scheme else None
    if scheme and rest.startswith("//"):
        authority, slash, tail = rest[2:].partition("/")
        if not _valid_authority(authority):
            return None
        rest = slash + tail
    path = _unescape(rest, "path")
    return None if path is None else _go_string(path)


def http_path(values: Any) -> Predicate:
    patterns = str_list("http_path", values)
    for p in patterns:
        check_re2(p, "http_path")

    def fn(cols: Columns) -> Mask:
        urls = cols.get("l7.http.url")
        enc = pc.dictionary_encode(urls)
        paths = pa.array([request_path(u) for u in enc.dictionary.to_pylist()], pa.string())
        path_col = pc.take(paths, enc.indices)
        # a URL hubble cannot parse (or an empty or absent one) matches no path
        return regex_any(path_col, patterns) & to_mask(pc.is_valid(path_col))

    return Predicate("http_path", ("l7.http.url",), fn, _HTTP_NEEDLES)


def http_url(values: Any) -> Predicate:
    patterns = str_list("http_url", values)
    for p in patterns:
        check_re2(p, "http_url")

    def fn(cols: Columns) -> Mask:
        url = cols.get("l7.http.url")
        return regex_any(url, patterns) & to_mask(pc.not_equal(pc.fill_null(url, ""), ""))

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

