"""Prometheus Alertmanager sink: alerts POSTed to the API v2 (`POST /api/v2/alerts`).

Each flowtrail alert becomes one Alertmanager alert. Labels (the alert's identity in Alertmanager,
so at-least-once resends just refresh it): alertname=<rule>, severity, category, namespace, pod,
workload (node, entity for other kinds of entity) and alert_id=<flowtrail id>, plus the configured
static labels; absent values are left out, as Alertmanager treats empty labels as absent.
Annotations: summary (the title), description, remediation, mitre, evidence (the sample flows, one per
line), peers, count, first_seen, last_seen and details (JSON) when present.

startsAt is the alert's detected_at; endsAt is now + resolve_after (from the later of now and
startsAt, so replayed alerts from the future are still valid). Alertmanager expects clients to
re-send an alert while it is active and resolves it once endsAt passes without a re-send; the
monitor re-sends an alert that keeps gaining flows every `repeat_interval` (1m by default, shorter
than resolve_after), each time with a later endsAt and the current count and last_seen
annotations, under the same labels. An alert that stopped gaining flows is no longer re-sent and
resolves at most resolve_after after its last send.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from flowtrail.detect.alerts import iso_ns
from flowtrail.model.timeutil import parse_go_duration_ns, parse_rfc3339_ns
from flowtrail.sinks.httpclient import post_json, session_from

API_PATH = "/api/v2/alerts"
OWN_LABELS = ("alertname", "severity", "category", "namespace", "pod", "workload", "node", "entity", "alert_id")


class AlertmanagerSink:
    def __init__(self, name: str, url: str, *, labels: dict[str, str] | None = None, resolve_after: str = "5m",
                 generator_url: str | None = None, timeout_s: float = 5.0,
                 config: dict[str, Any] | None = None) -> None:
        self.name = name
        base = url.rstrip("/")
        self.endpoint = base if base.endswith(API_PATH) else base + API_PATH
        self.labels = dict(labels or {})
        clash = sorted(set(self.labels) & set(OWN_LABELS))
        if clash:
            raise ValueError(f"labels {clash} are set by flowtrail itself; choose other names")
        resolve_ns = parse_go_duration_ns(resolve_after)
        if resolve_ns is None or resolve_ns <= 0:
            raise ValueError(f"resolve_after {resolve_after!r} is not a positive duration like 5m or 1h30m")
        self.resolve_ns = resolve_ns
        self.generator_url = generator_url
        self.timeout_s = timeout_s
        self._session = session_from(config or {})

    @classmethod
    def from_config(cls, name: str, entry: dict[str, Any]) -> AlertmanagerSink:
        return cls(name, entry["url"], labels=entry.get("labels"), resolve_after=entry.get("resolve_after", "5m"),
                   generator_url=entry.get("generator_url"), timeout_s=entry.get("timeout_s", 5.0), config=entry)

    def postable(self, alert: dict[str, Any], now_ns: int | None = None) -> dict[str, Any]:
        """The API v2 postableAlert for one flowtrail alert."""
        now_ns = time.time_ns() if now_ns is None else now_ns
        entity = alert.get("entity") or {}
        labels: dict[str, str] = dict(self.labels)
        own = {
            "alertname": alert.get("rule"), "severity": alert.get("severity"), "category": alert.get("category"),
            "namespace": entity.get("namespace"), "pod": entity.get("pod"), "workload": entity.get("workload"),
            "node": entity.get("node"), "entity": entity.get("name"), "alert_id": alert.get("id"),
        }
        labels.update({k: str(v) for k, v in own.items() if v not in (None, "")})
        peers = (alert.get("peers") or {}).get("top") or []
        evidence = alert.get("evidence") or {}
        ann = {
            "summary": alert.get("title"),
            "description": alert.get("description"),
            "remediation": alert.get("remediation"),
            "mitre": ", ".join(alert.get("mitre") or []),
            "evidence": "\n".join(evidence.get("flows") or []),
            "peers": ", ".join(f"{p.get('peer')} ({p.get('count')})" for p in peers),
            "count": alert.get("count"),
            "first_seen": alert.get("first_seen"),
            "last_seen": alert.get("last_seen"),
            "details": orjson.dumps(alert["details"]).decode() if alert.get("details") else None,
        }
        annotations = {k: str(v) for k, v in ann.items() if v not in (None, "")}
        starts = parse_rfc3339_ns(alert.get("detected_at")) or now_ns
        out: dict[str, Any] = {
            "labels": labels,
            "annotations": annotations,
            "startsAt": iso_ns(starts),
            "endsAt": iso_ns(max(now_ns, starts) + self.resolve_ns),
        }
        if self.generator_url:
            out["generatorURL"] = (self.generator_url.replace("{id}", str(alert.get("id", "")))
                                   .replace("{rule}", str(alert.get("rule", ""))))
        return out

    def send(self, alerts: list[dict[str, Any]]) -> None:
        now = time.time_ns()
        body = orjson.dumps([self.postable(a, now) for a in alerts])
        post_json(self._session, self.endpoint, body, self.timeout_s)

    def close(self) -> None:
        self._session.close()
