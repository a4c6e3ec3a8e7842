"""Step-for-step training references for whet's engine, with torch.optim.AdamW and PEFT.

Base model: tests/fixtures/tiny-llama-gqa (made by make_tiny_models.py). Data: a flat u16
token file, read with shuffle=false: batch i is the next `batch` windows of `seq` tokens, and
each window of T tokens gives T-1 predictions (labels = inputs, shifted inside, as HF).

Writes tests/fixtures/train/:
  tokens.u16             the token file
  full.json              per-step losses (before each update), LRs and grad norms, full FT
  lora_init/             a PEFT adapter (random A and B) that whet's `method.init` loads
  lora.json              per-step losses of LoRA training from lora_init
  schedules.json         lr_at(step) for every schedule kind, from transformers' schedulers
Run: python3 scripts/reference/make_training_reference.py
"""
import json
import os

import numpy as np
import torch
from transformers import AutoModelForCausalLM, get_scheduler

ROOT = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "fixtures")
OUT = os.path.join(ROOT, "train")
BASE = os.path.join(ROOT, "tiny-llama-gqa")
SEQ, BATCH, STEPS = 16, 4, 10
LR, WARMUP, WD, CLIP = 1e-2, 2, 0.1, 1.0
FORBIDDEN = ("bias", "layernorm", "rmsnorm", "_norm")


def decays(name):
    # transformers Trainer.get_decay_parameter_names
    parts = name.split(".")
    return not (any(f in name for f in FORBIDDEN) or "norm" in parts)


def batches(tokens):
    per = SEQ * BATCH
    for i in range(STEPS):
        chunk = tokens[i * per:(i + 1) * per]
        yield torch.tensor(chunk.astype(np.int64)).reshape(BATCH, SEQ)


def train(model, params, tokens):
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [{"params": [p for n, p in named if decays(n)], "weight_decay": WD},
              {"params": [p for n, p in named if not decays(n)], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=LR, betas=(0.9, 0.999), eps=1e-8)
    sched = get_scheduler("cosine", opt, num_warmup_steps=WARMUP, num_training_steps=STEPS)
    out = {"loss": [], "lr": [], "grad_norm": []}
    for ids in batches(tokens):
        lr = opt.param_groups[0]["lr"]
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_([p for _, p in named], CLIP)
        opt.step()
        sched.step()
        opt.zero_grad()
        out["loss"].append(loss.item())
        out["lr"].append(lr)
        out["grad_norm"].append(gn.item())
    return out


def schedules():
    opt = lambda: torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)  # noqa: E731
    cases = [
        ("constant", "constant_with_warmup", {}, {}),
        ("linear", "linear", {}, {}),
        ("cosine", "cosine", {}, {}),
        ("cosine_with_min_lr", "cosine_with_min_lr", {"min_lr": 0.1}, {"min_lr": 0.1}),
        ("cosine_with_restarts", "cosine_with_restarts", {"num_cycles": 3}, {"num_cycles": 3.0}),
        ("wsd", "warmup_stable_decay", {"num_stable_steps": 10, "num_decay_steps": 15, "min_lr_ratio": 0.05},
         {"stable_steps": 10, "decay_steps": 15, "min_lr_ratio": 0.05}),
        ("wsd", "warmup_stable_decay", {"num_stable_steps": 10, "num_decay_steps": 15, "decay_type": "1-sqrt"},
         {"stable_steps": 10, "decay_steps": 15, "decay_type": "1-sqrt"}),
        ("inverse_sqrt", "inverse_sqrt", {}, {}),
        ("polynomial", "polynomial", {"power": 2.0, "lr_end": 0.01}, {"power": 2.0, "lr_end": 0.01}),
    ]
    out = []
    for kind, hf_name, hf_kw, ours in cases:
        for warmup in (0, 5):
            o = opt()
            s = get_scheduler(hf_name, o, num_warmup_steps=warmup, num_training_steps=30, scheduler_specific_kwargs=hf_kw)
            lrs = []
            for _ in range(35):
                lrs.append(o.param_groups[0]["lr"])
                o.step()
                s.step()
            out.append({"schedule": {"kind": kind, "lr": 1.0, "warmup_steps": warmup, "total_steps": 30, **ours},
                        "lrs": lrs})
    return out


def main():
    os.makedirs(OUT, exist_ok=True)
    rng = np.random.default_rng(3)
    tokens = rng.integers(0, 320, size=SEQ * BATCH * STEPS + 37).astype(np.uint16)
    tokens.tofile(os.path.join(OUT, "tokens.u16"))

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(BASE, dtype=torch.float32)
    full = train(model, None, tokens)
    json.dump(full, open(os.path.join(OUT, "full.json"), "w"), indent=1)
    print("full", [round(x, 4) for x in full["loss"]])

    from peft import LoraConfig, get_peft_model
    base = AutoModelForCausalLM.from_pretrained(BASE, dtype=torch.float32)
    cfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, init_lora_weights=False,
                     target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    torch.manual_seed(1)
    peft_model = get_peft_model(base, cfg)
    with torch.no_grad():  # PEFT's init=False draws B like A; shrink it so training is not chaotic
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.mul_(0.1)
    peft_model.save_pretrained(os.path.join(OUT, "lora_init"))
    lora = train(peft_model, None, tokens)
    json.dump(lora, open(os.path.join(OUT, "lora.json"), "w"), indent=1)
    print("lora", [round(x, 4) for x in lora["loss"]])

    json.dump(schedules(), open(os.path.join(OUT, "schedules.json"), "w"), indent=1)


if __name__ == "__main__":
    main()
