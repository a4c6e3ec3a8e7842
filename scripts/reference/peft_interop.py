"""PEFT interop: an adapter trained by whet, loaded by HF PEFT, gives the same next-token
distribution as `whet probe --adapter`; and `whet merge` gives an HF directory whose logits
transformers reproduces.

Run after `cargo build --release`:  python3 scripts/reference/peft_interop.py
"""
import json
import os
import subprocess
import tempfile

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
WHET = os.path.join(ROOT, "target", "release", "whet")
BASE = os.path.join(ROOT, "tests", "fixtures", "tiny-llama-gqa")
TOKENS = os.path.join(ROOT, "tests", "fixtures", "train", "tokens.u16")
PROMPT = "How are you"

CONFIG = f"""
[model]
path = "{BASE}"
[method]
kind = "lora"
r = 4
alpha = 16
targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
[data]
train = "{TOKENS}"
format = "tokens"
seq_len = 16
[optim]
batch_size = 4
max_steps = 20
[schedule]
kind = "constant"
lr = 1e-2
[run]
out_dir = "{{out}}"
"""


def main():
    with tempfile.TemporaryDirectory() as tmp:
        run = os.path.join(tmp, "run")
        cfg = os.path.join(tmp, "lora.toml")
        open(cfg, "w").write(CONFIG.replace("{out}", run))
        subprocess.run([WHET, "train", cfg, "--cpu"], check=True, stdout=subprocess.DEVNULL)
        adapter = os.path.join(run, "adapter")
        whet = json.loads(subprocess.run([WHET, "probe", "--model", BASE, "--adapter", adapter, "--prompt", PROMPT,
                                          "--top-k", "20", "--json", "--cpu"], check=True, capture_output=True).stdout)
        tok = AutoTokenizer.from_pretrained(BASE)
        ids = tok(PROMPT, add_special_tokens=False).input_ids
        assert ids == whet["prompt_ids"], (ids, whet["prompt_ids"])
        base = AutoModelForCausalLM.from_pretrained(BASE, dtype=torch.float32)
        peft = PeftModel.from_pretrained(base, adapter).eval()
        with torch.no_grad():
            logp = torch.log_softmax(peft(torch.tensor([ids])).logits[0, -1].double(), -1)
        diff = max(abs(t["prob"] - logp[t["id"]].exp().item()) for t in whet["top"])
        same_order = [t["id"] for t in whet["top"]] == torch.topk(logp, 20).indices.tolist()
        print(f"PEFT vs whet probe --adapter: max |p - p_peft| over top-20 = {diff:.2e}, same order: {same_order}")

        merged = os.path.join(tmp, "merged")
        subprocess.run([WHET, "merge", "--model", BASE, "--adapter", adapter, "--out", merged], check=True,
                       stdout=subprocess.DEVNULL)
        m = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()
        with torch.no_grad():
            logp_m = torch.log_softmax(m(torch.tensor([ids])).logits[0, -1].double(), -1)
        print(f"transformers on `whet merge` output vs PEFT: max |logp diff| = {(logp_m - logp).abs().max().item():.2e}")
        assert diff < 1e-5 and same_order


if __name__ == "__main__":
    main()
