-- Shared by every bench/lua script (loaded with dofile).  Counts non-2xx
-- responses per thread and, when wrk finishes, prints one parseable line:
--   BENCH rps=<req/s> p50_ms=<ms> p99_ms=<ms> requests=<n> non2xx=<n> sockerr=<n> status=<first non-2xx status or ->
-- Configuration comes from the environment (set by bench/run.sh):
--   BENCH_AUTH    value of the Authorization header (e.g. "Basic Z3c6...")
--   BENCH_TOKEN   token to introspect / revoke
--   BENCH_ACCEPT  Accept header (optional)

local threads = {}

function env(name, default)
  local v = os.getenv(name)
  if v == nil or v == "" then
    if default ~= nil then return default end
    error("bench: environment variable " .. name .. " is not set")
  end
  return v
end

function form_post(body)
  wrk.method = "POST"
  wrk.body = body
  wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
  wrk.headers["Authorization"] = env("BENCH_AUTH")
  local accept = os.getenv("BENCH_ACCEPT")
  if accept ~= nil and accept ~= "" then
    wrk.headers["Accept"] = accept
  end
end

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  non2xx = 0
  first_bad = "-"
end

function response(status, headers, body)
  if status < 200 or status > 299 then
    non2xx = non2xx + 1
    if first_bad == "-" then first_bad = tostring(status) end
  end
end

function done(summary, latency, requests)
  local non2xx_total, bad = 0, "-"
  for _, t in ipairs(threads) do
    non2xx_total = non2xx_total + (t:get("non2xx") or 0)
    local b = t:get("first_bad")
    if bad == "-" and b ~= nil and b ~= "-" then bad = b end
  end
  local e = summary.errors
  local sockerr = e.connect + e.read + e.write + e.timeout
  local secs = summary.duration / 1e6
  local rps = 0
  if secs > 0 then rps = summary.requests / secs end
  io.write(string.format(
    "BENCH rps=%.1f p50_ms=%.3f p99_ms=%.3f requests=%d non2xx=%d sockerr=%d status=%s\n",
    rps, latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    summary.requests, non2xx_total, sockerr, bad))
end
