//! What a model file is, from its headers alone (no weights read): for the workbench's model
//! list, where a broken file shows its reason instead of its details.

use std::path::Path;

use super::gguf_file::GgufFile;
use super::hf;
use crate::model::Config;

/// A model's architecture and sizes, as the Models pane shows them.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSummary {
    pub arch: String,
    pub params: u64,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub vocab: usize,
    pub context: usize,
    /// "f32", "bf16", "Q4_1+Q8_0", …
    pub dtype: String,
    pub size_bytes: u64,
    pub chat_template: bool,
}

/// Reads headers only (no weights): architecture, sizes, dtype, chat template.
pub fn inspect(path: &Path) -> anyhow::Result<ModelSummary> {
    if super::is_gguf(path) {
        let g = GgufFile::open(path)?;
        let cfg = super::gguf::config(&g)?;
        let params: u64 = g.tensors.iter().map(|t| t.shape.iter().product::<usize>() as u64).sum();
        let mut kinds: Vec<String> = g.tensors.iter().map(|t| format!("{:?}", t.dtype)).collect();
        kinds.sort();
        kinds.dedup();
        let arch = g.get("general.architecture").and_then(|v| v.as_str()).unwrap_or("?").to_string();
        let size = std::fs::metadata(path)?.len();
        Ok(details(arch, params, &cfg, kinds.join("+"), size, g.get("tokenizer.chat_template").is_some()))
    } else if path.is_dir() {
        let hc = hf::config(path)?;
        let cfg =
            hc.to_config().map_err(|e| anyhow::anyhow!("{}: {e}", path.join("config.json").display()))?;
        let files = hf::weight_files(path)?;
        let mut params = 0u64;
        let mut size = 0u64;
        for f in &files {
            let meta = std::fs::metadata(f).map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?;
            size += meta.len();
            params += safetensors_params(f)?;
        }
        let chat = hf::tokenizer_side(path)?.chat_template.is_some();
        Ok(details(hc.arch(), params, &cfg, hc.dtype.clone().unwrap_or_else(|| "?".into()), size, chat))
    } else {
        anyhow::bail!("{}: not a model", path.display())
    }
}

fn details(
    arch: String,
    params: u64,
    cfg: &Config,
    dtype: String,
    size_bytes: u64,
    chat_template: bool,
) -> ModelSummary {
    ModelSummary {
        arch,
        params,
        layers: cfg.num_hidden_layers,
        heads: cfg.num_attention_heads,
        kv_heads: cfg.num_key_value_heads,
        vocab: cfg.vocab_size,
        context: cfg.max_position_embeddings,
        dtype,
        size_bytes,
        chat_template,
    }
}

/// Parameter count from a safetensors header, reading only the header.
fn safetensors_params(path: &Path) -> anyhow::Result<u64> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let n = u64::from_le_bytes(len);
    if n > 100 << 20 || n > f.metadata()?.len() {
        anyhow::bail!("{}: safetensors header length {n} is out of range", path.display());
    }
    let mut buf = vec![0u8; n as usize];
    f.read_exact(&mut buf).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let v: serde_json::Value =
        serde_json::from_slice(&buf).map_err(|e| anyhow::anyhow!("{}: bad header: {e}", path.display()))?;
    let obj = v.as_object().ok_or_else(|| anyhow::anyhow!("{}: header is not an object", path.display()))?;
    Ok(obj
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .filter_map(|(_, t)| {
            t.get("shape")?.as_array().map(|s| s.iter().filter_map(|d| d.as_u64()).product::<u64>())
        })
        .sum())
}
