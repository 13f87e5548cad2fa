"""`flowtrail run`, end to end: a held-out attack capture is followed as it grows, /metrics is
scraped, the alert file read, and the process stopped with SIGTERM. Streaming must equal batch:
the alerts are those `flowtrail detect` finds in the same file."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pytest

from flowtrail.detect.engine import Engine
from flowtrail.detect.features import Enrichment
from flowtrail.detect.rules import load_rules
from flowtrail.monitor.config import ConfigError, load
from flowtrail.monitor.queue import ChunkQueue
from flowtrail.sources.chunk import Chunk
from flowtrail.sources.decode import Decoder
from tests.helpers import free_port as _free_port

REPO = Path(__file__).resolve().parents[1]
FT = str(REPO / ".venv" / "bin" / "flowtrail")
SCENARIOS = ["port-scan", "dns-c2", "kube-api", "exfiltration", "namespace-breach", "drop-spike"]


@pytest.fixture(scope="module")
def capture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A held-out capture: a seed and start time no rule fixture or other test uses."""
    path = tmp_path_factory.mktemp("cap") / "capture.jsonl"
    cmd = [FT, "simulate", "-q", "--duration", "4m", "--seed", "4242", "--start", "2026-11-29T13:00:00Z",
           "--rate", "400", "-o", str(path)]
    for s in SCENARIOS:
        cmd += ["--scenario", s]
    subprocess.run(cmd, check=True)
    return path


@pytest.fixture(scope="module")
def batch_alerts(capture: Path) -> list[dict[str, Any]]:
    out = subprocess.run([FT, "detect", str(capture), "-o", "json"], check=True, capture_output=True).stdout
    return [orjson.loads(x) for x in out.splitlines()]


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _wait(pred: Any, timeout: float = 30.0) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError("timed out")


def _metric(text: str, name: str) -> float:
    total = 0.0
    for ln in text.splitlines():
        if ln.startswith(name + " ") or ln.startswith(name + "{"):
            total += float(ln.rsplit(" ", 1)[1])
    return total


def test_engine_drain_in_small_batches_equals_batch(capture: Path) -> None:
    rules = load_rules()
    whole = Engine(rules, Enrichment())
    dec = Decoder(whole.paths)
    table = dec.decode_block(capture.read_bytes(), str(capture)).table
    assert table is not None
    whole.process(table)
    expected = {(a.id, a.rule) for a in whole.alerts()}
    live = Engine(load_rules(), Enrichment())
    got: list[tuple[str, str]] = []
    for off in range(0, table.num_rows, 777):
        live.process(table.slice(off, 777))
        got.extend((a.id, a.rule) for a in live.drain())
    assert len(got) == len(set(got)), "an alert was emitted twice"
    assert set(got) == expected
    assert expected


def test_run_follows_a_growing_capture_like_detect(capture: Path, batch_alerts: list[dict[str, Any]],
                                                   tmp_path: Path) -> None:
    live = tmp_path / "events.log"
    alerts = tmp_path / "alerts.jsonl"
    state = tmp_path / "state"
    port = _free_port()
    lines = capture.read_bytes().splitlines(keepends=True)
    live.write_bytes(b"".join(lines[: len(lines) // 3]))
    proc = subprocess.Popen([FT, "run", "--input-file", str(live), "--alerts-file", str(alerts),
                             "--metrics-listen", f"127.0.0.1:{port}", "--state-dir", str(state)],
                            stderr=subprocess.PIPE)
    try:
        base = f"http://127.0.0.1:{port}"
        _wait(lambda: _get(base + "/readyz")[0] == 200 if _port_open(port) else False)
        assert _get(base + "/healthz")[0] == 200
        # the rest arrives while it runs, as an exporter appends it, in a few bursts
        rest = lines[len(lines) // 3:]
        step = len(rest) // 4 + 1
        for i in range(0, len(rest), step):
            with open(live, "ab") as fh:
                fh.write(b"".join(rest[i:i + step]))
            time.sleep(0.3)
        n = len(lines)
        _wait(lambda: _metric(_get(base + "/metrics")[1].decode(), "flowtrail_flows_processed_total") >= n)
        text = _get(base + "/metrics")[1].decode()
        assert _metric(text, "hubble_flows_processed_total") == n
        assert _metric(text, "hubble_drop_total") > 0
        assert _metric(text, "flowtrail_alerts_total") == len(batch_alerts)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    got = [orjson.loads(x) for x in alerts.read_bytes().splitlines()]
    assert sorted(a["id"] for a in got) == sorted(a["id"] for a in batch_alerts)
    assert {a["category"] for a in got} >= {"scan", "dns-c2", "kube-api", "external-egress", "drop-spike"}
    # a restart resumes after the last line: nothing is read (or alerted) twice
    proc = subprocess.Popen([FT, "run", "--once", "--input-file", str(live), "--alerts-file", str(alerts),
                             "--state-dir", str(state)], stderr=subprocess.PIPE)
    assert proc.wait(60) == 0
    assert len(alerts.read_bytes().splitlines()) == len(got)


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_stdin_replay_equals_detect(capture: Path, batch_alerts: list[dict[str, Any]]) -> None:
    with open(capture, "rb") as fh:
        out = subprocess.run([FT, "run", "--input-file", "-", "--log-level", "warning"], stdin=fh,
                             capture_output=True, check=True, timeout=120).stdout
    got = [orjson.loads(x) for x in out.splitlines()]
    assert sorted(a["id"] for a in got) == sorted(a["id"] for a in batch_alerts)


def test_bad_lines_are_counted_and_never_stop_the_stream(capture: Path, tmp_path: Path) -> None:
    lines = capture.read_bytes().splitlines(keepends=True)[:2000]
    bad = [*lines[:500], b'{"flow":{"verdict":"FORWARDED"\n', b"\x00\xff garbage\n", *lines[500:]]
    src = tmp_path / "bad.jsonl"
    src.write_bytes(b"".join(bad))
    r = subprocess.run([FT, "run", "--once", "--input-file", str(src), "--log-format", "json",
                        "--alerts-file", str(tmp_path / "a.jsonl")], capture_output=True, timeout=120)
    assert r.returncode == 0
    logs = [orjson.loads(x) for x in r.stderr.splitlines()]
    warned = [x for x in logs if "bad line" in x["msg"]]
    assert len(warned) == 2 and f"{src}:501" in warned[0]["msg"] and f"{src}:502" in warned[1]["msg"]
    done = next(x for x in logs if x["msg"] == "monitor stopped")
    assert done["decode_errors"] == 2 and done["flows"] == 2000


def test_config_errors_name_file_and_line(tmp_path: Path) -> None:
    p = tmp_path / "flowtrail.yaml"
    p.write_text("sources:\n  - type: file\n    path: /x\npipeline:\n  overload: sometimes\n")
    with pytest.raises(ConfigError, match=r"flowtrail.yaml:5: pipeline/overload"):
        load(str(p))
    r = subprocess.run([FT, "run", "--config", str(p)], capture_output=True, text=True)
    assert r.returncode != 0 and "flowtrail.yaml:5" in r.stderr
    default = subprocess.run([FT, "run", "--print-default-config"], capture_output=True, text=True, check=True).stdout
    p.write_text(default)
    assert load(str(p))["pipeline"]["overload"] == "block"


def test_queue_sheds_by_policy_and_counts() -> None:
    shed: list[int] = []
    q = ChunkQueue(max_bytes=20, on_shed=lambda ch: shed.append(ch.lines))
    stop = threading.Event()
    mk = lambda n: Chunk(b"x\n" * n, "t", 1, time.monotonic_ns())  # noqa: E731
    assert q.put(mk(6), "shed", stop)
    assert not q.put(mk(6), "shed", stop)  # does not fit: shed, counted
    assert q.put(mk(4), "shed", stop)
    assert shed == [6] and q.shed_lines == 6 and q.lines == 10
    # block: the producer waits until the consumer makes room
    t = threading.Thread(target=lambda: q.put(mk(5), "block", stop))
    t.start()
    time.sleep(0.1)
    assert t.is_alive()
    got = q.get_batch(100, 0.0, 0.1)
    assert sum(c.lines for c in got) == 10
    t.join(2)
    assert not t.is_alive() and q.lines == 5


def test_lost_events_raise_one_flow_gap_alert_per_gap() -> None:
    eng = Engine(load_rules(), Enrichment())
    dec = Decoder(eng.paths)
    lost = (b'{"lost_events":{"source":"HUBBLE_RING_BUFFER","num_events_lost":"17","cpu":null},'
            b'"node_name":"kind-worker","time":"2026-11-29T13:00:%02dZ"}\n')
    t: pa.Table | None = dec.decode_block(lost % 1 + lost % 5).table
    assert t is not None
    eng.process(t)
    first = eng.drain()
    # the count is of events lost (num_events_lost), the records are in the details
    assert [a.category for a in first] == ["flow-gap"] and first[0].count == 34
    assert first[0].details["lost_records"] == 2
    later = dec.decode_block(lost.replace(b"13:00", b"13:20") % 0).table
    assert later is not None
    eng.process(later)
    assert [a.category for a in eng.drain()] == ["flow-gap"]
    assert os.environ.get("TZ") == "UTC"


@pytest.fixture(scope="module")
def small_capture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("small") / "capture.jsonl"
    subprocess.run([FT, "simulate", "-q", "--duration", "3m", "--seed", "99", "--start", "2026-11-29T15:00:00Z",
                    "--rate", "60", "--scenario", "port-scan", "--scenario", "kube-api", "--scenario", "dns-c2",
                    "-o", str(path)], check=True)
    return path


def test_run_over_a_relay_that_cuts_the_stream_equals_detect(small_capture: Path, tmp_path: Path) -> None:
    from flowtrail.lab.relay_server import ReplayOptions, ReplayServer
    expected = sorted(orjson.loads(x)["id"] for x in subprocess.run(
        [FT, "detect", str(small_capture), "-o", "json"], check=True, capture_output=True).stdout.splitlines())
    assert expected
    n = len(small_capture.read_bytes().splitlines())
    alerts = tmp_path / "alerts.jsonl"
    port = _free_port()
    with ReplayServer(small_capture, "127.0.0.1:0", ReplayOptions(cut_after=n // 4, cut_every=True)) as srv:
        # --since: the history the relay holds (without it, a follow starts at "now", like hubble observe -f)
        proc = subprocess.Popen([FT, "run", "--relay", f"127.0.0.1:{srv.port}", "--since", "2026-11-29T00:00:00Z",
                                 "--alerts-file", str(alerts),
                                 "--metrics-listen", f"127.0.0.1:{port}"], stderr=subprocess.PIPE)
        try:
            base = f"http://127.0.0.1:{port}"
            _wait(lambda: _port_open(port), 30)
            _wait(lambda: _metric(_get(base + "/metrics")[1].decode(), "flowtrail_flows_processed_total") >= n, 60)
            text = _get(base + "/metrics")[1].decode()
            assert _metric(text, "flowtrail_flows_processed_total") == n  # nothing repeated
            assert _metric(text, "flowtrail_source_reconnects_total") >= 3  # the stream was cut
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
    got = sorted(orjson.loads(x)["id"] for x in alerts.read_bytes().splitlines())
    assert got == expected


def test_run_enriches_stripped_flows_before_export_and_detection(small_capture: Path, tmp_path: Path) -> None:
    """Retina on another CNI: IPs only. The kubectl snapshot restores pods, namespaces and labels
    before the exporter writes the flows and before the rules see them."""
    from flowtrail.lab.cluster import load_cluster
    from tests.test_enrich_k8s import _strip, lab_snapshot
    original = small_capture.read_bytes().splitlines()
    stripped = tmp_path / "retina.jsonl"
    stripped.write_bytes(b"\n".join(_strip(original)) + b"\n")
    snap = tmp_path / "snapshot.json"
    snap.write_bytes(orjson.dumps(lab_snapshot(load_cluster(None, 99))))
    exported, alerts = tmp_path / "export" / "flows.log", tmp_path / "alerts.jsonl"
    cfg = tmp_path / "flowtrail.yaml"
    cfg.write_text(f"""
sources: [{{type: file, path: "{stripped}"}}]
enrich: {{kubernetes: {{snapshot: "{snap}", cluster: prod-eu1}}}}
alerts: [{{type: file, path: "{alerts}"}}]
export:
  - name: pods
    filePath: "{exported}"
    includeFilters: [{{source_pod: ["dev/"]}}]
""")
    r = subprocess.run([FT, "run", "--config", str(cfg), "--once"], capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    want = [orjson.loads(x) for x in original]
    want = [e for e in want if e.get("flow", {}).get("source", {}).get("namespace") == "dev"]
    got = [orjson.loads(x) for x in exported.read_bytes().splitlines()]
    assert len(got) == len(want) > 0
    for g, w in zip(got, want, strict=True):
        for k in ("namespace", "pod_name", "labels", "workloads"):
            assert g["flow"]["source"].get(k) == w["flow"]["source"].get(k)
    rules = {orjson.loads(x)["rule"] for x in alerts.read_bytes().splitlines()}
    assert any(r.startswith("scan.") for r in rules), rules


def _drop_node_after(lines: list[bytes], node: bytes, after: str) -> tuple[list[bytes], int]:
    """The capture with every line of `node` after flow time `after` removed (the node's agent died)."""
    out, cut = [], 0
    for ln in lines:
        env = orjson.loads(ln)
        if env.get("node_name", "").encode() == node and env.get("time", "") > after:
            cut += 1
            continue
        out.append(ln)
    return out, cut


def test_node_silence_is_a_flow_gap_in_any_batching(small_capture: Path, tmp_path: Path) -> None:
    lines = small_capture.read_bytes().splitlines()
    node = orjson.loads(lines[0])["node_name"].encode()
    kept, cut = _drop_node_after(lines, node, "2026-11-29T15:01:00")
    assert cut > 100
    data = b"\n".join(kept) + b"\n"

    def gaps(step: int) -> list[tuple[str, str, str]]:
        eng = Engine(load_rules(), Enrichment(), node_silence_ns=20 * 10**9)
        table = Decoder(eng.paths).decode_block(data).table
        assert table is not None
        out = []
        for off in range(0, table.num_rows, step):
            eng.process(table.slice(off, step))
            out += [(a.id, a.details["node"], a.details["silent_since"]) for a in eng.drain()
                    if a.rule == "flow-gap.node-silent"]
        return out

    whole = gaps(10**9)
    assert [g[1] for g in whole] == [node.decode()], whole  # the silent node, once; no other node
    assert whole[0][2].startswith("2026-11-29T15:00:5") or whole[0][2].startswith("2026-11-29T15:01:00")
    assert gaps(333) == whole
    # the live monitor raises it with its default config, taking the threshold from the config
    src = tmp_path / "cap.jsonl"
    src.write_bytes(data)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("detect:\n  node_silence: 20s\n")
    out = subprocess.run([FT, "run", "--once", "--config", str(cfg), "--input-file", str(src), "--log-level", "warning"],
                         check=True, capture_output=True, timeout=120).stdout
    got = [orjson.loads(x) for x in out.splitlines()]
    assert [a["id"] for a in got if a["rule"] == "flow-gap.node-silent"] == [whole[0][0]]


def test_relay_restart_resumes_after_what_was_processed(small_capture: Path, tmp_path: Path) -> None:
    """Stopped with SIGTERM half-way, restarted with the same --state-dir and no --since: the second
    run processes exactly the flows the first did not, though the relay replays from before them."""
    from flowtrail.lab.relay_server import ReplayOptions, ReplayServer
    lines = small_capture.read_bytes().splitlines(keepends=True)
    half = len(lines) // 2
    served = tmp_path / "served.jsonl"
    served.write_bytes(b"".join(lines[:half]))
    state = tmp_path / "state"

    def run_until(n: int, extra: list[str]) -> float:
        port = _free_port()
        proc = subprocess.Popen([FT, "run", "--relay", f"127.0.0.1:{srv.port}", "--state-dir", str(state),
                                 "--alerts-file", str(tmp_path / "alerts.jsonl"), "--metrics-listen",
                                 f"127.0.0.1:{port}", *extra], stderr=subprocess.PIPE)
        try:
            base = f"http://127.0.0.1:{port}"
            _wait(lambda: _port_open(port), 30)
            _wait(lambda: _metric(_get(base + "/metrics")[1].decode(), "flowtrail_flows_processed_total") >= n, 60)
            time.sleep(1.0)  # anything repeated would arrive now
            done = _metric(_get(base + "/metrics")[1].decode(), "flowtrail_flows_processed_total")
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
        return done

    with ReplayServer(served, "127.0.0.1:0", ReplayOptions(tail=True)) as srv:
        assert run_until(half, ["--since", "2026-11-29T00:00:00Z"]) == half
        with open(served, "ab") as fh:  # the relay goes on receiving flows while flowtrail is down
            fh.write(b"".join(lines[half:]))
        assert run_until(len(lines) - half, []) == len(lines) - half
    assert list(state.glob("relay-127.0.0.1_*.json"))


def test_documented_default_config_is_the_real_one() -> None:
    from flowtrail.monitor.config import DEFAULT_CONFIG_YAML
    assert DEFAULT_CONFIG_YAML in (REPO / "docs" / "monitor.md").read_text()


def test_overload_shed_is_counted_never_silent(capture: Path, tmp_path: Path) -> None:
    """A queue far too small for the input, policy shed: what is not processed is counted as shed,
    the sum is the input, and the log says so without a line per chunk."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text("pipeline:\n  queue_max_mb: 0.5\n  overload: shed\n")
    n = len(capture.read_bytes().splitlines())
    with open(capture, "rb") as fh:
        r = subprocess.run([FT, "run", "--config", str(cfg), "--input-file", "-", "--alerts-file",
                            str(tmp_path / "a.jsonl")], stdin=fh, capture_output=True, timeout=180)
    assert r.returncode == 0
    logs = [orjson.loads(x) for x in r.stderr.splitlines()]
    done = next(x for x in logs if x["msg"] == "monitor stopped")
    assert done["shed_lines"] > 0 and done["flows"] + done["shed_lines"] == n
    assert 1 <= sum("shedding input" in x["msg"] for x in logs) <= 5


def test_cilium_flowlogs_yaml_pasted_as_export_config(small_capture: Path, tmp_path: Path) -> None:
    """The `export:` key takes Cilium's dynamic exporter file (flowLogs) unchanged."""
    out = tmp_path / "drops.log"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"""
export:
  flowLogs:
    - name: drops
      filePath: "{out}"
      fieldMask: [time, source.namespace, source.pod_name, destination.pod_name, verdict]
      includeFilters:
        - verdict: [DROPPED]
detect: {{enabled: false}}
""")
    subprocess.run([FT, "run", "--once", "--config", str(cfg), "--input-file", str(small_capture),
                    "--log-level", "warning"], check=True, capture_output=True, timeout=120)
    got = [orjson.loads(x) for x in out.read_bytes().splitlines()]
    want = sum(b'"verdict":"DROPPED"' in x for x in small_capture.read_bytes().splitlines())
    assert len(got) == want > 0
    assert all(set(g["flow"]) <= {"time", "source", "destination", "verdict"} and g["flow"]["verdict"] == "DROPPED"
               for g in got)


def _monitor_outputs(data: bytes, source: str, workers: int, tmp: Path) -> tuple[list[dict[str, Any]], str]:
    """Alerts (in order) and Hubble metrics (OpenMetrics text, with exemplars) of the default
    monitor fed `data` in fixed batches of 4,000 lines, decoding in `workers` processes."""
    from prometheus_client.openmetrics.exposition import generate_latest

    from flowtrail.cli.run import build_monitor
    cfg = load(None)
    cfg["sources"] = [{"type": "file", "path": source}]
    cfg["alerts"] = [{"type": "file", "path": str(tmp / f"alerts-{workers}.jsonl")}]
    cfg["detect"]["node_silence"] = "20s"
    cfg["pipeline"]["decode_workers"] = workers
    monitor, _ = build_monitor(cfg, replay=True)
    try:
        assert (monitor.pool is not None and monitor.pool.reducing) == (workers > 0)
        lines = data.splitlines(keepends=True)
        alerts: list[dict[str, Any]] = []
        for start in range(0, len(lines), 4000):
            part = lines[start:start + 4000]
            # several chunks per batch, as a followed file hands them over
            chunks = [Chunk(b"".join(part[i:i + 700]), source, start + i + 1, time.monotonic_ns(), None,
                            len(part[i:i + 700])) for i in range(0, len(part), 700)]
            alerts += monitor.process(chunks)
        text = generate_latest(monitor.hubble_metrics.registry).decode()
        assert monitor.stats.decode_errors == 1 and monitor.stats.lost_events == 17
    finally:
        monitor.shutdown(True)
    # an exemplar carries the wall-clock time it was recorded at: the one thing that may differ
    return alerts, "\n".join(re.sub(r"(# \{[^}]*\} \S+) \S+$", r"\1", x) for x in text.splitlines()
                             if x.startswith("hubble_"))


def test_worker_processes_reduce_blocks_to_the_same_alerts_and_metrics(capture: Path, tmp_path: Path) -> None:
    """With decode workers the monitor gets only the rows the rules' prefilter selects (and every
    flow's clock) and the workers' metric increments: the alerts (every field, in order) and the
    Hubble metrics (exemplars included) equal those of decoding every row in the monitor itself."""
    lines = capture.read_bytes().splitlines(keepends=True)
    # a bad line, a lost-events record, and a stretch spelled as protojson may spell it (spaces
    # after colons and commas: decoded by the exact path, and no prefilter pattern matches them)
    lost = (b'{"lost_events":{"source":"HUBBLE_RING_BUFFER","num_events_lost":"17","cpu":null},'
            b'"node_name":"kind-worker","time":"2026-11-29T13:01:00Z"}\n')
    spaced = [json.dumps(orjson.loads(ln)).encode() + b"\n" for ln in lines[9000:30000]]
    assert sum(b'"SYN": true' in ln for ln in spaced) > 100
    data = b"".join([*lines[:9000], b'{"flow":{"verdict":"FORWARDED"\n', lost, *spaced, *lines[30000:]])
    src = tmp_path / "cap.jsonl"
    src.write_bytes(data)
    alerts, metrics = _monitor_outputs(data, str(src), 0, tmp_path)
    assert {a["category"] for a in alerts} >= {"scan", "dns-c2", "kube-api", "flow-gap"}
    assert "hubble_http_request_duration_seconds_bucket" in metrics and "# {trace" in metrics
    got_alerts, got_metrics = _monitor_outputs(data, str(src), 2, tmp_path)
    assert got_alerts == alerts
    assert got_metrics == metrics


def _children(pid: int) -> list[tuple[int, str]]:
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            out.append((int(d.name), cmd))
    return out


def test_a_killed_decode_worker_stops_the_monitor_and_a_restart_loses_nothing(
        capture: Path, batch_alerts: list[dict[str, Any]], tmp_path: Path) -> None:
    """A decode worker killed (as the OOM killer would) ends the monitor with exit status 1 and
    the reason in its log, so a supervisor restarts it; the restart reads what was not processed
    and, with the first run, raises every alert `detect` raises."""
    live, alerts, state = tmp_path / "events.log", tmp_path / "alerts.jsonl", tmp_path / "state"
    cfg = tmp_path / "c.yaml"
    cfg.write_text("pipeline:\n  decode_workers: 2\n")
    lines = capture.read_bytes().splitlines(keepends=True)
    third = len(lines) // 3
    live.write_bytes(b"".join(lines[:third]))
    port = _free_port()
    args = [FT, "run", "--config", str(cfg), "--input-file", str(live), "--alerts-file", str(alerts),
            "--state-dir", str(state), "--log-format", "json"]
    proc = subprocess.Popen([*args, "--metrics-listen", f"127.0.0.1:{port}"], stderr=subprocess.PIPE)
    try:
        base = f"http://127.0.0.1:{port}"
        _wait(lambda: _port_open(port) and _metric(_get(base + "/metrics")[1].decode(),
                                                   "flowtrail_flows_processed_total") >= third, 60)
        workers = [pid for pid, cmd in _children(proc.pid) if "spawn_main" in cmd and "resource_tracker" not in cmd]
        assert len(workers) == 2
        os.kill(workers[0], signal.SIGKILL)
        with open(live, "ab") as fh:
            fh.write(b"".join(lines[third:]))
        assert proc.wait(60) == 1
        _, err = proc.communicate()
    finally:
        if proc.poll() is None:
            proc.kill()
    logs = [orjson.loads(x) for x in err.splitlines() if x.startswith(b"{")]
    assert any(x["msg"].startswith("exiting with an error: decode stage: BrokenProcessPool") for x in logs), logs[-3:]
    r = subprocess.run([*args, "--once"], capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    got = {orjson.loads(x)["id"] for x in alerts.read_bytes().splitlines()}
    assert got == {a["id"] for a in batch_alerts}
