"""Prometheus metrics: Hubble's own metric names computed from flows of any source
(:mod:`.hubble`), flowtrail's operational metrics (:mod:`.own`) and the HTTP endpoint that
serves them with health and readiness checks (:mod:`.http`)."""

from flowtrail.metrics.http import MetricsServer
from flowtrail.metrics.hubble import (
           DEFAULT_HUBBLE_METRICS,
           HubbleMetrics,
           MetricSpec,
           parse_spec,
           split_metric_list,
)
from flowtrail.metrics.own import OwnMetrics

__all__ = ["DEFAULT_HUBBLE_METRICS", "HubbleMetrics", "MetricSpec", "MetricsServer", "OwnMetrics", "parse_spec",
           "split_metric_list"]
