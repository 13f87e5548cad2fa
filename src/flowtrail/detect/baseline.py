"""Learned normal behaviour: which edges, namespace pairs, external destinations and domains each
workload uses, with last-seen times, and how many flows and drops each entity has per minute at
each hour of the day. Everything carries last-seen times, so a baseline ages out and updates
incrementally.

`flowtrail baseline learn` builds one from history; `flowtrail detect --baseline FILE` lets the
anomaly rules compare against it (`in_baseline` / `not_in_baseline` conditions, and the
`baseline_rate` aggregation for the rates).

Rates. Two families, each counting a fixed selection of flows per entity (rules comparing with
them must select the same flows, see detect/rules/anomaly.yaml):

- `flows`: flows a workload sends: source is a pod (`src.namespace` present), not a reply;
  entity `src.wl_key` (`ns/workload`). Workloads, not pods: pod names change at every rollout,
  and world/host/IP sources are left out because their keys (`world:IP`) are unbounded.
- `drops`: DROPPED flows per `drop.namespace`, the namespace whose policy decided: a bad policy
  rollout is a namespace-wide event, and namespaces are few.

Counts are taken per UTC minute and entity, then folded into one row per (entity, hour of day,
UTC, 24 bins): minutes with flows, sum, sum of squares and peak of the per-minute counts. The
minutes the input covered (any flow, gaps up to COVER_GAP_MIN bridged) are kept as intervals, so
the mean per minute of an entity at an hour is its sum over the covered minutes of that hour
since the entity was first seen: minutes without its flows count as zeros, which is what makes
a workload that is normally quiet at night look quiet. The file thus grows with entities × 24,
never with the length of the history.

A minute's count is final once the input is COVER_SLACK_MIN minutes past it; rows arriving later
than that (far out of time order) still add to the sums but count as a separate minute for the
peak and the spread.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa

from flowtrail.util import compute as pc

KINDS = ("edges", "ns_pairs", "external", "domains")
FORMAT = "flowtrail-baseline/2"
FORMATS = ("flowtrail-baseline/1", FORMAT)  # /1: sets only; loads with empty rates

MINUTE_NS = 60 * 1_000_000_000
HOUR_MIN = 60
DAY_MIN = 24 * HOUR_MIN
# a minute without any flow in the whole input still is an observed minute of zeros, up to this gap
COVER_GAP_MIN = 5
# per-minute counts are folded this many minutes behind the newest flow (Hubble streams are
# ordered to within seconds across nodes)
COVER_SLACK_MIN = 2
# an hour of the day seen for fewer minutes than this is not trusted alone: the entity's
# statistics over all covered hours stand in for it
MIN_HOUR_MINUTES = 10
RATE_ENTITY = {"flows": "src.wl_key", "drops": "drop.namespace"}

_ROW_SCHEMA = pa.schema([("entity", pa.string()), ("hour", pa.int64()), ("active", pa.int64()),
                         ("sum", pa.int64()), ("sumsq", pa.int64()), ("peak", pa.int64())])
_SPAN_SCHEMA = pa.schema([("entity", pa.string()), ("first_ns", pa.int64()), ("last_ns", pa.int64())])
_PENDING_SCHEMA = pa.schema([("entity", pa.string()), ("minute", pa.int64()), ("n", pa.int64())])


class BaselineError(ValueError):
    pass


def rate_mask(ft: pa.Table, family: str) -> pa.Array:
    """Rows of a feature table (detect/features.py) a rate family counts."""
    if family == "flows":
        m = pc.and_(ft["src.namespace"].is_valid(), pc.invert(pc.fill_null(ft["is_reply"], False)))
    elif family == "drops":
        m = pc.and_(pc.fill_null(pc.equal(ft["verdict"], "DROPPED"), False), ft["drop.namespace"].is_valid())
    else:
        raise BaselineError(f"unknown rate family {family!r} (known: {', '.join(RATE_ENTITY)})")
    return pc.fill_null(m, False)


def _hour_minutes(x: np.ndarray, hours: np.ndarray) -> np.ndarray:
    """Minutes m in [0, x) whose UTC hour of day is h, for x[:, None] × hours[None, :]."""
    x = x[:, None]
    return (x // DAY_MIN) * HOUR_MIN + np.clip(x % DAY_MIN - HOUR_MIN * hours[None, :], 0, HOUR_MIN)


def _merge_intervals(iv: np.ndarray) -> np.ndarray:
    """Union of [start, end) minute intervals, bridging gaps up to COVER_GAP_MIN."""
    if len(iv) <= 1:
        return iv
    iv = iv[np.argsort(iv[:, 0], kind="stable")]
    reach = np.maximum.accumulate(iv[:, 1])
    new = np.concatenate([[True], iv[1:, 0] > reach[:-1] + COVER_GAP_MIN])
    starts = np.flatnonzero(new)
    ends = np.maximum.reduceat(iv[:, 1], starts)
    return np.stack([iv[starts, 0], ends], axis=1)


@dataclass
class RateProfile:
    """Per entity and UTC hour: mean and standard deviation of the per-minute count, and its peak.

    Hours seen for fewer than MIN_HOUR_MINUTES minutes since the entity appeared use the
    entity's statistics over all its covered minutes (`pooled` true there)."""

    index: dict[str, int]
    mean: np.ndarray  # (entities, 24) per minute
    std: np.ndarray
    peak: np.ndarray
    pooled: np.ndarray  # bool


@dataclass
class _Rates:
    rows: pa.Table = field(default_factory=_ROW_SCHEMA.empty_table)
    span: pa.Table = field(default_factory=_SPAN_SCHEMA.empty_table)
    pending: pa.Table = field(default_factory=_PENDING_SCHEMA.empty_table)


@dataclass
class Baseline:
    sets: dict[str, dict[str, int]] = field(default_factory=lambda: {k: {} for k in KINDS})
    flows: int = 0
    first_ns: int = 0
    last_ns: int = 0
    rates: dict[str, _Rates] = field(default_factory=lambda: {k: _Rates() for k in RATE_ENTITY})
    coverage: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), dtype=np.int64))  # minutes
    _arrays: dict[str, pa.Array] = field(default_factory=dict, repr=False)
    _profiles: dict[str, RateProfile] = field(default_factory=dict, repr=False)
    _newest_min: int | None = field(default=None, repr=False)

    def keys(self, kind: str) -> pa.Array:
        arr = self._arrays.get(kind)
        if arr is None:
            if kind not in self.sets:
                raise BaselineError(f"unknown baseline set {kind!r} (known: {', '.join(KINDS)})")
            arr = self._arrays[kind] = pa.array(sorted(self.sets[kind]), pa.string())
        return arr

    def learn(self, ft: pa.Table) -> None:
        """Add one feature batch (detect/features.py) to the baseline."""
        if ft.num_rows == 0:
            return
        self._arrays.clear()
        self._profiles.clear()
        times = np.asarray(ft["time"].to_numpy(zero_copy_only=False), dtype=np.int64)
        self.flows += ft.num_rows
        lo, hi = int(times.min()), int(times.max())
        self.first_ns = lo if not self.first_ns else min(self.first_ns, lo)
        self.last_ns = max(self.last_ns, hi)
        initiating = pc.and_(pc.invert(pc.fill_null(ft["is_reply"], False)), pc.not_equal(ft["verdict"], "DROPPED"))
        initiating = pc.fill_null(initiating, False)
        syn = pc.and_(initiating, ft["syn"])
        udp = pc.and_(initiating, pc.fill_null(pc.equal(ft["proto"], "UDP"), False))
        picks = {
            "edges": (ft["edge"], pc.or_(syn, udp)),
            "ns_pairs": (ft["ns_pair"], initiating),
            "external": (ft["ext"], initiating),
            "domains": (ft["wl_domain"], ft["dns.request"]),
        }
        for kind, (col, mask) in picks.items():
            sel = pc.filter(col, pc.and_(pc.fill_null(mask, False), col.is_valid()))
            if len(sel) == 0:
                continue
            t = pc.filter(ft["time"], pc.and_(pc.fill_null(mask, False), col.is_valid()))
            grouped = pa.table({"k": sel, "t": t}).group_by("k").aggregate([("t", "max")])
            target = self.sets[kind]
            for k, tmax in zip(grouped["k"].to_pylist(), grouped["t_max"].to_pylist(), strict=True):
                if tmax > target.get(k, 0):
                    target[k] = tmax
        self._learn_rates(ft, times)

    # ------------------------------------------------------------------ rates
    def _learn_rates(self, ft: pa.Table, times: np.ndarray) -> None:
        minutes = times // MINUTE_NS
        seen = np.unique(minutes)
        runs = np.flatnonzero(np.diff(seen) > 1) + 1
        iv = np.stack([seen[np.r_[0, runs]], seen[np.r_[runs - 1, len(seen) - 1]] + 1], axis=1)
        self.coverage = _merge_intervals(np.concatenate([self.coverage, iv]))
        minute_col = pa.array(minutes)
        for family, entity in RATE_ENTITY.items():
            st = self.rates[family]
            mask = rate_mask(ft, family)
            if not pc.any(mask).as_py():
                continue
            sel = pa.table({"entity": pc.filter(ft[entity], mask), "minute": pc.filter(minute_col, mask),
                            "t": pc.filter(ft["time"], mask)})
            per_min = sel.group_by(["entity", "minute"], use_threads=False).aggregate([([], "count_all")])
            st.pending = _sum_pending(pa.concat_tables([st.pending, per_min.rename_columns(
                ["entity", "minute", "n"])]))
            span = sel.group_by("entity", use_threads=False).aggregate([("t", "min"), ("t", "max")])
            st.span = _merge_span(st.span, span.rename_columns(["entity", "first_ns", "last_ns"]))
        newest = int(minutes.max())
        self._newest_min = newest if self._newest_min is None else max(self._newest_min, newest)
        self._fold(self._newest_min - COVER_SLACK_MIN)

    def _fold(self, before_min: int | None = None) -> None:
        """Fold pending per-minute counts of minutes before `before_min` (all: None) into the
        per-hour rows."""
        for st in self.rates.values():
            p = st.pending
            if p.num_rows == 0:
                continue
            if before_min is None:
                done = p
                st.pending = _PENDING_SCHEMA.empty_table()
            else:
                old = pc.less(p["minute"], before_min)
                done = p.filter(old)
                st.pending = p.filter(pc.invert(old))
            if done.num_rows == 0:
                continue
            n = np.asarray(done["n"].to_numpy(zero_copy_only=False), dtype=np.int64)
            hour = (np.asarray(done["minute"].to_numpy(zero_copy_only=False), dtype=np.int64) // HOUR_MIN) % 24
            folded = pa.table({"entity": done["entity"], "hour": hour, "n": n, "n2": n * n}).group_by(
                ["entity", "hour"], use_threads=False).aggregate([("n", "count"), ("n", "sum"), ("n2", "sum"),
                                                                  ("n", "max")])
            st.rows = _merge_rows(st.rows, folded.rename_columns(list(_ROW_SCHEMA.names)))
            self._profiles.clear()

    def rate_profile(self, family: str) -> RateProfile:
        """Normal per-minute counts per entity and hour (see RateProfile)."""
        if family not in RATE_ENTITY:
            raise BaselineError(f"unknown rate family {family!r} (known: {', '.join(RATE_ENTITY)})")
        prof = self._profiles.get(family)
        if prof is not None:
            return prof
        self._fold()
        st = self.rates[family]
        span = st.span.sort_by("entity")
        names = span["entity"].to_pylist()
        index = {k: i for i, k in enumerate(names)}
        ne = len(names)
        hours = np.arange(24, dtype=np.int64)
        first_min = np.asarray(span["first_ns"].to_numpy(zero_copy_only=False), dtype=np.int64) // MINUTE_NS
        cov = self._covered_since(first_min, hours)
        total = np.zeros((ne, 24), dtype=np.float64)
        sq = np.zeros((ne, 24), dtype=np.float64)
        peak = np.zeros((ne, 24), dtype=np.float64)
        active = np.zeros((ne, 24), dtype=np.float64)
        if st.rows.num_rows and ne:
            r = st.rows
            ent = pc.index_in(r["entity"], value_set=span["entity"])
            ok = np.asarray(ent.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
            ei = np.asarray(pc.fill_null(ent, 0).to_numpy(zero_copy_only=False), dtype=np.int64)[ok]
            hi = np.asarray(r["hour"].to_numpy(zero_copy_only=False), dtype=np.int64)[ok]
            for arr, col in ((total, "sum"), (sq, "sumsq"), (peak, "peak"), (active, "active")):
                arr[ei, hi] = np.asarray(r[col].to_numpy(zero_copy_only=False), dtype=np.float64)[ok]
        # a hand-edited or truncated file must not divide by fewer minutes than the entity used
        cov = np.maximum(cov, active)
        with np.errstate(divide="ignore", invalid="ignore"):
            mean = np.where(cov > 0, total / cov, 0.0)
            var = np.where(cov > 0, sq / cov - mean * mean, 0.0)
            all_cov = cov.sum(axis=1)
            p_mean = np.where(all_cov > 0, total.sum(axis=1) / all_cov, 0.0)
            p_var = np.where(all_cov > 0, sq.sum(axis=1) / all_cov - p_mean * p_mean, 0.0)
        pooled = cov < MIN_HOUR_MINUTES
        mean = np.where(pooled, p_mean[:, None], mean)
        std = np.sqrt(np.maximum(np.where(pooled, p_var[:, None], var), 0.0))
        peak = np.where(pooled, peak.max(axis=1, initial=0.0)[:, None], peak)
        prof = RateProfile(index, mean, std, peak, pooled)
        self._profiles[family] = prof
        return prof

    def rate_entities(self, family: str) -> int:
        return self.rates[family].span.num_rows

    def covered_hours(self) -> float:
        """Hours of history behind the rates."""
        return float((self.coverage[:, 1] - self.coverage[:, 0]).sum()) / HOUR_MIN

    def _covered_since(self, first_min: np.ndarray, hours: np.ndarray) -> np.ndarray:
        """Covered minutes per UTC hour at or after each first_min: (len(first_min), 24)."""
        iv = self.coverage
        if not len(iv) or not len(first_min):
            return np.zeros((len(first_min), 24), dtype=np.float64)
        per = _hour_minutes(iv[:, 1], hours) - _hour_minutes(iv[:, 0], hours)  # (intervals, 24)
        prefix = np.vstack([np.zeros((1, 24), dtype=np.int64), np.cumsum(per, axis=0)])
        done = np.searchsorted(iv[:, 1], first_min, side="right")  # intervals ending at or before
        before = prefix[done]
        inside = done < len(iv)
        j = np.minimum(done, len(iv) - 1)
        partial_start = np.where(inside, iv[j, 0], 0)
        clipped = np.where(inside & (partial_start < first_min), first_min, partial_start)
        part = _hour_minutes(clipped, hours) - _hour_minutes(partial_start, hours)
        before = before + np.where(inside[:, None], part, 0)
        return (prefix[-1][None, :] - before).astype(np.float64)

    # ------------------------------------------------------------------ ageing, files
    def age_out(self, max_age_ns: int) -> int:
        self._fold()
        cutoff = self.last_ns - max_age_ns
        removed = 0
        for kind in KINDS:
            old = [k for k, t in self.sets[kind].items() if t < cutoff]
            for k in old:
                del self.sets[kind][k]
            removed += len(old)
        firsts = []
        for st in self.rates.values():
            keep = pc.greater_equal(st.span["last_ns"], cutoff)
            removed += st.span.num_rows - int(pc.sum(pc.cast(keep, pa.int64())).as_py() or 0)
            st.span = st.span.filter(keep)
            st.rows = st.rows.filter(pc.is_in(st.rows["entity"], value_set=st.span["entity"]))
            if st.span.num_rows:
                firsts.append(int(pc.min(st.span["first_ns"]).as_py()) // MINUTE_NS)
        # coverage before the oldest remaining entity is never a denominator again
        if firsts:
            lo = min(firsts)
            iv = self.coverage[self.coverage[:, 1] > lo]
            if len(iv):
                iv[0, 0] = max(iv[0, 0], lo)
            self.coverage = iv
        else:
            self.coverage = np.zeros((0, 2), dtype=np.int64)
        self._arrays.clear()
        self._profiles.clear()
        return removed

    def to_json(self) -> dict[str, Any]:
        # closes the minutes still open: call it once the input is done, like save()
        self._fold()
        rates: dict[str, Any] = {"bin_ns": MINUTE_NS, "hours": "UTC",
                                 "coverage": [[int(a) * MINUTE_NS, int(b) * MINUTE_NS] for a, b in self.coverage]}
        for family, st in self.rates.items():
            out: dict[str, Any] = {}
            for ent, first, last in zip(*(st.span.sort_by("entity")[c].to_pylist() for c in _SPAN_SCHEMA.names),
                                        strict=True):
                out[ent] = {"first_ns": first, "last_ns": last, "hours": {}}
            rows = st.rows.sort_by([("entity", "ascending"), ("hour", "ascending")])
            for ent, hour, active, total, sq, peak in zip(*(rows[c].to_pylist() for c in _ROW_SCHEMA.names),
                                                          strict=True):
                out[ent]["hours"][f"{hour:02d}"] = {"active": active, "sum": total, "sumsq": sq, "peak": peak}
            rates[family] = out
        return {"format": FORMAT, "flows": self.flows, "first_ns": self.first_ns, "last_ns": self.last_ns,
                "sets": {k: dict(sorted(v.items())) for k, v in self.sets.items()}, "rates": rates}

    def save(self, path: str | Path) -> None:
        Path(path).write_bytes(orjson.dumps(self.to_json(), option=orjson.OPT_INDENT_2) + b"\n")

    @classmethod
    def load(cls, path: str | Path) -> Baseline:
        try:
            data = orjson.loads(Path(path).read_bytes())
        except OSError as exc:
            raise BaselineError(f"{path}: {exc.strerror}") from None
        except orjson.JSONDecodeError as exc:
            raise BaselineError(f"{path}: not JSON: {exc}") from None
        if not isinstance(data, dict) or data.get("format") not in FORMATS:
            raise BaselineError(f"{path}: not a flowtrail baseline (format {FORMAT})")
        b = cls(flows=int(data.get("flows", 0)), first_ns=int(data.get("first_ns", 0)),
                last_ns=int(data.get("last_ns", 0)))
        for kind in KINDS:
            b.sets[kind] = {str(k): int(v) for k, v in (data.get("sets", {}).get(kind) or {}).items()}
        try:
            b._load_rates(data.get("rates") or {})
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            raise BaselineError(f"{path}: bad rates section: {exc}") from None
        return b

    def _load_rates(self, rates: dict[str, Any]) -> None:
        if not rates:
            return  # a /1 file: no rates yet
        if int(rates.get("bin_ns", MINUTE_NS)) != MINUTE_NS:
            raise ValueError(f"bin_ns {rates['bin_ns']} (this version learns {MINUTE_NS})")
        cov = [(int(a) // MINUTE_NS, int(b) // MINUTE_NS) for a, b in rates.get("coverage") or []]
        self.coverage = _merge_intervals(np.array(cov, dtype=np.int64).reshape(-1, 2))
        for family in RATE_ENTITY:
            ents = rates.get(family) or {}
            span = {"entity": list(ents), "first_ns": [int(e["first_ns"]) for e in ents.values()],
                    "last_ns": [int(e["last_ns"]) for e in ents.values()]}
            rows: dict[str, list[Any]] = {c: [] for c in _ROW_SCHEMA.names}
            for ent, e in ents.items():
                for hour, h in (e.get("hours") or {}).items():
                    if not 0 <= int(hour) < 24:
                        raise ValueError(f"{family}/{ent}: hour {hour}")
                    rows["entity"].append(ent)
                    rows["hour"].append(int(hour))
                    for c in ("active", "sum", "sumsq", "peak"):
                        rows[c].append(int(h[c]))
            self.rates[family] = _Rates(pa.Table.from_pydict(rows, schema=_ROW_SCHEMA),
                                        pa.Table.from_pydict(span, schema=_SPAN_SCHEMA))


def _sum_pending(t: pa.Table) -> pa.Table:
    g = t.group_by(["entity", "minute"], use_threads=False).aggregate([("n", "sum")])
    return g.rename_columns(list(_PENDING_SCHEMA.names)).cast(_PENDING_SCHEMA)


def _merge_span(a: pa.Table, b: pa.Table) -> pa.Table:
    g = pa.concat_tables([a, b.cast(_SPAN_SCHEMA)]).group_by("entity", use_threads=False).aggregate(
        [("first_ns", "min"), ("last_ns", "max")])
    return g.rename_columns(list(_SPAN_SCHEMA.names)).cast(_SPAN_SCHEMA)


def _merge_rows(a: pa.Table, b: pa.Table) -> pa.Table:
    g = pa.concat_tables([a, b.cast(_ROW_SCHEMA)]).group_by(["entity", "hour"], use_threads=False).aggregate(
        [("active", "sum"), ("sum", "sum"), ("sumsq", "sum"), ("peak", "max")])
    return g.rename_columns(list(_ROW_SCHEMA.names)).cast(_ROW_SCHEMA)
