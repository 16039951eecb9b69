#!/usr/bin/env bash
# Replica benchmark: two real `broker` processes (release build) on one throw-away
# PostgreSQL started from the system's binaries (Debian package postgresql).
#
#   bench/replicas.sh                 # 1,000 revocations made on B, measured until A refuses
#   PROPAGATION_N=200 bench/replicas.sh
#
# Prints p50/p99/max of the delay from B acknowledging a revocation (the change is
# committed in PostgreSQL) to A's introspection answering inactive, polled every 0.5 ms.
# Figures go into BENCHMARKS.md by hand, with the machine and this command.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo build --release --locked -p broker
cargo test --release --locked -p broker-tests --test e2e replicas::bench_revocation_propagation \
  -- --ignored --nocapture --exact 2>&1 | grep -E "propagation|test result|panicked"
