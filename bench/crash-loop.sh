#!/usr/bin/env bash
# Issue 19: SIGKILL during 16-connection issuance, restart, repeated (default 20 rounds).
# Each round: every jti a client received is in the audit log exactly once, and
# `broker audit verify` passes. Usage: bench/crash-loop.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${1:-20}"
cargo build -p broker
BROKER_CRASH_ROUNDS="$ROUNDS" cargo test -p broker-tests --test e2e -- \
  --exact concurrency::sigkill_under_load_loses_no_record_of_a_returned_token --nocapture 2>&1 |
  grep -E "crash round|test result|panicked"
