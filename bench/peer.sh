#!/usr/bin/env bash
# Peer comparison (issue 13): the broker's token issuance against node-oidc-provider's
# (bench/peer: oidc-provider 9.x, client_credentials, EdDSA JWT access tokens, production
# mode, 2 node:cluster workers), both driven by the SAME load: wrk, 2 threads,
# 32 keep-alive connections, after a warm-up that is not counted.
#
#   bench/peer.sh                                  # 1 round: broker, then peer; 10 s each
#   ROUNDS=3 DURATION=30s bench/peer.sh            # broker, peer, broker, peer, ...
#   DURATION=3s WARMUP=2s IDLE_WAIT=0 bench/peer.sh   # smoke run
#
# The broker is started exactly as bench/issuance.sh starts it (`broker serve --dev`, plain
# HTTP on loopback, durable group-committed audit log in a fresh `mktemp -d` directory;
# a fresh broker every round), and every request is the RFC 8693 exchange the load
# generator sends, presenting the same dev workload JWT (`broker dev token`;
# bench/peer/broker.lua). The peer answers client_credentials with client_secret_basic
# (bench/peer/token.lua); it keeps no audit log and stores nothing per token. Only one
# server runs at a time. After each server: its audit log is verified (broker) and it is
# stopped.
#
# Per server and round: requests/s, p50/p99 (wrk --latency), the server's cores used and
# CPU per request (utime + stime from /proc/<pid>/stat before and after the measured
# window; for the peer summed over the cluster primary and its workers), the generator's
# (wrk's) own CPU, and errors (responses >= 400 and socket errors: any one fails the run).
# For the broker also where a record's audit wait went in that window (the
# broker_audit_*_total counters from /metrics, diffed): records per batch, the commit and
# each sync per batch, the queue and the whole append per record.
# Then the ratio broker/peer, and a Markdown table of every round at the end: each round's
# ratio (flagged when either server lost 2 % or more of its CPU time to steal), the ratio of
# the mean rates, and one line against issue 13's targets (the median of the rounds'
# ratios ≥ 3.5; the broker's p99 < 5 ms in every round).
#
# Signing: the peer signs EdDSA (Ed25519) as issue 13 asks; `broker serve --dev` signs
# ES256 since issue 17, so the script prints both tokens' alg and warns when they differ.
# PEER_ALG=ES256 makes the peer sign ES256 too, for an algorithm-matched comparison.
# The broker signs BROKER_DEV_ALG (`serve --dev --dev-alg`), by default the peer's
# algorithm, so both sides sign alike unless told otherwise (ES256, --dev's own default,
# is not passed as a flag, so older builds still run with BROKER_DEV_ALG=ES256).
#
# Environment: DURATION (10s), PEER_ALG (EdDSA; or ES256), BROKER_DEV_ALG (PEER_ALG), WARMUP (sets both warm-ups), BROKER_WARMUP (2s),
# PEER_WARMUP (10s: V8's JIT needs it), ROUNDS (1), CONNECTIONS (32), THREADS (2: wrk
# threads), PEER_WORKERS (2), TASK (demo), IDLE_WAIT (60: seconds to wait for the machine
# to go quiet before each measurement; 0: don't), NICE (unset; e.g. -20 runs the servers
# and wrk at that nice level), KEEP_TMP=1 (keep the work directory and server logs),
# BIN_DIR (target/release: the broker binary; it is not built here, see bench/issuance.sh),
# PEER (1; 0: the broker only, for A/B runs of two broker builds with BIN_DIR).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)
PEER_DIR="$ROOT/bench/peer"

DURATION=${DURATION:-10s}
BROKER_WARMUP=${BROKER_WARMUP:-${WARMUP:-2s}}
PEER_WARMUP=${PEER_WARMUP:-${WARMUP:-10s}}
ROUNDS=${ROUNDS:-1}
CONNECTIONS=${CONNECTIONS:-32}
THREADS=${THREADS:-2}
PEER_WORKERS=${PEER_WORKERS:-2}
PEER_ALG=${PEER_ALG:-EdDSA}
BROKER_DEV_ALG=${BROKER_DEV_ALG:-$PEER_ALG}
DEV_ALG_FLAG=()
[[ "$BROKER_DEV_ALG" == ES256 ]] || DEV_ALG_FLAG=(--dev-alg "$BROKER_DEV_ALG")
BROKER_ALG=""
TASK=${TASK:-demo}
IDLE_WAIT=${IDLE_WAIT:-60}
PRIO=()
if [[ -n "${NICE:-}" ]]; then
    PRIO=(nice -n "$NICE")
fi
BIN_DIR=${BIN_DIR:-$ROOT/target/release}
BROKER="$BIN_DIR/broker"
PEER=${PEER:-1}

# The peer's one client (also in bench/peer/server.mjs's defaults).
CLIENT_ID=bench
CLIENT_SECRET=bench-secret
PEER_SCOPE=api:read

TOOLS=(wrk curl)
if [[ "$PEER" != 0 ]]; then
    TOOLS+=(node npm)
fi
for tool in "${TOOLS[@]}"; do
    if ! command -v "$tool" >/dev/null; then
        echo "peer.sh: $tool is not installed (apt-get install -y wrk curl; Node.js 20+ with npm)" >&2
        exit 1
    fi
done
if [[ ! -x "$BROKER" ]]; then
    echo "peer.sh: no broker binary at $BROKER (cargo build --release -p broker)" >&2
    exit 1
fi
if ! [[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]]; then
    echo "peer.sh: ROUNDS must be a positive integer" >&2
    exit 1
fi

if [[ ! -d "$PEER_DIR/node_modules" ]]; then
    echo "== installing the peer (npm ci in bench/peer)" >&2
    (cd "$PEER_DIR" && npm ci --no-audit --no-fund >&2)
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/broker-peer.XXXXXX")
SERVER_PID=""

# Stops the server started last (SIGTERM, then SIGKILL after 10 s); for the peer the
# primary stops its workers, and any worker still alive after that is killed by its pid.
stop_server() {
    local pid=$SERVER_PID children=()
    [[ -n "$pid" ]] || return 0
    SERVER_PID=""
    if kill -0 "$pid" 2>/dev/null; then
        mapfile -t children < <(pgrep -P "$pid" 2>/dev/null || true)
        kill -TERM "$pid" 2>/dev/null || true
        local stopped=0
        for _ in $(seq 100); do
            if ! kill -0 "$pid" 2>/dev/null; then
                stopped=1
                break
            fi
            sleep 0.1
        done
        if [[ "$stopped" != 1 ]]; then
            echo "pid $pid did not stop within 10 s of SIGTERM; killing it" >&2
            kill -KILL "$pid" 2>/dev/null || true
        fi
        for c in "${children[@]}"; do
            kill -KILL "$c" 2>/dev/null || true
        done
    fi
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local rc=$?
    stop_server
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

fail() {
    echo "peer.sh: FAILED: $*" >&2
    exit 1
}

echo "== machine"
echo "cpus:    $(nproc)"
echo "cpu:     $(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -n1)"
echo "kernel:  $(uname -srm)"
echo "node:    $(node --version), oidc-provider $(node -p "require('$PEER_DIR/node_modules/oidc-provider/package.json').version")"
echo "wrk:     $(wrk --version 2>&1 | head -n1 | awk '{print $2}')"
echo "commit:  $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo ' (with uncommitted changes)')"
echo "date:    $(date -u +%Y-%m-%dT%H:%M:%SZ)"
echo "load:    wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency; warm-up broker $BROKER_WARMUP, peer $PEER_WARMUP; $ROUNDS round(s)"

CLK_TCK=$(getconf CLK_TCK)

# utime + stime (clock ticks) of the given pids, all threads; a pid that is gone counts 0.
cpu_ticks() {
    local total=0 pid stat rest
    for pid in "$@"; do
        stat=$(cat "/proc/$pid/stat" 2>/dev/null) || continue
        rest=${stat##*) }
        # After "pid (comm) ": state is field 3, so utime (14) and stime (15) are the
        # 12th and 13th words of the rest.
        read -r -a f <<<"$rest"
        total=$((total + f[11] + f[12]))
    done
    echo "$total"
}

# Busy share of all CPUs over one second, in percent, from /proc/stat (as bench/issuance.sh).
busy_percent() {
    local a b
    read -r -a a < <(head -n1 /proc/stat)
    sleep 1
    read -r -a b < <(head -n1 /proc/stat)
    local busy=$(((b[1] + b[2] + b[3] + b[6] + b[7]) - (a[1] + a[2] + a[3] + a[6] + a[7])))
    local idle=$(((b[4] + b[5]) - (a[4] + a[5])))
    echo $((100 * busy / (busy + idle > 0 ? busy + idle : 1)))
}
idle_wait() {
    [[ "$IDLE_WAIT" -gt 0 ]] || return 0
    local waited=0 busy
    while :; do
        busy=$(busy_percent)
        ((busy <= 5)) && break
        if ((waited >= IDLE_WAIT)); then
            echo "WARNING: the machine is still ${busy}% busy after ${IDLE_WAIT}s; measuring anyway" >&2
            break
        fi
        ((waited == 0)) && echo "waiting for the machine to go quiet (${busy}% busy)..." >&2
        waited=$((waited + 1))
    done
}

# Prints "parts alg" of the access_token in a token response (JSON file), never the token.
jwt_shape() {
    node -e '
        const r = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
        const t = r.access_token || "";
        const p = t.split(".");
        let alg = "-";
        try { alg = JSON.parse(Buffer.from(p[0], "base64url").toString()).alg || "-"; } catch {}
        console.log(p.length, alg, r.token_type || "-");
    ' "$1"
}

# wrk_run NAME URL SCRIPT DURATION PIDS...: runs wrk; for the measured run (NAME "measure")
# samples the pids' CPU around it and leaves the figures in the R_* variables.
wrk_run() {
    local name=$1 url=$2 script=$3 duration=$4
    shift 4
    local out="$WORK/$LABEL.$ROUND.$name.wrk" t0 t1 c0 c1 times s0 s1
    read -r -a s0 < <(head -n1 /proc/stat)
    c0=$(cpu_ticks "$@")
    t0=$(date +%s%N)
    set +e
    (
        TIMEFORMAT='wrk-cpu %U %S'
        time "${PRIO[@]}" wrk -t"$THREADS" -c"$CONNECTIONS" -d"$duration" --latency \
            -s "$script" "$url" >"$out" 2>&1
    ) 2>"$out.time"
    local rc=$?
    set -e
    t1=$(date +%s%N)
    c1=$(cpu_ticks "$@")
    read -r -a s1 < <(head -n1 /proc/stat)
    # The hypervisor's steal time as a share of the machine's time in the window: a
    # neighbour's load, which slows both servers alike only if it is steady.
    local total=0 i
    for i in 1 2 3 4 5 6 7 8; do total=$((total + s1[i] - s0[i])); done
    # share FIELD: that /proc/stat field's share of the machine's time in the window, in %.
    share() {
        awk -v x=$((s1[$1] - s0[$1])) -v t="$total" 'BEGIN { printf "%.1f", (t > 0 ? 100 * x / t : 0) }'
    }
    R_steal=$(share 8)
    # The whole machine's idle, iowait and softirq shares in the window: whether the
    # server had cores left to use (idle), waited on the disk (iowait), or shared them with
    # the loopback network stack (softirq).
    R_idle=$(share 4)
    R_iowait=$(share 5)
    R_softirq=$(share 7)
    if [[ "$rc" != 0 ]]; then
        cat "$out" >&2
        fail "$LABEL: wrk exited with $rc"
    fi
    local line
    line=$(grep '^wrk-result ' "$out" | tail -n1) || fail "$LABEL: no wrk-result line from $script"
    # R_requests, R_duration_us, R_p50_us, ..., R_timeout
    local kv
    for kv in ${line#wrk-result }; do
        printf -v "R_${kv%%=*}" '%s' "${kv#*=}"
    done
    local errors=$((R_status + R_connect + R_read + R_write + R_timeout))
    if [[ "$name" == measure ]]; then
        grep -v '^wrk-result ' "$out" | sed 's/^/    /'
    fi
    if [[ "$errors" != 0 ]]; then
        grep -v '^wrk-result ' "$out" >&2
        fail "$LABEL ($name): $R_status responses with status >= 400, socket errors: connect $R_connect, read $R_read, write $R_write, timeout $R_timeout"
    fi
    if [[ "$R_requests" == 0 ]]; then
        fail "$LABEL ($name): no requests completed"
    fi
    R_wall_ns=$((t1 - t0))
    R_cpu_ticks=$((c1 - c0))
    read -r _ times < <(grep '^wrk-cpu ' "$out.time")
    R_wrk_cpu=$(awk -v t="$times" 'BEGIN { split(t, a, " "); printf "%.3f", a[1] + a[2] }')
}

RESULTS="$WORK/results.tsv"
: >"$RESULTS"

# record: computes and prints the figures of the last measured run of $LABEL.
record() {
    local rps p50 p99 cores cpu_us wrk_cores
    read -r rps p50 p99 cores cpu_us wrk_cores < <(awk \
        -v n="$R_requests" -v d="$R_duration_us" -v p50="$R_p50_us" -v p99="$R_p99_us" \
        -v ticks="$R_cpu_ticks" -v hz="$CLK_TCK" -v wall="$R_wall_ns" -v wcpu="$R_wrk_cpu" \
        'BEGIN {
            cpu = ticks / hz; w = wall / 1e9
            printf "%.0f %.2f %.2f %.2f %.1f %.2f\n", n / (d / 1e6), p50 / 1e3, p99 / 1e3,
                cpu / w, 1e6 * cpu / n, wcpu / w
        }')
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$ROUND" "$LABEL" "$rps" "$p50" "$p99" \
        "$cores" "$cpu_us" "$wrk_cores" "$R_requests" "$R_steal" "$R_idle" "$R_iowait" "$R_softirq" >>"$RESULTS"
    echo "result:  $LABEL round $ROUND: $rps requests/s, p50 $p50 ms, p99 $p99 ms, server $cores cores, $cpu_us µs CPU/request, wrk $wrk_cores cores, $R_requests requests, steal $R_steal %, machine idle $R_idle % iowait $R_iowait % softirq $R_softirq %, 0 errors"
}

# audit_counters URL: the broker's cumulative group-commit counters from /metrics, one
# "name value" per line.
audit_counters() {
    curl -s --max-time 5 "$1/metrics" |
        grep -E '^broker_audit_(batches|records|appends|commit_seconds|log_sync_seconds|head_seconds|queue_seconds|append_seconds)_total ' ||
        fail "broker: /metrics has no broker_audit_* counters"
}

# audit_breakdown BEFORE AFTER: where a record's audit wait went in the measured window
# (the counters' differences): records per batch, the commit and each sync per batch, the
# queue and the whole append per record.
audit_breakdown() {
    awk 'NR == FNR { a[$1] = $2; next } { d[$1] = $2 - a[$1] }
        END {
            b = d["broker_audit_batches_total"]; r = d["broker_audit_records_total"]
            n = d["broker_audit_appends_total"]
            if (b <= 0 || r <= 0 || n <= 0) { print "audit:   no batches in the window"; exit }
            printf "audit:   %d batches, %.1f records/batch; per batch: commit %.0f µs, log sync %.0f µs, anchor %.0f µs; per record: queue %.0f µs, append %.0f µs\n",
                b, r / b, 1e6 * d["broker_audit_commit_seconds_total"] / b,
                1e6 * d["broker_audit_log_sync_seconds_total"] / b,
                1e6 * d["broker_audit_head_seconds_total"] / b,
                1e6 * d["broker_audit_queue_seconds_total"] / r,
                1e6 * d["broker_audit_append_seconds_total"] / n
        }' "$1" "$2"
}

run_broker() {
    LABEL=broker
    local dev="$WORK/broker.$ROUND"
    echo "== round $ROUND: broker (serve --dev, durable audit log in $dev/audit)"
    : >"$dev.stdout"
    : >"$dev.stderr"
    "${PRIO[@]}" "$BROKER" serve --dev --dev-dir "$dev" --dev-addr 127.0.0.1:0 "${DEV_ALG_FLAG[@]}" \
        >>"$dev.stdout" 2>>"$dev.stderr" &
    SERVER_PID=$!
    local url=""
    for _ in $(seq 300); do
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then
            cat "$dev.stderr" >&2
            fail "broker exited during start-up"
        fi
        url=$(sed -n 's/^listening on \(http:\/\/[^[:space:]]*\).*$/\1/p' "$dev.stdout" | head -n1)
        [[ -n "$url" ]] && break
        sleep 0.1
    done
    [[ -n "$url" ]] || fail "broker did not print 'listening on ...' within 30 s"
    echo "broker:  pid $SERVER_PID at $url"

    # The workload JWT goes to a file only (never to the terminal), as in bench/issuance.sh.
    (
        umask 077
        "$BROKER" dev token --dir "$dev" --ttl 3601 >"$dev.subject.jwt"
    )
    local code
    code=$(curl -s -o "$WORK/check.json" -w '%{http_code}' \
        --data-urlencode grant_type=urn:ietf:params:oauth:grant-type:token-exchange \
        --data-urlencode "subject_token@-" \
        --data-urlencode subject_token_type=urn:ietf:params:oauth:token-type:jwt \
        --data-urlencode "task=$TASK" "$url/oauth2/token" < <(tr -d '\n' <"$dev.subject.jwt"))
    [[ "$code" == 200 ]] || fail "broker: check request answered $code: $(head -c 300 "$WORK/check.json")"
    local shape
    shape=$(jwt_shape "$WORK/check.json")
    echo "check:   200, access token (parts, alg, token_type): $shape"
    BROKER_ALG=$(awk '{print $2}' <<<"$shape")

    idle_wait
    export SUBJECT_TOKEN_FILE="$dev.subject.jwt" TASK
    wrk_run warmup "$url" "$PEER_DIR/broker.lua" "$BROKER_WARMUP" "$SERVER_PID"
    audit_counters "$url" >"$dev.audit0"
    wrk_run measure "$url" "$PEER_DIR/broker.lua" "$DURATION" "$SERVER_PID"
    record
    audit_counters "$url" >"$dev.audit1"
    audit_breakdown "$dev.audit0" "$dev.audit1"

    local rss
    rss=$(awk '/^VmHWM/ {print $2 " " $3}' "/proc/$SERVER_PID/status" 2>/dev/null || true)
    echo "broker:  peak RSS ${rss:-?}"
    stop_server
    if ! "$BROKER" audit verify "$dev/audit" --key-dir "$dev/keys" | sed 's/^/audit:   /'; then
        fail "broker: audit verify failed"
    fi
    local n
    n=$(grep -c -E ' (ERROR|WARN) ' "$dev.stderr" || true)
    if [[ "$n" != 0 ]]; then
        echo "== broker logged $n warnings/errors; first lines:"
        grep -E ' (ERROR|WARN) ' "$dev.stderr" | head -n 5
    fi
}

free_port() {
    node -e 'const s = require("net").createServer().listen(0, "127.0.0.1", () => { console.log(s.address().port); s.close(); });'
}

run_peer() {
    LABEL=peer
    local log="$WORK/peer.$ROUND" port
    port=${PEER_PORT:-$(free_port)}
    echo "== round $ROUND: peer (oidc-provider, NODE_ENV=production, $PEER_WORKERS cluster workers, $PEER_ALG)"
    : >"$log.stdout"
    : >"$log.stderr"
    NODE_ENV=production PORT=$port WORKERS=$PEER_WORKERS ALG=$PEER_ALG CLIENT_ID=$CLIENT_ID \
        CLIENT_SECRET=$CLIENT_SECRET SCOPE=$PEER_SCOPE \
        "${PRIO[@]}" node "$PEER_DIR/server.mjs" >>"$log.stdout" 2>>"$log.stderr" &
    SERVER_PID=$!
    local ready=0
    for _ in $(seq 300); do
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then
            cat "$log.stdout" "$log.stderr" >&2
            fail "peer exited during start-up"
        fi
        if grep -q '^ready$' "$log.stdout"; then
            ready=1
            break
        fi
        sleep 0.1
    done
    [[ "$ready" == 1 ]] || fail "peer did not print 'ready' within 30 s"
    local url="http://127.0.0.1:$port" pids
    mapfile -t pids < <(echo "$SERVER_PID"; pgrep -P "$SERVER_PID")
    ((${#pids[@]} == PEER_WORKERS + 1)) ||
        fail "peer: expected the primary and $PEER_WORKERS workers, found pids ${pids[*]}"
    echo "peer:    primary pid $SERVER_PID, workers ${pids[*]:1} at $url"
    if [[ -s "$log.stderr" ]]; then
        sort -u "$log.stderr" | sed 's/^/peer log: /'
    fi

    local code
    code=$(curl -s -o "$WORK/check.json" -w '%{http_code}' -u "$CLIENT_ID:$CLIENT_SECRET" \
        -d grant_type=client_credentials -d "scope=$PEER_SCOPE" "$url/token")
    [[ "$code" == 200 ]] || fail "peer: check request answered $code: $(head -c 300 "$WORK/check.json")"
    local shape
    shape=$(jwt_shape "$WORK/check.json")
    echo "check:   200, access token (parts, alg, token_type): $shape"
    [[ "$shape" == "3 $PEER_ALG Bearer" ]] || fail "peer: the access token is not a $PEER_ALG JWT ($shape)"

    idle_wait
    export PEER_BASIC="Basic $(printf '%s' "$CLIENT_ID:$CLIENT_SECRET" | base64 -w0)" PEER_SCOPE
    wrk_run warmup "$url" "$PEER_DIR/token.lua" "$PEER_WARMUP" "${pids[@]}"
    wrk_run measure "$url" "$PEER_DIR/token.lua" "$DURATION" "${pids[@]}"
    record

    local rss=0 p kb
    for p in "${pids[@]}"; do
        kb=$(awk '/^VmHWM/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0)
        rss=$((rss + kb))
    done
    echo "peer:    peak RSS $rss kB (primary + workers)"
    stop_server
}

for ROUND in $(seq "$ROUNDS"); do
    run_broker
    if [[ "$PEER" == 0 ]]; then
        continue
    fi
    run_peer
    if [[ "$BROKER_ALG" != "$PEER_ALG" ]]; then
        echo "WARNING: broker tokens are $BROKER_ALG, peer tokens $PEER_ALG (PEER_ALG=$BROKER_ALG to match)" >&2
    fi
done

echo
echo "== summary ($DURATION measured per run; wrk -t$THREADS -c$CONNECTIONS; warm-up broker $BROKER_WARMUP, peer $PEER_WARMUP)"
echo
awk -F'\t' '
    function group(n,   s) {
        s = sprintf("%d", n)
        while (s ~ /[0-9][0-9][0-9][0-9]/) sub(/[0-9][0-9][0-9]($|,)/, ",&", s)
        return s
    }
    BEGIN {
        print "| round | server | requests/s | p50 | p99 | server cores | server CPU / request | wrk cores | requests | non-2xx | steal | machine idle / iowait / softirq |"
        print "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    }
    {
        printf "| %s | %s | %s | %.2f ms | %.2f ms | %.2f | %.1f µs | %.2f | %s | 0 | %s %% | %s / %s / %s %% |\n", $1, $2, group($3), $4, $5, $6, $7, $8, group($9), $10, $11, $12, $13
        rps[$1, $2] = $3; p99[$1, $2] = $5; cpu[$1, $2] = $7; steal[$1, $2] = $10
        if ($1 > rounds) rounds = $1
        if ($2 == "broker" && $5 > worst_p99) worst_p99 = $5
    }
    END {
        n = 0
        for (r = 1; r <= rounds; r++) {
            if (!((r, "peer") in rps)) continue
            ratio = rps[r, "broker"] / rps[r, "peer"]
            # A round in which either server lost 2 % or more of its CPU time to the host.
            flag = (steal[r, "broker"] >= 2 || steal[r, "peer"] >= 2) ? " (steal " steal[r, "broker"] " / " steal[r, "peer"] " %)" : ""
            printf "| %d | **broker / peer**%s | **%.2f×** | | %.2f× | | %.2f× | | | | | |\n", r, flag,
                ratio, p99[r, "broker"] / p99[r, "peer"], cpu[r, "broker"] / cpu[r, "peer"]
            sb += rps[r, "broker"]; sp += rps[r, "peer"]
            # Insertion sort of the ratios, for the median.
            for (i = n; i > 0 && ratios[i - 1] > ratio; i--) ratios[i] = ratios[i - 1]
            ratios[i] = ratio; n++
        }
        if (rounds > 1 && sp > 0)
            printf "| all | **broker / peer** (mean requests/s) | **%.2f×** | | | | | | | | | |\n", sb / sp
        if (n > 0) {
            median = (n % 2) ? ratios[(n - 1) / 2] : (ratios[n / 2 - 1] + ratios[n / 2]) / 2
            printf "\nIssue 13 targets over %d round(s): median ratio %.2f× (target ≥ 3.5: %s); broker p99 at most %.2f ms (target < 5 ms in every round: %s).\n",
                n, median, (median >= 3.5 ? "met" : "not met"), worst_p99, (worst_p99 < 5 ? "met" : "not met")
        }
    }' "$RESULTS"
echo
echo "Tokens signed: broker $BROKER_ALG, peer $PEER_ALG."
if [[ "$BROKER_ALG" != "$PEER_ALG" ]]; then
    echo "WARNING: the two sign with different algorithms (PEER_ALG=$BROKER_ALG matches the broker)."
fi
echo "(p99 and CPU / request ratios: below 1 means the broker is lower. The broker's"
echo "requests each append a durable audit record; the peer's write nothing.)"
