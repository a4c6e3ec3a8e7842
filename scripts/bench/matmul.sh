#!/usr/bin/env bash
# Matmul benchmark: candle's matmul (the gemm crate, whet's only matmul on the CPU) against a
# BLAS on the exact shapes of one SmolLM2-135M training step at 512 tokens; the BLAS is
# PyTorch's (MKL / oneDNN on x86), 2 threads, fp32, in the same run. Prints a Markdown table
# with the ratio (whet time / BLAS time: above 1 means the BLAS is faster).
# Usage: scripts/bench/matmul.sh [TOKENS]   (needs torch in $PYTHON or .venv-bench)
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
[ -n "${PYTHON:-}" ] || { [ -x .venv-bench/bin/python ] && PYTHON=.venv-bench/bin/python; } || PYTHON=python3
cargo build --release --quiet
# Not a pipe: both sides would run at once and share the 2 cores. whet finishes, then torch runs.
shapes="$(./target/release/whet bench matmul --cpu --tokens "${1:-512}")"
"$PYTHON" scripts/bench/matmul_torch.py <<< "$shapes"
