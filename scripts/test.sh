#!/usr/bin/env bash
# Runs every check and test of cpuguard: formatting, clippy, unit and
# integration tests (Harness, real encodes, gst-launch-1.0, real cgroup
# quotas as root), then the timing-sensitive tests again on one CPU.
#
# A test that cannot run on this machine (no root, no cgroup v1) says why and
# is counted as skipped in the last line; with CI set (or CPUGUARD_NO_SKIP),
# such a test fails instead. Arguments go to the first `cargo test` (a
# filter, for example).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"

cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings

mkdir -p target
skips=target/cpuguard-skips.txt
log=target/cpuguard-test-log.txt
rm -f "$skips" "$log"
status=0
cargo test --locked --all-targets --no-fail-fast -- --test-threads=2 "$@" 2>&1 | tee -a "$log" || status=1

# The tests whose outcome depends on timing (samplers, drains, signals,
# several pipelines or processes at once), on one CPU: what a small
# container gives, and where a race shows first.
one_cpu=(coordinator element sampler pipelines supervisor faults multi observability)
if [ $# -eq 0 ]; then
  echo "== The timing-sensitive tests on one CPU (taskset -c 0): ${one_cpu[*]}" >&2
  taskset -c 0 cargo test --locked --no-fail-fast $(printf -- '--test %s ' "${one_cpu[@]}") \
    -- --test-threads=2 2>&1 | tee -a "$log" || status=1
fi

# Real cgroup v2 in a VM (scripts/vm.sh) and a real container runtime: each
# takes both cores, so they run alone, one test at a time, after the rest.
if [ $# -eq 0 ]; then
  for t in vm container; do
    echo "== The $t tests, alone (--ignored in the parallel pass)" >&2
    start=$SECONDS
    cargo test --locked --no-fail-fast --test "$t" -- --ignored --test-threads=1 2>&1 | tee -a "$log" || status=1
    echo "== The $t tests took $((SECONDS - start)) s" >&2
  done
fi

# cargo's own counts, summed over every test binary of both runs.
count() { grep '^test result:' "$log" | grep -o "[0-9]* $1" | awk '{s+=$1} END {print s+0}'; }
passed=$(count passed)
failed=$(count failed)
skipped=0
if [ -f "$skips" ]; then
  skipped=$(wc -l <"$skips")
  echo "Skipped (cannot run on this machine):" >&2
  sed 's/^/  /' "$skips" >&2
fi
echo "tests: $passed passed, $failed failed, $skipped skipped"
exit "$status"
