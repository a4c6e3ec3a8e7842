"""The PyTorch side of scripts/bench/train.sh: the same training workload as a whet config,
with transformers (+ PEFT for LoRA) and torch.optim.AdamW (no clipping), fp32, eager, 2 threads,
on random tokens of the same shape. Prints one JSON line: median tokens/s after 3 warm-up steps.
scripts/device-check.sh also runs it on a GPU (--device cuda) with an HF directory as --model."""
import argparse
import json
import os
import time

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

p = argparse.ArgumentParser()
p.add_argument("--workload", choices=["pretrain", "lora", "full"], required=True)
p.add_argument("--model")
p.add_argument("--seq", type=int, required=True)
p.add_argument("--batch", type=int, required=True)
p.add_argument("--steps", type=int, required=True)
p.add_argument("--device", default="cpu")
p.add_argument("--dtype", choices=["f32", "bf16"], default="f32",
               help="bf16: autocast mixed precision over f32 weights, whet's dtype = \"bf16\"")
a = p.parse_args()
if a.device == "cpu":
    torch.set_num_threads(2)

if a.workload == "pretrain":
    # Workload (a) of issue 8: hidden 256, 4 layers, 4 heads, 2 kv heads, intermediate 688,
    # vocab 8192, untied.
    cfg = LlamaConfig(vocab_size=8192, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                      tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg)
elif os.path.isdir(a.model):
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32)
else:
    model = AutoModelForCausalLM.from_pretrained(os.path.dirname(os.path.abspath(a.model)),
                                                 gguf_file=os.path.basename(a.model), dtype=torch.float32)
    if a.workload == "lora":
        from peft import LoraConfig, get_peft_model
        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=[
            "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
model.to(a.device).train()
params = [p for p in model.parameters() if p.requires_grad]
opt = torch.optim.AdamW(params, lr=1e-4)
vocab = model.config.vocab_size
g = torch.Generator().manual_seed(0)
sync = torch.cuda.synchronize if a.device.startswith("cuda") else (lambda: None)
rates = []
for _ in range(a.steps):
    ids = torch.randint(0, vocab, (a.batch, a.seq), generator=g).to(a.device)
    sync()
    t = time.perf_counter()
    with torch.autocast(device_type=a.device.split(":")[0], dtype=torch.bfloat16, enabled=a.dtype == "bf16"):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    opt.step()
    opt.zero_grad()
    sync()
    rates.append(a.batch * a.seq / (time.perf_counter() - t))
rates = sorted(rates[3:]) or rates
out = {"workload": a.workload, "tokens_per_s": rates[len(rates) // 2], "steps": a.steps,
       "threads": torch.get_num_threads(), "device": a.device, "dtype": a.dtype}
if a.device.startswith("cuda"):
    out["max_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
print(json.dumps(out))
