#!/usr/bin/env bash
# meson's custom target: cargo builds the plugin in meson's build dir and the
# result is copied to the output meson expects.
set -euo pipefail
src=$1 target_dir=$2 output=$3
cargo build --locked --release --lib --manifest-path "$src/Cargo.toml" --target-dir "$target_dir"
cp "$target_dir/release/libgstcpuguard.so" "$output"
