"""A random-weight Llama of TinyLlama-1.1B's shape as an HF directory, for QLoRA's memory
benchmark (scripts/bench/qlora.sh). Not committed: it is 2.2 GB of f16.

hidden 2048, 22 layers, 32 heads, 4 kv heads, intermediate 5632, vocab 32000, untied:
1.10 B parameters. Weights N(0, 0.02), norms 1; the tokenizer is the tiny fixture's (the
benchmark trains on pre-tokenized ids below its 320 tokens).

Run: python3 scripts/bench/make_random_llama.py OUT_DIR   (numpy, safetensors)
"""
import json
import os
import shutil
import sys

import numpy as np
from safetensors.numpy import save_file

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")


def main(out):
    os.makedirs(out, exist_ok=True)
    h, inter, layers, nh, nkv, vocab = 2048, 5632, 22, 32, 4, 32000
    hs = h // nh
    rng = np.random.default_rng(0)
    randn = lambda *s: (rng.standard_normal(s, dtype=np.float32) * 0.02).astype(np.float16)  # noqa: E731
    w = {"model.embed_tokens.weight": randn(vocab, h), "lm_head.weight": randn(vocab, h),
         "model.norm.weight": np.ones(h, np.float16)}
    for i in range(layers):
        p = f"model.layers.{i}"
        w[f"{p}.self_attn.q_proj.weight"] = randn(nh * hs, h)
        w[f"{p}.self_attn.k_proj.weight"] = randn(nkv * hs, h)
        w[f"{p}.self_attn.v_proj.weight"] = randn(nkv * hs, h)
        w[f"{p}.self_attn.o_proj.weight"] = randn(h, nh * hs)
        w[f"{p}.mlp.gate_proj.weight"] = randn(inter, h)
        w[f"{p}.mlp.up_proj.weight"] = randn(inter, h)
        w[f"{p}.mlp.down_proj.weight"] = randn(h, inter)
        w[f"{p}.input_layernorm.weight"] = np.ones(h, np.float16)
        w[f"{p}.post_attention_layernorm.weight"] = np.ones(h, np.float16)
    print(f"{sum(t.size for t in w.values()) / 1e9:.3f} B parameters")
    save_file(w, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
    cfg = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": h,
        "intermediate_size": inter, "num_hidden_layers": layers, "num_attention_heads": nh,
        "num_key_value_heads": nkv, "vocab_size": vocab, "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": False,
        "hidden_act": "silu", "torch_dtype": "float16", "bos_token_id": 1, "eos_token_id": 2,
    }
    json.dump(cfg, open(os.path.join(out, "config.json"), "w"), indent=1)
    tiny = os.path.join(ROOT, "tests", "fixtures", "tiny-llama-gqa")
    for f in ["tokenizer.json", "tokenizer_config.json"]:
        shutil.copy(os.path.join(tiny, f), os.path.join(out, f))


if __name__ == "__main__":
    main(sys.argv[1])
