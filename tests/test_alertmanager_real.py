"""The Alertmanager sink against a real Prometheus Alertmanager (Debian's prometheus-alertmanager).

Each test starts its own Alertmanager on 127.0.0.1 (no clustering, its own storage dir) routing
every alert to a webhook receiver served by the test, then checks what the API v2 reports and
what the receiver was notified of. Alerts are real: `flowtrail detect` over the rule fixtures.
"""

from __future__ import annotations

import http.server
import json
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from flowtrail.model.timeutil import parse_rfc3339_ns
from flowtrail.sinks.alerting import Delivery, build_alert_sinks
from flowtrail.sinks.alertmanager import AlertmanagerSink
from tests.helpers import fixture_alerts, free_port, stop_process

ALERTMANAGER = shutil.which("prometheus-alertmanager") or "/usr/bin/prometheus-alertmanager"
pytestmark = pytest.mark.skipif(not Path(ALERTMANAGER).exists(),
                                reason="prometheus-alertmanager is not installed (apt install prometheus-alertmanager)")

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "src" / "flowtrail" / "detect" / "rules" / "fixtures"
FAST: dict[str, Any] = {"backoff_initial_s": 0.05, "backoff_max_s": 0.2}


@pytest.fixture(scope="module")
def alerts() -> list[dict[str, Any]]:
    out = fixture_alerts()
    return out


class Notifications:
    """The webhook receiver Alertmanager notifies: collects the alerts of every notification."""

    def __init__(self) -> None:
        self.payloads: list[dict[str, Any]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                outer.payloads.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/notify"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def alert_ids(self) -> set[str]:
        return {a["labels"]["alert_id"] for p in self.payloads for a in p["alerts"]}

    def wait_for(self, want: set[str], timeout_s: float = 10.0) -> set[str]:
        deadline = time.monotonic() + timeout_s
        while self.alert_ids() < want and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.alert_ids()


class Alertmanager:
    def __init__(self, workdir: Path, port: int, notify_url: str) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.workdir = workdir
        self.port = port
        self.config = workdir / "alertmanager.yml"
        # group_by alert_id: one notification group per flowtrail alert; short waits keep the test fast.
        self.config.write_text(f"""
route:
  receiver: flowtrail-test
  group_by: ['alert_id']
  group_wait: 100ms
  group_interval: 1s
  repeat_interval: 1h
receivers:
- name: flowtrail-test
  webhook_configs:
  - url: {notify_url}
    send_resolved: false
""")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = open(self.workdir / f"alertmanager-{self.port}.log", "ab")  # noqa: SIM115 -- owned by the process
        self.proc = subprocess.Popen(
            [ALERTMANAGER, f"--config.file={self.config}", f"--storage.path={self.workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--cluster.listen-address=", "--log.level=warn"],
            stdout=log, stderr=log)
        log.close()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"alertmanager exited: {(self.workdir / f'alertmanager-{self.port}.log').read_text()}")
            try:
                if requests.get(f"{self.url}/-/ready", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.05)
        raise RuntimeError("alertmanager did not become ready")

    def alerts(self) -> list[dict[str, Any]]:
        r = requests.get(f"{self.url}/api/v2/alerts", timeout=5)
        r.raise_for_status()
        return list(r.json())

    def stop(self) -> None:
        stop_process(self.proc)


@pytest.fixture
def notifications() -> Iterator[Notifications]:
    n = Notifications()
    yield n
    n.server.shutdown()
    n.server.server_close()


@pytest.fixture
def alertmanager(tmp_path: Path, notifications: Notifications) -> Iterator[Alertmanager]:
    am = Alertmanager(tmp_path, free_port(), notifications.url)
    yield am
    am.stop()


def ms(rfc3339: str) -> int:
    ns = parse_rfc3339_ns(rfc3339)
    assert ns is not None
    return ns // 1_000_000


def test_alerts_reach_alertmanager_with_labels_annotations_and_notify(
        tmp_path: Path, alertmanager: Alertmanager, notifications: Notifications,
        alerts: list[dict[str, Any]]) -> None:
    alertmanager.start()
    [d] = build_alert_sinks([{
        "type": "alertmanager", "url": alertmanager.url, "labels": {"cluster": "lab"}, "resolve_after": "10m",
        "generator_url": "https://flowtrail.example/alerts/{id}", "batch_max": 7, **FAST,
    }], tmp_path / "spool")
    t0 = time.time()
    d.submit(alerts)
    assert d.flush(10)
    got = {a["labels"]["alert_id"]: a for a in alertmanager.alerts()}
    assert set(got) == {a["id"] for a in alerts}
    for a in alerts:
        am = got[a["id"]]
        entity = a["entity"]
        want_labels = {"alertname": a["rule"], "severity": a["severity"], "category": a["category"],
                       "alert_id": a["id"], "cluster": "lab",
                       **{k: entity[k] for k in ("namespace", "pod", "workload") if entity.get(k)}}
        assert am["labels"] == want_labels
        ann = am["annotations"]
        assert ann["summary"] == a["title"]
        assert ann["description"] == a["description"]
        assert ann["remediation"] == a["remediation"]
        assert ann.get("mitre", "") == ", ".join(a["mitre"])  # empty annotations are left out
        assert ann.get("evidence", "").splitlines() == a["evidence"]["flows"]
        assert ann["count"] == str(a["count"])
        assert am["generatorURL"] == f"https://flowtrail.example/alerts/{a['id']}"
        assert ms(am["startsAt"]) == ms(a["detected_at"])
        # endsAt = now + resolve_after (from startsAt when that lies ahead).
        detected = ms(a["detected_at"]) / 1000
        assert max(t0, detected) + 600 - 1 <= ms(am["endsAt"]) / 1000 <= max(time.time(), detected) + 600 + 1
        assert am["status"]["state"] == "active"
    # A namespace-only alert carries no pod/workload labels rather than empty ones.
    assert any("pod" not in g["labels"] for g in got.values()) == any(not a["entity"].get("pod") for a in alerts)
    # Alertmanager notified its receiver of every alert, with our labels.
    assert notifications.wait_for(set(got)) == set(got)
    assert {p["status"] for p in notifications.payloads} == {"firing"}
    # At-least-once resends are harmless: the label set identifies the alert.
    d.submit(alerts[:5])
    assert d.flush(5)
    assert len(alertmanager.alerts()) == len(alerts)
    d.close()
    assert d.stats["sent"] == len(alerts) + 5 and d.stats["failures"] == 0


def test_outage_spools_then_delivers_none_lost_none_invented(
        tmp_path: Path, alertmanager: Alertmanager, notifications: Notifications,
        alerts: list[dict[str, Any]]) -> None:
    d = Delivery(AlertmanagerSink("am", alertmanager.url, timeout_s=1), tmp_path / "spool", **FAST)
    first, second = alerts[:8], alerts[8:14]
    d.submit(first)
    assert not d.flush(0.6)  # Alertmanager is not running yet
    st = d.stats
    assert st["spooled"] == len(first) and st["sent"] == 0 and st["failures"] >= 2
    alertmanager.start()
    d.submit(second)
    assert d.flush(10)
    d.close()
    want = {a["id"] for a in first + second}
    assert {a["labels"]["alert_id"] for a in alertmanager.alerts()} == want
    assert notifications.wait_for(want) == want
    assert d.stats["sent"] == len(want) and d.stats["spooled"] == 0 and d.stats["dropped"] == 0


def test_restart_resends_what_an_earlier_run_spooled(
        tmp_path: Path, alertmanager: Alertmanager, notifications: Notifications,
        alerts: list[dict[str, Any]]) -> None:
    spool = tmp_path / "spool"
    d = Delivery(AlertmanagerSink("am", alertmanager.url, timeout_s=1), spool, **FAST)
    d.submit(alerts[:10])
    d.close(0.3)  # shut down while Alertmanager is down: the alerts stay on disk
    assert d.stats["spooled"] == 10 and d.stats["sent"] == 0
    alertmanager.start()
    d = Delivery(AlertmanagerSink("am", alertmanager.url, timeout_s=1), spool, **FAST)
    assert d.stats["recovered"] == 10
    assert d.flush(10)
    d.close()
    want = {a["id"] for a in alerts[:10]}
    assert {a["labels"]["alert_id"] for a in alertmanager.alerts()} == want
    assert notifications.wait_for(want) == want
    # Nothing left for a third run.
    d = Delivery(AlertmanagerSink("am", alertmanager.url), spool, **FAST)
    assert d.stats["recovered"] == 0
    d.close()


def test_alertmanager_going_away_mid_run(tmp_path: Path, alertmanager: Alertmanager,
                                         alerts: list[dict[str, Any]]) -> None:
    alertmanager.start()
    d = Delivery(AlertmanagerSink("am", alertmanager.url, timeout_s=1), tmp_path / "spool", **FAST)
    d.submit(alerts[:4])
    assert d.flush(5)
    alertmanager.stop()
    d.submit(alerts[4:9])
    assert not d.flush(0.5)
    assert d.stats["spooled"] == 5
    alertmanager.start()  # Alertmanager keeps alerts in memory only: the first four are gone
    assert d.flush(10)
    d.close()
    assert {a["labels"]["alert_id"] for a in alertmanager.alerts()} == {a["id"] for a in alerts[4:9]}
    assert d.stats["sent"] == 9 and d.stats["failures"] >= 1


# -- alerts re-sent while active (flowtrail run's repeat_interval) ----------------------------------------


@pytest.fixture(scope="module")
def live_capture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A slow port scan and a kube-api incident, starting ten minutes ago: Alertmanager takes
    endsAt from startsAt when that lies ahead, so flow times must be in the past to resolve."""
    start = time.strftime("%Y-%m-%dT%H:%M:00Z", time.gmtime(time.time() - 600))
    path = tmp_path_factory.mktemp("live") / "capture.jsonl"
    subprocess.run([sys.executable, "-m", "flowtrail.cli.main", "simulate", "-q", "--duration", "2m", "--seed", "7",
                    "--start", start, "--rate", "10", "--scenario", "port-scan:rate=2,ports=40",
                    "--scenario", "kube-api", "-o", str(path)], check=True)
    return path


def test_active_alert_stays_active_past_its_first_ends_at_quiet_ones_resolve(
        tmp_path: Path, alertmanager: Alertmanager, live_capture: Path) -> None:
    """`flowtrail run` following a growing capture, Alertmanager with resolve_after 2s and
    repeat_interval 500ms: the kube-api alert, whose flows keep coming, is re-posted and still
    active well after the endsAt of its first post; a port scan that ended before is never
    re-posted and resolves; once its flows stop, the kube-api alert resolves too."""
    from flowtrail.cli.run import build_monitor
    from flowtrail.monitor import config as cfgmod
    alertmanager.start()
    lines = live_capture.read_bytes().splitlines(keepends=True)
    batch = [json.loads(x) for x in subprocess.run(
        [sys.executable, "-m", "flowtrail.cli.main", "detect", str(live_capture), "-o", "json"],
        check=True, capture_output=True).stdout.splitlines()]
    busy = next(a for a in batch if a["rule"] == "kube-api.unexpected-namespace")
    quiet = min((a for a in batch if a["rule"] == "scan.port-scan"), key=lambda a: a["detected_at"])
    times = [json.loads(x)["time"] for x in lines]
    cut = next(i for i, t in enumerate(times) if t > max(busy["detected_at"], quiet["last_seen"]))
    end = next(i for i, t in enumerate(times) if t >= busy["last_seen"])
    assert end - cut > 200  # the busy alert gains flows long after both opened
    live = tmp_path / "events.log"
    live.write_bytes(b"".join(lines[:cut]))
    cfg = cfgmod.validate({
        "sources": [{"type": "file", "path": str(live), "poll_interval": "20ms"}],
        "alerts": [{"type": "alertmanager", "url": alertmanager.url, "resolve_after": "2s",
                    "repeat_interval": "500ms", "labels": {"copy": "repeated"}, **FAST},
                   # the control: the same alerts posted once, as before repeat_interval existed
                   {"type": "alertmanager", "name": "once", "url": alertmanager.url, "resolve_after": "2s",
                    "repeat_interval": None, "labels": {"copy": "once"}, **FAST}]}, "test")
    monitor, _ = build_monitor(cfg)
    stop = threading.Event()
    runner = threading.Thread(target=monitor.run, args=(stop,))
    runner.start()

    def active(copy: str = "repeated") -> dict[str, dict[str, Any]]:
        return {a["labels"]["alert_id"]: a for a in alertmanager.alerts()
                if a["status"]["state"] == "active" and a["labels"]["copy"] == copy}

    try:
        deadline = time.monotonic() + 15
        while not ({busy["id"], quiet["id"]} <= set(active()) and busy["id"] in active("once")) \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        first, first_once = active(), active("once")
        assert {busy["id"], quiet["id"]} <= set(first)
        first_end = ms(first[busy["id"]]["endsAt"])
        assert first_end - time.time() * 1000 <= 2100  # the first post: now + resolve_after
        # the busy alert's flows keep arriving for 4 s, twice its resolve_after
        step = (end - cut) // 10 + 1
        for i in range(cut, end, step):
            time.sleep(0.4)
            with open(live, "ab") as fh:
                fh.write(b"".join(lines[i:min(i + step, end)]))
        assert time.time() * 1000 > first_end + 1000
        now = active()
        assert busy["id"] in now, "an alert whose rule keeps matching was resolved"
        assert ms(now[busy["id"]]["endsAt"]) > first_end + 1000
        assert int(now[busy["id"]]["annotations"]["count"]) > int(first[busy["id"]]["annotations"]["count"])
        assert ms(now[busy["id"]]["startsAt"]) == ms(busy["detected_at"])  # the same alert, updated
        assert quiet["id"] not in now, "an alert that gained no flows for 4 s is still active"
        assert busy["id"] in first_once and busy["id"] not in active("once")  # posted once: resolved
        # once no more flows come, the busy alert stops being re-posted and resolves as well
        deadline = time.monotonic() + 6
        while busy["id"] in active() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert busy["id"] not in active()
        assert monitor.stats.alert_updates >= 4
    finally:
        stop.set()
        runner.join(30)
