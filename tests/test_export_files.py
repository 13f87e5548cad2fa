"""Flow export to files: Hubble exporter semantics on real samples and lab flows.

Without a field mask the file must hold exactly what `flowtrail observe -o json` prints for the
same allow/deny lists (itself checked against hubble); field masks are checked against Hubble's
documented exporter output and against an independent reading of the fieldmask semantics;
rotation, compression, rate limiting and DNS sampling are checked by their counters and by
reading every file back.
"""

from __future__ import annotations

import gzip
import io
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import yaml

from flowtrail.cli.observe import observe_main
from flowtrail.model.schema import FLOW
from flowtrail.sinks.export import (
    EXPORT_SCHEMA,
    ExportConfigError,
    FileFlowExport,
    FlowExport,
    build_flow_exports,
)
from flowtrail.sinks.export import build_flow_export as build_one
from flowtrail.sinks.fieldmask import FieldMask, FieldMaskError
from flowtrail.sinks.ratelimit import hash_strings, unit_interval
from flowtrail.sinks.rotate import RotatingWriter
from flowtrail.sources.decode import Decoder
from flowtrail.sources.files import iter_blocks
from tests.conftest import BUNDLED, SAMPLES_DIR

FLOWTRAIL = [sys.executable, "-m", "flowtrail.cli.main"]
SAMPLE_FILES = sorted(SAMPLES_DIR.glob("*.jsonl")) if SAMPLES_DIR.is_dir() else [BUNDLED / "hubble-samples.jsonl"]
SUMMED = ("filtered", "expired", "sampled", "rate_limited", "dropped", "errors", "exported", "pending")


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """15 s of simulated cluster traffic with drops and a DNS C2 channel."""
    out = tmp_path_factory.mktemp("lab") / "lab.jsonl"
    subprocess.run([*FLOWTRAIL, "simulate", "--duration", "15s", "--scenario", "drop-spike:at=0.3",
                    "--scenario", "dns-c2:at=0.2", "--workers", "1", "-q", "-o", str(out)], check=True)
    return out


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every real sample line in one file (flows, a lost event, agent/debug events)."""
    out = tmp_path_factory.mktemp("samples") / "samples.jsonl"
    out.write_bytes(b"".join(p.read_bytes().rstrip(b"\n") + b"\n" for p in SAMPLE_FILES))
    return out


def export_file(path: Path, exports: list[FlowExport], block: int = 1 << 20) -> None:
    """Feed a JSON lines file through the exporters, decoded as the monitor does."""
    dec = Decoder(set().union(*(e.paths for e in exports)))
    with open(path, "rb") as fh:
        for data, first in iter_blocks(fh, block):
            d = dec.decode_block(data, str(path), first)
            assert d.table is not None
            for e in exports:
                e.write(d.table, d.rows)
    for e in exports:
        e.close()


def observe(path: Path, *flags: str) -> bytes:
    """`flowtrail observe --input-file PATH --all -o json FLAGS` (in-process: no interpreter start-up)."""
    out = io.BytesIO()
    rc = observe_main(["--input-file", str(path), "--all", "-o", "json", "--workers", "1", *flags], stdout=out)
    assert rc == 0
    return out.getvalue()


def read_lines(path: Path) -> list[bytes]:
    data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    return data.splitlines()


def check_sum(stats: dict[str, int]) -> None:
    assert stats["input"] == sum(stats[k] for k in SUMMED), stats


CASES: list[tuple[list[dict[str, Any]], list[dict[str, Any]]]] = [
    ([], []),
    ([{"verdict": ["DROPPED", "ERROR"]}], []),
    ([{"source_pod": ["kube-system/"]}, {"destination_pod": ["kube-system/"]}], []),
    ([], [{"protocol": ["UDP"]}, {"destination_port": ["53"]}]),
    ([{"event_type": [{"type": 129}]}, {"destination_label": ["reserved:world"]}], [{"verdict": ["DROPPED"]}]),
    ([{"traffic_direction": ["EGRESS"], "source_label": ["k8s:app"]}], [{"reply": [True]}]),
]


@pytest.mark.parametrize(("include", "exclude"), CASES)
@pytest.mark.parametrize("data", ["samples", "lab"])
def test_file_without_mask_equals_observe(
    data: str, include: list[dict[str, Any]], exclude: list[dict[str, Any]], tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    src: Path = request.getfixturevalue(data)
    out = tmp_path / "events.log"
    (ex,) = build_flow_exports([{"name": "t", "filePath": str(out), "includeFilters": include,
                                 "excludeFilters": exclude, "fileMaxSizeMb": 1024}])
    export_file(src, [ex])
    flags = []
    if include:
        flags += ["--allowlist", "".join(json.dumps(f) for f in include)]
    if exclude:
        flags += ["--denylist", "".join(json.dumps(f) for f in exclude)]
    expected = observe(src, *flags)
    got = out.read_bytes()
    assert got == expected
    assert ex.stats["exported"] == expected.count(b"\n") and ex.stats["bytes"] == len(expected)
    check_sum(ex.stats)
    if data == "lab" and include:
        assert 0 < ex.stats["exported"] < ex.stats["input"]


def test_lost_events_follow_hubble_exporter(samples: Path, tmp_path: Path) -> None:
    """A lost event passes an empty allowlist and any denylist, and fails a non-empty allowlist."""
    cfg = [{"name": "all", "filePath": str(tmp_path / "a.log")},
           {"name": "deny", "filePath": str(tmp_path / "d.log"), "denyList": [{"verdict": ["FORWARDED"]}]},
           {"name": "allow", "filePath": str(tmp_path / "l.log"), "allowList": [{"verdict": ["DROPPED"]}]}]
    export_file(samples, build_flow_exports(cfg))

    def lost(name: str) -> int:
        return sum(b'"lost_events"' in line for line in read_lines(tmp_path / name))

    assert (lost("a.log"), lost("d.log"), lost("l.log")) == (1, 1, 0)


# -- field masks -------------------------------------------------------------------------------------

DOCS_MASK = "time source.namespace source.pod_name destination.namespace destination.pod_name l4 IP node_name is_reply verdict drop_reason_desc"


def test_fieldmask_reproduces_hubble_documented_output() -> None:
    """The exporter lines in Cilium's docs were written with this mask: masking them again must
    give them back byte for byte (field order, empty endpoints, wrapper time/node_name)."""
    path = SAMPLES_DIR / "cilium-docs_export-rst_events-log.jsonl"
    if not path.exists():
        pytest.skip(f"{path} not available")
    fm = FieldMask(DOCS_MASK)
    lines = path.read_bytes().splitlines()
    assert lines and all(fm.line(line) == line for line in lines)
    assert b'"source":{},"destination":{}' in lines[0]


def expected_mask(env: dict[str, Any], paths: list[str]) -> dict[str, Any]:
    """Independent reading of Hubble's fieldmask.Copy + exporter wrapper, path by path: a leaf
    is copied when the flow has it, every message on the way to it is allocated, and the
    wrapper takes time/node_name from the masked flow. Keys in flow.proto's print order."""
    if "flow" not in env:
        return env
    out: dict[str, Any] = {}
    for path in paths:
        *parents, leaf = path.split(".")
        src: Any = env["flow"]
        dst = out
        for part in parents:
            src = src.get(part) if isinstance(src, dict) else None
            dst = dst.setdefault(part, {})
        if isinstance(src, dict) and leaf in src:
            dst[leaf] = src[leaf]
    res: dict[str, Any] = {"flow": _in_proto_order(out, FLOW)}
    if out.get("node_name"):
        res["node_name"] = out["node_name"]
    if out.get("time"):
        res["time"] = out["time"]
    return res


def _in_proto_order(d: dict[str, Any], spec: Any) -> dict[str, Any]:
    if not isinstance(spec, dict):
        return d
    keys = sorted(d, key=list(spec).index)
    return {k: _in_proto_order(d[k], spec[k]) if isinstance(d[k], dict) else d[k] for k in keys}


MASKS = [
    ["time", "verdict", "source.namespace", "source.pod_name", "destination.namespace",
     "destination.pod_name", "l4", "is_reply", "node_name"],
    ["source", "destination.labels", "l7.dns.query", "l7.dns.rcode", "Type", "uuid"],
    ["verdict", "drop_reason_desc", "IP.source", "IP.destination", "l4.TCP.flags", "l7.http"],
    ["event_type", "trace_observation_point", "egress_denied_by", "source.workloads"],
]


@pytest.mark.parametrize("paths", MASKS, ids=lambda p: p[0])
def test_fieldmask_file_equals_independent_expectation(paths: list[str], samples: Path, lab: Path,
                                                       tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    lab_lines = lab.read_bytes().splitlines()
    src.write_bytes(samples.read_bytes() + b"\n".join(lab_lines[::7]) + b"\n")
    out = tmp_path / "masked.log"
    (ex,) = build_flow_exports([{"name": "m", "filePath": str(out), "fieldMask": paths, "fileMaxSizeMb": 1024}])
    export_file(src, [ex])
    # the rows the mask starts from: observe's canonical output of the same input
    rows = observe(src).splitlines()
    got = out.read_bytes().splitlines()
    assert len(got) == len(rows) == ex.stats["exported"]
    for raw, line in zip(rows, got, strict=True):
        assert line == orjson.dumps(expected_mask(orjson.loads(raw), paths))
    assert ex.stats["bytes"] == out.stat().st_size


def test_fieldmask_cases() -> None:
    flow = {"flow": {"time": "2021-06-16T16:52:13.136834446Z", "verdict": "FORWARDED",
                     "l4": {"UDP": {"source_port": 53, "destination_port": 4000}},
                     "source": {"namespace": "kube-system", "labels": ["k8s:app=dns"]},
                     "node_name": "kind/n1", "is_reply": True},
            "node_name": "kind/n1", "time": "2021-06-16T16:52:13.136834446Z"}
    line = orjson.dumps(flow)
    # no time/node_name in the mask: the wrapper loses them too
    assert FieldMask(["verdict"]).line(line) == b'{"flow":{"verdict":"FORWARDED"}}'
    # messages on the path are present even when the flow lacks them; oneof members too
    assert orjson.loads(FieldMask("destination.namespace l4.TCP.source_port").line(line)) == {
        "flow": {"l4": {"TCP": {}}, "destination": {}}}
    # two members of one oneof: the one the flow has
    assert orjson.loads(FieldMask("l4.TCP.source_port l4.UDP.source_port").line(line)) == {
        "flow": {"l4": {"UDP": {"source_port": 53}}}}
    # Timestamp and BoolValue are messages in flow.proto
    assert orjson.loads(FieldMask("time.seconds is_reply.value").line(line)) == {
        "flow": {"time": "2021-06-16T16:52:13Z", "is_reply": True}, "time": "2021-06-16T16:52:13Z"}
    # a parent path covers its children; lost events pass unmasked
    assert FieldMask("source source.namespace").paths == ["source"]
    lost = b'{"lost_events":{"source":"PERF_EVENT_RING_BUFFER","num_events_lost":"3"},"time":"2021-01-01T00:00:00Z"}'
    assert FieldMask("verdict").line(lost) == lost
    for bad in ["", "nope", "source.labels.x", "verdict.name", "l4..TCP", "extensions.type_url", "time.x"]:
        with pytest.raises(FieldMaskError):
            FieldMask([bad])


# -- rotation -----------------------------------------------------------------------------------------


def _chunks(lines: list[bytes], rng: np.random.Generator) -> Iterator[bytes]:
    i = 0
    while i < len(lines):
        n = int(rng.integers(1, 200))
        yield b"".join(line + b"\n" for line in lines[i : i + n])
        i += n


def test_rotating_writer_keeps_every_line_once(lab: Path, tmp_path: Path) -> None:
    lines = lab.read_bytes().splitlines()[:6000]
    path = tmp_path / "w" / "events.log"
    with RotatingWriter(path, 256 * 1024, max_backups=100, compress=True) as w:
        for chunk in _chunks(lines, np.random.default_rng(1)):
            w.write(chunk)
    files = w.files()  # after close: compressions done
    backups = files[:-1]
    assert len(backups) >= 30 and all(p.name.endswith(".log.gz") for p in backups)
    assert not list(path.parent.glob("*.tmp"))
    got: list[bytes] = []
    for p in files:
        raw = gzip.decompress(p.read_bytes()) if p.suffix == ".gz" else p.read_bytes()
        assert len(raw) <= 256 * 1024 and (not raw or raw.endswith(b"\n"))
        got += raw.splitlines()
    assert got == lines  # in order, each exactly once
    assert w.stats["rotations"] == len(backups) and w.stats["errors"] == 0


def test_rotating_writer_prunes_to_max_backups(tmp_path: Path) -> None:
    path = tmp_path / "flows.json"
    lines = [b'{"n":%d,"pad":"%s"}' % (i, b"x" * (i % 50)) for i in range(20000)]
    w = RotatingWriter(path, 32 * 1024, max_backups=3)
    for chunk in _chunks(lines, np.random.default_rng(2)):
        w.write(chunk)
    w.close()
    backups = w.backups()
    assert len(backups) == 3 and all(p.name.startswith("flows-") and p.suffix == ".json" for p in backups)
    kept = [line for p in w.files() for line in p.read_bytes().splitlines()]
    assert kept == lines[len(lines) - len(kept):]  # the newest lines, once each, in order
    assert w.stats["removed"] == w.stats["rotations"] - 3
    # reopening appends to the live file and counts existing backups
    with RotatingWriter(path, 32 * 1024, max_backups=3) as w2:
        size = w2.size
        w2.write(b'{"n":"again"}\n')
    assert size > 0 and path.read_bytes().endswith(b'{"n":"again"}\n')
    # one line longer than the limit gets a file of its own
    with RotatingWriter(tmp_path / "big.log", 100, max_backups=5) as w3:
        w3.write(b"a" * 30 + b"\n" + b"b" * 300 + b"\n" + b"c" * 10 + b"\n")
    parts = [p.read_bytes() for p in w3.files()]
    assert parts == [b"a" * 30 + b"\n", b"b" * 300 + b"\n", b"c" * 10 + b"\n"]


def test_file_export_rotates_compresses_and_reads_back(lab: Path, tmp_path: Path) -> None:
    out = tmp_path / "export" / "events.log"
    (ex,) = build_flow_exports([{"name": "rot", "filePath": str(out), "fileMaxSizeMb": 1,
                                 "fileMaxBackups": 2, "fileCompress": True}])
    assert isinstance(ex, FileFlowExport)
    src = tmp_path / "part.jsonl"
    src.write_bytes(b"".join(line + b"\n" for line in lab.read_bytes().splitlines()[:4000]))
    export_file(src, [ex], block=256 * 1024)
    assert ex.writer is not None
    files = ex.writer.files()
    assert len(files) == 3 and all(p.suffix == ".gz" for p in files[:-1])
    written = [line for p in files for line in read_lines(p)]
    source = observe(src).splitlines()
    assert written == source[len(source) - len(written):]
    assert ex.writer.stats["rotations"] >= 5
    # the export directory reads back with observe (rotated files oldest first, .gz included)
    assert observe(out.parent).splitlines() == written


# -- rate limit, DNS sampling, end -------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_rate_limit_counters(lab: Path, tmp_path: Path) -> None:
    clock = FakeClock()
    ex = build_one({"name": "rl", "filePath": str(tmp_path / "rl.log"), "rateLimit": 3000, "fileMaxSizeMb": 1024,
                    "excludeFilters": [{"verdict": ["DROPPED"]}]}, clock=clock)
    dec = Decoder(ex.paths)
    d = dec.decode_block(lab.read_bytes())
    assert d.table is not None
    n = len(d.rows)
    step = 5000
    exported_per_batch = []
    for i, start in enumerate(range(0, n, step)):
        clock.t = 1000.0 + 0.5 * i  # a batch every half second
        before = ex.stats["exported"]
        idx = np.arange(start, min(start + step, n))
        ex.write(d.table.take(idx), d.rows.take(idx))
        exported_per_batch.append(ex.stats["exported"] - before)
    ex.close()
    check_sum(ex.stats)
    assert ex.stats["rate_limited"] > 0 and ex.stats["filtered"] > 0
    # the bucket starts full (one second's worth) and then refills 1500 per half second
    assert exported_per_batch[0] == 3000 and set(exported_per_batch[1:-1]) == {1500}
    lines = (tmp_path / "rl.log").read_bytes().splitlines()
    assert len(lines) == ex.stats["exported"] and not any(b'"verdict":"DROPPED"' in x for x in lines)
    # the flows kept are spread over the batch, not only its first ones
    first = [orjson.loads(d.rows[i]) for i in range(step)]
    candidates = [e["flow"]["uuid"] for e in first if e["flow"].get("verdict") != "DROPPED"]
    kept = {orjson.loads(x)["flow"]["uuid"] for x in lines[:3000]}
    positions = [i for i, u in enumerate(candidates) if u in kept]
    assert len(positions) == 3000 and positions[-1] > 0.95 * len(candidates) and positions[1] - positions[0] >= 1


def _is_dns(env: dict[str, Any]) -> bool:
    flow = env.get("flow") or {}
    if "dns" in (flow.get("l7") or {}):
        return True
    l4 = flow.get("l4") or {}
    return any((l4.get(p) or {}).get(k) == 53 for p in ("TCP", "UDP") for k in ("source_port", "destination_port"))


def test_dns_sampling_is_deterministic_and_adds_up(lab: Path, tmp_path: Path) -> None:
    cfg = [{"name": f"s{p}", "filePath": str(tmp_path / f"s{p}.log"), "dnsSampling": p, "fileMaxSizeMb": 1024}
           for p in (0.1, 0.5, 1.0)]
    cfg.append({"name": "again", "filePath": str(tmp_path / "again.log"), "dnsSampling": 0.1,
                "fieldMask": ["uuid", "l4", "l7"]})
    exports = build_flow_exports(cfg)
    export_file(lab, exports, block=512 * 1024)
    for e in exports:
        check_sum(e.stats)
    envs = [orjson.loads(line) for line in observe(lab).splitlines()]
    dns = [e for e in envs if _is_dns(e)]
    assert len(dns) > 1000
    by_name = {e.name: e for e in exports}
    assert by_name["s1.0"].stats["sampled"] == 0
    for p in (0.1, 0.5):
        st = by_name[f"s{p}"].stats
        assert st["sampled"] + st["exported"] == len(envs)
        kept_dns = len(dns) - st["sampled"]
        assert abs(kept_dns / len(dns) - p) < 0.05
    # independent check of which flows are kept: the uuid hash, recomputed here
    import pyarrow as pa

    uuids = pa.array([e["flow"]["uuid"] for e in dns])
    keep = unit_interval(hash_strings(uuids)) < 0.1
    expected = {u for u, k in zip(uuids.to_pylist(), keep, strict=True) if k}
    got = {orjson.loads(x)["flow"]["uuid"] for x in (tmp_path / "s0.1.log").read_bytes().splitlines()
           if _is_dns(orjson.loads(x))}
    assert got == expected
    # the same flows whatever else the exporter does; a flow kept at 10 % is kept at 50 %
    again = {orjson.loads(x)["flow"]["uuid"] for x in (tmp_path / "again.log").read_bytes().splitlines()
             if _is_dns(orjson.loads(x))}
    half = {orjson.loads(x)["flow"]["uuid"] for x in (tmp_path / "s0.5.log").read_bytes().splitlines()}
    assert again == got and got <= half


def test_end_in_the_past_expires_everything(samples: Path, tmp_path: Path) -> None:
    cfg = [{"name": "old", "filePath": str(tmp_path / "old.log"), "end": "2020-01-01T00:00:00Z",
            "includeFilters": [{"verdict": ["FORWARDED"]}]},
           {"name": "new", "filePath": str(tmp_path / "new.log"), "end": "2999-01-01T00:00:00+02:00"}]
    old, new = build_flow_exports(cfg)
    export_file(samples, [old, new])
    assert old.stats["exported"] == 0 and old.stats["expired"] > 0 and old.stats["filtered"] > 0
    check_sum(old.stats)
    assert new.stats["exported"] == new.stats["input"] > 0


# -- config ----------------------------------------------------------------------------------------------


def test_cilium_flowlogs_yaml_builds(tmp_path: Path, samples: Path) -> None:
    text = f"""
flowLogs:
- name: "test002"
  filePath: "{tmp_path}/test002.log"
  fieldMask: ["source.namespace", "source.pod_name", "destination.namespace", "destination.pod_name", "verdict"]
  includeFilters:
  - source_pod: ["default/"]
    event_type:
    - type: 1
  - destination_pod: ["frontend/nginx-975996d4c-7hhgt"]
  - verdict: ["DROPPED"]
  excludeFilters: []
  end: 2999-10-09T23:59:59-07:00
  fileMaxSizeMb: 0
  fileMaxBackups: 0
  fileCompress: false
"""
    exports = build_flow_exports(yaml.safe_load(text))
    (ex,) = exports
    assert isinstance(ex, FileFlowExport) and ex.writer is not None
    assert ex.writer.max_bytes == 10 << 20 and ex.writer.max_backups == 5  # Hubble's defaults for 0
    export_file(samples, exports)
    expected = observe(samples, "--allowlist",
                       '{"source_pod":["default/"],"event_type":[{"type":1}]}{"destination_pod":["frontend/nginx-975996d4c-7hhgt"]}'
                       '{"verdict":["DROPPED"]}')
    fm = FieldMask(["source.namespace", "source.pod_name", "destination.namespace", "destination.pod_name", "verdict"])
    assert (tmp_path / "test002.log").read_bytes().splitlines() == [fm.line(x) for x in expected.splitlines()]
    assert ex.stats["exported"] > 0


def test_static_exporter_string_forms(tmp_path: Path, samples: Path) -> None:
    (ex,) = build_flow_exports([{"name": "s", "filePath": str(tmp_path / "s.log"),
                                 "allowList": '{"verdict":["DROPPED","ERROR"]},{"source_pod":["kube-system/"]}',
                                 "fieldMask": "time verdict node_name"}])
    export_file(samples, [ex])
    expected = observe(samples, "--allowlist", '{"verdict":["DROPPED","ERROR"]}{"source_pod":["kube-system/"]}')
    fm = FieldMask(["time", "verdict", "node_name"])
    assert (tmp_path / "s.log").read_bytes().splitlines() == [fm.line(x) for x in expected.splitlines()]


@pytest.mark.parametrize(("entry", "message"), [
    ({"filePath": "/tmp/x.log"}, "'name' is a required property"),
    ({"name": "a"}, "'filePath' is a required property"),
    ({"name": "a", "filePath": "/tmp/x", "fileMaxSizeMB": 3}, "fileMaxSizeMB"),
    ({"name": "a", "filePath": "/tmp/x", "fieldMask": ["source.nope"]}, "'nope' is not a field of source"),
    ({"name": "a", "filePath": "/tmp/x", "includeFilters": [{"verdict": ["NOPE"]}]}, "export[0] (a)"),
    ({"name": "a", "filePath": "/tmp/x", "dnsSampling": 2}, "dnsSampling"),
    ({"name": "a", "filePath": "/tmp/x", "end": "yesterday"}, "RFC 3339"),
    ({"name": "a", "type": "elasticsearch", "filePath": "/tmp/x"}, "'url' is a required property"),
    ({"name": "a", "type": "splunk-hec", "url": "http://h:8088"}, "'token' is a required property"),
    ({"name": "a", "type": "kafka", "url": "http://h"}, "kafka"),
])
def test_bad_config_is_refused_with_a_clear_error(entry: dict[str, Any], message: str) -> None:
    with pytest.raises(ExportConfigError) as exc:
        build_flow_exports([entry])
    assert message in str(exc.value)


def test_duplicates_refused_and_schema_is_json(tmp_path: Path) -> None:
    a = {"name": "a", "filePath": str(tmp_path / "a.log")}
    with pytest.raises(ExportConfigError, match="duplicated export name"):
        build_flow_exports([a, {**a, "filePath": str(tmp_path / "b.log")}])
    with pytest.raises(ExportConfigError, match="duplicated export path"):
        build_flow_exports([a, {**a, "name": "b"}])
    assert json.loads(json.dumps(EXPORT_SCHEMA))["title"]
