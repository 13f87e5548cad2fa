"""Flow-export throughput: decode a lab capture once, then time each exporter's write()/encode.

    python bench/bench_export.py [--seconds 200]

Cases: Hubble-exporter file without a field mask (bytes pass through), with an 8-path field mask
(each line re-encoded), with a deny filter and 10 % DNS sampling; Elasticsearch bulk and Splunk
HEC encoding (no network: the bodies are built and measured). Prints flows/s per case.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from flowtrail.sinks.elastic import ElasticFlowExport
from flowtrail.sinks.export import Selector, build_flow_exports
from flowtrail.sinks.fieldmask import FieldMask
from flowtrail.sinks.splunk import SplunkHecFlowExport
from flowtrail.sources.decode import Decoder
from flowtrail.sources.files import iter_blocks

REPO = Path(__file__).resolve().parents[1]
MASK = ["time", "verdict", "source.namespace", "source.pod_name", "destination.namespace",
        "destination.pod_name", "l4", "node_name"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=200, help="simulated seconds of the demo cluster")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "flows.jsonl"
        subprocess.run([str(REPO / ".venv/bin/flowtrail"), "simulate", "-q", "--duration", f"{args.seconds}s",
                        "--scenario", "dns-c2", "-o", str(src)], check=True)
        cfg = [{"name": "file", "filePath": f"{tmp}/a.log", "fileMaxSizeMb": 100},
               {"name": "file+mask", "filePath": f"{tmp}/m.log", "fieldMask": MASK, "fileMaxSizeMb": 100},
               {"name": "file+filter+dns", "filePath": f"{tmp}/f.log",
                "excludeFilters": [{"source_pod": ["kube-system/"]}], "dnsSampling": 0.1}]
        exports = build_flow_exports(cfg)
        es = ElasticFlowExport("es", "http://127.0.0.1:9", Selector())
        esm = ElasticFlowExport("es+mask", "http://127.0.0.1:9", Selector(), FieldMask(MASK))
        hec = SplunkHecFlowExport("hec", "http://127.0.0.1:9", "t", Selector())
        paths = set().union(*(e.paths for e in exports)) | es.paths
        dec = Decoder(paths)
        with open(src, "rb") as fh:
            blocks = [dec.decode_block(data, str(src), first) for data, first in iter_blocks(fh, 16 << 20)]
        n = sum(len(d.rows) for d in blocks)
        print(f"{n:,} flows ({src.stat().st_size / 1e6:.0f} MB)")
        for e in exports:
            t = time.perf_counter()
            for d in blocks:
                e.write(d.table, d.rows)
            e.close()
            dt = time.perf_counter() - t
            print(f"{e.name:22s} {n / dt:10,.0f} flows/s  ({dt:.2f} s, exported {e.stats['exported']:,})")
        for h in (es, esm, hec):
            t = time.perf_counter()
            size = 0
            for d in blocks:
                size += sum(map(len, h.encode(d.table, d.rows, np.arange(len(d.rows)))))
            dt = time.perf_counter() - t
            print(f"{h.name + ' encode':22s} {n / dt:10,.0f} flows/s  ({dt:.2f} s, {size / dt / 1e6:.0f} MB/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
