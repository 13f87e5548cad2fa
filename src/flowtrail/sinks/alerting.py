"""Alert sinks and their delivery: where `flowtrail run` sends alerts, and how none get lost.

An alert is the dict of `flowtrail.detect.alerts.Alert.to_json()`. A sink (`AlertSink`) sends a
list of them all-or-nothing and raises `SinkError` when the receiver is unavailable (retried) or
`SinkRejected` when the receiver refuses the content itself (not retried: the batch is split and the
refused alerts are counted and logged, so one bad alert cannot block a sink forever).

Each sink sits behind a `Delivery`: `submit()` hands alerts to a bounded in-memory queue and returns;
a worker thread moves them to the sink's spool (JSON lines, fsync'd, one directory per sink, see
`flowtrail.sinks.spool`), sends from the spool in batches and removes what was delivered. While the
sink is down the worker retries with exponential backoff and jitter; the spool keeps everything not
yet delivered, across restarts too: a new Delivery on the same spool directory resends it.
Delivery is at-least-once; receivers dedup by the alert id (Alertmanager: the `alert_id` label).
A sink with a `repeat_interval` also gets updates: the monitor re-submits an alert that keeps
gaining flows, at most once per interval, with its current count and last_seen and
`"update": true` (the same id); see flowtrail.monitor.pipeline.
`flush(timeout)` waits for delivery (a sink waiting out a backoff tries once more at once);
`close(timeout)` flushes, stops and leaves the rest spooled; `close_all(deliveries, timeout)` does
that for every sink within one deadline, for SIGTERM.

Configuration (`build_alert_sinks`, YAML/JSON list, one entry per sink; schema `ALERT_SINK_SCHEMA`)::

    # every entry
    type:               file | stdout | webhook | alertmanager | syslog          (required)
    name:               <type>     unique; also the spool directory's name
    min_severity:       info       info | low | medium | high | critical: less severe alerts skip this sink
    spool_max_mb:       256        pending alerts kept per sink; beyond it new alerts are dropped
                                   (counted in stats["dropped"], logged)
    backoff_initial_s:  0.5        first retry delay; doubles per failure, with jitter ...
    backoff_max_s:      30         ... up to this
    batch_max:          500        alerts per send
    repeat_interval:    null       re-send an alert that keeps gaining flows at most this often (Go
                                   duration), marked "update": true; null or 0s: once, when it opens.
                                   Alertmanager: 1m (it resolves alerts that are not re-sent)

    - type: file                   JSON lines, one alert per line
      path:             (required)
      max_size_mb:      100        rotate when the file would grow beyond this
      max_backups:      5          path.1 … path.N kept
      compress:         false      gzip rotated files (path.1.gz …)
    - type: stdout
      format:           json       json: one alert per line | compact: one human-readable line
    - type: webhook                JSON POST
      url:              (required) http(s)://…
      headers:          {}         extra request headers (e.g. Authorization)
      timeout_s:        5
      batch:            true       true: body is a JSON list of alerts; false: one alert per request
      tls:              {}         ca_file, cert_file, key_file, insecure_skip_verify: false
      basic_auth:       -          {username, password | password_file}
    - type: alertmanager           Prometheus Alertmanager API v2: POST <url>/api/v2/alerts
      url:              (required) http://host:9093 (plus any --web.route-prefix)
      labels:           {}         extra static labels (e.g. cluster: prod); may not replace ours
      resolve_after:    5m         endsAt = now + this (Go duration); Alertmanager resolves it then
                                   unless it is re-sent; must be longer than repeat_interval
      generator_url:    -          e.g. https://ui.example/alerts/{id} ({id} and {rule} substituted)
      timeout_s, headers, tls, basic_auth: as for webhook
      # labels: alertname=<rule>, severity, category, namespace, pod, workload, alert_id=<id>;
      # annotations: summary (title), description, remediation, mitre, evidence, peers, count,
      # first_seen, last_seen, details; startsAt = detected_at
    - type: syslog                 RFC 5424; TCP framed by octet counting (RFC 6587), UDP one datagram each
      address:          (required) udp://host:514 | tcp://host:514 ([v6]:port too)
      format:           rfc5424    rfc5424: text + structured data | cef: ArcSight CEF as the message
      facility:         local0     kern … local7
      app_name:         flowtrail
      hostname:         <auto>     this host's name
      sd_id:            flowtrail@32473   structured-data ID (32473: the example enterprise number)
      max_message_bytes: 8192      longer messages are cut (on a UTF-8 boundary)
      timeout_s:        5          TCP connect/send timeout
"""

from __future__ import annotations

import logging
import random
import threading
import time
from pathlib import Path
from typing import Any, Protocol

import jsonschema
import orjson

from flowtrail.detect.rules import SEVERITIES
from flowtrail.model.timeutil import parse_go_duration_ns
from flowtrail.sinks.spool import DiskSpool, MemorySpool, Spool, SpoolError

log = logging.getLogger("flowtrail.sinks")

SINK_TYPES = ("file", "stdout", "webhook", "alertmanager", "syslog")
SEVERITY_RANK = {s: i for i, s in enumerate(SEVERITIES)}
DEFAULT_QUEUE_MAX = 10_000


class SinkError(Exception):
    """A retryable failure: the receiver is down, slow, or answered 5xx/429."""

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class SinkRejected(Exception):
    """The receiver refused the content (HTTP 400/413/422): sending it again cannot help."""


class SinkConfigError(ValueError):
    """An alert sink entry in the configuration is invalid."""


class AlertSink(Protocol):
    name: str

    def send(self, alerts: list[dict[str, Any]]) -> None:
        """Deliver all of `alerts` or raise (SinkError: retry later; SinkRejected: content refused)."""
        ...

    def close(self) -> None: ...


class _RateLimitedLog:
    """At most one record per `interval_s` per key, with the number suppressed in between."""

    def __init__(self, interval_s: float = 30.0) -> None:
        self.interval_s = interval_s
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def __call__(self, key: str, level: int, msg: str, *args: Any, exc_info: bool = False) -> None:
        now = time.monotonic()
        if now - self._last.get(key, -1e9) < self.interval_s:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return
        n = self._suppressed.pop(key, 0)
        self._last[key] = now
        log.log(level, msg + (f" ({n} similar message(s) suppressed)" if n else ""), *args, exc_info=exc_info)


class Delivery:
    """One sink behind a bounded in-memory queue, a worker thread, retries and a spool.

    `spool_dir=None` keeps the spool in memory (survives sink outages, not restarts). `stats`:
    submitted (accepted by submit), filtered (below min_severity), sent, failures (failed send
    attempts), spooled (pending now), dropped (spool full), rejected (refused by the receiver),
    invalid (not JSON-serialisable, or unreadable in the spool), recovered (pending from an earlier run).
    """

    def __init__(self, sink: AlertSink, spool_dir: Path | None, *, min_severity: str = "info",
                 max_spool_bytes: int = 256 << 20, backoff_initial_s: float = 0.5, backoff_max_s: float = 30.0,
                 batch_max: int = 500, queue_max: int = DEFAULT_QUEUE_MAX,
                 repeat_interval_s: float | None = None) -> None:
        """`repeat_interval_s`: the monitor re-submits alerts that keep gaining flows this often
        (None: alerts are submitted once)."""
        if min_severity not in SEVERITY_RANK:
            raise ValueError(f"min_severity {min_severity!r} is not one of {SEVERITIES}")
        if backoff_initial_s <= 0 or backoff_max_s < backoff_initial_s:
            raise ValueError("need 0 < backoff_initial_s <= backoff_max_s")
        if batch_max < 1 or queue_max < 1:
            raise ValueError("batch_max and queue_max must be positive")
        if repeat_interval_s is not None and repeat_interval_s <= 0:
            raise ValueError("repeat_interval must be positive (or none: no updates)")
        self.repeat_interval_s = repeat_interval_s
        self.sink = sink
        self.name = sink.name
        self._min_rank = SEVERITY_RANK[min_severity]
        self._backoff = (backoff_initial_s, backoff_max_s)
        self._batch_max = batch_max
        self._queue_max = queue_max
        self._spool: Spool = DiskSpool(spool_dir, max_spool_bytes) if spool_dir is not None else \
            MemorySpool(max_spool_bytes)
        self._spool_on_disk = spool_dir is not None
        self._cv = threading.Condition()
        self._inbox: list[bytes] = []
        self._moving = 0  # taken from the inbox, not yet in the spool
        self._append_lock = threading.Lock()
        self._stop = False
        self._kick = False
        self._closed = False
        self._failures_in_row = 0
        self._ratelog = _RateLimitedLog()
        self._counts = {"submitted": 0, "filtered": 0, "sent": 0, "failures": 0, "dropped": 0, "rejected": 0,
                        "invalid": 0, "recovered": self._spool.pending}
        self._thread = threading.Thread(target=self._run, name=f"flowtrail-sink-{self.name}", daemon=True)
        self._thread.start()

    # -- producer side

    def submit(self, alerts: list[dict[str, Any]]) -> None:
        """Queue alerts for the sink; returns at once (disk I/O only if the queue overflows)."""
        if self._closed:
            raise RuntimeError(f"alert sink {self.name}: submit after close")
        lines: list[bytes] = []
        filtered = invalid = 0
        # Per-alert work is unavoidable here (each alert becomes one spool line); alerts are few.
        for a in alerts:
            rank = SEVERITY_RANK.get(a.get("severity", ""), len(SEVERITIES))  # unknown: never filtered out
            if rank < self._min_rank:
                filtered += 1
                continue
            try:
                lines.append(orjson.dumps(a) + b"\n")
            except TypeError as exc:
                invalid += 1
                self._ratelog("invalid", logging.ERROR, "alert sink %s: alert %s is not JSON: %s",
                              self.name, a.get("id"), exc)
        with self._cv:
            self._counts["submitted"] += len(lines)
            self._counts["filtered"] += filtered
            self._counts["invalid"] += invalid
            self._inbox.extend(lines)
            overflow = len(self._inbox) > self._queue_max
            self._cv.notify_all()
        if overflow:
            # The worker is busy with a slow send: park the queue on the spool ourselves.
            self._drain_inbox()

    def persist(self) -> bool:
        """Put what was submitted on the spool now (fsync'd) instead of when the worker gets to it:
        the monitor calls this before it commits the input offsets the alerts came from."""
        return self._drain_inbox()

    def _drain_inbox(self) -> bool:
        """Move the in-memory queue to the spool, in order; False on a disk error."""
        with self._append_lock:  # one mover at a time keeps the spool in submit order
            with self._cv:
                lines, self._inbox = self._inbox, []
                self._moving += len(lines)
            return self._to_spool(lines) if lines else True

    def _to_spool(self, lines: list[bytes]) -> bool:
        """Append to the spool (self._moving already counts `lines`); False on a disk error."""
        ok = True
        try:
            accepted = self._spool.append(lines)
        except (OSError, SpoolError) as exc:
            ok = False
            self._ratelog("spool-io", logging.ERROR, "alert sink %s: cannot write the spool: %s", self.name, exc)
            with self._cv:
                # Keep them queued in memory and try again later; the queue has a hard cap.
                self._inbox[:0] = lines
                over = len(self._inbox) - 2 * self._queue_max
                if over > 0:
                    del self._inbox[-over:]
                    self._counts["dropped"] += over
            accepted = len(lines)
        with self._cv:
            self._moving -= len(lines)
            lost = len(lines) - accepted
            if lost:
                self._counts["dropped"] += lost
            self._cv.notify_all()
        if lost:
            self._ratelog("full", logging.WARNING, "alert sink %s: spool full (%d bytes pending): dropped %d alert(s)",
                          self.name, self._spool.pending_bytes, lost)
        return ok

    # -- worker

    def _pending_locked(self) -> int:
        return len(self._inbox) + self._moving + self._spool.pending

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        with self._cv:
            while not self._stop and not self._kick:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cv.wait(left)
            self._kick = False

    def _run(self) -> None:
        self._failures_in_row = 0
        while True:
            try:
                if not self._step():
                    return
            except Exception:
                # Spool I/O trouble (a disk error): keep the worker alive and try again later.
                self._failures_in_row += 1
                self._ratelog("worker", logging.ERROR, "alert sink %s: delivery error", self.name, exc_info=True)
                self._sleep(self._delay(self._failures_in_row, None))

    def _step(self) -> bool:
        """One round: spool what was submitted, send one batch. False when stopped."""
        with self._cv:
            while not self._stop and not self._inbox and self._spool.pending == 0:
                self._cv.wait()
            if self._stop:
                return False
        if not self._drain_inbox():
            self._failures_in_row += 1
            self._sleep(self._delay(self._failures_in_row, None))
            return True
        raw = self._spool.peek(self._batch_max)
        if not raw:
            return True
        alerts = self._decode(raw)
        try:
            self._send(alerts)
        except Exception as exc:
            self._spool.ack(0)  # nothing more of this batch is done (a partial _send acked its part)
            self._failures_in_row += 1
            with self._cv:
                self._counts["failures"] += 1
            if isinstance(exc, SinkError):
                self._ratelog("send", logging.WARNING, "alert sink %s: %d alert(s) not delivered, will retry: %s",
                              self.name, len(alerts), exc)
            else:
                self._ratelog("bug", logging.ERROR, "alert sink %s: unexpected error while sending", self.name,
                              exc_info=True)
            self._sleep(self._delay(self._failures_in_row, exc))
            return True
        if self._failures_in_row:
            log.info("alert sink %s: delivering again after %d failed attempt(s)", self.name, self._failures_in_row)
            self._failures_in_row = 0
        self._spool.ack(len(raw))
        with self._cv:
            self._cv.notify_all()
        return True

    def _decode(self, raw: list[bytes]) -> list[dict[str, Any] | None]:
        out: list[dict[str, Any] | None] = []
        for line in raw:
            try:
                doc = orjson.loads(line)
            except orjson.JSONDecodeError:
                doc = None
            if not isinstance(doc, dict):
                with self._cv:
                    self._counts["invalid"] += 1
                self._ratelog("corrupt", logging.ERROR, "alert sink %s: skipped an unreadable spool line", self.name)
                doc = None
            out.append(doc)
        return out

    def _send(self, alerts: list[dict[str, Any] | None]) -> None:
        batch = [a for a in alerts if a is not None]
        if not batch:
            return
        try:
            self.sink.send(batch)
        except SinkRejected as exc:
            if len(batch) == 1:
                self._reject(batch[0], exc)
                return
        else:
            with self._cv:
                self._counts["sent"] += len(batch)
            return
        # Something in the batch is refused: one at a time, so the rest still gets through.
        for i, a in enumerate(alerts):
            if a is None:
                continue
            try:
                self.sink.send([a])
            except SinkRejected as exc:
                self._reject(a, exc)
            except Exception:
                self._spool.ack(i)
                raise
            else:
                with self._cv:
                    self._counts["sent"] += 1

    def _reject(self, alert: dict[str, Any], exc: Exception) -> None:
        with self._cv:
            self._counts["rejected"] += 1
        log.error("alert sink %s: receiver refused alert %s (%s), not retrying: %s",
                  self.name, alert.get("id"), alert.get("rule"), exc)

    def _delay(self, failures: int, exc: BaseException | None) -> float:
        lo, hi = self._backoff
        base = min(hi, lo * (2 ** min(failures - 1, 30)))
        delay = base * random.uniform(0.5, 1.0)  # jitter: sinks that failed together do not retry together
        hint = getattr(exc, "retry_after_s", None)
        if hint:
            delay = max(delay, min(float(hint), hi))
        return delay

    # -- lifecycle

    def flush(self, timeout_s: float) -> bool:
        """Wait until everything submitted is delivered (or refused); False when time ran out."""
        deadline = time.monotonic() + timeout_s
        with self._cv:
            self._kick = True  # a sink waiting out a backoff tries once more now
            self._cv.notify_all()
            while self._pending_locked() > 0 and self._thread.is_alive():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cv.wait(min(left, 0.5))
            return self._pending_locked() == 0

    def close(self, timeout_s: float = 5.0) -> None:
        """Flush for up to `timeout_s`, stop the worker, close the sink; undelivered alerts stay spooled."""
        if self._closed:
            return
        deadline = time.monotonic() + timeout_s
        self.flush(timeout_s)
        self._closed = True
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        self._thread.join(max(0.05, deadline - time.monotonic()))
        if self._thread.is_alive():
            log.warning("alert sink %s: still busy sending at shutdown; leaving it", self.name)
        self._drain_inbox()
        pending = self._spool.pending + len(self._inbox)
        if pending and self._spool_on_disk:
            log.warning("alert sink %s: %d alert(s) not delivered; kept in the spool for the next start",
                        self.name, pending)
        elif pending:
            log.error("alert sink %s: %d alert(s) not delivered and lost (no spool directory)", self.name, pending)
        try:
            self.sink.close()
        except Exception as exc:
            log.warning("alert sink %s: error on close: %s", self.name, exc)
        self._spool.close()

    @property
    def stats(self) -> dict[str, int]:
        with self._cv:
            return {**self._counts, "spooled": self._pending_locked()}


def close_all(deliveries: list[Delivery], timeout_s: float) -> bool:
    """Flush every sink within one shared deadline (they deliver in parallel), then close them all.

    For SIGTERM: returns True when everything was delivered; what was not stays spooled.
    """
    deadline = time.monotonic() + timeout_s
    ok = True
    for d in deliveries:
        ok = d.flush(max(0.0, deadline - time.monotonic())) and ok
    for d in deliveries:
        d.close(max(0.05, deadline - time.monotonic()))
    return ok


# -- configuration

_NAME = {"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"}
_POSITIVE = {"type": "number", "exclusiveMinimum": 0}
_GO_DURATION = r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$"
# alerts re-sent at most this often while they gain flows; Alertmanager resolves an alert that
# is not re-sent before its endsAt, and its docs expect re-sends every 30 s to 3 min
DEFAULT_REPEAT = {"alertmanager": "1m"}
_COMMON: dict[str, Any] = {
    "type": {"enum": list(SINK_TYPES)},
    "name": _NAME,
    "min_severity": {"enum": list(SEVERITIES)},
    "spool_max_mb": _POSITIVE,
    "backoff_initial_s": _POSITIVE,
    "backoff_max_s": _POSITIVE,
    "batch_max": {"type": "integer", "minimum": 1},
    "repeat_interval": {"oneOf": [{"type": "null"}, {"type": "string", "pattern": _GO_DURATION}]},
}
_STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_HTTP: dict[str, Any] = {
    "url": {"type": "string", "pattern": r"^https?://[^\s/]+"},
    "headers": _STR_MAP,
    "timeout_s": _POSITIVE,
    "tls": {"type": "object", "additionalProperties": False, "properties": {
        "ca_file": {"type": "string"}, "cert_file": {"type": "string"}, "key_file": {"type": "string"},
        "insecure_skip_verify": {"type": "boolean"}}},
    "basic_auth": {"type": "object", "additionalProperties": False, "required": ["username"], "properties": {
        "username": {"type": "string"}, "password": {"type": "string"}, "password_file": {"type": "string"}}},
}
_TYPES: dict[str, tuple[list[str], dict[str, Any]]] = {
    "file": (["path"], {
        "path": {"type": "string", "minLength": 1},
        "max_size_mb": _POSITIVE,
        "max_backups": {"type": "integer", "minimum": 0},
        "compress": {"type": "boolean"},
    }),
    "stdout": ([], {"format": {"enum": ["json", "compact"]}}),
    "webhook": (["url"], {**_HTTP, "batch": {"type": "boolean"}}),
    "alertmanager": (["url"], {
        **_HTTP,
        "labels": {"type": "object", "propertyNames": {"pattern": r"^[A-Za-z_][A-Za-z0-9_]*$"},
                   "additionalProperties": {"type": "string"}},
        "resolve_after": {"type": "string", "pattern": _GO_DURATION},
        "generator_url": {"type": "string"},
    }),
    "syslog": (["address"], {
        "address": {"type": "string", "pattern": r"^(udp|tcp)://"},
        "format": {"enum": ["rfc5424", "cef"]},
        "facility": {"type": "string"},
        "app_name": {"type": "string", "pattern": r"^[!-~]{1,48}$"},
        "hostname": {"type": "string", "pattern": r"^[!-~]{1,255}$"},
        "sd_id": {"type": "string", "pattern": r"^[!-~]{1,32}$"},
        "max_message_bytes": {"type": "integer", "minimum": 480},
        "timeout_s": _POSITIVE,
    }),
}

ALERT_SINK_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "flowtrail alert sink",
    "type": "object",
    "required": ["type"],
    "properties": {"type": _COMMON["type"]},
    "allOf": [
        {"if": {"properties": {"type": {"const": t}}, "required": ["type"]},
         "then": {"required": req, "properties": {**_COMMON, **props}, "additionalProperties": False}}
        for t, (req, props) in _TYPES.items()
    ],
}
_VALIDATOR = jsonschema.Draft202012Validator(ALERT_SINK_SCHEMA)


def validate_sink_config(entry: Any, where: str) -> None:
    """SinkConfigError naming the entry and the offending key."""
    errors = sorted(_VALIDATOR.iter_errors(entry), key=lambda e: (len(e.absolute_path), e.message))
    if errors:
        e = errors[0]
        path = "/".join(str(p) for p in e.absolute_path) or "(entry)"
        raise SinkConfigError(f"{where}: {path}: {e.message}")


def build_sink(entry: dict[str, Any]) -> AlertSink:
    """The sink for one validated config entry (no Delivery around it)."""
    kind = entry["type"]
    name = entry.get("name", kind)
    if kind == "file":
        from flowtrail.sinks.alertfile import FileSink
        return FileSink(name, Path(entry["path"]), max_bytes=int(entry.get("max_size_mb", 100) * (1 << 20)),
                        max_backups=entry.get("max_backups", 5), compress=entry.get("compress", False))
    if kind == "stdout":
        from flowtrail.sinks.alertfile import StdoutSink
        return StdoutSink(name, fmt=entry.get("format", "json"))
    if kind == "webhook":
        from flowtrail.sinks.webhook import WebhookSink
        return WebhookSink.from_config(name, entry)
    if kind == "alertmanager":
        from flowtrail.sinks.alertmanager import AlertmanagerSink
        return AlertmanagerSink.from_config(name, entry)
    if kind == "syslog":
        from flowtrail.sinks.syslog import SyslogSink
        return SyslogSink.from_config(name, entry)
    raise SinkConfigError(f"unknown alert sink type {kind!r}")


def repeat_interval_s(entry: dict[str, Any], where: str) -> float | None:
    """The validated entry's repeat interval in seconds; None: alerts are sent once."""
    value = entry.get("repeat_interval", DEFAULT_REPEAT.get(entry["type"]))
    ns = parse_go_duration_ns(value) if value is not None else None
    if value is not None and ns is None:
        raise SinkConfigError(f"{where}: repeat_interval: {value!r} is not a Go duration")
    if not ns:
        return None
    if entry["type"] == "alertmanager":
        resolve = parse_go_duration_ns(entry.get("resolve_after", "5m")) or 0
        if resolve <= ns:
            raise SinkConfigError(
                f"{where}: resolve_after ({entry.get('resolve_after', '5m')}) must be longer than repeat_interval "
                f"({value}): Alertmanager would resolve an active alert between two re-sends (3x or more is safe)")
    return ns / 1e9


def build_alert_sinks(config: list[dict[str, Any]], spool_root: Path | None) -> list[Delivery]:
    """One Delivery per config entry, spooled under `spool_root/<name>` (in memory when None)."""
    if not isinstance(config, list):
        raise SinkConfigError("alert sinks: expected a list of sink entries")
    names: set[str] = set()
    repeats: list[float | None] = []
    for i, entry in enumerate(config):
        where = f"alert sink #{i + 1}" + (f" ({entry.get('type')})" if isinstance(entry, dict) else "")
        validate_sink_config(entry, where)
        name = entry.get("name", entry["type"])
        if name in names:
            raise SinkConfigError(f"{where}: name {name!r} is used twice; give each sink its own name")
        names.add(name)
        repeats.append(repeat_interval_s(entry, where))
    out: list[Delivery] = []
    try:
        for i, entry in enumerate(config):
            name = entry.get("name", entry["type"])
            try:
                sink = build_sink(entry)
            except (ValueError, OSError) as exc:
                raise SinkConfigError(f"alert sink #{i + 1} ({name}): {exc}") from None
            try:
                out.append(Delivery(
                    sink, spool_root / name if spool_root is not None else None,
                    min_severity=entry.get("min_severity", "info"),
                    max_spool_bytes=int(entry.get("spool_max_mb", 256) * (1 << 20)),
                    backoff_initial_s=entry.get("backoff_initial_s", 0.5),
                    backoff_max_s=max(entry.get("backoff_max_s", 30.0), entry.get("backoff_initial_s", 0.5)),
                    batch_max=entry.get("batch_max", 500), repeat_interval_s=repeats[i]))
            except (SpoolError, ValueError) as exc:
                sink.close()
                raise SinkConfigError(f"alert sink #{i + 1} ({name}): {exc}") from None
    except BaseException:
        for d in out:
            d.close(0)
        raise
    return out
