-- wrk script for the peer (bench/peer.sh): POST /token, grant_type=client_credentials,
-- client_secret_basic. PEER_BASIC is the "Basic ..." header value (bench/peer.sh sets it
-- from CLIENT_ID and CLIENT_SECRET); PEER_SCOPE (api:read) is the scope asked for.
local basic = os.getenv("PEER_BASIC")
if basic == nil or basic == "" then
   error("token.lua: set PEER_BASIC to the Authorization header value (Basic base64(id:secret))")
end
local scope = os.getenv("PEER_SCOPE") or "api:read"

wrk.method = "POST"
wrk.path = os.getenv("PEER_PATH") or "/token"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.headers["Accept"] = "application/json"
wrk.headers["Authorization"] = basic
wrk.body = "grant_type=client_credentials&scope=" .. scope:gsub(":", "%%3A"):gsub(" ", "+")

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
