#!/usr/bin/env bash
# The GPU check, in one script for a GPU box that has PyTorch, transformers, PEFT and a CUDA 13
# runtime but no Rust and no network (the `device` tool's machine). It runs from a copy of this
# repository with the CUDA binary packed by scripts/device-pack.sh (target/device/whet.xz), and
# prints a Markdown report (also written to $OUT/device-check.md when $OUT is set):
#   1. logits: CUDA against CPU on the tiny fixture, and CUDA against transformers on a
#      random-weight model of SmolLM2-135M's shape (made here by scripts/device/models.py);
#   2. every fused kernel's values and gradients on the GPU, f32 and bf16 (`whet bench kernels`);
#   3. a 50-step bf16 LoRA run on the GPU;
#   4. tokens/s and peak GPU memory of LoRA and full fine-tuning at seq 1024, f32 and bf16,
#      beside PyTorch (+ PEFT; bf16 under autocast) on the same GPU in the same run, with the
#      ratios.
# Without a GPU, DEVICE=cpu WHET=target/release/whet runs the same steps on the CPU (shorter
# runs): that is how the script itself is tested.
# Exit status: 0 when every check passed, 1 otherwise; each failure is named in the report.
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
DEVICE=${DEVICE:-cuda}
PY=${PYTHON:-python3}
tmp="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$tmp"' EXIT
report="$tmp/report.md"
failed=()
say() { echo "$*" | tee -a "$report"; }
fail() { failed+=("$1"); say "**FAILED**: $1"; }

# 0. the binary and the CUDA libraries it links (libcublas, libcublasLt, libcurand, libcudart,
#    libnvrtc; all .so.13 but libcurand.so.10), from $CUDA_LIBS, the toolkit or PyTorch's wheels.
WHET=${WHET:-}
if [ -z "$WHET" ]; then
  [ -f target/device/whet.xz ] || { echo "no target/device/whet.xz: run scripts/device-pack.sh first" >&2; exit 1; }
  # xz, or Python's lzma where the box has no xz.
  { xz -dc target/device/whet.xz 2>/dev/null ||
    "$PY" -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), sys.stdout.buffer)' target/device/whet.xz; } >"$tmp/whet"
  chmod +x "$tmp/whet"
  WHET="$tmp/whet"
fi
if [ "$DEVICE" != cpu ]; then
  libs=$(
    for d in ${CUDA_LIBS:-} /usr/local/cuda/lib64 /usr/local/cuda-13*/lib64 /usr/local/cuda/targets/x86_64-linux/lib \
      $("$PY" -c 'import nvidia, os, glob; [print(d) for p in nvidia.__path__ for d in glob.glob(os.path.join(p, "*", "lib"))]' 2>/dev/null); do
      ls "$d"/libcublas.so.13 "$d"/libcublasLt.so.13 "$d"/libcurand.so.10 "$d"/libcudart.so.13 "$d"/libnvrtc.so.13 2>/dev/null | xargs -r -n1 dirname
    done | awk '!seen[$0]++' | paste -sd:
  )
  export LD_LIBRARY_PATH="${libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | sed 's/^/GPU: /' | tee -a "$report"
fi
say "# whet device check ($DEVICE), $(date -u +%FT%TZ)"
say ""
say "- binary: \`$("$WHET" --version 2>&1 | head -1)\`; LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"
missing=$(ldd "$WHET" 2>/dev/null | grep 'not found' | awk '{print $1}' | paste -sd' ')
[ -z "$missing" ] || { fail "libraries not found: $missing (set CUDA_LIBS to their folder)"; }

# 1. logits.
say ""
say "## 1. Logits"
tiny=tests/fixtures/tiny-llama-gqa
text="The quick brown fox jumps over the dog." # 40 tokens: the tiny model's context is 64
"$WHET" score --json --model "$tiny" --device cpu --text "$text" >"$tmp/tiny-cpu.json" 2>"$tmp/tiny.err" &&
  "$WHET" score --json --model "$tiny" --device "$DEVICE" --text "$text" >"$tmp/tiny-dev.json" 2>"$tmp/tiny.err"
d=$("$PY" -c "import json,sys; a,b=(json.load(open(f)) for f in sys.argv[1:]); print(max(abs(x-y) for x,y in zip(a['nll'],b['nll'])) if a['token_ids']==b['token_ids'] else 'ids differ')" "$tmp/tiny-cpu.json" "$tmp/tiny-dev.json" 2>/dev/null || echo "no result: $(tail -1 "$tmp/tiny.err")")
say "- tiny fixture, $DEVICE vs cpu: max |Δ nll| = $d"
"$PY" -c "import sys; sys.exit(0 if float(sys.argv[1]) < 1e-4 else 1)" "$d" 2>/dev/null || fail "tiny fixture logits ($d)"
smol="$tmp/smol-random"
"$PY" scripts/device/models.py make "$smol" || fail "making the SmolLM2-shaped model"
long=$(printf '%s ' $(seq 1 60))
"$WHET" score --json --model "$smol" --device "$DEVICE" --text "$text $text $long" >"$tmp/smol.json" || fail "whet score on the SmolLM2-shaped model"
tdev=$DEVICE; [ "$DEVICE" = cpu ] || tdev=cuda
r=$("$PY" scripts/device/models.py nll "$smol" "$tmp/smol.json" "$tdev" 2>/dev/null | tail -1)
say "- SmolLM2-shaped random model, whet $DEVICE vs transformers $tdev (f32): $r"
"$PY" -c "import json,sys; sys.exit(0 if json.loads(sys.argv[1])['max_abs_nll_diff'] < 1e-3 else 1)" "$r" 2>/dev/null || fail "SmolLM2-shaped logits vs transformers"

# 2. fused kernels.
say ""
say "## 2. Fused kernels (values and gradients against the composed ops in f64)"
say ""
say "| op | dtype | value err | grad err | tolerance | ok | fused ms | composed ms |"
say "|---|---|---|---|---|---|---|---|"
dtypes="f32 bf16"; [ "$DEVICE" = cpu ] && dtypes=f32
for dt in $dtypes; do
  "$WHET" bench kernels --device "$DEVICE" --dtype "$dt" >"$tmp/k-$dt.json" 2>"$tmp/k-$dt.err" || fail "kernels $dt: $(tail -1 "$tmp/k-$dt.err")"
  "$PY" -c "
import json, sys
for l in open(sys.argv[1]):
    c = json.loads(l)
    print(f\"| {c['op']} | {c['dtype']} | {c['value_err']:.1e} | {c['grad_err']:.1e} | {c['tolerance']:.0e} | {'yes' if c['ok'] else '**no**'} | {c['fused_ms']:.3f} | {c['composed_ms']:.3f} |\")" "$tmp/k-$dt.json" | tee -a "$report"
done

# 3 and 4: training runs. whet_train NAME METHOD SEQ BATCH STEPS: tokens/s (median after 3
# warm-up steps), first and last loss, and peak GPU memory sampled by nvidia-smi.
gpu_mem_sampler() { nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0 -lms 100 >"$1" 2>/dev/null & echo $!; }
peak_mib() { sort -n "$1" 2>/dev/null | tail -1; }
whet_train() { # NAME METHOD SEQ BATCH STEPS DTYPE
  local name=$1 method=$2 seq=$3 batch=$4 steps=$5 dtype=$6
  cat >"$tmp/$name.toml" <<TOML
[model]
path = "$smol"
[method]
kind = "$method"
r = 16
alpha = 32
[data]
train = "$smol/tokens.u16"
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
dtype = "$dtype"
TOML
  local sampler=""
  [ "$DEVICE" = cpu ] || sampler=$(gpu_mem_sampler "$tmp/$name.mem")
  "$WHET" train "$tmp/$name.toml" --device "$DEVICE" >"$tmp/$name.out" 2>&1 || fail "whet train $name: $(tail -2 "$tmp/$name.out" | tr '\n' ' ')"
  [ -z "$sampler" ] || kill "$sampler" 2>/dev/null
  "$PY" - "$tmp/run-$name/metrics.jsonl" "$(peak_mib "$tmp/$name.mem")" <<'PY'
import json, sys
steps = [json.loads(l) for l in open(sys.argv[1]) if '"loss"' in l]
rates = sorted(s["tokens_per_s"] for s in steps[3:]) or [s["tokens_per_s"] for s in steps]
print(json.dumps({"steps": len(steps), "first_loss": steps[0]["loss"], "last_loss": steps[-1]["loss"],
                  "tokens_per_s": rates[len(rates) // 2], "peak_mib": float(sys.argv[2] or "nan")}))
PY
}
torch_train() { # WORKLOAD SEQ BATCH STEPS DTYPE
  local sampler="" n="torch-$1-$5"
  [ "$DEVICE" = cpu ] || sampler=$(gpu_mem_sampler "$tmp/$n.mem")
  "$PY" scripts/bench/train_torch.py --workload "$1" --model "$smol" --device "$tdev" --seq "$2" --batch "$3" --steps "$4" --dtype "$5" 2>"$tmp/$n.err" | tail -1 >"$tmp/$n.json" || fail "PyTorch $1 $5: $(tail -1 "$tmp/$n.err")"
  [ -z "$sampler" ] || kill "$sampler" 2>/dev/null
  "$PY" -c "import json,sys; d=json.load(open(sys.argv[1])); d['peak_mib']=float(sys.argv[2] or 'nan'); print(json.dumps(d))" "$tmp/$n.json" "$(peak_mib "$tmp/$n.mem")"
}

say ""
say "## 3. A 50-step bf16 LoRA run"
if [ "$DEVICE" = cpu ]; then lora_steps=6 lseq=64 lbatch=2; else lora_steps=50 lseq=256 lbatch=4; fi
r=$(whet_train lora50 lora "$lseq" "$lbatch" "$lora_steps" bf16)
say "- whet train, LoRA r16 on all linears, b${lbatch}x$lseq, $lora_steps steps, bf16: $r"
"$PY" -c "import json,sys,math; d=json.loads(sys.argv[1]); sys.exit(0 if d['steps']==int(sys.argv[2]) and math.isfinite(d['last_loss']) and d['last_loss'] < d['first_loss'] else 1)" "$r" "$lora_steps" 2>/dev/null || fail "50-step bf16 LoRA run (steps, finite and falling loss)"

say ""
say "## 4. Speed and memory beside PyTorch, seq 1024"
say ""
say "| workload | whet tok/s | PyTorch tok/s | speed | whet peak GPU MiB | PyTorch peak GPU MiB | memory |"
say "|---|---|---|---|---|---|---|"
if [ "$DEVICE" = cpu ]; then seq=64 batch=1 steps=5 dts=f32; else seq=1024 batch=4 steps=10 dts="f32 bf16"; fi
for wl in lora full; do
  for dt in $dts; do
    w=$(whet_train "speed-$wl-$dt" "$wl" "$seq" "$batch" "$steps" "$dt")
    t=$(torch_train "$wl" "$seq" "$batch" "$steps" "$dt")
    "$PY" -c "
import json, sys
w, t = json.loads(sys.argv[2]), json.loads(sys.argv[3])
print(f\"| {sys.argv[1]} b{sys.argv[4]}x{sys.argv[5]} | {w['tokens_per_s']:.0f} | {t['tokens_per_s']:.0f} | **{w['tokens_per_s'] / t['tokens_per_s']:.2f}x** | {w['peak_mib']:.0f} | {t['peak_mib']:.0f} | **{w['peak_mib'] / t['peak_mib']:.2f}x** |\")" "$wl $dt" "$w" "$t" "$batch" "$seq" 2>&1 | tee -a "$report"
  done
done

say ""
if [ ${#failed[@]} -eq 0 ]; then say "All checks passed."; else say "${#failed[@]} check(s) failed: ${failed[*]}"; fi
[ -z "${OUT:-}" ] || cp "$report" "$OUT/device-check.md"
[ ${#failed[@]} -eq 0 ]
