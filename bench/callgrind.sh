#!/usr/bin/env bash
# Instructions per cache hit, from valgrind's callgrind: stable on a noisy machine, where CPU time
# is not. Starts the simulator, then the server under callgrind twice: once serving WARM requests
# and once WARM + N, all on one keep-alive connection (bench/loadtool.py hits); the difference of
# the two totals divided by N is the cost of one hit, start-up and shutdown cancelling out.
#
# Usage: bash bench/callgrind.sh [N]   (default 2000; needs valgrind and the release build)
# Prints one JSON object per server: {"server", "instructions_per_hit", "n"}. Raw callgrind
# outputs are kept in bench/out/callgrind/ (callgrind_annotate reads them).
# Environment: CALLGRIND_SERVERS ("defender-proxy defender-proxy-log-off bare-hyper" by default).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$PWD"
OUT="$ROOT/bench/out/callgrind"
N="${1:-2000}"
WARM=200
PORT_BASE="${BENCH_PORT_BASE:-18400}"
SIM_PORT=$((PORT_BASE + 11))
PROXY_PORT=$((PORT_BASE + 12))
ADMIN_PORT=$((PORT_BASE + 13))
SERVERS="${CALLGRIND_SERVERS:-defender-proxy defender-proxy-log-off bare-hyper}"
DPX="$ROOT/target/release/defender-proxy"
BARE="$ROOT/target/release/examples/bare_hyper"
TENANT="00000000-0000-0000-0000-00000000d3f0"
command -v valgrind >/dev/null || { echo "callgrind: valgrind is required" >&2; exit 1; }
[ -x "$DPX" ] && [ -x "$BARE" ] || { echo "callgrind: build first (cargo build --release --bin defender-proxy --example bare_hyper)" >&2; exit 1; }
mkdir -p "$OUT"

PIDS=()
cleanup() { for p in "${PIDS[@]+"${PIDS[@]}"}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

wait_http() {
    for _ in $(seq 1 600); do
        curl -s -o /dev/null --max-time 1 "$1" && return 0
        sleep 0.1
    done
    echo "callgrind: nothing answered at $1" >&2
    exit 1
}

cat >"$OUT/sim.toml" <<EOF2
seed = 42
incidents = 100
first_id = 1
missing_share = 0.0
[quotas]
get = [{ limit = 100000, window = "1s" }]
EOF2
"$DPX" simulate --listen "127.0.0.1:$SIM_PORT" --config "$OUT/sim.toml" >"$OUT/sim.out" 2>&1 &
SIM_PID=$!
PIDS+=("$SIM_PID")
wait_http "http://127.0.0.1:$SIM_PORT/_sim/stats"
keys=$("$DPX" hash-key)
KEY=$(sed -n 's/^key: *//p' <<<"$keys")
HASH=$(sed -n 's/^hash: *//p' <<<"$keys")

# proxy_config FILE ACCESS_LOG(true|false)
proxy_config() {
    cat >"$1" <<EOF2
[server]
listen = "127.0.0.1:$PROXY_PORT"
admin_listen = "127.0.0.1:$ADMIN_PORT"
grace_period = "1s"
[upstream]
base_url = "http://127.0.0.1:$SIM_PORT"
[token]
authority = "http://127.0.0.1:$SIM_PORT"
tenant_id = "$TENANT"
client_id = "defender-proxy-demo"
client_secret = "demo-secret"
[auth.consumers.bench]
key_hashes = ["$HASH"]
rights = ["read"]
[cache]
ttl = "1h"
[budget.routes.get_incident]
quotas = [{ limit = 100000, window = "1s" }]
[telemetry]
access_log = $2
EOF2
}

# total_ir SERVER REQUESTS: instructions of the whole server process serving REQUESTS hits.
total_ir() {
    local server="$1" n="$2" file="$OUT/$1-$2.callgrind" cmd url body="$OUT/body.json"
    case "$server" in
    defender-proxy | defender-proxy-log-off)
        local log=true
        [ "$server" = defender-proxy-log-off ] && log=false
        proxy_config "$OUT/$server.toml" "$log"
        cmd=("$DPX" serve --config "$OUT/$server.toml")
        url="http://127.0.0.1:$PROXY_PORT"
        ;;
    bare-hyper)
        if [ ! -s "$body" ]; then
            # The same bytes the proxy serves: incident 1 from the simulator, with its token.
            local token
            token=$(curl -sf -X POST "http://127.0.0.1:$SIM_PORT/$TENANT/oauth2/v2.0/token" \
                -d grant_type=client_credentials -d client_id=defender-proxy-demo -d client_secret=demo-secret \
                --data-urlencode "scope=https://api.security.microsoft.com/.default" | jq -r .access_token)
            curl -sf "http://127.0.0.1:$SIM_PORT/api/incidents/1" -H "Authorization: Bearer $token" >"$body"
        fi
        cmd=("$BARE" --listen "127.0.0.1:$PROXY_PORT" --body-file "$body")
        url="http://127.0.0.1:$PROXY_PORT"
        ;;
    esac
    valgrind --tool=callgrind --callgrind-out-file="$file" "${cmd[@]}" >"$OUT/$server-$n.log" 2>"$OUT/$server-$n.err" &
    local pid=$!
    PIDS+=("$pid")
    wait_http "$url/"
    python3 "$ROOT/bench/loadtool.py" hits --url "$url/api/incidents/1" --key "$KEY" -n "$n" >/dev/null
    kill -TERM "$pid"
    wait "$pid" 2>/dev/null || true
    awk '/^(summary|totals):/ { print $2; exit }' "$file"
}

for server in $SERVERS; do
    a=$(total_ir "$server" "$WARM")
    b=$(total_ir "$server" $((WARM + N)))
    jq -nc --arg s "$server" --argjson a "$a" --argjson b "$b" --argjson n "$N" \
        '{server: $s, instructions_per_hit: (($b - $a) / $n | round), n: $n}'
done
