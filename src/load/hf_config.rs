//! HF `config.json` → [`Config`], accepting both transformers v4 and v5 spellings
//! (`torch_dtype` / `dtype`, top-level `rope_theta` + `rope_scaling` / `rope_parameters`).

use serde::Deserialize;
use serde_json::{json, Value};

use crate::model::config::{Config, Llama3RopeScaling, RopeLayout};

/// The architectures whose checkpoints this model family loads as they are.
pub const SUPPORTED_ARCHS: &[&str] = &["LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM"];

#[derive(Debug, Deserialize)]
pub struct HfConfig {
    #[serde(default)]
    pub architectures: Vec<String>,
    #[serde(default)]
    pub model_type: Option<String>,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    #[serde(default)]
    pub head_dim: Option<usize>,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    #[serde(default)]
    pub rope_theta: Option<f64>,
    #[serde(default)]
    pub rope_scaling: Option<Value>,
    /// transformers v5 folds `rope_theta` and `rope_scaling` into this.
    #[serde(default)]
    pub rope_parameters: Option<Value>,
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub tie_word_embeddings: Option<bool>,
    #[serde(default)]
    pub attention_bias: Option<bool>,
    #[serde(default)]
    pub mlp_bias: Option<bool>,
    #[serde(default)]
    pub hidden_act: Option<String>,
    #[serde(default, alias = "torch_dtype")]
    pub dtype: Option<String>,
    #[serde(default)]
    pub bos_token_id: Option<Value>,
    #[serde(default)]
    pub eos_token_id: Option<Value>,
}

fn default_eps() -> f64 {
    1e-6
}

fn default_max_pos() -> usize {
    2048
}

impl HfConfig {
    pub fn parse(text: &str) -> Result<Self, String> {
        serde_json::from_str(text).map_err(|e| e.to_string())
    }

    pub fn arch(&self) -> String {
        self.architectures.first().cloned().unwrap_or_else(|| "LlamaForCausalLM".into())
    }

    fn is_qwen2(&self) -> bool {
        self.arch() == "Qwen2ForCausalLM" || self.model_type.as_deref() == Some("qwen2")
    }

    pub fn to_config(&self) -> Result<Config, String> {
        let arch = self.arch();
        if !SUPPORTED_ARCHS.contains(&arch.as_str()) {
            return Err(format!(
                "architecture {arch} is not supported (supported: {})",
                SUPPORTED_ARCHS.join(", ")
            ));
        }
        if let Some(act) = &self.hidden_act {
            if act != "silu" {
                return Err(format!("hidden_act {act:?} is not supported (only silu)"));
            }
        }
        let rope = self.rope_parameters.as_ref().or(self.rope_scaling.as_ref());
        let theta = self
            .rope_theta
            .or_else(|| rope.and_then(|r| r.get("rope_theta")).and_then(Value::as_f64))
            .unwrap_or(10000.0);
        let cfg = Config {
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_hidden_layers: self.num_hidden_layers,
            num_attention_heads: self.num_attention_heads,
            num_key_value_heads: self.num_key_value_heads.unwrap_or(self.num_attention_heads),
            head_dim: self.head_dim.unwrap_or(self.hidden_size / self.num_attention_heads.max(1)),
            rms_norm_eps: self.rms_norm_eps,
            rope_theta: theta,
            rope_layout: RopeLayout::Half,
            rope_scaling: rope.map(parse_rope_scaling).transpose()?.flatten(),
            max_position_embeddings: self.max_position_embeddings,
            tie_word_embeddings: self.tie_word_embeddings.unwrap_or(false),
            // Qwen2 always has q/k/v bias and its config does not say so.
            attention_bias: self.attention_bias.unwrap_or(self.is_qwen2()),
            o_bias: self.attention_bias.unwrap_or(false) && !self.is_qwen2(),
            mlp_bias: self.mlp_bias.unwrap_or(false),
            kernels: Default::default(),
            precision: Default::default(),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// EOS ids: `eos_token_id` may be an int or a list.
    pub fn eos_ids(&self) -> Vec<u32> {
        token_ids(self.eos_token_id.as_ref())
    }

    pub fn bos_id(&self) -> Option<u32> {
        token_ids(self.bos_token_id.as_ref()).first().copied()
    }
}

/// Reads an int, a list of ints or null.
pub fn token_ids(v: Option<&Value>) -> Vec<u32> {
    match v {
        Some(Value::Number(n)) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        Some(Value::Array(a)) => a.iter().filter_map(|x| x.as_u64().map(|x| x as u32)).collect(),
        _ => vec![],
    }
}

fn parse_rope_scaling(v: &Value) -> Result<Option<Llama3RopeScaling>, String> {
    let kind = v.get("rope_type").or_else(|| v.get("type")).and_then(Value::as_str);
    match kind {
        None | Some("default") => Ok(None),
        Some("llama3") => {
            let num = |k: &str| {
                v.get(k).and_then(Value::as_f64).ok_or_else(|| format!("rope scaling llama3 needs {k}"))
            };
            Ok(Some(Llama3RopeScaling {
                factor: num("factor")?,
                low_freq_factor: num("low_freq_factor")?,
                high_freq_factor: num("high_freq_factor")?,
                original_max_position_embeddings: num("original_max_position_embeddings")? as usize,
            }))
        }
        Some(other) => Err(format!("rope scaling type {other:?} is not supported (default, llama3)")),
    }
}

/// HF `config.json` for a whet [`Config`] (what `hf::write_dir` writes).
pub fn config_json(c: &Config, bos: Option<u32>, eos: &[u32]) -> Value {
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

#[cfg(test)]
mod tests {
    use super::*;

    const V4: &str = r#"{"architectures":["LlamaForCausalLM"],"vocab_size":100,"hidden_size":64,
        "intermediate_size":128,"num_hidden_layers":2,"num_attention_heads":8,"num_key_value_heads":2,
        "rope_theta":500000.0,"torch_dtype":"bfloat16","tie_word_embeddings":true,
        "rope_scaling":{"rope_type":"llama3","factor":8.0,"low_freq_factor":1.0,"high_freq_factor":4.0,
        "original_max_position_embeddings":8192},"eos_token_id":[128001,128009],"bos_token_id":128000}"#;

    const V5: &str = r#"{"architectures":["Qwen2ForCausalLM"],"vocab_size":100,"hidden_size":64,
        "intermediate_size":128,"num_hidden_layers":2,"num_attention_heads":8,"num_key_value_heads":2,
        "dtype":"float32","rope_parameters":{"rope_theta":1000000.0,"rope_type":"default"},"eos_token_id":7}"#;

    #[test]
    fn v4_spellings() {
        let h = HfConfig::parse(V4).unwrap();
        let c = h.to_config().unwrap();
        assert_eq!(c.rope_theta, 500000.0);
        assert_eq!(c.head_dim, 8);
        assert!(c.tie_word_embeddings && !c.attention_bias);
        assert_eq!(c.rope_scaling.unwrap().original_max_position_embeddings, 8192);
        assert_eq!(h.dtype.as_deref(), Some("bfloat16"));
        assert_eq!(h.eos_ids(), vec![128001, 128009]);
        assert_eq!(h.bos_id(), Some(128000));
    }

    #[test]
    fn v5_spellings_and_qwen2_bias() {
        let h = HfConfig::parse(V5).unwrap();
        let c = h.to_config().unwrap();
        assert_eq!(c.rope_theta, 1000000.0);
        assert!(c.rope_scaling.is_none());
        assert!(c.attention_bias && !c.o_bias);
        assert_eq!(h.dtype.as_deref(), Some("float32"));
        assert_eq!(h.eos_ids(), vec![7]);
    }

    #[test]
    fn rejects_what_it_cannot_run() {
        let bad_arch = V5.replace("Qwen2ForCausalLM", "GPT2LMHeadModel");
        assert!(HfConfig::parse(&bad_arch).unwrap().to_config().unwrap_err().contains("GPT2LMHeadModel"));
        let bad_heads = V5.replace("\"num_key_value_heads\":2", "\"num_key_value_heads\":3");
        assert!(HfConfig::parse(&bad_heads)
            .unwrap()
            .to_config()
            .unwrap_err()
            .contains("num_key_value_heads"));
        let bad_rope = V4.replace("llama3", "yarn");
        assert!(HfConfig::parse(&bad_rope).unwrap().to_config().unwrap_err().contains("yarn"));
    }
}
