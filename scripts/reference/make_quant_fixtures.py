"""Fixtures for QLoRA and quantized export.

- tests/fixtures/tiny-llama-gqa.q8_0.gguf: tiny-llama-gqa (HF dir) converted as llama.cpp does
  (Q/K rows permuted for interleaved rope) with the seven projections in Q8_0, quantized by
  the `gguf` package (llama.cpp's reference Python). whet's `keep` path must read it to the
  same weights as its dequantizing path: the row permutation undone on whole quantized rows.
- tests/fixtures/tiny-llama-256/: a random Llama 256 wide (hidden 256, intermediate 512), wide
  enough for the k-quants' 256-blocks, saved in bf16 to stay small. Same tokenizer.

Run: /work/venv-ref/bin/python scripts/reference/make_quant_fixtures.py  (torch, transformers, gguf)
"""
import os
import shutil
import sys

import numpy as np
import torch
from safetensors.numpy import load_file
from transformers import LlamaConfig, LlamaForCausalLM

sys.path.insert(0, os.path.dirname(__file__))
from make_tiny_models import permute_for_gguf  # noqa: E402

ROOT = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "fixtures")
PER_LAYER = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
}


def q8_0_gguf():
    import json

    import gguf

    src = os.path.join(ROOT, "tiny-llama-gqa")
    cfg = json.load(open(os.path.join(src, "config.json")))
    nh, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    w = gguf.GGUFWriter(os.path.join(ROOT, "tiny-llama-gqa.q8_0.gguf"), "llama")
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(nh)
    w.add_head_count_kv(nkv)
    w.add_rope_freq_base(cfg["rope_parameters"]["rope_theta"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_vocab_size(cfg["vocab_size"])
    for name, t in sorted(load_file(os.path.join(src, "model.safetensors")).items()):
        t = t.astype(np.float32)
        if name == "model.embed_tokens.weight":
            w.add_tensor("token_embd.weight", t)
            continue
        if name == "model.norm.weight":
            w.add_tensor("output_norm.weight", t)
            continue
        _, _, i, *rest = name.split(".")
        key, suffix = ".".join(rest[:-1]), rest[-1]
        if key == "self_attn.q_proj":
            t = permute_for_gguf(t, nh)
        if key == "self_attn.k_proj":
            t = permute_for_gguf(t, nkv)
        g = f"blk.{i}.{PER_LAYER[key]}.{suffix}"
        if key.endswith("_proj"):
            q = gguf.quants.quantize(np.ascontiguousarray(t), gguf.GGMLQuantizationType.Q8_0)
            w.add_tensor(g, q, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            w.add_tensor(g, np.ascontiguousarray(t))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def wide_model():
    out = os.path.join(ROOT, "tiny-llama-256")
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(7)
    cfg = LlamaConfig(
        vocab_size=320, hidden_size=256, intermediate_size=512, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        tie_word_embeddings=True, initializer_range=0.05, eos_token_id=[0, 2], bos_token_id=None,
    )
    model = LlamaForCausalLM(cfg).to(torch.bfloat16).eval()
    model.save_pretrained(out, safe_serialization=True)
    src = os.path.join(ROOT, "tiny-llama-gqa")
    for f in ["tokenizer.json", "tokenizer_config.json"]:
        shutil.copy(os.path.join(src, f), os.path.join(out, f))


if __name__ == "__main__":
    q8_0_gguf()
    wide_model()
    for p in ["tiny-llama-gqa.q8_0.gguf", "tiny-llama-256/model.safetensors"]:
        print(p, os.path.getsize(os.path.join(ROOT, p)), "bytes")
