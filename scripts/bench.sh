#!/usr/bin/env bash
# Benchmarks cpuguard against baselines measured in the same run (identity,
# no element, gst-launch-1.0 -e, a thread that only wakes, 1 vs 4 vs 16
# workers), prints the table and writes BENCHMARKS.md at the repository root.
#
#   scripts/bench.sh            # full run, about 8 minutes on 2 cores
#   scripts/bench.sh --quick    # short runs (also CPUGUARD_BENCH_QUICK=1), about 2 minutes
#
# Installs what it needs when missing (as root): the build and test packages
# of scripts/deps.sh (GStreamer and its plugins, stress-ng). Profiling, when a
# target is missed, uses perf or valgrind; the benchmarks themselves need neither.
set -euo pipefail
cd "$(dirname "$0")/.."

for arg in "$@"; do
  case "$arg" in
    --quick) export CPUGUARD_BENCH_QUICK=1 ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "bench.sh: unknown argument: $arg (try --help)" >&2; exit 2 ;;
  esac
done

scripts/deps.sh
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"

quick=${CPUGUARD_BENCH_QUICK:-}
started=$(date +%s)

# Criterion first: the system bench puts its medians into BENCHMARKS.md.
# Quick mode keeps criterion's statistics but shortens its sampling.
criterion_args=()
if [ -n "$quick" ] && [ "$quick" != 0 ]; then
  criterion_args=(--warm-up-time 0.2 --measurement-time 0.5 --sample-size 20)
fi
echo "== micro-benchmarks (criterion)" >&2
cargo bench --locked --bench micro -- "${criterion_args[@]}" >&2

echo "== system benchmarks" >&2
cargo bench --locked --bench system

echo "bench.sh: done in $(( $(date +%s) - started )) s; results in ${CPUGUARD_BENCH_OUT:-BENCHMARKS.md}" >&2
