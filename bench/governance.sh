#!/usr/bin/env bash
# Issuance throughput with monitoring and rate limits ON vs both OFF (issue 7, BENCHMARKS.md): the
# real release binary and the load generator, as bench/issuance.sh drives them, alternating OFF and ON.
#
#   bench/governance.sh                       # 3 rounds of OFF then ON, 32 connections, 2 s + 10 s
#   NO_BUILD=1 ROUNDS=5 bench/governance.sh
#
# OFF has behavioural monitoring switched off and no rate limits; ON has monitoring on
# (the default) and rate limits engaged on both levels:
#   OFF: the config `broker serve --dev` writes, plus `[governance] monitoring = false`.
#   ON:  the same plus `[governance] identity_rate_limit = "1000000/s"` in broker.toml and
#        `rate_limit = "1000000/s"` in the demo task, so that every request takes a token from
#        both buckets (identity, identity+task) without ever being limited.
# Each run starts from a fresh copy of one dev folder (same keys, same workload JWT, empty
# audit log and usage history), so runs do not inherit each other's state. Before the rounds,
# a probe with `rate_limit = "1/m"` checks that this config shape really engages the limiter
# (second request -> 429 with Retry-After).
#
# Environment: ROUNDS (3), ORDER (alternate: OFF then ON in every round; abba: OFF ON, ON OFF,
# OFF ON, ... so that a drift over the session does not always favour the mode that runs first),
# OTHER_MAX (0.15: a run during which other processes used more CPU cores than this, as the
# load generator measures it, is left out of the medians and done again, at most RETRIES (2)
# more times), CONNECTIONS (32), DURATION (10s), WARMUP (2s), IDLE_WAIT (60: seconds
# to wait for a quiet machine before each run; 0: don't), NICE (unset; e.g. -10 runs the broker
# and the generator at that nice level), KEEP_TMP=1, NO_BUILD=1.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)

ROUNDS=${ROUNDS:-3}
CONNECTIONS=${CONNECTIONS:-32}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
IDLE_WAIT=${IDLE_WAIT:-60}
ORDER=${ORDER:-alternate}
OTHER_MAX=${OTHER_MAX:-0.15}
RETRIES=${RETRIES:-2}
PRIO=()
if [[ -n "${NICE:-}" ]]; then
    PRIO=(nice -n "$NICE")
fi

BROKER="$ROOT/target/release/broker"
LOADGEN="$ROOT/target/release/loadgen"
command -v jq >/dev/null || { echo "jq is needed (apt-get install -y jq)" >&2; exit 1; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/broker-govbench.XXXXXX")
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

# Starts the broker with the given arguments (logs under $LOG); sets BROKER_PID and URL.
start_broker() {
    # Create the log files before the broker starts: the background redirection may
    # happen after the first look at them.
    : >"$LOG.stdout"
    : >"$LOG.stderr"
    "${PRIO[@]}" "$BROKER" "$@" >>"$LOG.stdout" 2>>"$LOG.stderr" &
    BROKER_PID=$!
    URL=""
    for _ in $(seq 300); do
        if ! kill -0 "$BROKER_PID" 2>/dev/null; then
            echo "broker exited during start-up:" >&2
            cat "$LOG.stderr" >&2
            exit 1
        fi
        URL=$(sed -n 's/^listening on \(http:\/\/[^[:space:]]*\).*$/\1/p' "$LOG.stdout" | head -n1)
        [[ -n "$URL" ]] && return 0
        sleep 0.1
    done
    echo "broker did not print 'listening on ...' within 30 s" >&2
    exit 1
}

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

# Makes $1 a fresh copy of the template in mode $2 (OFF, ON, or PROBE).
make_run_dir() {
    rm -rf "$1"
    cp -a "$WORK/template" "$1"
    case "$2" in
    OFF)
        printf '\n[governance]\nmonitoring = false\n' >>"$1/broker.toml"
        ;;
    ON)
        printf '\n[governance]\nidentity_rate_limit = "1000000/s"\n' >>"$1/broker.toml"
        # The demo task is the last table of the sample policy.
        printf 'rate_limit   = "1000000/s"\n' >>"$1/policies/demo-workload.toml"
        ;;
    PROBE)
        printf 'rate_limit   = "1/m"\n' >>"$1/policies/demo-workload.toml"
        ;;
    esac
}

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
echo "commit:  $COMMIT$DIRTY"
echo "date:    $(date -u +%Y-%m-%dT%H:%M:%SZ)"
echo "tmp fs:  $(df -T "$WORK" | awk 'NR==2 {print $2 " on " $1}')"
echo "load:    $(loadavg)"

echo "== template dev folder (broker serve --dev once)"
LOG="$WORK/template"
start_broker serve --dev --dev-dir "$WORK/template" --dev-addr 127.0.0.1:0
stop_broker
(
    umask 077
    "$BROKER" dev token --dir "$WORK/template" --ttl 7200 >"$WORK/subject.jwt"
)

echo "== probe: the ON config shape engages the limiter (rate_limit = \"1/m\")"
make_run_dir "$WORK/probe" PROBE
LOG="$WORK/probe"
start_broker serve --config "$WORK/probe/broker.toml"
token_status() {
    curl -sS -o /dev/null -D "$WORK/probe.headers" -w '%{http_code}' "$URL/oauth2/token" \
        -d grant_type=urn:ietf:params:oauth:grant-type:token-exchange \
        -d subject_token_type=urn:ietf:params:oauth:token-type:jwt \
        --data-urlencode "subject_token=$(cat "$WORK/subject.jwt")" -d task=demo
}
first=$(token_status)
second=$(token_status)
retry=$(awk 'tolower($1) == "retry-after:" {print $2}' "$WORK/probe.headers" | tr -d '\r')
stop_broker
echo "probe:   first request $first, second $second (Retry-After: ${retry:-none})"
if [[ "$first" != 200 || "$second" != 429 ]]; then
    echo "the rate-limit config was not applied as expected" >&2
    exit 1
fi

RESULTS="$WORK/results.jsonl"
# One measured run of $1 (OFF/ON) in round $2; appends its JSON line to $RESULTS and sets
# CONTAMINATED=1 when other processes took more than OTHER_MAX cores during the window.
measure() {
    local mode=$1 round=$2 run="$WORK/run-$2-$1"
    make_run_dir "$run" "$mode"
    LOG="$run"
    start_broker serve --config "$run/broker.toml"
    wait_idle
    local load_before load_after verify
    load_before=$(loadavg)
    CMD=("${PRIO[@]}" "$LOADGEN" --url "$URL" --connections "$CONNECTIONS" --duration "$DURATION"
        --warmup "$WARMUP" --subject-token-file "$WORK/subject.jwt" --task demo
        --pid "$BROKER_PID" --json-out "$run.json")
    echo "== round $round $mode: ${CMD[*]#"$ROOT/"}"
    "${CMD[@]}" | grep -E '^(issuances|latency|broker|machine|WARNING|ALARM)' || true
    load_after=$(loadavg)
    stop_broker
    verify=$("$BROKER" audit verify "$run/audit" --key-dir "$run/keys" 2>&1 | tail -n1)
    jq -c --arg mode "$mode" --arg round "$round" --arg lb "$load_before" --arg la "$load_after" \
        --arg verify "$verify" --argjson max "$OTHER_MAX" '{
        round: ($round | tonumber), mode: $mode,
        issuances_per_sec, p50_ms: .latency_ms.p50, p99_ms: .latency_ms.p99,
        broker_cpu_us_per_issuance: .broker.cpu_us_per_issuance,
        other_cores: .machine_cores.other_processes,
        contaminated: ((.machine_cores.other_processes // 0) > $max),
        non_ok_rate: .responses.non_ok_rate,
        by_status: .responses.by_status, alarms, load_before: $lb, load_after: $la,
        audit_verify: $verify }' "$run.json" | tee -a "$RESULTS"
    CONTAMINATED=$(tail -n1 "$RESULTS" | jq -r 'if .contaminated then 1 else 0 end')
    rm -rf "$run" "$run".*
}

for round in $(seq "$ROUNDS"); do
    modes="OFF ON"
    if [[ "$ORDER" == abba ]] && ((round % 2 == 0)); then
        modes="ON OFF"
    fi
    for mode in $modes; do
        for attempt in $(seq 0 "$RETRIES"); do
            measure "$mode" "$round"
            [[ "$CONTAMINATED" == 0 ]] && break
            echo "(other processes took CPU during that window: not counted$( ((attempt < RETRIES)) && echo '; again'))"
        done
    done
done

echo "== summary (median of the clean runs, order $ORDER; runs where other processes used more than $OTHER_MAX cores are left out)"
jq -s -r '
    def median: sort | if length == 0 then null elif length % 2 == 1 then .[length / 2 | floor] else (.[length / 2 - 1] + .[length / 2]) / 2 end;
    def r1: if . == null then "n/a" else . * 10 | round / 10 end;
    def r3: if . == null then "n/a" else . * 1000 | round / 1000 end;
    [.[] | select(.contaminated | not)] as $clean |
    def m(mode; f): [$clean[] | select(.mode == mode) | f] | median;
    def n(mode): [$clean[] | select(.mode == mode)] | length;
    (m("OFF"; .issuances_per_sec)) as $off | (m("ON"; .issuances_per_sec)) as $on |
    (m("OFF"; .broker_cpu_us_per_issuance)) as $coff | (m("ON"; .broker_cpu_us_per_issuance)) as $con |
    "OFF: \($off | r1) issuances/s, p99 \(m("OFF"; .p99_ms) | r3) ms, broker CPU \($coff | r1) us/issuance (\(n("OFF")) clean runs)",
    "ON:  \($on | r1) issuances/s, p99 \(m("ON"; .p99_ms) | r3) ms, broker CPU \($con | r1) us/issuance (\(n("ON")) clean runs)",
    (if $off and $on then "ON/OFF throughput ratio: \($on / $off * 1000 | round / 1000) (\((1 - $on / $off) * 100 | fabs | . * 10 | round / 10)% \(if $on <= $off then "lower" else "higher" end) with monitoring and rate limits on; target: at most 10% lower)" else "ON/OFF throughput ratio: n/a" end),
    (if $coff and $con then "ON/OFF broker CPU per issuance: \($con / $coff * 1000 | round / 1000)" else empty end),
    "clean runs (issuances/s): OFF \([$clean[] | select(.mode == "OFF") | .issuances_per_sec | floor]), ON \([$clean[] | select(.mode == "ON") | .issuances_per_sec | floor])",
    "left out (contaminated): \([.[] | select(.contaminated) | "\(.mode) \(.issuances_per_sec | floor)/s (other \(.other_cores * 100 | round / 100) cores)"])"
' "$RESULTS"
