#!/usr/bin/env bash
# `make demo`: a guided tour. Simulates a 10-namespace cluster with the lab (benign history, then
# a window with attacks), asks `flowtrail observe` the questions an operator asks `hubble observe`,
# then runs `flowtrail detect`. Runs from the repository root after `make install`, in ~30 s.
set -euo pipefail
FT=.venv/bin/flowtrail
OUT=${DEMO_DIR:-.demo}
SAMPLES=src/flowtrail/data/hubble-samples.jsonl
INTEL=src/flowtrail/detect/rules/fixtures/intel.txt
export TZ=${TZ:-UTC}
mkdir -p "$OUT"
b() { printf '\n\033[1m== %s\033[0m\n' "$1"; }
run() { printf '$ flowtrail %s\n' "$*"; "$FT" "$@"; }

b "0. Real Hubble output from public Cilium sources, filtered exactly like hubble observe"
run observe --input-file "$SAMPLES" --all --verdict DROPPED

b "1. The lab: 30 minutes of normal traffic to learn from, then 15 minutes with attacks"
run simulate --duration 30m --rate 60 --seed 7 -o "$OUT/history.jsonl"
run simulate --duration 15m --rate 150 --seed 8 --start 2026-11-26T09:00:00Z -o "$OUT/flows.jsonl" \
  --truth "$OUT/truth.jsonl" \
  --scenario port-scan --scenario dns-c2 --scenario kube-api --scenario exfiltration \
  --scenario namespace-breach --scenario policy-gap --scenario threat-intel --scenario new-edge \
  --scenario drop-spike:at=0.85,window=90s

b "2. What was dropped? (the last 8 policy drops)"
run observe --input-file "$OUT/flows.jsonl" --verdict DROPPED --last 8

b "3. Who talks to the kube-apiserver? (reserved:kube-apiserver label, not an identity number)"
"$FT" observe --input-file "$OUT/flows.jsonl" --all --to-label reserved:kube-apiserver --not --from-namespace kube-system \
  -o json | .venv/bin/python -c '
import collections, json, sys
c = collections.Counter(json.loads(l)["flow"]["source"].get("namespace", "?") + "/" +
                        json.loads(l)["flow"]["source"].get("pod_name", "?") for l in sys.stdin)
for k, v in c.most_common(): print(f"{v:6} flows  {k}")'

b "4. Which pods resolve unusual domains? (DNS proxy records, names outside the cluster search path)"
run observe --input-file "$OUT/flows.jsonl" --type l7 --protocol dns \
  --allowlist '{"dns_query":["\\.(top|xyz|tk|pw|cc)\\.$"],"destination_pod":["app/"]}' --last 6

b "5. Learn a baseline from the history, then detect"
run baseline learn "$OUT/history.jsonl" -o "$OUT/baseline.json"
run detect "$OUT/flows.jsonl" --baseline "$OUT/baseline.json" --intel "$INTEL" --min-severity medium

b "6. Ground truth of the injected attacks (from --truth), to compare"
.venv/bin/python -c '
import json, sys
for line in open(sys.argv[1]):
    t = json.loads(line)
    scenario, category, actor, start = t["scenario"], t["category"], t["actor"], t["start"][11:19]
    print(f"{scenario:<17} {category:<16} {actor:<36} from {start}")' "$OUT/truth.jsonl"

b "7. The live monitor: flowtrail run follows an exporter file as Cilium appends to it"
rm -rf "$OUT/live" && mkdir -p "$OUT/live"
PORT=$(.venv/bin/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
printf '$ flowtrail run --input-file %s --metrics-listen 127.0.0.1:%s --alerts-file %s --state-dir %s &\n' \
  "$OUT/live/events.log" "$PORT" "$OUT/live/alerts.jsonl" "$OUT/live/state"
: > "$OUT/live/events.log"
"$FT" run --input-file "$OUT/live/events.log" --metrics-listen "127.0.0.1:$PORT" --alerts-file "$OUT/live/alerts.jsonl" \
  --state-dir "$OUT/live/state" --log-format text --log-level warning &
MON=$!
# the capture arrives in four bursts, as an exporter would append it
.venv/bin/python - "$OUT/flows.jsonl" "$OUT/live/events.log" <<'PY'
import sys, time
lines = open(sys.argv[1], "rb").readlines()
step = len(lines) // 4 + 1
for i in range(0, len(lines), step):
    with open(sys.argv[2], "ab") as fh:
        fh.writelines(lines[i:i + step])
    time.sleep(0.5)
PY
.venv/bin/python - "$PORT" "$(wc -l < "$OUT/flows.jsonl")" <<'PY'
import sys, time, urllib.request
url, want = f"http://127.0.0.1:{sys.argv[1]}", int(sys.argv[2])
for _ in range(600):
    try:
        text = urllib.request.urlopen(url + "/metrics", timeout=2).read().decode()
    except OSError:
        time.sleep(0.1)
        continue
    done = [l for l in text.splitlines() if l.startswith("flowtrail_flows_processed_total ")]
    if done and float(done[0].split()[1]) >= want:
        break
    time.sleep(0.1)
print(f"$ curl -s {url}/metrics | grep -E '^(hubble_drop_total|hubble_flows_to_world_total|flowtrail_alerts_total)' | sort -k2 -gr | head -12")
rows = [l for l in text.splitlines() if l.split("{")[0] in ("hubble_drop_total", "hubble_flows_to_world_total", "flowtrail_alerts_total")]
for l in sorted(rows, key=lambda l: -float(l.rsplit(" ", 1)[1]))[:12]:
    print(l)
print(f"$ curl -s {url}/readyz"); print(urllib.request.urlopen(url + "/readyz").read().decode())
PY
kill -TERM $MON && wait $MON && echo "(SIGTERM: flushed, exit code $?)"
printf '$ wc -l %s\n' "$OUT/live/alerts.jsonl"; wc -l < "$OUT/live/alerts.jsonl"

echo
echo "Files are in $OUT/. Try: $FT detect $OUT/flows.jsonl -o json | head -1 | python3 -m json.tool"
