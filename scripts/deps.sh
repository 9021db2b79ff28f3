#!/usr/bin/env bash
# Installs what cpuguard needs to build, test and demo, if it is missing.
# Sourced or run; idempotent and quiet when everything is there.
# `scripts/deps.sh --list` prints the packages, one a line, and installs nothing
# (tests/fresh_machine.rs checks that they cover every element the demo,
# examples and tests use).
set -euo pipefail

packages=(
  pkg-config
  libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev
  gstreamer1.0-tools gstreamer1.0-plugins-base-apps
  gstreamer1.0-plugins-base gstreamer1.0-plugins-good
  gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly gstreamer1.0-libav
  gstreamer1.0-x
  meson ninja-build
  python3-gi gir1.2-gstreamer-1.0
  stress-ng
  util-linux
  # The cgroup v2 VM (scripts/vm.sh) and the container runtime tests.
  qemu-system-x86 qemu-utils linux-image-amd64 busybox-static python3-venv
  podman runc crun
)

if [ "${1:-}" = "--list" ]; then
  printf '%s\n' "${packages[@]}"
  exit 0
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "cpuguard: installing ${missing[*]}" >&2
  if [ "$(id -u)" -ne 0 ]; then
    echo "cpuguard: need root to apt-get install: ${missing[*]}" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # Bookworm's qemu-system-x86 breaks with a newer (backports) qemu-utils that
  # an image may come with: ask for bookworm's, downgrading if needed.
  for i in "${!missing[@]}"; do
    [ "${missing[$i]}" = qemu-system-x86 ] && missing+=(qemu-utils/bookworm)
  done
  apt-get install -y -qq --allow-downgrades --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null; then
  [ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
fi
command -v cargo >/dev/null || { echo "cpuguard: cargo not found (install Rust with rustup)" >&2; exit 1; }
