#!/usr/bin/env bash
# Load benchmark: defender-proxy against nginx (proxy_cache + proxy_cache_lock + limit_req) and a
# bare hyper server, all on 127.0.0.1 in front of the built-in Defender simulator, driven by the
# same wrk at the same connection counts. Writes raw outputs to bench/out/ and regenerates
# bench/RESULTS.md (machine, versions, date, one table per scenario, the targets met or missed,
# and criterion's medians from `cargo bench`).
#
# Usage (from anywhere; it works on the repository it lives in):
#   bash bench/run.sh                        every scenario, then cargo bench, then RESULTS.md
#   bash bench/run.sh --duration 5           seconds per load run (default 10)
#   bash bench/run.sh --connections "1 64"   wrk connection counts (default "1 64")
#   bash bench/run.sh --scenarios "hot cold" a subset (default: every scenario)
#   bash bench/run.sh --no-criterion         skip `cargo bench` (its last results are still shown)
#   bash bench/run.sh --no-build             use the binaries already in target/release
#   bash bench/run.sh --rounds 3             rounds of the hot-path comparison (default 3)
#   bash bench/run.sh --no-callgrind         skip the callgrind instruction counts
#   bash bench/run.sh --keep                 keep the previous RESULTS.md's sections and targets
#                                            that this run did not measure, marked with their date
#
# With 2 or more CPUs, every server runs pinned to CPU 0 and wrk to CPU 1 (BENCH_SERVER_CPU,
# BENCH_LOAD_CPU), so the server's CPU time is not mixed with the load generator's.
#
# A manual benchmark: CI only compiles the benches (`cargo bench --no-run`). Missing tools (nginx,
# wrk, curl, jq) are installed from Debian when run as root. Every process started here is
# stopped by its pid, also on failure or Ctrl-C. Ports BENCH_PORT_BASE+1..+6 (default 18401-18406)
# must be free.
#
# Adding a scenario: write `scenario_NAME` (start what it needs with the start_* helpers, measure
# with run_wrk / record, write its section with begin_section and load_table, add targets with
# add_target) and add NAME to SCENARIOS.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$PWD"
BENCH="$ROOT/bench"
LUA="$BENCH/lua"
OUT="$BENCH/out"
RESULTS="$BENCH/RESULTS.md"

DURATION="${BENCH_DURATION:-10}"
CONNECTIONS="${BENCH_CONNECTIONS:-1 64}"
SCENARIOS="${BENCH_SCENARIOS:-hot dialects zipf cold mixed startup freshness freshness_graph flood shared}"
FRESHNESS_MINUTES="${BENCH_FRESHNESS_MINUTES:-3}"  # per mode (with and without the sync)
SEED="${BENCH_SEED:-42}"
PORT_BASE="${BENCH_PORT_BASE:-18400}"
RUN_CRITERION=1
KEEP=0
RUN_CALLGRIND=1
BUILD=1
ROUNDS="${BENCH_ROUNDS:-3}"
SERVER_CPU="${BENCH_SERVER_CPU:-0}"
LOAD_CPU="${BENCH_LOAD_CPU:-1}"

# Workload shapes.
ZIPF_IDS=10000        # ids 1..10000, all existing (the simulator runs with missing_share = 0)
ZIPF_S=1.0            # Zipf exponent
HOT_ID=1              # the one id of the hot scenario
COLD_ID=4242          # the id of the cold burst (never asked before the burst)
COLD_BURST=1000       # concurrent requests in the cold burst
MIXED_HOT_IDS=20      # mixed: hits spread over ids 1..20 ...
MIXED_COLD_SHARE=0.01 # ... and 1% of requests for ids never asked before (misses)
MIXED_MAX_WAIT=2      # seconds a miss may queue for an upstream slot (proxy max_wait, nginx burst)
# The mixed scenario's scaled-down Get quota, enforced by the simulator and configured in both
# proxies: the shape of Defender's (a short window and a long one with a lower sustained rate).
MIXED_SHORT_LIMIT=20
MIXED_SHORT_WINDOW=2
MIXED_LONG_LIMIT=60
MIXED_LONG_WINDOW=20
STARTUP_RUNS=5
# Both caches' size bound: room for all 10,000 simulated incidents (the default 256 MiB is not).
CACHE_MAX_BYTES=1073741824

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
    case "$1" in
    --duration) DURATION="$2"; shift 2 ;;
    --connections) CONNECTIONS="$2"; shift 2 ;;
    --scenarios) SCENARIOS="$2"; shift 2 ;;
    --no-criterion) RUN_CRITERION=0; shift ;;
    --keep) KEEP=1; shift ;;
    --no-build) BUILD=0; shift ;;
    --rounds) ROUNDS="$2"; shift 2 ;;
    --no-callgrind) RUN_CALLGRIND=0; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "bench: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

SIM_PORT=$((PORT_BASE + 1))
PROXY_PORT=$((PORT_BASE + 2))
ADMIN_PORT=$((PORT_BASE + 3))
NGINX_PORT=$((PORT_BASE + 4))
NGINX_BACK_PORT=$((PORT_BASE + 5))
BARE_PORT=$((PORT_BASE + 6))
# The hot scenario's second proxy (default configuration, access log on) and nginx's front server
# with an access log.
PROXY_LOG_PORT=$((PORT_BASE + 7))
ADMIN_LOG_PORT=$((PORT_BASE + 8))
# The shared scenario's redis-server.
REDIS_PORT=$((PORT_BASE + 10))
NGINX_LOG_PORT=$((PORT_BASE + 9))
SIM_URL="http://127.0.0.1:$SIM_PORT"
TENANT="00000000-0000-0000-0000-00000000d3f0"
CLIENT_ID="defender-proxy-demo"
CLIENT_SECRET="demo-secret"

TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
DPX="$TARGET_DIR/release/defender-proxy"
BARE="$TARGET_DIR/release/examples/bare_hyper"
FRESH="$TARGET_DIR/release/examples/freshness"

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# Pinning: servers on SERVER_CPU, wrk on LOAD_CPU, when the machine has two CPUs or more.
PIN_SERVER=()
PIN_LOAD=()
if [ "$(nproc)" -ge 2 ] && command -v taskset >/dev/null; then
    PIN_SERVER=(taskset -c "$SERVER_CPU")
    PIN_LOAD=(taskset -c "$LOAD_CPU")
fi
die() {
    printf 'bench: %s\n' "$*" >&2
    exit 1
}

# ---------------------------------------------------------------------------------------------
# Processes: every one started here is recorded, and stopped by its pid.

PIDS=()

# The scenario running (names the raw output files).
SCENARIO=setup

# start_bg NAME COMMAND...: starts COMMAND with output in $OUT/SCENARIO-NAME.{out,err}; pid in
# LAST_PID.
start_bg() {
    local name="$1"
    shift
    "$@" >"$OUT/$SCENARIO-$name.out" 2>"$OUT/$SCENARIO-$name.err" &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
}

# Whether PID is running (a zombie waiting to be reaped does not count).
alive() {
    local state
    state=$(awk '{ sub(/.*\) /, ""); print $1 }' "/proc/$1/stat" 2>/dev/null) || return 1
    [ -n "$state" ] && [ "$state" != Z ]
}

# stop_pid PID: SIGTERM, up to 10 s to exit, then SIGKILL; reaps it and forgets it.
stop_pid() {
    local pid="$1" kept=() p waited=0
    if alive "$pid"; then
        kill -TERM "$pid" 2>/dev/null || true
        while alive "$pid" && [ "$waited" -lt 100 ]; do
            sleep 0.1
            waited=$((waited + 1))
        done
        [ "$waited" -lt 10 ] || log "pid $pid took $((waited / 10)) s to stop after SIGTERM"
        if alive "$pid"; then
            log "pid $pid ignored SIGTERM for 10 s; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    wait "$pid" 2>/dev/null || true
    for p in "${PIDS[@]}"; do
        [ "$p" = "$pid" ] || kept+=("$p")
    done
    PIDS=("${kept[@]+"${kept[@]}"}")
}

stop_all() {
    local pid
    for pid in "${PIDS[@]+"${PIDS[@]}"}"; do
        stop_pid "$pid"
    done
}

trap stop_all EXIT
trap 'exit 130' INT TERM

# wait_http URL: until something answers HTTP there (any status), at most 15 s.
wait_http() {
    local code
    for _ in $(seq 1 300); do
        code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$1" || true)
        [ "$code" != 000 ] && [ -n "$code" ] && return 0
        sleep 0.05
    done
    die "nothing answered at $1 within 15 s"
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# ---------------------------------------------------------------------------------------------
# Tools, build, machine

ensure_tools() {
    local missing=() cmd
    for cmd in nginx wrk curl jq; do
        command -v "$cmd" >/dev/null || missing+=("$cmd")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        [ "$(id -u)" -eq 0 ] || die "missing ${missing[*]}; as root run: apt-get install -y nginx wrk curl jq"
        log "installing from Debian: ${missing[*]}"
        apt-get update -qq
        # policy-rc.d or not, the nginx service is not needed: this script runs its own nginx.
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
        hash -r
    fi
    for cmd in nginx wrk curl jq python3 awk getconf; do
        command -v "$cmd" >/dev/null || die "$cmd is required"
    done
}

build() {
    if [ "$BUILD" -eq 1 ]; then
        log "building defender-proxy and examples/bare_hyper (release)"
        cargo build --release --locked --quiet --bin defender-proxy --example bare_hyper --example freshness
    fi
    [ -x "$DPX" ] || die "$DPX is missing; run without --no-build"
    [ -x "$BARE" ] || die "$BARE is missing; run without --no-build"
}

CLK_TCK=$(getconf CLK_TCK)

# Process ids that make up a server: the pid and its children (nginx's workers).
server_pids() {
    local children
    children=$(pgrep -P "$1" | tr '\n' ' ' || true)
    echo "$1 $children"
}

# CPU clock ticks (user + system) used by a server: the pid's own, its reaped children's, and its
# live children's. Counting reaped children keeps the figure right when a worker exits mid-run.
cpu_ticks() {
    local total=0 pid t
    t=$(awk '{ sub(/.*\) /, ""); print $12 + $13 + $14 + $15 }' "/proc/$1/stat")
    total=$((total + t))
    for pid in $(pgrep -P "$1" || true); do
        t=$(awk '{ sub(/.*\) /, ""); print $12 + $13 }' "/proc/$pid/stat" 2>/dev/null || echo 0)
        total=$((total + t))
    done
    echo "$total"
}

# Busy and total CPU ticks of the whole machine (all CPUs), as "busy total".
machine_ticks() {
    awk '$1 == "cpu" { busy = $2 + $3 + $4 + $7 + $8 + $9; print busy, busy + $5 + $6; exit }' /proc/stat
}

# A /proc/PID/status field in KiB (VmRSS, VmHWM) of one process.
status_kib() { awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status"; }

# Peak resident set (VmHWM) in KiB, summed over a server's processes.
peak_rss_kib() {
    local total=0 pid v
    for pid in $(server_pids "$1"); do
        v=$(awk '/^VmHWM:/ { print $2 }' "/proc/$pid/status" 2>/dev/null || echo 0)
        total=$((total + ${v:-0}))
    done
    echo "$total"
}

# ---------------------------------------------------------------------------------------------
# Servers

# start_sim GET_QUOTAS_TOML: a fresh simulator (10,000 incidents, none missing); pid in SIM_PID.
start_sim() {
    local conf="$OUT/sim-$SCENARIO.toml"
    cat >"$conf" <<EOF
seed = $SEED
incidents = $ZIPF_IDS
first_id = 1
missing_share = 0.0
[quotas]
get = $1
list = [{ limit = 50, window = "60s" }]
update = [{ limit = 50, window = "60s" }]
EOF
    start_bg sim "$DPX" simulate --listen "127.0.0.1:$SIM_PORT" --config "$conf"
    SIM_PID=$LAST_PID
    wait_http "$SIM_URL/_sim/stats"
}

sim_reset() { curl -sf -X POST "$SIM_URL/_sim/stats/reset" >/dev/null; }

# Upstream Get calls the simulator saw since the last reset, as "total ok throttled": Defender's
# Get route and Graph's (graph_get, the calls of a proxy with upstream.api = "graph") together.
sim_get_calls() {
    curl -sf "$SIM_URL/_sim/stats" | jq -r '[.calls.get, (.graph_calls.graph_get // {total: 0, ok: 0, throttled: 0})]
        | "\(map(.total) | add) \(map(.ok) | add) \(map(.throttled) | add)"'
}

sim_token() {
    curl -sf -X POST "$SIM_URL/$TENANT/oauth2/v2.0/token" \
        -d grant_type=client_credentials -d "client_id=$CLIENT_ID" -d "client_secret=$CLIENT_SECRET" \
        --data-urlencode "scope=https://api.security.microsoft.com/.default" | jq -r .access_token
}

# The proxy's [telemetry] in the benchmarks: no access log and warnings only, like nginx with
# access_log off; the hot scenario also runs the default (TELEMETRY_DEFAULT: JSON access log).
TELEMETRY_OFF='[telemetry]
access_log = false
log_level = "warn"'
TELEMETRY_DEFAULT='# [telemetry] left at its defaults: JSON access log on stdout, log_level "info"'

# write_proxy_config FILE GET_QUOTAS_TOML MAX_WAIT [TELEMETRY_TOML [PORT ADMIN_PORT [API]]]
# API: the upstream dialect, "defender" (the default) or "graph".
write_proxy_config() {
    cat >"$1" <<EOF
[server]
listen = "127.0.0.1:${5:-$PROXY_PORT}"
admin_listen = "127.0.0.1:${6:-$ADMIN_PORT}"
grace_period = "2s"
[upstream]
api = "${7:-defender}"
base_url = "$SIM_URL"
[token]
authority = "$SIM_URL"
tenant_id = "$TENANT"
client_id = "$CLIENT_ID"
client_secret = "$CLIENT_SECRET"
[auth.consumers.bench]
key_hashes = ["$KEY_HASH"]
rights = ["read"]
[cache]
# Room for all 10,000 simulated incidents (about 36 KB each on average, 350 MB in all).
max_bytes = $CACHE_MAX_BYTES
ttl = "1h"
negative_ttl = "1h"
[budget]
max_wait = "$3"
[budget.routes.get_incident]
quotas = $2
${4:-$TELEMETRY_OFF}
EOF
}

# start_proxy GET_QUOTAS_TOML MAX_WAIT; pid in PROXY_PID.
start_proxy() {
    write_proxy_config "$OUT/proxy-$SCENARIO.toml" "$1" "$2"
    start_bg proxy "${PIN_SERVER[@]}" "$DPX" serve --config "$OUT/proxy-$SCENARIO.toml"
    PROXY_PID=$LAST_PID
    wait_http "http://127.0.0.1:$ADMIN_PORT/livez"
}

# start_proxy_default GET_QUOTAS_TOML: a second proxy with the default [telemetry] (access log on,
# to $OUT/SCENARIO-proxy-default.out); pid in PROXY_LOG_PID.
start_proxy_default() {
    write_proxy_config "$OUT/proxy-$SCENARIO-default.toml" "$1" 30s "$TELEMETRY_DEFAULT" "$PROXY_LOG_PORT" "$ADMIN_LOG_PORT"
    start_bg proxy-default "${PIN_SERVER[@]}" "$DPX" serve --config "$OUT/proxy-$SCENARIO-default.toml"
    PROXY_LOG_PID=$LAST_PID
    wait_http "http://127.0.0.1:$ADMIN_LOG_PORT/livez"
}

proxy_metric() { curl -sf "http://127.0.0.1:$ADMIN_PORT/metrics" | awk -v m="$1" '$1 == m { print $2 }'; }

# start_nginx ZONES LIMITS [LABEL]: nginx as the obvious alternative. A front server caches
# (proxy_cache, proxy_cache_lock) and checks the consumer key; cache misses go to a back server
# that applies limit_req and adds the upstream token. Two servers because limit_req in the front
# would throttle cache hits too. ZONES: limit_req_zone lines; LIMITS: limit_req lines. The
# configuration is kept as $OUT/nginx-SCENARIO[-LABEL].conf; pid (the master) in NGINX_PID.
start_nginx() {
    local dir="$OUT/nginx" token user="" label="${3:+-$3}"
    rm -rf "$dir"
    mkdir -p "$dir"
    token=$(sim_token)
    if [ -z "$token" ] || [ "$token" = null ]; then
        die "no token from the simulator"
    fi
    if [ "$(id -u)" -eq 0 ]; then
        user="user nobody nogroup;"
        chown nobody:nogroup "$dir"
    fi
    cat >"$dir/nginx.conf" <<EOF
$user
# One worker per core, like the proxy's runtime.
worker_processes auto;
daemon off;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
worker_rlimit_nofile 8192;
events { worker_connections 4096; }
http {
  access_log off;
  # The default (1,000) would make wrk reconnect now and then; the proxy has no such limit.
  keepalive_requests 1000000;
  client_body_temp_path $dir/client_body;
  proxy_temp_path $dir/proxy_temp;
  fastcgi_temp_path $dir/fastcgi_temp;
  uwsgi_temp_path $dir/uwsgi_temp;
  scgi_temp_path $dir/scgi_temp;
  proxy_cache_path $dir/cache levels=1:2 keys_zone=incidents:32m max_size=$CACHE_MAX_BYTES inactive=1h use_temp_path=off;
  map_hash_bucket_size 128;
  map \$http_authorization \$authorized { "Bearer $KEY" 1; default 0; }
  map \$host \$limit_key { default get_incident; }
  # The access log of the second front server: the proxy's fields, JSON-escaped.
  log_format dpx escape=json '{"timestamp":"\$time_iso8601","request_id":"\$request_id","method":"\$request_method","uri":"\$uri","status":\$status,"cache":"\$upstream_cache_status","upstream_status":"\$upstream_status","duration_s":\$request_time}';
$1
  upstream defender { server 127.0.0.1:$SIM_PORT; keepalive 32; }
  server {
    listen 127.0.0.1:$NGINX_PORT;
    location ~ ^/api/incidents/[0-9]+\$ {
      if (\$authorized = 0) { return 401; }
      proxy_pass http://127.0.0.1:$NGINX_BACK_PORT;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_cache incidents;
      proxy_cache_valid 200 1h;
      proxy_cache_valid 404 1h;
      proxy_cache_lock on;
      proxy_cache_lock_timeout 10s;
      proxy_cache_lock_age 10s;
      proxy_ignore_headers Cache-Control Expires Set-Cookie;
      add_header Cache-Status \$upstream_cache_status;
    }
    location / { return 404; }
  }
  # The same front server with an access log (default buffering: one write per line).
  server {
    listen 127.0.0.1:$NGINX_LOG_PORT;
    access_log $dir/access.log dpx;
    location ~ ^/api/incidents/[0-9]+\$ {
      if (\$authorized = 0) { return 401; }
      proxy_pass http://127.0.0.1:$NGINX_BACK_PORT;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_cache incidents;
      proxy_cache_valid 200 1h;
      proxy_cache_valid 404 1h;
      proxy_cache_lock on;
      proxy_cache_lock_timeout 10s;
      proxy_cache_lock_age 10s;
      proxy_ignore_headers Cache-Control Expires Set-Cookie;
      add_header Cache-Status \$upstream_cache_status;
    }
    location / { return 404; }
  }
  server {
    listen 127.0.0.1:$NGINX_BACK_PORT;
    location / {
$2
      limit_req_status 429;
      proxy_pass http://defender;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Authorization "Bearer $token";
    }
  }
}
EOF
    cp "$dir/nginx.conf" "$OUT/nginx-$SCENARIO$label.conf"
    nginx -t -q -c "$dir/nginx.conf" -p "$dir/" 2>"$OUT/nginx-t.err" || die "nginx refused its configuration: $(cat "$OUT/nginx-t.err")"
    start_bg "nginx$label" "${PIN_SERVER[@]}" nginx -c "$dir/nginx.conf" -p "$dir/"
    NGINX_PID=$LAST_PID
    wait_http "http://127.0.0.1:$NGINX_PORT/"
}

# Zones and limits that never bind, for the scenarios about hits.
NGINX_OPEN_ZONES="  limit_req_zone \$limit_key zone=get_incident:1m rate=100000r/s;"
NGINX_OPEN_LIMITS='      limit_req zone=get_incident burst=100000;'
# The simulator's and the proxy's Get quota where it never binds.
OPEN_QUOTAS='[{ limit = 100000, window = "1s" }]'

# start_bare BODY_FILE; pid in BARE_PID.
start_bare() {
    start_bg bare "${PIN_SERVER[@]}" "$BARE" --listen "127.0.0.1:$BARE_PORT" --body-file "$1"
    BARE_PID=$LAST_PID
    wait_http "http://127.0.0.1:$BARE_PORT/"
}

# ---------------------------------------------------------------------------------------------
# Measuring

RESULTS_JSONL="$OUT/results.jsonl"
TARGETS_JSONL="$OUT/targets.jsonl"

# record JSON: appends one measurement (an object with at least "scenario" and "server").
record() { echo "$1" >>"$RESULTS_JSONL"; }

# run_wrk SCENARIO SERVER PID URL LUA CONNECTIONS [ROUND]: one timed wrk run; records req/s,
# latency percentiles, server CPU per request, peak RSS and the upstream Get calls the simulator saw.
run_wrk() {
    local scenario="$1" server="$2" pid="$3" url="$4" lua="$5" conns="$6" round="${7:-1}"
    local threads=$((conns < 2 ? conns : 2)) raw="$OUT/wrk-$scenario-$server-c$6-r${7:-1}.txt"
    local before after json total ok throttled sim_before sim_after m_before m_after wrk_cpu
    local TIMEFORMAT='%U %S'
    log "$scenario: $server, $conns connections, ${DURATION}s"
    sim_reset
    before=$(cpu_ticks "$pid")
    sim_before=$(cpu_ticks "$SIM_PID")
    m_before=$(machine_ticks)
    { time BENCH_LUA_DIR="$LUA" BENCH_SEED="$SEED" BENCH_IDS="$ZIPF_IDS" BENCH_ZIPF_S="$ZIPF_S" \
        BENCH_HOT_IDS="$MIXED_HOT_IDS" BENCH_COLD_SHARE="$MIXED_COLD_SHARE" BENCH_THREADS="$threads" \
        BENCH_COLD_FIRST=$((MIXED_HOT_IDS + 1)) \
        "${PIN_LOAD[@]}" wrk -t "$threads" -c "$conns" -d "${DURATION}s" --timeout 10s -s "$LUA/$lua" \
        -H "Authorization: Bearer $KEY" "$url" >"$raw" 2>&1 || die "wrk failed: $(cat "$raw")"; } 2>"$raw.time"
    m_after=$(machine_ticks)
    after=$(cpu_ticks "$pid")
    sim_after=$(cpu_ticks "$SIM_PID")
    wrk_cpu=$(awk '{ print $1 + $2 }' "$raw.time")
    read -r total ok throttled <<<"$(sim_get_calls)"
    json=$(sed -n 's/^WRKJSON //p' "$raw")
    [ -n "$json" ] || die "no WRKJSON line from wrk: $(cat "$raw")"
    record "$(jq -c --arg scenario "$scenario" --arg server "$server" --argjson conns "$conns" --argjson round "$round" \
        --argjson ticks "$((after - before))" --argjson hz "$CLK_TCK" --argjson rss "$(peak_rss_kib "$pid")" \
        --argjson total "$total" --argjson ok "$ok" --argjson throttled "$throttled" \
        --argjson sim_ticks "$((sim_after - sim_before))" --argjson wrk_cpu "$wrk_cpu" \
        --argjson m_busy "$(($(cut -d' ' -f1 <<<"$m_after") - $(cut -d' ' -f1 <<<"$m_before")))" \
        --argjson m_total "$(($(cut -d' ' -f2 <<<"$m_after") - $(cut -d' ' -f2 <<<"$m_before")))" '
        . + {scenario: $scenario, server: $server, conns: $conns, round: $round, cpu_ticks: $ticks,
          sim_cpu_ticks: $sim_ticks, wrk_cpu_seconds: $wrk_cpu,
          machine_busy_pct: (100 * $m_busy / $m_total),
          unrelated_cpu_pct: ([0, 100 * ($m_busy - $ticks - $sim_ticks - $wrk_cpu * $hz) / $m_total] | max),
          upstream_calls: $total, upstream_ok: $ok, upstream_429: $throttled,
          rps: (.requests / (.duration_us / 1e6)),
          cpu_us_per_req: (if .requests > 0 then $ticks / $hz * 1e6 / .requests else null end),
          peak_rss_kib: $rss}' <<<"$json")"
}

# The recorded measurement of SCENARIO/SERVER at CONNS connections (or without conns).
result() {
    jq -c --arg s "$1" --arg v "$2" --arg c "${3:-}" \
        'select(.scenario == $s and .server == $v and ($c == "" or (.conns | tostring) == $c))' \
        "$RESULTS_JSONL" | tail -n 1
}

# add_target TARGET MEASURED MET(true|false)
add_target() {
    jq -nc --arg t "$1" --arg m "$2" --argjson ok "$3" '{target: $t, measured: $m, met: $ok}' >>"$TARGETS_JSONL"
}

SECTIONS="$OUT/sections"
SECTION=""

# begin_section ORDER TITLE: starts a RESULTS.md section (the text on stdin follows the title).
begin_section() {
    SECTION="$SECTIONS/$1.md"
    {
        printf '## %s\n\n' "$2"
        cat
    } >"$SECTION"
}

# load_table SCENARIO: the scenario's wrk runs as a Markdown table, appended to the section.
load_table() {
    {
        echo
        echo '| server | round | connections | requests/s | p50 ms | p99 ms | server CPU µs/request | peak RSS MiB | non-2xx | upstream calls | unrelated CPU % |'
        echo '|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|'
        jq -r --arg s "$1" 'select(.scenario == $s and .rps != null) |
            "| \(.server) | \(.round // 1) | \(.conns) | \(.rps | floor) | \(.p50_us / 1000 * 100 | round / 100) | \(.p99_us / 1000 * 100 | round / 100) | \(if .cpu_us_per_req then (.cpu_us_per_req * 100 | round / 100) else "n/a" end) | \(.peak_rss_kib / 1024 * 10 | round / 10) | \(.non_2xx + .socket_errors + .timeouts) | \(.upstream_calls // "n/a") | \(.unrelated_cpu_pct | round) |"' \
            "$RESULTS_JSONL"
    } >>"$SECTION"
}

fmt() { awk -v x="$1" -v d="${2:-2}" 'BEGIN { printf "%.*f", d, x }'; }

# ---------------------------------------------------------------------------------------------
# Scenarios

# Every request for one incident, cached: the proxy (access log off, and its default
# configuration with the JSON access log on) vs nginx (access log off, and on) vs a bare hyper
# server with that body, ROUNDS rounds; then callgrind's instructions per hit.
scenario_hot() {
    local body="$OUT/hot-body.json" c r server p b n ok
    start_sim "$OPEN_QUOTAS"
    start_proxy "$OPEN_QUOTAS" 30s
    start_proxy_default "$OPEN_QUOTAS"
    start_nginx "$NGINX_OPEN_ZONES" "$NGINX_OPEN_LIMITS"
    curl -sf -H "Authorization: Bearer $KEY" "http://127.0.0.1:$PROXY_PORT/api/incidents/$HOT_ID" >"$body"
    curl -sf -o /dev/null -H "Authorization: Bearer $KEY" "http://127.0.0.1:$PROXY_LOG_PORT/api/incidents/$HOT_ID"
    curl -sf -o /dev/null -H "Authorization: Bearer $KEY" "http://127.0.0.1:$NGINX_PORT/api/incidents/$HOT_ID"
    start_bare "$body"
    for r in $(seq 1 "$ROUNDS"); do
        for c in $CONNECTIONS; do
            for server in bare-hyper defender-proxy defender-proxy-default nginx nginx-access-log; do
                case "$server" in
                defender-proxy) run_wrk hot "$server" "$PROXY_PID" "http://127.0.0.1:$PROXY_PORT/api/incidents/$HOT_ID" hot.lua "$c" "$r" ;;
                defender-proxy-default) run_wrk hot "$server" "$PROXY_LOG_PID" "http://127.0.0.1:$PROXY_LOG_PORT/api/incidents/$HOT_ID" hot.lua "$c" "$r" ;;
                nginx) run_wrk hot "$server" "$NGINX_PID" "http://127.0.0.1:$NGINX_PORT/api/incidents/$HOT_ID" hot.lua "$c" "$r" ;;
                nginx-access-log) run_wrk hot "$server" "$NGINX_PID" "http://127.0.0.1:$NGINX_LOG_PORT/api/incidents/$HOT_ID" hot.lua "$c" "$r" ;;
                bare-hyper) run_wrk hot "$server" "$BARE_PID" "http://127.0.0.1:$BARE_PORT/api/incidents/$HOT_ID" hot.lua "$c" "$r" ;;
                esac
            done
        done
    done
    local proxy_lines nginx_lines dropped
    dropped=$(curl -sf "http://127.0.0.1:$ADMIN_LOG_PORT/metrics" | awk '$1 == "defender_proxy_access_log_dropped_total" { print $2 }')
    stop_pid "$BARE_PID"
    stop_pid "$NGINX_PID"
    stop_pid "$PROXY_LOG_PID"
    stop_pid "$PROXY_PID"
    stop_pid "$SIM_PID"
    proxy_lines=$(grep -c '"message":"request"' "$OUT/hot-proxy-default.out" || true)
    nginx_lines=$(wc -l <"$OUT/nginx/access.log" 2>/dev/null || echo 0)

    begin_section 10-hot "Cache hits on one hot id" <<EOF
Every request is \`GET /api/incidents/$HOT_ID\`, cached beforehand ($(wc -c <"$body") byte body). Servers:

- **bare-hyper** answers every request with the same bytes and nothing else (the CPU floor).
- **defender-proxy**: \`access_log = false\`, \`log_level = "warn"\` (no per-request log).
- **defender-proxy-default**: the default \`[telemetry]\`: one JSON access-log line per request
  on stdout (here a file), written by the access log's own thread.
- **nginx**: \`proxy_cache\`, \`access_log off\`.
- **nginx-access-log**: the same front server with a JSON access log (\`log_format ... escape=json\`
  with the same fields, default buffering: one \`write\` per line, to a file).

$ROUNDS rounds, each running every server in turn; the server is pinned to CPU $SERVER_CPU and wrk to
CPU $LOAD_CPU$([ "${#PIN_SERVER[@]}" -gt 0 ] || echo " (pinning was not possible on this machine)"). Ratios are to bare-hyper **of the same round**. The proxy's
access log wrote $proxy_lines lines in all (dropped: ${dropped:-n/a}); nginx's $nginx_lines.

| round | connections | bare-hyper µs | defender-proxy (log off) µs | defender-proxy-default µs | nginx µs | nginx-access-log µs |
|--:|--:|--:|--:|--:|--:|--:|
EOF
    for r in $(seq 1 "$ROUNDS"); do
        for c in $CONNECTIONS; do
            local row bcpu
            bcpu=$(hot_cpu bare-hyper "$c" "$r")
            row="| $r | $c | $(fmt "$bcpu")"
            for server in defender-proxy defender-proxy-default nginx nginx-access-log; do
                p=$(hot_cpu "$server" "$c" "$r")
                row="$row | $(fmt "$p") ($(fmt "$(awk -v p="$p" -v b="$bcpu" 'BEGIN { print p / b }')")x)"
            done
            echo "$row |" >>"$SECTION"
        done
    done
    printf '\nServer CPU µs per request (user + system) from /proc; the full wrk figures:\n' >>"$SECTION"
    load_table hot
    for c in $CONNECTIONS; do
        local off_ratios def_ratios log_ratios med
        off_ratios=$(hot_ratios defender-proxy bare-hyper "$c")
        med=$(median "$off_ratios")
        add_target "cache hit, access log off: server CPU/request <= 1.3 x bare hyper, $c connection(s), median of $ROUNDS rounds" \
            "$(fmt "$med")x (rounds: $(list_ratios "$off_ratios"))" "$(awk -v m="$med" 'BEGIN { print (m <= 1.3) ? "true" : "false" }')"
        def_ratios=$(hot_ratios defender-proxy-default nginx-access-log "$c")
        med=$(median "$def_ratios")
        add_target "cache hit, default config (access log on): server CPU/request <= nginx proxy_cache with its access log, $c connection(s), median of $ROUNDS rounds" \
            "$(fmt "$med")x nginx-access-log (rounds: $(list_ratios "$def_ratios"))" "$(awk -v m="$med" 'BEGIN { print (m <= 1) ? "true" : "false" }')"
        log_ratios=$(hot_ratios defender-proxy nginx "$c")
        med=$(median "$log_ratios")
        add_target "cache hit, access logs off: server CPU/request <= nginx proxy_cache, $c connection(s), median of $ROUNDS rounds" \
            "$(fmt "$med")x nginx (rounds: $(list_ratios "$log_ratios"))" "$(awk -v m="$med" 'BEGIN { print (m <= 1) ? "true" : "false" }')"
    done
    if [ "$RUN_CALLGRIND" -eq 1 ] && command -v valgrind >/dev/null; then
        local run
        for run in 1 2; do
            log "hot: callgrind instructions per hit, run $run"
            bash "$BENCH/callgrind.sh" 2000 | jq -c --argjson run "$run" '. + {scenario: "callgrind", run: $run}' >>"$RESULTS_JSONL"
        done
        {
            printf '\n**Instructions per hit** (valgrind callgrind, `bench/callgrind.sh`: the server serving 2,200 hits minus the same server serving 200, over 2,000; one keep-alive connection; two independent runs). Under valgrind, sha2 cannot see the CPU'"'"'s SHA extensions and hashes the consumer key in software (about 3,400 instructions per request here), which the real CPU does not.\n\n'
            echo '| server | run 1 | run 2 | x bare-hyper (run 1) |'
            echo '|---|--:|--:|--:|'
            b=$(jq -r 'select(.scenario == "callgrind" and .server == "bare-hyper" and .run == 1) | .instructions_per_hit' "$RESULTS_JSONL")
            for server in bare-hyper defender-proxy-log-off defender-proxy; do
                local r1 r2
                r1=$(jq -r --arg s "$server" 'select(.scenario == "callgrind" and .server == $s and .run == 1) | .instructions_per_hit' "$RESULTS_JSONL")
                r2=$(jq -r --arg s "$server" 'select(.scenario == "callgrind" and .server == $s and .run == 2) | .instructions_per_hit' "$RESULTS_JSONL")
                echo "| $server | $r1 | $r2 | $(fmt "$(awk -v p="$r1" -v b="$b" 'BEGIN { print p / b }')") |"
            done
        } >>"$SECTION"
    fi
}

# hot_cpu SERVER CONNS ROUND: server CPU µs per request of that hot run.
hot_cpu() {
    jq -r --arg s "$1" --argjson c "$2" --argjson r "$3" \
        'select(.scenario == "hot" and .server == $s and .conns == $c and .round == $r) | .cpu_us_per_req' "$RESULTS_JSONL"
}

# hot_ratios SERVER BASE CONNS: the per-round ratios SERVER/BASE, one per line.
hot_ratios() {
    local r
    for r in $(seq 1 "$ROUNDS"); do
        awk -v p="$(hot_cpu "$1" "$3" "$r")" -v b="$(hot_cpu "$2" "$3" "$r")" 'BEGIN { print p / b }'
    done
}

median() { sort -g <<<"$1" | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
list_ratios() { awk '{ printf "%s%.2fx", (NR > 1 ? ", " : ""), $1 }' <<<"$1"; }

# Cache hits in both dialects (issue 13): one proxy over a Defender upstream and one over a Graph
# upstream, each asked for one cached incident through its native facade and through the other
# (translated once, on the first read, then served from the cache like a native hit).
dialect_cpu() {
    jq -r --arg s "$1" --argjson c "$2" --argjson r "$3" \
        'select(.scenario == "dialects" and .server == $s and .conns == $c and .round == $r) | .cpu_us_per_req' "$RESULTS_JSONL"
}

scenario_dialects() {
    local c r u server graph_pid p b row ratio med ratios_d="" ratios_g=""
    start_sim "$OPEN_QUOTAS"
    start_proxy "$OPEN_QUOTAS" 30s
    write_proxy_config "$OUT/proxy-$SCENARIO-graph.toml" "$OPEN_QUOTAS" 30s "$TELEMETRY_OFF" "$PROXY_LOG_PORT" "$ADMIN_LOG_PORT" graph
    start_bg proxy-graph "${PIN_SERVER[@]}" "$DPX" serve --config "$OUT/proxy-$SCENARIO-graph.toml"
    graph_pid=$LAST_PID
    wait_http "http://127.0.0.1:$ADMIN_LOG_PORT/livez"
    local d_native="http://127.0.0.1:$PROXY_PORT/api/incidents/$HOT_ID"
    # Both Graph-facade requests carry $expand=alerts, so the two proxies' Graph answers are the
    # same shape (without it a Graph answer has no alerts and is a fraction of the size).
    local d_translated="http://127.0.0.1:$PROXY_PORT/v1.0/security/incidents/$HOT_ID?%24expand=alerts"
    local g_native="http://127.0.0.1:$PROXY_LOG_PORT/v1.0/security/incidents/$HOT_ID?%24expand=alerts"
    local g_translated="http://127.0.0.1:$PROXY_LOG_PORT/api/incidents/$HOT_ID"
    local -A size
    for u in d_native d_translated g_native g_translated; do
        size[$u]=$(curl -sf -o /dev/null -w '%{size_download}' -H "Authorization: Bearer $KEY" "${!u}") || die "warm-up of ${!u} failed"
    done
    for r in $(seq 1 "$ROUNDS"); do
        for c in $CONNECTIONS; do
            run_wrk dialects defender-upstream-native "$PROXY_PID" "$d_native" hot.lua "$c" "$r"
            run_wrk dialects defender-upstream-translated "$PROXY_PID" "$d_translated" hot.lua "$c" "$r"
            run_wrk dialects graph-upstream-native "$graph_pid" "$g_native" hot.lua "$c" "$r"
            run_wrk dialects graph-upstream-translated "$graph_pid" "$g_translated" hot.lua "$c" "$r"
        done
    done
    stop_pid "$graph_pid"
    stop_pid "$PROXY_PID"
    stop_pid "$SIM_PID"
    begin_section 15-dialects "Cache hits in the other dialect" <<EOF
One cached incident ($HOT_ID) asked for through both facades, access log off:

- **defender-upstream-native**: \`GET /api/incidents/$HOT_ID\` from a proxy whose upstream is Defender
  (${size[d_native]} byte body).
- **defender-upstream-translated**: \`GET /v1.0/security/incidents/$HOT_ID?\$expand=alerts\` from the
  same proxy (the Graph rendering of the Defender answer, translated on its first read, then
  cached; ${size[d_translated]} byte body).
- **graph-upstream-native**: \`GET /v1.0/security/incidents/$HOT_ID?\$expand=alerts\` from a proxy
  whose upstream is Graph (\`upstream.api = "graph"\`; ${size[g_native]} byte body).
- **graph-upstream-translated**: \`GET /api/incidents/$HOT_ID\` from that proxy (${size[g_translated]} byte body).

Server CPU µs per request (user + system, from /proc); in brackets the ratio translated / native
of the same round and upstream (the two bodies differ in size, which accounts for some of it):

| round | connections | Defender upstream: native µs | translated µs | Graph upstream: native µs | translated µs |
|--:|--:|--:|--:|--:|--:|
EOF
    for r in $(seq 1 "$ROUNDS"); do
        for c in $CONNECTIONS; do
            row="| $r | $c"
            for server in defender-upstream graph-upstream; do
                b=$(dialect_cpu "$server-native" "$c" "$r")
                p=$(dialect_cpu "$server-translated" "$c" "$r")
                ratio=$(awk -v p="$p" -v b="$b" 'BEGIN { print p / b }')
                row="$row | $(fmt "$b") | $(fmt "$p") ($(fmt "$ratio")x)"
                if [ "$server" = defender-upstream ]; then
                    ratios_d="$ratios_d$ratio"$'\n'
                else
                    ratios_g="$ratios_g$ratio"$'\n'
                fi
            done
            echo "$row |" >>"$SECTION"
        done
    done
    printf '\nThe full wrk figures:\n' >>"$SECTION"
    load_table dialects
    ratios_d=$(sed '/^$/d' <<<"$ratios_d")
    ratios_g=$(sed '/^$/d' <<<"$ratios_g")
    med=$(median "$ratios_d")
    add_target "translated cache hit, Defender upstream: server CPU/request <= 1.2 x the native hit (median over rounds and connections)" \
        "$(fmt "$med")x ($(list_ratios "$ratios_d"))" "$(awk -v m="$med" 'BEGIN { print (m <= 1.2) ? "true" : "false" }')"
    med=$(median "$ratios_g")
    add_target "translated cache hit, Graph upstream: server CPU/request <= 1.2 x the native hit (median over rounds and connections)" \
        "$(fmt "$med")x ($(list_ratios "$ratios_g"))" "$(awk -v m="$med" 'BEGIN { print (m <= 1.2) ? "true" : "false" }')"
}

# Hits over 10,000 ids with a Zipf distribution; also the proxy's memory with 10,000 cached.
scenario_zipf() {
    local c warm rss bytes entries limit base now
    start_sim "$OPEN_QUOTAS"
    start_proxy "$OPEN_QUOTAS" 30s
    start_nginx "$NGINX_OPEN_ZONES" "$NGINX_OPEN_LIMITS"
    base=$(status_kib "$PROXY_PID" VmRSS)
    log "zipf: warming ids 1-$ZIPF_IDS in defender-proxy and nginx"
    warm=$(python3 "$BENCH/loadtool.py" warm --url "http://127.0.0.1:$PROXY_PORT/api/incidents" \
        --key "$KEY" --ids "1-$ZIPF_IDS" --concurrency 16)
    echo "$warm" >"$OUT/zipf-warm-proxy.json"
    python3 "$BENCH/loadtool.py" warm --url "http://127.0.0.1:$NGINX_PORT/api/incidents" \
        --key "$KEY" --ids "1-$ZIPF_IDS" --concurrency 16 >"$OUT/zipf-warm-nginx.json"
    rss=$(status_kib "$PROXY_PID" VmHWM)
    now=$(status_kib "$PROXY_PID" VmRSS)
    bytes=$(proxy_metric 'defender_proxy_cache_bytes{tenant="default"}')
    entries=$(proxy_metric 'defender_proxy_cache_entries{tenant="default"}')
    record "$(jq -nc --argjson rss "$rss" --argjson now "$now" --argjson base "$base" --argjson bytes "$bytes" \
        --argjson entries "$entries" '{scenario: "zipf", server: "defender-proxy-warm", peak_rss_kib: $rss,
        rss_kib: $now, rss_before_warm_kib: $base, cache_bytes: $bytes, cache_entries: $entries}')"
    for c in $CONNECTIONS; do
        run_wrk zipf defender-proxy "$PROXY_PID" "http://127.0.0.1:$PROXY_PORT/api/incidents/1" zipf.lua "$c"
        run_wrk zipf nginx "$NGINX_PID" "http://127.0.0.1:$NGINX_PORT/api/incidents/1" zipf.lua "$c"
    done
    stop_pid "$NGINX_PID"
    stop_pid "$PROXY_PID"
    stop_pid "$SIM_PID"

    limit=$(awk -v b="$bytes" 'BEGIN { printf "%d", (1.5 * b + 40 * 1048576) / 1024 }')
    begin_section 20-zipf "Cache hits over $ZIPF_IDS ids, Zipf (s = $ZIPF_S)" <<EOF
Ids 1..$ZIPF_IDS all cached beforehand (warm-up: $(jq -c .statuses <<<"$warm") in $(jq .seconds <<<"$warm") s
through the proxy); each wrk thread draws ids from a Zipf distribution seeded with $SEED + its
index, so every server gets the same sequence. Upstream calls during the runs should be 0.

defender-proxy after the warm-up: $entries cache entries, $(fmt "$(awk -v b="$bytes" 'BEGIN { print b / 1048576 }')" 1) MiB cached
(\`defender_proxy_cache_bytes\`: bodies plus a fixed overhead per entry); peak RSS $(fmt "$(awk -v r="$rss" 'BEGIN { print r / 1024 }')" 1) MiB (VmHWM),
RSS now $(fmt "$(awk -v r="$now" 'BEGIN { print r / 1024 }')" 1) MiB (VmRSS), $(fmt "$(awk -v r="$base" 'BEGIN { print r / 1024 }')" 1) MiB before the warm-up. The simulated incidents
average $(awk -v b="$bytes" -v e="$entries" 'BEGIN { printf "%d", b / e / 1024 }') KiB (a few over 100 KiB), so $ZIPF_IDS of them need more than the default
\`cache.max_bytes\` (256 MiB): both caches are bounded at $((CACHE_MAX_BYTES / 1048576)) MiB here.
EOF
    load_table zipf
    add_target "peak RSS <= 1.5 x cached bytes + 40 MiB with $ZIPF_IDS incidents cached" \
        "$(fmt "$(awk -v r="$rss" 'BEGIN { print r / 1024 }')" 1) MiB vs limit $(fmt "$(awk -v l="$limit" 'BEGIN { print l / 1024 }')" 1) MiB ($entries entries, $(fmt "$(awk -v b="$bytes" 'BEGIN { print b / 1048576 }')" 1) MiB cached)" \
        "$([ "$rss" -le "$limit" ] && echo true || echo false)"
}

# $COLD_BURST requests for one cold id, all sent at the same moment: how many reach upstream.
scenario_cold() {
    local server port pid out calls
    start_sim "$OPEN_QUOTAS"
    start_proxy "$OPEN_QUOTAS" 30s
    start_nginx "$NGINX_OPEN_ZONES" "$NGINX_OPEN_LIMITS"
    for server in defender-proxy nginx; do
        if [ "$server" = nginx ]; then port=$NGINX_PORT pid=$NGINX_PID; else port=$PROXY_PORT pid=$PROXY_PID; fi
        sim_reset
        log "cold: $COLD_BURST concurrent requests for incident $COLD_ID through $server"
        local before after
        before=$(cpu_ticks "$pid")
        out=$(python3 "$BENCH/loadtool.py" burst --url "http://127.0.0.1:$port/api/incidents/$COLD_ID" \
            --key "$KEY" -n "$COLD_BURST")
        after=$(cpu_ticks "$pid")
        echo "$out" >"$OUT/cold-$server.json"
        calls=$(sim_get_calls | cut -d' ' -f1)
        record "$(jq -c --arg server "$server" --argjson calls "$calls" --argjson ticks "$((after - before))" \
            --argjson hz "$CLK_TCK" --argjson rss "$(peak_rss_kib "$pid")" \
            '. + {scenario: "cold", server: $server, upstream_calls: $calls, cpu_us_per_req: ($ticks / $hz * 1e6 / .requests), peak_rss_kib: $rss}' <<<"$out")"
    done
    stop_pid "$NGINX_PID"
    stop_pid "$PROXY_PID"
    stop_pid "$SIM_PID"

    begin_section 30-cold "$COLD_BURST concurrent requests for one cold id" <<EOF
$COLD_BURST connections are opened first, then \`GET /api/incidents/$COLD_ID\` (never asked before) is
sent on all of them at once (\`bench/loadtool.py burst\`). Upstream calls are the simulator's count.
nginx uses \`proxy_cache_lock on\`, whose waiters poll the cache every 500 ms.

| server | upstream calls | answers (status: count) | p50 ms | p99 ms | max ms | server CPU µs/request |
|---|--:|---|--:|--:|--:|--:|
EOF
    jq -r 'select(.scenario == "cold") |
        "| \(.server) | \(.upstream_calls) | \(.statuses | to_entries | map("\(.key): \(.value)") | join(", ")) | \(.p50_ms) | \(.p99_ms) | \(.max_ms) | \(.cpu_us_per_req * 100 | round / 100) |"' \
        "$RESULTS_JSONL" >>"$SECTION"
    calls=$(result cold defender-proxy | jq .upstream_calls)
    add_target "$COLD_BURST concurrent cold requests for one id -> exactly 1 upstream call" \
        "$calls upstream call(s); answers $(result cold defender-proxy | jq -c .statuses)" \
        "$([ "$calls" -eq 1 ] && echo true || echo false)"
}

# How many Get calls the mixed quota allows from a cold start within DURATION seconds.
mixed_allowance() {
    awk -v d="$DURATION" -v l1="$MIXED_SHORT_LIMIT" -v w1="$MIXED_SHORT_WINDOW" \
        -v l2="$MIXED_LONG_LIMIT" -v w2="$MIXED_LONG_WINDOW" '
        function ceil(x) { return (x == int(x)) ? x : int(x) + 1 }
        BEGIN { a = l1 * ceil(d / w1); b = l2 * ceil(d / w2); print (a < b) ? a : b }'
}

# Hits mixed with misses under a scaled-down quota that binds: upstream calls and upstream 429s.
scenario_mixed() {
    local quotas c throttled server
    quotas="[{ limit = $MIXED_SHORT_LIMIT, window = \"${MIXED_SHORT_WINDOW}s\" }, { limit = $MIXED_LONG_LIMIT, window = \"${MIXED_LONG_WINDOW}s\" }]"
    # limit_req rates in requests per minute (whole numbers for these windows).
    local short_rate=$((MIXED_SHORT_LIMIT * 60 / MIXED_SHORT_WINDOW)) long_rate=$((MIXED_LONG_LIMIT * 60 / MIXED_LONG_WINDOW))
    local zones="  limit_req_zone \$limit_key zone=get_short:1m rate=${short_rate}r/m;
  limit_req_zone \$limit_key zone=get_long:1m rate=${long_rate}r/m;"
    # Strict: queue up to MIXED_MAX_WAIT seconds at each zone's rate, like the proxy's max_wait.
    local strict="      limit_req zone=get_short burst=$((short_rate * MIXED_MAX_WAIT / 60));
      limit_req zone=get_long burst=$((long_rate * MIXED_MAX_WAIT / 60));"
    # Bursty: let a whole quota through at once (burst = limit, nodelay), then the average rate.
    local bursty="      limit_req zone=get_short burst=$MIXED_SHORT_LIMIT nodelay;
      limit_req zone=get_long burst=$MIXED_LONG_LIMIT nodelay;"
    c=$(echo "$CONNECTIONS" | tr ' ' '\n' | sort -n | tail -n 1)
    for server in defender-proxy nginx-strict nginx-bursty; do
        # A fresh simulator per server: its quota windows must start empty for each.
        start_sim "$quotas"
        case "$server" in
        defender-proxy)
            start_proxy "$quotas" "${MIXED_MAX_WAIT}s"
            run_wrk mixed "$server" "$PROXY_PID" "http://127.0.0.1:$PROXY_PORT/api/incidents/1" mixed.lua "$c"
            stop_pid "$PROXY_PID"
            ;;
        nginx-strict | nginx-bursty)
            if [ "$server" = nginx-strict ]; then
                start_nginx "$zones" "$strict" strict
            else
                start_nginx "$zones" "$bursty" bursty
            fi
            run_wrk mixed "$server" "$NGINX_PID" "http://127.0.0.1:$NGINX_PORT/api/incidents/1" mixed.lua "$c"
            stop_pid "$NGINX_PID"
            ;;
        esac
        stop_pid "$SIM_PID"
    done

    begin_section 40-mixed "Mixed hits and misses under a binding quota" <<EOF
The simulator enforces a scaled-down Get quota of $MIXED_SHORT_LIMIT calls per ${MIXED_SHORT_WINDOW} s and $MIXED_LONG_LIMIT per ${MIXED_LONG_WINDOW} s
(the shape of Defender's 100/min and 1,500/h), and answers 429 above it. Each server starts cold,
with a fresh simulator, and gets $c connections for ${DURATION} s: $(awk -v s="$MIXED_COLD_SHARE" 'BEGIN { print 100 * (1 - s) }')% of requests for ids 1..$MIXED_HOT_IDS,
$(awk -v s="$MIXED_COLD_SHARE" 'BEGIN { print 100 * s }')% for ids never asked before (each needs an upstream call). At most $(mixed_allowance) calls fit the quota
in ${DURATION} s from a cold start.

- defender-proxy: the same quotas in \`budget.routes.get_incident\`, \`budget.max_wait = ${MIXED_MAX_WAIT}s\`
  (a miss queues for a slot at most ${MIXED_MAX_WAIT} s, else 429 with Retry-After).
- nginx-strict: \`limit_req\` per window at the window's average rate (${short_rate}r/m and ${long_rate}r/m),
  bursts sized for ${MIXED_MAX_WAIT} s of queueing, delayed (not nodelay).
- nginx-bursty: the same zones with \`burst\` = the window's limit and \`nodelay\`, to use the bursts.

| server | requests/s | p50 ms | p99 ms | answers (status: count) | upstream calls | upstream 200 | upstream 429 | server CPU µs/request |
|---|--:|--:|--:|---|--:|--:|--:|--:|
EOF
    jq -r 'select(.scenario == "mixed") |
        "| \(.server) | \(.rps | floor) | \(.p50_us / 1000 * 100 | round / 100) | \(.p99_us / 1000 * 100 | round / 100) | \(.statuses | to_entries | map("\(.key): \(.value)") | join(", ")) | \(.upstream_calls) | \(.upstream_ok) | \(.upstream_429) | \(.cpu_us_per_req * 100 | round / 100) |"' \
        "$RESULTS_JSONL" >>"$SECTION"
    throttled=$(result mixed defender-proxy | jq .upstream_429)
    add_target "mixed workload under a binding quota: 0 upstream 429s" \
        "$throttled upstream 429s; $(result mixed defender-proxy | jq .upstream_ok) of $(mixed_allowance) allowed calls used (nginx-strict: $(result mixed nginx-strict | jq .upstream_ok) used, $(result mixed nginx-strict | jq .upstream_429) 429s; nginx-bursty: $(result mixed nginx-bursty | jq .upstream_ok) used, $(result mixed nginx-bursty | jq .upstream_429) 429s)" \
        "$([ "$throttled" -eq 0 ] && echo true || echo false)"
}

# From spawning `defender-proxy serve` to its first 200 on GET /api/incidents/1 (an upstream miss).
scenario_startup() {
    local out median
    start_sim "$OPEN_QUOTAS"
    write_proxy_config "$OUT/proxy-$SCENARIO.toml" "$OPEN_QUOTAS" 30s
    log "startup: $STARTUP_RUNS runs of defender-proxy serve"
    out=$(python3 "$BENCH/loadtool.py" startup --runs "$STARTUP_RUNS" --key "$KEY" \
        --url "http://127.0.0.1:$PROXY_PORT/api/incidents/$HOT_ID" \
        --ready-url "http://127.0.0.1:$ADMIN_PORT/livez" \
        -- "$DPX" serve --config "$OUT/proxy-$SCENARIO.toml")
    echo "$out" >"$OUT/startup-proxy.json"
    record "$(jq -c '. + {scenario: "startup", server: "defender-proxy"}' <<<"$out")"
    start_nginx "$NGINX_OPEN_ZONES" "$NGINX_OPEN_LIMITS"
    stop_pid "$NGINX_PID"
    log "startup: $STARTUP_RUNS runs of nginx (for reference)"
    out=$(python3 "$BENCH/loadtool.py" startup --runs "$STARTUP_RUNS" --key "$KEY" \
        --url "http://127.0.0.1:$NGINX_PORT/api/incidents/$HOT_ID" \
        --between "rm -rf '$OUT/nginx/cache'" \
        -- nginx -c "$OUT/nginx/nginx.conf" -p "$OUT/nginx/")
    echo "$out" >"$OUT/startup-nginx.json"
    record "$(jq -c '. + {scenario: "startup", server: "nginx"}' <<<"$out")"
    stop_pid "$SIM_PID"

    begin_section 50-startup "Start-up" <<EOF
Time from spawning the server to its first 200 on \`GET /api/incidents/$HOT_ID\`, which is a cache
miss: it includes the upstream token request and the upstream call to the local simulator.
$STARTUP_RUNS runs each (\`bench/loadtool.py startup\`, polling every 0.5 ms).

| server | median ms | min ms | max ms | runs (first 200 ms / admin /livez ms) |
|---|--:|--:|--:|---|
EOF
    jq -r 'select(.scenario == "startup") |
        "| \(.server) | \(.median_first_200_ms) | \(.min_first_200_ms) | \(.max_first_200_ms) | \(.runs | map("\(.first_200_ms)/\(.ready_ms // "-")") | join(", ")) |"' \
        "$RESULTS_JSONL" >>"$SECTION"
    median=$(result startup defender-proxy | jq .median_first_200_ms)
    add_target "process start to first 200 < 100 ms" "median $median ms of $STARTUP_RUNS runs" \
        "$(awk -v m="$median" 'BEGIN { print (m < 100) ? "true" : "false" }')"
}

# The incident sync's scenario (issue 7): twenty tools each fetch the same 300 active incidents
# every 30 s while one changes every second, with and without the sync. The driver
# (examples/freshness.rs) runs the simulator and the proxy in one process, so it knows when each
# version was replaced and computes the staleness of every answer.
scenario_freshness() {
    local out row callers upstream within quota
    log "freshness: $FRESHNESS_MINUTES min without and $FRESHNESS_MINUTES min with the sync"
    out=$("$FRESH" --minutes "$FRESHNESS_MINUTES" 2>"$OUT/freshness.err")
    echo "$out" >"$OUT/freshness.md"
    begin_section 60-freshness "Freshness for almost no quota: the incident sync" <<EOF
Twenty tools each fetch the same 300 active incidents every 30 s (200 requests/s) while one of
them changes every second; real quotas (Get 100/min, List 50/min), $FRESHNESS_MINUTES minutes per
mode, default configuration otherwise (TTL 60 s; sync interval 15 s, at most 25% of List). The
300 incidents all changed just before the start. Staleness of an answer: 0 if it served the
version current when it arrived, else how long that version had already been replaced
(\`cargo run --release --example freshness\`).

$out

Sync runs by result: $(grep -o 'result="[a-z_]*"} [0-9]*' "$OUT/freshness.err" | tr '\n' ' ')
EOF
    row=$(grep '^| with sync' <<<"$out" || true)
    if [ -n "$row" ]; then
        callers=$(awk -F'|' '{ gsub(/ /, "", $5); print $5 }' <<<"$row")
        upstream=$(awk -F'|' '{ gsub(/ /, "", $9); print $9 }' <<<"$row")
        within=$(awk -F'|' '{ split($12, a, "%"); gsub(/ /, "", a[1]); print a[1] }' <<<"$row")
        quota=$(awk -F'|' '{ gsub(/[ %]/, "", $13); print $13 }' <<<"$row")
        add_target "with the sync: zero 429s to callers and from the upstream" "$callers to callers, $upstream from upstream" \
            "$([ "$callers" = 0 ] && [ "$upstream" = 0 ] && echo true || echo false)"
        add_target "with the sync: staleness <= interval + 5 s for 99% of answers" "$within% of answers" \
            "$(awk -v w="$within" 'BEGIN { print (w >= 99) ? "true" : "false" }')"
        add_target "with the sync: under 10% of the Get quota spent" "$quota%" \
            "$(awk -v q="$quota" 'BEGIN { print (q < 10) ? "true" : "false" }')"
    fi
}

# The freshness scenario with the sync over a Graph upstream (issue 13): the same tools on the
# Defender facade, the proxy speaking Graph; the Get and List calls it spends are Graph's.
scenario_freshness_graph() {
    local out row
    log "freshness over Graph: $FRESHNESS_MINUTES min with the sync"
    out=$("$FRESH" --minutes "$FRESHNESS_MINUTES" --mode sync --upstream graph 2>"$OUT/freshness-graph.err")
    echo "$out" >"$OUT/freshness-graph.md"
    begin_section 62-freshness-graph "Freshness over a Graph upstream" <<EOF
The freshness scenario (above) with the sync, the proxy's upstream set to Graph
(\`upstream.api = "graph"\`); the tools still call \`/api/incidents/{id}\` and get Defender's
schema. The sync lists Graph pages of 50, \`\$orderby=lastUpdateDateTime asc\` with
\`\$expand=alerts\`; Get and List calls per minute are the calls the simulator's Graph routes saw
(\`cargo run --release --example freshness -- --mode sync --upstream graph\`).

$out
EOF
    row=$(grep '^| with sync' <<<"$out" || true)
    if [ -n "$row" ]; then
        local gets lists
        gets=$(awk -F'|' '{ gsub(/ /, "", $7); print $7 }' <<<"$row")
        lists=$(awk -F'|' '{ gsub(/ /, "", $8); print $8 }' <<<"$row")
        add_target "with the sync over Graph: Get and List calls per minute (reported)" "$gets Get/min, $lists List/min" true
    fi
}

# Issue 15, the shared cache: two replicas sharing one redis-server (`shared.cache = true`).
# First-tier hits with the Redis tier on (the hot scenario's wrk run, against a proxy without Redis
# first), then per-request latency of first-tier hits, second-tier hits (ids fetched by the other
# replica) and misses, one request at a time on one connection.
SHARED_IDS=500
scenario_shared() {
    local c r a b lat_first lat_second lat_miss plain_cpu redis_cpu added kind v
    if ! command -v redis-server >/dev/null; then
        [ "$(id -u)" -eq 0 ] || die "missing redis-server; as root run: apt-get install -y redis-server"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server >/dev/null
    fi
    port_in_use "$REDIS_PORT" && die "port $REDIS_PORT is in use; set BENCH_PORT_BASE to a free range"
    start_bg redis redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no
    local redis_pid=$LAST_PID
    start_sim "$OPEN_QUOTAS"
    # Without Redis: today's hit cost, measured here on the same machine state.
    start_proxy "$OPEN_QUOTAS" 30s
    curl -sf -o /dev/null -H "Authorization: Bearer $KEY" "http://127.0.0.1:$PROXY_PORT/api/incidents/$HOT_ID"
    for r in $(seq 1 "$ROUNDS"); do
        for c in $CONNECTIONS; do
            run_wrk shared defender-proxy "$PROXY_PID" "http://127.0.0.1:$PROXY_PORT/api/incidents/$HOT_ID" hot.lua "$c" "$r"
        done
    done
    stop_pid "$PROXY_PID"
    local shared_toml="[shared]
redis_url = \"redis://127.0.0.1:$REDIS_PORT/\"
replicas = 2
cache = true"
    write_proxy_config "$OUT/proxy-$SCENARIO-a.toml" "$OPEN_QUOTAS" 30s
    echo "$shared_toml" >>"$OUT/proxy-$SCENARIO-a.toml"
    write_proxy_config "$OUT/proxy-$SCENARIO-b.toml" "$OPEN_QUOTAS" 30s "$TELEMETRY_OFF" "$PROXY_LOG_PORT" "$ADMIN_LOG_PORT"
    echo "$shared_toml" >>"$OUT/proxy-$SCENARIO-b.toml"
    start_bg proxy-a "${PIN_SERVER[@]}" "$DPX" serve --config "$OUT/proxy-$SCENARIO-a.toml"
    a=$LAST_PID
    start_bg proxy-b "${PIN_SERVER[@]}" "$DPX" serve --config "$OUT/proxy-$SCENARIO-b.toml"
    b=$LAST_PID
    wait_http "http://127.0.0.1:$ADMIN_PORT/livez"
    wait_http "http://127.0.0.1:$ADMIN_LOG_PORT/livez"
    sleep 2 # both replicas reach Redis and subscribe
    curl -sf -o /dev/null -H "Authorization: Bearer $KEY" "http://127.0.0.1:$PROXY_PORT/api/incidents/$HOT_ID"
    for r in $(seq 1 "$ROUNDS"); do
        for c in $CONNECTIONS; do
            run_wrk shared defender-proxy-redis-tier "$a" "http://127.0.0.1:$PROXY_PORT/api/incidents/$HOT_ID" hot.lua "$c" "$r"
        done
    done
    # Replica A fetches ids 2..N+1 (misses: upstream, then Redis); replica B reads each once
    # (second-tier hits), then again (first-tier hits); then ids it never saw (misses).
    local ids="2-$((SHARED_IDS + 1))" cold="$((SHARED_IDS + 2))-$((2 * SHARED_IDS + 1))" second_calls used_bytes
    python3 "$BENCH/loadtool.py" warm --url "http://127.0.0.1:$PROXY_PORT/api/incidents" --key "$KEY" --ids "$ids" >"$OUT/shared-warm.json"
    sim_reset
    lat_second=$(python3 "$BENCH/loadtool.py" latency --url "http://127.0.0.1:$PROXY_LOG_PORT/api/incidents" --key "$KEY" --ids "$ids")
    second_calls=$(sim_get_calls | cut -d' ' -f1)
    lat_first=$(python3 "$BENCH/loadtool.py" latency --url "http://127.0.0.1:$PROXY_LOG_PORT/api/incidents" --key "$KEY" --ids "$ids")
    # shellcheck disable=SC2034 # read through ${!v} below
    lat_miss=$(python3 "$BENCH/loadtool.py" latency --url "http://127.0.0.1:$PROXY_LOG_PORT/api/incidents" --key "$KEY" --ids "$cold")
    used_bytes=$(redis-cli -p "$REDIS_PORT" --raw GET '{dp:default}:cache:bytes' 2>/dev/null || echo "n/a")
    stop_pid "$a"
    stop_pid "$b"
    stop_pid "$SIM_PID"
    stop_pid "$redis_pid"
    for kind in first second miss; do
        v="lat_$kind"
        record "$(jq -c --arg k "$kind" '. + {scenario: "shared-latency", server: $k}' <<<"${!v}")"
    done
    plain_cpu=$(shared_cpu defender-proxy)
    redis_cpu=$(shared_cpu defender-proxy-redis-tier)
    added=$(jq -n --argjson s "$lat_second" --argjson f "$lat_first" '($s.p50_us - $f.p50_us)')
    local rows=""
    for kind in first second miss; do
        v="lat_$kind"
        rows="$rows$(jq -r --arg k "$kind" '"| \(if $k == "first" then "first-tier hit (memory)" elif $k == "second" then "second-tier hit (Redis)" else "miss (Redis lookup and lease, then upstream)" end) | \(.requests) | \(.p50_us | round) | \(.p90_us | round) | \(.p99_us | round) | \(.mean_us | round) |"' <<<"${!v}")
"
    done
    begin_section 75-shared "Shared cache tier (issue 15): hit cost and second-tier latency" <<EOF
Two replicas share one \`redis-server\` on 127.0.0.1 (\`shared.cache = true\`, \`replicas = 2\`). First,
\`GET /api/incidents/$HOT_ID\` cached, as in the hot scenario, against a proxy without Redis and then
against replica A with the Redis tier on ($ROUNDS round(s), median server CPU per request at the
last connection count: **$(fmt "$plain_cpu") µs without Redis, $(fmt "$redis_cpu") µs with the Redis
tier**; a first-tier hit never touches Redis). Then replica A fetched ids $ids (misses), and
replica B read each of them once (second-tier hits: one Redis lookup inside the flight, the
incident rebuilt from its native body; the simulator saw $second_calls upstream calls meanwhile),
again (first-tier hits), and ids $cold it never saw (misses: Redis lookup and lease, then the
upstream). One request at a time on one keep-alive connection (a python client: its overhead is
in every row alike). The shared tier held ${used_bytes} bytes of bodies at the end.

| request on replica B | requests | p50 µs | p90 µs | p99 µs | mean µs |
|---|--:|--:|--:|--:|--:|
${rows}
Added latency of a second-tier hit over a first-tier hit (p50): **$(fmt "$added" 0) µs**.
EOF
    load_table shared
    add_target "first-tier hit with the Redis tier on: server CPU/request within 10% of the same proxy without Redis (median of $ROUNDS round(s))" \
        "$(fmt "$redis_cpu") µs vs $(fmt "$plain_cpu") µs" "$(awk -v r="$redis_cpu" -v p="$plain_cpu" 'BEGIN { print (r <= p * 1.1) ? "true" : "false" }')"
    add_target "second-tier hit: no upstream call" "$second_calls upstream calls for $SHARED_IDS second-tier reads" "$([ "$second_calls" -eq 0 ] && echo true || echo false)"
}

# shared_cpu SERVER: median server CPU µs per request of that server's shared-scenario runs at the
# last connection count.
shared_cpu() {
    local c
    c=$(awk '{ print $NF }' <<<"$CONNECTIONS")
    median "$(jq -r --arg s "$1" --argjson c "$c" \
        'select(.scenario == "shared" and .server == $s and .conns == $c) | .cpu_us_per_req' "$RESULTS_JSONL")"
}

# Fair sharing (issue 16): the freshness scenario without the sync while a batch tool (another
# consumer, priority batch, 50 workers) walks the 1,700 other incidents cold, once with fair
# queuing between consumers and once with one first-come-first-served queue.
scenario_flood() {
    local out
    log "flood: $FRESHNESS_MINUTES min with fair queuing and $FRESHNESS_MINUTES min with one FIFO queue"
    out=$("$FRESH" --minutes "$FRESHNESS_MINUTES" --mode flood 2>"$OUT/flood.err")
    echo "$out" >"$OUT/flood.md"
    begin_section 65-flood "Fair sharing: interactive tools during a batch flood" <<EOF
The freshness scenario's twenty interactive tools (TTL only, no sync), while a batch tool walks
the 1,700 other incidents cold with 50 workers (\`Prefer: wait=120\`, \`no-cache\`), with and
without fair queuing between consumers (\`budget.fair_queuing\`); $FRESHNESS_MINUTES minutes per
mode (\`cargo run --release --example freshness -- --mode flood\`).

$out
EOF
}

# ---------------------------------------------------------------------------------------------
# RESULTS.md

write_results() {
    local commit dirty cpu mem section
    commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
    dirty=""
    if [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then
        dirty=" (with uncommitted changes)"
    fi
    cpu=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
    mem=$(awk '/^MemTotal:/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)
    {
        cat <<EOF
# Benchmark results

Generated by \`bash bench/run.sh\` on $(date -u '+%Y-%m-%d %H:%M UTC'); do not edit by hand, run it
again (see \`bench/README.md\`). Raw outputs are in \`bench/out/\` (not committed).

| | |
|---|---|
| machine | $(nproc) CPUs ($cpu), $mem, Linux $(uname -r) |
| defender-proxy | $("$DPX" --version), commit $commit$dirty, release profile |
| rustc | $(rustc --version) |
| nginx | $(nginx -v 2>&1 | sed 's/^nginx version: //') |
| wrk | $(wrk -v 2>&1 | head -n 1 | awk '{ print $2 }') |
| python | $(python3 --version 2>&1) |
| load | wrk, ${DURATION} s per run, connections: $CONNECTIONS, threads min(2, connections), seed $SEED |

## Targets

| target | measured | result |
|---|---|---|
EOF
        if [ -s "$TARGETS_JSONL" ]; then
            jq -r '"| \(.target) | \(.measured) | \(if .met then "met" else "**missed**" end) |"' "$TARGETS_JSONL"
        fi
        echo
        for section in "$SECTIONS"/*.md; do
            cat "$section"
            echo
        done
        cat <<EOF
## How it was measured

- Everything runs on 127.0.0.1 on this one machine: the simulator, the server under test and wrk
  share the CPUs, so requests/s and latencies move with whatever else runs. **Server CPU per
  request** (user + system time of the server's processes from \`/proc/PID/stat\` before and
  after the run, divided by the requests wrk completed) is the figure that survives a noisy
  machine. For nginx it sums the master and all workers.
- Peak RSS is \`VmHWM\` from \`/proc/PID/status\` (summed over nginx's processes, which counts
  shared pages once per process).
- defender-proxy runs with \`telemetry.access_log = false\` and \`log_level = "warn"\` (no
  per-request log line) and nginx with \`access_log off\`, except where a row says otherwise (the
  hot scenario also runs both with their access logs on).
- With two CPUs or more, servers are pinned to one CPU and wrk to another (\`taskset\`); the
  simulator is not pinned (it is idle while hits are measured). Other engineers' compilations
  share the machine: the "unrelated CPU %" column says how much, and callgrind's instruction
  counts (hot scenario) do not depend on it. Both check the consumer key (the proxy hashes it with SHA-256, nginx
  compares strings). Cache TTLs are one hour in both so nothing expires during a run.
- nginx is configured as the obvious alternative: a front server with \`proxy_cache\`,
  \`proxy_cache_lock\`, \`proxy_cache_valid\`; misses go to a back server with \`limit_req\` that
  adds the upstream token (a fixed one from the simulator's token endpoint). \`worker_processes
  auto\`; defender-proxy's runtime also has one worker per CPU. The generated configurations are
  kept as \`bench/out/nginx-SCENARIO.conf\`, the proxy's as \`bench/out/proxy-SCENARIO.toml\`.
- In the scenarios about hits, the quotas are set so high that they never bind (hits never spend
  budget in either server).
EOF
    } >"$RESULTS"
    log "wrote $RESULTS"
}

# ---------------------------------------------------------------------------------------------

main() {
    ensure_tools
    local s p
    for s in $SCENARIOS; do
        declare -F "scenario_$s" >/dev/null || die "unknown scenario '$s'"
    done
    for p in "$SIM_PORT" "$PROXY_PORT" "$ADMIN_PORT" "$PROXY_LOG_PORT" "$ADMIN_LOG_PORT" "$NGINX_LOG_PORT" "$NGINX_PORT" "$NGINX_BACK_PORT" "$BARE_PORT"; do
        port_in_use "$p" && die "port $p is in use; set BENCH_PORT_BASE to a free range"
    done
    # The cold burst holds 1,000 sockets in one process.
    ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
    build
    rm -rf "$OUT"
    mkdir -p "$OUT" "$SECTIONS"
    : >"$RESULTS_JSONL"
    : >"$TARGETS_JSONL"

    local keys
    keys=$("$DPX" hash-key)
    KEY=$(sed -n 's/^key: *//p' <<<"$keys")
    KEY_HASH=$(sed -n 's/^hash: *//p' <<<"$keys")

    for s in $SCENARIOS; do
        log "scenario $s"
        SCENARIO=$s
        "scenario_$s"
    done

    if [ "$RUN_CRITERION" -eq 1 ]; then
        log "cargo bench (criterion)"
        cargo bench --locked --bench hot_path >"$OUT/criterion.txt" 2>&1 || die "cargo bench failed; see $OUT/criterion.txt"
    fi
    if [ -d "$TARGET_DIR/criterion" ]; then
        {
            printf '## Criterion (%s)\n\n' "\`cargo bench\`"
            bash "$BENCH/criterion-summary.sh"
            printf '\n'
        } >"$SECTIONS/90-criterion.md"
    fi
    local previous="$OUT/RESULTS.previous.md"
    [ -f "$RESULTS" ] && cp "$RESULTS" "$previous"
    write_results
    if [ "$KEEP" -eq 1 ] && [ -f "$previous" ]; then
        python3 "$BENCH/keep-results.py" "$previous" "$RESULTS"
    fi
}

main
