"""The detection engine's shortcuts give what the plain computation gives.

Features are computed lazily on the rows a rule still considers (detect/features.py `Frame`),
and the value_count / rate_spike aggregators count with numpy when rows come in time order
(detect/aggregate.py): each must agree exactly with the whole-batch feature table and with
stepping through the rows one by one.
"""

from __future__ import annotations

import gc
import gzip
import random
import weakref
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from flowtrail.detect import aggregate
from flowtrail.detect.aggregate import FieldValues, Group, RateSpike, ValueCount
from flowtrail.detect.features import FEATURE_PATHS, Batch, Enrichment, build
from flowtrail.detect.fixtures import fixture_dir
from flowtrail.detect.rules import load_rules, parse_rules
from flowtrail.enrich.intel import Intel
from flowtrail.sources.decode import Decoder

RULES = load_rules()
FIXTURES = fixture_dir(RULES[0])


def _flows(name: str) -> pa.Table:
    table = Decoder(FEATURE_PATHS).decode_block(gzip.decompress((FIXTURES / name).read_bytes())).table
    assert table is not None
    return table.filter(pc.is_valid(table.column("flow")))


@pytest.mark.parametrize("name", sorted(p.name for p in Path(FIXTURES).glob("*.jsonl.gz")))
def test_features_of_row_subsets_equal_the_whole_batch_table(name: str) -> None:
    """Every feature asked of some rows (in any order) is the whole-batch value of those rows."""
    table = _flows(name)
    enrichment = Enrichment(intel=Intel.load([FIXTURES / "intel.txt"]))
    whole = build(table, enrichment)
    rng = np.random.default_rng(len(name))
    n = table.num_rows
    subsets = [rng.choice(n, size=max(1, n // 10), replace=False),  # few rows, shuffled
               np.sort(rng.choice(n, size=n // 2, replace=False)),  # half, in batch order
               np.flatnonzero(np.asarray(whole["dst.world"]))]  # the rows of one condition
    for rows in subsets:
        if len(rows) == 0:
            continue
        batch = Batch(table, enrichment)
        frame = batch.all.subset(rows)
        for col in whole.column_names:
            got, want = frame[col], whole[col].take(pa.array(rows))
            assert got.type == want.type, col
            assert got.equals(want.combine_chunks()), col


def test_a_batch_is_freed_without_the_cycle_collector() -> None:
    """Frames point back to their batch weakly: a batch (and its Arrow buffers) goes as soon as
    the engine drops it, not at the next garbage collection."""
    table = _flows("port-scan.jsonl.gz")
    gc.disable()
    try:
        batch = Batch(table, Enrichment())
        sub = batch.all.subset(np.arange(0, table.num_rows, 3))
        assert sub["src.key"] is not None and batch.all["ext"] is not None
        ref = weakref.ref(batch)
        del batch, sub
        assert ref() is None
    finally:
        gc.enable()


def _rule(function: str, extra: str) -> Any:
    text = ("rules:\n  - id: t.rule\n    title: t\n    category: scan\n    severity: low\n    description: d\n"
            f"    aggregate: {{function: {function}, {extra}}}\n")
    return parse_rules(text, "t.yaml")[0]


def _stream(rng: random.Random, calls: int, keys: int, shuffle: bool) -> list[tuple[str, list[int], list[Any]]]:
    """Per call: a group key, its rows' times (in time order within the call, as the engine
    hands them) and values. Calls mostly move forward in time; `shuffle` lets some go back."""
    out = []
    now = 1_700_000_000 * 10**9
    for _ in range(calls):
        n = rng.choice([1, 3, 30, 80, 200])
        start = now - (rng.randint(0, 120) * 10**9 if shuffle and rng.random() < 0.3 else 0)
        gaps = [rng.choice([0, 0, 10**6, 10**9, 5 * 10**9, 70 * 10**9]) for _ in range(n)]
        times = list(np.cumsum([start, *gaps[1:]]).tolist())
        values = [None if rng.random() < 0.1 else rng.choice(["a", "b", "c", "d", "e", "f", "g"]) for _ in range(n)]
        out.append((f"g{rng.randrange(keys)}", times, values))
        now = max(now, times[-1]) + rng.choice([0, 10**9, 400 * 10**9])
    return out


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("kind", ["value_count", "rate_spike"])
def test_numpy_counting_equals_stepping(kind: str, seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Same candidates, counts, window starts and carried state, call after call, for streams in
    time order and streams that go back in time (which take the stepped path)."""
    extra = ("field: dns.registered, timespan: 1m, threshold: 3" if kind == "value_count"
             else "timespan: 10s, baseline_window: 1m, warmup: 5s, threshold: 4, factor: 2")
    rng = random.Random(seed)
    stream = _stream(rng, 60, 3, shuffle=seed % 2 == 1)
    stepped, vectored = (aggregate.make_aggregator(_rule(kind, extra)) for _ in range(2))
    assert isinstance(stepped, ValueCount | RateSpike)
    monkeypatch.setattr(aggregate, "VECTOR_MIN_ROWS", 10**9)
    plain = []
    for key, times, values in stream:
        g = Group(key, np.arange(len(times)), np.array(times, dtype=np.int64))
        cand = stepped.candidates(g, FieldValues(pa.array(values, pa.string())).at(np.arange(len(values))))
        plain.append((cand, stepped.values.copy(), [stepped.start_of(i) for i in range(len(times))],
                      stepped.dump()))
    monkeypatch.setattr(aggregate, "VECTOR_MIN_ROWS", 2)
    for (key, times, values), (cand, counts, starts, state) in zip(stream, plain, strict=True):
        g = Group(key, np.arange(len(times)), np.array(times, dtype=np.int64))
        got = vectored.candidates(g, FieldValues(pa.array(values, pa.string())).at(np.arange(len(values))))
        assert got.tolist() == cand.tolist()
        assert vectored.values.tolist() == counts.tolist()
        assert [vectored.start_of(i) for i in range(len(times))] == starts
        assert repr(vectored.dump()) == repr(state)
    if isinstance(vectored, ValueCount):
        assert isinstance(stepped, ValueCount)
        assert {k: list(v.items()) for k, v in vectored.seen.items()} == \
            {k: list(v.items()) for k, v in stepped.seen.items()}
        assert all(isinstance(v, OrderedDict) for v in vectored.seen.values())
