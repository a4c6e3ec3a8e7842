"""Helpers of scripts/device-check.sh, run with the GPU box's PyTorch + transformers (+ PEFT):

  models.py make DIR            a random-weight model of SmolLM2-135M's shape (seed 0, f32) as an
                                HF directory, with the tiny fixture's tokenizer (its ids are a
                                subset of the model's vocabulary), and random training tokens
                                DIR/tokens.u16.
  models.py nll DIR SCORE DEV   transformers' per-token NLL of the ids in whet's `score --json`
                                output SCORE, on device DEV; prints the largest difference.
"""
import json
import os
import shutil
import struct
import sys

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOKENIZER = os.path.join(ROOT, "tests", "fixtures", "tiny-llama-gqa")


def make(out):
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                      num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048,
                      rms_norm_eps=1e-5, rope_theta=100000.0, tie_word_embeddings=True, initializer_range=0.05,
                      bos_token_id=1, eos_token_id=2)
    model = LlamaForCausalLM(cfg).to(torch.float32)
    model.save_pretrained(out, safe_serialization=True)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(TOKENIZER, f), out)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, cfg.vocab_size, (400_000,), generator=g).tolist()
    with open(os.path.join(out, "tokens.u16"), "wb") as f:
        f.write(struct.pack(f"<{len(ids)}H", *ids))


def nll(model_dir, score_json, device):
    whet = json.load(open(score_json))
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device).eval()
    ids = torch.tensor([whet["token_ids"]], device=device)
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].double(), dim=-1)
    ref = -logp.gather(1, ids[0, 1:, None]).squeeze(1).cpu()
    diff = (torch.tensor(whet["nll"], dtype=torch.float64) - ref).abs().max().item()
    print(json.dumps({"tokens": len(whet["token_ids"]), "max_abs_nll_diff": diff,
                      "whet_mean_nll": whet["mean_nll"], "torch_mean_nll": ref.mean().item()}))


if __name__ == "__main__":
    if sys.argv[1] == "make":
        make(sys.argv[2])
    elif sys.argv[1] == "nll":
        nll(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        sys.exit(f"unknown command {sys.argv[1]}")
