-- wrk script for benchmarks/serve.py: POSTs the JSON bodies of a file (one per line) in turn,
-- or GETs the URL when BODIES is the word GET.
--   wrk -t1 -cC -dD -s benchmarks/wrk_post.lua URL -- BODIES RATE CONNECTIONS
-- RATE > 0 paces the load: each connection waits an exponential gap (mean CONNECTIONS / RATE s)
-- before each request, so arrivals are Poisson-like at about RATE/s in total; wrk's latency
-- starts when the request is written, never counting the gap. done() prints one JSON line.
local bodies, count, next_body, mean_gap_ms, get = {}, 0, 0, 0, false
local headers = { ["Content-Type"] = "application/json" }

function init(args)
  if args[1] == "GET" then
    get, count = true, 1
  else
    for line in io.lines(args[1]) do
      count = count + 1
      bodies[count] = line
    end
  end
  assert(count > 0, "no request bodies in " .. args[1])
  local rate, connections = tonumber(args[2]) or 0, tonumber(args[3]) or 1
  if rate > 0 then
    mean_gap_ms = 1000 * connections / rate
  end
  math.randomseed(os.time())
  next_body = math.random(count) - 1
end

function delay()
  if mean_gap_ms == 0 then
    return 0
  end
  return -math.log(1 - math.random()) * mean_gap_ms
end

function request()
  if get then
    return wrk.format("GET")
  end
  next_body = next_body % count + 1
  return wrk.format("POST", nil, headers, bodies[next_body])
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_RESULT {"requests": %d, "duration_us": %d, "socket_errors": %d, "http_errors": %d, '
      .. '"mean_us": %.1f, "p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency.mean, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max
  ))
end
