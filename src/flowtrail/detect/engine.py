"""The detection engine: decoded batches in, alerts out. Pure: no files, no network.

Per batch: each enabled rule selects rows with its `where` conditions (detect/conditions.py) and
its FlowFilter scope (the core's compiled filters), sorts them by flow time and hands them, group
by group, to its aggregator. Features are computed on demand (detect/features.py): those the
conditions read on the rows still in question, those the aggregation and alerts read on the rows
some rule selected.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from flowtrail.detect.aggregate import Aggregator, Alerts, FieldValues, Group, RateSpike, make_aggregator
from flowtrail.detect.alerts import Alert, iso_ns
from flowtrail.detect.conditions import MaskFn, compile_where, needs_baseline, needs_policy
from flowtrail.detect.features import FEATURE_PATHS, Batch, Enrichment, Frame
from flowtrail.detect.rules import Rule, RuleError
from flowtrail.detect.state import (
    StateError,
    alert_from_state,
    alert_state,
    member,
    need,
    opt_int,
    rule_digest,
)
from flowtrail.filters import FilterSet
from flowtrail.model.timeutil import format_ns
from flowtrail.util import compute as pc


def _not_label(*words: str) -> str:
    """RE2 for one non-empty DNS label that is none of `words` (RE2 has no lookahead): walk the
    trie of the words; at each node either leave the trie (a char no word continues with, then
    anything) or follow a word's next char; stopping is allowed where no word ends."""
    trie: dict[str, Any] = {}
    for w in words:
        node = trie
        for ch in w:
            node = node.setdefault(ch, {})
        node[""] = {}

    def rx(node: dict[str, Any], root: bool) -> str:
        kids = sorted(k for k in node if k)
        alts = ["[^" + re.escape("".join(kids)) + '.\"\\\\\\n][^."\\n]*']
        alts += [re.escape(k) + rx(node[k], False) for k in kids]
        if not root and "" not in node:
            alts.append("")
        return "(?:" + "|".join(alts) + ")"
    return rx(trie, True)


# Named prefilter fragments: each must match a superset of the lines the rules using it select.
PREFILTER_MACROS = {
    # DNS records whose name is outside the cluster: last label not local/svc/internal (the
    # rules' dns.cluster_local), at least two labels
    "dns_external": '"query":"[^"\\n]*[^."\\n]\\.' + _not_label("local", "svc", "internal") + '\\.?"',
    # the destination endpoint (no nested objects before its labels) carries the reserved label
    "world_destination": '"destination":\\{[^{}\\n]*"reserved:world"',
    "apiserver_destination": '"destination":\\{[^{}\\n]*"reserved:kube-apiserver"',
}

LOST_GAP_NS = 300 * 1_000_000_000
EVICT_EVERY_NS = 60 * 1_000_000_000
_ENTITY_WORKLOAD = {"src.key": "src.wl_key", "dst.key": "dst.wl_key", "conn.client": "conn.client_wl"}


@dataclass
class CompiledRule:
    rule: Rule
    scope: FilterSet | None
    where: MaskFn
    agg: Aggregator
    alerts: Alerts
    needles: tuple[str, ...] | None  # RE2 fragments; None: every line may matter
    matched: int = 0
    digest: str = ""  # detect/state.py rule_digest: the key of its saved state


@dataclass
class EngineStats:
    flows: int = 0
    lost_events: int = 0
    batches: int = 0
    rule_rows: Counter[str] = field(default_factory=Counter)
    evicted: int = 0  # idle groups forgotten by drain()


class Engine:
    def __init__(self, rules: list[Rule], enrichment: Enrichment | None = None, baseline: Any = None,
                 policy: Any = None, node_silence_ns: int | None = None) -> None:
        """`policy`: a flowtrail.policy.replay.Replayer; with it, flows get the `policy.*` features
        (bypass of the loaded policies and the evaluator's explanation).

        `node_silence_ns`: raise `flow-gap.node-silent` when a node that sent flows sends none for
        this long while the others go on. Only for inputs where every line is decoded (the live
        monitor): a prefiltered input hides most of a node's flows."""
        self.node_silence_ns = node_silence_ns
        self.node_last: dict[str, int] = {}  # node -> newest flow time seen from it
        self.node_alerted: set[tuple[str, int]] = set()  # (node, start of the silence)
        self.gap_alerts: list[Alert] = []
        self.enrichment = enrichment or Enrichment()
        self.baseline = baseline
        self.policy = policy
        self.rules: list[CompiledRule] = []
        self.stats = EngineStats()
        self.lost_alerts: list[Alert] = []
        self.t0: int | None = None
        self.t_max: int | None = None  # newest flow time seen
        self._evicted_at = 0
        for r in rules:
            if not r.enabled:
                continue
            if (needs_baseline(r) or r.aggregate["function"] == "baseline_rate") and baseline is None:
                continue
            if needs_policy(r) and policy is None:
                continue
            scope = None
            if r.scope.get("allow") or r.scope.get("deny"):
                try:
                    scope = FilterSet.compile(r.scope.get("allow", []), r.scope.get("deny", []))
                except ValueError as exc:
                    raise RuleError(f"{r.source}: {r.id}: scope: {exc}") from None
            needles: tuple[str, ...] | None
            pre = r.value(r.prefilter) if isinstance(r.prefilter, str) else r.prefilter
            if pre == "all" or pre is None:
                needles = None
            else:
                # literal strings, RE2 fragments written `re:...`, or `@macro`
                frags = []
                for x in map(str, pre):
                    if x.startswith("@"):
                        if x[1:] not in PREFILTER_MACROS:
                            raise RuleError(f"{r.source}: {r.id}: unknown prefilter macro {x} "
                                            f"(known: {', '.join('@' + k for k in PREFILTER_MACROS)})")
                        frags.append(PREFILTER_MACROS[x[1:]])
                    else:
                        frags.append(x[3:] if x.startswith("re:") else re.escape(x))
                needles = tuple(frags)
            self.rules.append(CompiledRule(r, scope, compile_where(r), make_aggregator(r, baseline), Alerts(r),
                                           needles, digest=rule_digest(r)))
        paths = set(FEATURE_PATHS)
        if policy is not None:
            from flowtrail.policy.replay import REPLAY_PATHS
            paths |= set(REPLAY_PATHS)
        for cr in self.rules:
            if cr.scope is not None:
                paths |= cr.scope.paths
        self.paths = sorted(paths)

    def prefilter(self) -> list[str] | None:
        """Patterns (RE2/Hyperscan syntax, never spanning a newline) of which a line must match
        one to be decoded; None: every line. Each rule's fragments match a superset of the lines
        its conditions select."""
        out: list[str] = ['"lost_events"']
        for cr in self.rules:
            if cr.needles is None:
                return None
            out.extend(n for n in cr.needles if n not in out)
        return out

    def start_at(self, t0_ns: int | None) -> None:
        """The input's first flow time, when known before decoding (the prefilter may skip the
        early lines): warm-ups count from it."""
        if t0_ns is None or self.t0 is not None:
            return
        self.t0 = t0_ns
        for cr in self.rules:
            if isinstance(cr.agg, RateSpike) and cr.agg.start is None:
                cr.agg.start = t0_ns

    # ------------------------------------------------------------------ per batch
    def process(self, table: pa.Table, clock: tuple[pa.Array, pa.Array] | None = None) -> None:
        """Feed one decoded batch (the decoder's envelope table), in flow-time order.

        ``clock``: (flow times in ns, node names) of every flow of the batch, when ``table``
        holds only the lines :meth:`prefilter` selected (the monitor's decode workers send no
        more): the engine's time, warm-ups and node silences then follow every flow, as they
        do when ``table`` holds them all."""
        self.stats.batches += 1
        if table.num_rows and "lost_events" in table.column_names:
            lost = table.column("lost_events")
            n_lost = len(lost) - lost.null_count
            if n_lost:
                self._lost_events(table, lost)
            flow = table.column("flow")
            if flow.null_count:
                table = table.filter(pc.is_valid(flow))
        if clock is not None:
            self.stats.flows += len(clock[0])
            self._clock(clock[0], clock[1])
        if table.num_rows == 0:
            return
        batch = Batch(table, self.enrichment)
        if self.policy is not None:
            self._policy_features(table, batch)
        fr = batch.all
        if clock is None:
            self.stats.flows += fr.num_rows
            self._clock(fr["time"], table.column("node_name") if "node_name" in table.column_names else None)
        selected: list[tuple[CompiledRule, np.ndarray]] = []
        for cr in self.rules:
            m = cr.where(fr, self.baseline)
            if cr.scope is not None and m.any():
                m &= cr.scope.mask(table)
            if m.any():
                selected.append((cr, m))
        if not selected:
            return
        # the features rules group, count and report by are computed once, on the rows some rule
        # selected, and each rule picks its rows from them
        chosen = np.logical_or.reduce([m for _, m in selected])
        rows = np.flatnonzero(chosen)
        picked = batch.frame(rows)
        at = np.cumsum(chosen) - 1  # batch row -> position among the chosen rows
        for cr, m in selected:
            idx = pa.array(at[np.flatnonzero(m)])
            # flow-time order, ties in batch order (sort_indices is stable)
            order = pc.take(idx, pc.sort_indices(pc.take(picked["time"], idx)))
            self.stats.rule_rows[cr.rule.id] += len(order)
            self._aggregate(cr, picked, np.asarray(order.to_numpy(zero_copy_only=False), dtype=np.int64))

    def _clock(self, time: pa.Array, nodes: pa.Array | pa.ChunkedArray | None) -> None:
        if not len(time):
            return
        if self.t0 is None:
            # warm-ups count from the first flow of the input, not from a rule's first match
            self.start_at(pc.min(time).as_py())
        newest = pc.max(time).as_py()
        if newest is not None and (self.t_max is None or newest > self.t_max):
            self.t_max = newest
        if self.node_silence_ns and nodes is not None:
            self._node_silence(nodes, time)

    def _policy_features(self, table: pa.Table, batch: Batch) -> None:
        from flowtrail.policy.replay import classify_audit
        rv = self.policy.feed(table)
        found = classify_audit(rv)
        bypass = found["bypass"]
        # one explanation per connection, not per bypassing flow (a bypass repeats for every
        # packet of the connection)
        rows = np.flatnonzero(bypass)
        at = np.full(batch.n, -1, dtype=np.int64)
        texts: list[str | None] = []
        if rows.size:
            keys, inv = np.unique(rv.key[rows], return_inverse=True)
            texts = [rv.verdicts[int(k)].explanation for k in keys.tolist()]
            at[rows] = inv
        batch.add("policy.bypass", pa.array(bypass))
        batch.add("policy.unexpected_drop", pa.array(found["unexpected-drop"]))
        batch.add("policy.explain", pc.take(pa.array(texts, pa.string()), pa.array(at, mask=at < 0)))

    def _aggregate(self, cr: CompiledRule, fr: Frame, rows: np.ndarray) -> None:
        """Hand the rule's selected rows (positions in `fr`, in flow-time order) to its aggregator,
        group by group. Whole columns are read only for grouping and counting; entity, evidence
        and peers only at the rows alerts report."""
        rule = cr.rule
        at = pa.array(rows)

        def selected(name: str) -> pa.Array:
            return pc.take(fr[name], at)
        keys = [selected(k) for k in rule.group_by]
        keys = [pc.cast(k, pa.string()) if not pa.types.is_string(k.type) else k for k in keys]
        key = keys[0] if len(keys) == 1 else pc.binary_join_element_wise(
            *[pc.fill_null(k, "-") for k in keys], "\x1f")
        key = pc.fill_null(key, "-")
        enc = pc.dictionary_encode(key)
        if isinstance(enc, pa.ChunkedArray):
            enc = enc.combine_chunks()
        codes = np.asarray(enc.indices.to_numpy(zero_copy_only=False), dtype=np.int64)
        names = enc.dictionary.to_pylist()
        times = np.asarray(selected("time").to_numpy(zero_copy_only=False), dtype=np.int64)
        order = np.argsort(codes, kind="stable")
        bounds = np.flatnonzero(np.diff(codes[order])) + 1
        value_col = rule.aggregate.get("field")
        values_all = FieldValues(selected(value_col)) if value_col and rule.aggregate["function"] == "value_count" \
            else None

        def value(name: str, i: int) -> Any:
            return fr[name][int(rows[i])].as_py()

        def row(i: Any, what: str) -> Any:
            if what == "peers":
                arr = pc.take(fr[rule.peers], pa.array(rows[np.asarray(i, dtype=np.int64)]))
                vc = pc.value_counts(pc.fill_null(pc.cast(arr, pa.string()), "-"))
                return dict(zip(vc.field("values").to_pylist(), vc.field("counts").to_pylist(), strict=True))
            i = int(i)
            if what == "entity":
                return value(rule.entity, i)
            if what == "workload":
                wl = _ENTITY_WORKLOAD.get(rule.entity)
                return value(wl, i) if wl else None
            if what == "uuid":
                return value("uuid", i)
            if what == "explain":
                return value(rule.explain, i) if rule.explain else None
            return _render(fr, int(rows[i]))

        for part in np.split(order, bounds):
            if not len(part):
                continue
            g = Group(names[codes[part[0]]], part, times[part])
            cand = cr.agg.candidates(g, values_all.at(part) if values_all is not None else None)
            cr.alerts.assign(g, cand, cr.agg, row)

    def _lost_events(self, table: pa.Table, lost: Any) -> None:
        rows = table.filter(pc.is_valid(lost))
        n = rows.num_rows
        self.stats.lost_events += n
        tcol = rows.column("time")
        try:
            times = pc.cast(pc.cast(tcol, pa.timestamp("ns", tz="UTC")), pa.int64()).to_pylist()
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            times = [0] * n
        valid = [t for t in times if t is not None]
        if not valid:
            valid = [self.t_max or 0]
        t0, t1 = min(valid), max(valid)
        a = self.lost_alerts[-1] if self.lost_alerts else None
        # one alert per gap: lost events more than LOST_GAP_NS after the previous ones are a new incident
        if a is None or t0 - a.last_seen > LOST_GAP_NS:
            a = Alert(
                rule="flow-gap.lost-events", title="Hubble lost flow events", category="flow-gap",
                severity="medium", mitre=["T1562.006"], entity={"namespace": None, "pod": None, "workload": None},
                group="lost_events", first_seen=t0, detected_at=t0, last_seen=t1,
                description="Hubble reported lost events: its ring buffer or a relay queue overflowed, so flows "
                            "in this period are missing and detections may be blind to them.",
                remediation="Raise the Hubble event buffer (hubble.eventBufferCapacity) or the relay's buffer, "
                            "or reduce monitor aggregation load; check `hubble observe` for LOST events.")
            self.lost_alerts.append(a)
        # count events lost, not records: one record reports a whole burst
        a.count += events_lost(rows.column("lost_events")) or n
        a.details["lost_records"] = a.details.get("lost_records", 0) + n
        a.last_seen = max(a.last_seen, t1)

    def _node_silence(self, nodes: Any, times: Any) -> None:
        """Gaps longer than node_silence_ns between consecutive flows of one node, and nodes silent
        since then up to the newest flow of any node. A silence is keyed by the node and the time
        of its last flow before it, and detected at that time plus the threshold, so a stream cut
        into batches raises the same alerts as one batch."""
        assert self.node_silence_ns is not None
        limit = self.node_silence_ns
        enc = pc.dictionary_encode(pc.fill_null(nodes, ""))
        if isinstance(enc, pa.ChunkedArray):
            enc = enc.combine_chunks()
        codes = np.asarray(enc.indices.to_numpy(zero_copy_only=False), np.int64)
        names = enc.dictionary.to_pylist()
        t = np.asarray(times.to_numpy(zero_copy_only=False), np.int64)
        order = np.lexsort((t, codes))
        codes, t = codes[order], t[order]
        bounds = np.flatnonzero(np.diff(codes)) + 1
        # few nodes: one step per node, the gaps themselves are found with numpy
        for part in np.split(np.arange(len(codes)), bounds):
            if not len(part):
                continue
            name = names[codes[part[0]]]
            if not name:
                continue
            ts = t[part]
            prev = self.node_last.get(name)
            seq = ts if prev is None else np.concatenate([[prev], ts])
            for i in np.flatnonzero(np.diff(seq) > limit).tolist():
                self._silent(name, int(seq[i]))
            self.node_last[name] = max(int(ts[-1]), prev or 0)
        horizon = self.t_max or 0
        for name, last in self.node_last.items():
            if horizon - last > limit:
                self._silent(name, last)

    def _silent(self, node: str, since: int) -> None:
        if (node, since) in self.node_alerted:
            return
        self.node_alerted.add((node, since))
        assert self.node_silence_ns is not None
        at = since + self.node_silence_ns
        a = Alert(
            rule="flow-gap.node-silent", title="A node stopped sending flows", category="flow-gap",
            severity="medium", mitre=["T1562.006"], entity={"namespace": None, "pod": None, "workload": None},
            group=f"node:{node}", first_seen=since, detected_at=at, last_seen=at,
            description=f"Node {node} sent no flows for {self.node_silence_ns / 1e9:.0f}s while other nodes "
                        "did: its Cilium agent, Hubble or exporter stopped, or the node is gone. Traffic on "
                        "it is invisible to every detection meanwhile.",
            remediation="Check the cilium agent pod on the node (kubectl -n kube-system get pods -o wide), its "
                        "Hubble status (cilium status; hubble observe --node NAME) and the exporter/relay path.",
            count=1, details={"node": node, "silent_since": iso_ns(since), "threshold_s": self.node_silence_ns / 1e9})
        self.gap_alerts.append(a)

    # ------------------------------------------------------------------ state across restarts
    def dump_state(self) -> dict[str, Any]:
        """What process() carries between batches, as detect/state.py saves it."""
        lost = self.lost_alerts[-1] if self.lost_alerts else None
        doc: dict[str, Any] = {
            "engine": {"t0": self.t0, "t_max": self.t_max, "evicted_at": self._evicted_at,
                       "node_last": self.node_last,
                       "node_alerted": [[n, t] for n, t in self.node_alerted],
                       "lost_alert": alert_state(lost) if lost is not None else None,
                       "gap_alerts": [alert_state(a) for a in self.gap_alerts]},
            "rules": [{"id": cr.rule.id, "digest": cr.digest, "function": cr.rule.aggregate["function"],
                       "agg": cr.agg.dump(), **cr.alerts.dump()} for cr in self.rules],
        }
        names = getattr(self.policy, "dns_names", None)
        if isinstance(names, dict):
            doc["policy_dns"] = {ip: sorted(ns) for ip, ns in names.items()}
        return doc

    def load_state(self, doc: dict[str, Any], *, resume_nodes: bool = True) -> tuple[int | None, list[str]]:
        """Take over a dump_state() document: (rules restored, ids of saved rules dropped because
        they are gone or their definition changed). Restored is None, and nothing is taken over,
        when no saved rule matches one of this engine (another rule set). All or nothing:
        StateError (nothing changed) when the document is malformed.

        `resume_nodes`: take over when each node last sent flows; only right when the input
        resumes where the state left off (file offsets, relay positions), not from a pipe whose
        flows during the downtime are gone, which would read as every node falling silent."""
        eng = member(doc, "engine", dict, "state")
        saved = member(doc, "rules", list, "state")
        mine = {(cr.rule.id, cr.digest): cr for cr in self.rules}
        staged: list[tuple[CompiledRule, Aggregator, Alerts]] = []
        dropped: list[str] = []
        for i, r in enumerate(saved):
            what = f"rules[{i}]"
            rid = member(r, "id", str, what)
            cr = mine.pop((rid, member(r, "digest", str, what)), None)
            if cr is None:
                dropped.append(rid)
                continue
            agg = make_aggregator(cr.rule, self.baseline)
            alerts = Alerts(cr.rule)
            try:
                agg.load(member(r, "agg", dict, what))
                alerts.load(r)
            except StateError as exc:
                raise StateError(f"{what} ({rid}): {exc}") from None
            staged.append((cr, agg, alerts))
        if saved and not staged:
            return None, dropped
        t0, t_max = opt_int(eng, "t0", "engine"), opt_int(eng, "t_max", "engine")
        evicted_at = opt_int(eng, "evicted_at", "engine") or 0
        node_last = member(eng, "node_last", dict, "engine")
        need(all(isinstance(t, int) and not isinstance(t, bool) for t in node_last.values()),
             "engine.node_last: not {node: time}")
        pairs = member(eng, "node_alerted", list, "engine")
        need(all(isinstance(p, list) and len(p) == 2 and isinstance(p[0], str) and isinstance(p[1], int)
                 for p in pairs), "engine.node_alerted: not [node, time] pairs")
        lost_doc = eng.get("lost_alert")
        lost = [alert_from_state(lost_doc, "engine.lost_alert")] if lost_doc is not None else []
        gaps = [alert_from_state(a, f"engine.gap_alerts[{i}]") for i, a in enumerate(eng.get("gap_alerts", []))]
        dns = doc.get("policy_dns")
        need(dns is None or (isinstance(dns, dict) and all(
            isinstance(v, list) and all(isinstance(n, str) for n in v) for v in dns.values())),
            "policy_dns: not {address: [names]}")
        # everything checked: take it over
        for cr, agg, alerts in staged:
            cr.agg, cr.alerts = agg, alerts
        self.t0, self.t_max, self._evicted_at = t0, t_max, evicted_at
        if resume_nodes:
            self.node_last = node_last
        self.node_alerted = {(n, t) for n, t in pairs}
        self.lost_alerts, self.gap_alerts = lost, gaps
        names = getattr(self.policy, "dns_names", None)
        if dns and isinstance(names, dict):
            for ip, ns in dns.items():
                names.setdefault(ip, set()).update(ns)
        return len(staged), dropped

    def growing(self, a: Alert) -> bool:
        """Whether an alert handed out by drain() can still gain flows: a rule's alert until its
        suppression interval ends, the newest lost-events alert while its gap may go on."""
        if a.rule == "flow-gap.lost-events":
            # lost events more than LOST_GAP_NS after it open a new alert
            return bool(self.lost_alerts) and self.lost_alerts[-1] is a and \
                (self.t_max or 0) - a.last_seen <= LOST_GAP_NS
        return a.until > (self.t_max if self.t_max is not None else 0)

    def handed_out(self) -> list[Alert]:
        """Alerts drain() handed out that can still gain flows (after a restore: those restored)."""
        out = [a for cr in self.rules for a in cr.alerts.open.values() if a.emitted and self.growing(a)]
        out.extend(a for a in self.lost_alerts[-1:] if a.emitted)
        return out

    # ------------------------------------------------------------------ results
    def alerts(self) -> list[Alert]:
        out = [a for cr in self.rules for a in cr.alerts.all()]
        out.extend(self.lost_alerts)
        out.extend(self.gap_alerts)
        return sorted(out, key=lambda a: (a.detected_at, a.rule, a.group))

    def drain(self) -> list[Alert]:
        """For a long-running monitor: the alerts opened since the previous drain, in detection
        order. Alerts already handed out are then forgotten once they can no longer grow (closed,
        or past their suppression interval), so memory stays bounded however long the run."""
        new: list[Alert] = []
        horizon = self.t_max if self.t_max is not None else 0
        for cr in self.rules:
            al = cr.alerts
            new.extend(a for a in al.done if not a.emitted)
            al.done.clear()
            for key, a in list(al.open.items()):
                if not a.emitted:
                    new.append(a)
                elif a.until <= horizon:
                    # suppression over: a later row opens a fresh alert anyway
                    del al.open[key]
        if self.t_max is not None and self.t_max - self._evicted_at >= EVICT_EVERY_NS:
            self._evicted_at = self.t_max
            # a margin of one eviction period for flows arriving slightly out of order
            for cr in self.rules:
                self.stats.evicted += cr.agg.evict(self.t_max - EVICT_EVERY_NS)
        new.extend(a for a in self.lost_alerts if not a.emitted)
        if len(self.lost_alerts) > 1:
            del self.lost_alerts[:-1]
        new.extend(self.gap_alerts)
        self.gap_alerts = []
        if len(self.node_alerted) > 10_000:
            # a silence is re-detected only while its start is within the newest window
            self.node_alerted = {k for k in self.node_alerted if k[1] >= horizon - 86_400 * 10**9}
        for a in new:
            a.emitted = True
        return sorted(new, key=lambda a: (a.detected_at, a.rule, a.group))


def events_lost(lost: Any) -> int:
    """Events lost according to Hubble's lost_events records (null rows are not records): the sum of
    their num_events_lost, a record without one counting as one."""
    valid = pc.is_valid(lost)
    try:
        n = pc.fill_null(pc.cast(pc.struct_field(lost, "num_events_lost"), pa.int64()), 1)
        return int(pc.sum(pc.if_else(valid, n, 0)).as_py() or 0)
    except (KeyError, pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        return int(pc.sum(pc.cast(valid, pa.int64())).as_py() or 0)


RENDER_COLUMNS = ("time", "src.key", "src.port", "dst.key", "dst.port", "proto", "verdict", "dns.query", "dns.rcode",
                  "dst.name", "is_reply")


def _render(fr: Frame, i: int) -> str:
    r = {k: fr[k][i].as_py() for k in RENDER_COLUMNS}
    arrow = "<-" if r["is_reply"] else "->"
    src = f"{r['src.key']}:{r['src.port']}" if r["src.port"] is not None else str(r["src.key"])
    dst = f"{r['dst.key']}:{r['dst.port']}" if r["dst.port"] is not None else str(r["dst.key"])
    extra = ""
    if r["dns.query"]:
        extra = f" dns {r['dns.query']}" + (f" rcode={r['dns.rcode']}" if r["dns.rcode"] is not None else "")
    elif r["dst.name"]:
        extra = f" ({r['dst.name']})"
    return f"{format_ns(r['time'], 'RFC3339Nano')} {src} {arrow} {dst} {r['proto'] or '-'} {r['verdict']}{extra}"
