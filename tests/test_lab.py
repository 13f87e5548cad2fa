"""The lab simulator: real Hubble shapes, lossless round trip, ground truth, determinism."""

from __future__ import annotations

import gzip
import hashlib
import itertools
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from flowtrail.lab.cluster import ClusterError, load_cluster
from flowtrail.lab.scenarios import SCENARIOS, parse_scenario
from flowtrail.lab.simulate import NS, Options, simulate

from .conftest import REPO, SHARED

sys.path.insert(0, str(REPO / "bench"))
import check_genflows  # bench/ is not a package

CATEGORIES = {"scan", "policy-gap", "external-egress", "dns-c2", "kube-api", "namespace-breach", "drop-spike",
              "threat-intel", "anomaly"}
ALL = [f"{name}" for name in SCENARIOS]


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[dict]]:
    d = tmp_path_factory.mktemp("lab")
    out, truth = d / "flows.jsonl", d / "truth.jsonl"
    stats = simulate(Options(scenarios=ALL, duration_ns=120 * NS, seed=7, rate=120, output=str(out),
                             truth=str(truth)))
    assert stats.flows > 5000
    return out, truth, [json.loads(x) for x in truth.read_text().splitlines()]


def flowtrail(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "flowtrail.cli.main", *args], capture_output=True, check=False)


def test_decoder_reads_every_line_and_json_round_trip_is_lossless(sim: tuple[Path, Path, list[dict]]) -> None:
    out, _, _ = sim
    res = flowtrail("observe", "--input-file", str(out), "--all", "-o", "json", "--strict")
    assert res.returncode == 0, res.stderr.decode()[-2000:]
    assert b"skipped" not in res.stderr and b"warning" not in res.stderr.lower()
    assert res.stdout == out.read_bytes()


def test_shapes_follow_flow_proto_and_real_samples(sim: tuple[Path, Path, list[dict]]) -> None:
    out, _, _ = sim
    text = (SHARED / "docs" / "hubble-reference.md").read_text()
    messages, enums = check_genflows.parse_reference(text)
    allowed = check_genflows.proto_paths(messages) | check_genflows.sample_paths()
    checker = check_genflows.Checker(messages, enums)
    seen: set[str] = set()
    for i, line in enumerate(out.read_text().splitlines(), 1):
        obj = json.loads(line)
        seen |= check_genflows.key_paths(obj)
        checker.check_message(obj, "GetFlowsResponse", "", i)
    assert not checker.errors, dict(checker.errors)
    assert seen <= allowed, sorted(seen - allowed)
    # the shapes a detector relies on are all present
    for path in ("flow.l7.dns.rcode", "flow.l7.http.code", "flow.destination_names", "flow.drop_reason_desc",
                 "flow.is_reply", "flow.trace_observation_point", "flow.l4.TCP.flags.SYN",
                 "flow.ingress_allowed_by", "flow.destination_service.name", "flow.source.workloads"):
        assert path in seen, path


def test_flows_are_sorted_and_realistic(sim: tuple[Path, Path, list[dict]]) -> None:
    out, _, _ = sim
    flows = [json.loads(x)["flow"] for x in out.read_text().splitlines()]
    times = [f["time"] for f in flows]
    assert len({f["uuid"] for f in flows}) == len(flows)
    from flowtrail.model.timeutil import parse_rfc3339_ns
    ns = [parse_rfc3339_ns(t) for t in times]
    assert all(a is not None and b is not None and a <= b for a, b in itertools.pairwise(ns))
    points = {f.get("trace_observation_point") for f in flows}
    assert {"TO_STACK", "TO_ENDPOINT", "TO_PROXY"} <= points
    assert any(f.get("is_reply") for f in flows) and any(f.get("is_reply") is False for f in flows)
    drops = [f for f in flows if f["verdict"] == "DROPPED"]
    assert drops and all(f.get("drop_reason_desc") for f in drops)
    nx = [f for f in flows if f.get("l7", {}).get("dns", {}).get("rcode") == 3]
    assert nx, "search-path NXDOMAIN noise"
    world = [f for f in flows if "reserved:world" in f["destination"].get("labels", []) and "destination_names" in f]
    assert world
    api = [f for f in flows if "reserved:kube-apiserver" in f["destination"].get("labels", [])]
    assert api and all(f["destination_service"] == {"name": "kubernetes", "namespace": "default"}
                       for f in api if "destination_service" in f)
    # TCP flag progression of one connection: SYN, SYN-ACK, ACK ... FIN
    syn = next(f for f in flows if f["l4"].get("TCP", {}).get("flags") == {"SYN": True}
               and f["verdict"] == "FORWARDED" and f.get("trace_observation_point") == "TO_STACK")
    sport = syn["l4"]["TCP"]["source_port"]
    conn = [f for f in flows if "TCP" in f["l4"] and sport in (f["l4"]["TCP"]["source_port"],
                                                               f["l4"]["TCP"]["destination_port"])
            and f["node_name"] == syn["node_name"] and f["Type"] == "L3_L4"]
    flags = [tuple(sorted(f["l4"]["TCP"]["flags"])) for f in conn]
    assert flags[0] == ("SYN",) and ("ACK", "SYN") in flags


def test_every_scenario_has_ground_truth_in_the_output(sim: tuple[Path, Path, list[dict]]) -> None:
    out, _, truth = sim
    uuids = {json.loads(x)["flow"]["uuid"] for x in out.read_text().splitlines()}
    assert {t["scenario"] for t in truth} == set(SCENARIOS)
    for t in truth:
        assert t["category"] in CATEGORIES
        assert t["flows"] == len(t["uuids"]) > 0, t["scenario"]
        assert set(t["uuids"]) <= uuids, t["scenario"]
        assert t["start"] <= t["end"]
        assert "/" in t["actor"] or t["category"] == "drop-spike"


def test_scenario_flows_look_like_the_attack(sim: tuple[Path, Path, list[dict]]) -> None:
    out, _, truth = sim
    by_uuid = {}
    for line in out.read_text().splitlines():
        f = json.loads(line)["flow"]
        by_uuid[f["uuid"]] = f
    t = {x["scenario"]: x for x in truth}
    # every truth flow is one of the actor's (or, for drop-spike, into the namespace)
    for sc in truth:
        actor = sc["actor"]
        for u in sc["uuids"]:
            f = by_uuid[u]
            keys = {f"{ep.get('namespace')}/{ep.get('pod_name')}" for ep in (f["source"], f["destination"])}
            nss = {ep.get("namespace") for ep in (f["source"], f["destination"])}
            assert actor in keys or actor in nss, (sc["scenario"], u)
    scan = [by_uuid[u] for u in t["port-scan"]["uuids"]]
    assert sum(f["verdict"] == "DROPPED" for f in scan) / len(scan) > 0.8
    assert len({f["l4"]["TCP"]["destination_port"] for f in scan if f["verdict"] == "DROPPED"}) >= 15
    c2 = [by_uuid[u] for u in t["dns-c2"]["uuids"]]
    queries = [f["l7"]["dns"]["query"] for f in c2 if "l7" in f]
    assert any(q.endswith(".top.") or q.endswith(".xyz.") for q in queries)
    assert any(f["l7"]["dns"].get("qtypes") == ["TXT"] for f in c2 if "l7" in f)
    assert any(max(len(label) for label in q.split(".")) > 50 for q in queries)
    assert any(f.get("destination_names") == ["cdn-update-check.top"] for f in c2)
    api = [by_uuid[u] for u in t["kube-api"]["uuids"]]
    assert all(f["source"].get("namespace") == "ml-training" or f["destination"].get("namespace") == "ml-training"
               for f in api)
    exfil = [by_uuid[u] for u in t["exfiltration"]["uuids"]]
    assert any(f["IP"]["destination"] == "185.220.101.47" for f in exfil)


def test_deterministic_per_seed(tmp_path: Path) -> None:
    def run(seed: int, name: str) -> str:
        p = tmp_path / name
        simulate(Options(scenarios=["port-scan", "dns-c2"], duration_ns=30 * NS, seed=seed, rate=100, output=str(p)))
        return hashlib.sha256(p.read_bytes()).hexdigest()

    assert run(3, "a") == run(3, "b")
    assert run(3, "c") != run(4, "d")


def test_rate_and_duration_are_honoured(tmp_path: Path) -> None:
    p = tmp_path / "f.jsonl"
    stats = simulate(Options(duration_ns=60 * NS, seed=2, rate=200, output=str(p)))
    assert 200 * 60 * 0.6 < stats.flows < 200 * 60 * 1.4
    first = json.loads(p.open().readline())["time"]
    assert first.startswith("2026-11-26T08:00:0")


def test_bad_cluster_files_name_the_place(tmp_path: Path) -> None:
    bad = tmp_path / "c.yaml"
    bad.write_text("cluster: x\nnamespaces: {a: {}}\nworkloads: [{namespace: a, name: w}]\ntraffic: []\n")
    with pytest.raises(ClusterError, match=r"c.yaml: workloads/0: 'labels' is a required property"):
        load_cluster(bad, 1)
    bad.write_text("cluster: x\n  bad: [\n")
    with pytest.raises(ClusterError, match=r"c.yaml:\d+: invalid YAML"):
        load_cluster(bad, 1)
    with pytest.raises(ClusterError, match="unknown scenario"):
        parse_scenario("nope")
    with pytest.raises(ClusterError, match="bad parameter"):
        parse_scenario("port-scan:speed=3")


def test_cli_writes_truth_and_gzip(tmp_path: Path) -> None:
    out, truth = tmp_path / "f.jsonl.gz", tmp_path / "t.jsonl"
    res = flowtrail("simulate", "--duration", "20s", "--rate", "100", "-o", str(out), "--truth", str(truth),
                    "--scenario", "kube-api:connections=3,at=0.1")
    assert res.returncode == 0, res.stderr.decode()
    import gzip
    lines = gzip.decompress(out.read_bytes()).splitlines()
    assert len(lines) > 500
    rec = json.loads(truth.read_text())
    assert rec["scenario"] == "kube-api" and rec["params"]["connections"] == "3"


def test_output_does_not_depend_on_worker_processes_or_compression(tmp_path: Path) -> None:
    # several segments (20k flows each), scenario sessions crossing segment boundaries, and
    # worker processes handing segments over through spool files
    def run(name: str, workers: int) -> tuple[bytes, bytes]:
        out, truth = tmp_path / name, tmp_path / f"{name}.truth"
        simulate(Options(scenarios=["port-scan", "dns-c2", "exfiltration"], duration_ns=200 * NS, seed=11, rate=300,
                         output=str(out), truth=str(truth), workers=workers))
        data = out.read_bytes()
        return (gzip.decompress(data) if name.endswith(".gz") else data), truth.read_bytes()

    one = run("one.jsonl", 1)
    assert one[0].count(b"\n") > 50_000
    assert run("two.jsonl", 2) == one
    assert run("three.jsonl.gz", 3) == one


def test_vectorized_timestamps_are_protojson_text() -> None:
    from flowtrail.lab.simulate import timestamps
    from flowtrail.model.timeutil import protojson_timestamp
    base = 1_795_680_000 * NS
    times = [base, base + 5_000_000, base + 123_000, base + 7, base + NS - 1, 946_684_799 * NS + 999_999_999,
             -5 * NS + 7, 200 * 365 * 86_400 * NS]
    rng = random.Random(3)
    times += [rng.randrange(0, 4_000_000_000 * NS) for _ in range(2000)]
    texts = timestamps(times)
    assert texts == [protojson_timestamp(t // NS, t % NS) for t in times]
    # protojson keeps 0, 3, 6 or 9 digits (Go's RFC3339Nano would trim every trailing zero)
    assert {len(t) for t in texts} <= {20, 24, 27, 30}
    assert texts[:4] == ["2026-11-26T08:00:00Z", "2026-11-26T08:00:00.005Z", "2026-11-26T08:00:00.000123Z",
                         "2026-11-26T08:00:00.000000007Z"]


def test_c_line_writer_formats_protojson_timestamps() -> None:
    import numpy as np

    from flowtrail.lab import simulate as sim
    from flowtrail.model.timeutil import protojson_timestamp
    if sim._crender is None:
        pytest.skip("the C line writer is not built here")
    rng = random.Random(5)
    base = 1_795_680_000 * NS
    lo, hi = -(2**63), 2**63 - 1  # int64 nanoseconds: 1677-09-21 to 2262-04-11
    times = [lo, lo + 1, -5 * NS + 7, -1, 0, 1, 951_782_400 * NS - 1, 951_782_400 * NS, base + 5_000_000,
             base + 123_000, base + NS - 1, 4_107_542_400 * NS, hi - 1, hi]
    times += [rng.randrange(lo, hi) for _ in range(3000)]
    times += [rng.randrange(0, 4_000_000_000) * NS + rng.choice((0, 1_000_000, 1000, 1)) * rng.randrange(1, 999)
              for _ in range(3000)]
    times.sort()
    n = len(times)
    uuids = np.frombuffer(b"x" * 36 * n, dtype=np.uint8).reshape(n, 36)
    blob, offsets, spill = sim._crender.lines(["B"] * n, np.arange(n, dtype=np.int64), np.array(times, dtype=np.int64),
                                              np.zeros(n, dtype=np.int64), uuids, [b"|"], b"<", b">", n - 5)
    assert blob is not None
    lines = blob.decode().splitlines() + [s.rstrip("\n") for s in spill]
    expect = [f'<{ts}","uuid":"{"x" * 36}>B|{ts}"}}' for ts in
              (protojson_timestamp(t // NS, t % NS) for t in times)]
    assert lines == expect
    assert np.frombuffer(offsets, dtype=np.int64).tolist()[-1] == len(blob)


def test_python_line_writer_gives_the_same_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the fallback for machines without a C compiler
    from flowtrail.lab import simulate as sim
    opts = {"scenarios": ["port-scan", "dns-c2"], "duration_ns": 90 * NS, "seed": 4, "rate": 400, "workers": 1}
    simulate(Options(output=str(tmp_path / "a.jsonl"), **opts))  # type: ignore[arg-type]
    monkeypatch.setattr(sim, "_crender", None)
    simulate(Options(output=str(tmp_path / "b.jsonl"), **opts))  # type: ignore[arg-type]
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()


def test_segments_too_big_for_a_shared_buffer_go_through_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from flowtrail.lab import simulate as sim
    opts = {"scenarios": ["exfiltration"], "duration_ns": 120 * NS, "seed": 9, "rate": 400}
    simulate(Options(output=str(tmp_path / "one.jsonl"), workers=1, **opts))  # type: ignore[arg-type]
    # segments of 50 s (20k flows, ~36 MB) go to files, the last one of 20 s fits: both hand-overs
    monkeypatch.setattr(sim, "SLOT_BYTES", 20 << 20)
    simulate(Options(output=str(tmp_path / "two.jsonl"), workers=2, **opts))  # type: ignore[arg-type]
    assert (tmp_path / "two.jsonl").read_bytes() == (tmp_path / "one.jsonl").read_bytes()


def test_stdout_pipe_gets_the_file_output(tmp_path: Path) -> None:
    args = ["simulate", "--duration", "60s", "--rate", "500", "--seed", "3", "-q"]
    assert flowtrail(*args, "-o", str(tmp_path / "f.jsonl")).returncode == 0
    res = flowtrail(*args, "-o", "-")  # stdout is a pipe here
    assert res.returncode == 0, res.stderr.decode()
    assert res.stdout == (tmp_path / "f.jsonl").read_bytes() and res.stdout.count(b"\n") > 20_000


def test_replacing_an_earlier_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from flowtrail.lab import simulate as sim
    monkeypatch.setattr(sim, "RELEASE_MIN_BYTES", 0)  # every earlier output is released on a thread
    opts = {"duration_ns": 20 * NS, "seed": 2, "rate": 200}
    ref = tmp_path / "ref.jsonl"
    simulate(Options(output=str(ref), **opts))  # type: ignore[arg-type]
    out = tmp_path / "out.jsonl"
    out.write_bytes(b"old\n" * 100_000)
    out.chmod(0o640)
    simulate(Options(output=str(out), **opts))  # type: ignore[arg-type]
    assert out.read_bytes() == ref.read_bytes() and (out.stat().st_mode & 0o777) == 0o640
    # a symlink stays a link, its target is rewritten; a file with two names is rewritten in place
    target, link = tmp_path / "target.jsonl", tmp_path / "link.jsonl"
    target.write_bytes(b"old\n" * 1000)
    link.symlink_to(target)
    simulate(Options(output=str(link), **opts))  # type: ignore[arg-type]
    assert link.is_symlink() and target.read_bytes() == ref.read_bytes()
    other = tmp_path / "other-name.jsonl"
    os.link(target, other)
    target.write_bytes(b"old\n")
    simulate(Options(output=str(target), **opts))  # type: ignore[arg-type]
    assert other.read_bytes() == ref.read_bytes()


def test_bundled_cluster_matches_the_schema() -> None:
    # the bundled demo cluster is not schema-checked at run time
    from flowtrail.lab.cluster import check_cluster_spec, load_cluster_spec
    spec, source = load_cluster_spec(None)
    check_cluster_spec(spec, source)


def test_sim_random_draws_like_random_random() -> None:
    from flowtrail.lab.rng import SimRandom
    a, b = random.Random("seed:7"), SimRandom("seed:7")
    ranges = [(0, 1), (1, 31), (1, 301), (300_000, 25_000_000), (5_000, 200_000), (-7, 9), (0, 2**70), (1000, 999_999)]
    for _ in range(2000):
        for lo, hi in ranges:
            assert a.randrange(lo, hi) == b.randrange(lo, hi)
        assert a.randint(1, 4) == b.randint(1, 4)
        assert a.choice("abcdef") == b.choice("abcdef") and a.random() == b.random()
        assert a.randrange(10) == b.randrange(10) and a.randrange(0, 100, 7) == b.randrange(0, 100, 7)
    with pytest.raises(ValueError):
        b.randrange(5, 5)


def test_plain_strings_are_their_own_json() -> None:
    from flowtrail.lab.flows import _plain, jstr
    rng = random.Random(1)
    alphabet = ['"', "\\", "\n", "\x00", "\x1f", "\x7f", "é", "\u2028", "/", "a", "{", "%", " ", "\ud7ff"]
    for _ in range(5000):
        s = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 6)))
        if _plain(s):
            assert jstr(s) == f'"{s}"', repr(s)
    assert _plain("http://api.app:8080/v1/orders/42?x=%20") and not _plain('a"b') and not _plain("a\\b")


def test_output_without_sendfile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # where the kernel's sendfile does not take the output (other systems): read and write
    import errno
    import os

    from flowtrail.lab import simulate as sim
    opts = {"scenarios": ["port-scan"], "duration_ns": 120 * NS, "seed": 5, "rate": 400}
    simulate(Options(output=str(tmp_path / "a.jsonl"), **opts))  # type: ignore[arg-type]

    def refuse(*_: object) -> int:
        raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
    monkeypatch.setattr(sim.os, "sendfile", refuse)
    simulate(Options(output=str(tmp_path / "b.jsonl"), **opts))  # type: ignore[arg-type]
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()


def test_pick_draws_from_the_pods_other_than_avoid() -> None:
    from flowtrail.lab.flows import FlowBuilder
    from flowtrail.lab.rng import SimRandom
    from flowtrail.lab.traffic import Traffic
    cluster = load_cluster(None, 1)
    traffic = Traffic(cluster, FlowBuilder(cluster, SimRandom(1)), SimRandom(1))
    traffic.rng, ref = SimRandom("pick"), SimRandom("pick")
    pods = cluster.pods[:5]
    for avoid in [None, pods[0], pods[2], pods[4], cluster.pods[7]]:
        for _ in range(300):
            choices = [p for p in pods if p is not avoid] or pods
            assert traffic.pick(pods, avoid) is choices[int(ref.random() * len(choices))]
    assert traffic.pick(pods[:1], pods[0]) is pods[0]
