#!/usr/bin/env bash
# Regenerates the plugin docs cache (plugin/gst_plugins_cache.json, hotdoc's
# gst_plugins_cache.json format) from the element's GObject metadata.
# tests/docs_cache.rs fails when the committed file is stale.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
CPUGUARD_UPDATE_DOCS_CACHE=1 cargo test --locked --test docs_cache -- plugin_docs_cache_is_current --nocapture
