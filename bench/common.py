"""Helpers the benchmarks share."""

from __future__ import annotations

import socket
import subprocess
import sys


def measured(cmd: list[str]) -> tuple[float, int, int]:
    """(wall s, peak RSS KiB, stdout lines) of `cmd` run in a fresh child: ru_maxrss is a
    high-water mark over all children, so each run gets its own parent."""
    proc = subprocess.run([sys.executable, "-c",
                           "import resource,subprocess,sys,time;t=time.perf_counter();"
                           "p=subprocess.run(sys.argv[1:],stdout=subprocess.PIPE,stderr=subprocess.DEVNULL);"
                           "w=time.perf_counter()-t;r=resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss;"
                           "print(w,r,p.stdout.count(b'\\n'),p.returncode)", *cmd],
                          capture_output=True, text=True, check=True)
    w, r, n, rc = proc.stdout.split()
    if int(rc) != 0:
        raise RuntimeError(f"{cmd} exited {rc}")
    return float(w), int(r), int(n)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def warn_without_system_hyperscan(python: str) -> None:
    """The prefilters run 1.5-3x slower on the PyPI wheel's Hyperscan (no AVX2 code) than on the
    system's (Debian: libhyperscan-dev, found by `make install`): say so before measuring."""
    code = "from flowtrail.sources import linematch; print(int(linematch.NATIVE))"
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, check=False).stdout.strip()
    if out != "1":
        print("warning: flowtrail's prefilter runs on the PyPI hyperscan wheel here, not the system's "
              "Hyperscan: install libhyperscan-dev, then `make install`, to measure what docs/benchmarks.md "
              "records", file=sys.stderr, flush=True)
