"""Reference numbers for the embedded default model (SmolLM2-135M-Instruct, Q4_1 GGUF),
from transformers loading the same GGUF (dequantized to f32):

- token ids of a few texts (digits, spaces, newlines, unicode), via transformers' GGUF
  tokenizer conversion;
- the top-20 next tokens and probabilities for a few prompts, plain and chat-templated.

Writes tests/fixtures/smollm2_reference.json. Run after scripts/fetch-default-model.sh:
    python3 scripts/reference/smollm2_reference.py
"""
import json
import os

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
MODELS = os.path.join(ROOT, "models")
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

TEXTS = [
    "The capital of France is",
    "How are you?\nI'm fine, thanks.",
    "Call 555-0123 or 1234567890 before 9:30pm on 2024-01-15.",
    "  leading spaces,\ttabs\tand\n\n\nblank lines  ",
    "def f(x):\n    return x ** 2  # square",
    "naïve café, Zürich — 東京 🙂",
]
PROMPTS = [("The capital of France is", False), ("How are", False),
           ("1, 2, 3, 4,", False), ("What is the capital of France?", True)]


def main():
    tok = AutoTokenizer.from_pretrained(MODELS, gguf_file=GGUF)
    model = AutoModelForCausalLM.from_pretrained(MODELS, gguf_file=GGUF, dtype=torch.float32)
    model.eval()
    out = {"tokens": [], "top20": []}
    for t in TEXTS:
        out["tokens"].append({"text": t, "ids": tok(t, add_special_tokens=False).input_ids})
    for prompt, chat in PROMPTS:
        text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                       add_generation_prompt=True) if chat else prompt
        ids = tok(text, add_special_tokens=False).input_ids
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0, -1]
        logp = torch.log_softmax(logits.double(), -1)
        top = torch.topk(logp, 20)
        out["top20"].append({"prompt": prompt, "chat": chat, "prompt_ids": ids,
                             "ids": top.indices.tolist(), "probs": top.values.exp().tolist(),
                             "entropy": float(-(logp.exp() * logp).sum())})
        print(prompt, chat, [tok.decode([i]) for i in top.indices[:5].tolist()])
    with open(os.path.join(ROOT, "tests", "fixtures", "smollm2_reference.json"), "w") as f:
        json.dump(out, f, indent=1, ensure_ascii=False)


if __name__ == "__main__":
    main()
