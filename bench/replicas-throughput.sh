#!/usr/bin/env bash
# Replica throughput benchmark: issuance (POST /oauth2/token, RFC 8693 exchange, durable
# audit log) with the embedded file store, with the PostgreSQL store (one replica), and
# with two replicas on one PostgreSQL, in the same run, in alternating order.
#
#   bench/replicas-throughput.sh                 # 3 rounds of FILE PG PG2, 32 connections, 10 s
#   ROUNDS=5 DURATION=20s bench/replicas-throughput.sh
#   DPOP=1 MODES="FILE PG" bench/replicas-throughput.sh   # every request with a new DPoP proof
#
# PostgreSQL is a throw-away server from the system's binaries (Debian package
# postgresql), started as the postgres user on loopback, with its defaults (fsync on);
# each run gets a fresh database. The brokers are release builds of `serve --config`
# from one `serve --dev` folder. For PG2 the load is split: two generators with half the
# connections each, one per replica, at the same time; the figure is their sum, and CPU
# per issuance is both brokers' CPU over both replicas' issuances.
#
# With DPOP=1 each request carries a new DPoP proof, which the broker checks for single
# use: in its own memory with the file store, and also in PostgreSQL (`broker_single_use`,
# one round trip per proof) with the PostgreSQL store.
#
# Environment: ROUNDS (3), MODES ("FILE PG PG2"), CONNECTIONS (32), DURATION (10s),
# WARMUP (2s), DPOP (0), NO_BUILD=1, KEEP_TMP=1. Needs jq. Figures go into BENCHMARKS.md by hand, with this command.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)

ROUNDS=${ROUNDS:-3}
CONNECTIONS=${CONNECTIONS:-32}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
MODES=${MODES:-FILE PG PG2}
DPOP_ARGS=()
[[ "${DPOP:-0}" == 1 ]] && DPOP_ARGS=(--dpop)
BROKER="$ROOT/target/release/broker"
LOADGEN="$ROOT/target/release/loadgen"
command -v jq >/dev/null || { echo "jq is needed (apt-get install -y jq)" >&2; exit 1; }
PG_BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)
[[ -x "$PG_BIN/initdb" ]] || { echo "PostgreSQL is needed (apt-get install -y postgresql)" >&2; exit 1; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/broker-replbench.XXXXXX")
chmod 755 "$WORK"
PIDS=()
PG_DATA="$WORK/pg/data"
PG_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

as_postgres() {
    if [[ $(id -u) == 0 ]]; then
        setpriv --reuid postgres --regid postgres --clear-groups "$@"
    else
        "$@"
    fi
}
stop_brokers() {
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    PIDS=()
}
cleanup() {
    local rc=$?
    stop_brokers
    as_postgres "$PG_BIN/pg_ctl" -w -m immediate -D "$PG_DATA" stop >/dev/null 2>&1 || true
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

# start_broker DIR: starts `broker serve --config DIR/broker.toml`; sets PID and URL.
start_broker() {
    local dir=$1
    : >"$dir.stdout"
    : >"$dir.stderr"
    "$BROKER" serve --config "$dir/broker.toml" >>"$dir.stdout" 2>>"$dir.stderr" &
    PID=$!
    PIDS+=("$PID")
    URL=""
    for _ in $(seq 300); do
        if ! kill -0 "$PID" 2>/dev/null; then
            echo "broker exited during start-up:" >&2
            cat "$dir.stderr" >&2
            exit 1
        fi
        URL=$(sed -n 's/^listening on \(http:\/\/[^[:space:]]*\).*$/\1/p' "$dir.stdout" | head -n1)
        [[ -n "$URL" ]] && return 0
        sleep 0.1
    done
    echo "broker did not print 'listening on ...' within 30 s" >&2
    exit 1
}

# run_dir DIR DB REPLICA: a fresh copy of the template; with DB, on PostgreSQL database DB.
run_dir() {
    rm -rf "$1"
    cp -a "$WORK/template" "$1"
    if [[ -n "$2" ]]; then
        printf '\n[store]\nkind = "postgres"\nreplica_id = "%s"\nurl = "postgres://postgres@127.0.0.1:%s/%s"\nsslmode = "disable"\n' \
            "$3" "$PG_PORT" "$2" >>"$1/broker.toml"
    fi
}

loadgen() { # URL PID CONNECTIONS JSON
    "$LOADGEN" --url "$1" --connections "$3" --duration "$DURATION" --warmup "$WARMUP" \
        --subject-token-file "$WORK/subject.jwt" --task demo --pid "$2" --json-out "$4" \
        "${DPOP_ARGS[@]}" >/dev/null
}

if [[ "${NO_BUILD:-0}" != 1 ]]; then
    echo "== building release binaries" >&2
    cargo build --release --locked -p broker -p broker-examples >&2
fi

echo "== machine"
echo "cpus:    $(nproc)"
echo "cpu:     $(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -n1)"
echo "kernel:  $(uname -srm)"
echo "rustc:   $(rustc --version)"
echo "commit:  $(git rev-parse --short HEAD)$(git diff --quiet HEAD || echo ' (with uncommitted changes)')"
echo "date:    $(date -u +%Y-%m-%dT%H:%M:%SZ)"
echo "postgres: $("$PG_BIN/postgres" --version)"
echo "dpop:    ${DPOP:-0}"

echo "== PostgreSQL on 127.0.0.1:$PG_PORT"
mkdir -p "$WORK/pg"
[[ $(id -u) == 0 ]] && chown postgres:postgres "$WORK/pg"
as_postgres "$PG_BIN/initdb" -A trust -U postgres -E UTF8 -D "$PG_DATA" >/dev/null
as_postgres "$PG_BIN/pg_ctl" -w -D "$PG_DATA" -l "$WORK/pg/server.log" \
    -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -k $WORK/pg" start >/dev/null

echo "== template dev folder"
DIR="$WORK/template"
mkdir -p "$DIR"
"$BROKER" serve --dev --dev-dir "$DIR" --dev-addr 127.0.0.1:0 >"$WORK/template.stdout" 2>&1 &
PID=$!
PIDS+=("$PID")
for _ in $(seq 300); do
    grep -q '^listening on' "$WORK/template.stdout" && break
    sleep 0.1
done
stop_brokers
(umask 077 && "$BROKER" dev token --dir "$DIR" --ttl 7200 >"$WORK/subject.jwt")

RESULTS="$WORK/results.jsonl"
: >"$RESULTS"
DB_N=0
measure() { # MODE ROUND
    local mode=$1 round=$2 run="$WORK/run"
    DB_N=$((DB_N + 1))
    local db="bench$DB_N"
    case "$mode" in
    FILE)
        run_dir "$run-a" "" ""
        ;;
    PG)
        as_postgres "$PG_BIN/createdb" -h 127.0.0.1 -p "$PG_PORT" -U postgres "$db"
        run_dir "$run-a" "$db" a
        ;;
    PG2)
        as_postgres "$PG_BIN/createdb" -h 127.0.0.1 -p "$PG_PORT" -U postgres "$db"
        run_dir "$run-a" "$db" a
        run_dir "$run-b" "$db" b
        ;;
    esac
    start_broker "$run-a"
    local url_a=$URL pid_a=$PID
    echo "== round $round $mode"
    if [[ "$mode" == PG2 ]]; then
        start_broker "$run-b"
        local url_b=$URL pid_b=$PID
        loadgen "$url_a" "$pid_a" $((CONNECTIONS / 2)) "$run-a.json" &
        local g=$!
        loadgen "$url_b" "$pid_b" $((CONNECTIONS / 2)) "$run-b.json"
        wait "$g"
    else
        loadgen "$url_a" "$pid_a" "$CONNECTIONS" "$run-a.json"
    fi
    stop_brokers
    local verify
    if [[ "$mode" == PG2 ]]; then
        verify=$("$BROKER" audit verify "$run-a/audit" "$run-b/audit" --config "$run-a/broker.toml" 2>&1 | tail -n1)
        jq -s -c --arg mode "$mode" --arg round "$round" --arg verify "$verify" '{
            round: ($round | tonumber), mode: $mode,
            issuances_per_sec: (map(.issuances_per_sec) | add),
            per_replica: map(.issuances_per_sec),
            p50_ms: (map(.latency_ms.p50) | max), p99_ms: (map(.latency_ms.p99) | max),
            broker_cpu_us_per_issuance: ((map(.broker.cpu_secs_window) | add) * 1e6 / (map(.issuances) | add)),
            broker_cores: ((map(.broker.cpu_secs_window) | add) / .[0].duration_secs),
            non_ok_rate: (map(.responses.non_ok_rate) | max), audit_verify: $verify }' \
            "$run-a.json" "$run-b.json" | tee -a "$RESULTS"
    else
        verify=$("$BROKER" audit verify "$run-a/audit" --key-dir "$run-a/keys" 2>&1 | tail -n1)
        jq -c --arg mode "$mode" --arg round "$round" --arg verify "$verify" '{
            round: ($round | tonumber), mode: $mode, issuances_per_sec,
            p50_ms: .latency_ms.p50, p99_ms: .latency_ms.p99,
            broker_cpu_us_per_issuance: .broker.cpu_us_per_issuance,
            broker_cores: (.broker.cpu_secs_window / .duration_secs),
            other_cores: .machine_cores.other_processes,
            non_ok_rate: .responses.non_ok_rate, audit_verify: $verify }' "$run-a.json" | tee -a "$RESULTS"
    fi
    rm -rf "$run"-*
}

for round in $(seq "$ROUNDS"); do
    for mode in $MODES; do
        measure "$mode" "$round"
    done
done

echo "== summary (medians over $ROUNDS rounds)"
jq -s -r '
    def median: sort | if length == 0 then null elif length % 2 == 1 then .[length / 2 | floor] else (.[length / 2 - 1] + .[length / 2]) / 2 end;
    def r1: . * 10 | round / 10;
    def m(mode; f): [.[] | select(.mode == mode) | f] | median;
    . as $all |
    (m("FILE"; .issuances_per_sec)) as $file | (m("PG"; .issuances_per_sec)) as $pg | (m("PG2"; .issuances_per_sec)) as $pg2 |
    (if $file then "FILE: \($file | r1)/s, p99 \(m("FILE"; .p99_ms) | r1) ms, \(m("FILE"; .broker_cpu_us_per_issuance) | r1) us CPU/issuance, \(m("FILE"; .broker_cores) * 100 | round / 100) cores" else empty end),
    (if $pg then "PG:   \($pg | r1)/s, p99 \(m("PG"; .p99_ms) | r1) ms, \(m("PG"; .broker_cpu_us_per_issuance) | r1) us CPU/issuance, \(m("PG"; .broker_cores) * 100 | round / 100) cores" else empty end),
    (if $pg2 then "PG2:  \($pg2 | r1)/s (two replicas together), p99 \(m("PG2"; .p99_ms) | r1) ms, \(m("PG2"; .broker_cpu_us_per_issuance) | r1) us CPU/issuance, \(m("PG2"; .broker_cores) * 100 | round / 100) cores" else empty end),
    (if $file and $pg then "PG/FILE: \($pg / $file * 1000 | round / 1000) (target: within 15%)" else empty end),
    (if $pg and $pg2 then "PG2/PG:  \($pg2 / $pg * 1000 | round / 1000) (on 2 cores shared with PostgreSQL and the generators)" else empty end),
    "all runs: \([$all[] | "\(.mode) \(.issuances_per_sec | floor)/s"])",
    "audit verify: \([$all[] | .audit_verify] | unique)"
' "$RESULTS"
