-- wrk script for V2 infer requests: POSTs the body read from the file named by BENCH_BODY
-- (keep-alive is wrk's default) and prints the same summary line as post_json.lua.
--
-- With BENCH_HEADER_LENGTH set, the body is a binary tensor request (Triton's extension): a JSON
-- header of that many bytes followed by the raw tensor bytes. It is then sent as tritonclient's
-- HTTP client sends it: `Inference-Header-Content-Length: BENCH_HEADER_LENGTH` and no
-- Content-Type. Without it the body is JSON, sent with `Content-Type: application/json`.
-- Lua strings hold any bytes, and wrk sends the body with its full length.
local path = os.getenv("BENCH_BODY")
if path == nil or path == "" then
  error("BENCH_BODY must name a file holding the request body")
end
local file = assert(io.open(path, "rb"))
wrk.method = "POST"
wrk.body = file:read("*a")
file:close()
local header_length = os.getenv("BENCH_HEADER_LENGTH")
if header_length ~= nil and header_length ~= "" then
  if tonumber(header_length) == nil or tonumber(header_length) > #wrk.body then
    error("BENCH_HEADER_LENGTH must be a byte count within the body")
  end
  wrk.headers["Inference-Header-Content-Length"] = header_length
else
  wrk.headers["Content-Type"] = "application/json"
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH_SUMMARY requests=%d duration_us=%d bytes=%d non2xx=%d connect=%d read=%d write=%d timeout=%d p50_us=%d p90_us=%d p99_us=%d max_us=%d mean_us=%.1f\n",
    summary.requests, summary.duration, summary.bytes, e.status, e.connect, e.read, e.write,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean))
end
