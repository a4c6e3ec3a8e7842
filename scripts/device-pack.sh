#!/usr/bin/env bash
# Packs the CUDA binary for scripts/device-check.sh: stripped and xz-compressed into
# target/device/whet.xz, which must fit what the device tool carries (64 MiB in all).
#   usage: scripts/device-pack.sh [BINARY]   (default target/cuda/release/whet, from
#          scripts/build-cuda.sh)
# Then, on the GPU box: bash scripts/device-check.sh   (carry target/device)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="${1:-$root/target/cuda/release/whet}"
limit_mib=${LIMIT_MIB:-60}
[ -x "$bin" ] || { echo "no binary at $bin: run scripts/build-cuda.sh first" >&2; exit 1; }
mkdir -p "$root/target/device"
strip -o "$root/target/device/whet" "$bin"
xz -T0 -9 -c "$root/target/device/whet" >"$root/target/device/whet.xz"
rm "$root/target/device/whet"
size=$(stat -c %s "$root/target/device/whet.xz")
echo "target/device/whet.xz: $((size / 1024 / 1024)) MiB (binary $(du -h "$bin" | cut -f1) unstripped)"
if [ "$size" -gt $((limit_mib * 1024 * 1024)) ]; then
  echo "device-pack.sh: $((size / 1024 / 1024)) MiB is over the $limit_mib MiB the device tool can carry" >&2
  exit 1
fi
