#!/usr/bin/env bash
# Issuance benchmark: POST /oauth2/token against `broker serve --dev` over loopback, with the
# durable (group-committed fdatasync) audit log on, then verify the audit log of the run.
#
#   bench/issuance.sh                         # 32 connections, 2 s warm-up + 10 s measured
#   CONNECTIONS=64 DURATION=30s bench/issuance.sh
#   JSON_OUT=/tmp/r.json bench/issuance.sh    # also keep the machine-readable report
#   bench/issuance.sh --threads 2             # extra arguments go to the load generator
#
# Environment: CONNECTIONS (32), DURATION (10s), WARMUP (2s), TASK (demo),
# TOKENS (1: every request presents the same workload JWT, as a workload re-using its
#   projected token does, so the broker's verified-JWT cache answers; N > 1: N distinct JWTs
#   used in turn), IDLE_WAIT (60: seconds to wait for the machine to go quiet first; 0: don't),
# NICE (unset; e.g. -20 runs the broker and the generator at that nice level, so that
#   background jobs on a shared machine take CPU from them as little as possible),
# JSON_OUT (unset), KEEP_TMP=1 (keep the dev directory and broker logs for inspection),
# NO_BUILD=1 (use the existing binaries), BIN_DIR (target/release).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)

CONNECTIONS=${CONNECTIONS:-32}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
TASK=${TASK:-demo}
TOKENS=${TOKENS:-1}
IDLE_WAIT=${IDLE_WAIT:-60}
PRIO=()
if [[ -n "${NICE:-}" ]]; then
    PRIO=(nice -n "$NICE")
fi

# BIN_DIR: where the broker and loadgen binaries are (default target/release), e.g. for an
# A/B run of two builds with NO_BUILD=1.
BIN_DIR=${BIN_DIR:-$ROOT/target/release}
BROKER="$BIN_DIR/broker"
LOADGEN="$BIN_DIR/loadgen"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/broker-bench.XXXXXX")
TMP="$WORK/dev"
BROKER_PID=""

cleanup() {
    local rc=$?
    if [[ -n "$BROKER_PID" ]] && kill -0 "$BROKER_PID" 2>/dev/null; then
        kill -TERM "$BROKER_PID" 2>/dev/null || true
        for _ in $(seq 50); do
            kill -0 "$BROKER_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$BROKER_PID" 2>/dev/null || true
    fi
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

if [[ "${NO_BUILD:-0}" != 1 ]]; then
    echo "== building release binaries" >&2
    cargo build --release -p broker -p broker-examples >&2
fi

echo "== machine"
echo "cpus:    $(nproc)"
echo "cpu:     $(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -n1)"
echo "kernel:  $(uname -srm)"
echo "rustc:   $(rustc --version)"
echo "commit:  $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo ' (with uncommitted changes)')"
echo "date:    $(date -u +%Y-%m-%dT%H:%M:%SZ)"
echo "tmp fs:  $(df -T "$WORK" | awk 'NR==2 {print $2 " on " $1}')"

echo "== starting broker (serve --dev, durable audit log in $TMP/audit)"
# The files exist before the broker starts: the background redirection may happen after
# the first look below, and `sed` on a missing file would end the script (set -e).
: >"$WORK/broker.stdout"
: >"$WORK/broker.stderr"
"${PRIO[@]}" "$BROKER" serve --dev --dev-dir "$TMP" --dev-addr 127.0.0.1:0 \
    >>"$WORK/broker.stdout" 2>>"$WORK/broker.stderr" &
BROKER_PID=$!

URL=""
for _ in $(seq 300); do
    if ! kill -0 "$BROKER_PID" 2>/dev/null; then
        echo "broker exited during start-up:" >&2
        cat "$WORK/broker.stderr" >&2
        exit 1
    fi
    URL=$(sed -n 's/^listening on \(http:\/\/[^[:space:]]*\).*$/\1/p' "$WORK/broker.stdout" | head -n1)
    [[ -n "$URL" ]] && break
    sleep 0.1
done
if [[ -z "$URL" ]]; then
    echo "broker did not print 'listening on ...' within 30 s" >&2
    cat "$WORK/broker.stderr" >&2
    exit 1
fi
echo "broker:  pid $BROKER_PID at $URL"

# The workload JWTs go to a file only (never to the terminal). Distinct lifetimes make
# distinct tokens.
(
    umask 077
    for i in $(seq "$TOKENS"); do
        "$BROKER" dev token --dir "$TMP" --ttl $((3600 + i))
    done >"$WORK/subject.jwt"
)

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
if [[ "$IDLE_WAIT" -gt 0 ]]; then
    waited=0
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
fi

CMD=("${PRIO[@]}" "$LOADGEN" --url "$URL" --connections "$CONNECTIONS" --duration "$DURATION"
    --warmup "$WARMUP" --subject-token-file "$WORK/subject.jwt" --task "$TASK"
    --pid "$BROKER_PID")
[[ -n "${JSON_OUT:-}" ]] && CMD+=(--json-out "$JSON_OUT")
CMD+=("$@")

echo "== load"
echo "script:  CONNECTIONS=$CONNECTIONS DURATION=$DURATION WARMUP=$WARMUP TOKENS=$TOKENS${NICE:+ NICE=$NICE} bench/issuance.sh $*"
echo "command: ${CMD[*]#"$ROOT/"}"
set +e
"${CMD[@]}"
LOADGEN_RC=$?
set -e

echo "== audit group commit (from /metrics, whole run)"
if command -v curl >/dev/null; then
    curl -s "$URL/metrics" | awk '
        /^broker_audit_batches_total /        { b = $2 }
        /^broker_audit_records_total /        { r = $2 }
        /^broker_audit_commit_seconds_total / { c = $2 }
        /^broker_audit_log_sync_seconds_total / { l = $2 }
        /^broker_audit_head_seconds_total /   { h = $2 }
        /^broker_audit_queue_seconds_total /  { q = $2 }
        /^broker_audit_appends_total /        { n = $2 }
        /^broker_audit_append_seconds_total / { a = $2 }
        END {
            if (b > 0) printf "batches: %d, %.1f records each; per batch: commit %.0f µs, log fdatasync %.0f µs, anchor %.0f µs (overlapping)\n", b, r / b, 1e6 * c / b, 1e6 * l / b, 1e6 * h / b
            if (n > 0 && r > 0) printf "per record: %.0f µs queued before its batch, answered %.0f µs after queueing (queue + commit + the caller scheduled again)\n", 1e6 * q / r, 1e6 * a / n
        }'
else
    echo "(curl not installed)"
fi

echo "== stopping broker (SIGTERM)"
kill -TERM "$BROKER_PID"
STOPPED=0
for _ in $(seq 100); do
    if ! kill -0 "$BROKER_PID" 2>/dev/null; then
        STOPPED=1
        break
    fi
    sleep 0.1
done
if [[ "$STOPPED" != 1 ]]; then
    echo "broker did not stop within 10 s of SIGTERM; killing it" >&2
    kill -KILL "$BROKER_PID" 2>/dev/null || true
fi
wait "$BROKER_PID" 2>/dev/null || true
BROKER_PID=""

echo "== audit log of the whole run"
du -sh "$TMP/audit" | awk '{print "size:    " $1}'
"$BROKER" audit verify "$TMP/audit" --key-dir "$TMP/keys"
VERIFY_RC=$?

if [[ -s "$WORK/broker.stderr" ]]; then
    n=$(grep -c -E ' (ERROR|WARN) ' "$WORK/broker.stderr" || true)
    if [[ "$n" != 0 ]]; then
        echo "== broker logged $n warnings/errors; first lines:"
        grep -E ' (ERROR|WARN) ' "$WORK/broker.stderr" | head -n 5
    fi
fi

if [[ "$LOADGEN_RC" != 0 ]]; then
    echo "load generator failed (exit $LOADGEN_RC)" >&2
    exit "$LOADGEN_RC"
fi
exit "$VERIFY_RC"
