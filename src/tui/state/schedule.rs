//! The live-edit form (`r`): the schedule's fields and the gradient-clipping norm as text.
//! Every key re-parses the draft in `update` (`refresh`), so the error beside the form and the
//! preview on the LR chart are ready before render, which only draws them.

use crate::optim::schedule::{Schedule, ScheduleFields, SchedulePlan, Warmup};

#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleDraft {
    /// (label, text): lr, kind, warmup (steps, or a percentage of the run), min lr, the kind's
    /// other keys as `k=v, …`, grad clip.
    pub fields: Vec<(&'static str, String)>,
    pub selected: usize,
    pub error: Option<String>,
    /// The draft resolved for the run's length, while it parses.
    pub preview: Option<Schedule>,
    total_steps: u64,
}

impl ScheduleDraft {
    pub fn new(plan: &SchedulePlan, grad_clip: f64, total_steps: u64) -> Self {
        let f = ScheduleFields::from(plan.clone());
        let warmup = match plan.warmup {
            Warmup::Steps(w) => w.to_string(),
            Warmup::Ratio(r) => format!("{}%", r * 100.0),
        };
        let mut d = Self {
            fields: vec![
                ("lr", plan.lr.to_string()),
                ("kind", plan.kind.name().to_string()),
                ("warmup", warmup),
                ("min lr", f.min_lr.map(|v| v.to_string()).unwrap_or_default()),
                ("params", own_params(&f).join(", ")),
                ("grad clip", grad_clip.to_string()),
            ],
            selected: 0,
            error: None,
            preview: None,
            total_steps: total_steps.max(1),
        };
        d.refresh();
        d
    }

    /// Re-parses the draft: sets `error` and `preview`.
    pub fn refresh(&mut self) {
        match self.parse() {
            Ok((plan, _)) => {
                self.preview = Some(plan.resolve(self.total_steps));
                self.error = None;
            }
            Err(e) => {
                self.preview = None;
                self.error = Some(e);
            }
        }
    }

    /// The draft as a plan and a clipping norm (None when the field is empty).
    pub fn parse(&self) -> Result<(SchedulePlan, Option<f64>), String> {
        let mut f = ScheduleFields::default();
        let mut clip = None;
        for (label, v) in &self.fields {
            let v = v.trim();
            if v.is_empty() {
                continue;
            }
            match *label {
                "lr" => f.set("lr", v)?,
                "kind" => f.set("kind", v)?,
                "warmup" => match v.strip_suffix('%') {
                    Some(pct) => {
                        let p: f64 =
                            pct.trim().parse().map_err(|_| format!("warmup: {v:?} is not a percentage"))?;
                        f.warmup_ratio = Some(p / 100.0);
                    }
                    None => f.set("warmup_steps", v)?,
                },
                "min lr" => f.set("min_lr", v)?,
                "grad clip" => {
                    let c: f64 = v.parse().map_err(|_| format!("grad clip: {v:?} is not a number"))?;
                    crate::optim::grads::check_max_norm(c)?;
                    clip = Some(c);
                }
                _ => {
                    for kv in v.split(',').filter(|kv| !kv.trim().is_empty()) {
                        let (k, val) =
                            kv.split_once('=').ok_or_else(|| format!("{kv:?}: expected key=value"))?;
                        f.set(k.trim(), val)?;
                    }
                }
            }
        }
        let plan = SchedulePlan::try_from(f)?;
        Ok((plan, clip))
    }
}

/// The kind's own keys as written (a written plan leaves defaults out, so switching the kind
/// does not carry another kind's defaults along); `min_lr` has its own field.
fn own_params(f: &ScheduleFields) -> Vec<String> {
    let mut out = vec![];
    let mut push = |k: &str, v: Option<String>| out.extend(v.map(|v| format!("{k}={v}")));
    push("num_cycles", f.num_cycles.map(|c| c.to_string()));
    push("stable_steps", f.stable_steps.map(|s| s.to_string()));
    push("decay_steps", f.decay_steps.map(|s| s.to_string()));
    push("decay_type", f.decay_type.map(|d| d.name().to_string()));
    push("min_lr_ratio", f.min_lr_ratio.map(|r| r.to_string()));
    push("timescale", f.timescale.map(|t| t.to_string()));
    push("lr_end", f.lr_end.map(|e| e.to_string()));
    push("power", f.power.map(|p| p.to_string()));
    out
}
