#!/usr/bin/env bash
# meson's custom target: one cargo invocation builds the plugin and
# cpuguard-run in release, then both are copied where meson expects them.
set -euo pipefail
src=$1 target_dir=$2 outdir=$3
cargo build --locked --release --lib --bin cpuguard-run \
  --manifest-path "$src/Cargo.toml" --target-dir "$target_dir"
cp "$target_dir/release/libgstcpuguard.so" "$target_dir/release/cpuguard-run" "$outdir/"
