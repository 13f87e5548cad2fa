"""Stateful, incremental aggregation of a rule's matching rows into alerts.

Rows arrive per batch, already selected by the rule and sorted by flow time. For each group
(the rule's `group_by` key) an aggregator marks the rows at which the condition holds
("candidates"); `Alerts.assign` then opens an alert at the first candidate, and every later row
of the group joins it until the suppression interval has passed. State carried between batches
is bounded (window tails, value→last-seen maps within the timespan), so feeding a file as one
batch or as many small ones gives the same alerts.

Work is per group with numpy. `value_count` and `rate_spike` are defined by stepping through a
group's rows (their state is a recency-ordered map and a window of times); when the carried state
and the rows are in time order, as a stream in order delivers them, they compute the same with
numpy, and step only through small groups and rows that arrive out of order.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

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
from flowtrail.util import compute as pc

HOUR_NS = 60 * MINUTE_NS


@dataclass
class Group:
    """Rows of one group in one batch (indices into the batch's selected rows)."""

    key: str
    idx: np.ndarray
    times: np.ndarray


class FieldValues:
    """The aggregated field (value_count) at the rows a rule selected in a batch: per row the
    index of its value among the batch's distinct values (-1: null), so that counting needs no
    Python object per row."""

    def __init__(self, values: pa.Array | pa.ChunkedArray | list[Any]) -> None:
        if isinstance(values, pa.ChunkedArray):
            values = values.combine_chunks()
        if isinstance(values, pa.Array) and (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)
                                             or pa.types.is_integer(values.type) or pa.types.is_boolean(values.type)):
            # values of these types are equal in Arrow exactly when they are equal, and alike, in
            # Python: any of equal values may stand for the others
            enc = pc.dictionary_encode(values)
            self.codes = np.asarray(pc.fill_null(enc.indices, -1).to_numpy(zero_copy_only=False), dtype=np.int64)
            self.distinct: list[Any] = enc.dictionary.to_pylist()
            self.exact = True
        else:
            # Python's own equality (floats: -0.0 == 0.0, no NaN equals another), where equal
            # values may still differ: only stepping through them keeps each one as it came
            objects = values.to_pylist() if isinstance(values, pa.Array) else list(values)
            ids: dict[Any, int] = {}
            self.codes = np.array([-1 if v is None else ids.setdefault(v, len(ids)) for v in objects], dtype=np.int64)
            self.distinct = list(ids)
            self.objects = objects
            self.exact = False
        self._index: dict[Any, int] | None = None

    def index(self) -> dict[Any, int]:
        """Distinct value -> its code."""
        if self._index is None:
            self._index = {v: i for i, v in enumerate(self.distinct)}
        return self._index

    def at(self, rows: np.ndarray) -> GroupValues:
        return GroupValues(self, self.codes[rows], rows)


@dataclass
class GroupValues:
    """FieldValues at the rows of one group."""

    field: FieldValues
    codes: np.ndarray
    rows: np.ndarray

    def __len__(self) -> int:
        return len(self.codes)

    def tolist(self) -> list[Any]:
        if not self.field.exact:
            return [self.field.objects[i] for i in self.rows.tolist()]
        distinct = self.field.distinct
        return [None if c < 0 else distinct[c] for c in self.codes.tolist()]


class Aggregator:
    def __init__(self, rule: Rule) -> None:
        self.rule = rule
        # the aggregate value at each row of the last group handed to candidates()
        self.values: np.ndarray = np.zeros(0, dtype=np.int64)
        self.starts: np.ndarray = np.zeros(0, dtype=np.int64)  # earliest time in the window per row

    def candidates(self, g: Group, values: GroupValues | list[Any] | None) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def start_of(self, at: int) -> int:
        """The earliest flow time in the window at row `at` of the last group."""
        return int(self.starts[at])

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
    def candidates(self, g: Group, values: GroupValues | list[Any] | None) -> np.ndarray:
        self.starts = g.times
        return np.ones(len(g.idx), dtype=bool)


class EventCount(Aggregator):
    def __init__(self, rule: Rule) -> None:
        super().__init__(rule)
        self.window = rule.duration(rule.aggregate.get("timespan", "5m"))
        self.threshold = max(1, int(float(rule.value(rule.aggregate["threshold"]))))
        self.tails: dict[str, np.ndarray] = {}

    def candidates(self, g: Group, values: GroupValues | list[Any] | None) -> np.ndarray:
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


# groups with fewer rows than this step through them: the vectorized forms cost a few dozen numpy
# calls whatever the size
VECTOR_MIN_ROWS = 24


class ValueCount(Aggregator):
    """Distinct values of a field in a sliding window, per group.

    The state is each group's values with the time last seen, in recency order; a value is
    forgotten (from the front) once the newest row is more than the window past it. When the
    carried values and the group's rows are in time order (as a stream in order delivers them),
    the count at each row is the number of distinct values seen in the window up to it, computed
    with numpy (`_sorted`); otherwise, and for small groups, the rows are stepped through
    (`_stepped`). Both give the same counts, window starts and state."""

    def __init__(self, rule: Rule) -> None:
        super().__init__(rule)
        self.window = rule.duration(rule.aggregate.get("timespan", "5m"))
        self.threshold = max(1, int(float(rule.value(rule.aggregate["threshold"]))))
        self.seen: dict[str, OrderedDict[Any, int]] = {}
        self._window_of: Callable[[int], int] | None = None  # start_of for the last group, if lazy

    def candidates(self, g: Group, values: GroupValues | list[Any] | None) -> np.ndarray:
        assert values is not None
        if not isinstance(values, GroupValues):
            values = FieldValues(values).at(np.arange(len(values)))
        seen = self.seen.setdefault(g.key, OrderedDict())
        out = self._sorted(g, values, seen) if len(values) >= VECTOR_MIN_ROWS and values.field.exact else None
        if out is None:
            out = self._stepped(g, values.tolist(), seen)
        if not seen:
            del self.seen[g.key]
        return out

    def start_of(self, at: int) -> int:
        return self._window_of(at) if self._window_of is not None else int(self.starts[at])

    def _stepped(self, g: Group, values: list[Any], seen: OrderedDict[Any, int]) -> np.ndarray:
        window = self.window
        times = g.times.tolist()
        # plain lists while stepping (numpy item access costs more than the step itself)
        counts = [0] * len(times)
        starts = list(times)
        out = [False] * len(times)
        threshold = self.threshold
        for i, (t, v) in enumerate(zip(times, values, strict=True)):
            if v is None:
                # counted, never a candidate: a row without a value adds nothing
                counts[i] = len(seen)
                continue
            if v in seen:
                seen.move_to_end(v)
            seen[v] = t
            # forget from the front of the recency order up to the first value seen in the window
            while seen:
                first_v = next(iter(seen))
                first_t = seen[first_v]
                if first_t >= t - window:
                    starts[i] = first_t
                    break
                del seen[first_v]
            counts[i] = len(seen)
            out[i] = len(seen) >= threshold
        self.values = np.array(counts, dtype=np.int64)
        self.starts = np.array(starts, dtype=np.int64)
        self._window_of = None
        return np.array(out, dtype=bool)

    def _sorted(self, g: Group, values: GroupValues, seen: OrderedDict[Any, int]) -> np.ndarray | None:
        """`_stepped` for carried values and rows in time order, with numpy; None otherwise.

        Positions: the carried values (in recency order) then the rows with a value. In time
        order the recency order is the position order of last sightings, so after position p the
        state holds the values sighted at positions [lo_p, p] (lo_p: the first one in p's window)
        and their number is (p - lo_p + 1) minus the sightings in that range whose previous
        sighting of the same value is in it too."""
        n = len(values)
        has = values.codes >= 0
        rows = np.flatnonzero(has)
        if len(rows) == 0:
            return None
        carried = len(seen)
        t = np.concatenate([np.fromiter(seen.values(), dtype=np.int64, count=carried), g.times[rows]])
        if bool((t[1:] < t[:-1]).any()):
            return None
        m = len(t)
        uniques = values.field.distinct
        # carried values get the batch's code of an equal value, or one past them all
        index = values.field.index() if carried else {}
        extra: dict[Any, int] = {}
        carried_codes = [index.get(k, -1) for k in seen]
        carried_codes = [c if c >= 0 else len(uniques) + extra.setdefault(k, len(extra))
                         for k, c in zip(seen, carried_codes, strict=True)]
        code = np.concatenate([np.array(carried_codes, dtype=np.int64), values.codes[rows]])
        keys = list(seen)
        lo = np.searchsorted(t, t - self.window, side="left")
        by_code = np.argsort(code, kind="stable")
        same = code[by_code[1:]] == code[by_code[:-1]]
        prev = np.full(m, -1, dtype=np.int64)
        prev[by_code[1:][same]] = by_code[:-1][same]
        nxt = np.full(m, m, dtype=np.int64)
        nxt[by_code[:-1][same]] = by_code[1:][same]
        # a repeat at q (previous sighting r) is inside the range of every p from q on whose lo_p
        # is at most r: lo only grows with p, so that is p in [q, end_r)
        q = np.flatnonzero(prev >= 0)
        end = np.searchsorted(lo, prev[q], side="right")
        q, end = q[end > q], end[end > q]
        step = np.zeros(m + 1, dtype=np.int64)
        np.add.at(step, q, 1)
        np.add.at(step, end, -1)
        distinct = np.arange(m) - lo + 1 - np.cumsum(step)[:m]
        counts = np.empty(n, dtype=np.int64)
        counts[rows] = distinct[carried:]
        # a row without a value: the count after the latest row with one (else the state as carried)
        blank = np.flatnonzero(~has)
        if len(blank):
            before = np.cumsum(has)[blank]
            counts[blank] = np.where(before > 0, distinct[np.maximum(carried + before - 1, 0)], carried)
        self.values = counts
        self.starts = g.times.copy()
        # the window's start (the front of the recency order) is read only where an alert opens:
        # the first position from lo_p whose value is not sighted again up to p
        pos_of = np.full(n, -1, dtype=np.int64)
        pos_of[rows] = np.arange(carried, m)

        def window_of(at: int) -> int:
            p = int(pos_of[at])
            if p < 0:
                return int(self.starts[at])
            first = int(lo[p])
            return int(t[first + int(np.argmax(nxt[first:p + 1] > p))])
        self._window_of = window_of
        # the state after the last row: last sightings within its window, in sighting order
        keep = np.flatnonzero(nxt[lo[m - 1]:] == m) + lo[m - 1]
        seen.clear()
        for k in keep.tolist():
            seen[keys[k] if k < carried else uniques[int(code[k])]] = int(t[k])
        out = np.zeros(n, dtype=bool)
        out[rows] = distinct[carried:] >= self.threshold
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

    def candidates(self, g: Group, values: GroupValues | list[Any] | None) -> np.ndarray:
        recent = self.recent.setdefault(g.key, deque())
        buckets = self.buckets.setdefault(g.key, {})
        if self.start is None:
            self.start = int(g.times[0])
        out = self._sorted(g, recent, buckets) if len(g.times) >= VECTOR_MIN_ROWS else None
        if out is None:
            out = self._stepped(g, recent, buckets)
        n_hist = max(self.history // self.window, 1)
        for k in [k for k in buckets if k < (int(g.times[-1]) // self.window) - n_hist - 1]:
            del buckets[k]
        return out

    def _stepped(self, g: Group, recent: deque[int], buckets: dict[int, int]) -> np.ndarray:
        assert self.start is not None
        start = self.start
        times = g.times.tolist()
        out = [False] * len(times)
        counts = [0] * len(times)
        starts = list(times)
        w = self.window
        last_b: int | None = None
        trailing = 0.0
        for i, t in enumerate(times):
            recent.append(t)
            while recent[0] < t - w:
                recent.popleft()
            b = t // w
            buckets[b] = buckets.get(b, 0) + 1
            if b != last_b:
                trailing = self._trailing(buckets, b)
                last_b = b
            counts[i] = len(recent)
            starts[i] = recent[0]
            if t - start >= self.warmup and len(recent) >= self.floor and len(recent) >= self.factor * trailing:
                out[i] = True
        self.values = np.array(counts, dtype=np.int64)
        self.starts = np.array(starts, dtype=np.int64)
        return np.array(out, dtype=bool)

    def _trailing(self, buckets: dict[int, int], b: int) -> float:
        """Mean rows per window over the buckets strictly before `b`; before an hour of history
        the mean is over the time seen so far. Rows of bucket b only add to bucket b, so the mean
        holds for every row of a bucket."""
        assert self.start is not None
        span = min(max(self.history // self.window, 1), max((b - self.start // self.window), 1))
        return sum(buckets.get(k, 0) for k in range(b - span, b)) / span

    def _sorted(self, g: Group, recent: deque[int], buckets: dict[int, int]) -> np.ndarray | None:
        """`_stepped` for carried times and rows in time order, with numpy; None otherwise. Then
        the window holds the carried and new times from the first one in it, and a bucket's
        trailing mean sees every earlier bucket complete."""
        assert self.start is not None
        times = g.times
        allt = np.concatenate([np.fromiter(recent, dtype=np.int64, count=len(recent)), times])
        if bool((allt[1:] < allt[:-1]).any()):
            return None
        w = self.window
        off = len(recent)
        lo = np.searchsorted(allt, times - w, side="left")
        counts = np.arange(off, off + len(times)) - lo + 1
        self.values, self.starts = counts, allt[lo]
        b = times // w
        firsts = np.flatnonzero(np.concatenate(([True], b[1:] != b[:-1])))
        sizes = np.diff(np.append(firsts, len(b)))
        trailing = np.empty(len(firsts), dtype=np.float64)
        for j, (bucket, size) in enumerate(zip(b[firsts].tolist(), sizes.tolist(), strict=True)):
            buckets[bucket] = buckets.get(bucket, 0) + size
            trailing[j] = self._trailing(buckets, bucket)
        per_row = np.repeat(trailing, sizes)
        recent.clear()
        recent.extend(allt[lo[-1]:].tolist())
        return ((times - self.start >= self.warmup) & (counts >= self.floor)
                & (counts >= self.factor * per_row))

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

    def candidates(self, g: Group, values: GroupValues | list[Any] | None) -> np.ndarray:
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
                          group=g.key, first_seen=min(agg.start_of(at), t), detected_at=t,
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
