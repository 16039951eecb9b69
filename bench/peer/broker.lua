-- wrk script for the broker (bench/peer.sh): the RFC 8693 token exchange the load generator
-- (examples/src/bin/loadgen.rs) sends, presenting the dev workload JWT that
-- `broker dev token` wrote to SUBJECT_TOKEN_FILE (read here, never printed), for TASK
-- (demo). Every request presents the same JWT, as bench/issuance.sh does by default.
local path = os.getenv("SUBJECT_TOKEN_FILE")
if path == nil or path == "" then
   error("broker.lua: set SUBJECT_TOKEN_FILE to the file holding the workload JWT")
end
local f = assert(io.open(path, "r"))
local jwt = f:read("*l")
f:close()
if jwt == nil or jwt == "" then
   error("broker.lua: " .. path .. " holds no JWT")
end
local task = os.getenv("TASK") or "demo"

wrk.method = "POST"
wrk.path = os.getenv("BROKER_PATH") or "/oauth2/token"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.headers["Accept"] = "application/json"
-- A JWT is base64url and dots: nothing in it needs percent-encoding.
wrk.body = "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange"
   .. "&subject_token=" .. jwt
   .. "&subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Ajwt"
   .. "&task=" .. task

-- One machine-readable line for bench/peer.sh (latency in µs; status = responses with a
-- status of 400 or more, which wrk counts as "Non-2xx or 3xx responses").
function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      "wrk-result requests=%d duration_us=%d p50_us=%d p90_us=%d p99_us=%d p999_us=%d max_us=%d status=%d connect=%d read=%d write=%d timeout=%d\n",
      summary.requests, summary.duration,
      latency:percentile(50), latency:percentile(90), latency:percentile(99),
      latency:percentile(99.9), latency.max,
      e.status, e.connect, e.read, e.write, e.timeout))
end
