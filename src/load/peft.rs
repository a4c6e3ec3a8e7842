//! PEFT LoRA adapters on disk: `adapter_config.json` + `adapter_model.safetensors`, keys like
//! `base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`. Read for `--adapter`,
//! `method.init` and `whet merge`; written at the end of a LoRA run.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use candle_core::{DType, Device, Tensor};
use serde_json::{json, Value};

use super::atomic_dir;

use crate::model::lora::LoraSettings;

pub const PEFT_PREFIX: &str = "base_model.model.";

/// Reads a PEFT LoRA adapter: its settings and tensors under whet's names (prefix stripped).
pub fn read_adapter(dir: &Path, dev: &Device) -> Result<(LoraSettings, HashMap<String, Tensor>)> {
    let cfg_path = dir.join("adapter_config.json");
    let text =
        std::fs::read_to_string(&cfg_path).with_context(|| format!("{}: cannot read", cfg_path.display()))?;
    let v: Value = serde_json::from_str(&text).map_err(|e| anyhow!("{}: {e}", cfg_path.display()))?;
    let err = |m: String| anyhow!("{}: {m}", cfg_path.display());
    if v.get("peft_type").and_then(Value::as_str) != Some("LORA") {
        return Err(err("peft_type is not \"LORA\"".into()));
    }
    if v.get("use_dora").and_then(Value::as_bool) == Some(true) {
        return Err(err("DoRA adapters (use_dora) are not supported".into()));
    }
    let r = v.get("r").and_then(Value::as_u64).ok_or_else(|| err("r is missing".into()))? as usize;
    let alpha = v.get("lora_alpha").and_then(Value::as_f64).unwrap_or(8.0);
    let targets = match v.get("target_modules") {
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).map(String::from).collect(),
        Some(Value::String(s)) => {
            return Err(err(format!("regex target_modules {s:?} are not supported; list the modules")))
        }
        _ => return Err(err("target_modules is missing".into())),
    };
    let settings = LoraSettings {
        r,
        alpha,
        dropout: v.get("lora_dropout").and_then(Value::as_f64).unwrap_or(0.0),
        targets,
        rslora: v.get("use_rslora").and_then(Value::as_bool).unwrap_or(false),
    };
    let st = dir.join("adapter_model.safetensors");
    let raw = candle_core::safetensors::load(&st, dev).map_err(|e| anyhow!("{}: {e}", st.display()))?;
    let mut out = HashMap::new();
    for (k, t) in raw {
        let name = k.strip_prefix(PEFT_PREFIX).unwrap_or(&k).replace(".default.", ".");
        out.insert(name, t.to_dtype(DType::F32)?);
    }
    Ok((settings, out))
}

/// A PEFT LoRA adapter: `adapter_config.json` + `adapter_model.safetensors` with keys like
/// `base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`.
pub fn write_adapter(
    dir: &Path,
    s: &LoraSettings,
    tensors: &HashMap<String, Tensor>,
    base: Option<&Path>,
) -> Result<PathBuf> {
    atomic_dir::write(dir, "peft-adapter", &[], |tmp| {
        let cfg = json!({
            "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": s.r, "lora_alpha": s.alpha,
            "lora_dropout": s.dropout, "target_modules": s.targets, "use_rslora": s.rslora,
            "use_dora": false, "bias": "none", "fan_in_fan_out": false, "inference_mode": true,
            "init_lora_weights": true, "modules_to_save": null,
            "base_model_name_or_path": base.map(|b| b.display().to_string()),
        });
        std::fs::write(tmp.join("adapter_config.json"), serde_json::to_string_pretty(&cfg)?)?;
        let named = tensors.iter().map(|(k, t)| (format!("{PEFT_PREFIX}{k}"), t.clone())).collect();
        atomic_dir::write_tensors(&named, &tmp.join("adapter_model.safetensors"))
    })
}
