//! A `tokenizers::Tokenizer` rebuilt from GGUF vocabulary metadata (`tokenizer.ggml.*`).
//!
//! We write the same `tokenizer.json` document HF would ship and let the tokenizers crate
//! parse it, so what runs is the stock HF implementation. Two vocabulary kinds:
//! - `gpt2`: byte-level BPE with merges; `tokenizer.ggml.pre` picks the pre-tokenizer
//!   (SmolLM2's `smollm` splits digits one by one, as its HF tokenizer does);
//! - `llama`: SentencePiece BPE with byte fallback; merges are derived from the scores, as
//!   transformers' `SentencePieceExtractor` does.

use std::collections::HashMap;

use anyhow::{anyhow, bail, Result};
use serde_json::{json, Map, Value as Json};
use tokenizers::Tokenizer;

use super::gguf_file::{GgufFile, Value};

const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// GGUF token types (llama.cpp `llama_token_type`).
const TYPE_CONTROL: i64 = 3;
const TYPE_USER_DEFINED: i64 = 4;

/// Special token ids and the chat template, read beside the tokenizer.
#[derive(Debug, Clone, Default)]
pub struct GgufSpecials {
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub chat_template: Option<String>,
}

pub fn specials(g: &GgufFile) -> GgufSpecials {
    let id = |k: &str| g.get(k).and_then(Value::as_u64).map(|v| v as u32);
    GgufSpecials {
        bos: id("tokenizer.ggml.bos_token_id"),
        eos: id("tokenizer.ggml.eos_token_id"),
        chat_template: g.get("tokenizer.chat_template").and_then(Value::as_str).map(str::to_string),
    }
}

pub fn tokenizer(g: &GgufFile) -> Result<Tokenizer> {
    let doc = tokenizer_json(g)?;
    let file = g.path.display();
    Tokenizer::from_bytes(doc.to_string().as_bytes())
        .map_err(|e| anyhow!("{file}: cannot build a tokenizer from the GGUF vocabulary: {e}"))
}

fn strings(g: &GgufFile, key: &str) -> Result<Vec<String>> {
    let file = g.path.display();
    let arr = g
        .get(key)
        .and_then(Value::as_array)
        .ok_or_else(|| anyhow!("{file}: metadata {key} is missing or not an array"))?;
    arr.iter()
        .enumerate()
        .map(|(i, v)| {
            v.as_str().map(str::to_string).ok_or_else(|| anyhow!("{file}: {key}[{i}] is not a string"))
        })
        .collect()
}

fn numbers(g: &GgufFile, key: &str, n: usize) -> Result<Option<Vec<f64>>> {
    let file = g.path.display();
    let Some(v) = g.get(key) else { return Ok(None) };
    let arr = v.as_array().ok_or_else(|| anyhow!("{file}: metadata {key} is not an array"))?;
    if arr.len() != n {
        bail!("{file}: {key} has {} entries but the vocabulary has {n}", arr.len());
    }
    let out = arr
        .iter()
        .enumerate()
        .map(|(i, v)| v.as_f64().ok_or_else(|| anyhow!("{file}: {key}[{i}] is not a number")));
    Ok(Some(out.collect::<Result<_>>()?))
}

fn tokenizer_json(g: &GgufFile) -> Result<Json> {
    let file = g.path.display();
    let kind = g.get("tokenizer.ggml.model").and_then(Value::as_str).ok_or_else(|| {
        anyhow!("{file}: metadata tokenizer.ggml.model is missing: no tokenizer in this GGUF")
    })?;
    let tokens = strings(g, "tokenizer.ggml.tokens")?;
    let types = numbers(g, "tokenizer.ggml.token_type", tokens.len())?;
    let sp = specials(g);
    let flag = |k: &str| g.get(k).and_then(Value::as_bool);

    let mut vocab = Map::new();
    for (i, t) in tokens.iter().enumerate() {
        vocab.entry(t.clone()).or_insert(json!(i));
    }
    let added: Vec<Json> = tokens
        .iter()
        .enumerate()
        .filter_map(|(i, t)| {
            let ty = types.as_ref().map(|ts| ts[i] as i64)?;
            (ty == TYPE_CONTROL || ty == TYPE_USER_DEFINED).then(|| {
                json!({"id": i, "content": t, "single_word": false, "lstrip": false,
                       "rstrip": false, "normalized": false, "special": ty == TYPE_CONTROL})
            })
        })
        .collect();
    let add_bos = flag("tokenizer.ggml.add_bos_token").unwrap_or(kind == "llama");
    let bos = sp.bos.and_then(|id| tokens.get(id as usize).map(|t| (id, t.clone())));
    let post = match (add_bos, bos) {
        (true, Some((id, tok))) => json!({
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": tok, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": tok, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": tok, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {tok.clone(): {"id": tok, "ids": [id], "tokens": [tok]}}
        }),
        _ => Json::Null,
    };

    let (model, normalizer, pre, decoder) = match kind {
        "gpt2" => {
            let merges = strings(g, "tokenizer.ggml.merges")?;
            let pre_kind = g.get("tokenizer.ggml.pre").and_then(Value::as_str).unwrap_or("default");
            let model = json!({"type": "BPE", "dropout": null, "unk_token": null,
                "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": false,
                "byte_fallback": false, "ignore_merges": false, "vocab": vocab, "merges": merges});
            let decoder = json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true});
            (model, Json::Null, byte_level_pre(pre_kind), decoder)
        }
        "llama" => {
            let scores = numbers(g, "tokenizer.ggml.scores", tokens.len())?
                .ok_or_else(|| anyhow!("{file}: metadata tokenizer.ggml.scores is missing"))?;
            let unk = g
                .get("tokenizer.ggml.unknown_token_id")
                .and_then(Value::as_u64)
                .and_then(|i| tokens.get(i as usize).cloned())
                .unwrap_or_else(|| "<unk>".into());
            // As Llama 2's own tokenizer.json: a normalizer that always prepends "▁" (the
            // Metaspace pre-tokenizer skips it when the text already starts with a space,
            // which sentencepiece does not).
            let prepend = flag("tokenizer.ggml.add_space_prefix").unwrap_or(true);
            let replace = json!({"type": "Replace", "pattern": {"String": " "}, "content": "▁"});
            let normalizer = if prepend {
                json!({"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "▁"}, replace]})
            } else {
                replace
            };
            let model = json!({"type": "BPE", "dropout": null, "unk_token": unk,
                "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": true,
                "byte_fallback": true, "ignore_merges": false, "vocab": vocab,
                "merges": spm_merges(&tokens, &scores)});
            let decoder = json!({"type": "Sequence", "decoders": [
                {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
                {"type": "ByteFallback"}, {"type": "Fuse"},
                {"type": "Strip", "content": " ", "start": usize::from(prepend), "stop": 0}]});
            (model, normalizer, Json::Null, decoder)
        }
        other => bail!("{file}: tokenizer model {other:?} is not supported (gpt2, llama)"),
    };
    Ok(json!({"version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
              "normalizer": normalizer, "pre_tokenizer": pre, "post_processor": post,
              "decoder": decoder, "model": model}))
}

/// The pre-tokenizer HF ships for each llama.cpp `tokenizer.ggml.pre` name.
fn byte_level_pre(pre: &str) -> Json {
    let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
    let split = |re: &str| json!({"type": "Split", "pattern": {"Regex": re}, "behavior": "Isolated", "invert": false});
    match pre {
        "smollm" | "starcoder" | "refact" => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true}, byte_level(true)]}),
        "llama-bpe" | "llama3" | "dbrx" | "smaug-bpe" => {
            json!({"type": "Sequence", "pretokenizers": [split(LLAMA3_SPLIT), byte_level(false)]})
        }
        "qwen2" | "deepseek-r1-qwen" => {
            json!({"type": "Sequence", "pretokenizers": [split(QWEN2_SPLIT), byte_level(false)]})
        }
        "default" | "gpt2" | "gpt-2" => byte_level(true),
        other => {
            tracing::warn!("unknown tokenizer.ggml.pre {other:?}; using GPT-2 byte-level splitting");
            byte_level(true)
        }
    }
}

/// SentencePiece BPE merges from scores: every split of a piece into two known pieces is a
/// merge, ranked by the merged piece's score (higher merges first).
fn spm_merges(tokens: &[String], scores: &[f64]) -> Vec<(String, String)> {
    let id: HashMap<&str, usize> = tokens.iter().enumerate().map(|(i, t)| (t.as_str(), i)).collect();
    let mut merges: Vec<(usize, usize, usize)> = Vec::new(); // (merged, left, right) ids
    for (m, piece) in tokens.iter().enumerate() {
        let mut local = Vec::new();
        for (cut, _) in piece.char_indices().skip(1) {
            if let (Some(&l), Some(&r)) = (id.get(&piece[..cut]), id.get(&piece[cut..])) {
                local.push((m, l, r));
            }
        }
        local.sort_by_key(|&(_, l, r)| (l, r));
        merges.extend(local);
    }
    // Stable sort keeps the (left, right) order within one merged piece.
    merges.sort_by(|a, b| scores[b.0].total_cmp(&scores[a.0]));
    merges.into_iter().map(|(_, l, r)| (tokens[l].clone(), tokens[r].clone())).collect()
}
