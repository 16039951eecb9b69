#!/usr/bin/env bash
# Revocation and introspection over loopback against the real release binary (issue 4,
# BENCHMARKS.md). The in-process figures are in `cargo bench -p broker --bench revocation`
# and `--bench revocation_footprint`.
#
#   bench/revocation.sh                          # builds, then measures
#   NO_BUILD=1 CONNECTIONS="1 32" bench/revocation.sh
#
# What it does:
#   1. `broker serve --dev` once to create a dev folder, then stops it and adds a resource
#      server (`may_introspect = true`, subject system:serviceaccount:dev:rs), an admin with
#      the `revoke` role (subject system:serviceaccount:dev:admin) and a state journal of
#      SEED_RULES revocation rules (none covering the demo workload) + SEED_JTIS revoked jtis,
#      which the broker replays at start.
#   2. `broker serve --config` on that folder; one access token of the demo workload.
#   3. Introspections/s: `wrk` (one thread) POSTs `token=<that token>` to
#      /oauth2/introspect with `Authorization: Bearer <rs JWT>` on N keep-alive connections
#      (each N in CONNECTIONS) for DURATION after a 2 s warm-up; answers are `active: true`.
#   4. LIVE_TOKENS tokens of the demo workload through the load generator, then one
#      `POST /v1/admin/revocations {"identity": "demo-workload"}` timed with curl (and
#      REVOKE_REPEAT more, each adding a rule that again covers them all); broker RSS
#      before and after.
#   5. `GET /v1/revocations` (the feed: SEED_JTIS jtis + rules): bytes, gzip'd bytes.
#   6. SIGTERM, `broker audit verify`.
#
# Environment: CONNECTIONS ("1 32"), DURATION (10s), SEED_JTIS (100000), SEED_RULES (10),
# LIVE_TOKENS (100000), REVOKE_REPEAT (4), IDLE_WAIT (60 s to wait for a quiet machine),
# NICE (unset; e.g. -10 runs broker and load generators at that nice level),
# KEEP_TMP=1, NO_BUILD=1.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)

CONNECTIONS=${CONNECTIONS:-"1 32"}
DURATION=${DURATION:-10s}
SEED_JTIS=${SEED_JTIS:-100000}
SEED_RULES=${SEED_RULES:-10}
LIVE_TOKENS=${LIVE_TOKENS:-100000}
REVOKE_REPEAT=${REVOKE_REPEAT:-4}
IDLE_WAIT=${IDLE_WAIT:-60}
PRIO=()
if [[ -n "${NICE:-}" ]]; then
    PRIO=(nice -n "$NICE")
fi

BROKER="$ROOT/target/release/broker"
LOADGEN="$ROOT/target/release/loadgen"
RS_SUBJECT="system:serviceaccount:dev:rs"
ADMIN_SUBJECT="system:serviceaccount:dev:admin"

command -v wrk >/dev/null || { echo "wrk is needed (apt-get install -y wrk)" >&2; exit 1; }
command -v jq >/dev/null || { echo "jq is needed (apt-get install -y jq)" >&2; exit 1; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/broker-revbench.XXXXXX")
D="$WORK/dev"
BROKER_PID=""

stop_broker() {
    if [[ -n "$BROKER_PID" ]] && kill -0 "$BROKER_PID" 2>/dev/null; then
        kill -TERM "$BROKER_PID" 2>/dev/null || true
        for _ in $(seq 100); do
            kill -0 "$BROKER_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$BROKER_PID" 2>/dev/null || true
        wait "$BROKER_PID" 2>/dev/null || true
    fi
    BROKER_PID=""
}
cleanup() {
    local rc=$?
    stop_broker
    if [[ "${KEEP_TMP:-0}" == 1 ]]; then
        echo "kept $WORK" >&2
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Starts the broker with the given arguments; sets BROKER_PID and URL.
start_broker() {
    # Truncate before the broker starts: the background redirection may happen after the
    # first look, which must not find the previous run's "listening on" line.
    : >"$WORK/broker.stdout"
    touch "$WORK/broker.stderr"
    "${PRIO[@]}" "$BROKER" "$@" >>"$WORK/broker.stdout" 2>>"$WORK/broker.stderr" &
    BROKER_PID=$!
    URL=""
    for _ in $(seq 300); do
        if ! kill -0 "$BROKER_PID" 2>/dev/null; then
            echo "broker exited during start-up:" >&2
            cat "$WORK/broker.stderr" >&2
            exit 1
        fi
        URL=$(sed -n 's/^listening on \(http:\/\/[^[:space:]]*\).*$/\1/p' "$WORK/broker.stdout" | head -n1)
        [[ -n "$URL" ]] && return 0
        sleep 0.1
    done
    echo "broker did not print 'listening on ...' within 30 s" >&2
    exit 1
}

# Busy share of all CPUs over one second, in percent, from /proc/stat.
busy_percent() {
    local a b
    read -r -a a < <(head -n1 /proc/stat)
    sleep 1
    read -r -a b < <(head -n1 /proc/stat)
    local busy=$(((b[1] + b[2] + b[3] + b[6] + b[7]) - (a[1] + a[2] + a[3] + a[6] + a[7])))
    local idle=$(((b[4] + b[5]) - (a[4] + a[5])))
    echo $((100 * busy / (busy + idle > 0 ? busy + idle : 1)))
}
wait_idle() {
    [[ "$IDLE_WAIT" -gt 0 ]] || return 0
    local waited=0 busy
    while :; do
        busy=$(busy_percent)
        ((busy <= 5)) && return 0
        if ((waited >= IDLE_WAIT)); then
            echo "WARNING: the machine is still ${busy}% busy after ${IDLE_WAIT}s; measuring anyway"
            return 0
        fi
        ((waited == 0)) && echo "waiting for the machine to go quiet (${busy}% busy)..." >&2
        waited=$((waited + 1))
    done
}
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }
# utime+stime of a process, clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss() { awk '/^VmRSS|^VmHWM/ {printf "%s %s KiB  ", $1, $2}' "/proc/$1/status"; }

if [[ "${NO_BUILD:-0}" != 1 ]]; then
    echo "== building release binaries" >&2
    cargo build --release --locked -p broker -p broker-examples >&2
fi

COMMIT=$(git rev-parse --short HEAD 2>/dev/null || cut -c1-7 COMMIT 2>/dev/null || echo unknown)
DIRTY=$(git diff --quiet HEAD 2>/dev/null || { git rev-parse HEAD >/dev/null 2>&1 && echo ' (with uncommitted changes)'; } || true)
echo "== machine"
echo "cpus:    $(nproc)"
echo "cpu:     $(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -n1)"
echo "kernel:  $(uname -srm)"
echo "rustc:   $(rustc --version)"
echo "wrk:     $(wrk --version 2>&1 | head -n1 | cut -d' ' -f1-2)"
echo "commit:  $COMMIT$DIRTY"
echo "date:    $(date -u +%Y-%m-%dT%H:%M:%SZ)"
echo "tmp fs:  $(df -T "$WORK" | awk 'NR==2 {print $2 " on " $1}')"
echo "load:    $(loadavg)"

echo "== preparing $D"
start_broker serve --dev --dev-dir "$D" --dev-addr 127.0.0.1:0
stop_broker
cat >"$D/policies/bench-rs.toml" <<EOF
[identity]
id          = "bench-rs"
owner       = "team-rs"
steward     = "rs@example.com"
purpose     = "Resource server that introspects tokens (benchmark)"
environment = "dev"
ticket      = "BENCH-1"
expires     = "2099-01-01"
may_introspect = true

[[identity.match]]
issuer  = "https://dev-issuer.broker.local"
subject = "$RS_SUBJECT"

[[task]]
name         = "read"
audience     = "https://api.dev.example.org"
scopes       = ["demo:read"]
max_ttl      = "10m"
EOF
cat >>"$D/broker.toml" <<EOF

[[admin]]
name    = "bench-admin"
roles   = ["revoke"]
issuer  = "https://dev-issuer.broker.local"
subject = "$ADMIN_SUBJECT"
EOF
# The state journal the broker replays at start (the FileStore format: one JSON a line).
mkdir -p "$D/state"
NOW=$(date +%s)
awk -v now="$NOW" -v rules="$SEED_RULES" -v jtis="$SEED_JTIS" 'BEGIN {
    srand();
    abc = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    for (i = 0; i < rules; i++) {
        k = i % 4;
        if (k == 0) sel = "{\"by\":\"identity\",\"identity\":\"other-identity-" i "\"}";
        else if (k == 1) sel = "{\"by\":\"task\",\"task\":\"other-task-" i "\"}";
        else if (k == 2) sel = "{\"by\":\"owner\",\"owner\":\"other-owner-" i "\"}";
        else sel = "{\"by\":\"grant\",\"grant\":\"bg-" i "\"}";
        printf "{\"change\":\"revoke_rule\",\"id\":\"rev-seed-%d\",\"selector\":%s,\"issued_before\":%d,\"until\":%d,\"at\":%d,\"actor\":\"admin:bench\",\"reason\":\"bench seed\"}\n", i, sel, now + 3600, now + 86400, now;
    }
    for (i = 0; i < jtis; i++) {
        j = "";
        for (c = 0; c < 22; c++) j = j substr(abc, int(rand() * 64) + 1, 1);
        printf "{\"change\":\"revoke_jti\",\"jti\":\"%s\",\"exp\":%d,\"at\":%d,\"actor\":\"admin:bench\",\"reason\":\"bench seed\"}\n", j, now + 3600, now;
    }
}' >>"$D/state/changes.jsonl"
echo "seeded:  $SEED_RULES rules + $SEED_JTIS revoked jtis ($(wc -c <"$D/state/changes.jsonl") bytes of journal)"

echo "== starting broker (serve --config $D/broker.toml)"
start_broker serve --config "$D/broker.toml"
echo "broker:  pid $BROKER_PID at $URL; $(rss "$BROKER_PID")"

# Credentials go to files only (never to the terminal).
(
    umask 077
    "$BROKER" dev token --dir "$D" --ttl 7200 >"$WORK/demo.jwt"
    "$BROKER" dev token --dir "$D" --ttl 7200 --subject "$RS_SUBJECT" >"$WORK/rs.jwt"
    "$BROKER" dev token --dir "$D" --ttl 7200 --subject "$ADMIN_SUBJECT" >"$WORK/admin.jwt"
    curl -sS --fail-with-body "$URL/oauth2/token" \
        -d grant_type=urn:ietf:params:oauth:grant-type:token-exchange \
        -d subject_token_type=urn:ietf:params:oauth:token-type:jwt \
        --data-urlencode "subject_token=$(cat "$WORK/demo.jwt")" -d task=demo |
        jq -er .access_token >"$WORK/access.token"
)
introspect_once() {
    curl -sS --fail-with-body "$URL/oauth2/introspect" \
        -H "Authorization: Bearer $(cat "$WORK/rs.jwt")" \
        --data-urlencode "token=$(cat "$WORK/access.token")" | jq -c '{active, sub, task}'
}
echo "introspection of the demo token: $(introspect_once)"

cat >"$WORK/introspect.lua" <<'EOF'
local function first_line(path)
    local f = assert(io.open(path, "r"))
    local l = f:read("*l")
    f:close()
    return l
end
local dir = os.getenv("BENCH_WORK")
wrk.method = "POST"
wrk.body = "token=" .. first_line(dir .. "/access.token")
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.headers["Authorization"] = "Bearer " .. first_line(dir .. "/rs.jwt")
EOF
export BENCH_WORK="$WORK"
TCK=$(getconf CLK_TCK)

echo "== introspections/s (wrk, 1 thread, keep-alive)"
for c in $CONNECTIONS; do
    wait_idle
    "${PRIO[@]}" wrk -t1 -c"$c" -d2s -s "$WORK/introspect.lua" "$URL/oauth2/introspect" >/dev/null
    load_before=$(loadavg)
    t0=$(cpu_ticks "$BROKER_PID")
    CMD=("${PRIO[@]}" wrk -t1 -c"$c" -d"$DURATION" --latency -s "$WORK/introspect.lua" "$URL/oauth2/introspect")
    echo "command: ${CMD[*]}"
    "${CMD[@]}" | tee "$WORK/wrk-$c.txt"
    t1=$(cpu_ticks "$BROKER_PID")
    rps=$(awk '/^Requests\/sec/ {print $2}' "$WORK/wrk-$c.txt")
    total=$(awk '/requests in/ {print $1}' "$WORK/wrk-$c.txt")
    non2xx=$(awk '/Non-2xx/ {print $NF}' "$WORK/wrk-$c.txt")
    cpu_us=$(awk -v d="$((t1 - t0))" -v tck="$TCK" -v n="$total" 'BEGIN {printf "%.1f", d / tck * 1e6 / n}')
    echo "RESULT introspect connections=$c rps=$rps requests=$total non2xx=${non2xx:-0} broker_cpu_us_per_request=$cpu_us load_before=\"$load_before\" load_after=\"$(loadavg)\""
done
echo "introspection of the demo token: $(introspect_once)"

echo "== $LIVE_TOKENS live tokens of demo-workload"
issued() { curl -sS "$URL/metrics" | awk '/^broker_tokens_issued_total/ {print $2}'; }
echo "before:  issued=$(issued) $(rss "$BROKER_PID")"
# Chunks of at most 3 s; the last one sized from the rate seen so far, so that the count
# ends close to LIVE_TOKENS (tokens live 10 minutes, far longer than this takes).
rate=""
while :; do
    left=$((LIVE_TOKENS + 1 - $(issued)))
    ((left > 0)) || break
    chunk=$(awk -v l="$left" -v r="${rate:-0}" 'BEGIN {
        d = (r > 0) ? l / r : 3; if (d > 3) d = 3; if (d < 0.2) d = 0.2; printf "%.2fs", d }')
    "${PRIO[@]}" "$LOADGEN" --url "$URL" --connections 32 --duration "$chunk" --warmup 0s \
        --subject-token-file "$WORK/demo.jwt" --task demo --json >"$WORK/loadgen.json"
    rate=$(jq .issuances_per_sec "$WORK/loadgen.json")
    echo "loadgen: $chunk $(jq -c '{issuances, issuances_per_sec, non_ok: .responses.non_ok_rate}' "$WORK/loadgen.json")"
done
echo "after:   issued=$(issued) $(rss "$BROKER_PID")"

echo "== revoking every live token of demo-workload in one call"
revoke() {
    curl -sS --fail-with-body -o "$WORK/revoke.json" -w '%{time_total}' "$URL/v1/admin/revocations" \
        -H "Authorization: Bearer $(cat "$WORK/admin.jwt")" -H 'Content-Type: application/json' \
        -d '{"identity":"demo-workload","reason":"benchmark: revoke every live token"}'
}
wait_idle
for i in $(seq 0 "$REVOKE_REPEAT"); do
    load_before=$(loadavg)
    secs=$(revoke)
    echo "RESULT revoke call=$i seconds=$secs covered=$(jq -r .live_tokens_covered "$WORK/revoke.json") load=\"$load_before\""
done
echo "after:   $(rss "$BROKER_PID")"
echo "introspection of the demo token: $(introspect_once)"

echo "== revocation feed"
curl -sS --fail-with-body -o "$WORK/feed.json" "$URL/v1/revocations" \
    -H "Authorization: Bearer $(cat "$WORK/rs.jwt")"
entries=$(jq '.entries | length' "$WORK/feed.json")
jtis=$(jq '[.entries[] | select(.jti)] | length' "$WORK/feed.json")
bytes=$(wc -c <"$WORK/feed.json")
gz=$(gzip -c "$WORK/feed.json" | wc -c)
echo "RESULT feed entries=$entries jti_entries=$jtis bytes=$bytes gzip_bytes=$gz bytes_per_10k_jtis=$((bytes * 10000 / jtis)) gzip_per_10k_jtis=$((gz * 10000 / jtis))"

echo "== stopping broker (SIGTERM)"
stop_broker
"$BROKER" audit verify "$D/audit" --key-dir "$D/keys"
if [[ -s "$WORK/broker.stderr" ]]; then
    n=$(grep -c -E ' (ERROR|WARN) ' "$WORK/broker.stderr" || true)
    if [[ "$n" != 0 ]]; then
        echo "== broker logged $n warnings/errors; first lines:"
        grep -E ' (ERROR|WARN) ' "$WORK/broker.stderr" | head -n 5
    fi
fi
