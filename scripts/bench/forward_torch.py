"""The PyTorch side of `scripts/bench/forward.sh`: the same workload as `whet bench forward`
(a forward pass over a fixed `tokens`-long sequence, median of `reps`, then greedy generation
of `gen_tokens` tokens with the KV cache after a 16-token prompt), on the same GGUF loaded by
transformers (dequantized to f32). Prints one JSON line with the same keys."""
import argparse
import json
import os
import time

import torch
from transformers import AutoModelForCausalLM

p = argparse.ArgumentParser()
p.add_argument("--model", required=True)
p.add_argument("--tokens", type=int, default=256)
p.add_argument("--gen-tokens", type=int, default=32)
p.add_argument("--reps", type=int, default=5)
p.add_argument("--threads", type=int, default=0)
a = p.parse_args()
if a.threads:
    torch.set_num_threads(a.threads)

model = AutoModelForCausalLM.from_pretrained(os.path.dirname(os.path.abspath(a.model)),
                                             gguf_file=os.path.basename(a.model), dtype=torch.float32)
model.eval()
vocab = model.config.vocab_size
ids = torch.tensor([[(i * 7919 + 13) % vocab for i in range(a.tokens)]])
with torch.inference_mode():
    model(ids)  # warm-up
    times = []
    for _ in range(max(a.reps, 1)):
        t = time.perf_counter()
        model(ids).logits.sum().item()
        times.append(time.perf_counter() - t)
    times.sort()
    fwd = times[len(times) // 2]
    prompt = ids[:, :16]
    t = time.perf_counter()
    out = model.generate(prompt, max_new_tokens=a.gen_tokens, min_new_tokens=a.gen_tokens,
                         do_sample=False, pad_token_id=0)
    gen_s = time.perf_counter() - t
produced = out.shape[1] - prompt.shape[1]
print(json.dumps({"forward_tokens": a.tokens, "forward_s": fwd, "forward_tok_per_s": a.tokens / fwd,
                  "gen_tokens": produced, "gen_s": gen_s, "gen_tok_per_s": produced / gen_s,
                  "torch": torch.__version__, "threads": torch.get_num_threads()}))
