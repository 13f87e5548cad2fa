"""Throughput of `flowtrail detect` (full default pack) against jq running three of its rules.

    python bench/bench_detect.py [--flows 1000000] [--repeat 3] [--write-md docs/benchmarks.md]

Input is the core benchmark file (bench/genflows.py, ~1.7 KB per flow). flowtrail runs every
default rule (27 rules; intel and baseline rules are given a feed and a baseline so all are
active); jq, what a user would script instead, evaluates only three single-flow conditions
(kube-apiserver access from outside kube-system/monitoring, world egress from production,
DNS names under .xyz/.top) with no windows, grouping or state. Prints median wall seconds,
flows/s and peak RSS (ru_maxrss of the process tree's largest process).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from common import measured, warn_without_system_hyperscan  # noqa: E402

JQ = (
    'select((.flow.destination.labels // [] | index("reserved:kube-apiserver")) and '
    '((.flow.source.namespace // "") | IN("kube-system","monitoring") | not)) // '
    'select((.flow.destination.labels // [] | index("reserved:world")) and .flow.source.namespace == "production") // '
    'select((.flow.l7.dns.query // "") | test("\\\\.(xyz|top)\\\\.$"))'
)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--flows", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--jq-repeat", type=int, default=1)
    ap.add_argument("--write-md")
    args = ap.parse_args(argv)
    warn_without_system_hyperscan(str(REPO / ".venv" / "bin" / "python"))
    data = REPO / "bench" / "data" / f"flows-{args.flows}.jsonl"
    data.parent.mkdir(exist_ok=True)
    if not data.exists():
        subprocess.run([sys.executable, str(REPO / "bench" / "genflows.py"), "-n", str(args.flows), "-o", str(data)],
                       check=True)
    ft = str(REPO / ".venv" / "bin" / "flowtrail")
    fixtures = REPO / "src" / "flowtrail" / "detect" / "rules" / "fixtures"
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "baseline.json"
        subprocess.run([ft, "baseline", "learn", str(data), "-o", str(base)], check=True, capture_output=True)
        cases = [
            ("flowtrail detect (27 rules, intel + baseline)",
             [ft, "detect", str(data), "-o", "json", "--intel", str(fixtures / "intel.txt"), "--baseline", str(base)],
             args.repeat),
            ("flowtrail detect (default: 18 rules without intel/baseline)", [ft, "detect", str(data), "-o", "json"],
             args.repeat),
            ("jq, 3 stateless conditions", ["jq", "-c", JQ, str(data)], args.jq_repeat),
        ]
        results = []
        for name, cmd, reps in cases:
            if cmd[0] == "jq" and not shutil.which("jq"):
                continue
            walls, rsss, out = [], [], 0
            for _ in range(reps):
                w, r, n = measured(cmd)
                walls.append(w)
                rsss.append(r)
                out = n
            med = statistics.median(walls)
            results.append((name, med, args.flows / med, max(rsss) / 1024, out))
            print(f"{name:<60} {med:7.2f} s {args.flows / med:>10,.0f} flows/s  peak RSS {max(rsss) / 1024:7.0f} MB"
                  f"  output {out} lines", flush=True)
    jq_row = next((r for r in results if r[0].startswith("jq")), None)
    if args.write_md:
        md = Path(args.write_md)
        text = md.read_text() if md.exists() else "# Benchmarks\n"
        marker = "## flowtrail detect"
        head, _, rest = text.partition(marker)
        # keep the sections other benchmarks wrote after this one
        after = ("\n## " + rest.split("\n## ", 1)[1]) if "\n## " in rest else ""
        text = head.rstrip() + "\n\n"
        size = data.stat().st_size / 1e6
        text += (f"{marker}\n\n`python bench/bench_detect.py --flows {args.flows} --repeat {args.repeat}` on "
                 f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {args.flows:,} flows "
                 f"({size:,.0f} MB, bench/genflows.py). Median of {args.repeat} runs; peak RSS is the largest "
                 "process.\n\n| run | median s | flows/s | peak RSS MB | vs jq |\n|---|---|---|---|---|\n")
        for name, med, fps, rss, _ in results:
            ratio = f"{jq_row[1] / med:.1f}x" if jq_row and name != jq_row[0] else "-"
            text += f"| {name} | {med:.2f} | {fps:,.0f} | {rss:,.0f} | {ratio} |\n"
        md.write_text(text + after)
    return 0


if __name__ == "__main__":
    sys.exit(main())
