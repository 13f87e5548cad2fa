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
