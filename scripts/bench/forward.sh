#!/usr/bin/env bash
# Benchmark: a 256-token forward pass and 32-token greedy generation on the default model,
# whet beside PyTorch/transformers on the same machine in the same run. Prints both JSON lines
# and the ratios (whet / PyTorch throughput: above 1 means whet is faster).
# Usage: scripts/bench/forward.sh [MODEL] [--cpu]   (needs torch + transformers + gguf)
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
# The torch side: $PYTHON, else the venv of scripts/bench/setup-torch.sh, else python3.
[ -n "${PYTHON:-}" ] || { [ -x .venv-bench/bin/python ] && PYTHON=.venv-bench/bin/python; } || PYTHON=python3
model="${1:-models/SmolLM2-135M-Instruct.Q4_1.gguf}"
[ -f "$model" ] || scripts/fetch-default-model.sh
cargo build --release --quiet ${CARGO_FEATURES:+--features "$CARGO_FEATURES"}
whet=$(./target/release/whet bench forward --model "$model" --tokens 256 --gen-tokens 32 --reps 5 ${2:-})
torch=$("${PYTHON:-python3}" scripts/bench/forward_torch.py --model "$model" --tokens 256 --gen-tokens 32 --reps 5 2>/dev/null | tail -n 1)
echo "whet:    $whet"
echo "pytorch: $torch"
python3 - "$whet" "$torch" <<'PY'
import json, sys
w, t = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"forward 256 tok: whet {w['forward_s']*1e3:.1f} ms, pytorch {t['forward_s']*1e3:.1f} ms, "
      f"ratio (whet/pytorch throughput) {t['forward_s']/w['forward_s']:.3f}")
print(f"greedy gen {w['gen_tokens']} tok: whet {w['gen_tok_per_s']:.1f} tok/s, pytorch {t['gen_tok_per_s']:.1f} tok/s, "
      f"ratio {w['gen_tok_per_s']/t['gen_tok_per_s']:.3f}")
PY
