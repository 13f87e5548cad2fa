"""The alert model: one JSON object per alert, and its compact rendering."""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from flowtrail.model.timeutil import format_ns

EVIDENCE_LIMIT = 10


def iso_ns(ns: int) -> str:
    """RFC 3339 UTC with all nine fractional digits: fixed width, so alerts sort as text too."""
    sec, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + f".{frac:09d}Z"


@dataclass
class Alert:
    rule: str
    title: str
    category: str
    severity: str
    mitre: list[str]
    entity: dict[str, str | None]
    group: str
    first_seen: int
    detected_at: int
    last_seen: int
    description: str
    remediation: str
    count: int = 0
    peers: Counter[str] = field(default_factory=Counter)
    evidence: list[str] = field(default_factory=list)  # uuids
    evidence_text: list[str] = field(default_factory=list)
    until: int = 0  # suppression: rows before this time join this alert
    details: dict[str, Any] = field(default_factory=dict)
    emitted: bool = False  # handed to the live sinks by Engine.drain()

    @property
    def id(self) -> str:
        # stable across runs over the same flows: rule, group and the flow time it fired at
        h = hashlib.sha256(f"{self.rule}\x1f{self.group}\x1f{self.detected_at}".encode()).hexdigest()
        return h[:20]

    def to_json(self) -> dict[str, Any]:
        top = self.peers.most_common(10)
        return {
            "id": self.id,
            "rule": self.rule,
            "title": self.title,
            "category": self.category,
            "severity": self.severity,
            "mitre": self.mitre,
            "entity": self.entity,
            "peers": {"distinct": len(self.peers), "top": [{"peer": p, "count": c} for p, c in top]},
            "first_seen": iso_ns(self.first_seen),
            "last_seen": iso_ns(self.last_seen),
            "detected_at": iso_ns(self.detected_at),
            "count": self.count,
            "evidence": {"uuids": self.evidence, "flows": self.evidence_text},
            "description": self.description,
            "remediation": self.remediation,
            **({"details": self.details} if self.details else {}),
        }

    def actor(self) -> str:
        e = self.entity
        if e.get("pod"):
            return f"{e.get('namespace')}/{e['pod']}"
        return str(e.get("namespace") or e.get("name") or "-")

    def compact(self) -> str:
        peers = ", ".join(p for p, _ in self.peers.most_common(3))
        more = f" (+{len(self.peers) - 3})" if len(self.peers) > 3 else ""
        return (f"{format_ns(self.detected_at, 'StampMilli')} {self.severity.upper():<8} {self.category:<16} "
                f"{self.rule:<32} {self.actor()} -> {peers}{more}  count={self.count}")


def entity_of(kind: str, value: str | None, workload: str | None) -> dict[str, str | None]:
    if value is None:
        return {"namespace": None, "pod": None, "workload": None}
    if kind == "namespace":
        return {"namespace": value}
    if kind == "node":
        return {"node": value}
    if "/" in value and not value.startswith(("world:",)):
        ns, _, name = value.partition("/")
        wl = workload.partition("/")[2] if workload and "/" in workload else workload
        if kind == "workload":
            return {"namespace": ns, "pod": None, "workload": name}
        return {"namespace": ns, "pod": name, "workload": wl}
    return {"namespace": None, "pod": None, "workload": None, "name": value}
