#!/usr/bin/env bash
# Boots a throw-away VM with real cgroup v2 (every controller) and runs one
# command in it: Debian's own kernel under QEMU's software emulation (the
# paravirtual /dev/kvm of these machines cannot boot a stock kernel), the
# host's / as a read-only root, and RWDIR the only writable directory.
#   scripts/vm.sh RWDIR CMD...
# virtme-ng (`vng`) comes from PyPI into a venv of its own (never system pip);
# the apt packages come from scripts/deps.sh. About 25x slower than the host:
# size what runs inside for that.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 2 ] || { echo "usage: scripts/vm.sh RWDIR CMD..." >&2; exit 2; }
rwdir=$(realpath "$1")
shift
scripts/deps.sh

venv=${CPUGUARD_VNG_VENV:-/opt/cpuguard-vng}
if [ ! -x "$venv/bin/vng" ]; then
  echo "cpuguard: installing virtme-ng into $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q virtme-ng
fi

# linux-image-amd64 installs /boot/vmlinuz-<version>: the newest one.
kernel=$(ls /boot/vmlinuz-* 2>/dev/null | sort -V | tail -n 1)
[ -n "$kernel" ] || { echo "cpuguard: no /boot/vmlinuz-* (linux-image-amd64 missing)" >&2; exit 1; }

# vng runs CMD through a shell: quote each word.
printf -v cmd '%q ' "$@"
PATH="$venv/bin:$PATH" exec "$venv/bin/vng" --run "$kernel" --disable-kvm --force-9p --cpus 2 --memory 2G \
  --rwdir "$rwdir" --exec "$cmd" </dev/null
