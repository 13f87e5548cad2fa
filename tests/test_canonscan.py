"""The C scanner that decides which flow lines are in Hubble's own spelling.

It may send a canonical line to the exact path (that only costs time), but it must never call a
line canonical when the exact path would print something else or reject it: such a line would be
copied to `observe -o json` output unchanged, or parsed column-wise where protojson would not.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flowtrail.filters import FilterSet
from flowtrail.model.normalize import NormalizeError, normalize_event
from flowtrail.model.schema import envelope_arrow_schema
from flowtrail.sources import canonscan
from flowtrail.sources.canonical import SUSPECT, SUSPECT_RARE
from flowtrail.sources.decode import FLOW_PREFIX, Decoder
from tests import strategies as S
from tests.conftest import GOLDEN_DIR, SAMPLES_DIR

pytestmark = pytest.mark.skipif(canonscan._canonscan is None, reason="built without the C scanner")

BASE = {"flow": {"time": "2024-05-01T10:00:00.123456789Z", "uuid": "c938628b-0c3a-4440-9ecd-3e3ca00d3a16",
                 "verdict": "DROPPED", "drop_reason": 133, "IP": {"source": "10.0.1.5", "destination": "10.0.2.7",
                                                                  "ipVersion": "IPv4"},
                 "l4": {"TCP": {"source_port": 40000, "destination_port": 5432, "flags": {"SYN": True}}},
                 "source": {"ID": 12, "identity": 4321, "namespace": "app", "labels": ["k8s:app=api"],
                            "pod_name": "api-1", "workloads": [{"name": "api", "kind": "Deployment"}]},
                 "Type": "L3_L4", "node_name": "kind/worker", "event_type": {"type": 1, "sub_type": 133},
                 "traffic_direction": "EGRESS", "drop_reason_desc": "POLICY_DENIED", "is_reply": False,
                 "socket_cookie": "18446744073709551615", "Summary": "TCP Flags: SYN"},
        "node_name": "kind/worker", "time": "2024-05-01T10:00:00.123456789Z"}


def flagged(lines: list[bytes]) -> np.ndarray:
    data = b"\n".join(lines) + b"\n"
    lengths = np.array([len(x) for x in lines], np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths + 1)[:-1]]).astype(np.int64)
    return canonscan.noncanonical(data, starts, starts + lengths)


def exact_path_agrees(line: bytes) -> bool:
    """Would the exact path print this line's JSON as it is (a flow event, every value kept)?"""
    try:
        obj = orjson.loads(line)
        kind, env = normalize_event(obj)
    except (orjson.JSONDecodeError, NormalizeError):
        return False
    return kind == "flow" and env == obj


def regex_flags(lines: list[bytes]) -> np.ndarray:
    arr = pa.array(lines, pa.large_binary())
    out = np.asarray(pc.match_substring_regex(arr, SUSPECT))
    for pattern, _ in SUSPECT_RARE:
        out |= np.asarray(pc.match_substring_regex(arr, pattern))
    return out


def test_base_line_is_canonical() -> None:
    line = orjson.dumps(BASE)
    assert not flagged([line])[0]
    assert exact_path_agrees(line)


def _with(path: str, value: Any) -> bytes:
    env = orjson.loads(orjson.dumps(BASE))
    *head, last = path.split(".")
    node = env
    for part in head:
        node = node[part]
    node[last] = value
    return orjson.dumps(env)


@pytest.mark.parametrize("path, value, canonical", [
    ("flow.verdict", 2, False),  # enum as a number
    ("flow.verdict", "VERDICT_UNKNOWN", False),  # the zero value: protojson omits it
    ("flow.verdict", "NOT_A_VERDICT", False),  # unknown names are dropped by hubble's reader
    ("flow.verdict", "", False),
    ("flow.drop_reason", 0, False),
    ("flow.drop_reason", 4294967295, True),
    ("flow.drop_reason", 4294967296, False),
    ("flow.drop_reason", 133.0, False),
    ("flow.drop_reason", "133", False),
    ("flow.event_type.sub_type", -3, True),  # int32: negative values are printed as such
    ("flow.event_type.sub_type", 2147483648, False),
    ("flow.socket_cookie", "18446744073709551616", False),
    ("flow.socket_cookie", "0", False),
    ("flow.socket_cookie", "0012", False),
    ("flow.socket_cookie", 12, False),
    ("flow.is_reply", True, True),  # a BoolValue: false is printed too
    ("flow.reply", False, False),  # a plain bool: false is omitted
    ("flow.reply", True, True),
    ("flow.source.labels", [], False),
    ("flow.source.labels", ["a", None], False),
    ("flow.source.workloads", [{"name": "api", "kind": "Deployment"}, {"name": "x"}], True),
    ("flow.Summary", "", False),
    ("flow.Summary", 'quote " and slash / and \\ backslash\n', True),
    ("flow.time", "2024-05-01T10:00:00Z", True),
    ("flow.time", "2024-05-01T10:00:00.120Z", True),
    ("flow.time", "2024-05-01T10:00:00.123000Z", False),  # protojson would print .123
    ("flow.time", "2024-05-01T10:00:00.000Z", False),
    ("flow.time", "2024-05-01T10:00:00.1Z", False),
    ("flow.time", "2024-05-01T10:00:00+00:00", False),
    ("flow.time", "2024-13-01T10:00:00Z", False),
    ("flow.time", "2024-05-01T24:00:00Z", False),
    ("flow.IP.ipVersion", "IPv6", True),
    ("flow.IP.ipVersion", "IP_NOT_USED", False),
    ("flow.l4", {"UDP": {"source_port": 53}}, True),
    ("flow.l4", {}, True),
    ("flow.extensions", {"@type": "type.googleapis.com/x", "a": [1, 2.5e3, None, {"b": False}]}, True),
    ("flow.sourceNames", ["x"], False),  # lowerCamelCase name
    ("flow.no_such_field", 1, False),
    ("flow.source", None, False),
    ("lost_events", {"num_events_lost": "3"}, False),
    ("agent_event", {}, False),
])
def test_values_protojson_would_print_differently_are_flagged(path: str, value: Any, canonical: bool) -> None:
    line = _with(path, value)
    assert bool(flagged([line])[0]) is not canonical, line
    if canonical:
        assert exact_path_agrees(line)


@pytest.mark.parametrize("line", [
    orjson.dumps(BASE).replace(b'"verdict":', b'"verdict": '),  # whitespace
    orjson.dumps(BASE) + b" ",
    orjson.dumps(BASE) + b"{}",  # two values run together
    orjson.dumps(BASE).replace(b'"DROPPED"', b'"DROPPED","verdict":"DROPPED"'),  # a repeated key
    orjson.dumps(BASE).replace(b'"api-1"', b'"api-\\ud800"'),  # a lone surrogate
    orjson.dumps(BASE).replace(b'"api-1"', b'"api-\\x"'),  # an invalid escape
    orjson.dumps(BASE).replace(b'"verdict"', b'"verd\\u0069ct"'),  # an escaped key
    orjson.dumps(BASE)[:-1],  # truncated
    orjson.dumps(BASE).replace(b"4321", b"04321"),
    b'{"flow":{' + b'"extensions":' + b"[" * 60 + b"]" * 60 + b"}}",  # nested deeper than any flow
])
def test_malformed_or_odd_lines_are_flagged(line: bytes) -> None:
    assert flagged([line])[0]


def test_agrees_with_the_regex_check_on_real_lines() -> None:
    """Every flow line of the public samples and of a lab capture: the C scanner and the RE2 pattern
    (with Arrow's validation) make the same call, and every line called canonical is one the exact
    path prints as it is."""
    lines = [ln for p in [GOLDEN_DIR / "public-samples.input.jsonl", *sorted(SAMPLES_DIR.glob("*.jsonl"))]
             for ln in p.read_bytes().splitlines()]
    sim = subprocess.run([sys.executable, "-m", "flowtrail.cli.main", "simulate", "-q", "--duration", "60s", "--rate", "200",
                          "--scenario", "dns-c2", "--scenario", "port-scan", "-o", "-"],
                         check=True, capture_output=True).stdout
    lines += sim.splitlines()
    lines = [ln for ln in lines if ln.startswith(FLOW_PREFIX) and ln.endswith(b"}") and ln.isascii()]
    assert len(lines) > 10_000
    c = flagged(lines)
    assert c.tolist() == regex_flags(lines).tolist()
    assert all(exact_path_agrees(lines[i]) for i in np.flatnonzero(~c))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(resp=S.responses(), spelling=st.sampled_from(S.SPELLINGS), cut=st.integers(0, 4000),
       byte=st.integers(32, 126), mutate=st.booleans())
def test_lines_called_canonical_are_printed_unchanged(resp: dict[str, Any], spelling: str, cut: int, byte: int,
                                                      mutate: bool) -> None:
    line = S.render(resp, spelling).rstrip(b"\r")
    if mutate and line:
        at = cut % len(line)
        line = line[:at] + bytes([byte]) + line[at + 1:]
    if not line.startswith(FLOW_PREFIX) or not line.isascii():
        return
    if not flagged([line])[0]:
        assert exact_path_agrees(line), line


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=S.batches())
def test_decoding_with_and_without_the_scanner_is_identical(batch: list[tuple[dict[str, Any], str]]) -> None:
    lines = [S.render(r, s) for r, s in batch]
    fs = FilterSet.compile([{"verdict": ["DROPPED"]}, {"protocol": ["dns"]}], [])
    results = []
    before = canonscan.AVAILABLE
    try:
        for available in (True, False):
            canonscan.AVAILABLE = available
            for dec in (Decoder(fs.paths), Decoder(None)):
                d = dec.decode_lines(lines, "x.jsonl")
                results.append((available, d.raw, d.table, [str(e) for e in d.errors], d.line_numbers.tolist()))
    finally:
        canonscan.AVAILABLE = before
    for a, b in zip(results[:2], results[2:], strict=True):
        # the same JSON; the bytes may differ where one path re-encoded a line the other copied
        assert [orjson.loads(x) for x in a[1]] == [orjson.loads(x) for x in b[1]]
        assert a[2].equals(b[2])
        assert a[3:] == b[3:]



def _arrow_table(lines: list[bytes], schema: pa.Schema) -> pa.Table:
    import pyarrow.json as pajson

    data = b"\n".join(lines) + b"\n"
    opts = pajson.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
    return pajson.read_json(pa.BufferReader(data), read_options=pajson.ReadOptions(use_threads=False),
                            parse_options=opts)


def _extract(lines: list[bytes], schema: pa.Schema) -> tuple[np.ndarray, pa.Table]:
    data = b"\n".join(lines) + b"\n"
    lengths = np.array([len(x) for x in lines], np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths + 1)[:-1]]).astype(np.int64)
    return canonscan.Extractor(schema).extract(data, starts, starts + lengths)


PROJECTIONS = {
    "every field": None,
    "a filter's": ["verdict", "source.namespace", "source.labels", "l4.TCP.destination_port"],
    "policies and lists": ["egress_allowed_by", "ingress_denied_by", "l7.dns.ips", "l7.http.headers",
                           "source.workloads", "node_labels", "is_reply", "l4.TCP.flags"],
}


@pytest.mark.parametrize("projection", sorted(PROJECTIONS))
def test_extracted_columns_equal_arrows_reader(projection: str) -> None:
    paths = PROJECTIONS[projection]
    schema = envelope_arrow_schema(None if paths is None else sorted({*paths, "time", "node_name"}))
    lines = [ln for p in [GOLDEN_DIR / "public-samples.input.jsonl", *sorted(SAMPLES_DIR.glob("*.jsonl"))]
             for ln in p.read_bytes().splitlines()]
    lines = [ln for ln in lines if ln.startswith(FLOW_PREFIX) and ln.isascii()]
    escaped = orjson.loads(orjson.dumps(BASE))
    escaped["flow"]["Summary"] = 'a "quoted" \\ back\nslash \t tab'
    escaped["flow"]["source"]["labels"] = ["k8s:app=caf\u00e9", "x"]
    lines += [orjson.dumps(escaped).replace(b"caf\xc3\xa9", b"caf\\u00e9").replace(b"=x", b"=\\u0078\\/y")]
    bad, table = _extract(lines, schema)
    good = [ln for ln, b in zip(lines, bad, strict=True) if not b]
    assert len(good) > 50
    assert table.equals(_arrow_table(good, schema))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=st.lists(S.responses(), min_size=1, max_size=30), projection=st.sampled_from(sorted(PROJECTIONS)))
def test_extracted_columns_equal_arrows_reader_on_generated_flows(batch: list[dict[str, Any]],
                                                                   projection: str) -> None:
    paths = PROJECTIONS[projection]
    schema = envelope_arrow_schema(None if paths is None else sorted({*paths, "time", "node_name"}))
    lines = [orjson.dumps(r) for r in batch]
    lines = [ln for ln in lines if ln.startswith(FLOW_PREFIX) and ln.isascii()]
    if not lines:
        return
    bad, table = _extract(lines, schema)
    good = [ln for ln, b in zip(lines, bad, strict=True) if not b]
    assert table.equals(_arrow_table(good, schema) if good else schema.empty_table())


@settings(max_examples=300, deadline=None)
@given(parts=st.lists(st.sampled_from([b'{"flow":{"a":1}}', b"{}", b"{ }", b"\n", b"\r", b"\r\n", b"\t", b"\x00",
                                       b"\xc3\xa9", b"\x7f", b"x" * 15, b"x" * 63, b"}", b"{", b'{"flow":{']), max_size=40),
       max_line=st.sampled_from([2, 16, 1 << 20]))
def test_line_index_equals_the_numpy_one(parts: list[bytes], max_line: int) -> None:
    """The C line index and the numpy one agree on every line's extent, plainness and flow shape,
    whatever bytes surround the 16-byte (SSE2) and 64-byte (AVX2) steps."""
    from flowtrail.sources.decode import LineIndex

    data = b"".join(parts)
    before = canonscan.AVAILABLE
    try:
        got = []
        for available in (True, False):
            canonscan.AVAILABLE = available
            ix = LineIndex(data, max_line)
            got.append((ix.count, ix.starts.tolist(), ix.ends.tolist(), ix.plain.tolist(), ix.flow.tolist(),
                        ix.empty.tolist()))
    finally:
        canonscan.AVAILABLE = before
    assert got[0] == got[1]


@given(st.lists(st.binary(max_size=40).filter(lambda b: b"\n" not in b), max_size=30), st.data())
@settings(max_examples=150, deadline=None)
def test_gathered_lines_are_the_spans_each_with_a_newline(lines: list[bytes], data: st.DataObject) -> None:
    block = b"".join(line + b"\n" for line in lines)
    starts = np.cumsum([0] + [len(line) + 1 for line in lines[:-1]]).astype(np.int64) if lines else np.zeros(0, np.int64)
    keep = np.array(data.draw(st.lists(st.booleans(), min_size=len(lines), max_size=len(lines))), bool)
    lens = np.array([len(line) for line in lines], np.int64)
    got = canonscan.gather_lines(memoryview(block), starts[keep], (starts + lens)[keep] if lines else starts)
    assert got == b"".join(line + b"\n" for line, k in zip(lines, keep, strict=True) if k)


def test_gather_refuses_spans_outside_the_buffer() -> None:
    if canonscan._canonscan is None:
        pytest.skip("C scanner not built")
    with pytest.raises(ValueError):
        canonscan.gather_lines(b"abc\n", np.array([0], np.int64), np.array([9], np.int64))


def _respelled(obj: Any, rnd: Any) -> bytes:
    """``obj`` as compact JSON with one run of spaces between two of its tokens."""
    toks: list[str] = []

    def emit(x: Any) -> None:
        if isinstance(x, dict):
            toks.append("{")
            for i, (k, v) in enumerate(x.items()):
                toks.extend([","] if i else [])
                toks.extend([orjson.dumps(k).decode(), ":"])
                emit(v)
            toks.append("}")
        elif isinstance(x, list):
            toks.append("[")
            for i, v in enumerate(x):
                toks.extend([","] if i else [])
                emit(v)
            toks.append("]")
        else:
            toks.append(orjson.dumps(x).decode())
    emit(obj)
    k = rnd.randrange(1, len(toks))
    return ("".join(toks[:k]) + " " * rnd.randint(1, 3) + "".join(toks[k:])).encode()


def test_lines_spelled_with_spaces_are_not_plain() -> None:
    """A space between two tokens (`"a": 1`, `[1, 2]`, `{ "a"`) makes a line not plain in the C
    and the numpy index alike, so prefilters written for the compact spelling never skip it;
    compact lines, whose spaces are all inside strings, stay plain (and the fallback's pattern
    agrees with both)."""
    import random
    import re

    from flowtrail.sources.batches import SPACED
    from flowtrail.sources.decode import LineIndex

    rnd = random.Random(5)
    compact = [ln for p in sorted(SAMPLES_DIR.glob("*.jsonl")) for ln in p.read_bytes().splitlines()
               if ln.startswith(b"{")]
    spaced = [_respelled(orjson.loads(ln), rnd) for ln in compact for _ in range(6)]
    assert all(orjson.loads(s) == orjson.loads(c) for s, c in zip(spaced, (c for c in compact for _ in range(6)),
                                                                   strict=True))
    data = b"\n".join(compact + spaced) + b"\n"
    before = canonscan.AVAILABLE
    try:
        for available in (True, False):
            canonscan.AVAILABLE = available
            plain = LineIndex(data, 1 << 20).plain
            assert plain[:len(compact)].all()
            assert not plain[len(compact):].any()
    finally:
        canonscan.AVAILABLE = before
    rx = re.compile(SPACED.encode())
    assert not any(rx.search(c) for c in compact) and all(rx.search(s) for s in spaced)
