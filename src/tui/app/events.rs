//! Engine events folded into the workbench's state: each pane's sub-state takes its own.

use super::{App, RunState};
use crate::engine::Event;
use crate::tui::msg::Effect;
use crate::tui::state::log::Level;

impl App {
    pub(super) fn engine(&mut self, e: Event) -> Vec<Effect> {
        match e {
            Event::Loaded(info) => {
                self.run = RunState::Running;
                self.metrics.reset(info.total_steps, info.start_step, &info.schedule, info.grad_clip);
                self.log.push(
                    Level::Info,
                    format!(
                        "loaded: {} · {} params ({} trainable) · {} steps",
                        info.method, info.params, info.trainable, info.total_steps
                    ),
                );
            }
            Event::Step(s) => self.metrics.on_step(&s),
            Event::Eval { step, loss } => {
                self.metrics.on_eval(step, loss);
                self.log.push(Level::Info, format!("eval step {step}: {loss:.4}"));
            }
            Event::Checkpoint { step, path } => {
                self.explorer.checkpoints.insert(step);
                self.log.push(Level::Info, format!("checkpoint step {step}: {}", path.display()))
            }
            Event::ChatToken { id, token, alternatives } => {
                self.explorer.conversation.on_token(id, token, alternatives)
            }
            Event::ChatDone { id, step, result } => {
                if let Err(e) = &result {
                    self.log.push(Level::Error, format!("chat: {e}"));
                }
                self.explorer.conversation.on_done(id, step, result)
            }
            Event::ProbeResult { id, step, result } => self.explorer.on_result(id, step, result),
            Event::ScheduleEdited { step, new, .. } => {
                self.metrics.on_edit(step, &new);
                let (kind, lr) = (new.kind.name(), new.lr);
                self.log.push(Level::Info, format!("schedule edited at step {step}: {kind} lr {lr}"));
            }
            Event::GradClipSet { step, old, new } => {
                self.metrics.grad_clip = new;
                self.log.push(Level::Info, format!("grad clip {old} -> {new} from step {}", step + 1));
            }
            Event::Opened { path } => {
                self.log.push(Level::Info, format!("opened {}", path.display()));
                self.opened = Some(path);
                return self.probe();
            }
            Event::Paused { step } => {
                self.run = RunState::Paused;
                self.log.push(Level::Info, format!("paused at step {step}"));
            }
            Event::Resumed { step } => {
                self.run = RunState::Running;
                self.log.push(Level::Info, format!("resumed at step {step}"));
            }
            Event::Log(l) => self.log.push(Level::Info, l),
            Event::Warning(w) => self.log.push(Level::Warn, w),
            Event::Failed(f) => {
                self.run = RunState::Failed;
                self.explorer.pending = None;
                self.log.push(Level::Error, f);
                if self.quit_when_stopped {
                    self.quit = true;
                }
                return self.run_ended();
            }
            Event::Finished { step, outputs } => {
                self.run = RunState::Finished;
                let out: Vec<String> = outputs.iter().map(|p| p.display().to_string()).collect();
                self.log.push(Level::Info, format!("finished at step {step}; wrote {}", out.join(", ")));
                if self.quit_when_stopped {
                    self.quit = true;
                }
                return self.run_ended();
            }
        }
        vec![]
    }
}
