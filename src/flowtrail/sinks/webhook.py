"""Webhook alert sink: alerts as JSON, POSTed to a URL.

`batch: true` (default) posts one JSON list per send; `batch: false` posts each alert as its own
JSON object. In that mode a failure part-way resends the earlier alerts of the batch too
(at-least-once; receivers dedup by `id`). Status handling: see `flowtrail.sinks.httpclient`.
"""

from __future__ import annotations

from typing import Any

import orjson

from flowtrail.sinks.httpclient import post_json, session_from


class WebhookSink:
    def __init__(self, name: str, url: str, *, config: dict[str, Any] | None = None, timeout_s: float = 5.0,
                 batch: bool = True) -> None:
        self.name = name
        self.url = url
        self.timeout_s = timeout_s
        self.batch = batch
        self._session = session_from(config or {})

    @classmethod
    def from_config(cls, name: str, entry: dict[str, Any]) -> WebhookSink:
        return cls(name, entry["url"], config=entry, timeout_s=entry.get("timeout_s", 5.0),
                   batch=entry.get("batch", True))

    def send(self, alerts: list[dict[str, Any]]) -> None:
        if self.batch:
            post_json(self._session, self.url, orjson.dumps(alerts), self.timeout_s)
            return
        for a in alerts:
            post_json(self._session, self.url, orjson.dumps(a), self.timeout_s)

    def close(self) -> None:
        self._session.close()
