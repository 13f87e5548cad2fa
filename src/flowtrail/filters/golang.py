"""The few Go standard-library behaviours hubble's filters and flags inherit, written for Python.

Hubble's answers depend on them at the edges: which strings ``strconv.ParseUint`` accepts and the
error text it wraps, what ``strings.TrimSpace`` and ``strings.ToLower`` change, how ``%q`` quotes,
and which addresses ``netip.ParseAddr``/``ParsePrefix`` take. Python's look-alikes differ there
(``str.strip`` also trims U+001C-U+001F, ``int`` takes full-width digits, ``repr`` single-quotes).
"""

from __future__ import annotations

import ipaddress
import unicodedata

# unicode.IsSpace: the Latin-1 spaces plus the White_Space property; str.isspace adds \x1c-\x1f.
GO_SPACE = "\t\n\v\f\r \x85\xa0\u1680" + "".join(map(chr, range(0x2000, 0x200B))) + "\u2028\u2029\u202f\u205f\u3000"


def is_space(ch: str) -> bool:
    return ch in GO_SPACE


def trim_space(s: str) -> str:
    return s.strip(GO_SPACE)


def to_lower(s: str) -> str:
    """strings.ToLower: per-rune simple lower-casing, so U+0130 is a plain 'i' and never two runes."""
    if s.isascii():
        return s.lower()
    return "".join("i" if ch == "\u0130" else ch.lower() if len(ch.lower()) == 1 else ch for ch in s)


_QUOTE_ESCAPES = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v",
                  "\\": "\\\\", '"': '\\"'}


def _is_print(ch: str) -> bool:
    # unicode.IsPrint: letters, marks, numbers, punctuation, symbols and the ASCII space
    return ch == " " or unicodedata.category(ch)[0] in "LMNPS"


def quote(s: str) -> str:
    """strconv.Quote (what ``%q`` prints for a string)."""
    out = ['"']
    for ch in s:
        code = ord(ch)
        if ch in _QUOTE_ESCAPES:
            out.append(_QUOTE_ESCAPES[ch])
        elif 0xDC80 <= code <= 0xDCFF:
            out.append(f"\\x{code - 0xDC00:02x}")  # an undecodable argv byte (surrogateescape)
        elif _is_print(ch):
            out.append(ch)
        elif code < 0x80:
            out.append(f"\\x{code:02x}")
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)


class NumError(ValueError):
    """strconv.NumError; ``str()`` is Go's message, e.g. ``strconv.ParseUint: parsing "x": invalid syntax``."""

    def __init__(self, func: str, num: str, reason: str) -> None:
        super().__init__(f"strconv.{func}: parsing {quote(num)}: {reason}")
        self.range_error = reason == "value out of range"


def _underscores_ok(s: str) -> bool:
    # underscores only between digits, or between a base prefix and a digit
    saw = "^"
    i = 0
    if s[:1] in ("+", "-"):
        s = s[1:]
    hexa = False
    if len(s) >= 2 and s[0] == "0" and s[1] in "bBoOxX":
        i, saw, hexa = 2, "0", s[1] in "xX"
    for ch in s[i:]:
        if "0" <= ch <= "9" or (hexa and ch.lower() in "abcdef"):
            saw = "0"
        elif ch == "_":
            if saw != "0":
                return False
            saw = "_"
        elif saw == "_":
            return False
        else:
            saw = "!"
    return saw != "_"


def parse_uint(s: str, base: int = 10, bits: int = 64, func: str = "ParseUint") -> int:
    """strconv.ParseUint: ASCII digits only, base 0 reads 0x/0o/0b/0 prefixes and ``_`` separators;
    the first overflow is a range error even if a bad character follows."""
    if s == "":
        raise NumError(func, s, "invalid syntax")
    base0 = base == 0
    digits = s
    if base0:
        base = 10
        if s[0] == "0":
            if len(s) >= 3 and s[1] in "bB":
                base, digits = 2, s[2:]
            elif len(s) >= 3 and s[1] in "oO":
                base, digits = 8, s[2:]
            elif len(s) >= 3 and s[1] in "xX":
                base, digits = 16, s[2:]
            else:
                base, digits = 8, s[1:]
    max_val = (1 << bits) - 1
    n = 0
    underscores = False
    for ch in digits:
        if ch == "_" and base0:
            underscores = True
            continue
        if "0" <= ch <= "9":
            d = ord(ch) - 48
        elif "a" <= ch.lower() <= "z" and ch.isascii():
            d = ord(ch.lower()) - 87
        else:
            raise NumError(func, s, "invalid syntax")
        if d >= base:
            raise NumError(func, s, "invalid syntax")
        n = n * base + d
        if n > max_val:
            raise NumError(func, s, "value out of range")
    if underscores and not _underscores_ok(s):
        raise NumError(func, s, "invalid syntax")
    return n


def parse_int(s: str, base: int = 10, bits: int = 64) -> int:
    """strconv.ParseInt: an optional sign, then ParseUint's digits, range-checked for ``bits``."""
    if s == "":
        raise NumError("ParseInt", s, "invalid syntax")
    neg = s[0] == "-"
    rest = s[1:] if s[0] in "+-" else s
    try:
        un = parse_uint(rest, base, bits, "ParseInt")
    except NumError as exc:
        if not exc.range_error:
            raise NumError("ParseInt", s, "invalid syntax") from None
        raise NumError("ParseInt", s, "value out of range") from None
    cutoff = 1 << (bits - 1)
    if (not neg and un >= cutoff) or (neg and un > cutoff):
        raise NumError("ParseInt", s, "value out of range")
    return -un if neg else un


Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_addr(s: str) -> Address | None:
    """netip.ParseAddr (an IPv6 zone is accepted and dropped), or None where it fails."""
    for ch in s:
        if ch == ".":
            try:
                return ipaddress.IPv4Address(s)
            except ValueError:
                return None
        if ch == ":":
            addr, pct, zone = s.partition("%")
            if pct and not zone:
                return None
            try:
                return ipaddress.IPv6Address(addr)
            except ValueError:
                return None
        if ch == "%":
            return None
    return None


def parse_prefix(s: str) -> tuple[Address, int] | None:
    """netip.ParsePrefix: (address as written, bits), or None where it fails."""
    addr_s, slash, bits_s = s.rpartition("/")
    if not slash:
        return None
    addr = parse_addr(addr_s)
    if addr is None or "%" in addr_s:
        return None
    if len(bits_s) > 1 and not "1" <= bits_s[0] <= "9":
        return None
    if not bits_s.isascii() or not bits_s.isdigit():
        return None
    bits = int(bits_s)
    if bits > addr.max_prefixlen:
        return None
    return addr, bits


def prefix_contains(prefix: tuple[Address, int], addr: Address) -> bool:
    """netip.Prefix.Contains: same family, equal in the prefix's leading bits."""
    net_addr, bits = prefix
    if net_addr.version != addr.version:
        return False
    shift = net_addr.max_prefixlen - bits
    return int(net_addr) >> shift == int(addr) >> shift
