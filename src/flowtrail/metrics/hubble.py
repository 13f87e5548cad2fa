"""Hubble's Prometheus metrics, computed from decoded flows of any source.

:class:`HubbleMetrics` takes metric specs exactly as Cilium's ``hubble.metrics.enabled`` /
``--hubble-metrics`` entries (``name:option;option=value``) and exposes the same metric names,
labels and counting rules as the Hubble agent (reference §5), so dashboards and alerting rules
built for Cilium work on flows read from files, Hubble Relay or Retina:

==================  ==========================================================================
handler             metrics (labels besides the context labels) and what is counted
==================  ==========================================================================
flow                ``hubble_flows_processed_total{protocol,type,subtype,verdict}``: every flow
drop                ``hubble_drop_total{reason,protocol}``: verdict DROPPED
dns                 ``hubble_dns_queries_total`` / ``hubble_dns_responses_total``
                    ``{rcode,qtypes,ips_returned[,query]}``, ``hubble_dns_response_types_total
                    {type,qtypes[,query]}``: flows with an L7 DNS record; options ``query``,
                    ``ignoreAAAA``
tcp                 ``hubble_tcp_flags_total{flag,family}``: FORWARDED/REDIRECTED TCP with flags
icmp                ``hubble_icmp_total{family,type}``: flows with an ICMP section
port-distribution   ``hubble_port_distribution_total{protocol,port}``: FORWARDED/REDIRECTED flows
                    known not to be replies
http / httpV2       ``hubble_http_requests_total``, ``hubble_http_responses_total`` (http),
                    ``hubble_http_request_duration_seconds``; option ``exemplars=true``
policy              ``hubble_policy_verdicts_total{direction,match,action}``: policy-verdict
                    events (not from the host identity) and L7 events
flows-to-world      ``hubble_flows_to_world_total{protocol,verdict[,port]}``: non-reply flows
                    to ``reserved:world``; options ``any-drop``, ``port``, ``syn-only``
kafka               ``hubble_kafka_requests_total{topic,api_key,error_code,reporter}``,
                    ``hubble_kafka_request_duration_seconds{topic,api_key,reporter}``: L7 Kafka
                    REQUEST flows (responses are not counted)
sctp                ``hubble_sctp_chunk_types_total{chunk_type,family}``: FORWARDED/REDIRECTED
                    SCTP flows whose chunk type is known (``l4.SCTP.chunk_type``, set by
                    newer Cilium versions)
flows-per-pod       ``hubble_flows_per_pod_total{protocol,verdict}``: every flow
==================  ==========================================================================

``hubble_lost_events_total{source}`` counts the lost events in the stream, as the agent does
whenever a metric is enabled. Every handler also takes the context options of
:mod:`flowtrail.metrics.context`.

Each batch is handled column-wise: label columns are computed with pyarrow.compute / numpy,
grouped, and each counter gets one ``inc(n)`` per distinct label tuple.

Differences from the agent, on purpose: an unknown handler or option is an error here (the agent
ignores unknown options); ICMPv6 messages get ``family="IPv6"`` (the agent version read labels
them IPv4, a bug) and are counted once by port-distribution (that version counts them twice);
the metric-level include/exclude FlowFilters of Cilium's YAML metric config are not supported.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import prometheus_client
import pyarrow as pa
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.samples import Exemplar

from flowtrail.metrics.columns import (
    FlowView,
    choose,
    const,
    group_counts,
    group_rows,
    lookup,
    map_text,
)
from flowtrail.metrics.context import ContextOptions, is_context_option
from flowtrail.metrics.names import (
    EVENT_CAPTURE,
    EVENT_DROP,
    EVENT_L7,
    EVENT_POLICY_VERDICT,
    EVENT_TRACE,
    POLICY_MATCH,
    RCODE_NAMES,
    TRACE_POINTS,
    icmp_type_name,
)
from flowtrail.util import compute as pc

NAMESPACE = "hubble"
# Go client_golang's default buckets (the agent's histograms use them)
GO_DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

DEFAULT_HUBBLE_METRICS: list[str] = [
    # what Cilium's metrics docs enable, with the context the shipped alerting rules need
    # (deploy/prometheus/flowtrail-alerts.rules.yaml); DNS without `query` to keep DGA names
    # out of the label space
    "dns:ignoreAAAA;labelsContext=source_namespace",
    "drop:sourceContext=workload-name|reserved-identity;destinationContext=workload-name|reserved-identity;"
    "labelsContext=source_namespace,destination_namespace",
    "tcp",
    "flow:sourceContext=workload-name|reserved-identity;destinationContext=workload-name|reserved-identity;"
    "labelsContext=source_namespace,destination_namespace",
    "port-distribution",
    "icmp",
    "policy:sourceContext=app|workload-name|pod|reserved-identity;"
    "destinationContext=app|workload-name|pod|dns|reserved-identity;labelsContext=source_namespace,destination_namespace",
    "flows-to-world:port;sourceContext=workload-name|pod-name;destinationContext=dns|ip;labelsContext=source_namespace",
    "httpV2:exemplars=true;labelsContext=source_ip,source_namespace,source_workload,destination_ip,"
    "destination_namespace,destination_workload,traffic_direction",
]

_L4_MEMBERS = ("TCP", "UDP", "ICMPv4", "ICMPv6", "SCTP", "VRRP", "IGMP")
# Whether a message is set is the validity of its projected struct; one small field of each is
# decoded so the struct exists in the projection (an empty message, "ICMPv4":{}, is still set).
_L4_FIELDS = {"TCP": "destination_port", "UDP": "destination_port", "ICMPv4": "type", "ICMPv6": "type",
              "SCTP": "destination_port", "VRRP": "type", "IGMP": "type"}
_L7_MESSAGES = {"DNS": ("l7.dns", "rcode"), "HTTP": ("l7.http", "code"), "Kafka": ("l7.kafka", "api_key")}
L4_PATHS = {f"l4.{m}.{f}" for m, f in _L4_FIELDS.items()}
L7_PATHS = {f"{msg}.{f}" for msg, f in _L7_MESSAGES.values()}
PROTOCOL_PATHS = {"event_type.type", *L4_PATHS, *L7_PATHS}


@dataclass(frozen=True)
class MetricSpec:
    """One ``--hubble-metrics`` entry: ``name`` and its options (flags have value "")."""

    text: str
    name: str
    options: dict[str, str]


def parse_spec(text: str) -> MetricSpec:
    """Parse ``name[:opt[=value][;opt...]]``; ValueError names the spec and the bad part."""
    raw = text.strip()
    name, _, rest = raw.partition(":")
    if not name:
        raise ValueError(f"metric {text!r}: no metric name")
    options: dict[str, str] = {}
    for item in rest.split(";"):
        if not item.strip():
            continue
        key, _, value = item.partition("=")
        key = key.strip()
        if not key:
            raise ValueError(f"metric {text!r}: option {item!r} has no name")
        if key.lower() in {k.lower() for k in options}:
            raise ValueError(f"metric {text!r}: option {key!r} given twice")
        options[key] = value.strip()
    return MetricSpec(raw, name, options)


def split_metric_list(text: str) -> list[str]:
    """The agent flag's form: metrics separated by spaces."""
    return text.split()


# ------------------------------------------------------------------------------- shared columns
def _derived(view: FlowView, key: str, make: Callable[[], Any]) -> Any:
    cache = view._cache
    got = cache.get(("derived", key))
    if got is None:
        got = make()
        cache[("derived", key)] = got
    return got


def l4_member(view: FlowView) -> np.ndarray:
    """Index into ``_L4_MEMBERS`` of the set l4 member, -1 for none."""
    def make() -> np.ndarray:
        out = np.full(view.n, -1, np.int64)
        for i, member in reversed(list(enumerate(_L4_MEMBERS))):
            out[view.present(f"l4.{member}")] = i
        return out
    result: np.ndarray = _derived(view, "l4", make)
    return result


def l7_kind(view: FlowView) -> np.ndarray:
    """0 none, 1 DNS, 2 HTTP, 3 Kafka (the set l7 record)."""
    def make() -> np.ndarray:
        out = np.zeros(view.n, np.int64)
        for i, kind in reversed(list(enumerate(("DNS", "HTTP", "Kafka"), start=1))):
            out[view.present(_L7_MESSAGES[kind][0])] = i
        return out
    result: np.ndarray = _derived(view, "l7", make)
    return result


def flow_protocol(view: FlowView) -> pa.Array:
    """Hubble's ``v1.FlowProtocol``: the L7 protocol of L7 events, the L4 protocol of drop,
    trace, policy-verdict and capture events, else "Unknown flow"."""
    def make() -> pa.Array:
        etype = view.integer("event_type.type")
        names = ["Unknown flow", "Unknown L4", "Unknown L7", *_L4_MEMBERS, "DNS", "HTTP", "Kafka"]
        codes = np.zeros(view.n, np.int64)
        l4_events = np.isin(etype, (EVENT_DROP, EVENT_TRACE, EVENT_POLICY_VERDICT, EVENT_CAPTURE))
        member = l4_member(view)
        codes[l4_events] = np.where(member[l4_events] >= 0, member[l4_events] + 3, 1)
        l7_events = etype == EVENT_L7
        kind = l7_kind(view)
        codes[l7_events] = np.where(kind[l7_events] > 0, kind[l7_events] + 2 + len(_L4_MEMBERS), 2)
        return lookup(codes, dict(enumerate(names)))
    result: pa.Array = _derived(view, "protocol", make)
    return result


def verdict(view: FlowView) -> pa.Array:
    return view.text("verdict", "VERDICT_UNKNOWN")


def is_verdict(view: FlowView, *names: str) -> np.ndarray:
    out = np.zeros(view.n, bool)
    for name in names:
        out |= view.equals("verdict", name, "VERDICT_UNKNOWN")
    return out


def reporter(view: FlowView) -> pa.Array:
    direction = view.text("traffic_direction", "TRAFFIC_DIRECTION_UNKNOWN")
    return pc.if_else(pc.equal(direction, "EGRESS"), "client",
                      pc.if_else(pc.equal(direction, "INGRESS"), "server", "unknown"))


# ------------------------------------------------------------------------------- handlers
class Handler:
    """One enabled metric handler."""

    name: ClassVar[str]
    flags: ClassVar[tuple[str, ...]] = ()  # boolean options (case-insensitive), besides context ones
    valued: ClassVar[tuple[str, ...]] = ()  # options with a value

    def __init__(self, spec: MetricSpec, registry: CollectorRegistry) -> None:
        self.spec = spec
        self.ctx = ContextOptions.parse(spec.text, spec.options)
        self.opts: dict[str, str] = {}
        for key, value in spec.options.items():
            low = key.lower()
            if is_context_option(key):
                continue
            if low in (f.lower() for f in self.flags):
                if value.lower() not in ("", "true"):
                    raise ValueError(f"metric {spec.text!r}: option {key!r} is a flag; it takes no value "
                                     f"(got {value!r})")
                self.opts[low] = "true"
            elif low in (v.lower() for v in self.valued):
                self.opts[low] = value
            else:
                known = [*self.flags, *self.valued, "sourceContext", "destinationContext", "sourceEgressContext",
                         "sourceIngressContext", "destinationEgressContext", "destinationIngressContext",
                         "labelsContext"]
                raise ValueError(f"metric {spec.text!r}: unknown option {key!r} for {self.name} "
                                 f"(options: {', '.join(known)})")
        self.registry = registry
        self.counters: dict[str, Counter] = {}
        self.histograms: dict[str, BatchHistogram] = {}
        self.paths: set[str] = {"verdict"} | self.ctx.paths

    def counter(self, name: str, doc: str, labels: Sequence[str]) -> str:
        """Register the counter; handlers name it in their Increments by its full name."""
        c = Counter(name, doc, list(labels), namespace=NAMESPACE, registry=self.registry)
        full = f"{NAMESPACE}_{name}"
        self.counters[full] = c
        return full

    def histogram(self, name: str, doc: str, labels: Sequence[str]) -> str:
        full = f"{NAMESPACE}_{name}"
        self.histograms[full] = BatchHistogram(full, doc, labels, registry=self.registry)
        return full

    def observe(self, view: FlowView, valid: np.ndarray, out: Increments) -> None:
        raise NotImplementedError


@dataclass
class Increments:
    """What one batch of flows adds to the metrics, computed without touching the registry
    (HubbleMetrics.compute) and applied to it later (HubbleMetrics.apply): a worker process
    computes, the monitor applies, batch after batch in input order, so the exposition equals
    that of counting every batch in one process.

    ``counts``: (counter, [(labels, n, trace ID or None)]); ``histograms``: (histogram, labels,
    counts per bucket (series x buckets), sums, {series: (bucket, trace ID, value)})."""

    counts: list[tuple[str, list[tuple[tuple[str, ...], float, str | None]]]] = field(default_factory=list)
    histograms: list[tuple[str, list[tuple[str, ...]], np.ndarray, np.ndarray,
                           dict[int, tuple[int, str, float]]]] = field(default_factory=list)

    def count(self, counter: str, groups: Iterable[tuple[tuple[str, ...], float]]) -> None:
        got: list[tuple[tuple[str, ...], float, str | None]] = [(labels, n, None) for labels, n in groups]
        if got:
            self.counts.append((counter, got))


class FlowHandler(Handler):
    name = "flow"

    def __init__(self, spec: MetricSpec, registry: CollectorRegistry) -> None:
        super().__init__(spec, registry)
        self.paths |= PROTOCOL_PATHS | {"event_type.sub_type"}
        self.flows = self.counter("flows_processed_total", "Total number of flows processed",
                                  ["protocol", "type", "subtype", "verdict", *self.ctx.label_names])

    def observe(self, view: FlowView, valid: np.ndarray, out: Increments) -> None:
        etype = view.integer("event_type.type")
        # type: 0 Unknown, 1 L7, 2 Drop, 3 Capture, 4 Trace, 5 PolicyVerdict
        type_code = np.zeros(view.n, np.int64)
        for code, number in ((1, EVENT_L7), (2, EVENT_DROP), (3, EVENT_CAPTURE), (4, EVENT_TRACE),
                             (5, EVENT_POLICY_VERDICT)):
            type_code[etype == number] = code
        type_names = lookup(type_code, {0: "Unknown", 1: "L7", 2: "Drop", 3: "Capture", 4: "Trace",
                                        5: "PolicyVerdict"})
        # subtype: trace point names for traces, DNS/HTTP for L7, the type number for unknown types
        kind = l7_kind(view)
        l7_sub = lookup(np.where(kind > 2, 0, kind), {0: "", 1: "DNS", 2: "HTTP"})
        trace_sub = lookup(view.integer("event_type.sub_type") & 0xFF, TRACE_POINTS, unknown="")
        unknown_sub = lookup(etype, {})
        subtype = choose(type_code == 4, trace_sub,
                         choose(type_code == 1, l7_sub, choose(type_code == 0, unknown_sub, const("", view.n))))
        cols = [flow_protocol(view), type_names, subtype, verdict(view), *self.ctx.values(view)]
        out.count(self.flows, group_counts(cols, valid))


class DropHandler(Handler):
    name = "drop"

    def __init__(self, spec: MetricSpec, registry: CollectorRegistry) -> None:
        super().__init__(spec, registry)
        self.paths |= PROTOCOL_PATHS | {"drop_reason_desc"}
        self.drops = self.counter("drop_total", "Number of drops", [*self.ctx.label_names, "reason", "protocol"])

    def observe(self, view: FlowView, valid: np.ndarray, out: Increments) -> None:
        rows = valid & is_verdict(view, "DROPPED")
        if not rows.any():
            return
        view, rows = view.select(rows)
        cols = [*self.ctx.values(view), view.text("drop_reason_desc", "DROP_REASON_UNKNOWN"), flow_protocol(view)]
        out.count(self.drops, group_counts(cols, rows))


class DnsHandler(Handler):
    name = "dns"
    flags = ("query", "ignoreAAAA")

    def __init__(self, spec: MetricSpec, registry: CollectorRegistry) -> None:
        super().__init__(spec, registry)
        self.query = "query" in self.opts
        self.ignore_aaaa = "ignoreaaaa" in self.opts
        self.paths |= {"l7.dns.rcode", "l7.dns.qtypes", "l7.dns.ips", "l7.dns.rrtypes", "is_reply"}
        if self.query:
            self.paths.add("l7.dns.query")
        ctx = self.ctx.label_names
        q = ["query"] if self.query else []
        self.queries = self.counter("dns_queries_total", "Number of DNS queries observed",
                                    [*ctx, "rcode", "qtypes", "ips_returned", *q])
        self.responses = self.counter("dns_responses_total", "Number of DNS queries observed",
                                      [*ctx, "rcode", "qtypes", "ips_returned", *q])
        self.response_types = self.counter("dns_response_types_total", "Number of DNS queries observed",
                                           [*ctx, "type", "qtypes", *q])

    def observe(self, view: FlowView, valid: np.ndarray, out: Increments) -> None:
        rows = valid & view.present("l7.dns")
        if not rows.any():
            return
        view, rows = view.select(rows)
        qtypes = view.joined("l7.dns.qtypes")
        if self.ignore_aaaa:
            rows &= ~np.asarray(pc.equal(qtypes, "AAAA").to_numpy(zero_copy_only=False), bool)
        dropped = is_verdict(view, "DROPPED")
        reply = view.flag("is_reply")
        query_rows = rows & (dropped | ~reply)
        response_rows = rows & ~dropped & reply
        ctx = self.ctx.values(view)
        ips = pc.cast(pa.array(view.list_len("l7.dns.ips")), pa.string())
        q = [view.text("l7.dns.query")] if self.query else []
        rcode_names = lookup(view.integer("l7.dns.rcode"), RCODE_NAMES, unknown="")
        rcode = choose(dropped, const("Policy denied", view.n),
                       choose(reply, rcode_names, const("", view.n)))
        out.count(self.queries, group_counts([*ctx, rcode, qtypes, ips, *q], query_rows))
        out.count(self.responses, group_counts([*ctx, rcode, qtypes, ips, *q], response_rows))
        if response_rows.any():
            # one count per answer record type of each response
            flat, parents = view.flat("l7.dns.rrtypes")
            keep = response_rows[parents]
            if keep.any():
                take = pa.array(parents[keep])
                cols = [c.take(take) for c in [*ctx]] + [pc.fill_null(flat.filter(pa.array(keep)), ""),
                                                         qtypes.take(take), *[c.take(take) for c in q]]
                out.count(self.response_types, group_counts(cols, np.ones(int(keep.sum()), bool)))


class TcpHandler(Handler):
    name = "tcp"

    def __init__(self, spec: MetricSpec, registry: CollectorRegistry) -> None:
        super().__init__(spec, registry)
        self.paths |= {"IP.ipVersion", "l4.TCP.flags"}
        self.flags_total = self.counter("tcp_flags_total", "TCP flag occurrences",
                                        ["flag", "family", *self.ctx.label_names])

    def observe(self, view: FlowView, valid: np.ndarray, out: Increments) -> None:
        # an IP message without ipVersion reads IP_NOT_USED; the agent still counts it
        rows = valid & is_verdict(view, "FORWARDED", "REDIRECTED") & view.present("l4.TCP.flags") & view.present("IP")
        if not rows.any():
            return
        view, rows = view.select(rows)
        family = view.text("IP.ipVersion", "IP_NOT_USED")
        ctx = self.ctx.values(view)
        syn, ack = view.flag("l4.TCP.flags.SYN"), view.flag("l4.TCP.flags.ACK")
        for flag, hit in (("FIN", view.flag("l4.TCP.flags.FIN")), ("SYN-ACK", syn & ack), ("SYN", syn & ~ack),
                          ("RST", view.flag("l4.TCP.flags.RST"))):
            out.count(self.flags_total, group_counts([const(flag, view.n), family, *ctx], rows & hit))


class IcmpHandler(Handler):
    name = "icmp"

    def __init__(self, spec: MetricSpec, registry: CollectorRegistry) -> None:
        super().__init__(spec, registry)
        self.paths |= {"l4.ICMPv4", "l4.ICMPv6"}
        self.icmp = self.counter("icmp_total", "Number of ICMP messages", ["family", "type", *self.ctx.label_names])

    def observe(self, view: FlowView, valid: np.ndarray, out: Increments) -> None:
        v4, v6 = valid & view.present("l4.ICMPv4"), valid & view.present("l4.ICMPv6")
        if not (v4.any() or v6.any()):
            return
        view, rows = view.select(v4 | v6)
        v4, v6 = rows & view.present("l4.ICMPv4"), rows & view.present("l4.ICMPv6")
        ctx = self.ctx.values(view)
        for family, name, rows in ((4, "IPv4", v4), (6, "IPv6", v6)):
            if not rows.any():
                continue
            member = "ICMPv4" if family == 4 else "ICMPv6"
            pair = (view.integer(f"l4.{member}.type") & 0xFF) * 256 + (view.integer(f"l4.{member}.code") & 0xFF)
            uniq = np.unique(pair[rows])
            names = {int(p): icmp_type_name(family, int(p) >> 8, int(p) & 0xFF) for p in uniq.tolist()}
            out.count(self.icmp, group_counts([const(name, view.n), lookup(pair, names, unknown=""), *ctx], rows))


class PortDistributionHandler(Handler):
    name = "port-distribution"

    def __init__(self, spec: MetricSpec, registry: CollectorRegistry) -> None:
        super().__init__(spec, registry)
        self.paths |= {"is_reply", *L4_PATHS}
        self.ports = self.counter("port_distribution_total", "Numbers of packets distributed by destination port",
                                  ["protocol", "port", *self.ctx.label_names])

    def observe(self, view: FlowView, valid: np.ndarray, out: Increments) -> None:
        member = l4_member(view)
        # replies, and flows not known to be requests, would count ephemeral ports
        known_request = view.present("is_reply") & ~view.flag("is_reply")
        rows = valid & is_verdict(view, "FORWARDED", "REDIRECTED") & (member >= 0) & known_request
        if not rows.any():
            return
        view, rows = view.select(rows)
        member = l4_member(view)
        port = np.zeros(view.n, np.int64)
        for i, m in enumerate(_L4_MEMBERS):
            if m in ("TCP", "UDP", "SCTP"):
                sel = member == i
                if sel.any():
                    port[sel] = view.integer(f"l4.{m}.destination_port")[sel]
        cols = [lookup(member, dict(enumerate(_L4_MEMBERS))), pc.cast(pa.array(port), pa.string()),
                *self.ctx.values(view)]
        out.count(self.ports, group_counts(cols, rows))


class PolicyHandler(Handler):
    name = "policy"

    def __init__(self, spec: MetricSpec, registry: CollectorRegistry) -> None:
        super().__init__(spec, registry)
        self.paths |= {"event_type.type", "traffic_direction", "policy_match_type", "source.identity",
                       *L7_PATHS}
        self.verdicts = self.counter("policy_verdicts_total", "Total number of Cilium network policy verdicts",
                                     ["direction", "match", "action", *self.ctx.label_names])

    def observe(self, view: FlowView, valid: np.ndarray, out: Increments) -> None:
        etype = view.integer("event_type.type")
        # the host may connect to any local endpoint: its verdicts say nothing
        l34 = valid & (etype == EVENT_POLICY_VERDICT) & (view.integer("source.identity") != 1)
        l7 = valid & (etype == EVENT_L7)
        rows = l34 | l7
        if not rows.any():
            return
        view, rows = view.select(rows)
        l7 = rows & (view.integer("event_type.type") == EVENT_L7)
        direction = pc.utf8_lower(view.text("traffic_direction", "TRAFFIC_DIRECTION_UNKNOWN"))
        l34_match = lookup(view.integer("policy_match_type"), POLICY_MATCH)
        l7_match = lookup(l7_kind(view), {0: "l7/", 1: "l7/dns", 2: "l7/http", 3: "l7/kafka"})
        match = choose(l7, l7_match, l34_match)
        action = pc.utf8_lower(verdict(view))
        out.count(self.verdicts, group_counts([direction, match, action, *self.ctx.values(view)], rows))


class FlowsToWorldHandler(Handler):
    name = "flows-to-world"
    flags = ("any-drop", "port", "syn-only")
    WORLD = "reserved:world"

    def __init__(self, spec: MetricSpec, registry: CollectorRegistry) -> None:
        super().__init__(spec, registry)
        self.any_drop = "any-drop" in self.opts
        self.port = "port" in self.opts
        self.syn_only = "syn-only" in self.opts
        self.paths |= PROTOCOL_PATHS | {"destination.labels", "event_type", "drop_reason_desc", "is_reply",
                                        "l4.TCP.flags.SYN"}
        labels = ["protocol", "verdict", *(["port"] if self.port else []), *self.ctx.label_names]
        self.flows = self.counter("flows_to_world_total", "Total number of flows to reserved:world", labels)

    def observe(self, view: FlowView, valid: np.ndarray, out: Increments) -> None:
        member = l4_member(view)
        rows = valid & view.contains("destination.labels", self.WORLD) & view.present("event_type") & (member >= 0)
        if not rows.any():
            return
        dropped = is_verdict(view, "DROPPED")
        if not self.any_drop:
            rows &= ~dropped | view.equals("drop_reason_desc", "POLICY_DENIED")
        reply = view.flag("is_reply")
        rows &= dropped | ~reply  # forwarded replies would count ephemeral ports
        if self.syn_only:
            rows &= view.flag("l4.TCP.flags.SYN") & ~reply
        if not rows.any():
            return
        view, rows = view.select(rows)
        member = l4_member(view)
        cols = [flow_protocol(view), verdict(view)]
        if self.port:
            port = np.full(view.n, -1, np.int64)
            for m in ("TCP", "UDP", "SCTP"):
                sel = member == _L4_MEMBERS.index(m)
                if sel.any():
                    port[sel] = view.integer(f"l4.{m}.destination_port")[sel]
            text = pc.cast(pa.array(port), pa.string())
            cols.append(pc.if_else(pa.array(port < 0), "", text))
        cols += self.ctx.values(view)
        out.count(self.flows, group_counts(cols, rows))


class BatchHistogram(Collector):
    """A labelled histogram that takes a whole batch of observations at once (numpy), as
    prometheus_client's Histogram can only observe one value per call. Exposed with Go's
    default buckets, like the agent's; exemplars (trace IDs) in OpenMetrics output."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str],
                 buckets: Sequence[float] = GO_DEFAULT_BUCKETS, registry: CollectorRegistry | None = None) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = list(labelnames)
        self.bounds = np.asarray(sorted(buckets), float)
        self._lock = threading.Lock()
        # label tuple -> [counts per bucket (last = +Inf), sum, {bucket: Exemplar}]
        self._series: dict[tuple[str, ...], list[Any]] = {}
        if registry is not None:
            registry.register(self)

    @staticmethod
    def summarize(bounds: np.ndarray, labels: list[tuple[str, ...]], group: np.ndarray, values: np.ndarray,
                  exemplars: Sequence[str | None] | None = None
                  ) -> tuple[np.ndarray, np.ndarray, dict[int, tuple[int, str, float]]]:
        """Observations ``values[i]`` of series ``labels[group[i]]`` (``exemplars[i]``: a trace
        ID) as counts per series and bucket, sums per series and the last exemplar per series."""
        nb = len(bounds) + 1
        bucket = np.searchsorted(bounds, values, side="left")
        counts = np.bincount(group * nb + bucket, minlength=len(labels) * nb).reshape(len(labels), nb)
        sums = np.bincount(group, weights=values, minlength=len(labels))
        last: dict[int, tuple[int, str, float]] = {}
        if exemplars is not None:
            for i in np.flatnonzero(np.asarray([e is not None for e in exemplars], bool)).tolist():
                # per-exemplar Python: only flows that carry a trace ID, and only the last per series
                last[int(group[i])] = (int(bucket[i]), str(exemplars[i]), float(values[i]))
        return counts, sums, last

    def merge(self, labels: list[tuple[str, ...]], counts: np.ndarray, sums: np.ndarray,
              last: dict[int, tuple[int, str, float]]) -> None:
        """Add :meth:`summarize`'s result."""
        nb = len(self.bounds) + 1
        with self._lock:
            for g, lab in enumerate(labels):
                series = self._series.get(lab)
                if series is None:
                    series = self._series[lab] = [np.zeros(nb, np.int64), 0.0, {}]
                series[0] += counts[g]
                series[1] += float(sums[g])
                if g in last:
                    b, trace, value = last[g]
                    series[2][b] = Exemplar({"traceID": trace}, value)

    def describe(self) -> list[HistogramMetricFamily]:
        return [HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)]

    def collect(self) -> list[HistogramMetricFamily]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        bounds = [*(_fmt_bound(b) for b in self.bounds.tolist()), "+Inf"]
        with self._lock:
            for lab, (counts, total, exemplars) in self._series.items():
                cumulative = np.cumsum(counts).tolist()
                buckets: list[Any] = []
                for i, (le, c) in enumerate(zip(bounds, cumulative, strict=True)):
                    ex = exemplars.get(i)
                    buckets.append((le, c, ex) if ex is not None else (le, c))
                family.add_metric(list(lab), buckets, total)
        return [family]


def _fmt_bound(b: float) -> str:
    return repr(float(b))


class HttpHandler(Handler):
    name = "http"
    valued = ("exemplars",)
    v2 = False

    def __init__(self, spec: MetricSpec, registry: CollectorRegistry) -> None:
        super().__init__(spec, registry)
        ex = self.opts.get("exemplars")
        if ex is not None and ex.lower() not in ("true", "false"):
            raise ValueError(f"metric {spec.text!r}: option exemplars={ex!r}: use exemplars=true or exemplars=false")
        self.exemplars = (ex or "").lower() == "true"
        self.paths |= {"l7.http.code", "l7.http.method", "l7.http.protocol", "l7.type", "l7.latency_ns",
                       "traffic_direction"}
        if self.exemplars:
            self.paths.add("trace_context.parent.trace_id")
        ctx = self.ctx.label_names
        if self.v2:
            self.requests = self.counter("http_requests_total", "Count of HTTP requests",
                                         [*ctx, "method", "protocol", "status", "reporter"])
            self.responses: str | None = None
        else:
            self.requests = self.counter("http_requests_total", "Count of HTTP requests",
                                         [*ctx, "method", "protocol", "reporter"])
            self.responses = self.counter("http_responses_total", "Count of HTTP responses",
                                          [*ctx, "method", "protocol", "status", "reporter"])
        self.duration = self.histogram("http_request_duration_seconds",
                                       "Quantiles of HTTP request duration in seconds", [*ctx, "method", "reporter"])

    def observe(self, view: FlowView, valid: np.ndarray, out: Increments) -> None:
        http = valid & view.present("l7.http")
        if not http.any():
            return
        view, http = view.select(http)
        l7type = view.text("l7.type", "UNKNOWN_L7_TYPE")
        requests = http & np.asarray(pc.equal(l7type, "REQUEST").to_numpy(zero_copy_only=False), bool)
        responses = http & np.asarray(pc.equal(l7type, "RESPONSE").to_numpy(zero_copy_only=False), bool)
        # httpV2 labels a response from its request's point of view
        ctx = self.ctx.values(view, invert=self.v2)
        method, protocol = view.text("l7.http.method"), view.text("l7.http.protocol")
        status = pc.cast(pa.array(view.integer("l7.http.code")), pa.string())
        rep = reporter(view)
        traces = None
        if self.exemplars:
            trace = view.text("trace_context.parent.trace_id")
            traces = pc.if_else(pc.equal(trace, ""), pa.scalar(None, pa.string()), trace)
        if self.v2:
            self._count(out, self.requests, [*ctx, method, protocol, status, rep], responses, traces)
        else:
            assert self.responses is not None
            self._count(out, self.requests, [*ctx, method, protocol, rep], requests, traces)
            self._count(out, self.responses, [*ctx, method, protocol, status, rep], responses, traces)
        rows = np.flatnonzero(responses)
        if rows.size:
            labels, group = group_rows([*ctx, method, rep], rows)
            seconds = view.integer("l7.latency_ns")[rows] / 1e9
            ex = traces.take(pa.array(rows)).to_pylist() if traces is not None else None
            bounds = self.histograms[self.duration].bounds
            out.histograms.append((self.duration, labels, *BatchHistogram.summarize(bounds, labels, group, seconds, ex)))

    def _count(self, out: Increments, counter: str, cols: list[pa.Array], rows_mask: np.ndarray,
               traces: pa.Array | None) -> None:
        rows = np.flatnonzero(rows_mask)
        labels, group = group_rows(cols, rows)
        if not labels:
            return
        counts = np.bincount(group, minlength=len(labels))
        last_trace: dict[int, str] = {}
        if traces is not None:
            sub = traces.take(pa.array(rows))
            has = np.asarray(sub.is_valid().to_numpy(zero_copy_only=False), bool)
            if has.any():
                # the last trace ID of each series: one Python step per series, not per flow
                rev = np.flatnonzero(has)[::-1]
                series, pos = np.unique(group[rev], return_index=True)
                for s_i, p_i in zip(series.tolist(), pos.tolist(), strict=True):
                    last_trace[int(s_i)] = sub[int(rev[p_i])].as_py()
        out.counts.append((counter, [(lab, n, (last_trace.get(i) or "")[:100] or None)
                                     for i, (lab, n) in enumerate(zip(labels, counts.tolist(), strict=True))]))


class HttpV2Handler(HttpHandler):
    name = "httpV2"
    v2 = True


class KafkaHandler(Handler):
    """Cilium ``pkg/hubble/metrics/kafka/handler.go`` (and its test) @``02674019``: only L7
    Kafka flows of type REQUEST count, whatever their verdict; the histogram observes the
    request flow's own ``l7.latency_ns``. Kafka is deprecated in flow.proto and newer Cilium
    may no longer register the handler; dashboards of the releases that have it read these
    series."""

    name = "kafka"

    def __init__(self, spec: MetricSpec, registry: CollectorRegistry) -> None:
        super().__init__(spec, registry)
        self.paths |= {"l7.type", "l7.latency_ns", "l7.kafka.topic", "l7.kafka.api_key", "l7.kafka.error_code",
                       "traffic_direction"}
        ctx = self.ctx.label_names
        self.requests = self.counter("kafka_requests_total", "Count of Kafka requests",
                                     [*ctx, "topic", "api_key", "error_code", "reporter"])
        # the agent's help text says HTTP here: kept, so the exposition matches the agent's
        self.duration = self.histogram("kafka_request_duration_seconds",
                                       "Quantiles of HTTP request duration in seconds",
                                       [*ctx, "topic", "api_key", "reporter"])

    def observe(self, view: FlowView, valid: np.ndarray, out: Increments) -> None:
        rows = valid & view.present("l7.kafka") & view.equals("l7.type", "REQUEST", "UNKNOWN_L7_TYPE")
        if not rows.any():
            return
        view, rows = view.select(rows)
        ctx = self.ctx.values(view)
        topic, api_key = view.text("l7.kafka.topic"), view.text("l7.kafka.api_key")
        # an int32 in decimal (strconv.Itoa); an older agent wrote string(rune(code)), a bug
        error_code = pc.cast(pa.array(view.integer("l7.kafka.error_code")), pa.string())
        rep = reporter(view)
        out.count(self.requests, group_counts([*ctx, topic, api_key, error_code, rep], rows))
        idx = np.flatnonzero(rows)
        labels, group = group_rows([*ctx, topic, api_key, rep], idx)
        bounds = self.histograms[self.duration].bounds
        out.histograms.append((self.duration, labels,
                               *BatchHistogram.summarize(bounds, labels, group, view.integer("l7.latency_ns")[idx] / 1e9)))


SCTP_CHUNK_TYPE = "l4.SCTP.chunk_type"


class SctpHandler(Handler):
    """Cilium ``pkg/hubble/metrics/sctp/handler.go`` @``9206177f`` (test @``4a1ee862``): one
    count per FORWARDED/REDIRECTED flow with an IP and an SCTP section whose ``chunk_type``
    (``SCTPChunkType``: INIT, INIT_ACK, SHUTDOWN, SHUTDOWN_ACK, SHUTDOWN_COMPLETE, ABORT) is
    not UNSUPPORTED, the value an absent field reads as. The plugin's help text names
    ``hubble_sctp_flags_total``; the registered counter, used here, is
    ``hubble_sctp_chunk_types_total``."""

    name = "sctp"

    def __init__(self, spec: MetricSpec, registry: CollectorRegistry) -> None:
        super().__init__(spec, registry)
        self.paths |= {"IP.ipVersion", SCTP_CHUNK_TYPE}
        self.chunks = self.counter("sctp_chunk_types_total", "SCTP chunk type occurrences",
                                   ["chunk_type", "family", *self.ctx.label_names])

    def observe(self, view: FlowView, valid: np.ndarray, out: Increments) -> None:
        chunk = view.text(SCTP_CHUNK_TYPE, "UNSUPPORTED")
        rows = (valid & is_verdict(view, "FORWARDED", "REDIRECTED") & view.present("IP") & view.present("l4.SCTP")
                & ~view.equals(SCTP_CHUNK_TYPE, "UNSUPPORTED", "UNSUPPORTED"))
        if not rows.any():
            return
        view, rows = view.select(rows)
        chunk = view.text(SCTP_CHUNK_TYPE, "UNSUPPORTED")
        family = view.text("IP.ipVersion", "IP_NOT_USED")
        out.count(self.chunks, group_counts([chunk, family, *self.ctx.values(view)], rows))


class FlowsPerPodHandler(Handler):
    """Cilium ``pkg/hubble/metrics/flows-per-pod/handler.go`` @``70f4076a``: every flow,
    labelled like ``flow``'s protocol and verdict; the pod comes from the context options
    (``sourceContext=pod;destinationContext=pod``)."""

    name = "flows-per-pod"

    def __init__(self, spec: MetricSpec, registry: CollectorRegistry) -> None:
        super().__init__(spec, registry)
        self.paths |= PROTOCOL_PATHS
        self.flows = self.counter("flows_per_pod_total", "Total number of flows per pod",
                                  ["protocol", "verdict", *self.ctx.label_names])

    def observe(self, view: FlowView, valid: np.ndarray, out: Increments) -> None:
        out.count(self.flows, group_counts([flow_protocol(view), verdict(view), *self.ctx.values(view)], valid))


# handlers the agent has that flowtrail does not implement: a clear error instead of silence
UNSUPPORTED = {"nld": "network latency metrics"}
_handlers: list[type[Handler]] = [
    FlowHandler, DropHandler, DnsHandler, TcpHandler, IcmpHandler, PortDistributionHandler, PolicyHandler,
    FlowsToWorldHandler, HttpHandler, HttpV2Handler, KafkaHandler, FlowsPerPodHandler, SctpHandler]
HANDLERS: dict[str, type[Handler]] = {h.name: h for h in _handlers}


class HubbleMetrics:
    """Hubble's metrics for the enabled ``specs``, registered in ``registry``."""

    def __init__(self, specs: list[str], registry: CollectorRegistry) -> None:
        # client_golang exposes no *_created series; neither do we (they would double the series)
        prometheus_client.disable_created_metrics()
        self.specs = list(specs)
        self.registry = registry
        self.handlers: list[Handler] = []
        seen: dict[str, str] = {}
        for text in specs:
            spec = parse_spec(text)
            cls = HANDLERS.get(spec.name)
            if cls is None:
                if spec.name in UNSUPPORTED:
                    raise ValueError(f"metric {text!r}: {spec.name} ({UNSUPPORTED[spec.name]}) is not supported "
                                     f"by flowtrail")
                raise ValueError(f"metric {text!r}: unknown metric {spec.name!r} "
                                 f"(known: {', '.join(sorted(HANDLERS))})")
            if spec.name in seen:
                raise ValueError(f"metric {text!r}: {spec.name} is already enabled by {seen[spec.name]!r}")
            if {spec.name, *seen} >= {"http", "httpV2"}:
                raise ValueError(f"metric {text!r}: http and httpV2 cannot be enabled together")
            seen[spec.name] = text
            self.handlers.append(cls(spec, registry))
        self.lost_events: Counter | None = None
        if self.handlers:
            self.lost_events = Counter("lost_events_total", "Number of lost events", ["source"], namespace=NAMESPACE,
                                       registry=registry)
        self.paths: set[str] = set()
        self._counters: dict[str, Counter] = {f"{NAMESPACE}_lost_events_total": self.lost_events} \
            if self.lost_events is not None else {}
        self._histograms: dict[str, BatchHistogram] = {}
        for h in self.handlers:
            self.paths |= h.paths
            self._counters.update(h.counters)
            self._histograms.update(h.histograms)
        # children by (counter, labels): labels() takes a lock and validates on every call
        self._children: dict[tuple[str, tuple[str, ...]], Any] = {}

    def observe(self, table: pa.Table) -> None:
        """Count one decoded table (rows without a flow, e.g. lost events, are skipped by the
        handlers; lost events feed ``hubble_lost_events_total``)."""
        self.apply(self.compute(table))

    def compute(self, table: pa.Table) -> Increments:
        """What counting ``table`` adds to the metrics; the registry is not touched."""
        out = Increments()
        if not self.handlers or table.num_rows == 0:
            return out
        names = table.schema.names
        if "lost_events" in names and self.lost_events is not None:
            self._lost(table.column("lost_events"), out)
        if "flow" not in names:
            raise ValueError("table has no 'flow' column (decode with Decoder(HubbleMetrics.paths))")
        view = FlowView(table.column("flow"))
        if not view.valid.any():
            return out
        for h in self.handlers:
            h.observe(view, view.valid, out)
        return out

    def apply(self, inc: Increments) -> None:
        """Add what :meth:`compute` found (of this metric set, in this or another process)."""
        children = self._children
        for name, groups in inc.counts:
            counter = self._counters[name]
            for labels, n, trace in groups:
                child = children.get((name, labels))
                if child is None:
                    child = children[(name, labels)] = counter.labels(*labels)
                if trace:
                    child.inc(n, exemplar={"traceID": trace})
                else:
                    child.inc(n)
        for name, series, counts, sums, last in inc.histograms:
            self._histograms[name].merge(series, counts, sums, last)

    def _lost(self, lost: pa.ChunkedArray, out: Increments) -> None:
        valid = np.asarray(lost.is_valid().to_numpy(zero_copy_only=False), bool)
        if not valid.any():
            return
        view = FlowView(lost)
        source = map_text(view.text("source", "UNKNOWN_LOST_EVENT_SOURCE"), str.lower)
        out.count(f"{NAMESPACE}_lost_events_total", group_counts([source], valid, view.integer("num_events_lost")))
