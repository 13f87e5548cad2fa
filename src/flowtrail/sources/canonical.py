"""Which flow lines can be passed through as they are: one RE2 pattern, run column-wise by Arrow.

``hubble observe -o json`` re-marshals every line it reads, so its output differs from its input
whenever the input uses a spelling protojson accepts but does not write: lowerCamelCase names,
enums or 64-bit integers as numbers, explicit zero values, ``null``, timestamps not in UTC with
0, 3, 6 or 9 digits. Its reader also drops unknown enum names and rejects out-of-range integers
or a second event in the same line. :data:`SUSPECT` matches a line showing any of these, and a
few signs of a damaged line (two values run together, invalid escapes, null in a list); such
lines take the exact path in :mod:`flowtrail.model.normalize`. A line it does not match is
copied to JSON output unchanged (once Arrow's reader has found it to be valid JSON).

The pattern looks for short local signs (a key and the first byte of its value) rather than
parsing, so that RE2 runs it as one small automaton over whole blocks. A sign inside a string
value (a summary quoting JSON) only costs that line the exact path.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from flowtrail.model import enums
from flowtrail.model.schema import ENVELOPE, OTHER_EVENT_KEYS, Message, Repeated, camel_aliases

_U32_MAX = 4294967295

# First byte of a canonical value, by field kind (zero values, false and empty strings are omitted
# by protojson, so they never start a canonical value).
_VALUE_START = {
    "str": '"', "ts": '"', "enum": '"', "u64": '"', "i64": '"',
    "u32": "1-9", "i32": "1-9",
    "bool": "t", "msg": "{", "rep": r"\[",
}


def _key_kinds(root: Message = ENVELOPE) -> dict[str, set[str]]:
    """Every field name of the envelope tree and the kinds it has somewhere in the tree."""
    kinds: dict[str, set[str]] = {}

    def walk(spec: Message) -> None:
        for key, sub in spec.items():
            if isinstance(sub, Repeated):
                kinds.setdefault(key, set()).add("rep")
                if isinstance(sub.item, dict):
                    walk(sub.item)
            elif isinstance(sub, dict):
                kinds.setdefault(key, set()).add("msg")
                walk(sub)
            else:
                kinds.setdefault(key, set()).add(sub.kind)

    walk(root)
    return kinds


def _alt(words: Iterable[str]) -> str:
    return "(?:" + "|".join(re.escape(w) for w in sorted(words)) + ")"


def _class_escape(chars: Iterable[str]) -> str:
    return "".join("\\" + c if c in "]\\^-[" else c for c in sorted(chars))


def _not_one_of(words: Iterable[str]) -> str:
    """Matches the body and closing quote of any JSON string that is not one of ``words``,
    stopping at the first byte that leaves the set (the words are plain ASCII)."""
    trie: dict[str, Any] = {}
    for word in words:
        node = trie
        for ch in word:
            node = node.setdefault(ch, {})
        node[""] = {}

    def walk(node: dict[str, Any]) -> str:
        kids = sorted(c for c in node if c)
        allowed = _class_escape(kids) + ('"' if "" in node else "")
        alts = [f"[^{allowed}]"]
        alts += [re.escape(c) + walk(node[c]) for c in kids]
        return "(?:" + "|".join(alts) + ")"

    return walk(trie)


def _greater_than(bound: int) -> str:
    """Digits of a decimal integer above ``bound`` (no leading zeros, as canonical JSON has)."""
    digits = str(bound)
    alts = [f"[1-9][0-9]{{{len(digits)},}}"]
    for i, d in enumerate(digits):
        if d != "9":
            rest = len(digits) - i - 1
            alts.append(digits[:i] + f"[{int(d) + 1}-9]" + (f"[0-9]{{{rest}}}" if rest else ""))
    return "(?:" + "|".join(alts) + ")"


def _off_shape(shape: list[str], tail: str) -> str:
    """Matches text that leaves ``shape`` (one character class per byte) before its end, or
    that follows it with something ``tail`` (a pattern of bad continuations) matches."""
    out = tail
    for cls in reversed(shape):
        out = f"(?:[^{cls}]|[{cls}]{out})"
    return out


# protojson writes a Timestamp in UTC with 0, 3, 6 or 9 fractional digits, never ending in 000
_D = "0-9"
_TS_SHAPE = [_D] * 4 + ["-"] + [_D] * 2 + ["-"] + [_D] * 2 + ["T"] + [_D] * 2 + [":"] + [_D] * 2 + [":"] + [_D] * 2
_F4 = '(?:[^Z]|Z[^"])'
_F3 = f'(?:[^0-9Z]|Z[^"]|000Z|[0-9]{{1,2}}[^0-9]|[0-9]{{3}}{_F4})'
_F2 = f'(?:[^0-9Z]|Z[^"]|000Z|[0-9]{{1,2}}[^0-9]|[0-9]{{3}}{_F3})'
_TS_TAIL = f'(?:[^Z.]|Z[^"]|\\.(?:000Z|[0-9]{{0,2}}[^0-9]|[0-9]{{3}}{_F2}))'


# Enums whose names would make up most of the pattern, and so most of its compile time (Arrow
# compiles it on every call): their values are looked up in Python instead; they are rare fields.
LARGE_ENUMS = {"drop_reason_desc": frozenset(n for n, v in enums.DROP_REASON.items() if v)}


def suspect_pattern() -> str:
    kinds = _key_kinds()
    enum_names: dict[str, set[str]] = {}
    for path, table in enums.ENUM_FIELDS.items():
        enum_names.setdefault(path.rsplit(".", 1)[-1], set()).update(n for n, v in table.items() if v)
    # a number that is not a canonical uint32: fraction, exponent, or too large
    bad_number = f"[1-9][0-9]*[^0-9,}}\\]]|{_greater_than(_U32_MAX)}"
    # keys whose values are checked alike share one rule: a smaller pattern compiles faster
    by_check: dict[str, list[str]] = {}
    for key, ks in kinds.items():
        if "any" in ks:
            continue
        start = "".join(sorted({_VALUE_START[k] for k in ks}))
        if key == "is_reply":  # a BoolValue: false is set, and printed
            start = "ft"
        alts = [f"[^{start}]"]
        if ks & {"str", "ts", "enum", "u64", "i64"}:
            alts.append('""')  # protojson omits empty strings
        if "rep" in ks:
            alts.append(r"\[(?:\]|null)")  # an empty list (omitted by protojson), null in a list (an error)
        if ks & {"u32", "i32"}:
            alts.append(bad_number)
        if ks <= {"u64", "i64"}:
            alts.append('"(?:[^1-9]|[1-9][0-9]*[^0-9"])')
        if ks == {"ts"}:
            alts.append('"' + _off_shape(_TS_SHAPE, _TS_TAIL))
        if key in enum_names and key not in LARGE_ENUMS and not ks & {"str"}:
            # (tunnel.protocol is skipped: it shares its name with http.protocol, a free string)
            alts.append('"' + _not_one_of(enum_names[key]))
        by_check.setdefault("(?:" + "|".join(alts) + ")", []).append(key)
    # any use of a lowerCamel name or of another event's key makes a line non-canonical
    by_check[""] = [*camel_aliases(), "lost_events", *OTHER_EVENT_KEYS]
    rules = [f'{_alt(keys)}":{check}' for check, keys in sorted(by_check.items())]
    rules.append(",null")  # null after a string in a list: an error for protojson
    return '"(?:' + "|".join(rules) + ")"


# Signs that start with a byte rarer than '"' are separate patterns: RE2 skips to the first byte
# of a pattern with memchr only when all its alternatives share it. Each comes with that byte.
SUSPECT_RARE = (
    (r"\}(?:[ \t]*[\[{]|,null)", b"}"),  # two values run together; null after an object in a list
    (r'\\(?:[^"\\/bfnrtu]|u[dD][89abAB])', b"\\"),  # invalid escape, lone surrogate
)
SUSPECT = suspect_pattern()
