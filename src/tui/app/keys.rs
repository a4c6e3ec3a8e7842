//! Keys outside text entry: each is looked up in the keymap and its action carried out here.

use std::path::PathBuf;

use crossterm::event::KeyEvent;

use super::{App, Mode, RunState, DEFAULT_LORA};
use crate::engine::protocol::Weights;
use crate::engine::registry::{RunStatus, RunSummary};
use crate::engine::Command;
use crate::tui::keymap::{self, Action, Scope};
use crate::tui::msg::Effect;
use crate::tui::state::log::Level;
use crate::tui::state::models::{Kind, Status};

impl App {
    pub(super) fn normal_key(&mut self, k: KeyEvent) -> Vec<Effect> {
        // Text entry first: the form field or the explorer prompt take every printable key.
        if let Some(buf) = self.form.editing.take() {
            return self.edit_field_key(k, buf);
        }
        if self.explorer.editing {
            return self.prompt_key(k);
        }
        if let Some(buf) = self.data.search.take() {
            return self.search_key(k, buf);
        }
        let Some(action) = keymap::lookup(self.scope(), &k) else { return vec![] };
        match action {
            Action::Help => self.mode = Mode::Help,
            Action::Quit => {
                if self.active() {
                    self.mode = Mode::ConfirmQuit;
                } else {
                    self.quit = true;
                }
            }
            Action::NextPane => self.focus = self.focus.next(),
            Action::PrevPane => self.focus = self.focus.prev(),
            Action::Focus(p) => self.focus = p,
            Action::Zoom => self.zoomed = !self.zoomed,
            Action::Back if self.scope() == Scope::Data => self.close_data(),
            Action::Back => self.zoomed = false,
            Action::CommandLine => self.mode = Mode::Command(String::new()),
            Action::Start => return self.start(),
            Action::StartDefaultLora => {
                return vec![Effect::LoadConfig { path: PathBuf::from(DEFAULT_LORA), start: true }];
            }
            Action::PauseResume => match self.run {
                RunState::Running => return vec![Effect::Engine(Command::Pause)],
                RunState::Paused => return vec![Effect::Engine(Command::Resume)],
                _ => self.log.push(Level::Warn, "no run to pause or resume".to_string()),
            },
            Action::Stop => {
                if self.active() {
                    self.mode = Mode::ConfirmStop;
                }
            }
            Action::Checkpoint => {
                if self.active() {
                    return vec![Effect::Engine(Command::SaveCheckpoint)];
                }
            }
            Action::Export => return self.export("gguf"),
            Action::EditSchedule => self.mode = Mode::Schedule(self.schedule_draft()),
            Action::Evaluate => {
                if self.active() {
                    return vec![Effect::Engine(Command::Evaluate)];
                }
            }
            Action::ToggleMouse => self.mouse = !self.mouse,
            Action::Up | Action::Down => {
                let d = if action == Action::Up { -1 } else { 1 };
                match self.scope() {
                    Scope::Models => self.models.move_by(d),
                    Scope::Hparams => self.form.move_by(d),
                    Scope::Explorer if self.explorer.conversation.on => {
                        self.explorer.conversation.move_selection(d)
                    }
                    Scope::Explorer => self.explorer.move_selection(d),
                    Scope::Log => self.log.scroll(-d),
                    Scope::Data => self.data.move_by(d),
                    _ => {}
                }
            }
            Action::Select => return self.select(),
            Action::EditPrompt => self.explorer.editing = true,
            Action::ToggleChat => {
                self.explorer.chat = !self.explorer.chat;
                return self.probe();
            }
            Action::Pin => self.explorer.toggle_pin(),
            Action::CompareBase => {
                let on = self.explorer.compare != Some(Weights::Base);
                return self.compare_with(on.then_some(Weights::Base));
            }
            Action::CompareCheckpoint => match self.explorer.cycle_checkpoint() {
                Ok(()) => return self.compare_with(self.explorer.compare),
                Err(e) => self.log.push(Level::Warn, e),
            },
            Action::Conversation => {
                let e = &mut self.explorer;
                e.conversation.on = !e.conversation.on;
                std::mem::swap(&mut e.prompt, &mut e.conversation.stash);
            }
            Action::Greedy => self.explorer.conversation.greedy = !self.explorer.conversation.greedy,
            // The engine applies temperature and top-p over the whole vocabulary: ask again.
            Action::TempDown | Action::TempUp | Action::TopPDown | Action::TopPUp => {
                match action {
                    Action::TempDown => self.explorer.nudge_temperature(-0.1),
                    Action::TempUp => self.explorer.nudge_temperature(0.1),
                    Action::TopPDown => self.explorer.nudge_top_p(-0.05),
                    _ => self.explorer.nudge_top_p(0.05),
                }
                if !self.explorer.conversation.on && (self.active() || self.opened.is_some()) {
                    return self.probe();
                }
            }
            Action::ProbeNow => return self.probe(),
            Action::Watch => self.explorer.toggle_watch(),
            Action::LogScale => self.metrics.log_scale = !self.metrics.log_scale,
            Action::SmoothMore => self.metrics.smoothing = (self.metrics.smoothing - 0.05).max(0.01),
            Action::SmoothLess => self.metrics.smoothing = (self.metrics.smoothing + 0.05).min(1.0),
            Action::DataView if self.data.open => self.close_data(),
            Action::DataView => {
                self.data.open = true;
                self.focus = crate::tui::pane::Pane::Metrics;
                return self.preview_data();
            }
            Action::Search => self.data.search = Some(String::new()),
            Action::SearchNext => self.data.find_next(),
            Action::ScrollUp => self.data.scroll_by(-5),
            Action::ScrollDown => self.data.scroll_by(5),
        }
        vec![]
    }

    fn close_data(&mut self) {
        self.data.open = false;
        self.data.search = None;
        self.focus = crate::tui::pane::Pane::Hparams;
    }

    /// Enter on a run: attach to a live one, resume a stale or stopped one.
    fn select_run(&mut self, run: RunSummary) -> Vec<Effect> {
        let dir = run.dir.display();
        match run.status {
            RunStatus::Running if self.attached.as_ref() == Some(&run.dir) => {
                self.log.push(Level::Info, format!("already attached to {dir}"));
                vec![]
            }
            _ if self.active() => {
                self.log
                    .push(Level::Warn, "a run is active here: detach (q, d) before switching".to_string());
                vec![]
            }
            RunStatus::Running => {
                self.run = RunState::Loading;
                vec![Effect::Attach(run.dir)]
            }
            RunStatus::Stale | RunStatus::Stopped if run.checkpoint.is_none() => {
                self.log.push(Level::Warn, format!("{dir}: no checkpoint yet, nothing to resume"));
                vec![]
            }
            RunStatus::Stale | RunStatus::Stopped => {
                self.run = RunState::Loading;
                self.log.push(Level::Info, format!("resuming {dir} from its last complete checkpoint"));
                vec![Effect::ResumeRun(run.dir)]
            }
            RunStatus::Failed => {
                self.log.push(Level::Error, format!("{dir} failed: see its whet.log"));
                vec![]
            }
            // A finished run opens for probing: its final weights, in the explorer.
            RunStatus::Finished if run.checkpoint.is_some() => {
                self.log.push(Level::Info, format!("opening {dir} for probing (its last checkpoint)"));
                self.focus = crate::tui::pane::Pane::Explorer;
                vec![Effect::Engine(Command::Open(run.dir))]
            }
            RunStatus::Finished | RunStatus::Empty => {
                self.log.push(Level::Info, format!("{dir}: nothing to resume or open (no checkpoint)"));
                vec![]
            }
        }
    }

    /// Enter in a pane.
    fn select(&mut self) -> Vec<Effect> {
        match self.scope() {
            Scope::Models => {
                if let Some(run) = self.models.selected_run().cloned() {
                    return self.select_run(run);
                }
                let Some(m) = self.models.selected().cloned() else { return vec![] };
                if let Status::Broken(why) = &m.status {
                    self.log.push(Level::Error, format!("{}: {why}", m.name));
                    return vec![];
                }
                if m.kind == Kind::Scratch {
                    return vec![Effect::LoadConfig { path: m.path, start: false }];
                }
                let path = m.path.display().to_string();
                if let Err(e) = self.form.set("model.path", &format!("\"{}\"", path.replace('\\', "\\\\"))) {
                    self.log.push(Level::Error, e);
                }
                vec![Effect::Engine(Command::Open(m.path))]
            }
            Scope::Hparams => {
                self.form.editing = Some(self.form.value(self.form.key()));
                vec![]
            }
            Scope::Explorer => {
                if let Some(t) = self.explorer.selected_text() {
                    self.explorer.prompt.push_str(&t);
                    return self.probe();
                }
                vec![]
            }
            _ => vec![],
        }
    }
}
