#!/usr/bin/env bash
# Fuzzes whet's parsers with cargo-fuzz (issue 11), outside CI.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [RUNS_PER_TARGET] [TARGET...]
#
# Each target runs until RUNS executions (default 1,000,000) or SECONDS (default 600),
# whichever comes first; the corpus is seeded from the repo's real files and crafted cases
# (fixtures, configs, data, chat templates). A crash is saved under tests/fuzz/artifacts/ and
# stops the script; turn each into a regression test in `cargo test` on a crafted input.
# Needs the nightly toolchain and `cargo install cargo-fuzz`. SANITIZER=address for ASan
# (slower); the default, none, is enough for safe Rust and runs several times faster.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS="${1:-600}"
RUNS="${2:-1000000}"
shift $(( $# > 2 ? 2 : $# ))
TARGETS=("$@")
[ ${#TARGETS[@]} -eq 0 ] && TARGETS=(gguf safetensors config_json run_toml jsonl_line chat_template frame)
FUZZ=tests/fuzz
CORPUS="$FUZZ/corpus"

put() { mkdir -p "$CORPUS/$1"; printf '%s' "$3" > "$CORPUS/$1/$2"; }

# Real files.
mkdir -p "$CORPUS"/{gguf,safetensors,config_json,run_toml,jsonl_line,chat_template,frame}
cp tests/fixtures/*.gguf "$CORPUS/gguf/"
for d in tests/fixtures/*/; do
  n=$(basename "$d")
  [ -f "$d/model.safetensors" ] && [ "$(stat -c %s "$d/model.safetensors")" -lt 200000 ] && cp "$d/model.safetensors" "$CORPUS/safetensors/$n.safetensors"
  [ -f "$d/config.json" ] && cp "$d/config.json" "$CORPUS/config_json/$n.json"
  [ -f "$d/tokenizer_config.json" ] && python3 - "$d/tokenizer_config.json" "$CORPUS/chat_template/$n.jinja" <<'PY' || true
import json, sys
t = json.load(open(sys.argv[1])).get("chat_template")
if isinstance(t, str):
    open(sys.argv[2], "w").write(t)
PY
done
cp configs/*.toml "$CORPUS/run_toml/"
i=0
while IFS= read -r line; do i=$((i + 1)); printf '%s' "$line" > "$CORPUS/jsonl_line/identity-$i.json"; done < <(head -50 assets/data/identity.jsonl)

# Crafted cases: the hostile inputs of issue 11.
put safetensors index.json '{"weight_map": {"a": "../../etc/passwd", "b": 7}}'
put safetensors huge-header.bin "$(printf '\xff\xff\xff\xff\xff\xff\xff\x7f{}')"
put config_json absurd.json '{"vocab_size": 1099511627776, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "max_position_embeddings": 1000000000000, "rms_norm_eps": -1}'
put run_toml nan.toml $'[model]\npath = "m.gguf"\n[data]\ntrain = "t.jsonl"\n[optim]\nweight_decay = nan\nbetas = [1.5, 2.0]\ngrad_accum = 0\n'
put jsonl_line role.json '{"messages": [{"role": "asistant", "content": "x"}]}'
put jsonl_line alpaca.json '{"instruction": "a", "input": "", "output": "b"}'
put jsonl_line pc.json '{"prompt": "a", "completion": "b"}'
put chat_template loops.jinja '{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}'
put chat_template big.jinja "{{ 'x' * 1000 }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] | trim }}{% endfor %}"
printf '\x0e\x00\x00\x00"Evaluate"xx' > "$CORPUS/frame/short.bin"
printf '\x05\x00\x00\x00"Pause"' > "$CORPUS/frame/pause.bin"
printf '\x00\x00\x00\x40' > "$CORPUS/frame/1gb.bin"

mkdir -p "$FUZZ/logs"
for t in "${TARGETS[@]}"; do
  echo "== $t: up to $RUNS runs or ${SECS}s"
  log="$FUZZ/logs/$t.log"
  if ! cargo +nightly fuzz run --fuzz-dir "$FUZZ" -s "${SANITIZER:-none}" "$t" "$CORPUS/$t" -- \
    -runs="$RUNS" -max_total_time="$SECS" -max_len=262144 -rss_limit_mb=4096 -timeout=10 \
    -print_final_stats=1 > "$log" 2>&1; then
    echo "$t: CRASH or error; the input is under $FUZZ/artifacts/$t/"
    tail -30 "$log"
    exit 1
  fi
  grep -E "^stat::(number_of_executed_units|peak_rss_mb)|^Done" "$log" || tail -5 "$log"
done
