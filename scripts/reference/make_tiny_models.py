"""Builds the tiny random Llama-family models whet's parity tests use, with transformers.

For each model it writes tests/fixtures/<name>/ as an HF directory (config.json, safetensors,
tokenizer files for the first) plus `reference.safetensors` holding a fixed batch of token ids,
the logits, the loss, and `grad_norms.json` with the L2 norm of every parameter's gradient.
It also writes `tiny-llama-gqa.gguf`, the first model converted the way llama.cpp converts
(Q/K rows permuted for interleaved rope), to check the GGUF loader undoes it.

Run: python3 scripts/reference/make_tiny_models.py   (torch, transformers, safetensors, gguf, tokenizers)
"""
import json
import os
import sys

import numpy as np
import torch
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

ROOT = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "fixtures")

CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] | trim + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def tiny_tokenizer(out_dir, vocab_size):
    """A byte-level BPE trained on a few sentences, with ChatML specials (as SmolLM2 has)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    text = [
        "The capital of France is Paris. How are you today? I am fine, thank you.",
        "Numbers like 1234 and 56 appear in text.\nNew lines too.",
    ] * 20
    tok.train_from_iterator(text, trainer)
    tok.save(os.path.join(out_dir, "tokenizer.json"))
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump({"bos_token": None, "eos_token": "<|im_end|>", "chat_template": CHAT_TEMPLATE}, f, indent=1)
    return tok


def save_reference(model, out_dir, ids):
    model.zero_grad()
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    save_file(
        {"ids": ids.to(torch.int64), "logits": out.logits.detach().float().contiguous(),
         "loss": out.loss.detach().reshape(1).float()},
        os.path.join(out_dir, "reference.safetensors"),
    )
    norms = {n: float(p.grad.norm()) for n, p in model.named_parameters() if p.grad is not None}
    with open(os.path.join(out_dir, "grad_norms.json"), "w") as f:
        json.dump(norms, f, indent=1, sort_keys=True)


def save_chat_and_generation(model, out_dir):
    """Chat-template ids from HF's tokenizer, and HF's greedy continuation (KV cache)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out_dir)
    prompt = "How are you today?"
    chat_ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                       tokenize=True, return_dict=False)
    plain_ids = tok(prompt, add_special_tokens=True).input_ids
    with torch.no_grad():
        gen = model.generate(torch.tensor([plain_ids]), max_new_tokens=8, min_new_tokens=8, do_sample=False,
                             pad_token_id=0)
    with open(os.path.join(out_dir, "chat_generate.json"), "w") as f:
        json.dump({"prompt": prompt, "chat_ids": list(chat_ids), "plain_ids": plain_ids,
                   "greedy_ids": gen[0, len(plain_ids):].tolist()}, f, indent=1)


def permute_for_gguf(w, n_head):
    # llama.cpp convert_hf_to_gguf.py LlamaModel.permute: HF rotate-half rows -> interleaved rows.
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(model, cfg, path):
    import gguf

    w = gguf.GGUFWriter(path, "llama")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_freq_base(cfg.rope_theta if hasattr(cfg, "rope_theta") else cfg.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(cfg.vocab_size)
    names = {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight",
    }
    per_layer = {
        "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
    }
    for name, t in model.state_dict().items():
        t = t.detach().float().numpy()
        if name in names:
            if name == "lm_head.weight" and cfg.tie_word_embeddings:
                continue
            g = names[name]
        else:
            _, _, i, *rest = name.split(".")
            key, suffix = ".".join(rest[:-1]), rest[-1]
            g = f"blk.{i}.{per_layer[key]}.{suffix}"
            if key == "self_attn.q_proj":
                t = permute_for_gguf(t, cfg.num_attention_heads)
            if key == "self_attn.k_proj":
                t = permute_for_gguf(t, cfg.num_key_value_heads)
        w.add_tensor(g, np.ascontiguousarray(t))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main():
    torch.manual_seed(0)
    specs = [
        # GQA, tied head, theta 10000, with a tokenizer and chat template.
        ("tiny-llama-gqa", LlamaForCausalLM, LlamaConfig(
            vocab_size=320, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
            rope_theta=10000.0, tie_word_embeddings=True, rms_norm_eps=1e-5,
            bos_token_id=None, eos_token_id=[0, 2])),
        # MHA, untied head, Llama 3.1 rope scaling, theta 500000, sharded safetensors.
        ("tiny-llama-untied", LlamaForCausalLM, LlamaConfig(
            vocab_size=96, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64,
            rope_theta=500000.0, tie_word_embeddings=False, rms_norm_eps=1e-6,
            rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                          "high_freq_factor": 4.0, "original_max_position_embeddings": 16})),
        # Qwen2: q/k/v bias, GQA 4:1, theta 1e6.
        ("tiny-qwen2-bias", Qwen2ForCausalLM, Qwen2Config(
            vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=64,
            rope_theta=1000000.0, tie_word_embeddings=False, rms_norm_eps=1e-6)),
    ]
    for name, cls, cfg in specs:
        out = os.path.join(ROOT, name)
        os.makedirs(out, exist_ok=True)
        cfg.initializer_range = 0.2  # larger than HF's 0.02 so the logits are not all ~uniform
        model = cls(cfg).float()
        if name == "tiny-qwen2-bias":
            with torch.no_grad():  # HF initialises biases to zero; make them matter
                for layer in model.model.layers:
                    for p in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                        p.bias.normal_(0.0, 0.2)
        shard = "20KB" if name == "tiny-llama-untied" else "100MB"
        model.save_pretrained(out, max_shard_size=shard)
        if name == "tiny-llama-gqa":
            tiny_tokenizer(out, cfg.vocab_size)
        ids = torch.randint(0, cfg.vocab_size, (2, 12), generator=torch.Generator().manual_seed(1))
        save_reference(model, out, ids)
        if name == "tiny-llama-gqa":
            write_gguf(model, cfg, os.path.join(ROOT, "tiny-llama-gqa.gguf"))
            save_chat_and_generation(model, out)
        print(name, "loss", float(model(input_ids=ids, labels=ids).loss))


if __name__ == "__main__":
    sys.exit(main())
