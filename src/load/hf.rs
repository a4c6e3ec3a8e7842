//! HF model directories: `config.json`, one or sharded `*.safetensors`, `tokenizer.json`,
//! `tokenizer_config.json` / `chat_template.jinja`, `generation_config.json`: read, and written
//! (`write_dir`) for full fine-tuning, pretraining and `whet merge`.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use serde_json::{json, Value};

use super::atomic_dir;
use super::hf_config::{config_json, token_ids, HfConfig};
use super::TextSide;
use crate::model::Config;

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))
}

fn read_json(path: &Path) -> Result<Value> {
    serde_json::from_str(&read(path)?).map_err(|e| anyhow!("{}: invalid JSON: {e}", path.display()))
}

pub fn config(dir: &Path) -> Result<HfConfig> {
    let path = dir.join("config.json");
    HfConfig::parse(&read(&path)?).map_err(|e| anyhow!("{}: {e}", path.display()))
}

/// The safetensors files of a checkpoint: the shards named by the index, else
/// `model.safetensors`, else every `*.safetensors` in the directory.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let v = read_json(&index)?;
        let map = v
            .get("weight_map")
            .and_then(Value::as_object)
            .ok_or_else(|| anyhow!("{}: no weight_map object", index.display()))?;
        let files: BTreeSet<&str> = map.values().filter_map(Value::as_str).collect();
        if files.is_empty() {
            bail!("{}: weight_map names no files", index.display());
        }
        return Ok(files.into_iter().map(|f| dir.join(f)).collect());
    }
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("{}: cannot list", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    found.sort();
    if found.is_empty() {
        bail!("{}: no *.safetensors weights found", dir.display());
    }
    Ok(found)
}

/// Reads every tensor of every file as f32 on `dev`. Errors name the file and tensor.
pub fn weights(files: &[PathBuf], dev: &Device) -> Result<HashMap<String, Tensor>> {
    let mut out = HashMap::new();
    for path in files {
        let file = std::fs::File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
        // SAFETY: read-only map, dropped before this loop iteration ends; every tensor is
        // copied out (converted to f32) while it is alive.
        let bytes = unsafe { memmap2::Mmap::map(&file) }
            .with_context(|| format!("{}: cannot map", path.display()))?;
        let st = safetensors::SafeTensors::deserialize(&bytes)
            .map_err(|e| anyhow!("{}: not a valid safetensors file: {e}", path.display()))?;
        for (name, view) in st.tensors() {
            let t = candle_core::safetensors::Load::load(&view, dev)
                .and_then(|t| t.to_dtype(DType::F32))
                .map_err(|e| anyhow!("{}: tensor {name}: {e}", path.display()))?;
            if out.insert(name.clone(), t).is_some() {
                bail!("{}: tensor {name} is also in an earlier shard; which one is meant?", path.display());
            }
        }
    }
    Ok(out)
}

/// What the tokenizer files say: the chat template and the special tokens' text.
#[derive(Debug, Default, Clone)]
pub struct TokenizerSide {
    pub chat_template: Option<String>,
    /// The file the template came from.
    pub chat_template_source: String,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    /// From generation_config.json, which wins for generation (an int or a list).
    pub generation_eos: Vec<u32>,
}

pub fn tokenizer_side(dir: &Path) -> Result<TokenizerSide> {
    let mut side = TokenizerSide::default();
    let tc = dir.join("tokenizer_config.json");
    if tc.exists() {
        let v = read_json(&tc)?;
        side.chat_template_source = tc.display().to_string();
        side.chat_template = match v.get("chat_template") {
            Some(Value::String(s)) => Some(s.clone()),
            // Named templates: [{"name": "default", "template": "..."}, ...]
            Some(Value::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                .or(list.first())
                .and_then(|t| t.get("template"))
                .and_then(Value::as_str)
                .map(str::to_string),
            _ => None,
        };
        side.bos_token = special_text(v.get("bos_token"));
        side.eos_token = special_text(v.get("eos_token"));
    }
    let jinja = dir.join("chat_template.jinja");
    if jinja.exists() {
        side.chat_template = Some(read(&jinja)?);
        side.chat_template_source = jinja.display().to_string();
    }
    let gen = dir.join("generation_config.json");
    if gen.exists() {
        side.generation_eos = token_ids(read_json(&gen)?.get("eos_token_id"));
    }
    Ok(side)
}

/// A special token is written as a string or as `{"content": "..."}`.
fn special_text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

/// An HF model directory `model/` that `--model` (and transformers) accept. Without a
/// tokenizer (a run on pre-tokenized data) only the config and weights are written.
/// `reading` names the files the weights came from: the directory may not be one of them.
pub fn write_dir(
    dir: &Path,
    cfg: &Config,
    weights: &HashMap<String, Tensor>,
    text: Option<&TextSide>,
    reading: &[&Path],
) -> Result<PathBuf> {
    write_dir_sharded(dir, cfg, weights, text, reading, DEFAULT_SHARD)
}

/// Hugging Face's conventional largest shard (`max_shard_size="5GB"`).
pub const DEFAULT_SHARD: u64 = 5_000_000_000;

/// As [`write_dir`], with the weights in `model-0000k-of-0000n.safetensors` shards of at most
/// `max_shard` bytes (a tensor larger than that gets a shard of its own) and their index
/// when they do not fit one file.
pub fn write_dir_sharded(
    dir: &Path,
    cfg: &Config,
    weights: &HashMap<String, Tensor>,
    text: Option<&TextSide>,
    reading: &[&Path],
    max_shard: u64,
) -> Result<PathBuf> {
    if weights.is_empty() {
        bail!("no weights to write");
    }
    atomic_dir::write(dir, "hf-model", reading, |tmp| {
        let bos = text.and_then(|t| t.bos_token.as_deref().and_then(|b| t.tokenizer.token_to_id(b)));
        let eos = text.map(|t| t.eos_ids.as_slice()).unwrap_or_default();
        std::fs::write(tmp.join("config.json"), serde_json::to_string_pretty(&config_json(cfg, bos, eos))?)?;
        let mut w = weights.clone();
        if cfg.tie_word_embeddings {
            w.remove("lm_head.weight");
        }
        write_shards(tmp, w, max_shard)?;
        let mut gen = json!({"_from_model_config": true});
        if let Some(b) = bos {
            gen["bos_token_id"] = json!(b);
        }
        match eos {
            [] => {}
            [one] => gen["eos_token_id"] = json!(one),
            many => gen["eos_token_id"] = json!(many),
        }
        std::fs::write(tmp.join("generation_config.json"), serde_json::to_string_pretty(&gen)?)?;
        let Some(tok) = text else { return Ok(()) };
        tok.tokenizer.save(tmp.join("tokenizer.json"), false).map_err(|e| anyhow!("tokenizer.json: {e}"))?;
        let tc = json!({"bos_token": tok.bos_token, "eos_token": tok.eos_token, "chat_template": tok.chat_template});
        std::fs::write(tmp.join("tokenizer_config.json"), serde_json::to_string_pretty(&tc)?)?;
        Ok(())
    })
}

/// `model.safetensors`, or shards in name order plus `model.safetensors.index.json`.
fn write_shards(dir: &Path, weights: HashMap<String, Tensor>, max_shard: u64) -> Result<()> {
    let size = |t: &Tensor| (t.elem_count() * t.dtype().size_in_bytes()) as u64;
    let total: u64 = weights.values().map(size).sum();
    if total <= max_shard {
        return atomic_dir::write_tensors(&weights, &dir.join("model.safetensors"));
    }
    let mut names: Vec<&String> = weights.keys().collect();
    names.sort();
    let mut shards: Vec<Vec<&String>> = vec![vec![]];
    let mut used = 0;
    for n in names {
        let s = size(&weights[n]);
        if used + s > max_shard && shards.last().is_some_and(|l| !l.is_empty()) {
            shards.push(vec![]);
            used = 0;
        }
        used += s;
        if let Some(last) = shards.last_mut() {
            last.push(n);
        }
    }
    let count = shards.len();
    let mut map = serde_json::Map::new();
    for (i, shard) in shards.iter().enumerate() {
        let file = format!("model-{:05}-of-{count:05}.safetensors", i + 1);
        let part: HashMap<String, Tensor> =
            shard.iter().map(|n| ((*n).clone(), weights[*n].clone())).collect();
        atomic_dir::write_tensors(&part, &dir.join(&file))?;
        for n in shard {
            map.insert((*n).clone(), Value::String(file.clone()));
        }
    }
    let index = json!({"metadata": {"total_size": total}, "weight_map": map});
    std::fs::write(dir.join("model.safetensors.index.json"), serde_json::to_string_pretty(&index)?)?;
    Ok(())
}
