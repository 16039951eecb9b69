#!/usr/bin/env bash
# Instructions per issuance (issue 13 A/B): the broker under valgrind's callgrind, the same
# RFC 8693 exchange as bench/peer.sh (bench/peer/broker.lua, one dev workload JWT), counted
# only over a measured window after a warm-up. Instruction counts do not move with this
# VM's fast and slow phases or a neighbour's steal time, so two builds can be compared to
# a percent where wall-clock CPU per request swings by 10-30 % run to run. They do not see
# cache misses or atomics bouncing between cores (those show in bench/peer.sh only).
#
#   bench/instructions.sh                         # target/release/broker
#   BIN_DIR=/tmp/bin-a bench/instructions.sh      # another build
#
# Environment: BIN_DIR (target/release), WARMUP (5s), DURATION (20s), CONNECTIONS (4),
# TASK (demo), KEEP_TMP=1. Needs valgrind, wrk and curl (apt-get install -y valgrind wrk curl).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)
BIN_DIR=${BIN_DIR:-$ROOT/target/release}
BROKER="$BIN_DIR/broker"
WARMUP=${WARMUP:-5s}
DURATION=${DURATION:-20s}
CONNECTIONS=${CONNECTIONS:-4}
TASK=${TASK:-demo}

for tool in valgrind callgrind_control wrk curl; do
    command -v "$tool" >/dev/null || {
        echo "instructions.sh: $tool is not installed (apt-get install -y valgrind wrk curl)" >&2
        exit 1
    }
done
[[ -x "$BROKER" ]] || {
    echo "instructions.sh: no broker binary at $BROKER (cargo build --release -p broker)" >&2
    exit 1
}

WORK=$(mktemp -d)
PID=""
cleanup() {
    [[ -n "$PID" ]] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null
    [[ "${KEEP_TMP:-}" == 1 ]] && echo "kept $WORK" || rm -rf "$WORK"
}
trap cleanup EXIT

dev="$WORK/dev"
valgrind --tool=callgrind --callgrind-out-file="$WORK/callgrind.out" \
    "$BROKER" serve --dev --dev-dir "$dev" --dev-addr 127.0.0.1:0 \
    >"$WORK/stdout" 2>"$WORK/stderr" &
PID=$!
url=""
for _ in $(seq 1200); do
    kill -0 "$PID" 2>/dev/null || {
        cat "$WORK/stderr" >&2
        exit 1
    }
    url=$(sed -n 's/^listening on \(http:\/\/[^[:space:]]*\).*$/\1/p' "$WORK/stdout" | head -n1)
    [[ -n "$url" ]] && break
    sleep 0.1
done
[[ -n "$url" ]] || {
    echo "instructions.sh: the broker did not start within 120 s" >&2
    exit 1
}
(
    umask 077
    "$BROKER" dev token --dir "$dev" --ttl 3601 >"$WORK/subject.jwt"
)
export SUBJECT_TOKEN_FILE="$WORK/subject.jwt" TASK
load() {
    wrk -t1 -c"$CONNECTIONS" -d"$1" --timeout 10s -s bench/peer/broker.lua "$url" \
        | sed -n 's/^wrk-result requests=\([0-9]*\).* status=\([0-9]*\) .*/\1 \2/p'
}
read -r _ bad < <(load "$WARMUP")
[[ "$bad" == 0 ]] || {
    echo "instructions.sh: $bad refused requests in the warm-up" >&2
    exit 1
}
callgrind_control -z "$PID" >/dev/null
read -r requests bad < <(load "$DURATION")
callgrind_control -d "$PID" >/dev/null
[[ "$bad" == 0 && "$requests" -gt 0 ]] || {
    echo "instructions.sh: $bad refused of $requests requests" >&2
    exit 1
}
# The dump right after the window: the counters were zeroed at its start.
ir=$(awk '/^summary:/ {print $2}' "$WORK/callgrind.out.1")
echo "build:        $BROKER"
echo "requests:     $requests (wrk -t1 -c$CONNECTIONS -d$DURATION under callgrind)"
echo "instructions: $ir"
awk -v ir="$ir" -v n="$requests" 'BEGIN { printf "per issuance: %.0f instructions\n", ir / n }'
