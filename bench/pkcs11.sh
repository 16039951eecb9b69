#!/usr/bin/env bash
# Issuance with the signing key in a PKCS#11 token (SoftHSM2) against a file key, same run,
# same machine: the load generator of bench/issuance.sh (closed loop, keep-alive HTTP/1.1,
# durable audit log) against `broker serve --config` twice per round, identical but for
# `[signing]`: a PKCS#8 file key (ES256), or `pkcs11 = { .. }` naming an ES256 key made by
# `broker keys hsm-generate` in a throw-away SoftHSM2 token (and no key file). Each run
# starts from a fresh copy of one prepared dev folder (its own audit log and state) and
# ends with `broker audit verify`.
#
#   bench/pkcs11.sh                      # 32 connections, 2 s warm-up + 10 s measured, 2 rounds
#   ROUNDS=3 DURATION=20s bench/pkcs11.sh
#
# Environment: CONNECTIONS (32), DURATION (10s), WARMUP (2s), ROUNDS (2: file, token,
# file, token, ...), PKCS11_MODULE (/usr/lib/softhsm/libsofthsm2.so), NO_BUILD=1 (use the
# existing binaries), BIN_DIR (target/release), KEEP_TMP=1 (keep the folders and logs).
# Needs softhsm2 (`apt-get install softhsm2`).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)

CONNECTIONS=${CONNECTIONS:-32}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
ROUNDS=${ROUNDS:-2}
PKCS11_MODULE=${PKCS11_MODULE:-/usr/lib/softhsm/libsofthsm2.so}
BIN_DIR=${BIN_DIR:-$ROOT/target/release}
BROKER="$BIN_DIR/broker"
LOADGEN="$BIN_DIR/loadgen"

command -v softhsm2-util >/dev/null || { echo "softhsm2-util not found: apt-get install softhsm2" >&2; exit 1; }
[[ -e "$PKCS11_MODULE" ]] || { echo "$PKCS11_MODULE not found (PKCS11_MODULE=...)" >&2; exit 1; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/broker-bench-pkcs11.XXXXXX")
BROKER_PID=""

stop_broker() {
    [[ -n "$BROKER_PID" ]] || return 0
    kill -TERM "$BROKER_PID" 2>/dev/null || true
    for _ in $(seq 100); do
        kill -0 "$BROKER_PID" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$BROKER_PID" 2>/dev/null || true
    wait "$BROKER_PID" 2>/dev/null || true
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

if [[ "${NO_BUILD:-0}" != 1 ]]; then
    echo "== building release binaries" >&2
    cargo build --release -p broker -p broker-examples >&2
fi

echo "== machine"
echo "cpus:     $(nproc)"
echo "cpu:      $(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -n1)"
echo "kernel:   $(uname -srm)"
echo "rustc:    $(rustc --version)"
echo "softhsm2: $(softhsm2-util --version)"
echo "commit:   $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo ' (with uncommitted changes)')"
echo "date:     $(date -u +%Y-%m-%dT%H:%M:%SZ)"

# Starts `broker serve` with "$@" (output in $WORK/$LOG.*) and sets BROKER_PID and URL.
start_broker() {
    : >"$WORK/$LOG.stdout"
    : >"$WORK/$LOG.stderr"
    "$BROKER" serve "$@" >>"$WORK/$LOG.stdout" 2>>"$WORK/$LOG.stderr" &
    BROKER_PID=$!
    URL=""
    for _ in $(seq 300); do
        if ! kill -0 "$BROKER_PID" 2>/dev/null; then
            echo "broker exited during start-up:" >&2
            cat "$WORK/$LOG.stderr" >&2
            exit 1
        fi
        URL=$(sed -n 's/^listening on \(http:\/\/[^[:space:]]*\).*$/\1/p' "$WORK/$LOG.stdout" | head -n1)
        [[ -n "$URL" ]] && return 0
        sleep 0.1
    done
    echo "broker did not print 'listening on ...' within 30 s" >&2
    exit 1
}

# One prepared dev folder (file key, dev issuer, policy, broker.toml on 127.0.0.1:0).
echo "== preparing the dev folder"
LOG=prepare start_broker --dev --dev-dir "$WORK/dev" --dev-addr 127.0.0.1:0
stop_broker
rm -rf "$WORK/dev/audit" "$WORK/dev/state"
(
    umask 077
    "$BROKER" dev token --dir "$WORK/dev" --ttl 7200 >"$WORK/subject.jwt"
)

# The token: its own SoftHSM2 config and token directory, one ES256 key in it.
export SOFTHSM2_CONF="$WORK/softhsm2.conf"
mkdir -p "$WORK/tokens"
printf 'directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n' "$WORK/tokens" >"$SOFTHSM2_CONF"
PIN=$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')
(
    umask 077
    printf '%s\n' "$PIN" >"$WORK/hsm.pin"
)
softhsm2-util --init-token --free --label bench --pin "$PIN" --so-pin "$PIN" >/dev/null
unset PIN
"$BROKER" keys hsm-generate --module "$PKCS11_MODULE" --token-label bench \
    --pin-file "$WORK/hsm.pin" --label bench-es256 --alg ES256

# A fresh folder for one run: file (the dev folder as it is) or token (no key file,
# `[signing] pkcs11`).
fresh() {
    local kind=$1 dir="$WORK/run-$2"
    rm -rf "$dir"
    cp -a "$WORK/dev" "$dir"
    mkdir -p "$dir/audit"
    if [[ "$kind" == token ]]; then
        rm -f "$dir"/keys/*.pem
        sed -i "s|^algorithm = \"ES256\"\$|algorithm = \"ES256\"\npkcs11 = { module = \"$PKCS11_MODULE\", token_label = \"bench\", pin_file = \"$WORK/hsm.pin\", key_label = \"bench-es256\" }|" "$dir/broker.toml"
        grep -q '^pkcs11 = ' "$dir/broker.toml"
    fi
    echo "$dir"
}

declare -A RESULTS
for round in $(seq "$ROUNDS"); do
    for kind in file token; do
        dir=$(fresh "$kind" "$kind-$round")
        echo "== round $round: $kind key"
        grep -E '^(key_dir|algorithm|pkcs11) ' "$dir/broker.toml"
        LOG="$kind-$round" start_broker --config "$dir/broker.toml"
        echo "broker:   pid $BROKER_PID at $URL"
        CMD=("$LOADGEN" --url "$URL" --connections "$CONNECTIONS" --duration "$DURATION"
            --warmup "$WARMUP" --subject-token-file "$WORK/subject.jwt" --task demo
            --pid "$BROKER_PID")
        echo "command:  ${CMD[*]#"$ROOT/"}"
        "${CMD[@]}" | tee "$WORK/$kind-$round.report"
        stop_broker
        "$BROKER" audit verify "$dir/audit" --config "$dir/broker.toml"
        if grep -q -E ' (ERROR|WARN) ' "$WORK/$kind-$round.stderr"; then
            echo "broker warnings/errors:"
            grep -E ' (ERROR|WARN) ' "$WORK/$kind-$round.stderr" | head -n 5
        fi
        RESULTS[$kind-$round]=$(awk '/^issuances\/s/ {print $2}' "$WORK/$kind-$round.report")
    done
done

echo "== summary (issuances/s, ES256, $CONNECTIONS connections, $WARMUP warm-up + $DURATION)"
for round in $(seq "$ROUNDS"); do
    echo "round $round: file key ${RESULTS[file-$round]}, SoftHSM2 key ${RESULTS[token-$round]}"
done
