"""flowtrail's own metrics (``flowtrail_*``), registered in one registry.

The pipeline updates these prometheus_client objects directly:

==========================================  ===============================================================
attribute / metric                          meaning
==========================================  ===============================================================
``flows_received``                          flows read from a source (before filters and shedding)
  ``flowtrail_flows_received_total{source}``
``input_bytes``                             bytes of input read from a source
  ``flowtrail_input_bytes_total{source}``
``flows_processed``                         flows that went through detection and metrics
  ``flowtrail_flows_processed_total``
``decode_errors``                           input lines rejected by the decoder (each also logged with
  ``flowtrail_decode_errors_total{source}``   its line number)
``lost_events``                             Hubble ``lost_events`` records seen in the stream, counted
  ``flowtrail_lost_events_total{source}``     by their ``num_events_lost``: flows Hubble never delivered
``flows_shed``                              flows dropped by flowtrail itself under load, by reason
  ``flowtrail_flows_shed_total{reason}``      (``queue_full``, ``rate_limit`` …) — shedding is never silent
``alerts``                                  alerts raised, by rule, severity and category
  ``flowtrail_alerts_total{rule,severity,category}``
``alerts_suppressed``                       alerts not sent (``dedup``, ``rate_limit``, ``silenced`` …)
  ``flowtrail_alerts_suppressed_total{rule,reason}``
``queue_depth``                             items waiting in an internal queue
  ``flowtrail_queue_depth{queue}``
``lag_seconds``                             wall clock minus the newest flow time processed (computed
  ``flowtrail_lag_seconds``                   when scraped, so it grows while the input stalls; NaN before
                                              the first flow); set through :meth:`OwnMetrics.note_flow_time`
``last_flow_timestamp``                     the newest flow time processed (Unix seconds)
  ``flowtrail_last_flow_timestamp_seconds``
``alert_latency``                           flow arrival at flowtrail -> alert handed to the sinks
  ``flowtrail_alert_latency_seconds``
``batch_seconds``                           time spent per batch in each pipeline stage (decode, detect,
  ``flowtrail_batch_duration_seconds{stage}``  metrics, export …)
``sink_sent`` / ``sink_failures``           alerts delivered / failed delivery attempts per sink
  ``flowtrail_sink_sent_total{sink}``, ``flowtrail_sink_failures_total{sink}``
``sink_spooled``                            alerts waiting in a sink's retry spool
  ``flowtrail_sink_spooled{sink}``
``export_flows``                            flows offered to a flow exporter, by outcome: ``exported``,
  ``flowtrail_export_flows_total{exporter,outcome}``  ``filtered``, ``expired``, ``sampled``, ``rate_limited``, ``errors``, ``dropped``
``export_dropped``                          the ``dropped`` flows of an exporter by reason: ``buffer_full``
  ``flowtrail_export_dropped_total{exporter,reason}``  (memory buffer), ``spool_full`` (disk spool cap), ``closed``
                                              (undelivered at stop without a spool)
``export_retries``                          failed HTTP export attempts that are retried
  ``flowtrail_export_retries_total{exporter}``
``export_pending``                          flows an HTTP exporter holds: queued, spooled or in flight
  ``flowtrail_export_pending{exporter}``
``export_spool_bytes``                      bytes in an HTTP exporter's disk spool (its cap: ``spool_max_mb``)
  ``flowtrail_export_spool_bytes{exporter}``
``source_reconnects``                       reconnections of a streaming source (Hubble Relay, agent)
  ``flowtrail_source_reconnects_total{source}``
``source_connected``                        1 while a streaming source is connected, else 0
  ``flowtrail_source_connected{source}``
``build_info``                              constant 1 labelled with the version and Python version
  ``flowtrail_build_info{version,python}``
==========================================  ===============================================================

The registry also gets prometheus_client's ``process_*`` (CPU, memory, file descriptors) and
``python_info`` collectors.
"""

from __future__ import annotations

import math
import platform
import threading
import time

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

# alert latency: sub-second in the common case, minutes when a rule needs a window to close
ALERT_LATENCY_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
BATCH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("flowtrail")
    except Exception:  # not installed (running from a source tree)
        return "unknown"


class OwnMetrics:
    """All ``flowtrail_*`` metrics, registered in ``registry``."""

    def __init__(self, registry: CollectorRegistry, version: str | None = None, process: bool = True) -> None:
        prometheus_client.disable_created_metrics()
        r = registry
        self.registry = registry
        self.flows_received = Counter("flowtrail_flows_received_total", "Flows read from a source", ["source"],
                                      registry=r)
        self.input_bytes = Counter("flowtrail_input_bytes_total", "Bytes of input read from a source", ["source"],
                                   registry=r)
        self.flows_processed = Counter("flowtrail_flows_processed_total",
                                       "Flows that went through detection and metrics", registry=r)
        self.decode_errors = Counter("flowtrail_decode_errors_total", "Input lines rejected by the decoder",
                                     ["source"], registry=r)
        self.lost_events = Counter("flowtrail_lost_events_total",
                                   "Events Hubble reported lost (lost_events records, by num_events_lost)",
                                   ["source"], registry=r)
        self.flows_shed = Counter("flowtrail_flows_shed_total", "Flows dropped by flowtrail under load",
                                  ["reason"], registry=r)
        self.alerts = Counter("flowtrail_alerts_total", "Alerts raised", ["rule", "severity", "category"],
                              registry=r)
        self.alerts_suppressed = Counter("flowtrail_alerts_suppressed_total", "Alerts not sent",
                                         ["rule", "reason"], registry=r)
        self.queue_depth = Gauge("flowtrail_queue_depth", "Items waiting in an internal queue", ["queue"],
                                 registry=r)
        self._newest = math.nan
        self._lock = threading.Lock()
        self.lag_seconds = Gauge("flowtrail_lag_seconds",
                                 "Wall clock minus the newest flow time processed", registry=r)
        self.lag_seconds.set_function(self._lag)
        self.last_flow_timestamp = Gauge("flowtrail_last_flow_timestamp_seconds",
                                         "Newest flow time processed (Unix seconds)", registry=r)
        self.alert_latency = Histogram("flowtrail_alert_latency_seconds",
                                       "Flow arrival at flowtrail to alert handed to the sinks",
                                       buckets=ALERT_LATENCY_BUCKETS, registry=r)
        self.batch_seconds = Histogram("flowtrail_batch_duration_seconds", "Time per batch in a pipeline stage",
                                       ["stage"], buckets=BATCH_BUCKETS, registry=r)
        self.sink_sent = Counter("flowtrail_sink_sent_total", "Alerts delivered by a sink", ["sink"], registry=r)
        self.sink_failures = Counter("flowtrail_sink_failures_total", "Failed alert delivery attempts",
                                     ["sink"], registry=r)
        self.sink_spooled = Gauge("flowtrail_sink_spooled", "Alerts waiting in a sink's retry spool", ["sink"],
                                  registry=r)
        self.export_flows = Counter("flowtrail_export_flows_total", "Flows offered to a flow exporter, by outcome",
                                    ["exporter", "outcome"], registry=r)
        self.export_dropped = Counter("flowtrail_export_dropped_total", "Flows a flow exporter dropped, by reason",
                                      ["exporter", "reason"], registry=r)
        self.export_retries = Counter("flowtrail_export_retries_total", "Failed HTTP export attempts retried",
                                      ["exporter"], registry=r)
        self.export_pending = Gauge("flowtrail_export_pending", "Flows an HTTP exporter holds (queued, spooled, "
                                    "in flight)", ["exporter"], registry=r)
        self.export_spool_bytes = Gauge("flowtrail_export_spool_bytes", "Bytes in an HTTP exporter's disk spool",
                                        ["exporter"], registry=r)
        self.source_reconnects = Counter("flowtrail_source_reconnects_total",
                                         "Reconnections of a streaming source", ["source"], registry=r)
        self.source_connected = Gauge("flowtrail_source_connected", "1 while a streaming source is connected",
                                      ["source"], registry=r)
        self.build_info = Info("flowtrail_build", "flowtrail build information", registry=r)
        self.build_info.info({"version": version or _version(), "python": platform.python_version()})
        if process:
            prometheus_client.ProcessCollector(registry=r)
            prometheus_client.PlatformCollector(registry=r)

    def note_flow_time(self, newest_unix_s: float) -> None:
        """Record the newest flow time of a processed batch (keeps the maximum seen)."""
        with self._lock:
            if math.isnan(self._newest) or newest_unix_s > self._newest:
                self._newest = newest_unix_s
                self.last_flow_timestamp.set(newest_unix_s)

    def _lag(self) -> float:
        with self._lock:
            newest = self._newest
        return math.nan if math.isnan(newest) else max(time.time() - newest, 0.0)
