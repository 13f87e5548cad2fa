"""Line classes (flowtrail.sources.lineclass): which lines may share one decode in a replay."""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pytest

from flowtrail.sources import canonscan, lineclass
from flowtrail.sources.decode import LineIndex
from flowtrail.util import compute as pc

pytestmark = pytest.mark.skipif(not lineclass.AVAILABLE and not canonscan.AVAILABLE,
                                reason="built without a C compiler")


def test_extension_is_built_where_the_others_are() -> None:
    """The C extensions are optional, so a compile error would only show as a slower audit."""
    assert lineclass.AVAILABLE

SAMPLES = Path(__file__).resolve().parents[1] / "src" / "flowtrail" / "data" / "hubble-samples.jsonl"


def classify(lines: list[bytes], fqdn: bool = False) -> lineclass.LineClasses:
    data = b"\n".join(lines) + b"\n"
    ix = LineIndex(data, 1 << 20)
    lc = lineclass.classify(data, ix.starts, ix.ends, np.arange(ix.count), np.ones(ix.count, np.uint8), fqdn)
    assert lc is not None
    return lc


def masked(line: bytes) -> Any:
    """The line as the replay sees it: without the members a class may differ in."""
    doc = orjson.loads(line)
    doc.pop("time", None)
    flow = doc["flow"]
    for key in ("time", "uuid", "Summary"):
        flow.pop(key, None)
    for proto in (flow.get("l4") or {}).values():
        proto.pop("source_port", None)
        proto.pop("flags", None)
    (flow.get("l7") or {}).pop("latency_ns", None)
    return doc


def ns(text: str) -> int:
    return int(pc.cast(pc.cast(pa.array([text]), pa.timestamp("ns", tz="UTC")), pa.int64())[0].as_py())


def base_flow(**changes: Any) -> dict[str, Any]:
    flow: dict[str, Any] = {
        "flow": {"time": "2026-11-26T08:00:00.000067672Z", "uuid": "9fff7c6a-66ad-4865-ab6f-a181aefe0244",
                 "verdict": "FORWARDED", "IP": {"source": "10.0.10.192", "destination": "10.0.8.28",
                                                "ipVersion": "IPv4"},
                 "l4": {"TCP": {"source_port": 45292, "destination_port": 8080, "flags": {"SYN": True}}},
                 "source": {"identity": 29344, "namespace": "production", "labels": ["k8s:app=search"],
                            "pod_name": "search-1"},
                 "destination": {"identity": 59676, "namespace": "app", "labels": ["k8s:app=api"],
                                 "pod_name": "api-1"},
                 "Type": "L3_L4", "traffic_direction": "EGRESS", "is_reply": False, "Summary": "TCP Flags: SYN"},
        "node_name": "k8s-worker-03", "time": "2026-11-26T08:00:00.000067672Z"}
    for path, value in changes.items():
        node = flow
        *parents, last = path.split(".")
        for p in parents:
            node = node[p]
        node[last] = value
    return flow


def line(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


def test_classes_hold_lines_equal_but_for_masked_members() -> None:
    """Over the bundled Hubble samples (each flow line twice more, re-encoded with new times,
    uuids, source ports and flags): a class only ever holds lines equal once the masked members
    are removed, the copies of one line share a class, and each class has its count, first and
    last time and first uuids."""
    rng = random.Random(5)
    lines: list[bytes] = []
    copies: list[tuple[int, int]] = []
    for text in SAMPLES.read_bytes().splitlines():
        doc = orjson.loads(text)
        lines.append(text)
        if "flow" not in doc:
            continue
        for _ in range(2):
            d = copy.deepcopy(doc)
            f = d["flow"]
            f["time"] = f"2026-0{rng.randrange(1, 10)}-1{rng.randrange(10)}T0{rng.randrange(10)}:00:00." \
                        f"{rng.randrange(10**9):09d}Z"
            f["uuid"] = f"u-{rng.randrange(10**9)}"
            for proto in (f.get("l4") or {}).values():
                if "source_port" in proto:
                    proto["source_port"] = rng.randrange(1, 65536)
                if "flags" in proto:
                    proto["flags"] = {"ACK": True, "PSH": rng.random() < 0.5}
            lines.append(orjson.dumps(d))
        copies.append((len(lines) - 2, len(lines) - 1))
    order = list(range(len(lines)))
    rng.shuffle(order)
    place = {old: new for new, old in enumerate(order)}
    lines = [lines[i] for i in order]
    lc = classify(lines)
    assert (lc.cls >= 0).sum() > len(lines) // 2 and (lc.count > 1).sum() > 30
    members: dict[int, list[int]] = {}
    for i, c in enumerate(lc.cls.tolist()):
        if c >= 0:
            members.setdefault(c, []).append(i)
    assert sorted(members) == list(range(len(lc.rep)))
    uuids = lc.ex_uuid.to_pylist()
    for c, rows in members.items():
        # no two lines the replay could tell apart in one class
        assert len({orjson.dumps(masked(lines[i]), option=orjson.OPT_SORT_KEYS) for i in rows}) == 1
        assert lc.rep[c] == rows[0] and lc.count[c] == len(rows)
        times = [ns(orjson.loads(lines[i])["flow"]["time"]) for i in rows]
        assert (lc.t_first[c], lc.t_last[c]) == (min(times), max(times))
        with_uuid = [i for i in rows if orjson.loads(lines[i])["flow"].get("uuid")][:3]
        assert lc.ex_line[c][:len(with_uuid)].tolist() == with_uuid
        assert (lc.ex_line[c][len(with_uuid):] == -1).all()
        assert uuids[3 * c:3 * c + len(with_uuid)] == [orjson.loads(lines[i])["flow"]["uuid"] for i in with_uuid]
    for a, b in copies:
        assert lc.cls[place[a]] == lc.cls[place[b]] >= 0


@pytest.mark.parametrize("change", [
    {"flow.time": "2026-11-26T09:00:00+01:00"},      # another spelling of a time: the decoder decides
    {"flow.time": "2026-02-30T00:00:00Z"},           # not a date
    {"flow.time": "2026-11-26T08:00:00.1234567890Z"},  # ten digits
    {"flow.uuid": "a\"b"},                           # an escape where a value is read
    {"flow.l4.TCP.source_port": "45292"},            # a port that is not a number
    {"flow.l4.TCP.source_port": 99999999999},        # out of range
    {"flow.l4.TCP.flags": {"SYN": 1}},               # a flag that is not a boolean
])
def test_odd_masked_values_leave_the_line_unclassed(change: dict[str, Any]) -> None:
    """A masked value not in the form the decoder reads is never hidden in a class: the line is
    decoded (and reported) on its own."""
    good = line(base_flow())
    odd = line(base_flow(**change))
    lc = classify([good, odd, good])
    assert lc.cls.tolist() == [0, -1, 0]


def test_other_differences_and_bad_lines_split_or_leave_out() -> None:
    good = line(base_flow())
    lc = classify([good, line(base_flow(**{"flow.verdict": "DROPPED"})), good[:-1], b"{}", b'{"flow":{}}',
                   good.replace(b'"time"', b'"time"', 1) + b"x", line(base_flow(**{"flow.l4.TCP.destination_port": 81})),
                   good])
    assert lc.cls.tolist() == [0, 1, -1, -1, -1, -1, 2, 0]
    # a duplicate masked key: which one a reader keeps is its business
    dup = good.replace(b'"uuid":', b'"uuid":"x","uuid":', 1)
    assert classify([good, dup]).cls.tolist() == [0, -1]


def test_dns_answers_start_new_classes_for_their_addresses() -> None:
    """With toFQDNs rules a flow to an address is judged by the names learned before it: an
    answer naming the address separates the flows before it from those after; answers for other
    addresses do not; answer lines are never classed."""
    to_x = line(base_flow(**{"flow.IP.destination": "203.0.113.7"}))
    answer = line(base_flow(**{"flow.l7": {"type": "RESPONSE", "dns": {"query": "a.example.", "ips": ["203.0.113.7"]}},
                               "flow.is_reply": True}))
    other = line(base_flow(**{"flow.l7": {"type": "RESPONSE", "dns": {"query": "b.example.", "ips": ["198.51.100.1"]}},
                              "flow.is_reply": True}))
    lines = [to_x, to_x, other, to_x, answer, to_x]
    assert classify(lines, fqdn=True).cls.tolist() == [0, 0, -1, 0, -1, 1]
    assert classify(lines, fqdn=False).cls.tolist() == [0, 0, 1, 0, 2, 0]
    # an escaped key could hide an answer: nothing after it is classed
    escaped = answer.replace(b'"ips"', b'"\\u0069ps"')
    assert classify([to_x, escaped, to_x, to_x], fqdn=True).cls.tolist() == [0, -1, -1, -1]


@pytest.mark.parametrize("fqdn", [False, True])
def test_mutated_lines_never_hide_in_a_valid_class(fqdn: bool) -> None:
    """Random byte edits of the bundled samples (and exact copies beside them): wherever a class's
    first line is valid JSON, so is every line put in its class, so no bad line goes unreported."""
    samples = SAMPLES.read_bytes().splitlines()
    rng = random.Random(7 + fqdn)

    def valid(text: bytes) -> bool:
        try:
            orjson.loads(text)
        except orjson.JSONDecodeError:
            return False
        return True
    classed = 0
    for _ in range(400):
        picked = [bytearray(rng.choice(samples)) for _ in range(8)]
        picked += [bytearray(x) for x in picked[:4]]
        for ln in picked:
            for _ in range(rng.randrange(3)):
                at = rng.randrange(len(ln) + 1)
                edit = rng.randrange(3)
                if edit == 0 and ln:
                    del ln[min(at, len(ln) - 1)]
                elif edit == 1:
                    ln[at:at] = bytes([rng.choice(b'{}[]",:\\0123456789tfnu \x01\xc3')])
                elif ln:
                    ln[min(at, len(ln) - 1)] = rng.randrange(1, 256)
        lines = [bytes(ln).replace(b"\n", b" ") for ln in picked]
        lc = classify(lines, fqdn)
        for i, c in enumerate(lc.cls.tolist()):
            if c >= 0:
                classed += 1
                if valid(lines[int(lc.rep[c])]):
                    assert valid(lines[i]), (lines[int(lc.rep[c])], lines[i])
    assert classed > 1000
