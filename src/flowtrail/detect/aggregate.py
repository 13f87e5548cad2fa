"""Stateful, incremental aggregation of a rule's matching rows into alerts.

Rows arrive per batch, already selected by the rule and sorted by flow time. For each group
(the rule's `group_by` key) an aggregator marks the rows at which the condition holds
("candidates"); `Alerts.assign` then opens an alert at the first candidate, and every later row
of the group joins it until the suppression interval has passed. State carried between batches
is bounded (window tails, value→last-seen maps within the timespan), so feeding a file as one
batch or as many small ones gives the same alerts.

Work is per group with numpy (`event_count`, `baseline_rate`, `match`); `value_count` and
`rate_spike` step through the group's rows because a sliding distinct count has no closed
vectorized form, but they only ever see rows their rule selected (drops, DNS answers), not the
flow stream.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from flowtrail.detect.alerts import EVIDENCE_LIMIT, Alert, entity_of
from flowtrail.detect.baseline import MINUTE_NS, Baseline
from flowtrail.detect.rules import Rule
from flowtrail.detect.state import (
    alert_state,
    alerts_from_state,
    need,
    opt_int,
    pack_arrays,
    pack_maps,
    unpack_arrays,
    unpack_maps,
)

HOUR_NS = 60 * MINUTE_NS


@dataclass
class Group:
    """Rows of one group in one batch (indices into the batch's selected rows)."""

    key: str
    idx: np.ndarray
    times: np.ndarray


class Aggregator:
    def __init__(self, rule: Rule) -> None:
        self.rule = rule
        # the aggregate value at each row of the last group handed to candidates()
        self.values: np.ndarray = np.zeros(0, dtype=np.int64)
        self.starts: np.ndarray = np.zeros(0, dtype=np.int64)  # earliest time in the window per row

    def candidates(self, g: Group, values: list[Any] | None) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def evict(self, horizon: int) -> int:
        """Forget groups idle since before `horizon` (flow time, ns) whose state can no longer
        change a verdict; returns how many. Keeps a long-running monitor's memory bounded by the
        groups active within a window, not by every group ever seen."""
        return 0

    def details(self, at: int) -> dict[str, Any]:
        """What the alert opened at row `at` of the last group records about the aggregate."""
        return {"events_in_window": int(self.values[at]), "threshold": getattr(self, "threshold", 0)}

    def dump(self) -> dict[str, Any]:
        """The window state carried from batch to batch, for detect/state.py (JSON with numpy arrays)."""
        return {}

    def load(self, doc: dict[str, Any]) -> None:
        """Take over a dump() of an aggregator of the same rule definition (StateError if malformed);
        called on a fresh aggregator, so a failure leaves the running one untouched."""


class Match(Aggregator):
    def candidates(self, g: Group, values: list[Any] | None) -> np.ndarray:
        self.starts = g.times
        return np.ones(len(g.idx), dtype=bool)


class EventCount(Aggregator):
    def __init__(self, rule: Rule) -> None:
        super().__init__(rule)
        self.window = rule.duration(rule.aggregate.get("timespan", "5m"))
        self.threshold = max(1, int(float(rule.value(rule.aggregate["threshold"]))))
        self.tails: dict[str, np.ndarray] = {}

    def candidates(self, g: Group, values: list[Any] | None) -> np.ndarray:
        tail = self.tails.get(g.key)
        allt = g.times if tail is None else np.concatenate([tail, g.times])
        off = 0 if tail is None else len(tail)
        pos = np.arange(off, off + len(g.times))
        lo = np.searchsorted(allt, g.times - self.window, side="left")
        counts = pos - lo + 1
        self.values = counts
        self.starts = allt[lo]
        keep = allt[allt >= allt[-1] - self.window][-(self.threshold - 1):] if self.threshold > 1 else allt[:0]
        self.tails[g.key] = keep
        return counts >= self.threshold

    def evict(self, horizon: int) -> int:
        old = [k for k, t in self.tails.items() if not len(t) or int(t[-1]) < horizon - self.window]
        for k in old:
            del self.tails[k]
        return len(old)

    def dump(self) -> dict[str, Any]:
        return {"tails": pack_arrays(self.tails)}

    def load(self, doc: dict[str, Any]) -> None:
        # taken as saved, in the order the engine kept them (flows slightly out of order included)
        self.tails = unpack_arrays(doc.get("tails"), "tails")


class ValueCount(Aggregator):
    def __init__(self, rule: Rule) -> None:
        super().__init__(rule)
        self.window = rule.duration(rule.aggregate.get("timespan", "5m"))
        self.threshold = max(1, int(float(rule.value(rule.aggregate["threshold"]))))
        self.seen: dict[str, OrderedDict[Any, int]] = {}

    def candidates(self, g: Group, values: list[Any] | None) -> np.ndarray:
        assert values is not None
        seen = self.seen.setdefault(g.key, OrderedDict())
        out = np.zeros(len(g.idx), dtype=bool)
        counts = np.zeros(len(g.idx), dtype=np.int64)
        starts = g.times.copy()
        self.values, self.starts = counts, starts
        window, threshold = self.window, self.threshold
        for i, (t, v) in enumerate(zip(g.times.tolist(), values, strict=True)):
            if v is None:
                counts[i] = len(seen)
                continue
            if v in seen:
                seen.move_to_end(v)
            seen[v] = t
            while seen:
                first_v, first_t = next(iter(seen.items()))
                if first_t >= t - window:
                    break
                del seen[first_v]
            counts[i] = len(seen)
            starts[i] = next(iter(seen.values()))
            if len(seen) >= threshold:
                out[i] = True
        if not seen:
            del self.seen[g.key]
        return out

    def details(self, at: int) -> dict[str, Any]:
        return {"distinct": int(self.values[at]), "threshold": self.threshold}

    def evict(self, horizon: int) -> int:
        # an OrderedDict kept in recency order: its last value is the group's newest
        old = [k for k, seen in self.seen.items() if not seen or next(reversed(seen.values())) < horizon - self.window]
        for k in old:
            del self.seen[k]
        return len(old)

    def dump(self) -> dict[str, Any]:
        # the recency order is the state: pack_maps keeps each OrderedDict's order
        return {"seen": pack_maps(self.seen)}

    def load(self, doc: dict[str, Any]) -> None:
        seen = unpack_maps(doc.get("seen"), "seen", scalar=True)
        self.seen = {k: OrderedDict(pairs) for k, pairs in seen.items()}
        for k, pairs in seen.items():
            need(len(self.seen[k]) == len(pairs), f"seen[{k!r}]: repeated value")


class RateSpike(Aggregator):
    """Rows in the last `timespan` ≥ max(threshold, factor × mean per timespan over the trailing
    `baseline_window`)."""

    def __init__(self, rule: Rule) -> None:
        super().__init__(rule)
        self.window = rule.duration(rule.aggregate.get("timespan", "1m"))
        self.history = rule.duration(rule.aggregate.get("baseline_window", "1h"))
        self.floor = float(rule.value(rule.aggregate["threshold"]))
        self.factor = float(rule.value(rule.aggregate.get("factor", 10)))
        # no verdict before the input has shown `warmup` of history: a namespace that drops at a
        # steady rate from the first minute is not a spike
        self.warmup = rule.duration(rule.aggregate.get("warmup", "2m"))
        self.recent: dict[str, deque[int]] = {}
        self.buckets: dict[str, dict[int, int]] = {}
        self.start: int | None = None

    def candidates(self, g: Group, values: list[Any] | None) -> np.ndarray:
        recent = self.recent.setdefault(g.key, deque())
        buckets = self.buckets.setdefault(g.key, {})
        if self.start is None:
            self.start = int(g.times[0])
        start = self.start
        out = np.zeros(len(g.idx), dtype=bool)
        counts = np.zeros(len(g.idx), dtype=np.int64)
        starts = g.times.copy()
        self.values, self.starts = counts, starts
        w, h = self.window, self.history
        n_hist = max(h // w, 1)
        for i, t in enumerate(g.times.tolist()):
            recent.append(t)
            while recent[0] < t - w:
                recent.popleft()
            b = t // w
            buckets[b] = buckets.get(b, 0) + 1
            # trailing buckets strictly before the current one; before an hour of history the
            # mean is over the time seen so far
            span = min(n_hist, max((b - start // w), 1))
            trailing = sum(buckets.get(k, 0) for k in range(b - span, b)) / span
            counts[i] = len(recent)
            starts[i] = recent[0]
            if t - start >= self.warmup and len(recent) >= self.floor and len(recent) >= self.factor * trailing:
                out[i] = True
        for k in [k for k in buckets if k < (int(g.times[-1]) // w) - n_hist - 1]:
            del buckets[k]
        return out

    def details(self, at: int) -> dict[str, Any]:
        return {"events_in_window": int(self.values[at]), "threshold": self.floor}

    def evict(self, horizon: int) -> int:
        # idle for longer than the trailing history plus a window: its buckets no longer count
        cut = horizon - self.history - self.window
        old = [k for k, r in self.recent.items() if not r or r[-1] < cut]
        for k in old:
            del self.recent[k]
            self.buckets.pop(k, None)
        return len(old)

    def dump(self) -> dict[str, Any]:
        return {"start": self.start, "recent": pack_arrays(self.recent), "buckets": pack_maps(self.buckets)}

    def load(self, doc: dict[str, Any]) -> None:
        self.start = opt_int(doc, "start", "rate_spike")
        self.recent = {k: deque(t.tolist()) for k, t in unpack_arrays(doc.get("recent"), "recent").items()}
        self.buckets = {k: dict(pairs) for k, pairs in unpack_maps(doc.get("buckets"), "buckets").items()}


class BaselineRate(Aggregator):
    """Rows of the group in the last `timespan` ≥ `threshold` (a floor against noise) and >
    `factor` × the group's normal count per timespan at the flow's UTC hour, as learned by
    `flowtrail baseline learn` (detect/baseline.py, the rate family named by `rates`).

    normal = mean·w + SIGMAS·σ·√w for a window of w minutes, from the learned per-minute mean and
    standard deviation at that hour: the top of the usual band, so an entity whose traffic is
    bursty by nature needs a bigger burst. An entity the baseline never saw (a new workload, a
    namespace that never dropped) has no normal: the floor alone decides, which keeps a flood
    from a brand-new workload visible without alerting on every new workload.

    State per group: the window's flow times (a flood only costs the window it fills) and the 24
    hourly limits, both forgotten by evict()."""

    SIGMAS = 3.0

    def __init__(self, rule: Rule, baseline: Baseline | None) -> None:
        super().__init__(rule)
        self.window = rule.duration(rule.aggregate.get("timespan", "1m"))
        self.floor = float(rule.value(rule.aggregate["threshold"]))
        self.factor = float(rule.value(rule.aggregate.get("factor", 3)))
        self.profile = baseline.rate_profile(str(rule.aggregate["rates"])) if baseline is not None else None
        self.tails: dict[str, np.ndarray] = {}
        self.limits: dict[str, np.ndarray] = {}  # per group: the smallest firing count per UTC hour
        self.key = ""
        self.hours = np.zeros(0, dtype=np.int64)  # UTC hour of each row of the last group

    def _normal(self, key: str) -> np.ndarray | None:
        i = self.profile.index.get(key) if self.profile is not None else None
        if i is None or self.profile is None:
            return None
        w = self.window / MINUTE_NS
        return self.profile.mean[i] * w + self.SIGMAS * self.profile.std[i] * math.sqrt(w)

    def _limits(self, key: str) -> np.ndarray:
        lim = self.limits.get(key)
        if lim is None:
            floor = max(1, math.ceil(self.floor))
            normal = self._normal(key)
            lim = np.full(24, floor, dtype=np.int64) if normal is None else np.maximum(
                floor, np.floor(self.factor * normal).astype(np.int64) + 1)
            self.limits[key] = lim
        return lim

    def candidates(self, g: Group, values: list[Any] | None) -> np.ndarray:
        tail = self.tails.get(g.key)
        allt = g.times if tail is None else np.concatenate([tail, g.times])
        off = 0 if tail is None else len(tail)
        lo = np.searchsorted(allt, g.times - self.window, side="left")
        counts = np.arange(off, off + len(g.times)) - lo + 1
        self.values, self.starts = counts, allt[lo]
        self.key, self.hours = g.key, (g.times // HOUR_NS) % 24
        # the whole window stays: the count and first_seen of a later alert must not depend on
        # where the batches were cut
        self.tails[g.key] = allt[np.searchsorted(allt, allt[-1] - self.window, side="left"):]
        return counts >= self._limits(g.key)[self.hours]

    def evict(self, horizon: int) -> int:
        old = [k for k, t in self.tails.items() if not len(t) or int(t[-1]) < horizon - self.window]
        for k in old:
            del self.tails[k]
            self.limits.pop(k, None)
        return len(old)

    def dump(self) -> dict[str, Any]:
        # the hourly limits are derived from the baseline file, which may have been relearned
        return {"tails": pack_arrays(self.tails)}

    def load(self, doc: dict[str, Any]) -> None:
        # taken as saved, in the order the engine kept them (flows slightly out of order included)
        self.tails = unpack_arrays(doc.get("tails"), "tails")

    def details(self, at: int) -> dict[str, Any]:
        h = int(self.hours[at])
        out: dict[str, Any] = {"events_in_window": int(self.values[at]),
                               "threshold": int(self._limits(self.key)[h]), "hour_utc": h}
        normal = self._normal(self.key)
        if normal is None or self.profile is None:
            out["baseline"] = "entity not in the baseline: floor only"
            return out
        i = self.profile.index[self.key]
        w = self.window / MINUTE_NS
        out["baseline"] = {"mean": round(float(self.profile.mean[i, h]) * w, 2),
                           "normal": round(float(normal[h]), 2), "peak_per_minute": int(self.profile.peak[i, h]),
                           "all_hours": bool(self.profile.pooled[i, h])}
        return out


def make_aggregator(rule: Rule, baseline: Baseline | None = None) -> Aggregator:
    fn = rule.aggregate["function"]
    if fn == "baseline_rate":
        return BaselineRate(rule, baseline)
    return {"match": Match, "event_count": EventCount, "value_count": ValueCount, "rate_spike": RateSpike}[fn](rule)


@dataclass
class Alerts:
    """Open and closed alerts of one rule."""

    rule: Rule
    open: dict[str, Alert] = field(default_factory=dict)
    done: list[Alert] = field(default_factory=list)

    def assign(self, g: Group, cand: np.ndarray, agg: Aggregator, row: Any) -> None:
        """Open alerts at candidate rows and attach the group's rows to them.

        `row(i, what)` gives feature values of selected row i (what: entity, workload, peer,
        uuid, text) without materialising rows that are not needed."""
        rule = self.rule
        times = g.times
        n = len(times)
        cand_pos = np.flatnonzero(cand)
        pos = 0
        alert = self.open.get(g.key)
        while pos < n:
            if alert is not None and times[pos] < alert.until:
                end = int(np.searchsorted(times, alert.until, side="left"))
                self._attach(alert, g, pos, end, row)
                pos = end
                continue
            k = int(np.searchsorted(cand_pos, pos, side="left"))
            if k >= len(cand_pos):
                break
            at = int(cand_pos[k])
            t = int(times[at])
            if alert is not None:
                self.done.append(alert)
            i = int(g.idx[at])
            alert = Alert(rule=rule.id, title=rule.title, category=rule.category, severity=rule.severity,
                          mitre=list(rule.mitre), entity=entity_of(rule.entity_kind, row(i, "entity"),
                                                                   row(i, "workload")),
                          group=g.key, first_seen=min(int(agg.starts[at]), t), detected_at=t,
                          last_seen=t, description=rule.description, remediation=rule.remediation,
                          until=t + rule.suppress_ns)
            explanation = row(i, "explain")
            if explanation:
                alert.details["explanation"] = explanation
            if not isinstance(agg, Match):
                alert.details.update(agg.details(at))
            self.open[g.key] = alert
            pos = at
        if alert is not None:
            self.open[g.key] = alert

    @staticmethod
    def _attach(alert: Alert, g: Group, start: int, end: int, row: Any) -> None:
        if end <= start:
            return
        alert.count += end - start
        alert.last_seen = max(alert.last_seen, int(g.times[end - 1]))
        room = EVIDENCE_LIMIT - len(alert.evidence)
        for j in range(start, min(end, start + max(room, 0))):
            i = int(g.idx[j])
            alert.evidence.append(row(i, "uuid"))
            if len(alert.evidence_text) < 3:
                alert.evidence_text.append(row(i, "text"))
        peers = row(g.idx[start:end], "peers")
        alert.peers.update(peers)

    def all(self) -> list[Alert]:
        return [*self.done, *self.open.values()]

    def dump(self) -> dict[str, Any]:
        return {"open": [alert_state(a) for a in self.open.values()], "done": [alert_state(a) for a in self.done]}

    def load(self, doc: dict[str, Any]) -> None:
        """Take over a dump() (on a fresh instance; StateError if malformed or of another rule)."""
        opened = alerts_from_state(doc.get("open"), "open")
        done = alerts_from_state(doc.get("done", []), "done")
        need(all(a.rule == self.rule.id for a in (*opened, *done)), "alerts of another rule")
        self.open = {a.group: a for a in opened}
        need(len(self.open) == len(opened), "two open alerts for one group")
        self.done = done
