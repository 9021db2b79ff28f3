#!/usr/bin/env bash
# Hysteresis soak (not part of scripts/test.sh): load oscillating around the
# soft threshold in dry-run for CPUGUARD_SOAK_SECS seconds (default 600),
# reporting how many drains would have fired with and without `release`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
export CPUGUARD_SOAK_SECS="${CPUGUARD_SOAK_SECS:-600}"
cargo test --locked --test reliability hysteresis_soak -- --ignored --nocapture
