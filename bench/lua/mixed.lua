-- Hits mixed with misses: each request is a cold id (never asked before, so it needs the
-- upstream) with probability BENCH_COLD_SHARE, else one of the BENCH_HOT_IDS hot ids (1..N).
-- Cold ids start at BENCH_COLD_FIRST and are unique across threads. Statuses are counted.
dofile(os.getenv("BENCH_LUA_DIR") .. "/report.lua")

local hot_ids = tonumber(os.getenv("BENCH_HOT_IDS") or "20")
local cold_share = tonumber(os.getenv("BENCH_COLD_SHARE") or "0.01")
local cold_first = tonumber(os.getenv("BENCH_COLD_FIRST") or "1001")
local seed = tonumber(os.getenv("BENCH_SEED") or "42")
local threads = tonumber(os.getenv("BENCH_THREADS") or "2")
local hot = {}
local cold_sent = 0
status_counts = {}

function init(args)
  math.randomseed(seed + (thread_index or 0))
  for k = 1, hot_ids do
    hot[k] = wrk.format("GET", "/api/incidents/" .. k)
  end
end

function request()
  if math.random() < cold_share then
    local id = cold_first + (thread_index or 1) - 1 + threads * cold_sent
    cold_sent = cold_sent + 1
    return wrk.format("GET", "/api/incidents/" .. id)
  end
  return hot[math.random(hot_ids)]
end

function response(status, headers, body)
  status_counts[status] = (status_counts[status] or 0) + 1
end
