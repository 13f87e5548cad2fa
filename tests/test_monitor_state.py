"""Detection state across restarts of `flowtrail run`, and updates of active alerts.

Real captures (`flowtrail simulate`, the rule pack's fixtures), the real CLI in a subprocess or the
real Monitor/Engine classes; nothing of flowtrail is mocked. A restart must not change what is
detected: the alerts of a run cut by SIGTERM (or SIGKILL) are those of one uninterrupted run.
"""

from __future__ import annotations

import gzip
import logging
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from flowtrail.detect.engine import Engine
from flowtrail.detect.features import Enrichment
from flowtrail.detect.fixtures import engine_for, fixture_dir
from flowtrail.detect.rules import Rule, apply_config, load_rules
from flowtrail.detect.state import FORMAT, STATE_FILE, VERSION, Checkpoints
from flowtrail.monitor.config import ConfigError
from flowtrail.sources.decode import Decoder
from tests.helpers import free_port
from tests.test_monitor import _get, _metric, _port_open, _wait

REPO = Path(__file__).resolve().parents[1]
FT = str(REPO / ".venv" / "bin" / "flowtrail")


@pytest.fixture(scope="module")
def scan_capture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A slow port scan (2 probes/s: 15 distinct ports take ~7 s of flow time) beside an
    unrelated kube-api incident. Under 4 MB, so a follower reads each part as one chunk and every
    run below cuts the input into the same batches."""
    path = tmp_path_factory.mktemp("scan") / "capture.jsonl"
    subprocess.run([FT, "simulate", "-q", "--duration", "2m", "--seed", "7", "--start", "2026-11-30T10:00:00Z",
                    "--rate", "10", "--scenario", "port-scan:rate=2,ports=40", "--scenario", "kube-api",
                    "-o", str(path)], check=True)
    assert path.stat().st_size < 4 << 20
    return path


def _alerts(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(x) for x in path.read_bytes().splitlines()] if path.exists() else []


def _key(a: dict[str, Any]) -> tuple[Any, ...]:
    return a["id"], a["rule"], a["count"], a["first_seen"], a["detected_at"]


def _once(src: Path, alerts: Path, state: Path, *extra: str) -> subprocess.CompletedProcess[bytes]:
    r = subprocess.run([FT, "run", "--once", "--input-file", str(src), "--alerts-file", str(alerts),
                        "--state-dir", str(state), "--log-format", "json", *extra], capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr.decode()[-3000:]
    return r


def _follow_until(src: Path, alerts: Path, state: Path, lines: int, *extra: str,
                  sig: int = signal.SIGTERM) -> bytes:
    """`flowtrail run` following `src` until it processed `lines` flows, then `sig`; its log."""
    port = free_port()
    proc = subprocess.Popen([FT, "run", "--input-file", str(src), "--alerts-file", str(alerts), "--state-dir",
                             str(state), "--metrics-listen", f"127.0.0.1:{port}", "--log-format", "json", *extra],
                            stderr=subprocess.PIPE)
    try:
        base = f"http://127.0.0.1:{port}"
        _wait(lambda: _port_open(port), 30)
        _wait(lambda: _metric(_get(base + "/metrics")[1].decode(), "flowtrail_flows_processed_total") >= lines, 60)
        if sig == signal.SIGKILL:
            # the follower saves its offset at most 5 times a second: let it catch up with the
            # processed lines, so the restart finds the offset ahead of the detection state
            offsets = list(state.glob("offset-*.json"))
            _wait(lambda: offsets and orjson.loads(offsets[0].read_bytes())["offset"] == src.stat().st_size, 10)
        proc.send_signal(sig)
        proc.wait(30)
        assert proc.returncode == (0 if sig == signal.SIGTERM else -signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.stderr is not None
    return proc.stderr.read()


def _split_point(lines: list[bytes], batch: list[dict[str, Any]]) -> tuple[int, dict[str, Any]]:
    """The line half-way between the first port scan's first flow and the flow that made it
    cross its threshold: half of the attack before the cut, the rest after it."""
    scan = min((a for a in batch if a["rule"] == "scan.port-scan"), key=lambda a: a["detected_at"])
    times = [orjson.loads(x)["time"] for x in lines]
    lo = next(i for i, t in enumerate(times) if t >= scan["first_seen"])
    hi = next(i for i, t in enumerate(times) if t >= scan["detected_at"])
    assert hi - lo > 20, scan
    return (lo + hi) // 2, scan


def test_scan_split_across_sigterm_fires_the_uninterrupted_alert(scan_capture: Path, tmp_path: Path) -> None:
    lines = scan_capture.read_bytes().splitlines(keepends=True)
    whole = tmp_path / "whole.jsonl"
    whole.write_bytes(b"".join(lines))
    _once(whole, tmp_path / "ref.jsonl", tmp_path / "ref-state")
    ref = _alerts(tmp_path / "ref.jsonl")
    batch = [orjson.loads(x) for x in subprocess.run([FT, "detect", str(whole), "-o", "json"], check=True,
                                                     capture_output=True).stdout.splitlines()]
    assert sorted(a["id"] for a in ref) == sorted(a["id"] for a in batch)
    k, scan = _split_point(lines, batch)
    split_time = orjson.loads(lines[k])["time"]
    # an alert opened before the cut whose rule goes on matching after it, within its suppression
    suppressed = [a for a in batch if a["detected_at"] < split_time < a["last_seen"] and a["rule"] != scan["rule"]]
    assert suppressed, "the capture has no alert spanning the cut"

    def split_run(name: str, keep_state: bool) -> list[dict[str, Any]]:
        live, alerts, state = tmp_path / f"{name}.jsonl", tmp_path / f"{name}-alerts.jsonl", tmp_path / name
        live.write_bytes(b"".join(lines[:k]))
        log = _follow_until(live, alerts, state, k)
        assert b'"detection state restored"' not in log
        assert (state / STATE_FILE).exists()
        with open(live, "ab") as fh:  # the rest of the attack arrives while flowtrail is down
            fh.write(b"".join(lines[k:]))
        if not keep_state:
            (state / STATE_FILE).unlink()
        r = _once(live, alerts, state)
        assert (b'"detection state restored"' in r.stderr) == keep_state
        return _alerts(alerts)

    got = split_run("split", keep_state=True)
    # the scan that crossed its threshold after the restart: the same alert as without a restart
    [mine] = [a for a in got if a["id"] == scan["id"]]
    [theirs] = [a for a in ref if a["id"] == scan["id"]]
    assert _key(mine) == _key(theirs) and mine["first_seen"] == scan["first_seen"] < split_time
    assert mine["details"] == theirs["details"]
    # the alerts opened before the restart are not raised again after it
    assert sorted(a["id"] for a in got) == sorted(a["id"] for a in ref)
    for a in suppressed:
        assert sum(g["rule"] == a["rule"] and g["entity"] == a["entity"] for g in got) == \
            sum(g["rule"] == a["rule"] and g["entity"] == a["entity"] for g in ref)
    # alerts opened after the restart are the uninterrupted run's, count included (same batches)
    after = {a["id"] for a in ref if a["detected_at"] >= split_time}
    assert after and sorted(_key(a) for a in got if a["id"] in after) == sorted(_key(a) for a in ref if a["id"] in after)

    # the control: the same cut without the state file misses the scan or raises it differently,
    # and raises the spanning incident a second time
    lost = split_run("control", keep_state=False)
    assert sorted(_key(a) for a in lost) != sorted(_key(a) for a in got)
    assert any(sum(g["rule"] == a["rule"] and g["entity"] == a["entity"] for g in lost) >
               sum(g["rule"] == a["rule"] and g["entity"] == a["entity"] for g in got) for a in suppressed)


def test_crash_reads_again_from_the_checkpoint_into_its_state(scan_capture: Path, tmp_path: Path) -> None:
    """SIGKILL after the follower saved offsets past the last checkpoint: the restart moves the
    offset back to the checkpoint's, so the lines in between are read again into the state that
    had not seen them; the alerts (deduplicated by id) are those of one uninterrupted run."""
    lines = scan_capture.read_bytes().splitlines(keepends=True)
    whole = tmp_path / "whole.jsonl"
    whole.write_bytes(b"".join(lines))
    _once(whole, tmp_path / "ref.jsonl", tmp_path / "ref-state")
    ref = {a["id"]: a for a in _alerts(tmp_path / "ref.jsonl")}
    a, b = len(lines) // 3, 2 * len(lines) // 3
    live, alerts, state = tmp_path / "live.jsonl", tmp_path / "alerts.jsonl", tmp_path / "state"
    live.write_bytes(b"".join(lines[:a]))
    _follow_until(live, alerts, state, a)  # clean stop: checkpoint at line a
    checkpoint = orjson.loads((state / STATE_FILE).read_bytes())
    cfg = tmp_path / "slow-checkpoints.yaml"
    cfg.write_text("detect:\n  checkpoint_interval: 1h\n")
    with open(live, "ab") as fh:
        fh.write(b"".join(lines[a:b]))
    _follow_until(live, alerts, state, b - a, "--config", str(cfg), sig=signal.SIGKILL)
    # the crash left the offset at line b and the detection state at line a
    [offset_file] = state.glob("offset-*.json")
    assert orjson.loads(offset_file.read_bytes())["line"] == b
    assert orjson.loads((state / STATE_FILE).read_bytes())["saved_at"] == checkpoint["saved_at"]
    with open(live, "ab") as fh:
        fh.write(b"".join(lines[b:]))
    r = _once(live, alerts, state)
    logs = [orjson.loads(x) for x in r.stderr.splitlines()]
    assert any("back to the position of the detection checkpoint" in x["msg"] for x in logs)
    done = next(x for x in logs if x["msg"] == "monitor stopped")
    assert done["lines"] == len(lines) - a  # read again from the checkpoint, not from the offset
    got = _alerts(alerts)
    assert {g["id"] for g in got} == set(ref)
    for g in got:
        assert (g["rule"], g["first_seen"], g["detected_at"]) == \
            (ref[g["id"]]["rule"], ref[g["id"]]["first_seen"], ref[g["id"]]["detected_at"])
    # the last record of each alert is the one the third run sent after reading from line a: the
    # same as the uninterrupted run wherever it opened after the checkpoint
    final = {g["id"]: g for g in got}
    cut = orjson.loads(lines[a])["time"]
    opened_after = [i for i, x in ref.items() if x["detected_at"] >= cut]
    assert opened_after and all(_key(final[i]) == _key(ref[i]) for i in opened_after)


def test_unusable_state_is_logged_and_ignored(scan_capture: Path, tmp_path: Path) -> None:
    ref = tmp_path / "ref-alerts.jsonl"
    _once(scan_capture, ref, tmp_path / "ref-state")
    saved = orjson.loads((tmp_path / "ref-state" / STATE_FILE).read_bytes())
    [position] = saved["positions"].values()
    assert position["line"] > 0
    good = {**saved, "positions": {}}  # these cases start with no offset file
    broken_window = orjson.loads(orjson.dumps(good))
    packed = next(v for r in broken_window["rules"] for v in r["agg"].values() if isinstance(v, dict) and v["keys"])
    packed["lengths"][0] = "not a length"
    other_rules = {**good, "rules": [{**r, "digest": "0" * 24} for r in good["rules"]]}
    cases = {
        "not JSON": b"\x00garbage{",
        "another version": orjson.dumps({**good, "version": VERSION + 1}),
        "another format": orjson.dumps({**good, "format": "something-else"}),
        "malformed window": orjson.dumps(broken_window),
        "another rule set": orjson.dumps(other_rules),
        "a list": b"[1, 2, 3]",
        # the offset file was removed to read the input again: the state already counts that input
        "position removed": orjson.dumps(saved),
    }
    for what, data in cases.items():
        state = tmp_path / what.replace(" ", "-")
        state.mkdir()
        (state / STATE_FILE).write_bytes(data)
        alerts = tmp_path / f"{state.name}.jsonl"
        r = _once(scan_capture, alerts, state)  # never a crash
        logs = [orjson.loads(x) for x in r.stderr.splitlines()]
        warned = [x["msg"] for x in logs if x["level"] == "warning" and "detection state" in x["msg"]]
        assert len(warned) == 1 and "ignored" in warned[0], (what, warned)
        # detection started empty: the alerts of a first run
        assert [_key(a) for a in _alerts(alerts)] == [_key(a) for a in _alerts(ref)], what
        # and the state written at the end is a good one again
        assert orjson.loads((state / STATE_FILE).read_bytes())["format"] == FORMAT
    # detection turned off: the offsets move on without the state, which is removed rather than
    # left to move them back when detection is turned on again
    cfg = tmp_path / "off.yaml"
    cfg.write_text("detect:\n  enabled: false\n")
    _once(scan_capture, tmp_path / "off.jsonl", tmp_path / "ref-state", "--config", str(cfg))
    assert not (tmp_path / "ref-state" / STATE_FILE).exists()


def test_changed_rules_lose_their_state_the_others_keep_it(scan_capture: Path, caplog: pytest.LogCaptureFixture,
                                                           tmp_path: Path) -> None:
    eng = Engine(load_rules(), Enrichment())
    table = Decoder(eng.paths).decode_block(scan_capture.read_bytes()).table
    assert table is not None
    off = 0
    while not any(cr.alerts.open for cr in eng.rules if cr.rule.id == "scan.port-scan"):
        eng.process(table.slice(off, 100))
        eng.drain()
        off += 100
    cp = Checkpoints(tmp_path / STATE_FILE, 10.0)
    assert cp.save(eng, [])
    before = {cr.rule.id: cr for cr in eng.rules}
    assert before["scan.port-scan"].alerts.open and before["scan.port-scan"].agg.dump()["seen"]["keys"]

    # a tunable of one rule changed, one rule removed, one title edited
    rules = apply_config(load_rules(), {"rules": {"scan.port-scan": {"tunables": {"threshold": 20}}}})
    rules = [r for r in rules if r.id != "scan.denied-probing"]
    for r in rules:
        if r.id == "scan.sensitive-service":
            r.title = "Renamed"
    again = Engine(rules, Enrichment())
    with caplog.at_level(logging.INFO, logger="flowtrail.state"):
        assert Checkpoints(tmp_path / STATE_FILE, 10.0).restore(again, [])
    after = {cr.rule.id: cr for cr in again.rules}
    assert not after["scan.port-scan"].alerts.open and not after["scan.port-scan"].agg.dump()["seen"]["keys"]
    assert "scan.denied-probing" not in after
    assert any("scan.port-scan" in m and "scan.denied-probing" in m for m in caplog.messages)
    # unchanged (or merely renamed) rules carry on where they were
    for rid in ("scan.sensitive-service", "kube-api.unexpected-namespace"):
        assert orjson.dumps(after[rid].agg.dump(), option=orjson.OPT_SERIALIZE_NUMPY) == \
            orjson.dumps(before[rid].agg.dump(), option=orjson.OPT_SERIALIZE_NUMPY)
        assert [a.id for a in after[rid].alerts.open.values()] == [a.id for a in before[rid].alerts.open.values()]
    assert again.t_max == eng.t_max


def test_every_rule_restarted_after_every_batch_equals_one_run() -> None:
    """Each built-in rule over its positive fixture in batches of 250 flows, its engine saved to a
    state document and replaced by a fresh one loaded from it after every batch: the alerts sent
    (with their counts at that moment) and the final open alerts are those of one engine."""
    functions = set()
    for rule in load_rules():
        if not rule.fixtures.get("positive"):
            continue
        rule.enabled = True
        d = fixture_dir(rule)
        base = engine_for(rule, d)
        if not base.rules:
            continue
        functions.add(rule.aggregate["function"])
        table = Decoder(base.paths).decode_block(gzip.decompress((d / rule.fixtures["positive"]).read_bytes())).table
        assert table is not None

        def run(restart: bool, rule: Rule = rule, d: Path = d, table: Any = table) -> tuple[list[Any], list[Any]]:
            eng = engine_for(rule, d)
            sent = []
            for off in range(0, table.num_rows, 250):
                eng.process(table.slice(off, 250))
                # serialised now, as the sinks' submit() does: to_json() shares the alert's lists
                sent += [orjson.loads(orjson.dumps(a.to_json())) for a in eng.drain()]
                if restart:
                    doc = orjson.loads(orjson.dumps({**eng.dump_state(), "format": FORMAT, "version": VERSION},
                                                    option=orjson.OPT_SERIALIZE_NUMPY))
                    eng = engine_for(rule, d)
                    restored, dropped = eng.load_state(doc)
                    assert restored == 1 and not dropped
            return sent, [a.to_json() for a in eng.handed_out()]

        one, cut = run(False), run(True)
        assert one[0], rule.id
        assert cut == one, rule.id
    assert functions == {"match", "event_count", "value_count", "rate_spike", "baseline_rate"}


# -- updates of active alerts ---------------------------------------------------------------------------


def test_file_sink_updates_end_with_the_final_alert(scan_capture: Path, tmp_path: Path) -> None:
    """A file sink with a repeat interval, fed as the capture grows: the first record of each id is
    the alert as it opened, later ones are marked updates, and the last one is `flowtrail
    detect`'s final alert."""
    from flowtrail.cli.run import build_monitor
    from flowtrail.monitor import config as cfgmod
    lines = scan_capture.read_bytes().splitlines(keepends=True)
    live, alerts = tmp_path / "live.jsonl", tmp_path / "alerts.jsonl"
    live.write_bytes(b"".join(lines[: len(lines) // 4]))
    cfg = cfgmod.validate({"sources": [{"type": "file", "path": str(live), "poll_interval": "20ms"}],
                           "alerts": [{"type": "file", "path": str(alerts), "repeat_interval": "200ms"}]}, "test")
    monitor, _ = build_monitor(cfg)
    stop = threading.Event()
    t = threading.Thread(target=monitor.run, args=(stop,))
    t.start()
    try:
        rest = lines[len(lines) // 4:]
        for i in range(0, len(rest), len(rest) // 6 + 1):
            time.sleep(0.4)
            with open(live, "ab") as fh:
                fh.write(b"".join(rest[i:i + len(rest) // 6 + 1]))
        _wait(lambda: monitor.stats.lines >= len(lines), 30)
        time.sleep(0.5)
    finally:
        stop.set()
        t.join(30)
    got = _alerts(alerts)
    batch = {a["id"]: a for a in (orjson.loads(x) for x in subprocess.run(
        [FT, "detect", str(scan_capture), "-o", "json"], check=True, capture_output=True).stdout.splitlines())}
    firsts = {}
    for a in got:
        if a["id"] not in firsts:
            firsts[a["id"]] = a
            assert "update" not in a
        else:
            assert a["update"] is True
    assert set(firsts) == set(batch)
    assert monitor.stats.alert_updates == sum("update" in a for a in got) > 0
    last = {a["id"]: a for a in got}
    for i, a in last.items():
        b = batch[i]
        assert (a["count"], a["last_seen"], a["first_seen"], a["detected_at"], a["peers"]) == \
            (b["count"], b["last_seen"], b["first_seen"], b["detected_at"], b["peers"]), i
    # updates only when the alert grew: counts strictly increase from record to record
    for i in firsts:
        counts = [a["count"] for a in got if a["id"] == i]
        assert counts == sorted(set(counts)), (i, counts)


def test_repeat_interval_config() -> None:
    from flowtrail.sinks.alerting import SinkConfigError, build_alert_sinks
    [am, f] = build_alert_sinks([{"type": "alertmanager", "url": "http://127.0.0.1:9"},
                                 {"type": "file", "path": "/dev/null"}], None)
    try:
        assert am.repeat_interval_s == 60.0 and f.repeat_interval_s is None
    finally:
        am.close(0)
        f.close(0)
    [am] = build_alert_sinks([{"type": "alertmanager", "url": "http://127.0.0.1:9", "repeat_interval": None}], None)
    am.close(0)
    assert am.repeat_interval_s is None
    with pytest.raises(SinkConfigError, match=r"resolve_after .* must be longer than repeat_interval"):
        build_alert_sinks([{"type": "alertmanager", "url": "http://127.0.0.1:9", "resolve_after": "1m",
                            "repeat_interval": "2m"}], None)
    with pytest.raises(SinkConfigError, match="repeat_interval"):
        build_alert_sinks([{"type": "file", "path": "/dev/null", "repeat_interval": "often"}], None)
    from flowtrail.monitor import config as cfgmod
    with pytest.raises(ConfigError, match="checkpoint_interval"):
        cfgmod.validate({"detect": {"checkpoint_interval": "soon"}}, "test")


def test_stdin_restores_windows_but_not_node_silences(scan_capture: Path, tmp_path: Path) -> None:
    """A pipe has no position: what was written to it while flowtrail was down is gone. The
    windows are restored, but the nodes' last flow times are not, or every node would look
    silent for the downtime."""
    lines = scan_capture.read_bytes().splitlines(keepends=True)
    times = [orjson.loads(x)["time"] for x in lines]
    cut = len(lines) // 2
    resume = next(i for i, t in enumerate(times) if t >= times[cut][:17] + "45")  # ~30 s of flows lost
    assert resume > cut
    state = tmp_path / "state"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"state_dir: {state}\ndetect:\n  node_silence: 20s\n")
    silences = []
    for part in (lines[:cut], lines[resume:]):
        r = subprocess.run([FT, "run", "--config", str(cfg), "--input-file", "-", "--log-format", "json"],
                           input=b"".join(part), capture_output=True, timeout=120)
        assert r.returncode == 0, r.stderr.decode()[-2000:]
        silences.append([a for a in map(orjson.loads, r.stdout.splitlines()) if a["rule"] == "flow-gap.node-silent"])
    assert b'"detection state restored"' in r.stderr
    doc = orjson.loads((state / STATE_FILE).read_bytes())
    assert doc["positions"] == {} and doc["engine"]["node_last"]
    assert silences[1] == []  # the downtime is not a silence of the nodes
    # the same hole in a followed file is in the data itself: nodes did fall silent there
    hole = tmp_path / "hole.jsonl"
    hole.write_bytes(b"".join(lines[:cut] + lines[resume:]))
    r = subprocess.run([FT, "run", "--once", "--config", str(cfg), "--input-file", str(hole), "--state-dir",
                        str(tmp_path / "file-state")], capture_output=True, timeout=120, check=True)
    in_file = [a for a in map(orjson.loads, r.stdout.splitlines()) if a["rule"] == "flow-gap.node-silent"]
    assert len(in_file) > len(silences[0])
