#!/usr/bin/env bash
# Runs every check and test of cpuguard: formatting, clippy, unit and
# integration tests (Harness, real encodes, gst-launch-1.0, a real cgroup quota when root).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"

cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings
cargo test --locked --all-targets -- --test-threads=2 "$@"
