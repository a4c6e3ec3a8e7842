//! The Hyperparameters pane: an editable form over the run config's TOML document. Every edit
//! is validated by parsing the whole document as a `RunConfig`, so the form accepts exactly
//! what `whet train` accepts, and a saved form is a config `whet train` runs.

use std::collections::HashMap;
use std::path::PathBuf;

use crate::engine::config::RunConfig;

/// (dotted key, label) of each field, in display order.
pub const FIELDS: &[(&str, &str)] = &[
    ("model.path", "model"),
    ("method.kind", "method"),
    ("schedule.lr", "lr"),
    ("schedule.kind", "schedule"),
    ("schedule.warmup_steps", "warmup"),
    ("schedule.min_lr", "min lr"),
    ("optim.batch_size", "batch"),
    ("optim.grad_accum", "grad accum"),
    ("data.seq_len", "seq len"),
    ("optim.max_steps", "steps"),
    ("optim.epochs", "epochs"),
    ("optim.weight_decay", "weight decay"),
    ("optim.grad_clip", "grad clip"),
    ("method.r", "lora r"),
    ("method.alpha", "lora alpha"),
    ("method.dropout", "lora dropout"),
    ("method.targets", "lora targets"),
    ("method.quant", "qlora quant"),
    ("data.train", "data file"),
    ("data.format", "data format"),
    ("data.train_on_prompt", "train on prompt"),
    ("data.packing", "packing"),
    ("run.dtype", "dtype"),
    ("optim.gradient_checkpointing", "grad checkpointing"),
    ("run.eval_every", "eval every"),
    ("run.save_every", "save every"),
    ("optim.seed", "seed"),
];

/// Used when configs/sft-smollm2-lora.toml is not there.
pub const DEFAULT_DOC: &str = r#"
[model]
path = "models/SmolLM2-135M-Instruct.Q4_1.gguf"
[method]
kind = "lora"
[data]
train = "assets/data/identity.jsonl"
format = "chat"
seq_len = 96
packing = false
[optim]
batch_size = 8
max_steps = 40
[schedule]
kind = "cosine"
lr = 2e-3
warmup_steps = 4
[run]
out_dir = "runs/tui"
"#;

#[derive(Debug)]
pub struct FormState {
    pub doc: toml::Table,
    pub selected: usize,
    /// Inline errors by field key.
    pub errors: HashMap<&'static str, String>,
    /// The text being typed into the selected field.
    pub editing: Option<String>,
    /// The file the form was loaded from or saved to.
    pub path: Option<PathBuf>,
}

impl FormState {
    pub fn from_doc(text: &str, path: Option<PathBuf>) -> Result<Self, String> {
        RunConfig::from_toml(text)?;
        let doc = text.parse::<toml::Table>().map_err(|e| e.to_string())?;
        Ok(Self { doc, selected: 0, errors: HashMap::new(), editing: None, path })
    }

    pub fn key(&self) -> &'static str {
        FIELDS[self.selected.min(FIELDS.len() - 1)].0
    }

    /// The field's value as the user would type it (strings unquoted, unset empty).
    pub fn value(&self, key: &str) -> String {
        let mut t = &self.doc;
        let parts: Vec<&str> = key.split('.').collect();
        for p in &parts[..parts.len() - 1] {
            match t.get(*p).and_then(|v| v.as_table()) {
                Some(next) => t = next,
                None => return String::new(),
            }
        }
        match t.get(parts[parts.len() - 1]) {
            None => String::new(),
            Some(toml::Value::String(s)) => s.clone(),
            Some(toml::Value::Array(a)) => a
                .iter()
                .map(|v| v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string()))
                .collect::<Vec<_>>()
                .join(","),
            Some(v) => v.to_string(),
        }
    }

    /// Sets `key` from typed text. Lists are typed comma-separated. On error the document is
    /// unchanged and the error is kept beside the field.
    pub fn set(&mut self, key: &'static str, raw: &str) -> Result<(), String> {
        let raw = raw.trim();
        let value = if key == "method.targets" {
            format!("[{}]", raw.split(',').map(|t| format!("\"{}\"", t.trim())).collect::<Vec<_>>().join(","))
        } else {
            raw.to_string()
        };
        let text = toml::to_string(&self.doc).map_err(|e| e.to_string())?;
        let result = if raw.is_empty() {
            let mut doc = self.doc.clone();
            remove(&mut doc, key);
            toml::to_string(&doc)
                .map_err(|e| e.to_string())
                .and_then(|t| RunConfig::from_toml(&t).map(|c| (t, c)))
        } else {
            RunConfig::with_overrides(&text, &[format!("{key}={value}")]).and_then(|c| Ok((c.to_toml()?, c)))
        };
        let outcome = result.and_then(|(t, cfg)| check(key, &cfg).map(|_| t));
        match outcome {
            Ok(t) => {
                self.doc = t.parse().map_err(|e: toml::de::Error| e.to_string())?;
                self.errors.remove(key);
                Ok(())
            }
            Err(e) => {
                self.errors.insert(key, e.clone());
                Err(e)
            }
        }
    }

    pub fn config(&self) -> Result<RunConfig, String> {
        RunConfig::from_toml(&toml::to_string(&self.doc).map_err(|e| e.to_string())?)
    }

    pub fn toml(&self) -> Result<String, String> {
        toml::to_string_pretty(&self.doc).map_err(|e| format!("the form cannot be written as TOML: {e}"))
    }

    pub fn move_by(&mut self, d: isize) {
        let n = FIELDS.len() as isize;
        self.selected = (self.selected as isize + d).rem_euclid(n) as usize;
    }
}

fn remove(doc: &mut toml::Table, key: &str) {
    let parts: Vec<&str> = key.split('.').collect();
    let mut t = doc;
    for p in &parts[..parts.len() - 1] {
        match t.get_mut(*p).and_then(|v| v.as_table_mut()) {
            Some(next) => t = next,
            None => return,
        }
    }
    t.remove(parts[parts.len() - 1]);
}

/// Checks beyond parsing (which already applies the schedule's `validate`): values a run would
/// reject later.
fn check(key: &str, cfg: &RunConfig) -> Result<(), String> {
    match key {
        "optim.batch_size" if cfg.optim.batch_size == 0 => Err("batch must be at least 1".into()),
        "data.seq_len" if cfg.data.seq_len < 2 => Err("seq len must be at least 2".into()),
        // A stat, not a read: cheap enough for the UI thread.
        "data.train" if !cfg.data.train.exists() => {
            Err(format!("{}: no such file", cfg.data.train.display()))
        }
        "model.path" => match &cfg.model.path {
            Some(p) if !p.exists() => Err(format!("{}: no such file or directory", p.display())),
            _ => Ok(()),
        },
        _ => Ok(()),
    }
}
