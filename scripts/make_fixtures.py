"""Regenerate the rule pack's fixture flows from the lab simulator (deterministic).

    .venv/bin/python scripts/make_fixtures.py

Writes src/flowtrail/detect/rules/fixtures/: benign.jsonl.gz (3 min of benign traffic: the
negative fixture of every rule), baseline.json (learned from 30 other minutes of benign traffic),
intel.txt, and one <scenario>.jsonl.gz per attack scenario holding the attack's flows plus every
20th benign flow around them.
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
from flowtrail.sources.batches import batches
from flowtrail.sources.decode import Decoder
from flowtrail.sources.files import Input

OUT = Path(__file__).resolve().parents[1] / "src" / "flowtrail" / "detect" / "rules" / "fixtures"
SCENARIOS = {
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
}
INTEL = """# demo threat-intel feed (flowtrail lab scenarios)
185.220.101.47      # exfiltration endpoint
194.26.192.77       # threat-intel scenario address
91.92.247.12        # answer of the intel domain
invoice-cdn.duckdns.org
"""


def gz(path: Path, lines: list[bytes]) -> None:
    # mtime=0 keeps the archive byte-identical across regenerations
    path.write_bytes(gzip.compress(b"".join(lines), compresslevel=9, mtime=0))


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "intel.txt").write_text(INTEL)
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        simulate(Options(duration_ns=180 * NS, seed=11, rate=25, output=str(t / "benign.jsonl")))
        gz(OUT / "benign.jsonl.gz", (t / "benign.jsonl").read_bytes().splitlines(keepends=True))
        simulate(Options(duration_ns=1800 * NS, seed=12, rate=60, output=str(t / "learn.jsonl")))
        base = Baseline()
        dec = Decoder(FEATURE_PATHS)
        for b in batches([Input(str(t / "learn.jsonl"))], dec, None, workers=1):
            flows = b.table.filter(b.table.column("flow").is_valid())
            base.learn(build(flows, Enrichment()))
        base.save(OUT / "baseline.json")
        for name, spec in SCENARIOS.items():
            out, truth = t / f"{name}.jsonl", t / f"{name}.truth"
            simulate(Options(scenarios=[spec], duration_ns=180 * NS, seed=13, rate=25, output=str(out),
                             truth=str(truth)))
            uuids = set(json.loads(truth.read_text())["uuids"])
            keep = []
            for i, line in enumerate(out.read_bytes().splitlines(keepends=True)):
                if i % 20 == 0 or json.loads(line)["flow"]["uuid"] in uuids:
                    keep.append(line)
            gz(OUT / f"{name}.jsonl.gz", keep)
            print(f"{name}: {len(keep)} lines", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
