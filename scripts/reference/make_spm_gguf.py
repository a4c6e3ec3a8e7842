"""A tiny SentencePiece-BPE tokenizer (as Llama 2, TinyLlama and Mistral use), stored the way
llama.cpp's converter stores it in a GGUF (`tokenizer.ggml.model = "llama"`: tokens, scores,
token types, bos/eos/unk, add_bos), with reference ids from sentencepiece itself.

Writes tests/fixtures/tiny-spm.gguf (metadata only, no tensors) and tests/fixtures/tiny-spm.json.
Run: python3 scripts/reference/make_spm_gguf.py   (sentencepiece, gguf)
"""
import json
import os
import tempfile

import gguf
import sentencepiece as spm

ROOT = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "fixtures")
CORPUS = [
    "The capital of France is Paris. How are you today? I am fine, thank you.",
    "Numbers like 1234 and 56 appear in text. New lines too, and tabs.",
    "A quick brown fox jumps over the lazy dog while the cat sleeps.",
] * 50
TEXTS = ["The capital of France is", "How are you?\nI'm fine.", "fox 1234 zebra",
         "  two leading spaces", "naïve 東京"]


def main():
    with tempfile.TemporaryDirectory() as tmp:
        corpus = os.path.join(tmp, "corpus.txt")
        with open(corpus, "w") as f:
            f.write("\n".join(CORPUS))
        prefix = os.path.join(tmp, "spm")
        spm.SentencePieceTrainer.train(input=corpus, model_prefix=prefix, vocab_size=400,
                                       model_type="bpe", byte_fallback=True, character_coverage=1.0,
                                       bos_id=1, eos_id=2, unk_id=0, pad_id=-1,
                                       normalization_rule_name="identity", remove_extra_whitespaces=False,
                                       split_digits=True)
        sp = spm.SentencePieceProcessor(model_file=prefix + ".model")
    tokens, scores, types = [], [], []
    for i in range(sp.get_piece_size()):
        tokens.append(sp.id_to_piece(i))
        scores.append(sp.get_score(i))
        if sp.is_unknown(i):
            types.append(2)
        elif sp.is_control(i):
            types.append(3)
        elif sp.is_byte(i):
            types.append(6)
        else:
            types.append(1)
    w = gguf.GGUFWriter(os.path.join(ROOT, "tiny-spm.gguf"), "llama")
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    ref = [{"text": t, "ids": [1] + sp.encode(t)} for t in TEXTS]
    with open(os.path.join(ROOT, "tiny-spm.json"), "w") as f:
        json.dump(ref, f, indent=1, ensure_ascii=False)
    for r in ref:
        print(r["text"], [sp.id_to_piece(i) for i in r["ids"]])


if __name__ == "__main__":
    main()
