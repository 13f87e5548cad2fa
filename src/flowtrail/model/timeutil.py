"""Timestamps as Hubble writes and reads them: RFC 3339 with up to nanoseconds, Go layouts."""

from __future__ import annotations

import calendar
import re
import time
from datetime import datetime, timedelta, timezone

_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?([Zz]|[+-]\d{2}:\d{2})$"
)
_GO_DURATION = re.compile(r"^([-+]?)((?:\d+(?:\.\d*)?|\.\d+)(?:ns|us|µs|ms|s|m|h))+$")
_GO_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_NS = {"ns": 1, "us": 1_000, "µs": 1_000, "ms": 1_000_000, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9}


def parse_rfc3339_ns(value: str | None) -> int | None:
    """Nanoseconds since the epoch, or None when ``value`` is not an RFC 3339 timestamp."""
    if not value:
        return None
    m = _RFC3339.match(value)
    if not m:
        return None
    y, mo, d, h, mi, s, frac, tz = m.groups()
    try:
        secs = calendar.timegm((int(y), int(mo), int(d), int(h), int(mi), int(s), 0, 0, 0))
        datetime(int(y), int(mo), int(d), int(h), int(mi), int(s))
    except ValueError:
        return None
    if tz not in ("Z", "z"):
        sign = 1 if tz[0] == "+" else -1
        secs -= sign * (int(tz[1:3]) * 3600 + int(tz[4:6]) * 60)
    nanos = int((frac or "").ljust(9, "0")) if frac else 0
    return secs * 10**9 + nanos


def parse_go_duration_ns(value: str) -> int | None:
    if not _GO_DURATION.match(value):
        return None
    sign = -1 if value.startswith("-") else 1
    total = 0.0
    for num, unit in _GO_DURATION_PART.findall(value):
        total += float(num) * _UNIT_NS[unit]
    return sign * int(total)


# Layouts `hubble observe --since/--until` accept besides durations (hubble/pkg/time).
_LAYOUTS = [
    (re.compile(r"^(\d{4})-(\d{2})-(\d{2})$"), "date"),
    (re.compile(r"^(\d{4})-(\d{2})-(\d{2})T(\d{2})([Zz]|[+-]\d{2}:\d{2})$"), "hour"),
    (re.compile(r"^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2})([Zz]|[+-]\d{2}:\d{2})$"), "minute"),
]


def parse_time_arg(value: str, now_ns: int | None = None) -> int:
    """``--since``/``--until`` value → epoch ns; ValueError with hubble-like wording otherwise."""
    now_ns = time.time_ns() if now_ns is None else now_ns
    dur = parse_go_duration_ns(value)
    if dur is not None:
        return now_ns - dur
    ns = parse_rfc3339_ns(value)
    if ns is not None:
        return ns
    for rx, kind in _LAYOUTS:
        m = rx.match(value)
        if m:
            g = m.groups()
            hour = int(g[3]) if kind != "date" else 0
            minute = int(g[4]) if kind == "minute" else 0
            tz = g[-1] if kind != "date" else "Z"
            iso = f"{g[0]}-{g[1]}-{g[2]}T{hour:02d}:{minute:02d}:00{tz}"
            parsed = parse_rfc3339_ns(iso)
            if parsed is not None:
                return parsed
    m = re.match(r"^\w{3}, (\d{2}) (\w{3}) (\d{4}) (\d{2}):(\d{2}):(\d{2}) ([+-])(\d{2})(\d{2})$", value)
    if m:
        try:
            dt = datetime.strptime(value, "%a, %d %b %Y %H:%M:%S %z")
        except ValueError:
            pass
        else:
            return int(dt.timestamp()) * 10**9
    raise ValueError(f'failed to parse time "{value}": not a duration nor one of the supported layouts')


TIME_FORMATS = ("StampMilli", "RFC3339", "RFC3339Milli", "RFC3339Micro", "RFC3339Nano", "RFC1123Z")


def format_ns(ns: int | None, layout: str = "StampMilli") -> str:
    """Format epoch ns in the local time zone like Go's time.Format with hubble's layouts."""
    if ns is None:
        return "N/A"
    secs, frac = divmod(ns, 10**9)
    lt = time.localtime(secs)
    off = lt.tm_gmtoff or 0
    dt = datetime(*lt[:6], tzinfo=timezone(timedelta(seconds=off)))
    if layout == "StampMilli":
        return f"{dt:%b} {dt.day:2d} {dt:%H:%M:%S}.{frac // 1_000_000:03d}"
    zone = "Z" if off == 0 else f"{'+' if off > 0 else '-'}{abs(off) // 3600:02d}:{abs(off) % 3600 // 60:02d}"
    base = f"{dt:%Y-%m-%dT%H:%M:%S}"
    if layout == "RFC3339":
        return base + zone
    if layout == "RFC3339Milli":
        return f"{base}.{frac // 1_000_000:03d}{zone}"
    if layout == "RFC3339Micro":
        return f"{base}.{frac // 1_000:06d}{zone}"
    if layout == "RFC3339Nano":
        digits = f"{frac:09d}".rstrip("0")
        return f"{base}{'.' + digits if digits else ''}{zone}"
    if layout == "RFC1123Z":
        sign = "+" if off >= 0 else "-"
        return f"{dt:%a, %d %b %Y %H:%M:%S} {sign}{abs(off) // 3600:02d}{abs(off) % 3600 // 60:02d}"
    raise ValueError(f"unknown time format {layout!r}")


_TS_HEADS: dict[int, str] = {}


def protojson_timestamp(seconds: int, nanos: int = 0) -> str:
    """A google.protobuf.Timestamp as protojson writes it: RFC 3339 in UTC with 0, 3, 6 or 9
    fractional digits. The date part is cached per second (a stream's flows share seconds)."""
    head = _TS_HEADS.get(seconds)
    if head is None:
        if len(_TS_HEADS) > 4096:
            _TS_HEADS.clear()
        head = _TS_HEADS[seconds] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    if not nanos:
        return head + "Z"
    if nanos % 1_000_000 == 0:
        return f"{head}.{nanos // 1_000_000:03d}Z"
    if nanos % 1000 == 0:
        return f"{head}.{nanos // 1000:06d}Z"
    return f"{head}.{nanos:09d}Z"
