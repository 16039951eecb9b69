#!/usr/bin/env bash
# Issue 19 soak: `broker serve --dev` under a steady closed-loop load (loadgen, 2
# keep-alive connections) for MINUTES (default 10), one 60-s window at a time; after each
# window, the broker's RSS (VmRSS) and open file descriptors. Flat figures = no leak.
# Usage: bench/soak.sh [MINUTES]   (NO_BUILD=1 to use the binaries in target/release)
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES="${1:-10}"
ROOT=$PWD
BROKER="$ROOT/target/release/broker"
LOADGEN="$ROOT/target/release/loadgen"
WORK=$(mktemp -d)
BROKER_PID=""
cleanup() {
    [[ -n "$BROKER_PID" ]] && kill -TERM "$BROKER_PID" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
if [[ "${NO_BUILD:-0}" != 1 ]]; then
    cargo build --release -p broker -p broker-examples >&2
fi
: >"$WORK/out"
"$BROKER" serve --dev --dev-dir "$WORK/dev" --dev-addr 127.0.0.1:0 >>"$WORK/out" 2>"$WORK/err" &
BROKER_PID=$!
URL=""
for _ in $(seq 300); do
    URL=$(sed -n 's/^listening on \(http:\/\/[^[:space:]]*\).*$/\1/p' "$WORK/out" | head -n1)
    [[ -n "$URL" ]] && break
    sleep 0.1
done
[[ -n "$URL" ]] || { cat "$WORK/err"; exit 1; }
(umask 077; for i in $(seq 64); do "$BROKER" dev token --dir "$WORK/dev" --ttl $((7200 + i)); done >"$WORK/subject.jwt")
rss() { awk '/^VmRSS/ {print $2}' "/proc/$BROKER_PID/status"; }
fds() { ls "/proc/$BROKER_PID/fd" | wc -l; }
echo "commit $(git rev-parse --short HEAD), $(nproc) cpus, $(date -u +%FT%TZ), $MINUTES min at 2 connections"
echo "minute issuances/s rss_kib fds"
echo "0 - $(rss) $(fds)"
for m in $(seq "$MINUTES"); do
    rate=$("$LOADGEN" --url "$URL" --connections 2 --duration 60s --warmup 0s \
        --subject-token-file "$WORK/subject.jwt" --task demo --json | jq .issuances_per_sec)
    echo "$m $rate $(rss) $(fds)"
done
echo "audit log: $(du -sh "$WORK/dev/audit" | cut -f1)"
