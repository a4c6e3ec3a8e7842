#!/usr/bin/env bash
# Build `whet --features cuda` from this working tree on a machine with no GPU and no CUDA
# toolkit (x86_64 Debian/Ubuntu with Rust, Python 3 + pip and a route to PyPI). The binary is
# for GPU boxes whose driver speaks CUDA 13.0 (>= 580), e.g. H100/H200.
#
#   usage:  scripts/build-cuda.sh [extra cargo build args...]
#   env:    CUDA_COMPUTE_CAP  the GPU generation to compile for; 90 (H100/H200) unless set.
#                             Not detected: the build machine has no GPU to ask.
#           TOOLROOT          where the pip CUDA toolchain and the link dir go
#                             (default ~/.cache/whet-cuda13; reused by later builds)
#           JOBS              cargo -j (default 2)
#           TESTS=1           also run `cargo test` on the CUDA build against a no-GPU stub
#   result: target/cuda/release/whet; whet's kernels assembled for sm_$CUDA_COMPUTE_CAP by ptxas;
#           the libraries the binary needs at run time (readelf); and a smoke run of the
#           binary here against a libcuda stub that sees no GPU (the CPU path, the fallback
#           of the default device, the error for --device cuda).
#
# Why each step:
#  * candle-kernels runs nvcc at build time (PTX for its kernels, and a static library of
#    sm_90a code that links against libcudart), so nvcc must exist here: it comes from NVIDIA's
#    PyPI wheels, pinned to 13.0.x. Its PTX is ISA 9.0, which a CUDA 13.0 driver can JIT;
#    PTX from nvcc 13.1+ fails to load there (CUDA_ERROR_UNSUPPORTED_PTX_VERSION), and cudarc
#    refuses toolkits newer than it knows.
#  * candle-core turns on cudarc's `dynamic-linking`, so the final link needs libcuda.so,
#    libcublas.so, libcublasLt.so, libcurand.so and libnvrtc.so. The wheels ship all but
#    libcuda, a *driver* library: we generate a link-time stub with every cu* symbol cudarc
#    declares and libcuda.so.1 as its SONAME, so the box's real driver is loaded at run time.
#  * A separate target dir (target/cuda): a CPU build and a CUDA build of the same tree do not
#    evict each other's artifacts.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
TOOLROOT=${TOOLROOT:-$HOME/.cache/whet-cuda13}
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target/cuda}

# 0. a host compiler for nvcc (nvcc 13.0 accepts g++ up to 15) and for the libcuda stub.
command -v g++ >/dev/null || { apt-get update -q && apt-get install -y -q g++; }

# 1. the CUDA 13.0 toolchain and libraries, from PyPI (about 1.2 GB, all in nvidia/cu13/).
[ -x "$TOOLROOT/venv/bin/python" ] || python3 -m venv "$TOOLROOT/venv"
"$TOOLROOT/venv/bin/pip" install -q \
  nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 \
  nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 nvidia-cuda-nvrtc==13.0.88 \
  nvidia-cublas==13.0.2.14 nvidia-curand==10.4.0.35
CU=$("$TOOLROOT/venv/bin/python" -c 'import os, nvidia; print(os.path.join(list(nvidia.__path__)[0], "cu13"))')
"$CU/bin/nvcc" --version | tail -2

# 2. the link directory: unversioned .so names for the wheels' libraries, plus the stub.
cd "$root"
cargo fetch -q
cudarc_src=$(cargo metadata -q --format-version 1 --features cuda | python3 -c '
import json, os, sys
m = json.load(sys.stdin)
p = [p for p in m["packages"] if p["name"] == "cudarc"]
print(os.path.dirname(p[0]["manifest_path"]) if p else "")')
[ -n "$cudarc_src" ] || { echo "build-cuda.sh: cudarc is not in the dependency graph with --features cuda" >&2; exit 1; }
link=$TOOLROOT/link/lib
mkdir -p "$link"
grep -ohE '^pub unsafe fn cu[A-Za-z0-9_]+' "$cudarc_src/src/driver/sys/mod.rs" \
  | awk '{print "void "$4"(void){}"}' | sort -u >"$TOOLROOT/link/cuda_stub.c"
gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$link/libcuda.so" "$TOOLROOT/link/cuda_stub.c"
for n in cudart:libcudart.so.13 cublas:libcublas.so.13 cublasLt:libcublasLt.so.13 \
  nvrtc:libnvrtc.so.13 curand:libcurand.so.10; do
  ln -sf "$CU/lib/${n#*:}" "$link/lib${n%%:*}.so"
done

# 3. build. cudaforge finds nvcc on PATH (and its headers at <nvcc>/../include); cudarc
#    searches $CUDA_HOME/lib for the libraries to link.
export PATH=$CU/bin:$PATH
export CUDA_HOME=$TOOLROOT/link
export CUDARC_CUDA_VERSION=13000
cargo build --release --features cuda -j"${JOBS:-2}" "$@"

# 4. whet's own kernels assemble for the target GPU: the driver JITs their PTX when the module is
#    first loaded, so a kernel that ptxas rejects would fail only there, on the GPU box. ptxas
#    here does that step ahead of time (and prints registers, spills and shared memory).
ptx=$(ls -t "$CARGO_TARGET_DIR"/release/build/whet-*/out/fused.ptx 2>/dev/null | head -1)
[ -n "$ptx" ] || { echo "build-cuda.sh: no fused.ptx under $CARGO_TARGET_DIR/release/build" >&2; exit 1; }
if ! info=$("$CU/bin/ptxas" -arch="sm_$CUDA_COMPUTE_CAP" -O3 -v -o /dev/null "$ptx" 2>&1); then
  echo "$info" >&2
  echo "build-cuda.sh: ptxas rejected $ptx for sm_$CUDA_COMPUTE_CAP" >&2
  exit 1
fi
awk -v cap="$CUDA_COMPUTE_CAP" '/entry function/ {f = $(NF - 2); gsub(/\047/, "", f)}
  /Used/ {n++; sub(/^ptxas info *: /, ""); print "   " f ": " $0}
  /spill stores/ && !/ 0 bytes spill stores/ {s++; print "   spills: " $0}
  END {print "== " n " kernels assemble for sm_" cap (s ? ", " s " with spills" : ", no spills")}' <<<"$info"

# 5. what the binary needs at run time.
bin=$CARGO_TARGET_DIR/release/whet
echo "== $bin ($(du -h "$bin" | cut -f1))"
readelf -d "$bin" | grep NEEDED

# 6. the binary starts and runs here, on a box whose "driver" sees no GPU: a second libcuda stub
#    whose every call answers CUDA_ERROR_NO_DEVICE (100), with the wheels' libraries. The CPU
#    path of the CUDA build must work, the default device must fall back to the CPU, and asking
#    for CUDA must fail with one clear line.
nogpu=$TOOLROOT/link/nogpu
mkdir -p "$nogpu"
{
  grep -vE ' (cuGetErrorString|cuGetErrorName)\(' "$TOOLROOT/link/cuda_stub.c" | sed 's/^void \(cu[A-Za-z0-9_]*\)(void){}/int \1(void){return 100;}/'
  echo 'int cuGetErrorString(int e, const char **s){*s = "no CUDA-capable device is detected (build-time stub)"; return 0;}'
  echo 'int cuGetErrorName(int e, const char **s){*s = "CUDA_ERROR_NO_DEVICE"; return 0;}'
} >"$nogpu/stub.c"
gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$nogpu/libcuda.so.1" "$nogpu/stub.c"
smoke() { LD_LIBRARY_PATH="$nogpu:$CU/lib" RUST_BACKTRACE=0 "$bin" "$@"; }
tiny=(--json --model tests/fixtures/tiny-llama-gqa --text "The quick brown fox jumps over the dog.")
smoke --version | grep -q "CPU and CUDA" || { echo "build-cuda.sh: $bin --version does not say CUDA" >&2; exit 1; }
cpu=$(smoke score "${tiny[@]}" --device cpu) || { echo "build-cuda.sh: the CUDA build failed on the CPU" >&2; exit 1; }
default=$(smoke score "${tiny[@]}") || { echo "build-cuda.sh: with no GPU, the default device did not fall back to the CPU" >&2; exit 1; }
[ "$cpu" = "$default" ] || { echo "build-cuda.sh: the default device's scores differ from --device cpu's" >&2; exit 1; }
if err=$(smoke score "${tiny[@]}" --device cuda 2>&1 >/dev/null); then
  echo "build-cuda.sh: --device cuda succeeded with no GPU" >&2
  exit 1
fi
[ "$(wc -l <<<"$err")" -eq 1 ] && grep -q "no usable GPU" <<<"$err" ||
  { echo "build-cuda.sh: --device cuda with no GPU should fail in one clear line, not:" >&2; echo "$err" >&2; exit 1; }
echo "== with no GPU: the CPU path runs, the default falls back to the CPU, and --device cuda says: $err"

# 7. with TESTS=1, the whole test suite on the CUDA build, against the same stub: every code path
#    that the cuda feature changes (device defaults, the fused ops' dispatch) must keep the CPU
#    results. About 10 minutes more.
if [ "${TESTS:-0}" = 1 ]; then
  LD_LIBRARY_PATH="$nogpu:$CU/lib" RUST_BACKTRACE=0 WHET_STATE_DIR="${WHET_STATE_DIR:-$(mktemp -d)}" \
    cargo test --release --features cuda -j"${JOBS:-2}"
fi

echo "On the GPU box: LD_LIBRARY_PATH=<dir with libcublas.so.13, libcublasLt.so.13, libcurand.so.10,"
echo "libcudart.so.13, libnvrtc.so.13> $bin   (a cu13 PyTorch has them under nvidia/cu13/lib)"
