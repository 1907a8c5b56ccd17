-- wrk script for bench/bench_projects.py --client wrk: every request a new project.
-- WRK_KEY: the API key; WRK_PREFIX: makes project ids unique per run.
local counter = 0
local prefix = os.getenv("WRK_PREFIX") or "wrk"
local headers = {["Content-Type"] = "application/json", ["X-API-Key"] = os.getenv("WRK_KEY") or ""}

request = function()
  counter = counter + 1
  local body = '{"project_id":"' .. prefix .. "-" .. counter .. '","intent":"make it warm"}'
  return wrk.format("POST", "/v1/projects", headers, body)
end

done = function(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    'RESULT {"requests": %d, "non2xx": %d, "socket_errors": %d, "timeouts": %d, '
      .. '"p50_ms": %.3f, "p99_ms": %.3f, "duration_us": %d}\n',
    summary.requests, errors.status, errors.connect + errors.read + errors.write,
    errors.timeout, latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    summary.duration))
end
