//! The run config: the TOML a user writes (`whet train CONFIG.toml`), and what the TUI saves.
//! Unknown keys are rejected with the key's name and the nearest known key. `[data]` and
//! `[tokenizer]` are defined in `data::config`, `[schedule]` in `optim::schedule`: each layer
//! owns the part of the config it reads.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::device::DeviceSpec;
use crate::data::config::{DataConfig, TokenizerConfig};
use crate::model::lora::LoraSettings;
use crate::model::quant::QuantKind;
use crate::model::{Kernels, Precision};
use crate::optim::SchedulePlan;
use crate::spelling::add_suggestion;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    pub model: ModelConfig,
    #[serde(default)]
    pub method: MethodConfig,
    pub data: DataConfig,
    #[serde(default)]
    pub tokenizer: TokenizerConfig,
    #[serde(default)]
    pub optim: OptimConfig,
    #[serde(default)]
    pub schedule: SchedulePlan,
    #[serde(default)]
    pub run: RunSection,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// An HF directory or a .gguf file.
    pub path: Option<PathBuf>,
    /// A from-scratch architecture (pretraining).
    pub arch: Option<ArchConfig>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchConfig {
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub intermediate: usize,
    /// Defaults to the tokenizer's vocabulary size.
    pub vocab: Option<usize>,
    #[serde(default = "default_theta")]
    pub rope_theta: f64,
    pub max_seq: usize,
    #[serde(default = "default_init_range")]
    pub initializer_range: f64,
    #[serde(default = "yes")]
    pub tie_embeddings: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MethodKind {
    Pretrain,
    #[default]
    Full,
    Lora,
    /// LoRA over a frozen quantized base (`method.quant`).
    Qlora,
}

impl MethodKind {
    /// LoRA and QLoRA: adapters train, the base is frozen.
    pub fn is_lora(self) -> bool {
        matches!(self, Self::Lora | Self::Qlora)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MethodConfig {
    #[serde(default)]
    pub kind: MethodKind,
    #[serde(default = "default_r")]
    pub r: usize,
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    #[serde(default)]
    pub dropout: f64,
    #[serde(default = "default_targets")]
    pub targets: Vec<String>,
    #[serde(default)]
    pub rslora: bool,
    /// An existing PEFT adapter directory to continue training from.
    pub init: Option<PathBuf>,
    /// QLoRA's base type: nf4, a GGUF type, or keep (a GGUF's own; the default for a GGUF).
    #[serde(default)]
    pub quant: Option<QuantKind>,
}

impl Default for MethodConfig {
    fn default() -> Self {
        Self {
            kind: MethodKind::Full,
            r: default_r(),
            alpha: default_alpha(),
            dropout: 0.0,
            targets: default_targets(),
            rslora: false,
            init: None,
            quant: None,
        }
    }
}

impl MethodConfig {
    /// QLoRA's base type for the model at `path`: as set, else keep for a GGUF, nf4 otherwise.
    pub fn quant_for(&self, path: &std::path::Path) -> QuantKind {
        self.quant.unwrap_or(if crate::load::is_gguf(path) { QuantKind::Keep } else { QuantKind::Nf4 })
    }

    pub fn lora(&self) -> LoraSettings {
        LoraSettings {
            r: self.r,
            alpha: self.alpha,
            dropout: self.dropout,
            targets: self.targets.clone(),
            rslora: self.rslora,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimConfig {
    #[serde(default)]
    pub weight_decay: f64,
    #[serde(default = "default_betas")]
    pub betas: [f64; 2],
    #[serde(default = "default_eps")]
    pub eps: f64,
    #[serde(default = "default_clip")]
    pub grad_clip: f64,
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    #[serde(default = "one_usize")]
    pub grad_accum: usize,
    pub max_steps: Option<u64>,
    pub epochs: Option<f64>,
    #[serde(default = "default_seed")]
    pub seed: u64,
    #[serde(default)]
    pub dropout: f64,
    /// Activation checkpointing per block (`model::recompute`): each block's activations are
    /// recomputed in the backward instead of kept, for less memory and about a third more
    /// compute. The arithmetic is the same, so it may change on resume.
    #[serde(default)]
    pub gradient_checkpointing: bool,
}

impl Default for OptimConfig {
    fn default() -> Self {
        Self {
            weight_decay: 0.0,
            betas: default_betas(),
            eps: default_eps(),
            grad_clip: default_clip(),
            batch_size: default_batch(),
            grad_accum: 1,
            max_steps: None,
            epochs: None,
            seed: default_seed(),
            dropout: 0.0,
            gradient_checkpointing: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSection {
    #[serde(default = "default_out")]
    pub out_dir: PathBuf,
    #[serde(default)]
    pub eval_every: u64,
    #[serde(default)]
    pub save_every: u64,
    #[serde(default = "default_keep")]
    pub keep_last: usize,
    #[serde(default)]
    pub early_stopping_patience: u64,
    #[serde(default = "default_bad")]
    pub max_bad_steps: u64,
    /// `fused` or `composed` kernels: how the step is computed, not what, so it may change
    /// when a run is resumed; `composed` reproduces an older whet's numbers bit for bit.
    #[serde(default)]
    pub kernels: Kernels,
    /// `cpu`, `cuda` or `cuda:N`; absent, the first GPU when there is one, else the CPU.
    /// `--device` on the command line takes precedence. Like `kernels`, it may change on resume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<DeviceSpec>,
    /// `f32`, or `bf16` mixed precision: bf16 weights, activations and matmuls over f32 master
    /// weights and AdamW moments (see `model::config::Precision`). Like `kernels`, it may change
    /// on resume: a checkpoint holds the f32 master weights either way.
    #[serde(default)]
    pub dtype: Precision,
}

impl Default for RunSection {
    fn default() -> Self {
        Self {
            out_dir: default_out(),
            eval_every: 0,
            save_every: 0,
            keep_last: default_keep(),
            early_stopping_patience: 0,
            max_bad_steps: default_bad(),
            kernels: Kernels::default(),
            device: None,
            dtype: Precision::default(),
        }
    }
}

fn default_theta() -> f64 {
    10000.0
}
fn default_init_range() -> f64 {
    0.02
}
fn yes() -> bool {
    true
}
fn default_r() -> usize {
    16
}
fn default_alpha() -> f64 {
    32.0
}
fn default_targets() -> Vec<String> {
    ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"].map(String::from).to_vec()
}
fn default_betas() -> [f64; 2] {
    [0.9, 0.999]
}
fn default_eps() -> f64 {
    1e-8
}
fn default_clip() -> f64 {
    1.0
}
fn default_batch() -> usize {
    8
}
fn one_usize() -> usize {
    1
}
fn default_seed() -> u64 {
    42
}
fn default_out() -> PathBuf {
    PathBuf::from("runs/run")
}
fn default_keep() -> usize {
    3
}
fn default_bad() -> u64 {
    10
}

impl RunConfig {
    /// This (saved) config continued with `new`'s length, `[run]` and gradient checkpointing:
    /// all a resumed run may change, since its data order and model depend on the rest.
    pub fn continued_as(&self, new: &RunConfig) -> RunConfig {
        let mut c = self.clone();
        c.run = new.run.clone();
        c.optim.max_steps = new.optim.max_steps;
        c.optim.epochs = new.optim.epochs;
        c.optim.gradient_checkpointing = new.optim.gradient_checkpointing;
        c
    }

    /// Parses TOML; an unknown key's error names it and suggests the nearest known key. Every
    /// number is then checked for range ([`RunConfig::validate`]).
    pub fn from_toml(text: &str) -> Result<Self, String> {
        let cfg: Self = toml::from_str(text).map_err(|e| {
            let msg = e.to_string();
            add_suggestion(&msg).unwrap_or(msg)
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Every number in range, named by its key: NaN, infinities and out-of-range values are
    /// refused here instead of training a model whose every probability is NaN.
    pub fn validate(&self) -> Result<(), String> {
        let (o, m, d) = (&self.optim, &self.method, &self.data);
        let check = |key: &str, v: f64, ok: bool, want: &str| {
            if v.is_finite() && ok {
                Ok(())
            } else {
                Err(format!("{key} = {v}: must be {want}"))
            }
        };
        check("optim.weight_decay", o.weight_decay, o.weight_decay >= 0.0, "a finite number ≥ 0")?;
        for (i, b) in o.betas.iter().enumerate() {
            check(&format!("optim.betas[{i}]"), *b, (0.0..1.0).contains(b), "in [0, 1)")?;
        }
        check("optim.eps", o.eps, o.eps > 0.0, "a finite number > 0")?;
        check(
            "optim.grad_clip",
            o.grad_clip,
            o.grad_clip >= 0.0,
            "a finite number ≥ 0 (0 turns clipping off)",
        )?;
        check("optim.dropout", o.dropout, (0.0..1.0).contains(&o.dropout), "in [0, 1)")?;
        if let Some(e) = o.epochs {
            check("optim.epochs", e, e > 0.0, "a finite number > 0")?;
        }
        check("method.alpha", m.alpha, m.alpha > 0.0, "a finite number > 0")?;
        check("method.dropout", m.dropout, (0.0..1.0).contains(&m.dropout), "in [0, 1)")?;
        check("data.eval_fraction", d.eval_fraction, (0.0..1.0).contains(&d.eval_fraction), "in [0, 1)")?;
        let counts = [
            ("optim.batch_size", o.batch_size as u64),
            ("optim.grad_accum", o.grad_accum as u64),
            ("method.r", m.r as u64),
            ("data.seq_len", d.seq_len as u64),
        ];
        for (key, v) in counts.into_iter().chain(o.max_steps.map(|s| ("optim.max_steps", s))) {
            if v == 0 {
                return Err(format!("{key} = 0: must be at least 1"));
            }
        }
        let vocab = self.tokenizer.vocab_size;
        if vocab > crate::model::config::MAX_VOCAB {
            return Err(format!(
                "tokenizer.vocab_size = {vocab}: over whet's limit of {}",
                crate::model::config::MAX_VOCAB
            ));
        }
        Ok(())
    }

    /// The config as TOML, as `config.toml` in a run directory holds it.
    pub fn to_toml(&self) -> Result<String, String> {
        toml::to_string_pretty(self).map_err(|e| format!("the run config cannot be written as TOML: {e}"))
    }

    /// Applies `key=value` overrides (`--set optim.batch_size=4`): the value is parsed as TOML,
    /// or taken as a string when that fails.
    pub fn with_overrides(text: &str, sets: &[String]) -> Result<Self, String> {
        // Parsed as written when nothing overrides it, so errors point at the file's own lines
        // (the merged document is re-serialized and its lines are not the file's).
        let own = Self::from_toml(text);
        if sets.is_empty() {
            return own;
        }
        let merged = Self::merged(text, sets);
        match (own, merged) {
            (_, Ok(c)) => Ok(c),
            // The same fault with and without the overrides: the file's own lines are right.
            (Err(e), Err(m)) if e.lines().last() == m.lines().last() => Err(e),
            (_, Err(e)) => Err(format!("with the --set overrides: {e}")),
        }
    }

    fn merged(text: &str, sets: &[String]) -> Result<Self, String> {
        let mut doc: toml::Table = text.parse().map_err(|e: toml::de::Error| e.to_string())?;
        for s in sets {
            let (key, raw) = s.split_once('=').ok_or_else(|| format!("--set {s:?}: expected key=value"))?;
            let value = format!("v = {raw}")
                .parse::<toml::Table>()
                .ok()
                .and_then(|mut t| t.remove("v"))
                .unwrap_or_else(|| toml::Value::String(raw.to_string()));
            let mut table = &mut doc;
            let parts: Vec<&str> = key.trim().split('.').collect();
            for p in &parts[..parts.len() - 1] {
                let entry =
                    table.entry(p.to_string()).or_insert_with(|| toml::Value::Table(Default::default()));
                table = entry.as_table_mut().ok_or_else(|| format!("--set {key}: {p} is not a table"))?;
            }
            table.insert(parts[parts.len() - 1].to_string(), value);
        }
        Self::from_toml(&toml::to_string(&doc).map_err(|e| e.to_string())?)
    }
}
