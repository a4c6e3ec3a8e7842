#!/usr/bin/env bash
# Benchmark: a 256-token forward pass and 32-token greedy generation on the default model,
# whet beside PyTorch/transformers on the same machine in the same run. Prints each JSON line
# and the ratios (whet / PyTorch throughput: above 1 means whet is faster).
# With ROUNDS=N (default 1) whet and PyTorch run alternately N times and the ratios are taken
# between the medians, so a slow minute on a shared VM does not land on one side only.
# Usage: [ROUNDS=N] scripts/bench/forward.sh [MODEL] [--cpu]   (needs torch + transformers + gguf)
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
# The torch side: $PYTHON, else the venv of scripts/bench/setup-torch.sh, else python3.
[ -n "${PYTHON:-}" ] || { [ -x .venv-bench/bin/python ] && PYTHON=.venv-bench/bin/python; } || PYTHON=python3
rounds="${ROUNDS:-1}"
[[ "$rounds" =~ ^[1-9][0-9]*$ ]] || { echo "ROUNDS must be a whole number of at least 1, not '$rounds'" >&2; exit 2; }
model="${1:-models/SmolLM2-135M-Instruct.Q4_1.gguf}"
[ -f "$model" ] || scripts/fetch-default-model.sh
cargo build --release --quiet ${CARGO_FEATURES:+--features "$CARGO_FEATURES"}
ws=() ts=()
for ((r = 1; r <= rounds; r++)); do
  w=$(./target/release/whet bench forward --model "$model" --tokens 256 --gen-tokens 32 --reps 5 ${2:-})
  t=$("$PYTHON" scripts/bench/forward_torch.py --model "$model" --tokens 256 --gen-tokens 32 --reps 5 2>/dev/null | tail -n 1)
  echo "round $r whet:    $w"
  echo "round $r pytorch: $t"
  ws+=("$w") ts+=("$t")
done
python3 - "${#ws[@]}" "${ws[@]}" "${ts[@]}" <<'PY'
import json, statistics, sys
n = int(sys.argv[1])
w = [json.loads(x) for x in sys.argv[2:2 + n]]
t = [json.loads(x) for x in sys.argv[2 + n:]]
med = lambda rows, key: statistics.median(r[key] for r in rows)
wf, tf = med(w, "forward_s"), med(t, "forward_s")
wg, tg = med(w, "gen_tok_per_s"), med(t, "gen_tok_per_s")
each = lambda key, inv: " / ".join(f"{(b[key] / a[key]) if inv else (a[key] / b[key]):.2f}" for a, b in zip(w, t))
print(f"forward 256 tok: whet {wf*1e3:.1f} ms, pytorch {tf*1e3:.1f} ms, "
      f"ratio (whet/pytorch throughput) {tf/wf:.3f}" + (f"  (rounds: {each('forward_s', True)})" if n > 1 else ""))
print(f"greedy gen {w[0]['gen_tokens']} tok: whet {wg:.1f} tok/s, pytorch {tg:.1f} tok/s, "
      f"ratio {wg/tg:.3f}" + (f"  (rounds: {each('gen_tok_per_s', False)})" if n > 1 else ""))
PY
