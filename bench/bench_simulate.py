"""Write speed of `flowtrail simulate` (flows/s, MB/s, peak RSS), median of runs.

    python bench/bench_simulate.py [--flows 1000000] [--repeat 3] [--write-md docs/benchmarks.md]

Runs the bundled demo cluster with all attack scenarios at a rate that yields about --flows flows,
writing to a new file on disk (the writer thread overlaps I/O with generation); --overwrite
writes over the previous run's output instead.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--flows", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--overwrite", action="store_true",
                    help="write over the previous run's output (by default it is removed before each run, untimed: "
                         "freeing a 1.9 GB file is the filesystem's cost, not the writer's)")
    ap.add_argument("--write-md")
    args = ap.parse_args(argv)
    ft = str(REPO / ".venv" / "bin" / "flowtrail")
    from flowtrail.lab.scenarios import SCENARIOS
    duration = 3600
    rate = args.flows / duration
    walls, rss, sizes, counts = [], [], [], []
    with tempfile.TemporaryDirectory(dir=REPO / "bench") as tmp:
        out = Path(tmp) / "sim.jsonl"
        cmd = [ft, "simulate", "--duration", f"{duration}s", "--rate", f"{rate:.3f}", "-o", str(out), "-q",
               *(x for s in SCENARIOS for x in ("--scenario", s))]
        for _ in range(args.repeat):
            if not args.overwrite:
                out.unlink(missing_ok=True)
                os.sync()  # the removed file's freeing and writeback are not left to the next run
            res = subprocess.run([sys.executable, "-c",
                                  "import resource,subprocess,sys,time;t=time.perf_counter();"
                                  "p=subprocess.run(sys.argv[1:]);w=time.perf_counter()-t;"
                                  "print(w,resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,p.returncode)", *cmd],
                                 capture_output=True, text=True, check=True)
            w, r, rc = res.stdout.split()
            if int(rc):
                raise RuntimeError("simulate failed")
            walls.append(float(w))
            rss.append(int(r))
            sizes.append(out.stat().st_size)
            counts.append(sum(1 for _ in out.open("rb")))
    med = statistics.median(walls)
    n = counts[0]
    mode = "over the previous output" if args.overwrite else "to a new file"
    line = (f"flowtrail simulate ({mode}): {n:,} flows, {sizes[0] / 1e6:,.0f} MB in {med:.2f} s "
            f"(median of {args.repeat}): "
            f"{n / med:,.0f} flows/s, {sizes[0] / 1e6 / med:,.0f} MB/s, peak RSS {max(rss) / 1024:,.0f} MB")
    print(line)
    if args.write_md:
        md = Path(args.write_md)
        text = md.read_text() if md.exists() else "# Benchmarks\n"
        marker = "## flowtrail simulate"
        head, _, rest = text.partition(marker)
        tail = rest.split("\n## ", 1)[1] if "\n## " in rest else ""
        text = head.rstrip() + f"\n\n{marker}\n\n`python bench/bench_simulate.py --flows {args.flows}` on " \
            f"{os.cpu_count()} CPUs, all ten scenarios, 1 h of simulated time, to local disk.\n\n{line}\n" + \
            (f"\n## {tail}" if tail else "")
        md.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
