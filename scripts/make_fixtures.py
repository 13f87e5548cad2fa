"""Regenerate the rule pack's fixture flows from the lab simulator (deterministic).

    .venv/bin/python scripts/make_fixtures.py [NAME ...]

Writes src/flowtrail/detect/rules/fixtures/: benign.jsonl.gz (3 min of benign traffic: the
negative fixture of every rule), baseline.json (learned from 30 other minutes of benign traffic
at 08:00 UTC and 30 at 02:00 UTC, so its per-hour rates know a day hour and a quiet night hour),
intel.txt, and one <scenario>.jsonl.gz per attack scenario holding the attack's flows plus every
20th benign flow around them. NAMEs (benign, baseline, intel, or fixture names) regenerate only
those files.
"""

from __future__ import annotations

import gzip
import json
import sys
import tempfile
from pathlib import Path

from flowtrail.detect.baseline import Baseline
from flowtrail.detect.features import FEATURE_PATHS, Enrichment, build
from flowtrail.lab.simulate import NS, Options, simulate
from flowtrail.model.timeutil import parse_rfc3339_ns
from flowtrail.sources.batches import batches
from flowtrail.sources.decode import Decoder
from flowtrail.sources.files import Input

OUT = Path(__file__).resolve().parents[1] / "src" / "flowtrail" / "detect" / "rules" / "fixtures"
SCENARIOS: dict[str, str | tuple[str, str]] = {
    "port-scan": "port-scan:at=0.2",
    "ip-sweep": "ip-sweep:at=0.2",
    "policy-gap": "policy-gap:at=0.2",
    "exfiltration": "exfiltration:at=0.2,span=2m",
    "dns-c2": "dns-c2:at=0.1,span=2m30s",
    "dns-tunnel-heavy": "dns-c2:at=0.05,span=2m45s,tunnel=230,dga=60",
    "kube-api": "kube-api:at=0.2,span=2m",
    "namespace-breach": "namespace-breach:at=0.2,span=2m",
    "drop-spike": "drop-spike:at=0.75,window=40s",
    "threat-intel": "threat-intel:at=0.2",
    "new-edge": "new-edge:at=0.2,span=2m",
    # a batch worker opens 60 connections to the database it always uses (a known edge) within a
    # minute, at 02:10 UTC: ~600 flows, above its learned limit at 02:00 (~460 flows/min, the
    # night rate is about half the day's) but below the 08:00 one (~800): a burst only at night
    "flow-burst": ("policy-gap:actor=app/worker,target=database/postgres,port=5432,connections=60,"
                   "at=0.3,span=1m", "2026-11-27T02:10:00Z"),
}
# the baseline's benign history: (start, seed); the fixtures' default start is 2026-11-26T08:00Z
LEARN = [("2026-11-26T02:00:00Z", 14), ("2026-11-26T08:00:00Z", 12)]
INTEL = """# demo threat-intel feed (flowtrail lab scenarios)
185.220.101.47      # exfiltration endpoint
194.26.192.77       # threat-intel scenario address
91.92.247.12        # answer of the intel domain
invoice-cdn.duckdns.org
"""


def gz(path: Path, lines: list[bytes]) -> None:
    # mtime=0 keeps the archive byte-identical across regenerations
    path.write_bytes(gzip.compress(b"".join(lines), compresslevel=9, mtime=0))


def at(text: str) -> int:
    ns = parse_rfc3339_ns(text)
    assert ns is not None, text
    return ns


def main(argv: list[str]) -> int:
    known = {"benign", "baseline", "intel", *SCENARIOS}
    only = set(argv) or known
    if only - known:
        print(f"unknown fixture(s) {sorted(only - known)} (known: {', '.join(sorted(known))})", file=sys.stderr)
        return 2
    OUT.mkdir(parents=True, exist_ok=True)
    if "intel" in only:
        (OUT / "intel.txt").write_text(INTEL)
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        if "benign" in only:
            simulate(Options(duration_ns=180 * NS, seed=11, rate=25, output=str(t / "benign.jsonl")))
            gz(OUT / "benign.jsonl.gz", (t / "benign.jsonl").read_bytes().splitlines(keepends=True))
        if "baseline" in only:
            base = Baseline()
            dec = Decoder(FEATURE_PATHS)
            # in time order: a baseline learns like a live stream
            for start, seed in LEARN:
                learn = t / f"learn-{seed}.jsonl"
                simulate(Options(duration_ns=1800 * NS, seed=seed, rate=60, start_ns=at(start),
                                 output=str(learn)))
                for b in batches([Input(str(learn))], dec, None, workers=1):
                    flows = b.table.filter(b.table.column("flow").is_valid())
                    base.learn(build(flows, Enrichment()))
            base.save(OUT / "baseline.json")
        for name, what in SCENARIOS.items():
            if name not in only:
                continue
            spec, start = what if isinstance(what, tuple) else (what, "")
            out, truth = t / f"{name}.jsonl", t / f"{name}.truth"
            opts = Options(scenarios=[spec], duration_ns=180 * NS, seed=13, rate=25, output=str(out),
                           truth=str(truth))
            if start:
                opts.start_ns = at(start)
            simulate(opts)
            uuids = set(json.loads(truth.read_text())["uuids"])
            keep = []
            for i, line in enumerate(out.read_bytes().splitlines(keepends=True)):
                if i % 20 == 0 or json.loads(line)["flow"]["uuid"] in uuids:
                    keep.append(line)
            gz(OUT / f"{name}.jsonl.gz", keep)
            print(f"{name}: {len(keep)} lines", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
