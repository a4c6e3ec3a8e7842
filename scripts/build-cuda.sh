#!/usr/bin/env bash
# Build `whet --features cuda` for H100/H200 (sm_90) on a machine without a GPU or CUDA
# toolkit, with the shared recipe ../shared/tools/build-cuda.sh (pip nvcc 13.0 + link stubs).
# That recipe finds cudarc through `cargo metadata` with default features, so we build a copy
# of the committed tree whose default features include `cuda`. ~11 min on 2 cores.
# Output: target/cuda/release/whet (and the runtime libs it needs, listed at the end).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
recipe="${BUILD_CUDA:-$root/../shared/tools/build-cuda.sh}"
src="$(mktemp -d)"
trap 'rm -rf "$src"' EXIT
git -C "$root" archive HEAD | tar -x -C "$src"
sed -i 's/^default = \[\]/default = ["cuda"]/' "$src/Cargo.toml"
CARGO_TARGET_DIR="$root/target/cuda" bash "$recipe" "$src" "$@"
