"""Decoder robustness on real-format lines: bad lines are reported and skipped, never fatal.

hubble's own reader (io_reader_observer.go) skips a line protojson cannot unmarshal with a warning
and keeps going; flowtrail must do the same, name the file and line of every bad line, never lose
a good line next to a bad one, and canonicalise every spelling protojson accepts.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import random
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flowtrail.cli import engine
from flowtrail.cli.observe import observe_main
from flowtrail.filters import FilterSet
from flowtrail.filters.compile import NONCANONICAL_MARKERS
from flowtrail.sources import canonscan, files
from flowtrail.sources.decode import DEFAULT_MAX_LINE, Decoded, Decoder
from tests import strategies as S
from tests.conftest import GOLDEN_DIR, REPO, SAMPLES_DIR

LINES = (GOLDEN_DIR / "public-samples.input.jsonl").read_bytes().splitlines()
FLOW_LINES = [ln for ln in LINES if ln.startswith(b'{"flow"')]
SAMPLE_LINES = [ln for p in sorted(SAMPLES_DIR.glob("*.jsonl")) for ln in p.read_bytes().splitlines() if ln.strip()]
FILTERS = FilterSet.compile([{"source_pod": ["kube-system/"]}, {"verdict": ["DROPPED"]}], [{"protocol": ["icmp"]}])


def _consistent(d: Decoded) -> None:
    assert len(d.raw) == len(d.line_numbers)
    assert d.table is None or d.table.num_rows == len(d.raw)
    assert list(d.line_numbers) == sorted(d.line_numbers)


def _canonical(line: bytes) -> Any:
    return orjson.loads(line)


def test_bad_lines_are_counted_and_good_lines_kept() -> None:
    good = FLOW_LINES[:5]
    lines = [good[0], b"not json", good[1], good[2][: len(good[2]) // 2], b"", good[3], b"\x00\xff\xfe", good[4]]
    dec = Decoder().decode_lines(lines, source="f.jsonl")
    assert dec.table.num_rows == 4
    assert dec.stats.errors == 3 and dec.stats.blank == 1
    assert [str(e).split(":")[1] for e in dec.errors] == ["2", "4", "7"]
    assert all(str(e).startswith("f.jsonl:") for e in dec.errors)
    assert dec.raw == [good[0], good[1], good[3], good[4]]
    assert list(dec.line_numbers) == [1, 3, 6, 8]


# -- one bad line of each kind between good lines ----------------------------------------------------

# Lines that are not JSON objects at all: an error whatever the filter reads.
BAD_LINES = {
    "truncated": FLOW_LINES[3][:100],
    "truncated at brace": FLOW_LINES[3][:-1],
    "not json": b"hello world",
    "binary": bytes(range(256)).replace(b"\n", b""),
    "nul bytes": b"\x00" * 40,
    "invalid utf-8 outside strings": b'\xff{"flow":{}}',
    "json array": b"[1, 2, 3]",
    "json string": b'"flow"',
    "json number": b"42",
    "json null": b"null",
    "empty object": b"{}",
    "flow null": b'{"flow":null}',
    "flow is a list": b'{"flow":[1]}',
    "time is a number": b'{"flow":{"time":5}}',
    "trailing comma": FLOW_LINES[2] + b",",
    "extra closing brace": FLOW_LINES[2] + b"}",
    "unrelated object": b'{"kind":"Pod","apiVersion":"v1"}',
    "utf-8 bom mid-file": b"\xef\xbb\xbf" + FLOW_LINES[2],
    # protojson reads one value per line: content after it is an error, not another row
    "garbage after object": FLOW_LINES[2] + b"garbage",
    "two objects on a line": FLOW_LINES[2] + b" " + FLOW_LINES[3],
    "two objects run together": FLOW_LINES[2] + FLOW_LINES[3],
    "truncated line continued by the next": FLOW_LINES[2][:300] + FLOW_LINES[3],
    # values protojson rejects wherever they are, decoded by the filters or not
    "identity -1": b'{"flow":{"verdict":"DROPPED","source":{"identity":-1}}}',
    "identity above uint32": b'{"flow":{"verdict":"DROPPED","source":{"identity":4294967296}}}',
    "oneof set twice": b'{"flow":{"verdict":"DROPPED"},"lost_events":{}}',
    "flow and node status": b'{"flow":{"verdict":"DROPPED"},"node_status":{}}',
    "null in a list": b'{"flow":{"verdict":"DROPPED","source":{"labels":["a",null]}}}',
    "timestamp with an offset out of range": b'{"flow":{"verdict":"DROPPED"},"time":"2024-02-03T00:00:00+24:00"}',
    "invalid escape": b'{"flow":{"verdict":"DROPPED","Summary":"a\\qb"}}',
}
# JSON objects with a wrongly typed field: an error when that field is decoded. flowtrail decodes only
# the fields the filters read (hubble unmarshals the whole line), so elsewhere they pass as they are.
SCHEMA_BAD_LINES = {
    "IP is a string": b'{"flow":{"IP":"10.0.0.1"}}',
    "port is a float": b'{"flow":{"l4":{"TCP":{"source_port":1.5}}}}',
    "identity is a word": b'{"flow":{"source":{"identity":"abc"}}}',
    "labels not a list": b'{"flow":{"source":{"labels":"k8s:app=x"}}}',
}
def _bad_line_params() -> list[Any]:
    params = [pytest.param(line, id=name) for name, line in BAD_LINES.items()]
    params += [pytest.param(line, id=name) for name, line in SCHEMA_BAD_LINES.items()]
    return params


@pytest.mark.parametrize("bad", _bad_line_params())
@pytest.mark.parametrize("paths", ["all", "projected", "empty"])
def test_one_bad_line_between_good_ones(bad: bytes, paths: str) -> None:
    fs = {"all": None, "projected": FILTERS, "empty": FilterSet.compile()}[paths]
    dec = Decoder(None if fs is None else fs.paths)
    good = FLOW_LINES[:4]
    lines = [good[0], good[1], bad, good[2], good[3]]
    schema_only = bad in SCHEMA_BAD_LINES.values() and fs is not None
    for d in (dec.decode_lines(lines, source="x.log", first_line=10),
              dec.decode_block(b"\n".join(lines) + b"\n", source="x.log", first_line=10),
              dec.decode_block(b"\n".join(lines) + b"\n", source="x.log", first_line=10, columns=False)):
        _consistent(d)
        if fs is not None and d.table is not None:
            fs.mask(d.table)
        if schema_only and not d.errors:  # the field is not decoded: the line passes untouched
            assert list(d.line_numbers) == [10, 11, 12, 13, 14]
            assert d.raw[2] == bad
            continue
        assert [str(e).split(": ", 1)[0] for e in d.errors] == ["x.log:12"]
        assert list(d.line_numbers) == [10, 11, 13, 14]
        assert [_canonical(r) for r in d.raw] == [_canonical(g) for g in good]


def test_bad_lines_are_found_through_the_prefilter() -> None:
    """A bad line that contains a needle is decoded (and reported) with its absolute line number."""
    fs = FilterSet.compile([{"verdict": ["DROPPED"]}])
    lines = [FLOW_LINES[0], FLOW_LINES[1], b'{"flow":{"verdict":"DROPPED",', *FLOW_LINES[2:12]]
    block = b"\n".join(lines) + b"\n"
    d = Decoder(fs.paths).decode_block(block, source="f", first_line=100,
                                       needle_groups=fs.needle_groups(), markers=NONCANONICAL_MARKERS)
    _consistent(d)
    assert [str(e).split(": ", 1)[0] for e in d.errors] == ["f:102"]
    dropped = [100 + i for i, ln in enumerate(lines) if i != 2 and orjson.loads(ln)["flow"].get("verdict") == "DROPPED"]
    assert dropped
    assert [d.line_numbers[i] for i in np.flatnonzero(fs.mask(d.table))] == dropped


def test_bom_line_is_rejected_wherever_it_is() -> None:
    bom = b"\xef\xbb\xbf" + FLOW_LINES[0]
    for lines in ([bom, FLOW_LINES[1]], [FLOW_LINES[1], bom]):
        d = Decoder(FILTERS.paths).decode_lines(lines)
        assert len(d.errors) == 1 and d.table.num_rows == 1


def test_blank_and_whitespace_lines_are_not_errors() -> None:
    lines = [b"", FLOW_LINES[0], b"   ", b"\t", FLOW_LINES[1], b"\r", b""]
    d = Decoder(FILTERS.paths).decode_lines(lines)
    _consistent(d)
    assert not d.errors and d.stats.blank == 5
    assert list(d.line_numbers) == [2, 5]


def test_over_long_lines_are_errors_not_fatal() -> None:
    short = sorted(FLOW_LINES, key=len)[:2]
    limit = len(short[1]) + 1
    long_flow = orjson.loads(short[0])
    long_flow["flow"]["Summary"] = "x" * limit
    dec = Decoder(FILTERS.paths, max_line=limit)
    lines = [short[0], orjson.dumps(long_flow), short[1]]
    for d in (dec.decode_lines(lines, source="s"), dec.decode_block(b"\n".join(lines), source="s")):
        _consistent(d)
        assert [str(e) for e in d.errors] == [f"s:2: line longer than {limit} bytes"]
        assert d.raw == [short[0], short[1]]


def test_over_long_line_in_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    long_flow = orjson.loads(FLOW_LINES[0])
    long_flow["flow"]["Summary"] = "x" * (DEFAULT_MAX_LINE + 10)
    path = tmp_path / "events.log"
    path.write_bytes(b"\n".join([FLOW_LINES[1], orjson.dumps(long_flow), FLOW_LINES[2]]) + b"\n")
    out = io.BytesIO()
    assert observe_main(["--input-file", str(path), "--all", "-o", "json"], stdout=out) == 0
    assert [_canonical(x) for x in out.getvalue().splitlines()] == [_canonical(FLOW_LINES[1]), _canonical(FLOW_LINES[2])]
    assert f"{path}:2: line longer than {DEFAULT_MAX_LINE} bytes" in capsys.readouterr().err


# -- spellings protojson accepts ---------------------------------------------------------------------


def _env(flow: dict[str, Any]) -> dict[str, Any]:
    env: dict[str, Any] = {"flow": flow}
    if "node_name" in flow:
        env["node_name"] = flow["node_name"]
    env["time"] = flow["time"]
    return env


def _real_responses() -> list[dict[str, Any]]:
    """Sample lines as canonical responses (flows and lost events)."""
    out = []
    for ln in SAMPLE_LINES:
        obj = orjson.loads(ln)
        if "flow" in obj or "lost_events" in obj:
            out.append(obj)
    return out


RESPONSES = _real_responses()


@pytest.mark.parametrize("spelling", sorted(set(S.SPELLINGS) - {"canonical"}))
@pytest.mark.parametrize("paths", ["all", "projected"])
def test_every_spelling_decodes_to_the_canonical_response(spelling: str, paths: str) -> None:
    if spelling == "legacy":  # a bare flow needs a Flow-only key to be told from an envelope
        resps = [_env(r["flow"]) for r in RESPONSES if "flow" in r and "time" in r["flow"] and "verdict" in r["flow"]]
    else:
        resps = RESPONSES
    lines = [S.render(r, spelling) for r in resps]
    fs = FILTERS if paths == "projected" else None
    d = Decoder(None if fs is None else fs.paths).decode_lines(lines)
    _consistent(d)
    assert not d.errors
    assert [_canonical(r) for r in d.raw] == resps
    if fs is not None:
        canonical = Decoder(fs.paths).decode_lines([orjson.dumps(r) for r in resps])
        assert fs.mask(d.table).tolist() == fs.mask(canonical.table).tolist()


def test_camel_case_numeric_enums_and_legacy_bare_flows_are_canonicalised() -> None:
    canonical = orjson.loads(FLOW_LINES[1])
    flow = canonical["flow"]
    camel = {"flow": {**{k: v for k, v in flow.items() if k not in ("drop_reason_desc", "node_name")},
                      "verdict": 2, "dropReasonDesc": "POLICY_DENIED", "nodeName": flow["node_name"]},
             "nodeName": canonical["node_name"], "time": canonical["time"]}
    bare = dict(flow)
    fs = FilterSet.compile([{"verdict": ["DROPPED"], "drop_reason_desc": ["POLICY_DENIED"]}])
    dec = Decoder(fs.paths).decode_lines([orjson.dumps(camel), orjson.dumps(bare), FLOW_LINES[1]])
    assert fs.mask(dec.table).tolist() == [True, True, True]
    assert orjson.loads(dec.raw[0])["flow"] == flow


def test_64bit_integers_as_numbers_and_strings() -> None:
    base = {"flow": {"time": "2024-01-01T00:00:00Z", "verdict": "FORWARDED",
                     "l7": {"type": "RESPONSE", "latency_ns": "999958359"},
                     "ip_trace_id": {"trace_id": "18446744073709551615"}, "socket_cookie": "12"},
            "time": "2024-01-01T00:00:00Z"}
    as_numbers = orjson.dumps(base).replace(b'"999958359"', b"999958359").replace(
        b'"18446744073709551615"', b"18446744073709551615").replace(b'"12"', b"12")
    fs = FilterSet.compile([{"ip_trace_id": ["18446744073709551615"]}])
    d = Decoder(fs.paths).decode_lines([as_numbers, orjson.dumps(base)])
    _consistent(d)
    assert not d.errors
    assert [_canonical(r) for r in d.raw] == [base, base]
    assert fs.mask(d.table).tolist() == [True, True]


@pytest.mark.parametrize("variant", ["numbers", "camel key outside marker list"])
def test_non_canonical_fields_are_canonicalised_without_filters(variant: str, tmp_path: Path) -> None:
    resp = {"flow": {"time": "2023-08-21T12:12:13.517394084Z", "verdict": "DROPPED",
                     "IP": {"source": "fe80::64d8:8aff:fe72:fc14", "destination": "ff02::2", "ipVersion": "IPv6"},
                     "l4": {"ICMPv6": {"type": 133}}, "source": {}, "destination": {},
                     "l7": {"latency_ns": "123"}, "drop_reason_desc": "INVALID_SOURCE_IP"},
            "time": "2023-08-21T12:12:13.517394084Z"}
    if variant == "numbers":
        line = S.render(resp, "numbers")
        assert b'"verdict":2' in line
    else:
        line = orjson.dumps(resp).replace(b"drop_reason_desc", b"dropReasonDesc")
    path = tmp_path / "f.json"
    path.write_bytes(line + b"\n")
    out = io.BytesIO()
    assert observe_main(["--input-file", str(path), "--all", "-o", "json"], stdout=out) == 0
    assert [_canonical(x) for x in out.getvalue().splitlines()] == [resp]


@pytest.mark.parametrize("paths", ["all", "projected", "empty"])
def test_what_hubbles_discard_unknown_pass_drops(paths: str) -> None:
    """hubble retries a line protojson rejects with DiscardUnknown, which drops unknown fields and
    unknown enum names (and agent/debug events, unknown to GetFlowsResponse) and keeps the line."""
    fs = {"all": None, "projected": FILTERS, "empty": FilterSet.compile()}[paths]
    line = (b'{"flow":{"verdict":"SOMETIMES","Type":"EGRESS","source":{"identity":5,"futureField":[1]},'
            b'"trace_reason":"NEW"},"agent_event":{"type":"X"},"time":"2024-01-01T00:00:00Z"}')
    want = {"flow": {"source": {"identity": 5}, "trace_reason": "NEW"}, "time": "2024-01-01T00:00:00Z"}
    dec = Decoder(None if fs is None else fs.paths)
    for d in (dec.decode_lines([FLOW_LINES[0], line, FLOW_LINES[1]]),
              dec.decode_block(b"\n".join([FLOW_LINES[0], line, FLOW_LINES[1]]), columns=False)):
        assert not d.errors
        assert [_canonical(r) for r in d.raw] == [_canonical(FLOW_LINES[0]), want, _canonical(FLOW_LINES[1])]


@pytest.mark.parametrize("value, canonical", [
    ('"1e3"', 1000), ("1000.0", 1000), ('"1000"', 1000), ("4294967295", 4294967295),
])
def test_integers_in_any_notation_protojson_reads(value: str, canonical: int) -> None:
    line = b'{"flow":{"source":{"identity":%s}}}' % value.encode()
    d = Decoder().decode_lines([line])
    assert not d.errors
    assert orjson.loads(d.raw[0]) == {"flow": {"source": {"identity": canonical}}}


@pytest.mark.parametrize("value", ['"01"', "1.5", '" 1"', "4294967296", "-1", '"0x10"', "true"])
def test_integers_protojson_rejects(value: str) -> None:
    line = b'{"flow":{"source":{"identity":%s}}}' % value.encode()
    for paths in (None, set(), {"source.identity"}):
        d = Decoder(paths).decode_lines([FLOW_LINES[0], line])
        assert [e.line for e in d.errors] == [2], value
        assert d.raw == [FLOW_LINES[0]]


@pytest.mark.parametrize("value, canonical", [
    ("2021-11-10T10:41:26.095357000Z", "2021-11-10T10:41:26.095357Z"),
    ("2021-11-10T10:41:26.1Z", "2021-11-10T10:41:26.100Z"),
    ("2021-11-10T10:41:26.000Z", "2021-11-10T10:41:26Z"),
    ("2021-11-10T12:41:26.5+02:00", "2021-11-10T10:41:26.500Z"),
    ("2021-11-10T10:41:26.095336300Z", "2021-11-10T10:41:26.095336300Z"),
])
def test_timestamps_are_printed_as_protojson_writes_them(value: str, canonical: str) -> None:
    line = b'{"flow":{"time":"%s","verdict":"DROPPED"},"time":"%s"}' % (value.encode(), value.encode())
    for d in (Decoder().decode_lines([line]), Decoder(set()).decode_block(line, columns=False)):
        assert not d.errors
        assert orjson.loads(d.raw[0]) == {"flow": {"time": canonical, "verdict": "DROPPED"}, "time": canonical}


def test_other_events_are_skipped_not_errors() -> None:
    lines = [
        b'{"agent_event":{"type":"AGENT_STARTED","agent_start":{"time":"2024-01-01T00:00:00Z"}},"node_name":"n","time":"2024-01-01T00:00:00Z"}',
        b'{"debug_event":{},"node_name":"n","time":"2024-01-01T00:00:01Z"}',
        b'{"node_status":{"state_change":"NODE_CONNECTED","node_names":["n"]},"node_name":"n","time":"2024-01-01T00:00:02Z"}',
        b'{"agentEvent":{},"time":"2024-01-01T00:00:03Z"}',
        FLOW_LINES[0],
        b'{"lost_events":{"source":"PERF_EVENT_RING_BUFFER","num_events_lost":"3","cpu":0},"time":"2024-01-01T00:00:04Z"}',
        b'{"lostEvents":{"numEventsLost":3},"time":"2024-01-01T00:00:05Z"}',
    ]
    for paths in (None, FILTERS.paths, set()):
        d = Decoder(paths).decode_lines(lines)
        _consistent(d)
        assert not d.errors
        assert d.stats.other_events == 4 and d.stats.lost_events == 2 and d.stats.flows == 1
        assert list(d.line_numbers) == [5, 6, 7]
        assert _canonical(d.raw[2]) == {"lost_events": {"num_events_lost": "3"}, "time": "2024-01-01T00:00:05Z"}


# -- files, gzip, stdin, --strict ----------------------------------------------------------------------


def test_cli_reports_file_and_line_and_strict_is_fatal(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "events.log"
    path.write_bytes(FLOW_LINES[0] + b"\n{broken\n" + FLOW_LINES[1] + b"\n")
    out = io.BytesIO()
    assert observe_main(["--input-file", str(path), "--all", "-o", "json"], stdout=out) == 0
    assert len(out.getvalue().splitlines()) == 2
    err = capsys.readouterr().err
    assert f"{path}:2:" in err and "skipped 1 bad line" in err
    assert observe_main(["--input-file", str(path), "--all", "--strict"], stdout=io.BytesIO()) == 1
    assert f"bad line {path}:2:" in capsys.readouterr().err


def test_strict_ignores_blank_lines_and_other_events(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "events.log"
    path.write_bytes(b"\n".join([b"", LINES[3], FLOW_LINES[0], b"  ", LINES[4]]) + b"\n\n")
    out = io.BytesIO()
    assert observe_main(["--input-file", str(path), "--all", "--strict", "-o", "json"], stdout=out) == 0, \
        capsys.readouterr().err
    assert out.getvalue().splitlines() == [FLOW_LINES[0]]


def test_crlf_file(tmp_path: Path) -> None:
    path = tmp_path / "events.log"
    path.write_bytes(b"".join(ln + b"\r\n" for ln in LINES))
    for args in ([], ["--namespace", "kube-system"], ["--verdict", "DROPPED"]):
        want, got = io.BytesIO(), io.BytesIO()
        plain = tmp_path / "plain.log"
        plain.write_bytes(b"".join(ln + b"\n" for ln in LINES))
        assert observe_main(["--input-file", str(plain), "--all", "-o", "json", *args], stdout=want) == 0
        assert observe_main(["--input-file", str(path), "--all", "-o", "json", *args], stdout=got) == 0
        assert [_canonical(x) for x in got.getvalue().splitlines()] == [_canonical(x) for x in want.getvalue().splitlines()]
        assert want.getvalue().splitlines()


def test_gzip_file_with_a_bad_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "events.log.gz"
    path.write_bytes(gzip.compress(b"\n".join([FLOW_LINES[0], b"\x1f\x8b junk", FLOW_LINES[1]]) + b"\n"))
    out = io.BytesIO()
    assert observe_main(["--input-file", str(path), "--all", "-o", "json"], stdout=out) == 0
    assert out.getvalue().splitlines() == FLOW_LINES[:2]
    assert f"{path}:2:" in capsys.readouterr().err


def _truncated_gzip(tmp_path: Path, lines: list[bytes], keep: float) -> tuple[Path, bytes]:
    """A gzip file of ``lines`` (repeated to a few MB) cut after ``keep`` of its bytes, with what
    it held."""
    raw = b"".join(ln + b"\n" for ln in lines) * (4000 // len(lines) + 1)
    packed = gzip.compress(raw, compresslevel=1)
    path = tmp_path / "events.log.gz"
    path.write_bytes(packed[:int(len(packed) * keep)])
    return path, raw


@pytest.mark.parametrize("damage", ["truncated", "corrupt"])
def test_gzip_cut_short_keeps_the_lines_before(tmp_path: Path, damage: str) -> None:
    """An exporter backup cut short (a copy in progress, a full disk) or damaged: the blocks
    before the damage are read, then an InputError names the file and the last line read."""
    from flowtrail.sources.files import Input, InputError, iter_blocks, open_binary

    path, raw = _truncated_gzip(tmp_path, FLOW_LINES, 0.6)
    if damage == "corrupt":
        data = bytearray(path.read_bytes())
        data[len(data) // 2:len(data) // 2 + 64] = bytes(64)
        path.write_bytes(bytes(data) + gzip.compress(raw)[-4096:])
    got = b""
    with pytest.raises(InputError) as err, open_binary(Input(str(path))) as fh:
        for block, first in iter_blocks(fh, 1 << 20, source=str(path)):
            assert first == got.count(b"\n") + 1
            got += block
    # deflate only notices damage some way after it (garbage lines, reported by the decoder, may
    # come first): the data up to the damage is what it was
    assert raw.startswith(got if damage == "truncated" else got[:len(got) // 3]) and len(got) > len(raw) // 5
    whole = got.count(b"\n")
    assert err.value.source == str(path) and err.value.line in (whole, whole + 1)
    assert "gzip data cut short or corrupt" in str(err.value)


@pytest.mark.parametrize("damage", ["none", "truncated", "corrupt"])
@pytest.mark.parametrize("block", [1 << 10, 40 << 10, 1 << 20])
def test_inflate_to_files_equals_iter_blocks(tmp_path: Path, damage: str, block: int) -> None:
    """The files the gzip inflater process writes hold what iter_blocks reads, cut at line ends
    (a line longer than a block included); damage ends them with the same error, naming the last
    line read."""
    from flowtrail.sources.files import Input, InputError, inflate_to_files, iter_blocks, open_binary

    long_line = b'{"flow":{"Summary":"' + b"x" * (3 << 10) + b'"}}'
    path, raw = _truncated_gzip(tmp_path, [*FLOW_LINES, long_line], 0.6 if damage != "none" else 1.0)
    if damage == "corrupt":
        data = bytearray(path.read_bytes())
        data[len(data) // 2:len(data) // 2 + 64] = bytes(64)
        path.write_bytes(bytes(data) + gzip.compress(raw)[-4096:])

    def read(how: str) -> tuple[list[bytes], int | None]:
        out: list[bytes] = []
        line = None
        spool = tmp_path / f"spool-{how}"
        spool.mkdir()
        try:
            with open_binary(Input(str(path))) as fh:
                if how == "blocks":
                    for b, _ in iter_blocks(fh, block, source=str(path)):
                        out.append(bytes(b))
                else:
                    for p, size in inflate_to_files(fh, str(spool), block, source=str(path)):
                        out.append(Path(p).read_bytes())
                        assert len(out[-1]) == size
        except InputError as exc:
            assert exc.source == str(path) and "gzip data cut short or corrupt" in exc.message
            line = exc.line
        return out, line

    blocks, line = read("blocks")
    files, file_line = read("files")
    got, want = b"".join(files), b"".join(blocks)
    assert (line is None) == (file_line is None) == (damage == "none")
    if damage == "none":
        assert got == want == raw
    else:
        # zlib-ng inflates all of a read or none of it, and iter_blocks reads smaller pieces
        # near a block's end: what is recovered before the damage differs by a piece at most
        short, longer = sorted((got, want), key=len)
        assert longer.startswith(short) and len(longer) - len(short) <= 64 << 10
        assert file_line == got.count(b"\n") + (not got.endswith(b"\n"))  # the last line read
        assert line == want.count(b"\n") + (not want.endswith(b"\n"))
    assert all(f.endswith(b"\n") for f in files[:-1]) and all(files)
    if block > len(long_line) and damage == "none":  # (garbage inflated past a damage may hold no newline)
        assert all(len(f) < block + (64 << 10) for f in files)  # a piece past the block at most


def test_truncated_gzip_is_reported_and_the_next_input_read(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """observe, detect and policy audit: the lines of a truncated .gz before the cut count, a
    warning names the file and line, the next input is read, and the command exits 0."""
    from click.testing import CliRunner

    from flowtrail.cli.main import cli

    path, _ = _truncated_gzip(tmp_path, FLOW_LINES, 0.5)
    other = tmp_path / "next.jsonl"
    other.write_bytes(b"\n".join(FLOW_LINES) + b"\n")
    out = io.BytesIO()
    assert observe_main(["--input-file", str(path), "--input-file", str(other), "--all", "-o", "json"],
                        stdout=out) == 0
    err = capsys.readouterr().err
    assert f"{path}:" in err and "gzip data cut short or corrupt" in err
    got = out.getvalue().splitlines()
    # observe merges its inputs in time order: the cut file's lines are there, and the next file's
    assert len(got) > 1000 + len(FLOW_LINES) and set(FLOW_LINES) <= set(got)
    pol = tmp_path / "pol.yaml"
    pol.write_text("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: default}\n"
                   "spec: {podSelector: {}, policyTypes: [Ingress]}\n")
    for cmd in (["detect", str(path), str(other), "-o", "json"],
                ["policy", "audit", "--policies", str(pol), "--input-file", str(path), "--input-file", str(other),
                 "-o", "json"]):
        res = CliRunner().invoke(cli, cmd)
        assert res.exit_code == 0, res.output
        assert f"{path}:" in res.stderr and "gzip data cut short or corrupt" in res.stderr, cmd


def test_gzip_and_rotated_directory_merge_in_time_order(tmp_path: Path) -> None:
    by_time = sorted(FLOW_LINES, key=lambda ln: orjson.loads(ln)["time"])
    older, newer = by_time[::2], by_time[1::2]
    (tmp_path / "events-2024-01-01T00-00-00.000.log.gz").write_bytes(gzip.compress(b"\n".join(older) + b"\n"))
    (tmp_path / "events.log").write_bytes(b"\n".join(newer) + b"\n")
    out = io.BytesIO()
    assert observe_main(["--input-file", str(tmp_path), "--all", "-o", "json"], stdout=out) == 0
    times = [orjson.loads(x)["time"] for x in out.getvalue().splitlines()]
    assert len(times) == len(FLOW_LINES)
    assert times == sorted(times)


def _run_cli(args: list[str], stdin: bytes) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)]), "TZ": "UTC"}
    return subprocess.run([sys.executable, "-m", "flowtrail.cli.main", "observe", *args],
                          input=stdin, capture_output=True, env=env, timeout=60, check=False)


# pyarrow 26 json.read_json with an explicit schema segfaults when the buffer's first value is `null`
@pytest.mark.parametrize("lines", [[b"null"], [b"null", FLOW_LINES[0]], [b"", b"  null", FLOW_LINES[0]]],
                         ids=["only null", "null first", "blank then null"])
def test_null_line_does_not_crash_the_process(lines: list[bytes]) -> None:
    code = (
        "import sys\n"
        "from flowtrail.sources.decode import Decoder\n"
        "lines = sys.stdin.buffer.read().split(b'\\n')\n"
        "d = Decoder().decode_lines(lines)\n"
        "print(d.table.num_rows, len(d.errors))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}
    res = subprocess.run([sys.executable, "-c", code], input=b"\n".join(lines), capture_output=True, env=env,
                         timeout=60, check=False)
    assert res.returncode == 0, f"exit {res.returncode}: {res.stderr[-300:]!r}"
    good = sum(1 for ln in lines if ln.startswith(b"{"))
    assert res.stdout.split() == [str(good).encode(), b"1"]


def test_stdin() -> None:
    data = b"\n".join([LINES[0], b"{oops", *LINES[1:]])  # no final newline: the last line still counts
    for args in ([], ["--namespace", "kube-system"]):
        res = _run_cli(["--input-file", "-", "--all", "-o", "json", *args], data)
        assert res.returncode == 0, res.stderr
        want = io.BytesIO()
        observe_main(["--input-file", str(GOLDEN_DIR / "public-samples.input.jsonl"), "--all", "-o", "json", *args],
                     stdout=want)
        assert res.stdout.splitlines() == want.getvalue().splitlines()
        if not args:
            assert b"<stdin>:2:" in res.stderr
    strict = _run_cli(["--input-file", "-", "--all", "--strict"], data)
    assert strict.returncode == 1 and b"<stdin>:2:" in strict.stderr


def test_strict_is_fatal_whatever_the_filter(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "events.log"
    path.write_bytes(FLOW_LINES[0] + b"\n{oops\n")
    assert observe_main(["--input-file", str(path), "--all", "--strict", "--namespace", "kube-system"],
                        stdout=io.BytesIO()) == 1
    assert f"{path}:2:" in capsys.readouterr().err


def test_error_line_numbers_across_blocks() -> None:
    """Blocks of a stream (files.iter_blocks) keep absolute line numbers in their errors."""
    lines = [FLOW_LINES[i % len(FLOW_LINES)] if i % 7 else b"{bad %d" % i for i in range(60)]
    data = b"\n".join(lines)  # unterminated last line
    dec = Decoder(FILTERS.paths)
    errors, rows = [], []
    for block, first in files.iter_blocks(io.BytesIO(data), block_size=700):
        for needles in (None, FILTERS.needle_groups()):
            d = dec.decode_block(block, "s", first, needle_groups=needles,
                                 markers=NONCANONICAL_MARKERS if needles else ())
            _consistent(d)
            if needles is None:
                errors += [e.line for e in d.errors]
                rows += list(d.line_numbers)
    assert errors == [i + 1 for i in range(60) if i % 7 == 0]
    assert rows == [i + 1 for i in range(60) if i % 7]


@pytest.mark.parametrize("args", [
    ["--all", "-o", "json"], ["--last", "25", "-o", "json"], ["--first", "30", "-o", "json"],
    ["--all", "-o", "json", "--verdict", "DROPPED"], ["--all", "-o", "json", "--not", "--verdict", "DROPPED"],
    ["--all", "-o", "compact"], ["--last", "40", "-o", "dict"],
])
def test_parallel_workers_print_what_one_process_prints(args: list[str], tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """Worker processes send spans of the file or the rows themselves; either way the output is
    the one a single process prints, non-canonical and bad lines included."""
    cut = FLOW_LINES[3][: FLOW_LINES[3].index(b"}") + 1]  # ends in '}' as a whole line would
    odd = [b"{oops", S.render(RESPONSES[0], "numbers"), b"", b'{"flow":{"verdict":"SOMETIMES"}}',
           FLOW_LINES[1].replace(b'"flow":', b'"flow": '), FLOW_LINES[2] + b"\r", cut]
    lines = [odd[i % 31 % len(odd)] if i % 31 < len(odd) else FLOW_LINES[i % len(FLOW_LINES)] for i in range(400)]
    path = tmp_path / "big.log"
    path.write_bytes(b"\n".join(lines))  # no final newline
    want = io.BytesIO()
    assert observe_main(["--input-file", str(path), *args, "--workers", "1"], stdout=want) == 0
    bad = sorted(int(ln.split(f"{path}:")[1].split(":")[0]) for ln in capsys.readouterr().err.splitlines()
                 if "skipping bad line" in ln)
    if "--first" not in args:  # --first stops reading early
        # a line the prefilter skips is only checked for the shape of an object: `cut` has it
        prefiltered = "--verdict" in args and "--not" not in args
        shapeless = (b"{oops",) if prefiltered else (b"{oops", cut)
        assert bad == [i + 1 for i, ln in enumerate(lines) if ln in shapeless]
    monkeypatch.setattr(engine, "PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(engine, "split_ranges", lambda p: files.split_ranges(p, 3000))
    got = io.BytesIO()
    assert observe_main(["--input-file", str(path), *args, "--workers", "2"], stdout=got) == 0
    assert got.getvalue() == want.getvalue()
    assert got.getvalue()
    assert b"\n" + cut + b"\n" not in b"\n" + got.getvalue()
    out = tmp_path / "out"
    with open(out, "wb") as fh:  # a real file: spans are copied by sendfile
        assert observe_main(["--input-file", str(path), *args, "--workers", "2"], stdout=fh) == 0
    assert out.read_bytes() == want.getvalue()
    assert not _spool_dirs()  # the files workers hand rows over in are gone, --first included


def _spool_dirs() -> list[Path]:
    return [p for base in ("/dev/shm", os.environ.get("TMPDIR") or "/tmp") if os.path.isdir(base)
            for p in Path(base).glob(f"flowtrail-{os.getpid()}-*")]


def test_without_a_spool_directory_rows_go_through_the_pipe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No writable /dev/shm nor temporary directory: the workers send their rows with their results."""
    lines = [FLOW_LINES[i % len(FLOW_LINES)] for i in range(300)]
    path = tmp_path / "big.log"
    path.write_bytes(b"\n".join(lines) + b"\n")
    want = io.BytesIO()
    assert observe_main(["--input-file", str(path), "--all", "--verdict", "DROPPED", "--workers", "1"], stdout=want) == 0
    monkeypatch.setattr(files.os, "access", lambda *a, **k: False)
    monkeypatch.setenv("TMPDIR", str(tmp_path / "missing"))
    with files.spool_dir() as where:
        assert where is None
    monkeypatch.setattr(engine, "PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(engine, "split_ranges", lambda p: files.split_ranges(p, 3000))
    got = io.BytesIO()
    assert observe_main(["--input-file", str(path), "--all", "--verdict", "DROPPED", "--workers", "2"], stdout=got) == 0
    assert got.getvalue() == want.getvalue() and want.getvalue()


def test_spool_directories_of_dead_processes_are_removed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A killed process cannot remove its spool (files in /dev/shm hold memory): the next one does."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True).stdout.strip()
    orphan = tmp_path / f"flowtrail-{dead}-1-0"
    orphan.mkdir()
    (orphan / "rows-0").write_bytes(b"x" * 100)
    mine = tmp_path / f"flowtrail-{os.getpid()}-1-0"
    mine.mkdir()
    other = tmp_path / "flowtrail-simulate-abc"  # not a name this code makes: left alone
    other.mkdir()
    monkeypatch.setattr(files.os, "access", lambda *a, **k: False)  # not /dev/shm: the temporary directory
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    with files.spool_dir() as where:
        assert where is not None and Path(where).parent == tmp_path
    assert not orphan.exists() and mine.exists() and other.exists()


def test_rows_handed_over_in_a_spool_file(tmp_path: Path) -> None:
    block = b"\n".join(FLOW_LINES[:6]) + b"\n"
    dec = Decoder().decode_block(block)
    rows = dec.rows.take(np.array([1, 3, 4]))
    spool = tmp_path / "rows-0"
    sent = pickle.loads(pickle.dumps(rows.spooled(str(spool))))  # as a worker's result travels
    assert spool.read_bytes() == b"".join(FLOW_LINES[i] + b"\n" for i in (1, 3, 4))
    sent.open_spool()
    assert not spool.exists()  # unlinked at once; the rows hold it open
    assert sent.to_list() == [FLOW_LINES[i] for i in (1, 3, 4)]
    out = tmp_path / "out"
    with open(out, "wb") as fh:
        sent.write_lines(fh)
    assert out.read_bytes() == b"".join(FLOW_LINES[i] + b"\n" for i in (1, 3, 4))
    with files.spool_dir() as where:
        assert where is not None
        Path(where, "left").write_bytes(b"x")
    assert not os.path.exists(where)


def test_error_line_numbers_with_parallel_workers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    lines = [FLOW_LINES[i % len(FLOW_LINES)] if i % 11 else b"{bad" for i in range(200)]
    path = tmp_path / "big.log"
    path.write_bytes(b"\n".join(lines) + b"\n")
    monkeypatch.setattr(engine, "PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(engine, "split_ranges", lambda p: files.split_ranges(p, 4000))
    out = io.BytesIO()
    assert observe_main(["--input-file", str(path), "--all", "-o", "json", "--workers", "2"], stdout=out) == 0
    assert out.getvalue().splitlines() == [ln for i, ln in enumerate(lines) if i % 11]
    err = capsys.readouterr().err
    reported = sorted(int(line.split(f"{path}:")[1].split(":")[0]) for line in err.splitlines() if f"{path}:" in line)
    assert reported == [i + 1 for i in range(200) if i % 11 == 0]


# -- good lines around bad ones are never lost; mutations never raise ---------------------------------

_bad = st.sampled_from(list(BAD_LINES.values()))
_good = st.sampled_from(SAMPLE_LINES)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(lines=st.lists(st.one_of(_good.map(lambda g: (True, g)), _bad.map(lambda b: (False, b)),
                                st.just((None, b""))), min_size=1, max_size=30),
       projected=st.booleans())
def test_good_lines_around_bad_ones_are_never_lost(lines: list[tuple[bool | None, bytes]], projected: bool) -> None:
    data = [ln for _, ln in lines]
    dec = Decoder(FILTERS.paths if projected else None)
    good = [i + 1 for i, (ok, ln) in enumerate(lines) if ok and (b'"flow"' in ln or b'"lost_events"' in ln)]
    bad = [i + 1 for i, (ok, _) in enumerate(lines) if ok is False]
    for d in (dec.decode_lines(data), dec.decode_block(b"\n".join(data) + b"\n")):
        _consistent(d)
        assert list(d.line_numbers) == good
        assert [e.line for e in d.errors] == bad
        assert [_canonical(r) for r in d.raw] == [_canonical(data[n - 1]) for n in good]


@st.composite
def mutated(draw: Any) -> bytes:
    line = bytearray(draw(st.sampled_from(SAMPLE_LINES)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["replace", "insert", "delete", "truncate", "duplicate", "structural"]))
        pos = draw(st.integers(0, max(len(line) - 1, 0)))
        if op == "replace" and line:
            line[pos] = draw(st.integers(0, 255))
        elif op == "insert":
            line[pos:pos] = draw(st.binary(min_size=1, max_size=4))
        elif op == "delete" and line:
            del line[pos: pos + draw(st.integers(1, 8))]
        elif op == "truncate":
            del line[pos:]
        elif op == "duplicate":
            line[pos:pos] = line[pos: pos + draw(st.integers(1, 40))]
        elif op == "structural" and line:
            line[pos] = draw(st.sampled_from(b'{}[]",:0 \\'))
    return bytes(line.replace(b"\n", b" "))


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(bad=mutated(), where=st.integers(0, 2), projected=st.booleans())
def test_mutated_lines_never_raise(bad: bytes, where: int, projected: bool) -> None:
    fs = FILTERS if projected else FilterSet.compile([{"protocol": ["tcp"]}])
    dec = Decoder(fs.paths)
    good = FLOW_LINES[:2]
    data = [*good]
    data.insert(where, bad)
    for d in (dec.decode_lines(data),
              dec.decode_block(b"\n".join(data) + b"\n"),
              dec.decode_block(b"\n".join(data) + b"\n", needle_groups=fs.needle_groups(), markers=NONCANONICAL_MARKERS)):
        _consistent(d)
        assert len(d.errors) <= 1
        fs.mask(d.table)
    full = dec.decode_lines(data)
    assert [n for n in full.line_numbers if n != where + 1] == [n for n in (1, 2, 3) if n != where + 1]


def test_random_mutations_never_raise() -> None:
    rng = random.Random(7)
    fs = FilterSet.compile([{"source_pod": ["kube-system/"]}], [{"verdict": ["FORWARDED"]}])
    dec = Decoder(fs.paths)
    for _ in range(200):
        line = bytearray(rng.choice(LINES))
        for _ in range(rng.randrange(1, 6)):
            line[rng.randrange(len(line))] = rng.randrange(256)
        d = dec.decode_lines([bytes(line), FLOW_LINES[0]])
        assert d.table.num_rows >= 1
        fs.mask(d.table)


# -- the block index: odd bytes found chunk by chunk; rows kept aligned across both paths ------------

def _odd_bytes_block() -> tuple[list[bytes], list[int]]:
    """Real flow lines with a non-ASCII byte, a raw control byte, a CRLF end, a DEL byte, a bad line
    of control bytes and no final newline; and the 1-based numbers of the lines that are errors."""
    def with_summary(i: int, text: str) -> bytes:
        obj = orjson.loads(FLOW_LINES[i])
        obj["flow"]["Summary"] = text
        return orjson.dumps(obj)

    lines = [FLOW_LINES[0], with_summary(1, "café"), FLOW_LINES[2],
             with_summary(3, "aXb").replace(b"aXb", b"a\x01b"),  # a raw control byte: invalid JSON
             FLOW_LINES[4] + b"\r", with_summary(5, "a\x7fb"), b"\x00\x1f\x80\xff", FLOW_LINES[6]]
    return lines, [4, 7]


def _passing(d: Decoded, fs: FilterSet) -> list[tuple[int, Any]]:
    assert d.table is not None
    return [(int(d.line_numbers[i]), _canonical(d.raw[i])) for i in np.flatnonzero(fs.mask(d.table))]


@pytest.mark.parametrize("chunk", [8, 16, 64, 1 << 20])
def test_odd_bytes_are_found_wherever_chunks_end(chunk: int, monkeypatch: pytest.MonkeyPatch) -> None:
    from flowtrail.sources import decode
    monkeypatch.setattr(decode, "_CHUNK", chunk)
    lines, bad = _odd_bytes_block()
    fs = FilterSet.compile([{"verdict": ["DROPPED", "FORWARDED"]}])
    block = b"\n".join(lines)  # no final newline
    dec = Decoder(fs.paths)
    d = dec.decode_block(block, source="b")
    _consistent(d)
    assert [e.line for e in d.errors] == bad
    kept = [i + 1 for i in range(len(lines)) if i + 1 not in bad]
    assert list(d.line_numbers) == kept
    assert [_canonical(r) for r in d.raw] == [_canonical(lines[n - 1]) for n in kept]
    assert d.raw[kept.index(5)] == FLOW_LINES[4]  # the CR is not part of the line
    # through the prefilter: the same errors, the same rows pass the filter
    p = dec.decode_block(block, source="b", needle_groups=fs.needle_groups(), markers=NONCANONICAL_MARKERS)
    _consistent(p)
    assert [e.line for e in p.errors] == bad
    assert _passing(p, fs) == _passing(d, fs)
    assert [n for n, _ in _passing(d, fs)] == [1, 2, 5, 6, 8]


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=300), chunk=st.sampled_from([8, 16, 24, 64, 1 << 20]))
def test_special_bytes_are_every_control_and_non_ascii_byte(data: bytes, chunk: int) -> None:
    from flowtrail.sources import decode
    old = decode._CHUNK
    decode._CHUNK = chunk
    try:
        got = decode._special_bytes(np.frombuffer(data, np.uint8))
    finally:
        decode._CHUNK = old
    assert got.tolist() == [i for i, b in enumerate(data) if b < 32 or b > 127]


def test_suspect_and_rejected_lines_in_one_block_keep_table_rows_aligned() -> None:
    """The lines taken once for the canonical-spelling check and Arrow's reader: some leave for the
    exact path (non-canonical spellings), one is rejected by the reader; every table row must still
    be the row printed beside it."""
    fs = FilterSet.compile([{"verdict": ["DROPPED", "FORWARDED"]}])
    cut = FLOW_LINES[3][: FLOW_LINES[3].index(b"}") + 1]  # flow-shaped, not valid JSON
    camel = FLOW_LINES[1].replace(b'"node_name"', b'"nodeName"')
    assert camel != FLOW_LINES[1]
    lines = [FLOW_LINES[0], camel, cut, FLOW_LINES[2], S.render(RESPONSES[0], "numbers"), FLOW_LINES[4]]
    block = b"\n".join(lines) + b"\n"
    dec = Decoder(fs.paths)
    full = dec.decode_block(block, source="s", first_line=7)
    pre = dec.decode_block(block, source="s", first_line=7, needle_groups=fs.needle_groups(),
                           markers=NONCANONICAL_MARKERS)
    for d in (full, pre):
        _consistent(d)
        assert [e.line for e in d.errors] == [9]
        assert d.stats.slow_path == 3  # the camel and numbers spellings, and the rejected line
        assert d.table is not None
        rows = [_canonical(r) for r in d.raw]
        verdicts = d.table.column("flow").combine_chunks().field("verdict").to_pylist()
        assert verdicts == [r.get("flow", {}).get("verdict") for r in rows]
        assert d.table.column("time").to_pylist() == [r.get("time") for r in rows]
    assert list(full.line_numbers) == [7, 8, 10, 11, 12]
    assert _passing(pre, fs) == _passing(full, fs)
    assert [n for n, _ in _passing(full, fs)] == [7, 8, 11, 12]


def test_worker_tasks_join_ranges_but_keep_every_worker_busy() -> None:
    ranges = [(i * 10, i * 10 + 10) for i in range(31)]
    for nproc in (1, 2, 3, 8, 64):
        tasks = files.grouped_ranges(ranges, nproc)
        assert tasks[0][0] == 0 and tasks[-1][1] == 310
        assert all(tasks[i][1] == tasks[i + 1][0] for i in range(len(tasks) - 1))
        assert all(e - s <= 10 * files.MAX_GROUP for s, e in tasks)
        assert len(tasks) >= min(len(ranges), files.TASKS_PER_WORKER * nproc)
    # the last tasks are single ranges: the workers finish close together
    tasks = files.grouped_ranges([(i * 10, i * 10 + 10) for i in range(101)], 2)
    assert tasks[-4:] == [(970, 980), (980, 990), (990, 1000), (1000, 1010)]
    assert max(e - s for s, e in tasks) == 10 * files.MAX_GROUP
    assert files.grouped_ranges([], 2) == []


def test_scanner_is_built_where_a_compiler_exists() -> None:
    """`make install` builds the scanner whenever it can: a silent fallback would cost 3x on every
    line of `observe -o json`."""
    if shutil.which("gcc") or shutil.which("cc"):
        assert canonscan._canonscan is not None


def test_worker_tables_handed_over_in_files_equal_one_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # large worker tables come back as Arrow IPC files in the spool directory (mapped, not
    # piped); without a spool directory they go through the pipe; one process makes them itself
    import contextlib

    import pyarrow as pa

    from flowtrail.lab.simulate import NS, Options, simulate
    from flowtrail.policy.replay import REPLAY_PATHS
    from flowtrail.sources import batches as bmod
    from flowtrail.sources.files import Input
    path = tmp_path / "flows.jsonl"
    simulate(Options(duration_ns=100 * NS, seed=3, rate=250, output=str(path)))
    path.write_bytes(path.read_bytes() + b'{"flow":{"verdict":"FORWARDED"\n')  # a bad last line
    assert path.stat().st_size > bmod.PARALLEL_MIN_BYTES

    def spool_maps() -> set[str]:
        # tables read from the spool stay mapped (their files removed) while they are alive
        with open("/proc/self/maps") as fh:
            return {ln.split()[-2] for ln in fh if "/table-" in ln and ln.rstrip().endswith("(deleted)")}

    def run(workers: int) -> tuple[pa.Table, list[tuple[int, str]], int, int]:
        before = spool_maps()
        got = list(bmod.batches([Input(str(path))], Decoder(sorted(REPLAY_PATHS)), None, workers))
        tables = [b.table for b in got if b.table is not None and b.table.num_rows]
        errors = [(e.line, e.source) for b in got for e in b.errors]
        return pa.concat_tables(tables), errors, sum(b.lines for b in got), len(spool_maps() - before)

    one = run(1)
    two = run(2)
    assert one[3] == 0 and two[3] > 0
    assert two[0].equals(one[0]) and two[1:3] == one[1:3] and one[1] == [(one[2], str(path))]
    monkeypatch.setattr(bmod, "spool_dir", lambda: contextlib.nullcontext(None))
    piped = run(2)
    assert piped[3] == 0 and piped[0].equals(one[0])
    assert not [p for p in os.listdir("/dev/shm") if p.startswith(f"flowtrail-{os.getpid()}-")]
