//! The Metrics pane's data: loss/eval/LR histories (downsampled so a 100k-step run stays
//! cheap), the latest step, and the schedule's future curve with edit marks.

use crate::engine::StepStats;
use crate::optim::{Schedule, SchedulePlan};

/// Points kept per series; when full, every other point is dropped and the stride doubles.
pub const MAX_POINTS: usize = 2000;

/// A series of (step, value) that halves its resolution when it fills up.
#[derive(Debug, Clone, Default)]
pub struct Series {
    pub points: Vec<(f64, f64)>,
    stride: u64,
    seen: u64,
}

impl Series {
    pub fn push(&mut self, x: f64, y: f64) {
        self.stride = self.stride.max(1);
        if self.seen.is_multiple_of(self.stride) {
            self.points.push((x, y));
            if self.points.len() >= MAX_POINTS {
                self.points = self.points.iter().step_by(2).copied().collect();
                self.stride *= 2;
            }
        }
        self.seen += 1;
    }

    pub fn last(&self) -> Option<(f64, f64)> {
        self.points.last().copied()
    }
}

#[derive(Debug, Default)]
pub struct MetricsState {
    pub loss: Series,
    /// Exponential moving average of the loss (smoothing shown with the raw curve).
    pub loss_ema: Series,
    pub eval: Series,
    pub lr: Series,
    pub last: Option<StepStats>,
    pub total_steps: u64,
    pub start_step: u64,
    /// Steps at which the schedule was edited.
    pub edits: Vec<u64>,
    /// The schedule in force as the engine reported it, resolved once, to draw its future.
    pub schedule: Option<Schedule>,
    pub grad_clip: f64,
    pub log_scale: bool,
    /// EMA weight of the newest point, 0 = off.
    pub smoothing: f64,
    ema: Option<f64>,
    pub memory_bytes: Option<u64>,
}

impl MetricsState {
    pub fn new() -> Self {
        Self { smoothing: 0.1, ..Default::default() }
    }

    pub fn reset(&mut self, total: u64, start: u64, plan: &SchedulePlan, grad_clip: f64) {
        *self = Self {
            total_steps: total,
            start_step: start,
            schedule: Some(plan.resolve(total)),
            grad_clip,
            log_scale: self.log_scale,
            smoothing: self.smoothing,
            memory_bytes: self.memory_bytes,
            ..Default::default()
        };
    }

    pub fn on_step(&mut self, s: &StepStats) {
        let x = s.step as f64;
        if s.loss.is_finite() {
            self.loss.push(x, s.loss);
            let a = self.smoothing.clamp(0.0, 1.0);
            let e = match self.ema {
                Some(prev) if a > 0.0 => a * s.loss + (1.0 - a) * prev,
                _ => s.loss,
            };
            self.ema = Some(e);
            self.loss_ema.push(x, e);
        }
        self.lr.push(x, s.lr);
        self.last = Some(*s);
    }

    pub fn on_eval(&mut self, step: u64, loss: f64) {
        self.eval.push(step as f64, loss);
    }

    pub fn on_edit(&mut self, step: u64, new: &SchedulePlan) {
        self.edits.push(step);
        self.schedule = Some(new.resolve(self.total_steps));
    }

    /// Seconds left at the current pace.
    pub fn eta_s(&self) -> Option<f64> {
        let s = self.last?;
        let done = s.step.saturating_sub(self.start_step);
        if done == 0 || s.step >= self.total_steps {
            return None;
        }
        let per_step = s.elapsed_s / done as f64;
        Some(per_step * (self.total_steps - s.step) as f64)
    }

    /// The LR from the next step to the end, at most `n` points: of `preview` (a draft edit)
    /// when given, else of the schedule in force.
    pub fn future_lr(&self, preview: Option<&Schedule>, n: usize) -> Vec<(f64, f64)> {
        let Some(s) = preview.or(self.schedule.as_ref()) else { return vec![] };
        let from = self.last.map(|l| l.step).unwrap_or(self.start_step);
        let span = self.total_steps.saturating_sub(from).max(1);
        let stride = (span / n.max(1) as u64).max(1);
        (from..=self.total_steps).step_by(stride as usize).map(|k| (k as f64 + 1.0, s.lr_at(k))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_stays_bounded_over_a_long_run() {
        let mut s = Series::default();
        for i in 0..100_000 {
            s.push(i as f64, 1.0);
        }
        assert!(s.points.len() < MAX_POINTS);
        assert!(s.points.len() > MAX_POINTS / 4);
        assert_eq!(s.points[0].0, 0.0);
        assert!(s.last().unwrap().0 > 99_000.0);
    }
}
