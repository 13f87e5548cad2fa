"""Hubble Relay source against a real gRPC Observer server replaying real-format flows.

The server is flowtrail's relay-replay (grpcio, real sockets on 127.0.0.1); the client is
RelaySource as the monitor uses it. Data: a lab simulation with drops, and the real captured
Hubble samples in ../shared/data/hubble-samples.
"""

from __future__ import annotations

import collections
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import orjson
import pytest
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings

from flowtrail.lab.relay_server import ReplayLog, ReplayOptions, ReplayServer
from flowtrail.sources.decode import Decoder
from flowtrail.sources.proto import flow_pb2, observer_pb2, observer_pb2_grpc, stale
from flowtrail.sources.relay import (
    _WIRE,
    RelayError,
    RelayOptions,
    RelaySource,
    convert_wire,
    message_dict,
    parse_response,
    response_json,
    server_status,
)
from tests.helpers import free_port as _free_port
from tests.strategies import responses

from .conftest import REPO, SAMPLES_DIR

FLOWTRAIL = REPO / ".venv" / "bin" / "flowtrail"
EPOCH = "1970-01-01T00:00:00Z"  # since=epoch: replay the whole file, then follow
FAST = {"backoff_initial_s": 0.02, "backoff_max_s": 0.1}
SAMPLE_LINE = (SAMPLES_DIR / "hubble-otel_basic-sample-10-flows.jsonl").read_bytes().splitlines()[0] \
    if (SAMPLES_DIR / "hubble-otel_basic-sample-10-flows.jsonl").exists() else b'{"flow":{"uuid":"u"},"node_name":"n"}'


# -- fixtures ---------------------------------------------------------------------------------------


def _flowtrail(*args: str) -> list[str]:
    exe = [str(FLOWTRAIL)] if FLOWTRAIL.exists() else [sys.executable, "-m", "flowtrail.cli.main"]
    return [*exe, *args]


@pytest.fixture(scope="module")
def sim_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two minutes of lab traffic with a drop spike: ~1800 flows, uuids, DROPPED flows."""
    out = tmp_path_factory.mktemp("relay") / "sim.jsonl"
    subprocess.run(_flowtrail("simulate", "--duration", "2m", "--rate", "15", "--seed", "7", "--scenario",
                              "drop-spike", "--workers", "1", "-q", "-o", str(out)), check=True, timeout=120)
    return out


@pytest.fixture(scope="module")
def sim_log(sim_file: Path) -> ReplayLog:
    return ReplayLog(sim_file)


@pytest.fixture(scope="module")
def small_log() -> ReplayLog:
    path = SAMPLES_DIR / "hubble-otel_basic-sample-10-flows.jsonl"
    if not path.exists():
        pytest.skip(f"{path} missing")
    return ReplayLog(path)


def _samples() -> list[Path]:
    files = sorted(SAMPLES_DIR.glob("*.jsonl"))
    if not files:
        pytest.skip(f"no Hubble samples in {SAMPLES_DIR}")
    return files


def _collect(src: RelaySource, expect: int, timeout_s: float = 20.0, grace_s: float = 0.15) -> list[bytes]:
    """Lines from ``src`` until ``expect`` arrived (plus ``grace_s`` to catch any repeats)."""
    stop = threading.Event()
    lines: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    reached: float | None = None
    watchdog = threading.Timer(timeout_s, stop.set)
    watchdog.start()
    next_line = 1
    try:
        for ch in src.chunks(stop):
            assert ch.source == src.name and ch.first_line == next_line and ch.data.endswith(b"\n")
            part = ch.data.splitlines()
            assert ch.lines == len(part)
            next_line += len(part)
            lines += part
            if len(lines) >= expect and reached is None:
                reached = time.monotonic()
                threading.Timer(grace_s, stop.set).start()
            if time.monotonic() > deadline:
                stop.set()
    finally:
        watchdog.cancel()
        stop.set()
    return lines


def _objs(lines: list[bytes]) -> list[Any]:
    return [orjson.loads(x) for x in lines]


def _uuids(lines: list[bytes]) -> collections.Counter[str]:
    return collections.Counter(o["flow"]["uuid"] for o in _objs(lines) if "flow" in o)


# -- protojson ----------------------------------------------------------------------------------------


def test_stubs_generated_and_current() -> None:
    assert stale() == []
    assert observer_pb2.DESCRIPTOR.services_by_name["Observer"].methods_by_name["GetFlows"].full_name \
        == "observer.Observer.GetFlows"


def test_stubs_are_generated_on_first_import(tmp_path: Path) -> None:
    """A checkout without generated stubs (a hand-made `pip install -e .`) generates them on first
    import; without grpc_tools the error says what to run."""
    pkg = tmp_path / "flowtrail" / "sources" / "proto"
    pkg.mkdir(parents=True)
    for init in (tmp_path / "flowtrail", tmp_path / "flowtrail" / "sources"):
        (init / "__init__.py").write_text("")
    src = REPO / "src" / "flowtrail" / "sources" / "proto"
    for name in ("__init__.py", "flow.proto", "observer.proto"):
        shutil.copy(src / name, pkg / name)
    env = {"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"}
    no_tools = "import sys; sys.modules['grpc_tools'] = None; "
    use = "from flowtrail.sources.proto import observer_pb2; print(observer_pb2.__file__)"
    r = subprocess.run([sys.executable, "-c", no_tools + use], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode != 0 and "ProtoStubsMissing" in r.stderr and "make install" in r.stderr
    r = subprocess.run([sys.executable, "-c", use], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(pkg / "observer_pb2.py")
    assert sorted(p.name for p in pkg.glob("*_pb2*")) == [
        "flow_pb2.py", "flow_pb2.pyi", "flow_pb2_grpc.py", "observer_pb2.py", "observer_pb2.pyi", "observer_pb2_grpc.py"]


def test_protojson_round_trip_is_byte_identical(sim_log: ReplayLog) -> None:
    """Every real sample line and every simulated line, parsed to protobuf, serialized on the wire
    and written back, is the same bytes Hubble printed (field order, enums, int64 strings...)."""
    lines = list(sim_log.lines[:2000])
    for path in _samples():
        for line in path.read_bytes().splitlines():
            obj = orjson.loads(line)
            if "flow" in obj or "lost_events" in obj:
                lines.append(line)
    for line in lines:
        wire = parse_response(line).SerializeToString()
        assert response_json(observer_pb2.GetFlowsResponse.FromString(wire)) == line


def test_protojson_edge_values() -> None:
    """Enum numbers without a name (Retina's verdicts 15/16) stay numbers, 64-bit integers are
    strings, set-but-empty messages are {} and BoolValue false is present."""
    resp = observer_pb2.GetFlowsResponse(node_name="n")
    resp.flow.verdict = 16  # type: ignore[assignment]
    resp.flow.l7.latency_ns = 2**63 + 5
    resp.flow.source.SetInParent()
    resp.flow.is_reply.value = False
    resp.flow.time.FromNanoseconds(1_700_000_000_120_000_000)
    out = orjson.loads(response_json(observer_pb2.GetFlowsResponse.FromString(resp.SerializeToString())))
    assert out == {"flow": {"time": "2023-11-14T22:13:20.120Z", "verdict": 16, "source": {},
                            "l7": {"latency_ns": str(2**63 + 5)}, "is_reply": False}, "node_name": "n"}
    assert message_dict(flow_pb2.LostEvent(num_events_lost=3, source=flow_pb2.PERF_EVENT_RING_BUFFER)) == \
        {"source": "PERF_EVENT_RING_BUFFER", "num_events_lost": "3"}


# -- wire bytes -> JSON in C --------------------------------------------------------------------------

needs_wire = pytest.mark.skipif(_WIRE is None, reason="the _wirejson C extension is not built")


def _python_path(wire: bytes) -> tuple[str | None, int, str, int, bytes]:
    """What the Python path makes of a serialized response (relay.RelaySource._deliver)."""
    resp = observer_pb2.GetFlowsResponse.FromString(wire)
    kind = resp.WhichOneof("response_types")
    t_ns = (resp.time.seconds * 10**9 + resp.time.nanos if resp.HasField("time") else
            resp.flow.time.seconds * 10**9 + resp.flow.time.nanos if kind == "flow" else 0)
    return kind, t_ns, resp.flow.uuid, resp.lost_events.num_events_lost, response_json(resp)


@needs_wire
def test_wire_converter_equals_the_python_path(sim_log: ReplayLog) -> None:
    """Every real sample and simulated response, converted from its wire bytes in C: the same
    line as Hubble printed, with the same kind, time, uuid and lost count as the Python path."""
    lines = list(sim_log.lines)
    for path in _samples():
        lines += [x for x in path.read_bytes().splitlines() if b'"flow"' in x or b'"lost_events"' in x]
    for line in lines:
        wire = parse_response(line).SerializeToString()
        got = convert_wire(wire)
        assert got is not None, line
        assert got[4] == line
        assert got == _python_path(wire)


@needs_wire
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(responses())
def test_wire_converter_on_generated_responses(resp: dict[str, Any]) -> None:
    wire = parse_response(orjson.dumps(resp)).SerializeToString()
    got = convert_wire(wire)
    assert got is not None
    assert got == _python_path(wire)


@needs_wire
def test_wire_converter_edge_values() -> None:
    """Escapes as orjson writes them, non-ASCII as it is, negative int32, enum numbers without a
    name, the largest uint64, a set-but-empty message, BoolValue false, unknown fields skipped."""
    resp = observer_pb2.GetFlowsResponse(node_name="".join(map(chr, range(128))) + "é 😀 \u2028 \\ \"")
    resp.flow.verdict = 99  # type: ignore[assignment]
    resp.flow.event_type.type = -5
    resp.flow.l7.latency_ns = 2**64 - 1
    resp.flow.source.SetInParent()
    resp.flow.is_reply.value = False
    resp.flow.destination.labels.extend(["", "k8s:app=a\tb"])
    resp.flow.time.FromNanoseconds(1_700_000_000_000_001_000)
    resp.time.FromNanoseconds(4102444800 * 10**9 + 999_999_999)  # 2100-01-01
    wire = resp.SerializeToString()
    # tags are varints of (number << 3) | wire type: fields 995 (varint), 1007 (bytes) and 996
    # (fixed32) are unknown; node_name (1000) sent as a varint has the wrong wire type
    for data in (wire, wire + b"\x98\x3e\x07", wire + b"\xfa\x3e\x02hi" + b"\xa5\x3e\x01\x02\x03\x04",
                 wire + b"\xc0\x3e\x05"):
        got = convert_wire(data)
        assert got is not None and got == _python_path(data)
    obj = orjson.loads(got[4])
    assert obj["flow"]["verdict"] == 99 and obj["flow"]["event_type"] == {"type": -5}
    assert obj["flow"]["l7"] == {"latency_ns": str(2**64 - 1)} and obj["flow"]["source"] == {}
    assert obj["time"] == "2100-01-01T00:00:00.999999999Z" and obj["flow"]["time"] == "2023-11-14T22:13:20.000001Z"


@needs_wire
def test_wire_converter_leaves_the_doubtful_to_protobuf() -> None:
    """What C does not reproduce exactly answers None, and the Python path decides: an Any
    (resolved through the descriptor pool), a message field sent twice (protobuf merges them),
    a Timestamp outside years 1970-9999, invalid UTF-8 and cut-off data (protobuf refuses)."""
    a = observer_pb2.GetFlowsResponse()
    a.flow.source.namespace = "ns"
    b = observer_pb2.GetFlowsResponse()
    b.flow.source.pod_name = "pod"
    merged = a.SerializeToString() + b.SerializeToString()
    assert convert_wire(merged) is None
    assert orjson.loads(_python_path(merged)[4]) == {"flow": {"source": {"namespace": "ns", "pod_name": "pod"}}}
    for seconds in (-1, 253402300799, 253402300800):  # 1969, 9999 (its ns overflow an int64), 10000
        odd = observer_pb2.GetFlowsResponse()
        odd.time.seconds = seconds
        assert convert_wire(odd.SerializeToString()) is None
    ext = observer_pb2.GetFlowsResponse()
    ext.flow.extensions.type_url = "type.googleapis.com/google.protobuf.Struct"
    assert convert_wire(ext.SerializeToString()) is None
    bad_utf8 = b"\xc2\x3e\x01\xff"  # node_name (1000) = b"\xff"
    assert convert_wire(bad_utf8) is None
    with pytest.raises(DecodeError):
        observer_pb2.GetFlowsResponse.FromString(bad_utf8)
    good = parse_response(SAMPLE_LINE).SerializeToString()
    for cut in (1, 7, len(good) // 2):
        assert convert_wire(good[:-cut]) is None


@needs_wire
def test_wire_converter_on_damaged_messages(sim_log: ReplayLog) -> None:
    """Random damage (bytes changed, cut out, inserted, pieces of other messages): the C
    converter never crashes, never converts a message protobuf refuses, and what it converts is
    exactly the Python path's line. (Run by hand with 100k mutations for each of 5 seeds: no difference.)"""
    import random

    wires = [parse_response(x).SerializeToString() for x in sim_log.lines[:500]]
    rng = random.Random(20261201)
    converted = 0
    for _ in range(20_000):
        w = bytearray(rng.choice(wires))
        for _ in range(rng.randint(1, 3)):
            j, op = rng.randrange(len(w)), rng.randrange(5)
            if op <= 1:
                w[j] = rng.randrange(256)
            elif op == 2:
                del w[j:j + rng.randint(1, 8)]
            elif op == 3:
                w[j:j] = rng.randbytes(rng.randint(1, 4))
            else:
                w[j:j] = rng.choice(wires)[:rng.randint(1, 40)]
        got = convert_wire(bytes(w))
        if got is None:
            continue
        converted += 1
        assert got == _python_path(bytes(w))  # FromString raising here would fail the test too
    assert converted > 500  # damage inside strings and values keeps many messages valid


@needs_wire
def test_undecodable_responses_are_counted_and_skipped(small_log: ReplayLog) -> None:
    """A response protobuf cannot parse no longer breaks the stream: it is counted as an error
    and the flows after it arrive."""
    log = ReplayLog(small_log.path)
    log.payloads[3] = b"\xc2\x3e\x01\xff"
    with ReplayServer(log) as srv:
        src = RelaySource(RelayOptions(address=srv.address, since=EPOCH, **FAST))
        got = _collect(src, len(log) - 1)
    assert got == log.lines[:3] + log.lines[4:]
    assert src.stats["errors"] == 1 and "undecodable" in src.stats["last_error"] and src.stats["reconnects"] == 0


# -- replay -------------------------------------------------------------------------------------------


def test_replay_delivers_every_flow_once_as_hubble_json(sim_log: ReplayLog) -> None:
    with ReplayServer(sim_log) as srv:
        src = RelaySource(RelayOptions(address=srv.address, since=EPOCH, batch_max_lines=512, **FAST))
        got = _collect(src, len(sim_log))
    assert got == sim_log.lines  # byte for byte, in order
    assert _objs(got) == _objs(sim_log.lines)
    dec = Decoder().decode_lines(got, src.name)
    assert not dec.errors and dec.stats.flows == sim_log.flows
    assert src.stats["flows"] == sim_log.flows and src.stats["duplicates_dropped"] == 0
    assert src.stats["node_status"] == 1  # the relay's NODE_CONNECTED: counted, not a line
    assert src.stats["last_flow_time_ns"] == int(sim_log.times.max())
    assert srv.stats.requests[0]["follow"] is True and srv.stats.requests[0]["since"] == EPOCH


def test_real_samples_replay_unchanged(tmp_path: Path) -> None:
    """All captured samples in one file (agent/debug events are not GetFlows responses: skipped)."""
    lines = [x for path in _samples() for x in path.read_bytes().splitlines() if x.strip()]
    path = tmp_path / "samples.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    want = [x for x in lines if "flow" in orjson.loads(x) or "lost_events" in orjson.loads(x)]
    replay = ReplayLog(path)
    assert replay.skipped == len(lines) - len(want) and not replay.errors
    with ReplayServer(replay) as srv:
        got = _collect(RelaySource(RelayOptions(address=srv.address, since=EPOCH, **FAST)), len(want))
    assert _objs(got) == _objs(want)
    assert got == want


@pytest.mark.parametrize("overlap_s", [0.0, 1.0])
def test_cut_streams_lose_and_repeat_nothing(sim_log: ReplayLog, overlap_s: float) -> None:
    """The server aborts every stream after 400 responses; the source resumes from the last flow
    time (minus the overlap) and drops the repeats: the uuid multiset is the file's."""
    with ReplayServer(sim_log, opts=ReplayOptions(cut_after=400, cut_every=True)) as srv:
        src = RelaySource(RelayOptions(address=srv.address, since=EPOCH, resume_overlap_s=overlap_s, **FAST))
        got = _collect(src, len(sim_log), timeout_s=30)
    assert srv.stats.cuts >= len(sim_log) // 400
    assert src.stats["reconnects"] >= srv.stats.cuts
    assert _uuids(got) == _uuids(sim_log.lines)
    assert got == sim_log.lines
    assert src.stats["duplicates_dropped"] > 0  # since is inclusive: resumed streams repeat
    resumed = [r["since"] for r in srv.stats.requests[1:]]
    assert resumed == sorted(resumed) and all(s > EPOCH for s in resumed)


def test_cut_without_uuids_dedups_by_content(tmp_path: Path) -> None:
    """Real 2021 captures have no uuid: repeats are recognised by the whole line, as a multiset,
    so identical flows (one real sample holds the same policy-verdict line twice) stay distinct."""
    path = SAMPLES_DIR / "hubble-otel_basic-sample-icmpv4-flows.jsonl"
    if not path.exists():
        pytest.skip(f"{path} missing")
    doubled = tmp_path / "doubled.jsonl"
    doubled.write_bytes(b"".join(line + b"\n" + line + b"\n" for line in path.read_bytes().splitlines()))
    replay = ReplayLog(doubled)
    assert len(replay) == 36
    with ReplayServer(replay, opts=ReplayOptions(cut_after=7, cut_every=True)) as srv:
        src = RelaySource(RelayOptions(address=srv.address, since=EPOCH, resume_overlap_s=0.5, **FAST))
        got = _collect(src, len(replay))
    assert srv.stats.cuts >= 4 and src.stats["duplicates_dropped"] > 0
    assert got == replay.lines


def test_server_side_filters_equal_observe(sim_file: Path, sim_log: ReplayLog) -> None:
    # both observe runs start now and work while the replays run
    observe = [subprocess.Popen(_flowtrail("observe", "--input-file", str(sim_file), *flags, "--all", "-o", "json"),
                                stdout=subprocess.PIPE)
               for flags in (["--verdict", "DROPPED"], ["--not", "--namespace", "kube-system", "--protocol", "tcp"])]
    outs = [p.communicate(timeout=60)[0].splitlines() for p in observe]
    want = outs[0]
    assert len(want) > 50
    with ReplayServer(sim_log) as srv:
        got = _collect(RelaySource(RelayOptions(address=srv.address, since=EPOCH, allow=[{"verdict": ["DROPPED"]}],
                                                **FAST)), len(want))
        assert srv.stats.requests[0]["whitelist"] == [{"verdict": ["DROPPED"]}]
    assert _objs(got) == _objs(want)

    want = outs[1]
    deny = [{"source_pod": ["kube-system/"]}, {"destination_pod": ["kube-system/"]}]
    with ReplayServer(sim_log) as srv:
        got = _collect(RelaySource(RelayOptions(address=srv.address, since=EPOCH, allow=[{"protocol": ["tcp"]}],
                                                deny=deny, **FAST)), len(want))
    assert 0 < len(want) < sim_log.flows
    assert _objs(got) == _objs(want)


def test_lost_events_pass_through_and_are_counted(tmp_path: Path, sim_log: ReplayLog) -> None:
    part = tmp_path / "part.jsonl"
    part.write_bytes(b"\n".join(sim_log.lines[:900]) + b"\n")
    replay = ReplayLog(part, lost_every=200, lost_num=7)
    n_lost = replay.flows // 200
    # cut too: a resumed stream repeats lost events, which must not be counted twice
    with ReplayServer(replay, opts=ReplayOptions(cut_after=350, cut_every=True)) as srv:
        src = RelaySource(RelayOptions(address=srv.address, since=EPOCH, **FAST))
        got = _collect(src, len(replay), timeout_s=30)
    assert srv.stats.cuts >= 2
    assert got == replay.lines
    lost = [o for o in _objs(got) if "lost_events" in o]
    assert len(lost) == n_lost
    assert lost[0]["lost_events"] == {"source": "HUBBLE_RING_BUFFER", "num_events_lost": "7"}
    assert src.stats["lost_event_messages"] == n_lost and src.stats["lost_events"] == 7 * n_lost
    dec = Decoder().decode_lines(got, src.name)
    assert dec.stats.lost_events == n_lost and dec.stats.flows == replay.flows


def test_request_semantics_of_the_replay_server(sim_log: ReplayLog) -> None:
    """number / first / since / until as a Hubble server reads them."""
    with ReplayServer(sim_log, opts=ReplayOptions(node_status=False)) as srv, \
            grpc.insecure_channel(srv.address) as ch:
        stub = observer_pb2_grpc.ObserverStub(ch)

        def get(**kw: Any) -> list[bytes]:
            return [response_json(r) for r in stub.GetFlows(observer_pb2.GetFlowsRequest(**kw), timeout=20)]

        assert get(number=10) == sim_log.lines[-10:]
        assert get(number=10, first=True) == sim_log.lines[:10]
        t = sim_log.times
        lo, hi = int(t[100]), int(t[200])
        req = observer_pb2.GetFlowsRequest()
        req.since.FromNanoseconds(lo)
        req.until.FromNanoseconds(hi)
        window = [r for r in stub.GetFlows(req, timeout=20)]
        assert [response_json(r) for r in window] == [x for x, ts in zip(sim_log.lines, t, strict=True) if lo <= ts <= hi]
        status = server_status(srv.address)
        assert status["num_flows"] == str(sim_log.flows) and status["version"] == "flowtrail-relay-replay"
        with pytest.raises(grpc.RpcError) as err:
            get(whitelist=[flow_pb2.FlowFilter(protocol=["bogus"])])
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_follow_streams_lines_appended_later(tmp_path: Path, sim_log: ReplayLog) -> None:
    path = tmp_path / "growing.jsonl"
    path.write_bytes(b"\n".join(sim_log.lines[:100]) + b"\n")
    replay = ReplayLog(path)
    with ReplayServer(replay, opts=ReplayOptions(tail=True, tail_interval_s=0.05)) as srv:
        src = RelaySource(RelayOptions(address=srv.address, since=EPOCH, **FAST))

        def grow() -> None:
            time.sleep(0.5)
            with path.open("ab") as fh:
                fh.write(b"\n".join(sim_log.lines[100:300]) + b"\n")

        threading.Thread(target=grow, daemon=True).start()
        got = _collect(src, 300)
    assert got == sim_log.lines[:300]


def test_reconnects_with_backoff_when_the_relay_comes_up_late(small_log: ReplayLog) -> None:
    port = _free_port()
    src = RelaySource(RelayOptions(address=f"127.0.0.1:{port}", since=EPOCH, backoff_initial_s=0.05,
                                   backoff_max_s=0.2))
    holder: dict[str, ReplayServer] = {}

    def late_start() -> None:
        time.sleep(1.0)
        holder["srv"] = ReplayServer(small_log, f"127.0.0.1:{port}").start()

    threading.Thread(target=late_start, daemon=True).start()
    try:
        got = _collect(src, len(small_log))
    finally:
        time.sleep(0.1)
        if "srv" in holder:
            holder["srv"].stop()
    assert got == small_log.lines
    assert src.stats["errors"] >= 2 and src.stats["reconnects"] >= 2  # ~1 s of 0.05..0.2 s backoffs
    assert "UNAVAILABLE" in src.stats["last_error"]


# -- TLS ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl CLI is not installed")
    d = tmp_path_factory.mktemp("pki")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], cwd=d, check=True, capture_output=True, timeout=30)

    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-subj", "/CN=flowtrail test CA", "-days", "2",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    for name, san, usage in [("server", "DNS:relay.test,DNS:localhost,IP:127.0.0.1", "serverAuth"),
                             ("client", "DNS:monitor.test", "clientAuth")]:
        run("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}")
        (d / f"{name}.ext").write_text(f"subjectAltName={san}\nextendedKeyUsage={usage}\n")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext")
    return {k: str(d / k) for k in ("ca.crt", "server.crt", "server.key", "client.crt", "client.key")}


def test_tls_verifies_the_server(certs: dict[str, str], small_log: ReplayLog) -> None:
    opts = ReplayOptions(tls_cert=certs["server.crt"], tls_key=certs["server.key"])
    with ReplayServer(small_log, opts=opts) as srv:
        ok = RelaySource(RelayOptions(address=srv.address, since=EPOCH, tls=True, tls_ca_cert_files=[certs["ca.crt"]],
                                      tls_server_name="relay.test", **FAST))
        assert _collect(ok, 10) == small_log.lines
        insecure = RelaySource(RelayOptions(address=srv.address, since=EPOCH, tls=True, tls_allow_insecure=True,
                                            **FAST))
        assert _collect(insecure, 10) == small_log.lines
        # trusted roots of the system do not include the test CA; plaintext does not speak TLS
        for bad in (RelayOptions(address=srv.address, since=EPOCH, tls=True, **FAST),
                    RelayOptions(address=srv.address, since=EPOCH, **FAST)):
            src = RelaySource(bad)
            assert _collect(src, 1, timeout_s=0.8) == []
            assert src.stats["errors"] >= 1 and src.stats["flows"] == 0


def test_mtls_refuses_a_client_without_certificate(certs: dict[str, str], small_log: ReplayLog) -> None:
    opts = ReplayOptions(tls_cert=certs["server.crt"], tls_key=certs["server.key"], tls_client_ca=certs["ca.crt"])
    with ReplayServer(small_log, "localhost:0", opts) as srv:
        tls = {"tls": True, "tls_ca_cert_files": [certs["ca.crt"]]}
        ok = RelaySource(RelayOptions(address=srv.address, since=EPOCH, tls_client_cert_file=certs["client.crt"],
                                      tls_client_key_file=certs["client.key"], **tls, **FAST))
        assert _collect(ok, 10) == small_log.lines
        refused = RelaySource(RelayOptions(address=srv.address, since=EPOCH, **tls, **FAST))
        assert _collect(refused, 1, timeout_s=0.8) == []
        assert refused.stats["errors"] >= 1 and "UNAVAILABLE" in refused.stats["last_error"]
        assert srv.stats.streams == 1  # the refused client never got a stream
    with pytest.raises(RelayError, match="both a client certificate and its key"):
        list(RelaySource(RelayOptions(address="127.0.0.1:1", tls=True,
                                      tls_client_cert_file=certs["client.crt"])).chunks(threading.Event()))


# -- options and the command ----------------------------------------------------------------------------


def test_bad_options_are_clear_errors(sim_log: ReplayLog) -> None:
    with pytest.raises(RelayError, match="since"):
        RelaySource(RelayOptions(address="127.0.0.1:1", since="yesterday"))
    with pytest.raises(RelayError, match=r"allow\[0\]: not a Hubble FlowFilter"):
        RelaySource(RelayOptions(address="127.0.0.1:1", allow=[{"verdictz": ["DROPPED"]}]))
    with pytest.raises(RelayError, match="TLS CA certificate /nonexistent"):
        RelaySource(RelayOptions(address="127.0.0.1:1", tls=True, tls_ca_cert_files=["/nonexistent"]))
    # the relay rejects a filter: retrying cannot help, so chunks() raises
    with ReplayServer(sim_log) as srv:
        src = RelaySource(RelayOptions(address=srv.address, allow=[{"protocol": ["bogus"]}], **FAST))
        with pytest.raises(RelayError, match="INVALID_ARGUMENT"):
            list(src.chunks(threading.Event()))


def test_relay_replay_command(tmp_path: Path, sim_log: ReplayLog) -> None:
    part = tmp_path / "part.jsonl"
    part.write_bytes(b"\n".join(sim_log.lines[:600]) + b"\n")
    proc = subprocess.Popen([sys.executable, "-c", "from flowtrail.cli.relay import relay_replay_cmd; relay_replay_cmd()",
                             "--input-file", str(part), "--listen", "127.0.0.1:0", "--cut-after", "250"],
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        first = proc.stderr.readline()
        m = re.search(r"on (127\.0\.0\.1:\d+) \(plaintext\)", first)
        assert m, first
        src = RelaySource(RelayOptions(address=m.group(1), since=EPOCH, **FAST))
        got = _collect(src, 600, timeout_s=30)
        assert got == sim_log.lines[:600] and src.stats["reconnects"] == 1  # cut once
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0 and "1 cuts" in err
