-- wrk script: POSTs the JSON body read from the file named by BENCH_BODY (keep-alive is wrk's
-- default) and prints one machine-readable summary line at the end of the run.
local path = os.getenv("BENCH_BODY")
if path == nil or path == "" then
  error("BENCH_BODY must name a file holding the request body")
end
local file = assert(io.open(path, "rb"))
wrk.method = "POST"
wrk.body = file:read("*a")
file:close()
wrk.headers["Content-Type"] = "application/json"

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH_SUMMARY requests=%d duration_us=%d bytes=%d non2xx=%d connect=%d read=%d write=%d timeout=%d p50_us=%d p90_us=%d p99_us=%d max_us=%d mean_us=%.1f\n",
    summary.requests, summary.duration, summary.bytes, e.status, e.connect, e.read, e.write,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean))
end
