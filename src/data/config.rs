//! `[data]` and `[tokenizer]` of a run config: what the data loader reads and how.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

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

fn default_max_line() -> usize {
    16 << 20
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
    /// The longest JSONL line read (bytes): a longer one is an error naming its line, or is
    /// skipped with `skip_invalid`, instead of being parsed into gigabytes.
    #[serde(default = "default_max_line")]
    pub max_line_bytes: usize,
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

fn yes() -> bool {
    true
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
