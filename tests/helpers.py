"""Helpers for tests that start real servers (Prometheus, Alertmanager, rsyslog, gRPC, HTTP)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

RULE_FIXTURES = Path(__file__).resolve().parents[1] / "src" / "flowtrail" / "detect" / "rules" / "fixtures"


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port free on 127.0.0.1 right now (TCP by default; socket.SOCK_DGRAM for UDP)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop_process(proc: subprocess.Popen[bytes] | None, timeout_s: float = 5.0) -> None:
    """SIGTERM, then SIGKILL if it does not exit within `timeout_s`."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def fixture_alerts() -> list[dict[str, Any]]:
    """Real alerts: `flowtrail detect` over the rule pack's lab fixtures (with their intel feed)."""
    args = [str(p) for p in sorted(RULE_FIXTURES.glob("*.jsonl.gz"))]
    r = subprocess.run([sys.executable, "-m", "flowtrail.cli.main", "detect", *args, "--intel",
                        str(RULE_FIXTURES / "intel.txt"), "--workers", "1", "-o", "json"], capture_output=True, check=True)
    out = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(out) >= 20
    return out
