#!/usr/bin/env bash
# Training benchmark: tokens/s and peak memory (max RSS) of whet beside PyTorch/PEFT on the same
# machine in the same run, for issue 8's workloads: (a) pretraining a Llama of hidden 256, 4
# layers, 4 heads, 2 kv heads, intermediate 688, vocab 8192, untied, batch 8 x 256; (b) LoRA r16
# alpha 32 on all 7 linears of the default model, batch 2 x 256; (c) full fine-tuning of the
# default model, batch 2 x 256. fp32, no clipping, median tokens/s after 3 warm-up steps, peak
# RSS from /usr/bin/time. Prints a Markdown table with the ratios.
# Usage: [ROUNDS=N] [ONLY=a,b,c] scripts/bench/train.sh [STEPS]   (default 8; needs torch, transformers, peft, gguf in $PYTHON,
# default python3)
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
# The torch side: $PYTHON, else the venv of scripts/bench/setup-torch.sh, else python3.
[ -n "${PYTHON:-}" ] || { [ -x .venv-bench/bin/python ] && PYTHON=.venv-bench/bin/python; } || PYTHON=python3
rounds="${ROUNDS:-1}"
[[ "$rounds" =~ ^[1-9][0-9]*$ ]] || { echo "ROUNDS must be a whole number of at least 1, not '$rounds'" >&2; exit 2; }
[[ ",${ONLY:-a,b,c}," =~ ^(,[abc])+,$ ]] || { echo "ONLY lists workloads a, b and c, as in ONLY=a,c; not '$ONLY'" >&2; exit 2; }
steps="${1:-8}"
model="models/SmolLM2-135M-Instruct.Q4_1.gguf"
[ -f "$model" ] || scripts/fetch-default-model.sh
cargo build --release --quiet
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
python3 -c "
import random, struct
for name, vocab in (('small', 8192), ('big', 49152)):
    r = random.Random(0)
    open('$tmp/' + name + '.u16', 'wb').write(struct.pack('<200000H', *[r.randrange(vocab) for _ in range(200000)]))"

# whet: one config per workload; tokens/s is the median over the steps after 3 warm-up steps.
whet_run() { # name method seq batch steps tokens extra-toml
  local name=$1 method=$2 seq=$3 batch=$4 steps=$5 tokens=$6 extra=$7
  rm -rf "$tmp/run-$name" # a fresh run each round
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
grad_clip = 0.0
[schedule]
kind = "constant"
lr = 1e-4
[run]
out_dir = "$tmp/run-$name"
TOML
  /usr/bin/time -f "%M" -o "$tmp/$name.rss" ./target/release/whet train "$tmp/$name.toml" --cpu > /dev/null
  python3 - "$tmp/run-$name/metrics.jsonl" "$tmp/$name.rss" <<'PY'
import json, sys
rates = [json.loads(l)["tokens_per_s"] for l in open(sys.argv[1]) if '"loss"' in l][3:]
rates.sort()
print(json.dumps({"tokens_per_s": rates[len(rates) // 2], "max_rss_mib": int(open(sys.argv[2]).read().split()[-1]) / 1024}))
PY
}
torch_run() { # workload seq batch steps
  /usr/bin/time -f "%M" -o "$tmp/torch-$1.rss" "${PYTHON:-python3}" scripts/bench/train_torch.py --workload "$1" --model "$model" \
    --seq "$2" --batch "$3" --steps "$4" 2>/dev/null | tail -n 1 > "$tmp/torch-$1.json"
  python3 -c "import json; d=json.load(open('$tmp/torch-$1.json')); d['max_rss_mib']=int(open('$tmp/torch-$1.rss').read().split()[-1])/1024; print(json.dumps(d))"
}

arch='[model.arch]
hidden = 256
layers = 4
heads = 4
kv_heads = 2
intermediate = 688
max_seq = 256
vocab = 8192
tie_embeddings = false'
report() { # label whet-json torch-json
  python3 - "$1" "$2" "$3" <<'PY'
import json, sys
w, t = json.loads(sys.argv[2]), json.loads(sys.argv[3])
print(f"| {sys.argv[1]} | {w['tokens_per_s']:.0f} | {t['tokens_per_s']:.0f} | **{w['tokens_per_s'] / t['tokens_per_s']:.2f}x** | "
      f"{w['max_rss_mib']:.0f} MiB | {t['max_rss_mib']:.0f} MiB | **{w['max_rss_mib'] / t['max_rss_mib']:.2f}x** |")
PY
}
echo "| workload | whet tok/s | PyTorch tok/s | speed | whet RSS | PyTorch RSS | memory |"
echo "|---|---|---|---|---|---|---|"
base="[model]
path = \"$root/$model\""
# With ROUNDS > 1, each workload runs whet and torch alternately ROUNDS times; the table takes
# each side's median tokens/s and its largest peak RSS, and a line per round follows it.
median() { # label whet-jsons torch-jsons (one JSON per line)
  python3 - "$@" <<'PY'
import json, sys
def pick(lines):
    rs = [json.loads(l) for l in lines.split("\n") if l.strip()]
    tps = sorted(r["tokens_per_s"] for r in rs)
    return {"tokens_per_s": tps[len(tps) // 2], "max_rss_mib": max(r["max_rss_mib"] for r in rs),
            "all": [round(r["tokens_per_s"]) for r in rs]}
w, t = pick(sys.argv[2]), pick(sys.argv[3])
print(json.dumps(w)); print(json.dumps(t))
PY
}
rows=()
workload() { # label name method batch tokens extra
  case ",${ONLY:-a,b,c}," in *",${1:1:1},"*) ;; *) return 0 ;; esac
  local ws="" ts=""
  for _ in $(seq "$rounds"); do
    ws+="$(whet_run "$2" "$3" 256 "$4" "$steps" "$5" "$6")"$'\n'
    ts+="$(torch_run "$2" 256 "$4" "$steps")"$'\n'
  done
  local m; m="$(median "$1" "$ws" "$ts")"
  report "$1" "$(sed -n 1p <<< "$m")" "$(sed -n 2p <<< "$m")"
  rows+=("$1: whet $(sed -n 1p <<< "$m" | python3 -c 'import json,sys; print(json.load(sys.stdin)["all"])') tok/s, PyTorch $(sed -n 2p <<< "$m" | python3 -c 'import json,sys; print(json.load(sys.stdin)["all"])') tok/s")
}
workload "(a) pretrain h256 L4 v8192, b8x256" pretrain pretrain 8 small.u16 "$arch"
workload "(b) SmolLM2-135M LoRA r16 all-linear, b2x256" lora lora 2 big.u16 "$base"
workload "(c) SmolLM2-135M full FT, b2x256" full full 2 big.u16 "$base"
if [ "$rounds" -gt 1 ]; then
  echo
  printf -- '- %s\n' "${rows[@]}"
fi
