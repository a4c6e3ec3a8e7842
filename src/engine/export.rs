//! What a run leaves for other tools: a PEFT adapter (`adapter/`) or an HF model directory
//! (`model/`), written atomically; and reading PEFT adapters back.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use candle_core::Tensor;
use serde_json::{json, Value};

use super::checkpoint::save_tensors;
use crate::model::config::Config;
use crate::model::lora::LoraSettings;

use crate::load::peft::PEFT_PREFIX;

/// Writes `dir` by filling a temp sibling and renaming it into place.
fn atomic_dir(dir: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<PathBuf> {
    let parent = dir.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).with_context(|| format!("{}: create", parent.display()))?;
    let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("out");
    let tmp = parent.join(format!(".tmp-{name}"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    std::fs::create_dir(&tmp).with_context(|| format!("{}: create", tmp.display()))?;
    fill(&tmp)?;
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("{}: replace", dir.display()))?;
    }
    std::fs::rename(&tmp, dir).with_context(|| format!("{}: rename", dir.display()))?;
    Ok(dir.to_path_buf())
}

/// A PEFT LoRA adapter: `adapter_config.json` + `adapter_model.safetensors` with keys like
/// `base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`.
pub fn write_adapter(
    dir: &Path,
    s: &LoraSettings,
    tensors: &HashMap<String, Tensor>,
    base: Option<&Path>,
) -> Result<PathBuf> {
    atomic_dir(dir, |tmp| {
        let cfg = json!({
            "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": s.r, "lora_alpha": s.alpha,
            "lora_dropout": s.dropout, "target_modules": s.targets, "use_rslora": s.rslora,
            "use_dora": false, "bias": "none", "fan_in_fan_out": false, "inference_mode": true,
            "init_lora_weights": true, "modules_to_save": null,
            "base_model_name_or_path": base.map(|b| b.display().to_string()),
        });
        std::fs::write(tmp.join("adapter_config.json"), serde_json::to_string_pretty(&cfg)?)?;
        let named = tensors.iter().map(|(k, t)| (format!("{PEFT_PREFIX}{k}"), t.clone())).collect();
        save_tensors(&named, &tmp.join("adapter_model.safetensors"))
    })
}

/// HF `config.json` for a whet [`Config`].
pub fn hf_config_json(c: &Config, bos: Option<u32>, eos: &[u32]) -> Value {
    let mut v = json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size, "intermediate_size": c.intermediate_size,
        "num_hidden_layers": c.num_hidden_layers, "num_attention_heads": c.num_attention_heads,
        "num_key_value_heads": c.num_key_value_heads, "head_dim": c.head_dim, "hidden_act": "silu",
        "rms_norm_eps": c.rms_norm_eps, "rope_theta": c.rope_theta,
        "max_position_embeddings": c.max_position_embeddings, "tie_word_embeddings": c.tie_word_embeddings,
        "attention_bias": c.attention_bias, "mlp_bias": c.mlp_bias, "torch_dtype": "float32",
        "bos_token_id": bos, "eos_token_id": if eos.len() == 1 { json!(eos[0]) } else { json!(eos) },
    });
    if c.attention_bias && !c.o_bias {
        // Qwen2-style: bias on q/k/v only, which only Qwen2's class expresses.
        v["architectures"] = json!(["Qwen2ForCausalLM"]);
        v["model_type"] = json!("qwen2");
    } else if c.o_bias != c.attention_bias {
        tracing::warn!("o_proj bias without q/k/v bias has no HF config spelling");
    }
    if let Some(s) = c.rope_scaling {
        v["rope_scaling"] = json!({"rope_type": "llama3", "factor": s.factor, "low_freq_factor": s.low_freq_factor,
            "high_freq_factor": s.high_freq_factor, "original_max_position_embeddings": s.original_max_position_embeddings});
    }
    v
}

/// The tokenizer side of an HF directory.
pub struct TokenizerFiles<'a> {
    pub tokenizer: &'a tokenizers::Tokenizer,
    pub chat_template: Option<&'a str>,
    pub bos_token: Option<&'a str>,
    pub eos_token: Option<&'a str>,
}

/// An HF model directory `model/` that `--model` (and transformers) accept. Without a
/// tokenizer (a run on pre-tokenized data) only the config and weights are written.
pub fn write_hf_dir(
    dir: &Path,
    cfg: &Config,
    weights: &HashMap<String, Tensor>,
    tok: Option<&TokenizerFiles>,
    eos_ids: &[u32],
) -> Result<PathBuf> {
    if weights.is_empty() {
        bail!("no weights to write");
    }
    atomic_dir(dir, |tmp| {
        let bos = tok.and_then(|t| t.bos_token.and_then(|b| t.tokenizer.token_to_id(b)));
        std::fs::write(
            tmp.join("config.json"),
            serde_json::to_string_pretty(&hf_config_json(cfg, bos, eos_ids))?,
        )?;
        let mut w = weights.clone();
        if cfg.tie_word_embeddings {
            w.remove("lm_head.weight");
        }
        save_tensors(&w, &tmp.join("model.safetensors"))?;
        let Some(tok) = tok else { return Ok(()) };
        tok.tokenizer.save(tmp.join("tokenizer.json"), false).map_err(|e| anyhow!("tokenizer.json: {e}"))?;
        let tc = json!({"bos_token": tok.bos_token, "eos_token": tok.eos_token, "chat_template": tok.chat_template});
        std::fs::write(tmp.join("tokenizer_config.json"), serde_json::to_string_pretty(&tc)?)?;
        Ok(())
    })
}
