//! The schedule-edit form: the fields of `[schedule]` as text, parsed and validated on apply.

use crate::engine::config::ScheduleConfig;

/// The schedule-edit form: text fields, validated on apply.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleDraft {
    /// (label, text) for lr, kind, warmup, min lr, and the kind's own keys as `k=v, …`.
    pub fields: Vec<(&'static str, String)>,
    pub selected: usize,
    pub error: Option<String>,
}

impl ScheduleDraft {
    pub fn from(cfg: &ScheduleConfig) -> Self {
        let opt = |v: Option<f64>| v.map(|x| x.to_string()).unwrap_or_default();
        let mut extra = vec![];
        if let Some(v) = cfg.num_cycles {
            extra.push(format!("num_cycles={v}"));
        }
        if let Some(v) = cfg.stable_steps {
            extra.push(format!("stable_steps={v}"));
        }
        if let Some(v) = cfg.decay_steps {
            extra.push(format!("decay_steps={v}"));
        }
        if let Some(v) = cfg.min_lr_ratio {
            extra.push(format!("min_lr_ratio={v}"));
        }
        Self {
            fields: vec![
                ("lr", cfg.lr.to_string()),
                ("kind", cfg.kind.clone()),
                ("warmup", cfg.warmup_steps.map(|w| w.to_string()).unwrap_or_default()),
                ("min lr", opt(cfg.min_lr)),
                ("params", extra.join(", ")),
            ],
            selected: 0,
            error: None,
        }
    }

    /// The draft as a schedule config (the TOML `[schedule]` table).
    pub fn parse(&self) -> Result<ScheduleConfig, String> {
        let mut lines = vec![];
        for (label, v) in &self.fields {
            let v = v.trim();
            if v.is_empty() {
                continue;
            }
            match *label {
                "lr" => lines.push(format!("lr = {v}")),
                "kind" => lines.push(format!("kind = \"{v}\"")),
                "warmup" => lines.push(format!("warmup_steps = {v}")),
                "min lr" => lines.push(format!("min_lr = {v}")),
                _ => lines.extend(v.split(',').map(|kv| {
                    let (k, val) = kv.split_once('=').unwrap_or((kv, ""));
                    let val = val.trim();
                    let val = if val.parse::<f64>().is_ok() { val.to_string() } else { format!("\"{val}\"") };
                    format!("{} = {val}", k.trim())
                })),
            }
        }
        let cfg: ScheduleConfig = toml::from_str(&lines.join("\n")).map_err(|e| e.message().to_string())?;
        if !(cfg.lr.is_finite() && cfg.lr > 0.0) {
            return Err(format!("lr must be a positive number, got {}", cfg.lr));
        }
        Ok(cfg)
    }
}
