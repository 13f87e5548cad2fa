#!/usr/bin/env bash
# `make demo`: flowtrail observe over the bundled real Hubble samples, the way an operator
# would query them with `hubble observe`. Runs from the repository root after `make install`.
set -euo pipefail
FT=.venv/bin/flowtrail
DATA=src/flowtrail/data/hubble-samples.jsonl
export TZ=${TZ:-UTC}
section() { printf '\n\033[1m== %s\033[0m\n$ %s\n' "$1" "$2"; }
run() { section "$1" "flowtrail ${*:2}"; "$FT" "${@:2}"; }

echo "flowtrail demo: $(wc -l < "$DATA") real Hubble lines from public Cilium sources ($DATA)"
run "Everything, as hubble prints it (last 20 by default, like hubble)" observe --input-file "$DATA"
run "What was dropped, and why" observe --input-file "$DATA" --all --verdict DROPPED
run "Who talks to the world (reserved:world identity)" observe --input-file "$DATA" --all --to-identity world
run "Which pods resolve names, and what they asked" observe --input-file "$DATA" --all --protocol dns --type l7
run "HTTP errors (5xx) with the request that caused them" observe --input-file "$DATA" --all --http-status 5+ -o dict
run "Traffic of one namespace, except health checks, as a table" observe --input-file "$DATA" --all -n bookinfo --not --label reserved:host -o table
run "DNS queries matching a regex (FlowFilter dns_query via --allowlist)" observe --input-file "$DATA" --all --allowlist '{"dns_query":["svc\\.cluster\\.local\\.$"]}' -o json --stats
run "The raw FlowFilters hubble would send (for exporter allow/deny lists)" observe --namespace payments --not --label k8s:app=web --print-raw-filters
