//! The `[schedule]` table as a person spells it (TOML, the TUI form, JSON in `edits.jsonl`), and
//! its conversion to and from a [`SchedulePlan`]: the kind's defaults, its own keys, aliases
//! (`min_lr` for WSD and polynomial) and the "did you mean" errors.

use serde::{Deserialize, Serialize};

use super::schedule::{DecayType, ScheduleKind, SchedulePlan, Warmup, KIND_NAMES};
use crate::spelling::did_you_mean;

// The kinds' defaults, as HF's schedulers have them: read when a key is absent, and left out
// when a plan is written, so a written plan shows only what was chosen.
const COSINE_CYCLES: f64 = 0.5;
const RESTART_CYCLES: f64 = 1.0;
const WSD_MIN_LR_RATIO: f64 = 0.0;
const POLY_LR_END: f64 = 1e-7;
const POLY_POWER: f64 = 1.0;

/// The flat `[schedule]` table as written, before it is checked against the kind. Keys that
/// are absent (or JSON `null`, as older `edits.jsonl` lines wrote them) take the defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleFields {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lr: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warmup_steps: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warmup_ratio: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_lr: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub num_cycles: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stable_steps: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decay_steps: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decay_type: Option<DecayType>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_lr_ratio: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timescale: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lr_end: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub power: Option<f64>,
}

/// The keys each kind takes besides `kind`, `lr` and the warmup.
fn own_keys(kind: &str) -> &'static [&'static str] {
    match kind {
        "cosine" | "cosine_with_restarts" => &["num_cycles"],
        "cosine_with_min_lr" => &["num_cycles", "min_lr"],
        "wsd" => &["stable_steps", "decay_steps", "decay_type", "min_lr_ratio", "min_lr"],
        "inverse_sqrt" => &["timescale"],
        "polynomial" => &["lr_end", "min_lr", "power"],
        _ => &[],
    }
}

impl ScheduleFields {
    /// Sets one key from text, as the TUI's schedule form does; an unknown key suggests the
    /// nearest known one.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), String> {
        let v = value.trim();
        let f = || v.parse::<f64>().map_err(|_| format!("{key}: {v:?} is not a number"));
        let n = || v.parse::<u64>().map_err(|_| format!("{key}: {v:?} is not a whole number of steps"));
        match key {
            "kind" => self.kind = Some(v.to_string()),
            "lr" => self.lr = Some(f()?),
            "warmup_steps" => self.warmup_steps = Some(n()?),
            "warmup_ratio" => self.warmup_ratio = Some(f()?),
            "min_lr" => self.min_lr = Some(f()?),
            "num_cycles" => self.num_cycles = Some(f()?),
            "stable_steps" => self.stable_steps = Some(n()?),
            "decay_steps" => self.decay_steps = Some(n()?),
            "decay_type" => {
                let all = [DecayType::Cosine, DecayType::Linear, DecayType::OneMinusSqrt];
                let d = all.into_iter().find(|d| d.name() == v);
                self.decay_type =
                    Some(d.ok_or_else(|| format!("decay_type {v:?} is not cosine, linear or 1-sqrt"))?);
            }
            "min_lr_ratio" => self.min_lr_ratio = Some(f()?),
            "timescale" => self.timescale = Some(n()?),
            "lr_end" => self.lr_end = Some(f()?),
            "power" => self.power = Some(f()?),
            other => {
                return Err(format!("unknown schedule key {other:?}{}", did_you_mean(other, FIELD_NAMES)))
            }
        }
        Ok(())
    }

    /// The keys that are set, by name.
    fn present(&self) -> Vec<&'static str> {
        let set = [
            ("min_lr", self.min_lr.is_some()),
            ("num_cycles", self.num_cycles.is_some()),
            ("stable_steps", self.stable_steps.is_some()),
            ("decay_steps", self.decay_steps.is_some()),
            ("decay_type", self.decay_type.is_some()),
            ("min_lr_ratio", self.min_lr_ratio.is_some()),
            ("timescale", self.timescale.is_some()),
            ("lr_end", self.lr_end.is_some()),
            ("power", self.power.is_some()),
        ];
        set.iter().filter(|(_, on)| *on).map(|(k, _)| *k).collect()
    }
}

const FIELD_NAMES: &[&str] = &[
    "kind",
    "lr",
    "warmup_steps",
    "warmup_ratio",
    "min_lr",
    "num_cycles",
    "stable_steps",
    "decay_steps",
    "decay_type",
    "min_lr_ratio",
    "timescale",
    "lr_end",
    "power",
];

impl TryFrom<ScheduleFields> for SchedulePlan {
    type Error = String;

    fn try_from(f: ScheduleFields) -> Result<Self, String> {
        let d = SchedulePlan::default();
        let kind_name = f.kind.clone().unwrap_or_else(|| d.kind.name().to_string());
        if !KIND_NAMES.contains(&kind_name.as_str()) {
            return Err(format!(
                "schedule kind {kind_name:?} is unknown{}; one of {}",
                did_you_mean(&kind_name, KIND_NAMES),
                KIND_NAMES.join(", ")
            ));
        }
        if let Some(k) = f.present().into_iter().find(|k| !own_keys(&kind_name).contains(k)) {
            let takes = own_keys(&kind_name);
            let takes = if takes.is_empty() { "no keys of its own".to_string() } else { takes.join(", ") };
            return Err(format!("`{k}` does not apply to schedule kind {kind_name:?}, which takes {takes}"));
        }
        let lr = f.lr.unwrap_or(d.lr);
        let warmup = match (f.warmup_steps, f.warmup_ratio) {
            (Some(_), Some(_)) => return Err("give warmup_steps or warmup_ratio, not both".into()),
            (Some(w), None) => Warmup::Steps(w),
            (None, Some(r)) => Warmup::Ratio(r),
            (None, None) => d.warmup,
        };
        let kind = match kind_name.as_str() {
            "constant" => ScheduleKind::Constant,
            "linear" => ScheduleKind::Linear,
            "cosine" => ScheduleKind::Cosine { num_cycles: f.num_cycles.unwrap_or(COSINE_CYCLES) },
            "cosine_with_min_lr" => ScheduleKind::CosineWithMinLr {
                num_cycles: f.num_cycles.unwrap_or(COSINE_CYCLES),
                min_lr: f.min_lr.ok_or("cosine_with_min_lr needs min_lr")?,
            },
            "cosine_with_restarts" => {
                ScheduleKind::CosineWithRestarts { num_cycles: f.num_cycles.unwrap_or(RESTART_CYCLES) }
            }
            "wsd" => ScheduleKind::Wsd {
                stable_steps: f.stable_steps,
                decay_steps: f.decay_steps,
                decay_type: f.decay_type.unwrap_or_default(),
                // `min_lr` is accepted as an absolute floor and kept as a ratio.
                min_lr_ratio: f.min_lr_ratio.or(f.min_lr.map(|m| m / lr)).unwrap_or(WSD_MIN_LR_RATIO),
            },
            "inverse_sqrt" => ScheduleKind::InverseSqrt { timescale: f.timescale },
            _ => ScheduleKind::Polynomial {
                lr_end: f.lr_end.or(f.min_lr).unwrap_or(POLY_LR_END),
                power: f.power.unwrap_or(POLY_POWER),
            },
        };
        let plan = SchedulePlan { lr, warmup, kind };
        plan.validate()?;
        Ok(plan)
    }
}

impl From<SchedulePlan> for ScheduleFields {
    fn from(p: SchedulePlan) -> Self {
        let mut f =
            ScheduleFields { kind: Some(p.kind.name().to_string()), lr: Some(p.lr), ..Default::default() };
        match p.warmup {
            Warmup::Steps(w) => f.warmup_steps = Some(w),
            Warmup::Ratio(r) => f.warmup_ratio = Some(r),
        }
        let unless = |v: f64, default: f64| (v != default).then_some(v);
        match p.kind {
            ScheduleKind::Constant | ScheduleKind::Linear => {}
            ScheduleKind::Cosine { num_cycles } => f.num_cycles = unless(num_cycles, COSINE_CYCLES),
            ScheduleKind::CosineWithRestarts { num_cycles } => {
                f.num_cycles = unless(num_cycles, RESTART_CYCLES)
            }
            ScheduleKind::CosineWithMinLr { num_cycles, min_lr } => {
                f.num_cycles = unless(num_cycles, COSINE_CYCLES);
                f.min_lr = Some(min_lr);
            }
            ScheduleKind::Wsd { stable_steps, decay_steps, decay_type, min_lr_ratio } => {
                f.stable_steps = stable_steps;
                f.decay_steps = decay_steps;
                f.decay_type = (decay_type != DecayType::default()).then_some(decay_type);
                f.min_lr_ratio = unless(min_lr_ratio, WSD_MIN_LR_RATIO);
            }
            ScheduleKind::InverseSqrt { timescale } => f.timescale = timescale,
            ScheduleKind::Polynomial { lr_end, power } => {
                f.lr_end = unless(lr_end, POLY_LR_END);
                f.power = unless(power, POLY_POWER);
            }
        }
        f
    }
}
