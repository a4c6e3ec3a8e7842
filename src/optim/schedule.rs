//! Learning-rate schedules, as HF transformers defines them (`optimization.py`).
//! `lr_at(step)` is a pure function of the 0-based optimizer step: step k uses
//! `lr · λ(k)`, as HF's `LambdaLR` does when the Trainer steps the scheduler after the optimizer.

use serde::{Deserialize, Serialize};

/// The shape of a schedule and its own parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ScheduleKind {
    /// HF `constant_with_warmup` (plain `constant` when warmup is 0).
    Constant,
    Linear,
    Cosine {
        #[serde(default = "half")]
        num_cycles: f64,
    },
    /// `min_lr` is the floor, as an absolute LR.
    CosineWithMinLr {
        #[serde(default = "half")]
        num_cycles: f64,
        min_lr: f64,
    },
    CosineWithRestarts {
        #[serde(default = "one")]
        num_cycles: f64,
    },
    /// Warmup-stable-decay. `decay_steps` counts from the end of the stable phase.
    Wsd {
        stable_steps: u64,
        decay_steps: u64,
        #[serde(default)]
        decay_type: DecayType,
        #[serde(default)]
        min_lr_ratio: f64,
    },
    InverseSqrt {
        /// Defaults to the warmup steps, or 10 000 without warmup (as HF).
        #[serde(default)]
        timescale: Option<u64>,
    },
    Polynomial {
        #[serde(default = "lr_end")]
        lr_end: f64,
        #[serde(default = "one")]
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

fn half() -> f64 {
    0.5
}
fn one() -> f64 {
    1.0
}
fn lr_end() -> f64 {
    1e-7
}

/// A complete schedule: peak LR, warmup, total steps and the shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    pub lr: f64,
    pub warmup_steps: u64,
    pub total_steps: u64,
    #[serde(flatten)]
    pub kind: ScheduleKind,
}

impl Schedule {
    /// The LR for 0-based optimizer step `step`.
    pub fn lr_at(&self, step: u64) -> f64 {
        let (s, w, t) = (step as f64, self.warmup_steps as f64, self.total_steps as f64);
        let warm = |s: f64| s / w.max(1.0);
        let progress = (s - w) / (t - w).max(1.0);
        let factor = match &self.kind {
            // WSD's warmup rises from min_lr_ratio, not from 0 (HF `_get_wsd_scheduler_lambda`).
            ScheduleKind::Wsd { min_lr_ratio, .. } if step < self.warmup_steps => {
                (warm(s) * (1.0 - min_lr_ratio) + min_lr_ratio).max(0.0)
            }
            _ if step < self.warmup_steps && !matches!(self.kind, ScheduleKind::InverseSqrt { .. }) => {
                warm(s)
            }
            ScheduleKind::Constant => 1.0,
            ScheduleKind::Linear => ((t - s) / (t - w).max(1.0)).max(0.0),
            ScheduleKind::Cosine { num_cycles } => {
                (0.5 * (1.0 + (std::f64::consts::PI * num_cycles * 2.0 * progress).cos())).max(0.0)
            }
            ScheduleKind::CosineWithMinLr { num_cycles, min_lr } => {
                let rate = min_lr / self.lr;
                let c = 0.5 * (1.0 + (std::f64::consts::PI * num_cycles * 2.0 * progress).cos());
                (c * (1.0 - rate) + rate).max(0.0)
            }
            ScheduleKind::CosineWithRestarts { num_cycles } => {
                if progress >= 1.0 {
                    0.0
                } else {
                    let x = (num_cycles * progress) % 1.0;
                    (0.5 * (1.0 + (std::f64::consts::PI * x).cos())).max(0.0)
                }
            }
            ScheduleKind::Wsd { stable_steps, decay_steps, decay_type, min_lr_ratio } => {
                let (st, de) = (*stable_steps as f64, *decay_steps as f64);
                if s < w + st {
                    1.0
                } else if s < w + st + de {
                    let p = (s - w - st) / de.max(1.0);
                    let v = match decay_type {
                        DecayType::Cosine => {
                            (0.5 * (1.0 + (std::f64::consts::PI * 2.0 * 0.5 * p).cos())).max(0.0)
                        }
                        DecayType::Linear => 1.0 - p,
                        DecayType::OneMinusSqrt => 1.0 - p.sqrt(),
                    };
                    (1.0 - min_lr_ratio) * v + min_lr_ratio
                } else {
                    *min_lr_ratio
                }
            }
            ScheduleKind::InverseSqrt { timescale } => {
                if step < self.warmup_steps {
                    warm(s)
                } else {
                    let ts =
                        timescale.unwrap_or(if self.warmup_steps > 0 { self.warmup_steps } else { 10_000 })
                            as f64;
                    let shift = ts - w;
                    1.0 / ((s + shift) / ts).sqrt()
                }
            }
            ScheduleKind::Polynomial { lr_end, power } => {
                if s > t {
                    lr_end / self.lr
                } else {
                    let remaining = 1.0 - (s - w) / (t - w).max(1.0);
                    ((self.lr - lr_end) * remaining.powf(*power) + lr_end) / self.lr
                }
            }
        };
        self.lr * factor
    }

    pub fn validate(&self) -> Result<(), String> {
        if !(self.lr.is_finite() && self.lr >= 0.0) {
            return Err(format!("lr must be a non-negative number, got {}", self.lr));
        }
        match &self.kind {
            ScheduleKind::CosineWithMinLr { min_lr, .. } if !(0.0..=self.lr).contains(min_lr) => {
                Err(format!("min_lr ({min_lr}) must be between 0 and lr ({})", self.lr))
            }
            ScheduleKind::Wsd { min_lr_ratio, .. } if !(0.0..=1.0).contains(min_lr_ratio) => {
                Err(format!("min_lr_ratio ({min_lr_ratio}) must be in [0, 1]"))
            }
            ScheduleKind::Polynomial { lr_end, .. } if *lr_end > self.lr => {
                Err(format!("lr_end ({lr_end}) must not exceed lr ({})", self.lr))
            }
            _ => Ok(()),
        }
    }
}
