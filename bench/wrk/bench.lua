-- One request, sent over and over by every connection; the orchestrator
-- (bench/loadgen.py) says which through the environment:
--   BENCH_METHOD        GET (default) or POST
--   BENCH_BODY          a file whose bytes are the body (read once, here)
--   BENCH_CONTENT_TYPE  the body's Content-Type
--   BENCH_ACCEPT        an Accept header, if not empty
--   BENCH_HEADERS       more headers, one "Name: value" per line (the v2 protocol's
--                       Inference-Header-Content-Length)
-- done() prints one line, "BENCH {json}", that the orchestrator parses.

wrk.method = os.getenv("BENCH_METHOD") or "GET"
local path = os.getenv("BENCH_BODY")
if path ~= nil and path ~= "" then
  local file = assert(io.open(path, "rb"))
  wrk.body = file:read("*a")
  file:close()
  wrk.headers["Content-Type"] = os.getenv("BENCH_CONTENT_TYPE")
end
local accept = os.getenv("BENCH_ACCEPT")
if accept ~= nil and accept ~= "" then
  wrk.headers["Accept"] = accept
end
for name, value in string.gmatch(os.getenv("BENCH_HEADERS") or "", "([^:\n]+):%s*([^\n]*)") do
  wrk.headers[name] = value
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH {"requests": %d, "duration_us": %d, "bytes": %d, "connect_errors": %d, ' ..
    '"read_errors": %d, "write_errors": %d, "status_errors": %d, "timeouts": %d, ' ..
    '"mean_us": %.1f, "p50_us": %d, "p95_us": %d, "p99_us": %d, "max_us": %d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, latency.mean, latency:percentile(50), latency:percentile(95),
    latency:percentile(99), latency.max))
end
