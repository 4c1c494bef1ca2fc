#!/usr/bin/env bash
# Starts the demo (proxy + built-in simulator), sends a few requests, scrapes /metrics from the
# admin listener and checks the exposition with `promtool check metrics`.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v promtool >/dev/null 2>&1; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "check-metrics: promtool is missing; install Debian's 'prometheus' package" >&2
    exit 1
  fi
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null
fi

cargo build --locked --quiet --bin defender-proxy
# CI may share a target directory between checkouts.
target_dir=${CARGO_TARGET_DIR:-target}
out=$(mktemp)
DPX_SERVER__LISTEN=127.0.0.1:0 DPX_SERVER__ADMIN_LISTEN=127.0.0.1:0 DPX_TELEMETRY__LOG_LEVEL=warn \
  "$target_dir/debug/defender-proxy" demo >"$out" 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -f "$out"' EXIT

for _ in $(seq 1 100); do
  grep -q "consumer key" "$out" && break
  sleep 0.1
done
api=$(sed -n 's|.*proxy on http://\([^,]*\), admin on http://\([^,]*\),.*|\1|p' "$out")
admin=$(sed -n 's|.*proxy on http://\([^,]*\), admin on http://\([^,]*\),.*|\2|p' "$out")
key=$(sed -n 's|^consumer key (read+write): ||p' "$out")
[ -n "$api" ] && [ -n "$admin" ] && [ -n "$key" ] || { echo "check-metrics: demo did not start:"; cat "$out"; exit 1; }

for id in 1 2 2 3 x; do
  curl -s -o /dev/null -H "Authorization: Bearer $key" "http://$api/api/incidents/$id"
done
curl -s -o /dev/null -H "Authorization: Bearer $key" "http://$api/api/incidents?\$top=5"
curl -s -o /dev/null "http://$api/api/incidents/1"

metrics=$(curl -sf "http://$admin/metrics")
echo "$metrics" | grep -c '^defender_proxy_' | xargs echo "check-metrics: samples:"
echo "$metrics" | promtool check metrics
echo "check-metrics: promtool check metrics passed"
