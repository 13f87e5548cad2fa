"""How fast can Hubble JSON lines be parsed at all on this machine? The floor under every
command that must read each flow's fields (`observe -o json` without a filter, `run`, `policy
audit`).

    python bench/bench_parse_floor.py [--lines 200000] [--repeat 3]

Times, on one core and in process (the file already in memory), each step a decoder cannot skip:
finding the lines, Arrow's JSON reader with no column, with one column, with the columns of the
default detection pack plus the default Hubble metrics (what `flowtrail run` decodes), orjson
building every line's objects, DuckDB's JSON reader (yyjson) with the same columns when duckdb
is installed (not a dependency), and flowtrail's own C scanner (line index; spelling and JSON
check; check plus the same columns as an Arrow table). Input: bench/data/flows-1000000.jsonl when
present (from bench/genflows.py), else a fresh `flowtrail simulate` capture. Prints µs per line, MB/s and the
flows/s two cores would reach if they did nothing else.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.json as pajson

from flowtrail.detect.engine import Engine
from flowtrail.detect.features import Enrichment
from flowtrail.detect.rules import load_rules
from flowtrail.metrics.hubble import DEFAULT_HUBBLE_METRICS, HubbleMetrics
from flowtrail.model.schema import envelope_arrow_schema
from flowtrail.sources import canonscan

REPO = Path(__file__).resolve().parents[1]


def sample(lines: int, tmp: Path) -> bytes:
    src = REPO / "bench" / "data" / "flows-1000000.jsonl"
    if not src.exists():
        src = tmp / "sim.jsonl"
        subprocess.run([str(REPO / ".venv/bin/flowtrail"), "simulate", "-q", "--duration", "600s", "--rate",
                        f"{lines / 600 * 1.1:.1f}", "-o", str(src)], check=True)
    out = bytearray()
    with src.open("rb") as fh:
        for i, line in enumerate(fh):
            if i == lines:
                break
            out += line
    return bytes(out)


def run_paths() -> list[str]:
    """The flow paths `flowtrail run` decodes with its defaults (rule pack + Hubble metrics)."""
    from prometheus_client import CollectorRegistry

    engine = Engine(load_rules(), Enrichment())
    metrics = HubbleMetrics(list(DEFAULT_HUBBLE_METRICS), CollectorRegistry())
    return sorted(set(engine.paths) | set(metrics.paths))


def arrow_reader(data: bytes, paths: list[str] | None) -> Callable[[], object]:
    schema = pa.schema([]) if paths is None else envelope_arrow_schema(paths)
    opts = pajson.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
    ropts = pajson.ReadOptions(use_threads=False, block_size=4 << 20)
    return lambda: pajson.read_json(pa.BufferReader(data), read_options=ropts, parse_options=opts)


def duckdb_reader(data: bytes, paths: list[str], tmp: Path) -> Callable[[], object] | None:
    try:
        import duckdb  # type: ignore[import-not-found]
    except ImportError:
        return None
    path = tmp / "sample.jsonl"
    path.write_bytes(data)

    def ddl(t: pa.DataType) -> str:
        if pa.types.is_struct(t):
            return "STRUCT(" + ", ".join(f'"{f.name}" {ddl(f.type)}' for f in t) + ")"
        if pa.types.is_list(t):
            return ddl(t.value_type) + "[]"
        if pa.types.is_boolean(t):
            return "BOOLEAN"
        if pa.types.is_integer(t):
            return "BIGINT"
        return "VARCHAR"
    schema = envelope_arrow_schema(paths)
    cols = "{" + ", ".join(f"'{f.name}': '{ddl(f.type)}'" for f in schema) + "}"
    con = duckdb.connect()
    con.execute("SET threads=1")
    query = f"SELECT * FROM read_ndjson('{path}', columns={cols}, maximum_object_size=16777216)"
    return lambda: con.sql(query).to_arrow_table()


def scanner(data: bytes, paths: list[str] | None) -> Callable[[], object] | None:
    """flowtrail's C scanner (sources/_canonscan.c): the canonical-spelling and JSON check of
    every line, and with ``paths`` the Arrow table of those columns."""
    if not canonscan.AVAILABLE:
        return None
    starts, ends, _ = canonscan.index_lines(data, 1 << 20, b'{"flow":{')
    if paths is None:
        return lambda: canonscan.noncanonical(data, starts, ends)
    ex = canonscan.Extractor(envelope_arrow_schema(sorted({*paths, "time", "node_name"})))
    return lambda: ex.extract(data, starts, ends)


def timed(fn: Callable[[], object], repeat: int) -> float:
    runs = []
    gc.disable()  # as the decoders run: the cyclic collector would rescan every new dict
    try:
        for _ in range(repeat):
            t = time.perf_counter()
            fn()
            runs.append(time.perf_counter() - t)
    finally:
        gc.enable()
    return statistics.median(runs)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lines", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        data = sample(args.lines, tmp)
        n = data.count(b"\n")
        paths = run_paths()
        cases: list[tuple[str, Callable[[], object] | None]] = [
            ("find lines (numpy)", lambda: np.flatnonzero(np.frombuffer(data, np.uint8) == 10)),
            ("Arrow JSON reader, no column (validates only)", arrow_reader(data, None)),
            ("Arrow JSON reader, 1 column (time)", arrow_reader(data, ["time"])),
            (f"Arrow JSON reader, {len(paths)} flow paths (flowtrail run's defaults)", arrow_reader(data, paths)),
            ("orjson.loads per line (Python objects)", lambda: [orjson.loads(x) for x in data.splitlines()]),
            (f"DuckDB read_ndjson, {len(paths)} flow paths, 1 thread", duckdb_reader(data, paths, tmp)),
            ("flowtrail C scanner: line index", (lambda: canonscan.index_lines(data, 1 << 20, b"{"))
             if canonscan.AVAILABLE else None),
            ("flowtrail C scanner: spelling + JSON check", scanner(data, None)),
            (f"flowtrail C scanner: check + {len(paths)} flow paths to Arrow", scanner(data, paths)),
        ]
        print(f"{n:,} lines, {len(data) / 1e6:,.0f} MB ({len(data) / n:,.0f} B/line), one core, median of "
              f"{args.repeat}; {os.cpu_count()} CPUs")
        print(f"{'step':<62} {'us/line':>8} {'MB/s':>7} {'flows/s on 2 cores':>19}")
        for name, fn in cases:
            if fn is None:
                print(f"{name:<62} {'(not installed)':>8}")
                continue
            s = timed(fn, args.repeat)
            print(f"{name:<62} {s / n * 1e6:8.2f} {len(data) / s / 1e6:7.0f} {2 * n / s:19,.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
