"""Real clients read what `whet export` writes, from one trained run:

- transformers loads the merged HF directory: its next-token log-probabilities match
  `whet probe` on the same directory;
- PEFT applies the exported adapter to the base (a GGUF base is loaded by transformers'
  GGUF reader, dequantized: the base a `keep` QLoRA run trained against) and matches too;
- the `gguf` package reads the exported GGUF (f16): architecture, tensors, tokenizer, template;
- llama.cpp itself (llama-cpp-python) runs the GGUF: for each prompt its top-1 next token is
  whet's and its log-probabilities of whet's top tokens are within 5e-2;
- llama.cpp runs a base GGUF with the exported GGUF adapter (`--lora`) and matches
  `whet probe --adapter` on the same base the same way. The base is the run's base exported to
  f16 by whet: on this machine llama.cpp's native build puts Q4_0/Q4_1/Q8_0 weights in AMX
  buffers and dies with SIGILL on a LoRA over them, while f16 weights stay in plain buffers.

Run after `cargo build --release` and a run with a checkpoint, e.g.
  target/release/whet train configs/sft-smollm2-qlora.toml --cpu
  /work/venv-ref/bin/python scripts/reference/export_check.py runs/sft-smollm2-qlora
Needs torch, transformers, peft, gguf, llama-cpp-python (it builds llama.cpp: ~10 minutes).
The exports go to a temp directory, removed at the end unless KEEP=1.
"""
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
WHET = os.path.join(ROOT, "target", "release", "whet")
PROMPTS = ["How are", "What is your name?", "The capital of France is", "Who made you?"]
TOL = 5e-2


def whet(*args):
    return subprocess.run([WHET, *args], check=True, capture_output=True, text=True).stdout


def probe(model, prompt, chat):
    args = ["probe", "--cpu", "--model", model, "--prompt", prompt, "--json", "--top-k", "5"]
    return json.loads(whet(*args, *(["--chat"] if chat else [])))


def log_softmax(x):
    x = np.asarray(x, dtype=np.float64)
    m = x.max()
    return x - m - np.log(np.exp(x - m).sum())


def compare(name, want, logprobs):
    """Top-1 and the worst |Δ logprob| over whet's top tokens."""
    top1 = int(np.argmax(logprobs))
    worst = max(abs(logprobs[t["id"]] - t["logprob"]) for t in want["top"])
    ok = top1 == want["top"][0]["id"] and worst < TOL
    print(f"  {name:<12} top-1 {top1:>6} (whet {want['top'][0]['id']:>6})  max |Δ logprob| {worst:.2e}  {'ok' if ok else 'FAIL'}")
    return ok


def main():
    run = os.path.abspath(sys.argv[1])
    state = json.load(open(sorted(
        os.path.join(run, "checkpoints", d, "state.json") for d in os.listdir(os.path.join(run, "checkpoints"))
        if d.startswith("step-"))[-1]))
    base = state["config"]["model"]["path"]
    base = base if os.path.isabs(base) else os.path.join(ROOT, base)
    chat = state["config"]["data"].get("format") == "chat"
    out = tempfile.mkdtemp(prefix="whet-export-check-")
    merged, adapter, gguf_path, lora_gguf = (os.path.join(out, n) for n in ["merged", "adapter", "model.gguf", "adapter.gguf"])
    whet("export", run, "--format", "merged", "--out", merged)
    whet("export", run, "--format", "peft", "--out", adapter)
    whet("export", run, "--format", "gguf", "--quant", "f16", "--out", gguf_path, "--ollama")
    whet("export", run, "--format", "gguf-adapter", "--out", lora_gguf)
    base_gguf = os.path.join(out, "base.gguf")
    whet("export", base, "--format", "gguf", "--quant", "f16", "--out", base_gguf)
    print(f"exported to {out}; prompts {'as chat' if chat else 'as text'}")
    all_ok = True

    import torch
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()
    peft_model = None
    try:
        from peft import PeftModel

        if base.endswith(".gguf"):
            b = AutoModelForCausalLM.from_pretrained(os.path.dirname(base), gguf_file=os.path.basename(base),
                                                     dtype=torch.float32)
        else:
            b = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        peft_model = PeftModel.from_pretrained(b, adapter).eval()
    except Exception as e:  # a base transformers cannot read is reported, not hidden
        print(f"PEFT on the base: skipped ({type(e).__name__}: {e})")
        all_ok = False

    import gguf

    r = gguf.GGUFReader(gguf_path)
    field = lambda k: r.fields[k].contents() if k in r.fields else None  # noqa: E731
    types = sorted({t.tensor_type.name for t in r.tensors})
    print(f"gguf: {field('general.architecture')}, {len(r.tensors)} tensors {types}, "
          f"tokenizer {field('tokenizer.ggml.model')} ({len(r.fields['tokenizer.ggml.tokens'].data)} tokens), "
          f"chat template {'yes' if field('tokenizer.chat_template') else 'no'}")
    print("Modelfile:\n  " + open(os.path.join(out, "Modelfile")).read().strip().replace("\n", "\n  "))

    from llama_cpp import Llama

    llm = Llama(model_path=gguf_path, n_ctx=512, logits_all=True, verbose=False)
    llm_lora = Llama(model_path=base_gguf, lora_path=lora_gguf, n_ctx=512, logits_all=True, verbose=False)
    for prompt in PROMPTS:
        print(f"{prompt!r}")
        want = probe(merged, prompt, chat)
        ids = want["prompt_ids"]
        with torch.no_grad():
            x = torch.tensor([ids])
            all_ok &= compare("transformers", want, log_softmax(hf(x).logits[0, -1].numpy()))
            if peft_model is not None:
                all_ok &= compare("peft", want, log_softmax(peft_model(x).logits[0, -1].numpy()))
        want_gguf = probe(gguf_path, prompt, chat)
        llm.reset()
        llm.eval(ids)
        all_ok &= compare("llama.cpp", want_gguf, log_softmax(llm.scores[len(ids) - 1]))
        args = ["probe", "--cpu", "--model", base_gguf, "--adapter", adapter, "--prompt", prompt, "--json", "--top-k", "5"]
        want_lora = json.loads(whet(*args, *(["--chat"] if chat else [])))
        llm_lora.reset()
        llm_lora.eval(ids)
        all_ok &= compare("llama --lora", want_lora, log_softmax(llm_lora.scores[len(ids) - 1]))
    print("all agree" if all_ok else "DISAGREEMENT")
    if os.environ.get("KEEP") != "1":  # the exports of a 135M model are ~0.8 GB
        import shutil

        shutil.rmtree(out)
    sys.exit(0 if all_ok else 1)


if __name__ == "__main__":
    main()
