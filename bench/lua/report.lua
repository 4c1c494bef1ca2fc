-- Shared by every wrk run of bench/run.sh: numbers the threads, and at the end prints one line
-- "WRKJSON {...}" with requests, duration, errors, latency percentiles (microseconds) and, when
-- the scenario script counted them in a per-thread table `status_counts`, the statuses seen.
bench_threads = {}
local thread_count = 0

function setup(thread)
  thread_count = thread_count + 1
  thread:set("thread_index", thread_count)
  table.insert(bench_threads, thread)
end

function done(summary, latency, requests)
  local statuses = {}
  for _, thread in ipairs(bench_threads) do
    local counts = thread:get("status_counts")
    if type(counts) == "table" then
      for status, n in pairs(counts) do
        local key = tostring(status)
        statuses[key] = (statuses[key] or 0) + n
      end
    end
  end
  local parts = {}
  for status, n in pairs(statuses) do
    table.insert(parts, string.format('"%s":%d', status, n))
  end
  table.sort(parts)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,"socket_errors":%d,"timeouts":%d,' ..
    '"non_2xx":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"statuses":{%s}}\n',
    summary.requests, summary.duration, summary.bytes, e.connect + e.read + e.write, e.timeout,
    e.status, latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    table.concat(parts, ",")))
end
