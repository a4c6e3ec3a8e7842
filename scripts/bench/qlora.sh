#!/usr/bin/env bash
# QLoRA's memory benchmark (issue 9): peak RSS and tokens/s of LoRA on an f32 base beside QLoRA
# at the same batch and sequence, in one run.
#  1) the default model (SmolLM2-135M, Q4_1 GGUF), r16 alpha 32 on all 7 linears, b2 x 256:
#     LoRA (the GGUF dequantized to f32), QLoRA keep (its own Q4_1), nf4, q8_0;
#  2) a random Llama of TinyLlama-1.1B's shape (scripts/bench/make_random_llama.py), b1 x 128:
#     LoRA, QLoRA nf4, QLoRA q4k. Its QLoRA nf4 peak must be at most a third of LoRA's.
# SmolLM2's hidden 576 cannot be blocked by k-quants (256), hence q4k on the 1.1B model only.
# Median tokens/s after 3 warm-up steps; peak RSS from /usr/bin/time. Usage:
#   scripts/bench/qlora.sh [STEPS] [BIG_STEPS] [small|big|all]   (default 8, 4, all;
#   the 1.1B part needs numpy + safetensors in $PYTHON)
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
steps="${1:-8}"
big_steps="${2:-4}"
part="${3:-all}"
model="models/SmolLM2-135M-Instruct.Q4_1.gguf"
[ -f "$model" ] || scripts/fetch-default-model.sh
[ -n "${PYTHON:-}" ] || { [ -x .venv-bench/bin/python ] && PYTHON=.venv-bench/bin/python; } || PYTHON=python3
cargo build --release --quiet
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
python3 -c "
import random, struct
r = random.Random(0)
open('$tmp/big.u16', 'wb').write(struct.pack('<100000H', *[r.randrange(49152) for _ in range(100000)]))
open('$tmp/small.u16', 'wb').write(struct.pack('<100000H', *[r.randrange(320) for _ in range(100000)]))"

run() { # name model method quant seq batch steps tokens
  local name=$1 path=$2 method=$3 quant=$4 seq=$5 batch=$6 steps=$7 tokens=$8
  local q=""
  [ "$quant" = "-" ] || q="quant = \"$quant\""
  cat > "$tmp/$name.toml" <<TOML
[model]
path = "$path"
[method]
kind = "$method"
$q
r = 16
alpha = 32
[data]
train = "$tmp/$tokens"
format = "tokens"
seq_len = $seq
shuffle = false
[optim]
batch_size = $batch
max_steps = $steps
grad_clip = 0.0
[schedule]
kind = "constant"
lr = 1e-4
[run]
out_dir = "$tmp/run-$name"
save_every = 0
TOML
  /usr/bin/time -f "%M" -o "$tmp/$name.rss" ./target/release/whet train "$tmp/$name.toml" --cpu > /dev/null
  python3 - "$tmp/run-$name/metrics.jsonl" "$tmp/$name.rss" "$name" <<'PY'
import json, sys
rates = sorted(json.loads(l)["tokens_per_s"] for l in open(sys.argv[1]) if '"loss"' in l)
rates = rates[3:] if len(rates) > 4 else rates[1:]
rss = int(open(sys.argv[2]).read().split()[-1]) / 1024
print(f"{sys.argv[3]} {rates[len(rates) // 2]:.1f} {rss:.0f}")
PY
}
table() { # rows: name tok/s rss; the first is the reference
  python3 -c "
import sys
rows = [l.split() for l in sys.stdin.read().strip().splitlines()]
ref = float(rows[0][2])
print('| run | tok/s | peak RSS | RSS vs ' + rows[0][0] + ' |')
print('|---|---|---|---|')
for n, t, r in rows:
    print(f'| {n} | {float(t):.0f} | {float(r):.0f} MiB | {float(r) / ref:.2f}x |')"
}

if [ "$part" != big ]; then
echo "## SmolLM2-135M (default GGUF), r16 all-linear, b2 x 256"
{
  run lora-f32 "$root/$model" lora - 256 2 "$steps" big.u16
  run qlora-keep-q4_1 "$root/$model" qlora keep 256 2 "$steps" big.u16
  run qlora-nf4 "$root/$model" qlora nf4 256 2 "$steps" big.u16
  run qlora-q8_0 "$root/$model" qlora q8_0 256 2 "$steps" big.u16
} | table
fi
[ "$part" != small ] || exit 0

big="$tmp/llama-1.1b"
"$PYTHON" scripts/bench/make_random_llama.py "$big" > /dev/null
echo
echo "## random Llama 1.1B (TinyLlama's shape, f16 safetensors), r16 all-linear, b1 x 128"
{
  run 1b-lora-f32 "$big" lora - 128 1 "$big_steps" small.u16
  run 1b-qlora-nf4 "$big" qlora nf4 128 1 "$big_steps" small.u16
  run 1b-qlora-q4k "$big" qlora q4k 128 1 "$big_steps" small.u16
} | table
