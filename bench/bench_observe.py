"""Side-by-side timing of `flowtrail observe` against jq (and grep as a floor).

    python bench/bench_observe.py [--flows 1000000] [--repeat 3] [--only flowtrail] [--write-md docs/benchmarks.md]

Prints, per case and tool: median wall seconds, flows/s, MB/s, peak RSS, output lines, and the
ratio to jq. Output goes to /dev/null; line counts of flowtrail and jq are compared.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from common import warn_without_system_hyperscan  # noqa: E402


def run(cmd: list[str]) -> tuple[float, int, int]:
    """(wall seconds, peak RSS KiB, output lines)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    lines = 0
    # the counting reader shares the two cores with the tool measured: it reads into one buffer
    # and counts with numpy (~0.1 s per GB; bytes.count ran at ~1.4 GB/s, a second core's worth)
    buf = bytearray(1 << 20)
    view = np.frombuffer(buf, np.uint8)
    fd = proc.stdout.fileno()
    while got := os.readv(fd, [buf]):
        lines += int(np.count_nonzero(view[:got] == 10))
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) not in (0, 1):
        raise RuntimeError(f"{cmd[0]} failed: {status}")
    return wall, usage.ru_maxrss, lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--flows", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--jq-repeat", type=int, default=1, help="jq is slow; its runs are fewer by default")
    ap.add_argument("--flowtrail", default=str(REPO / ".venv" / "bin" / "flowtrail"))
    ap.add_argument("--only", help="run only the tools whose name starts with this (e.g. flowtrail)")
    ap.add_argument("--write-md", help="rewrite the table of this file; sections after it are kept")
    args = ap.parse_args(argv)
    warn_without_system_hyperscan(str(REPO / ".venv" / "bin" / "python"))
    data = REPO / "bench" / "data" / f"flows-{args.flows}.jsonl"
    if not data.exists():
        subprocess.run([sys.executable, str(REPO / "bench" / "genflows.py"), "-n", str(args.flows), "-o", str(data)],
                       check=True)
    size_mb = data.stat().st_size / 1e6
    f = str(data)
    ft = args.flowtrail
    cases = [
        ("selective: --verdict DROPPED -o json", [
            ("flowtrail", [ft, "observe", "--input-file", f, "--all", "--verdict", "DROPPED", "-o", "json"]),
            ("jq", ["jq", "-c", 'select(.flow.verdict=="DROPPED")', f]),
            ("grep -F (floor, not equivalent)", ["grep", "-F", '"verdict":"DROPPED"', f]),
        ]),
        ("compound: --from-namespace app --to-port 5432 --verdict DROPPED -o json", [
            ("flowtrail", [ft, "observe", "--input-file", f, "--all", "--from-namespace", "app", "--to-port", "5432",
                           "--verdict", "DROPPED", "-o", "json"]),
            ("jq", ["jq", "-c", 'select(.flow.source.namespace=="app" and .flow.verdict=="DROPPED" and '
                    '((.flow.l4.TCP // .flow.l4.UDP // .flow.l4.SCTP // {}).destination_port == 5432))', f]),
        ]),
        ("every flow re-printed: -o compact (flowtrail) vs jq -c .", [
            ("flowtrail", [ft, "observe", "--input-file", f, "--all", "-o", "compact", "--color", "never"]),
            ("jq", ["jq", "-c", ".", f]),
        ]),
        ("every flow out: -o json, no filter", [
            ("flowtrail", [ft, "observe", "--input-file", f, "--all", "-o", "json"]),
        ]),
    ]
    if shutil.which("jaq"):
        cases[0][1].append(("jaq", ["jaq", "-c", 'select(.flow.verdict=="DROPPED")', f]))
    rows: list[tuple[Any, ...]] = []
    for title, tools in cases:
        jq_median = None
        counts = {}
        for name, cmd in tools:
            if args.only and not name.startswith(args.only):
                continue
            reps = args.jq_repeat if name.startswith("jq") else args.repeat
            results = [run(cmd) for _ in range(reps)]
            med = statistics.median(r[0] for r in results)
            rss = max(r[1] for r in results) / 1024
            counts[name] = results[0][2]
            if name == "jq":
                jq_median = med
            rows.append((title, name, med, args.flows / med, size_mb / med, rss, results[0][2], reps))
            print(f"{title:70s} {name:32s} {med:8.2f} s {args.flows / med:>12,.0f} flows/s "
                  f"{size_mb / med:8.0f} MB/s {rss:7.0f} MB RSS lines={results[0][2]}", flush=True)
        if "jq" in counts and counts.get("flowtrail") != counts["jq"] and "compact" not in title:
            print(f"  !! line counts differ: {counts}", flush=True)
        for i, r in enumerate(rows):
            if r[0] == title and jq_median:
                rows[i] = (*r, jq_median / r[2])
    if args.write_md:
        write_md(Path(args.write_md), rows, args, size_mb)
    return 0


def write_md(path: Path, rows: list[tuple], args: argparse.Namespace, size_mb: float) -> None:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    lines = [
        "# Benchmarks", "",
        f"Machine: {os.cpu_count()} cores, {cpu}; Python {platform.python_version()}; "
        f"{time.strftime('%Y-%m-%d')}.",
        f"Data: {args.flows:,} generated Hubble flows (`bench/genflows.py`, seed 1), {size_mb:.0f} MB, "
        f"~{size_mb * 1e6 / args.flows:.0f} B/line, ~5 % DROPPED.",
        f"Medians of {args.repeat} runs ({args.jq_repeat} for jq); output to a pipe that counts lines; "
        "peak RSS from wait4. Reproduce: `make install && .venv/bin/python bench/bench_observe.py "
        f"--flows {args.flows} --write-md docs/benchmarks.md`.", "",
        "| case | tool | median s | flows/s | MB/s | peak RSS MB | lines | × jq |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ratio = f"{r[8]:.1f}" if len(r) > 8 else ""
        lines.append(f"| {r[0]} | {r[1]} | {r[2]:.2f} | {r[3]:,.0f} | {r[4]:.0f} | {r[5]:.0f} | {r[6]} | {ratio} |")
    # other benchmarks keep their own sections (## ...) below this table
    old = path.read_text() if path.exists() else ""
    rest = old[old.index("\n## ") :] if "\n## " in old else "\n"
    path.write_text("\n".join(lines) + "\n" + rest)


if __name__ == "__main__":
    raise SystemExit(main())
