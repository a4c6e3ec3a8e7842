//! The run config: the TOML a user writes (`whet train CONFIG.toml`), and what the TUI saves.
//! Unknown keys are rejected with the key's name and the nearest known key.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::model::lora::LoraSettings;
use crate::optim::schedule::{DecayType, Schedule, ScheduleKind};

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
    pub schedule: ScheduleConfig,
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
        }
    }
}

impl MethodConfig {
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataFormat {
    #[default]
    Text,
    Tokens,
    Alpaca,
    Chat,
    PromptCompletion,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TooLong {
    Drop,
    #[default]
    Truncate,
    Error,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenDtype {
    #[default]
    U16,
    U32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    pub train: PathBuf,
    pub eval: Option<PathBuf>,
    #[serde(default)]
    pub eval_fraction: f64,
    #[serde(default)]
    pub format: DataFormat,
    #[serde(default = "default_seq")]
    pub seq_len: usize,
    #[serde(default = "yes")]
    pub packing: bool,
    #[serde(default = "yes")]
    pub shuffle: bool,
    #[serde(default)]
    pub too_long: TooLong,
    #[serde(default)]
    pub train_on_prompt: bool,
    #[serde(default)]
    pub skip_invalid: bool,
    /// For `format = "tokens"` files without an llm.c header.
    #[serde(default)]
    pub token_dtype: TokenDtype,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenizerConfig {
    /// An existing tokenizer.json; otherwise pretraining trains one.
    pub path: Option<PathBuf>,
    #[serde(default = "default_vocab")]
    pub vocab_size: usize,
    #[serde(default = "default_specials")]
    pub special_tokens: Vec<String>,
}

impl Default for TokenizerConfig {
    fn default() -> Self {
        Self { path: None, vocab_size: default_vocab(), special_tokens: default_specials() }
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
        }
    }
}

/// The schedule as the user writes it; `resolve` turns it into a [`Schedule`] once the total
/// number of steps is known. `SetSchedule` carries one of these.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    #[serde(default = "default_kind")]
    pub kind: String,
    #[serde(default = "default_lr")]
    pub lr: f64,
    pub warmup_steps: Option<u64>,
    pub warmup_ratio: Option<f64>,
    pub min_lr: Option<f64>,
    pub num_cycles: Option<f64>,
    pub stable_steps: Option<u64>,
    pub decay_steps: Option<u64>,
    pub decay_type: Option<DecayType>,
    pub min_lr_ratio: Option<f64>,
    pub timescale: Option<u64>,
    pub lr_end: Option<f64>,
    pub power: Option<f64>,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        Self {
            kind: default_kind(),
            lr: default_lr(),
            warmup_steps: None,
            warmup_ratio: None,
            min_lr: None,
            num_cycles: None,
            stable_steps: None,
            decay_steps: None,
            decay_type: None,
            min_lr_ratio: None,
            timescale: None,
            lr_end: None,
            power: None,
        }
    }
}

pub const SCHEDULE_KINDS: &[&str] = &[
    "constant",
    "linear",
    "cosine",
    "cosine_with_min_lr",
    "cosine_with_restarts",
    "wsd",
    "inverse_sqrt",
    "polynomial",
];

impl ScheduleConfig {
    pub fn resolve(&self, total_steps: u64) -> Result<Schedule, String> {
        let warmup = match (self.warmup_steps, self.warmup_ratio) {
            (Some(w), _) => w,
            (None, Some(r)) if (0.0..=1.0).contains(&r) => (r * total_steps as f64).ceil() as u64,
            (None, Some(r)) => return Err(format!("warmup_ratio ({r}) must be in [0, 1]")),
            (None, None) => 0,
        };
        let kind = match self.kind.as_str() {
            "constant" => ScheduleKind::Constant,
            "linear" => ScheduleKind::Linear,
            "cosine" => ScheduleKind::Cosine { num_cycles: self.num_cycles.unwrap_or(0.5) },
            "cosine_with_min_lr" => ScheduleKind::CosineWithMinLr {
                num_cycles: self.num_cycles.unwrap_or(0.5),
                min_lr: self.min_lr.ok_or("cosine_with_min_lr needs min_lr")?,
            },
            "cosine_with_restarts" => {
                ScheduleKind::CosineWithRestarts { num_cycles: self.num_cycles.unwrap_or(1.0) }
            }
            "wsd" => {
                let decay = self.decay_steps.unwrap_or(total_steps.saturating_sub(warmup) / 10);
                ScheduleKind::Wsd {
                    stable_steps: self.stable_steps.unwrap_or(total_steps.saturating_sub(warmup + decay)),
                    decay_steps: decay,
                    decay_type: self.decay_type.unwrap_or_default(),
                    min_lr_ratio: self.min_lr_ratio.or(self.min_lr.map(|m| m / self.lr)).unwrap_or(0.0),
                }
            }
            "inverse_sqrt" => ScheduleKind::InverseSqrt { timescale: self.timescale },
            "polynomial" => ScheduleKind::Polynomial {
                lr_end: self.lr_end.or(self.min_lr).unwrap_or(1e-7),
                power: self.power.unwrap_or(1.0),
            },
            other => {
                return Err(format!(
                    "schedule kind {other:?} is unknown{}; one of {}",
                    suggest(other, SCHEDULE_KINDS)
                        .map(|s| format!(" (did you mean {s:?}?)"))
                        .unwrap_or_default(),
                    SCHEDULE_KINDS.join(", ")
                ))
            }
        };
        let s = Schedule { lr: self.lr, warmup_steps: warmup, total_steps, kind };
        s.validate()?;
        Ok(s)
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
fn default_seq() -> usize {
    256
}
fn default_vocab() -> usize {
    4096
}
fn default_specials() -> Vec<String> {
    vec!["<|endoftext|>".into()]
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
fn default_kind() -> String {
    "linear".into()
}
fn default_lr() -> f64 {
    5e-5
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

/// The closest of `options` to `word` by edit distance, if it is close enough to be a typo.
pub fn suggest<'a>(word: &str, options: &[&'a str]) -> Option<&'a str> {
    options
        .iter()
        .map(|o| (levenshtein(word, o), *o))
        .filter(|(d, o)| *d <= 2.max(o.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, o)| o)
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            cur.push((prev[j] + usize::from(ca != *cb)).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

impl RunConfig {
    /// Parses TOML; an unknown key's error names it and suggests the nearest known key.
    pub fn from_toml(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| {
            let msg = e.to_string();
            add_suggestion(&msg).unwrap_or(msg)
        })
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }

    /// Applies `key=value` overrides (`--set optim.batch_size=4`): the value is parsed as TOML,
    /// or taken as a string when that fails.
    pub fn with_overrides(text: &str, sets: &[String]) -> Result<Self, String> {
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

/// Turns serde's "unknown field `x`, expected one of `a`, `b`" into a message with a guess.
fn add_suggestion(msg: &str) -> Option<String> {
    let start = msg.find("unknown field `")? + "unknown field `".len();
    let field = &msg[start..start + msg[start..].find('`')?];
    let expected = &msg[msg.find("expected")?..];
    let options: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
    let guess = suggest(field, &options)?;
    Some(format!("{msg}\ndid you mean `{guess}` instead of `{field}`?"))
}
