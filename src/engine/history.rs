//! What a client that attaches mid-run needs to redraw everything: the run's events so far,
//! kept in bounded memory. Step points are thinned as they grow (the oldest first, the recent
//! ones kept at full resolution), so a million-step run holds at most [`MAX_STEPS`] of them;
//! evals, schedule and clipping edits are kept in full; the log keeps its tail. Probe answers
//! belong to the client that asked and are not kept.

use std::collections::VecDeque;
use std::path::Path;

use super::checkpoint::Edit;

use super::protocol::{Event, ModelInfo, StepStats};

/// The most step points kept.
pub const MAX_STEPS: usize = 4096;
/// Log and warning lines kept.
pub const LOG_TAIL: usize = 200;
/// Checkpoint events kept.
const CHECKPOINTS: usize = 32;

#[derive(Debug, Default, Clone)]
pub struct History {
    info: Option<ModelInfo>,
    /// Step points in step order; the older ones thinned.
    steps: Vec<StepStats>,
    evals: Vec<(u64, f64)>,
    /// `ScheduleEdited` and `GradClipSet`, in order.
    edits: Vec<Event>,
    log: VecDeque<Event>,
    checkpoints: VecDeque<Event>,
    /// The latest Paused / Resumed / Finished / Failed.
    state: Option<Event>,
}

impl History {
    pub fn record(&mut self, e: &Event) {
        match e {
            Event::Loaded(info) => {
                // A new run starts a new history.
                *self = History { info: Some(info.clone()), ..Default::default() };
            }
            Event::Step(s) => {
                self.steps.push(*s);
                if self.steps.len() > MAX_STEPS {
                    self.thin();
                }
            }
            Event::Eval { step, loss } => self.evals.push((*step, *loss)),
            Event::ScheduleEdited { .. } | Event::GradClipSet { .. } => self.edits.push(e.clone()),
            Event::Log(_) | Event::Warning(_) => {
                if self.log.len() == LOG_TAIL {
                    self.log.pop_front();
                }
                self.log.push_back(e.clone());
            }
            Event::Checkpoint { .. } => {
                if self.checkpoints.len() == CHECKPOINTS {
                    self.checkpoints.pop_front();
                }
                self.checkpoints.push_back(e.clone());
            }
            Event::Paused { .. } | Event::Resumed { .. } | Event::Finished { .. } | Event::Failed(_) => {
                self.state = Some(e.clone());
            }
            // Answers to one client's request are not history.
            Event::ProbeResult { .. }
            | Event::ChatToken { .. }
            | Event::ChatDone { .. }
            | Event::Opened { .. } => {}
        }
    }

    /// Halves the older three quarters of the points (every other one goes, the first
    /// stays), keeping the most recent quarter at full resolution.
    fn thin(&mut self) {
        let recent = MAX_STEPS / 4;
        let split = self.steps.len() - recent;
        let mut kept: Vec<StepStats> = self.steps[..split].iter().step_by(2).copied().collect();
        kept.extend_from_slice(&self.steps[split..]);
        self.steps = kept;
    }

    /// A resumed run's earlier points, from its own logs: the steps and evals up to `upto`
    /// in `metrics.jsonl`, and the schedule edits in `edits.jsonl`. Called right after the
    /// resumed run's `Loaded`, so a client that attaches sees its charts from step 1.
    pub fn seed_from_run(&mut self, run_dir: &Path, upto: u64) {
        let lines = |name: &str| -> Vec<serde_json::Value> {
            std::fs::read_to_string(run_dir.join(name))
                .unwrap_or_default()
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect()
        };
        for v in lines("metrics.jsonl") {
            let step = v["step"].as_u64().unwrap_or(u64::MAX);
            if step > upto {
                continue;
            }
            match v["eval_loss"].as_f64() {
                Some(loss) => self.record(&Event::Eval { step, loss }),
                None => {
                    if let Ok(s) = serde_json::from_value::<StepStats>(v) {
                        self.record(&Event::Step(s));
                    }
                }
            }
        }
        for v in lines("edits.jsonl") {
            if let Ok(e) = serde_json::from_value::<Edit>(v) {
                if e.step <= upto {
                    let (step, old, new) = (e.step, Box::new(e.old), Box::new(e.new));
                    self.record(&Event::ScheduleEdited { step, old, new });
                }
            }
        }
    }

    pub fn steps(&self) -> &[StepStats] {
        &self.steps
    }

    pub fn evals(&self) -> &[(u64, f64)] {
        &self.evals
    }

    /// The events that redraw the run for a new client, in order: the model, the edits and
    /// evals and steps merged by step, the checkpoints, the log tail, then the run's state.
    pub fn replay(&self) -> Vec<Event> {
        let mut out: Vec<Event> = self.info.iter().cloned().map(Event::Loaded).collect();
        let step_of = |e: &Event| match e {
            Event::ScheduleEdited { step, .. } | Event::GradClipSet { step, .. } => *step,
            _ => 0,
        };
        let mut timeline: Vec<(u64, u8, Event)> = Vec::new();
        // At equal steps: the step point, then its eval, then an edit made after it.
        timeline.extend(self.steps.iter().map(|s| (s.step, 0, Event::Step(*s))));
        timeline.extend(self.evals.iter().map(|&(step, loss)| (step, 1, Event::Eval { step, loss })));
        timeline.extend(self.edits.iter().map(|e| (step_of(e), 2, e.clone())));
        timeline.sort_by_key(|(step, order, _)| (*step, *order));
        out.extend(timeline.into_iter().map(|(_, _, e)| e));
        out.extend(self.checkpoints.iter().cloned());
        out.extend(self.log.iter().cloned());
        out.extend(self.state.iter().cloned());
        out
    }
}
