-- wrk script: POST a JSON body to BENCH_PATH, with `{i}` in path and body replaced by an agent number
-- (round robin over BENCH_AGENTS, threads interleaved), an optional bearer key (BENCH_KEY) and an
-- optional think time per connection (BENCH_DELAY_MS, the mean). At the end, one JSON line the bench reads.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local key = os.getenv("BENCH_KEY") or ""
if key ~= "" then wrk.headers["Authorization"] = "Bearer " .. key end

local path = os.getenv("BENCH_PATH")
local body = os.getenv("BENCH_BODY")
local agents = tonumber(os.getenv("BENCH_AGENTS") or "1")
local threads = tonumber(os.getenv("BENCH_THREADS") or "1")
local made = 0
local counter = 0

function setup(thread)
  thread:set("first", made)
  made = made + 1
end

function init(args)
  counter = first or 0
end

function request()
  local number = string.format("%04d", counter % agents)
  counter = counter + threads
  local this_path = string.gsub(path, "{i}", number)
  local this_body = string.gsub(body, "{i}", number)
  return wrk.format(nil, this_path, nil, this_body)
end

-- Think times are exponential around BENCH_DELAY_MS, so the connections arrive as a Poisson stream, as
-- independent users do, rather than in bursts that stay in lockstep.
local think = tonumber(os.getenv("BENCH_DELAY_MS") or "0")
if think > 0 then
  delay = function() return math.floor(-think * math.log(1 - math.random())) end
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH {"requests":%d,"duration_us":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"mean_us":%.1f,' ..
    '"errors":%d,"non_2xx":%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.mean, e.connect + e.read + e.write + e.timeout, e.status))
end
