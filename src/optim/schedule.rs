//! Learning-rate schedules, as HF transformers defines them (`optimization.py`).
//!
//! A [`SchedulePlan`] is what a person writes: the `[schedule]` table, the TUI's schedule form,
//! a live edit. It has one set of defaults and one `validate()`. `plan.resolve(total_steps)`
//! turns it into the [`Schedule`] a run follows; that is the one place where a plan meets the
//! run's length (`warmup_ratio`, WSD's default phases). `Schedule::lr_at(step)` is a pure
//! function of the 0-based optimizer step: step k uses `lr · λ(k)`, as HF's `LambdaLR` does
//! when the Trainer steps the scheduler after the optimizer.

use std::f64::consts::PI;

use serde::{Deserialize, Serialize};

pub use super::schedule_fields::ScheduleFields;

/// How long the linear warmup lasts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Warmup {
    Steps(u64),
    /// A fraction of the run's optimizer steps, rounded up (HF `warmup_ratio`).
    Ratio(f64),
}

/// The shape of a schedule and its own parameters.
#[derive(Debug, Clone, PartialEq)]
pub enum ScheduleKind {
    /// HF `constant_with_warmup` (plain `constant` when warmup is 0).
    Constant,
    Linear,
    Cosine {
        num_cycles: f64,
    },
    /// `min_lr` is the floor, as an absolute LR.
    CosineWithMinLr {
        num_cycles: f64,
        min_lr: f64,
    },
    CosineWithRestarts {
        num_cycles: f64,
    },
    /// Warmup-stable-decay. `decay_steps` counts from the end of the stable phase; unset, the
    /// decay is the last tenth of the steps after warmup and the stable phase fills the rest.
    Wsd {
        stable_steps: Option<u64>,
        decay_steps: Option<u64>,
        decay_type: DecayType,
        min_lr_ratio: f64,
    },
    /// `timescale` defaults to the warmup steps, or 10 000 without warmup (as HF).
    InverseSqrt {
        timescale: Option<u64>,
    },
    Polynomial {
        lr_end: f64,
        power: f64,
    },
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecayType {
    #[default]
    Cosine,
    Linear,
    #[serde(rename = "1-sqrt")]
    OneMinusSqrt,
}

/// A schedule as written: peak LR, warmup and shape. Its TOML spelling is the flat
/// `[schedule]` table (`kind`, `lr`, `warmup_steps` or `warmup_ratio`, the kind's own keys).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "ScheduleFields", into = "ScheduleFields")]
pub struct SchedulePlan {
    pub lr: f64,
    pub warmup: Warmup,
    pub kind: ScheduleKind,
}

impl Default for SchedulePlan {
    fn default() -> Self {
        Self { lr: 5e-5, warmup: Warmup::Steps(0), kind: ScheduleKind::Linear }
    }
}

pub const KIND_NAMES: &[&str] = &[
    "constant",
    "linear",
    "cosine",
    "cosine_with_min_lr",
    "cosine_with_restarts",
    "wsd",
    "inverse_sqrt",
    "polynomial",
];

impl DecayType {
    /// As written in TOML.
    pub fn name(self) -> &'static str {
        match self {
            DecayType::Cosine => "cosine",
            DecayType::Linear => "linear",
            DecayType::OneMinusSqrt => "1-sqrt",
        }
    }
}

impl ScheduleKind {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Constant => "constant",
            Self::Linear => "linear",
            Self::Cosine { .. } => "cosine",
            Self::CosineWithMinLr { .. } => "cosine_with_min_lr",
            Self::CosineWithRestarts { .. } => "cosine_with_restarts",
            Self::Wsd { .. } => "wsd",
            Self::InverseSqrt { .. } => "inverse_sqrt",
            Self::Polynomial { .. } => "polynomial",
        }
    }
}

impl SchedulePlan {
    /// The rule every writer of a plan obeys (config, form, live edit, engine): the peak LR is
    /// finite and > 0, floors are finite and ≥ 0 and not above the peak.
    pub fn validate(&self) -> Result<(), String> {
        let lr = self.lr;
        if !(lr.is_finite() && lr > 0.0) {
            return Err(format!("lr must be a positive number, got {lr}"));
        }
        if let Warmup::Ratio(r) = self.warmup {
            if !(0.0..=1.0).contains(&r) {
                return Err(format!("warmup_ratio ({r}) must be in [0, 1]"));
            }
        }
        let floor = |name: &str, v: f64| {
            if v.is_finite() && (0.0..=lr).contains(&v) {
                Ok(())
            } else {
                Err(format!("{name} ({v}) must be between 0 and lr ({lr})"))
            }
        };
        let positive = |name: &str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(format!("{name} must be a positive number, got {v}"))
            }
        };
        match &self.kind {
            ScheduleKind::Constant | ScheduleKind::Linear | ScheduleKind::InverseSqrt { .. } => Ok(()),
            ScheduleKind::Cosine { num_cycles } | ScheduleKind::CosineWithRestarts { num_cycles } => {
                positive("num_cycles", *num_cycles)
            }
            ScheduleKind::CosineWithMinLr { num_cycles, min_lr } => {
                positive("num_cycles", *num_cycles).and(floor("min_lr", *min_lr))
            }
            ScheduleKind::Wsd { min_lr_ratio, .. } if !(0.0..=1.0).contains(min_lr_ratio) => {
                Err(format!("min_lr_ratio ({min_lr_ratio}) must be in [0, 1]"))
            }
            ScheduleKind::Wsd { .. } => Ok(()),
            ScheduleKind::Polynomial { lr_end, power } => {
                floor("lr_end", *lr_end).and(positive("power", *power))
            }
        }
    }

    /// The schedule for a run of `total_steps` optimizer steps.
    pub fn resolve(&self, total_steps: u64) -> Schedule {
        let warmup_steps = match self.warmup {
            Warmup::Steps(w) => w,
            Warmup::Ratio(r) => (r * total_steps as f64).ceil() as u64,
        };
        let (mut stable_steps, mut decay_steps) = (0, 0);
        if let ScheduleKind::Wsd { stable_steps: s, decay_steps: d, .. } = self.kind {
            let after_warmup = total_steps.saturating_sub(warmup_steps);
            decay_steps = d.unwrap_or(after_warmup / 10);
            stable_steps = s.unwrap_or(after_warmup.saturating_sub(decay_steps));
        }
        Schedule { plan: self.clone(), total_steps, warmup_steps, stable_steps, decay_steps }
    }

    /// The same plan with another peak LR (`:lr` in the TUI).
    pub fn with_lr(&self, lr: f64) -> Self {
        Self { lr, ..self.clone() }
    }
}

/// "cosine, lr 0.002, warmup 4 steps", for logs.
impl std::fmt::Display for SchedulePlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}, lr {}", self.kind.name(), self.lr)?;
        match self.warmup {
            Warmup::Steps(0) => Ok(()),
            Warmup::Steps(w) => write!(f, ", warmup {w} steps"),
            Warmup::Ratio(r) => write!(f, ", warmup {}% of the run", r * 100.0),
        }
    }
}

/// A plan resolved against a run's length.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    pub plan: SchedulePlan,
    pub total_steps: u64,
    pub warmup_steps: u64,
    /// WSD's phases (0 for other kinds).
    stable_steps: u64,
    decay_steps: u64,
}

impl Schedule {
    /// The LR for 0-based optimizer step `step`.
    pub fn lr_at(&self, step: u64) -> f64 {
        let lr = self.plan.lr;
        let (s, w, t) = (step as f64, self.warmup_steps as f64, self.total_steps as f64);
        let warm = s / w.max(1.0);
        let in_warmup = step < self.warmup_steps;
        let progress = (s - w) / (t - w).max(1.0);
        let factor = match &self.plan.kind {
            // WSD's warmup rises from min_lr_ratio, not from 0 (HF `_get_wsd_scheduler_lambda`).
            ScheduleKind::Wsd { min_lr_ratio, .. } if in_warmup => {
                (warm * (1.0 - min_lr_ratio) + min_lr_ratio).max(0.0)
            }
            _ if in_warmup => warm,
            ScheduleKind::Constant => 1.0,
            ScheduleKind::Linear => ((t - s) / (t - w).max(1.0)).max(0.0),
            ScheduleKind::Cosine { num_cycles } => {
                (0.5 * (1.0 + (PI * num_cycles * 2.0 * progress).cos())).max(0.0)
            }
            ScheduleKind::CosineWithMinLr { num_cycles, min_lr } => {
                let rate = min_lr / lr;
                let c = 0.5 * (1.0 + (PI * num_cycles * 2.0 * progress).cos());
                (c * (1.0 - rate) + rate).max(0.0)
            }
            ScheduleKind::CosineWithRestarts { num_cycles } => {
                if progress >= 1.0 {
                    0.0
                } else {
                    (0.5 * (1.0 + (PI * ((num_cycles * progress) % 1.0)).cos())).max(0.0)
                }
            }
            ScheduleKind::Wsd { decay_type, min_lr_ratio, .. } => {
                let (st, de) = (self.stable_steps as f64, self.decay_steps as f64);
                if s < w + st {
                    1.0
                } else if s < w + st + de {
                    let p = (s - w - st) / de.max(1.0);
                    let v = match decay_type {
                        DecayType::Cosine => (0.5 * (1.0 + (PI * p).cos())).max(0.0),
                        DecayType::Linear => 1.0 - p,
                        DecayType::OneMinusSqrt => 1.0 - p.sqrt(),
                    };
                    (1.0 - min_lr_ratio) * v + min_lr_ratio
                } else {
                    *min_lr_ratio
                }
            }
            ScheduleKind::InverseSqrt { timescale } => {
                let default = if self.warmup_steps > 0 { self.warmup_steps } else { 10_000 };
                let ts = timescale.unwrap_or(default) as f64;
                1.0 / ((s + ts - w) / ts).sqrt()
            }
            ScheduleKind::Polynomial { lr_end, power } => {
                if s > t {
                    lr_end / lr
                } else {
                    let remaining = 1.0 - (s - w) / (t - w).max(1.0);
                    ((lr - lr_end) * remaining.powf(*power) + lr_end) / lr
                }
            }
        };
        lr * factor
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(toml_text: &str) -> Result<SchedulePlan, String> {
        toml::from_str(toml_text).map_err(|e| e.message().to_string())
    }

    #[test]
    fn defaults_and_round_trip() {
        assert_eq!(plan("").unwrap(), SchedulePlan::default());
        let p = plan("kind = \"wsd\"\nlr = 1e-3\nwarmup_ratio = 0.1\nmin_lr = 1e-4").unwrap();
        assert_eq!(p.warmup, Warmup::Ratio(0.1));
        let ScheduleKind::Wsd { min_lr_ratio, stable_steps: None, .. } = p.kind else { panic!("{p:?}") };
        assert!((min_lr_ratio - 0.1).abs() < 1e-12);
        let back: SchedulePlan = toml::from_str(&toml::to_string(&p).unwrap()).unwrap();
        assert_eq!(back, p);
    }

    #[test]
    fn a_written_plan_leaves_defaults_out() {
        let text = toml::to_string(&plan("kind = \"cosine\"\nlr = 1e-3").unwrap()).unwrap();
        assert_eq!(text, "kind = \"cosine\"\nlr = 0.001\nwarmup_steps = 0\n");
        let p = plan("kind = \"polynomial\"\nlr = 1e-3\npower = 2.0").unwrap();
        let text = toml::to_string(&p).unwrap();
        assert!(text.contains("power = 2.0") && !text.contains("lr_end"), "{text}");
        assert_eq!(toml::from_str::<SchedulePlan>(&text).unwrap(), p);
    }

    #[test]
    fn resolve_is_where_the_run_length_comes_in() {
        let p = plan("kind = \"wsd\"\nlr = 1.0\nwarmup_ratio = 0.1").unwrap();
        let s = p.resolve(100);
        assert_eq!((s.warmup_steps, s.stable_steps, s.decay_steps), (10, 81, 9));
        assert_eq!(s.lr_at(50), 1.0);
        assert_eq!(s.lr_at(100), 0.0);
    }

    #[test]
    fn one_rule_for_every_writer() {
        assert!(plan("lr = 0.0").unwrap_err().contains("positive"));
        assert!(plan("lr = -1e-3").unwrap_err().contains("positive"));
        assert!(plan("kind = \"cosine_with_min_lr\"\nlr = 1e-3\nmin_lr = 2e-3")
            .unwrap_err()
            .contains("min_lr"));
        assert!(plan("kind = \"polynomial\"\nlr = 1e-3\nlr_end = -1.0").unwrap_err().contains("lr_end"));
        assert!(plan("kind = \"wsd\"\nmin_lr_ratio = 1.5").is_err());
        assert!(plan("warmup_ratio = 2.0").unwrap_err().contains("[0, 1]"));
        assert!(plan("warmup_steps = 2\nwarmup_ratio = 0.1").unwrap_err().contains("not both"));
        assert!(plan("kind = \"cosin\"").unwrap_err().contains("did you mean \"cosine\""));
        assert!(plan("kind = \"cosine\"\nmin_lr = 1e-6").unwrap_err().contains("does not apply"));
        assert!(plan("min_lrr = 1e-6").unwrap_err().contains("min_lrr"));
    }

    #[test]
    fn old_json_with_nulls_loads_and_new_json_has_none() {
        let old = r#"{"kind":"wsd","lr":0.002,"warmup_steps":null,"warmup_ratio":null,"min_lr":null,
            "num_cycles":null,"stable_steps":null,"decay_steps":null,"decay_type":null,
            "min_lr_ratio":0.1,"timescale":null,"lr_end":null,"power":null}"#;
        let p: SchedulePlan = serde_json::from_str(old).unwrap();
        assert_eq!(p.lr, 0.002);
        let json = serde_json::to_string(&p).unwrap();
        assert!(!json.contains("null"), "{json}");
    }

    #[test]
    fn form_keys_suggest() {
        let mut f = ScheduleFields::default();
        assert!(f.set("num_cycle", "2").unwrap_err().contains("num_cycles"));
        assert!(f.set("warmup_steps", "2.5").is_err());
        f.set("kind", "cosine").unwrap();
        f.set("num_cycles", "2").unwrap();
        assert_eq!(SchedulePlan::try_from(f).unwrap().kind, ScheduleKind::Cosine { num_cycles: 2.0 });
    }
}
