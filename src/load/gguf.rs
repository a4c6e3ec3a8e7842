//! GGUF (llama.cpp) checkpoints → HF-named f32 weights and a [`Config`].
//!
//! llama.cpp's converter permutes the Q and K rows of `llama`-arch models so that its
//! interleaved rope applies (`convert_hf_to_gguf.py`, `LlamaModel.permute`). We undo that
//! permutation here, so the model runs HF's rotate-half rope and the weights are HF's own, which
//! is what a merge or export back to HF needs. `qwen2`-arch files are not permuted (llama.cpp
//! uses NEOX rope for them).

use std::collections::HashMap;

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{Device, Tensor};

use super::gguf_file::{GgufFile, Value};
use crate::model::config::{Config, RopeLayout};

/// The architectures we map (`general.architecture`).
const ARCHS: &[&str] = &["llama", "qwen2"];

pub fn config(g: &GgufFile) -> Result<Config> {
    let file = g.path.display().to_string();
    let arch = g
        .get("general.architecture")
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("{file}: metadata general.architecture is missing"))?;
    if !ARCHS.contains(&arch) {
        bail!("{file}: architecture {arch:?} is not supported (supported: {})", ARCHS.join(", "));
    }
    let key = |k: &str| format!("{arch}.{k}");
    let uint = |k: &str| -> Result<usize> {
        g.get(&key(k))
            .and_then(Value::as_u64)
            .map(|v| v as usize)
            .ok_or_else(|| anyhow!("{file}: metadata {} is missing or not an integer", key(k)))
    };
    let hidden = uint("embedding_length")?;
    let heads = uint("attention.head_count")?;
    let embd = g
        .tensor_info("token_embd.weight")
        .ok_or_else(|| anyhow!("{file}: tensor token_embd.weight is missing"))?;
    let vocab = match uint("vocab_size") {
        Ok(v) => v,
        Err(_) => embd.shape[0],
    };
    let head_dim = uint("rope.dimension_count")
        .or_else(|_| uint("attention.key_length"))
        .unwrap_or(hidden / heads.max(1));
    if g.tensor_info("rope_freqs.weight").is_some() {
        bail!("{file}: tensor rope_freqs.weight (scaled rope frequencies) is not supported yet");
    }
    let cfg = Config {
        vocab_size: vocab,
        hidden_size: hidden,
        intermediate_size: uint("feed_forward_length")?,
        num_hidden_layers: uint("block_count")?,
        num_attention_heads: heads,
        num_key_value_heads: uint("attention.head_count_kv").unwrap_or(heads),
        head_dim,
        rms_norm_eps: g.get(&key("attention.layer_norm_rms_epsilon")).and_then(Value::as_f64).unwrap_or(1e-5),
        rope_theta: g.get(&key("rope.freq_base")).and_then(Value::as_f64).unwrap_or(10000.0),
        rope_layout: RopeLayout::Half,
        rope_scaling: None,
        max_position_embeddings: uint("context_length").unwrap_or(2048),
        tie_word_embeddings: g.tensor_info("output.weight").is_none(),
        attention_bias: arch == "qwen2",
        o_bias: false,
        mlp_bias: false,
        kernels: Default::default(),
        precision: Default::default(),
    };
    cfg.validate().map_err(|e| anyhow!("{file}: {e}"))?;
    Ok(cfg)
}

/// (GGUF, HF) names of the whole-model tensors.
const GLOBAL_NAMES: [(&str, &str); 3] = [
    ("token_embd.weight", "model.embed_tokens.weight"),
    ("output_norm.weight", "model.norm.weight"),
    ("output.weight", "lm_head.weight"),
];

/// (GGUF, HF) module names inside a block (`blk.N.` / `model.layers.N.`).
const LAYER_NAMES: [(&str, &str); 9] = [
    ("attn_q", "self_attn.q_proj"),
    ("attn_k", "self_attn.k_proj"),
    ("attn_v", "self_attn.v_proj"),
    ("attn_output", "self_attn.o_proj"),
    ("ffn_gate", "mlp.gate_proj"),
    ("ffn_up", "mlp.up_proj"),
    ("ffn_down", "mlp.down_proj"),
    ("attn_norm", "input_layernorm"),
    ("ffn_norm", "post_attention_layernorm"),
];

/// Renames with the tables above: `to_hf` maps GGUF → HF, else HF → GGUF.
fn rename(name: &str, to_hf: bool) -> Option<String> {
    let pick = |p: &(&'static str, &'static str)| if to_hf { (p.0, p.1) } else { (p.1, p.0) };
    if let Some((_, to)) = GLOBAL_NAMES.iter().map(pick).find(|(from, _)| *from == name) {
        return Some(to.to_string());
    }
    let (prefix, new_prefix) = if to_hf { ("blk.", "model.layers.") } else { ("model.layers.", "blk.") };
    let (layer, rest) = name.strip_prefix(prefix)?.split_once('.')?;
    let (module, suffix) = rest.rsplit_once('.')?;
    let (_, to) = LAYER_NAMES.iter().map(pick).find(|(from, _)| *from == module)?;
    Some(format!("{new_prefix}{layer}.{to}.{suffix}"))
}

/// GGUF tensor name → HF name, for the names we know.
pub fn hf_name(name: &str) -> Option<String> {
    rename(name, true)
}

/// HF name → GGUF name: the inverse of [`hf_name`].
pub fn gguf_name(name: &str) -> Option<String> {
    rename(name, false)
}

/// Undoes llama.cpp's Q/K row permutation: rows (h, j, p) back to (h, p, j), with
/// h a head, p the half (0 or 1) and j in 0..hs/2.
pub fn unpermute(w: &Tensor, n_head: usize) -> candle_core::Result<Tensor> {
    let dims = w.dims().to_vec();
    let rows = dims[0];
    let hs = rows / n_head;
    let rest: usize = dims[1..].iter().product();
    // (rows, rest) -> (nh, hs/2, 2, rest) -> (nh, 2, hs/2, rest) -> original shape
    w.reshape((n_head, hs / 2, 2, rest))?.transpose(1, 2)?.contiguous()?.reshape(dims)
}

/// llama.cpp's converter permutation (`LlamaModel.permute`): rows (h, p, j) to (h, j, p),
/// so HF's rotate-half pairs become ggml's interleaved ones. The inverse of [`unpermute`].
pub fn permute(w: &Tensor, n_head: usize) -> candle_core::Result<Tensor> {
    let dims = w.dims().to_vec();
    let hs = dims[0] / n_head;
    let rest: usize = dims[1..].iter().product();
    // (rows, rest) -> (nh, 2, hs/2, rest) -> (nh, hs/2, 2, rest) -> original shape
    w.reshape((n_head, 2, hs / 2, rest))?.transpose(1, 2)?.contiguous()?.reshape(dims)
}

/// The file's `general.architecture`.
pub fn arch(g: &GgufFile) -> &str {
    g.get("general.architecture").and_then(Value::as_str).unwrap_or("")
}

/// How many heads llama.cpp permutes the rows of HF tensor `name` over in a model of
/// architecture `arch` (q and k of `llama`; none of `qwen2`, which keeps NEOX rope).
pub fn permuted_heads(arch: &str, cfg: &Config, name: &str) -> Option<usize> {
    match () {
        _ if arch != "llama" => None,
        _ if name.contains(".q_proj.") => Some(cfg.num_attention_heads),
        _ if name.contains(".k_proj.") => Some(cfg.num_key_value_heads),
        _ => None,
    }
}

/// [`unpermute`] on whole rows of bytes: a quantized row is its own run of blocks, so the
/// row order can be undone without dequantizing. `rows` rows of `data.len() / rows` bytes.
pub(crate) fn unpermute_rows(data: &[u8], rows: usize, n_head: usize) -> Vec<u8> {
    let row = data.len() / rows;
    let hs = rows / n_head;
    let mut out = Vec::with_capacity(data.len());
    // Output row (h, p, j) is input row (h, j, p).
    for h in 0..n_head {
        for p in 0..2 {
            for j in 0..hs / 2 {
                let src = h * hs + j * 2 + p;
                out.extend_from_slice(&data[src * row..(src + 1) * row]);
            }
        }
    }
    out
}

/// Dequantizes every known tensor to f32, under HF names.
pub fn weights(g: &GgufFile, cfg: &Config, dev: &Device) -> Result<HashMap<String, Tensor>> {
    let file = g.path.display().to_string();
    let mut out = HashMap::new();
    for info in &g.tensors {
        let Some(name) = hf_name(&info.name) else {
            tracing::warn!("{file}: ignoring unknown tensor {}", info.name);
            continue;
        };
        let mut t = g.dequantize(info, dev)?;
        if let Some(h) = permuted_heads(arch(g), cfg, &name) {
            t = unpermute(&t, h).with_context(|| format!("{file}: tensor {}", info.name))?;
        }
        out.insert(name, t);
    }
    Ok(out)
}
