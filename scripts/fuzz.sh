#!/usr/bin/env bash
# Runs the cargo-fuzz targets of fuzz/ (issue 19), one at a time, each for a given time,
# at the lowest CPU priority (nice 19) so it yields to builds and other work.
#
#   scripts/fuzz.sh                 # every target, 600 s each
#   scripts/fuzz.sh jwt 60          # one target, 60 s
#   scripts/fuzz.sh all 600         # every target, 600 s each
#
# Needs a nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz --locked`).
# libFuzzer writes new inputs to the first corpus directory, so the grown corpus goes to
# fuzz/corpus-grown/<target>/ (gitignored) and the committed seeds (fuzz/corpus/<target>/)
# are only read. A crash stops that target: its input is copied to
# fuzz/regressions/<target>/ and the script goes on with the next target.
# A summary line per target (executions, exec/s, cov, ft, crashes) goes to
# fuzz/logs/summary.tsv; the full libFuzzer output to fuzz/logs/<target>-<date>.log.
set -uo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
cd "$here/fuzz"

target="${1:-all}"
seconds="${2:-600}"
toolchain="${FUZZ_TOOLCHAIN:-nightly}"

all_targets() { cargo +"$toolchain" fuzz list | grep -v '^gen-seeds$'; }

if [[ "$target" == all ]]; then
  mapfile -t targets < <(all_targets)
else
  targets=("$target")
fi

mkdir -p logs
# Build every target once (release, debug assertions, AddressSanitizer), then run the
# binaries directly: `cargo fuzz run` would rebuild whenever the broker sources change
# under a long run. FUZZ_NO_BUILD=1 reuses the last build.
if [[ -z "${FUZZ_NO_BUILD:-}" ]]; then
  nice -n 19 cargo +"$toolchain" fuzz build 2>&1 | tail -n 3
  (( PIPESTATUS[0] == 0 )) || exit 1
fi
bin_dir="target/x86_64-unknown-linux-gnu/release"
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_odr_violation=0}"

status=0
for t in "${targets[@]}"; do
  mkdir -p "corpus-grown/$t" "corpus/$t" "artifacts/$t"
  stamp="$(date -u +%Y%m%dT%H%M%SZ)"
  log="logs/$t-$stamp.log"
  echo "== $t: ${seconds}s (log $log)"
  before=$(ls "artifacts/$t" | wc -l)
  nice -n 19 "$bin_dir/$t" "corpus-grown/$t" "corpus/$t" \
    -max_total_time="$seconds" -print_final_stats=1 -timeout=20 -rss_limit_mb=2048 \
    -artifact_prefix="$PWD/artifacts/$t/" >"$log" 2>&1
  rc=$?
  after=$(ls "artifacts/$t" | wc -l)
  crashes=$((after - before))
  if (( rc != 0 )); then
    status=1
    mkdir -p "regressions/$t"
    for f in "artifacts/$t"/*; do
      [[ -f "$f" ]] && cp -n "$f" "regressions/$t/"
    done
    grep -m1 -E "panicked at|ERROR: (libFuzzer|AddressSanitizer)" "$log" || true
  fi
  # The last status line (`#N DONE cov: .. ft: .. exec/s: ..`, or the last pulse before
  # a crash) and the final stats.
  last=$(grep -E '^#[0-9]+' "$log" | tail -n 1)
  execs=$(grep -oP 'stat::number_of_executed_units:\s*\K[0-9]+' "$log" || echo "${last%%[[:space:]]*}")
  eps=$(grep -oP 'stat::average_exec_per_sec:\s*\K[0-9]+' "$log" || echo "?")
  cov=$(grep -oP 'cov: \K[0-9]+' <<<"$last" || echo "?")
  ft=$(grep -oP 'ft: \K[0-9]+' <<<"$last" || echo "?")
  corp=$(grep -oP 'corp: \K[^ ]+' <<<"$last" || echo "?")
  rss=$(grep -oP 'stat::peak_rss_mb:\s*\K[0-9]+' "$log" || echo "?")
  line="$(date -u +%F)	$t	$seconds	$execs	$eps	$cov	$ft	$corp	${rss}MB	crashes=$crashes	rc=$rc"
  echo "$line" | tee -a logs/summary.tsv
done
exit $status
