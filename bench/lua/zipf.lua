-- GET /api/incidents/{id} for ids 1..BENCH_IDS drawn from a Zipf distribution with exponent
-- BENCH_ZIPF_S (rank k has weight 1/k^s; id k is rank k). Each thread draws from LuaJIT's
-- generator seeded with BENCH_SEED + its index, so the same ids come in the same order on
-- every run and for every server. The draws are precomputed so the hot loop only indexes a table.
dofile(os.getenv("BENCH_LUA_DIR") .. "/report.lua")

local ids = tonumber(os.getenv("BENCH_IDS") or "10000")
local exponent = tonumber(os.getenv("BENCH_ZIPF_S") or "1.0")
local seed = tonumber(os.getenv("BENCH_SEED") or "42")
local draws = 65536
local requests_table = {}
local next_request = 0

function init(args)
  local cdf, total = {}, 0
  for k = 1, ids do
    total = total + 1 / k ^ exponent
  end
  local acc = 0
  for k = 1, ids do
    acc = acc + (1 / k ^ exponent) / total
    cdf[k] = acc
  end
  cdf[ids] = 1
  math.randomseed(seed + (thread_index or 0))
  for i = 1, draws do
    local u = math.random()
    local lo, hi = 1, ids
    while lo < hi do
      local mid = math.floor((lo + hi) / 2)
      if cdf[mid] < u then lo = mid + 1 else hi = mid end
    end
    requests_table[i] = wrk.format("GET", "/api/incidents/" .. lo)
  end
end

function request()
  next_request = next_request % draws + 1
  return requests_table[next_request]
end
