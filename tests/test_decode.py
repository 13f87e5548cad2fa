"""Decoder robustness on real-format lines: bad lines are reported and skipped, never fatal."""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import orjson
import pytest

from flowtrail.cli.observe import observe_main
from flowtrail.filters import FilterSet
from flowtrail.sources.decode import Decoder
from tests.conftest import GOLDEN_DIR

LINES = (GOLDEN_DIR / "public-samples.input.jsonl").read_bytes().splitlines()
FLOW_LINES = [ln for ln in LINES if ln.startswith(b'{"flow"')]


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


def test_cli_reports_file_and_line_and_strict_is_fatal(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "events.log"
    path.write_bytes(FLOW_LINES[0] + b"\n{broken\n" + FLOW_LINES[1] + b"\n")
    out = io.BytesIO()
    assert observe_main(["--input-file", str(path), "--all", "-o", "json"], stdout=out) == 0
    assert len(out.getvalue().splitlines()) == 2
    err = capsys.readouterr().err
    assert f"{path}:2:" in err and "skipped 1 bad line" in err
    assert observe_main(["--input-file", str(path), "--all", "--strict"], stdout=io.BytesIO()) == 1


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


def test_random_mutations_never_raise() -> None:
    import random

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
