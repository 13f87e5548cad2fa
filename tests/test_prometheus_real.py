"""The shipped alerting rules, evaluated by a real Prometheus scraping flowtrail.

A Prometheus (Debian's /usr/bin/prometheus) is started on 127.0.0.1 with a free port and a tmp
dir, scraping every second and evaluating ``deploy/prometheus/flowtrail-alerts.rules.yaml``
unchanged every second. It scrapes two flowtrail metric endpoints: one fed lab traffic with
attacks (kube-api, exfiltration, namespace-breach, drop-spike), one fed the same cluster's
benign traffic, told apart by a ``cluster`` target label. The flows are fed over several
seconds, as a live stream would arrive. Each of the four network-security rules must fire for
the attack cluster, with the attacker's labels, and none may fire (or even go pending) for the
benign one.

The process under test is `flowtrail run`, following an exporter-style file that the test appends
to, started by the ``flowtrail`` fixture; its contract is a metrics URL plus a function that
appends flow lines.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from flowtrail.lab.simulate import NS, Options, simulate
from tests.helpers import free_port as _free_port

REPO = Path(__file__).resolve().parents[1]
RULES = REPO / "deploy" / "prometheus" / "flowtrail-alerts.rules.yaml"
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
FT = str(REPO / ".venv" / "bin" / "flowtrail")
SECURITY_RULES = ("UnexpectedKubeAPIAccess", "ProductionExternalEgress", "NetworkPolicyDropSpike",
                  "UnexpectedCrossNamespaceFlow")
FEED_CHUNKS, FEED_INTERVAL_S = 16, 0.5
DEADLINE_S = 30.0

pytestmark = pytest.mark.skipif(not Path(PROMETHEUS).is_file(),
                                reason=f"Prometheus binary not found ({PROMETHEUS}); apt-get install prometheus")


@dataclass
class Target:
    """A running flowtrail: where Prometheus scrapes it, and how to hand it more flow lines."""

    metrics_url: str
    append: Callable[[bytes], None]


@pytest.fixture
def flowtrail(tmp_path: Path) -> Iterator[Callable[[], Target]]:
    """Starts `flowtrail run` processes, each following its own exporter-style file (the lines
    handed to `append` are appended to it) and serving /metrics on a free port."""
    procs: list[subprocess.Popen[bytes]] = []

    def start() -> Target:
        n = len(procs)
        events = tmp_path / f"events-{n}.log"
        events.touch()
        port = _free_port()
        proc = subprocess.Popen([FT, "run", "--input-file", str(events), "--metrics-listen", f"127.0.0.1:{port}",
                                 "--alerts-file", str(tmp_path / f"alerts-{n}.jsonl"), "--log-level", "warning"])
        procs.append(proc)
        url = f"http://127.0.0.1:{port}"
        end = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(url + "/readyz", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None, "flowtrail run exited"
            assert time.monotonic() < end, "flowtrail run did not become ready"
            time.sleep(0.1)

        def append(data: bytes) -> None:
            with open(events, "ab") as fh:
                fh.write(data)

        return Target(f"{url}/metrics", append)

    yield start
    for proc in procs:
        proc.terminate()
        assert proc.wait(30) == 0, "flowtrail run did not exit 0 on SIGTERM"


@pytest.fixture(scope="module")
def lab_flows(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[bytes]]:
    """Two minutes of the demo cluster: with the four attacks spread over the whole run, and
    without them."""
    d = tmp_path_factory.mktemp("prom-lab")
    span = "at=0.02,span=110s"
    attacks = [f"kube-api:{span}", f"exfiltration:{span}", f"namespace-breach:{span}",
               "drop-spike:at=0.02,window=110s"]
    out: dict[str, list[bytes]] = {}
    for name, scenarios in (("lab-attack", attacks), ("lab-benign", [])):
        path = d / f"{name}.jsonl"
        simulate(Options(scenarios=scenarios, duration_ns=120 * NS, rate=120, seed=11, output=str(path), workers=1))
        out[name] = path.read_bytes().splitlines(keepends=True)
    return out


def _get_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        data: dict[str, Any] = json.load(resp)
        return data


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Callable[[dict[str, str]], str]]:
    """Starts Prometheus scraping {cluster label: metrics URL}; returns its base URL."""
    procs: list[subprocess.Popen[bytes]] = []
    log = tmp_path / "prometheus.log"

    def start(targets: dict[str, str]) -> str:
        statics = []
        for cluster, url in targets.items():
            u = urlsplit(url)
            statics.append({"targets": [u.netloc], "labels": {"cluster": cluster}})
        path = urlsplit(next(iter(targets.values()))).path
        config = {"global": {"scrape_interval": "1s", "scrape_timeout": "900ms", "evaluation_interval": "1s"},
                  "rule_files": [str(RULES)],
                  "scrape_configs": [{"job_name": "flowtrail", "metrics_path": path, "static_configs": statics}]}
        cfg = tmp_path / "prometheus.yml"
        cfg.write_text(json.dumps(config))  # JSON is YAML
        port = _free_port()
        proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={cfg}", f"--storage.tsdb.path={tmp_path / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=log.open("wb"), stderr=subprocess.STDOUT)
        procs.append(proc)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            if proc.poll() is not None:
                pytest.fail(f"prometheus exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(base + "/-/ready", timeout=1) as resp:
                    if resp.status == 200:
                        return base
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"prometheus not ready after 20 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.1)

    yield start
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _alerts(base: str) -> list[dict[str, Any]]:
    alerts: list[dict[str, Any]] = _get_json(base + "/api/v1/alerts")["data"]["alerts"]
    return [a for a in alerts if a["labels"].get("alertname") in SECURITY_RULES]


def test_rules_fire_on_attacks_and_stay_quiet_on_benign_traffic(
        flowtrail: Callable[[], Target], prometheus: Callable[[dict[str, str]], str],
        lab_flows: dict[str, list[bytes]]) -> None:
    targets = {name: flowtrail() for name in lab_flows}
    base = prometheus({name: t.metrics_url for name, t in targets.items()})

    # the rules file loaded unchanged, every rule of it
    groups = _get_json(base + "/api/v1/rules")["data"]["groups"]
    loaded = {r["name"] for g in groups for r in g["rules"]}
    assert set(SECURITY_RULES) <= loaded

    def feed() -> None:
        # flows arrive over several seconds, in time order, like a live stream
        for i in range(FEED_CHUNKS):
            for name, lines in lab_flows.items():
                n = len(lines)
                targets[name].append(b"".join(lines[i * n // FEED_CHUNKS:(i + 1) * n // FEED_CHUNKS]))
            time.sleep(FEED_INTERVAL_S)

    feeder = threading.Thread(target=feed, daemon=True)
    started = time.monotonic()
    feeder.start()
    firing: dict[str, dict[str, str]] = {}
    benign_seen: list[dict[str, Any]] = []
    while time.monotonic() - started < DEADLINE_S:
        for alert in _alerts(base):
            labels = alert["labels"]
            if labels.get("cluster") == "lab-benign":
                benign_seen.append(alert)
            elif labels.get("cluster") == "lab-attack" and alert["state"] == "firing":
                firing.setdefault(labels["alertname"], labels)
        if len(firing) == len(SECURITY_RULES) and not feeder.is_alive():
            break
        time.sleep(0.5)
    feeder.join()
    elapsed = time.monotonic() - started
    assert set(firing) == set(SECURITY_RULES), f"not firing after {elapsed:.0f} s: " \
        f"{sorted(set(SECURITY_RULES) - set(firing))}; alerts: {_alerts(base)}"

    # each alert names the attacker the scenario injected
    assert firing["UnexpectedKubeAPIAccess"]["source_namespace"] == "ml-training"
    assert firing["UnexpectedKubeAPIAccess"]["source"] == "trainer"
    assert firing["ProductionExternalEgress"]["source_namespace"] == "database"
    assert firing["ProductionExternalEgress"]["destination"] == "185.220.101.47"
    assert firing["NetworkPolicyDropSpike"]["destination_namespace"] == "app"
    breach = firing["UnexpectedCrossNamespaceFlow"]
    assert (breach["source_namespace"], breach["source"], breach["destination_namespace"]) == \
        ("dev", "sandbox", "production")
    for labels in firing.values():
        assert labels["severity"] in ("critical", "warning") and labels["category"]

    # all the benign flows have been scraped and evaluated by now: nothing, not even pending
    time.sleep(2.5)
    benign_seen += [a for a in _alerts(base) if a["labels"].get("cluster") == "lab-benign"]
    assert not benign_seen, f"rules fired on benign traffic: {benign_seen[:3]}"
    # and the rules evaluated without errors
    groups = _get_json(base + "/api/v1/rules")["data"]["groups"]
    bad = [(r["name"], r.get("lastError")) for g in groups for r in g["rules"] if r.get("health") != "ok"]
    assert not bad, bad


def test_rules_file_passes_promtool() -> None:
    promtool = shutil.which("promtool") or "/usr/bin/promtool"
    if not Path(promtool).is_file():
        pytest.skip("promtool not installed")
    res = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS: 11 rules found" in res.stdout
