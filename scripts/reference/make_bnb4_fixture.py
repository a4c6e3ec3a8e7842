"""tests/fixtures/tiny-llama-gqa-bnb4/: tiny-llama-gqa quantized by bitsandbytes (NF4, double
quantization, as `BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
bnb_4bit_use_double_quant=True)` saves it: `quantization_config.quant_method =
"bitsandbytes"`, per projection `weight` (packed codes), `weight.absmax`, `weight.quant_map`,
`weight.nested_absmax`, `weight.nested_quant_map`, `weight.quant_state.bitsandbytes__nf4`).
`reference.safetensors` holds bitsandbytes' dequantized projections and the logits of the
tiny model with those weights (what bitsandbytes' `matmul_4bit` computes for a batch: dequantize,
then a float linear; its CPU path itself needs in_features >= 64, which the tiny model is not).

Run: /work/venv-ref/bin/python scripts/reference/make_bnb4_fixture.py  (torch, transformers, bitsandbytes)
"""
import os
import shutil

import bitsandbytes.functional as F
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, BitsAndBytesConfig

ROOT = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "fixtures")
SRC = os.path.join(ROOT, "tiny-llama-gqa")
OUT = os.path.join(ROOT, "tiny-llama-gqa-bnb4")


def main():
    q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                           bnb_4bit_compute_dtype=torch.float32)
    m = AutoModelForCausalLM.from_pretrained(SRC, quantization_config=q, device_map="cpu").eval()
    m.save_pretrained(OUT)
    for f in ["tokenizer.json", "tokenizer_config.json"]:
        shutil.copy(os.path.join(SRC, f), os.path.join(OUT, f))
    # Dequantize the saved file with bitsandbytes' QuantState and its generic kernel
    # (`backends/default/ops.py`, flat blocks of 64 as on CUDA). Its native CPU kernel assumes
    # rows of at least one block, which the tiny model's 32 columns are not.
    from bitsandbytes.backends.default.ops import _dequantize_4bit_compute

    saved = load_file(os.path.join(OUT, "model.safetensors"))
    orig = load_file(os.path.join(SRC, "model.safetensors"))
    ref = {}
    for k in saved:
        if k.endswith(".quant_state.bitsandbytes__nf4"):
            w = k[: -len(".quant_state.bitsandbytes__nf4")]
            qs = F.QuantState.from_dict({n[len(w) + 1:]: t for n, t in saved.items() if n.startswith(w + ".")}, device="cpu")
            absmax = F.dequantize_blockwise(qs.absmax, qs.state2) + qs.offset
            d = _dequantize_4bit_compute(saved[w].reshape(-1), absmax, qs.code, 64, qs.shape, torch.float32)
            err = ((d - orig[w]).norm() / orig[w].norm()).item()
            assert err < 0.15, f"{w}: relative error {err} against the float weight"
            ref[w] = d.contiguous()
    ids = load_file(os.path.join(SRC, "reference.safetensors"))["ids"].long()
    dense = AutoModelForCausalLM.from_pretrained(SRC, dtype=torch.float32).eval()
    sd = dense.state_dict()
    for k, v in ref.items():
        sd[k].copy_(v)
    with torch.no_grad():
        ref["logits"] = dense(ids).logits.float().contiguous()
    save_file(ref, os.path.join(OUT, "reference.safetensors"))
    print(f"{len(ref) - 1} projections; files: {sorted(os.listdir(OUT))}")


if __name__ == "__main__":
    main()
