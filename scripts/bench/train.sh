#!/usr/bin/env bash
# Training benchmark: tokens/s and peak memory (max RSS) of whet beside PyTorch/PEFT on the same
# machine in the same run, for (a) pretrain-tiny's model, (b) LoRA r=16 on all linear layers of
# the default model, (c) full fine-tuning of the default model; seq 256 for (b) and (c).
# Usage: scripts/bench/train.sh [STEPS_BIG]   (needs torch, transformers, peft, gguf)
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
steps_big="${1:-4}"
model="models/SmolLM2-135M-Instruct.Q4_1.gguf"
[ -f "$model" ] || scripts/fetch-default-model.sh
cargo build --release --quiet
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
python3 -c "
import numpy as np
np.random.default_rng(0).integers(0, 512, 200000).astype(np.uint16).tofile('$tmp/small.u16')
np.random.default_rng(0).integers(0, 49152, 200000).astype(np.uint16).tofile('$tmp/big.u16')"

# whet: one config per workload; tokens/s is the median over steps after the first.
whet_run() { # name method seq batch steps tokens extra-toml
  local name=$1 method=$2 seq=$3 batch=$4 steps=$5 tokens=$6 extra=$7
  cat > "$tmp/$name.toml" <<TOML
$extra
[method]
kind = "$method"
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
[schedule]
kind = "constant"
lr = 1e-4
[run]
out_dir = "$tmp/run-$name"
TOML
  /usr/bin/time -f "%M" -o "$tmp/$name.rss" ./target/release/whet train "$tmp/$name.toml" --cpu > /dev/null
  python3 - "$tmp/run-$name/metrics.jsonl" "$tmp/$name.rss" <<'PY'
import json, sys
rates = [json.loads(l)["tokens_per_s"] for l in open(sys.argv[1]) if '"loss"' in l][1:]
rates.sort()
print(json.dumps({"tokens_per_s": rates[len(rates) // 2], "max_rss_mib": int(open(sys.argv[2]).read().split()[-1]) / 1024}))
PY
}
torch_run() { # workload seq batch steps
  /usr/bin/time -f "%M" -o "$tmp/torch-$1.rss" python3 scripts/bench/train_torch.py --workload "$1" --model "$model" \
    --seq "$2" --batch "$3" --steps "$4" 2>/dev/null | tail -n 1 > "$tmp/torch-$1.json"
  python3 -c "import json; d=json.load(open('$tmp/torch-$1.json')); d['max_rss_mib']=int(open('$tmp/torch-$1.rss').read().split()[-1])/1024; print(json.dumps(d))"
}

arch='[model.arch]
hidden = 128
layers = 4
heads = 4
kv_heads = 2
intermediate = 352
max_seq = 128
vocab = 512'
report() { # label whet-json torch-json
  python3 - "$1" "$2" "$3" <<'PY'
import json, sys
w, t = json.loads(sys.argv[2]), json.loads(sys.argv[3])
print(f"{sys.argv[1]:<28} whet {w['tokens_per_s']:8.0f} tok/s {w['max_rss_mib']:7.0f} MiB | "
      f"pytorch {t['tokens_per_s']:8.0f} tok/s {t['max_rss_mib']:7.0f} MiB | "
      f"speed ratio {w['tokens_per_s'] / t['tokens_per_s']:.3f}, memory ratio {w['max_rss_mib'] / t['max_rss_mib']:.3f}")
PY
}
w=$(whet_run pretrain pretrain 64 16 30 small.u16 "$arch"); t=$(torch_run pretrain 64 16 30)
report "(a) pretrain-tiny seq64 b16" "$w" "$t"
w=$(whet_run lora lora 256 1 "$steps_big" big.u16 "[model]
path = \"$root/$model\""); t=$(torch_run lora 256 1 "$steps_big")
report "(b) LoRA r16 all-linear s256" "$w" "$t"
w=$(whet_run full full 256 1 "$steps_big" big.u16 "[model]
path = \"$root/$model\""); t=$(torch_run full 256 1 "$steps_big")
report "(c) full FT seq256 b1" "$w" "$t"
