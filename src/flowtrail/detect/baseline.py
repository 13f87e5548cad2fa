"""Learned normal behaviour: which edges, namespace pairs, external destinations and domains each
workload uses, with last-seen times so a baseline ages out and updates incrementally.

`flowtrail baseline learn` builds one from history; `flowtrail detect --baseline FILE` lets the
anomaly rules compare against it (`in_baseline` / `not_in_baseline` conditions).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

KINDS = ("edges", "ns_pairs", "external", "domains")
FORMAT = "flowtrail-baseline/1"


class BaselineError(ValueError):
    pass


@dataclass
class Baseline:
    sets: dict[str, dict[str, int]] = field(default_factory=lambda: {k: {} for k in KINDS})
    flows: int = 0
    first_ns: int = 0
    last_ns: int = 0
    _arrays: dict[str, pa.Array] = field(default_factory=dict, repr=False)

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

    def age_out(self, max_age_ns: int) -> int:
        cutoff = self.last_ns - max_age_ns
        removed = 0
        for kind in KINDS:
            old = [k for k, t in self.sets[kind].items() if t < cutoff]
            for k in old:
                del self.sets[kind][k]
            removed += len(old)
        self._arrays.clear()
        return removed

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "flows": self.flows, "first_ns": self.first_ns, "last_ns": self.last_ns,
                "sets": {k: dict(sorted(v.items())) for k, v in self.sets.items()}}

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
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise BaselineError(f"{path}: not a flowtrail baseline (format {FORMAT})")
        b = cls(flows=int(data.get("flows", 0)), first_ns=int(data.get("first_ns", 0)),
                last_ns=int(data.get("last_ns", 0)))
        for kind in KINDS:
            b.sets[kind] = {str(k): int(v) for k, v in (data.get("sets", {}).get(kind) or {}).items()}
        return b
