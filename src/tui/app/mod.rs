//! The workbench's state and its one `update`: TEA's `update(&mut App, Msg) -> Vec<Effect>`.
//! Panes keep their own sub-states (`state/`); `update` routes keys and folds engine events.

use std::path::PathBuf;

use crossterm::event::{KeyCode, KeyEvent, MouseButton, MouseEventKind};

mod text;

use super::keymap::{self, Action, Scope};
use super::msg::{Effect, Msg};
use super::state::explorer::ExplorerState;
use super::state::form::FormState;
use super::state::log::{Level, LogState};
use super::state::metrics::MetricsState;
use super::state::models::{Kind, ModelsState, Status};
pub use super::state::schedule::ScheduleDraft;
use super::ui::layout;
use crate::engine::{Command, Event};

pub const PANES: [&str; 5] = ["Models", "Hyperparameters", "Metrics", "Explorer", "Log"];
pub const DEFAULT_LORA: &str = "configs/sft-smollm2-lora.toml";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    Idle,
    Loading,
    Running,
    Paused,
    Stopping,
    Finished,
    Failed,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Mode {
    Normal,
    Help,
    Command(String),
    ConfirmQuit,
    ConfirmStop,
    Schedule(ScheduleDraft),
}

pub struct App {
    pub focus: usize,
    pub zoomed: bool,
    pub mode: Mode,
    pub run: RunState,
    pub models: ModelsState,
    pub form: FormState,
    pub metrics: MetricsState,
    pub explorer: ExplorerState,
    pub log: LogState,
    pub size: (u16, u16),
    pub color: bool,
    pub mouse: bool,
    pub quit: bool,
    pub dirty: bool,
    /// Quit once the run has saved (a signal arrived while training).
    quit_when_stopped: bool,
    next_id: u64,
    ticks: u64,
    last_probe_tick: u64,
    /// The model the explorer probes when no run is active.
    pub opened: Option<PathBuf>,
}

impl App {
    pub fn new(form: FormState, color: bool) -> Self {
        Self {
            focus: 0,
            zoomed: false,
            mode: Mode::Normal,
            run: RunState::Idle,
            models: ModelsState { scanning: true, ..Default::default() },
            form,
            metrics: MetricsState::new(),
            explorer: ExplorerState::default(),
            log: LogState::default(),
            size: (120, 40),
            color,
            mouse: true,
            quit: false,
            dirty: true,
            quit_when_stopped: false,
            next_id: 1,
            ticks: 0,
            last_probe_tick: 0,
            opened: None,
        }
    }

    pub fn active(&self) -> bool {
        matches!(self.run, RunState::Loading | RunState::Running | RunState::Paused | RunState::Stopping)
    }

    fn scope(&self) -> Scope {
        [Scope::Models, Scope::Hparams, Scope::Metrics, Scope::Explorer, Scope::Log][self.focus]
    }

    pub fn update(&mut self, msg: Msg) -> Vec<Effect> {
        if !matches!(msg, Msg::Tick) {
            self.dirty = true;
        }
        match msg {
            Msg::Tick => self.tick(),
            Msg::Resize(w, h) => {
                self.size = (w, h);
                vec![]
            }
            Msg::Key(k) => self.key(k),
            Msg::Mouse(m) => {
                if self.mouse && matches!(m.kind, MouseEventKind::Down(MouseButton::Left)) {
                    let rects = layout::panes(self.size.0, self.size.1, self.focus, self.zoomed);
                    if let Some(i) =
                        rects.iter().position(|r| r.is_some_and(|r| r.contains((m.column, m.row).into())))
                    {
                        self.focus = i;
                    }
                }
                vec![]
            }
            Msg::Engine(e) => self.engine(e),
            Msg::Models(entries) => {
                self.models.set(entries);
                vec![]
            }
            Msg::ConfigLoaded { path, text, start } => self.config_loaded(path, text, start),
            Msg::ConfigSaved { path, result } => {
                match result {
                    Ok(()) => self.log.push(Level::Info, format!("saved {}", path.display())),
                    Err(e) => self.log.push(Level::Error, format!("{}: {e}", path.display())),
                }
                vec![]
            }
            Msg::Memory(b) => {
                self.metrics.memory_bytes = Some(b);
                vec![]
            }
            Msg::Signal => {
                if self.active() {
                    self.quit_when_stopped = true;
                    self.run = RunState::Stopping;
                    vec![Effect::Engine(Command::Stop { save: true })]
                } else {
                    self.quit = true;
                    vec![]
                }
            }
        }
    }

    fn tick(&mut self) -> Vec<Effect> {
        self.ticks += 1;
        // While training, refresh the explorer about once a second.
        if self.run == RunState::Running
            && self.explorer.pending.is_none()
            && self.ticks - self.last_probe_tick >= 30
        {
            return self.probe();
        }
        vec![]
    }

    fn probe(&mut self) -> Vec<Effect> {
        if !self.active() && self.opened.is_none() {
            self.explorer.error = Some("no model open: pick one in Models (Enter) or start a run".into());
            return vec![];
        }
        self.last_probe_tick = self.ticks;
        let id = self.next_id;
        self.next_id += 2;
        self.explorer.pending = Some(id);
        let (prompt, chat, top_k) = (self.explorer.prompt.clone(), self.explorer.chat, self.explorer.top_k);
        let mut out =
            vec![Effect::Engine(Command::Probe { id, prompt: prompt.clone(), chat, top_k, base: false })];
        if self.explorer.compare_base && self.active() {
            self.explorer.pending_base = Some(id + 1);
            out.push(Effect::Engine(Command::Probe { id: id + 1, prompt, chat, top_k, base: true }));
        }
        // Watched prompts ride along while a run is active (their ids come after the pair).
        if self.active() {
            for w in self.explorer.watch.iter_mut().filter(|w| w.pending.is_none()) {
                let wid = self.next_id;
                self.next_id += 1;
                w.pending = Some(wid);
                let prompt = w.prompt.clone();
                out.push(Effect::Engine(Command::Probe { id: wid, prompt, chat, top_k: 1, base: false }));
            }
        }
        out
    }

    fn engine(&mut self, e: Event) -> Vec<Effect> {
        match e {
            Event::Loaded(info) => {
                self.run = RunState::Running;
                let sched = self.form.config().map(|c| c.schedule).unwrap_or_default();
                self.metrics.reset(info.total_steps, info.start_step, sched);
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
                self.log.push(Level::Info, format!("checkpoint step {step}: {}", path.display()))
            }
            Event::ProbeResult { id, step, result } => {
                if self.explorer.on_watch_result(id, step, result.as_ref()) {
                    // filed in the watch list
                } else if self.explorer.pending == Some(id) {
                    self.explorer.pending = None;
                    match result {
                        Ok(r) => {
                            self.explorer.selected =
                                self.explorer.selected.min(r.top.len().saturating_sub(1));
                            self.explorer.result = Some((step, r));
                            self.explorer.error = None;
                        }
                        Err(e) => self.explorer.error = Some(e),
                    }
                } else if self.explorer.pending_base == Some(id) {
                    self.explorer.pending_base = None;
                    if let Ok(r) = result {
                        self.explorer.pinned = Some(("base (adapter off)".into(), r));
                    }
                } // else: a stale answer to an older prompt; dropped
            }
            Event::ScheduleEdited { step, new, .. } => {
                self.metrics.on_edit(step, (*new).clone());
                self.log
                    .push(Level::Info, format!("schedule edited at step {step}: {} lr {}", new.kind, new.lr));
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
            }
            Event::Finished { step, outputs } => {
                self.run = RunState::Finished;
                let out: Vec<String> = outputs.iter().map(|p| p.display().to_string()).collect();
                self.log.push(Level::Info, format!("finished at step {step}; wrote {}", out.join(", ")));
                if self.quit_when_stopped {
                    self.quit = true;
                }
            }
        }
        vec![]
    }

    fn config_loaded(&mut self, path: PathBuf, text: Result<String, String>, start: bool) -> Vec<Effect> {
        let form = text.and_then(|t| FormState::from_doc(&t, Some(path.clone())));
        match form {
            Ok(f) => {
                self.form = f;
                self.log.push(Level::Info, format!("loaded config {}", path.display()));
                if start {
                    return self.start();
                }
            }
            Err(e) => self.log.push(Level::Error, format!("{}: {e}", path.display())),
        }
        vec![]
    }

    fn start(&mut self) -> Vec<Effect> {
        if self.active() {
            self.log.push(Level::Warn, "a run is already active".to_string());
            return vec![];
        }
        match self.form.config() {
            Ok(cfg) => {
                if !self.form.errors.is_empty() {
                    self.log.push(Level::Error, "fix the fields marked in Hyperparameters first".to_string());
                    return vec![];
                }
                self.run = RunState::Loading;
                let run_dir = cfg.run.out_dir.clone();
                self.log.push(Level::Info, format!("starting {}", run_dir.display()));
                vec![Effect::Engine(Command::Start { config: Box::new(cfg), run_dir, resume: false })]
            }
            Err(e) => {
                self.log.push(Level::Error, format!("config: {e}"));
                vec![]
            }
        }
    }

    fn key(&mut self, k: KeyEvent) -> Vec<Effect> {
        match std::mem::replace(&mut self.mode, Mode::Normal) {
            Mode::Normal => self.normal_key(k),
            Mode::Help => vec![], // any key closes the help
            Mode::ConfirmQuit => {
                if matches!(k.code, KeyCode::Char('y')) {
                    self.quit_when_stopped = true;
                    self.run = RunState::Stopping;
                    return vec![Effect::Engine(Command::Stop { save: true })];
                }
                vec![]
            }
            Mode::ConfirmStop => match k.code {
                KeyCode::Char('y') | KeyCode::Char('n') => {
                    self.run = RunState::Stopping;
                    vec![Effect::Engine(Command::Stop { save: k.code == KeyCode::Char('y') })]
                }
                _ => vec![],
            },
            Mode::Command(buf) => self.command_key(k, buf),
            Mode::Schedule(d) => self.schedule_key(k, d),
        }
    }

    fn normal_key(&mut self, k: KeyEvent) -> Vec<Effect> {
        // Text entry first: the form field or the explorer prompt take every printable key.
        if let Some(buf) = self.form.editing.take() {
            return self.edit_field_key(k, buf);
        }
        if self.explorer.editing {
            return self.prompt_key(k);
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
            Action::NextPane => self.focus = (self.focus + 1) % PANES.len(),
            Action::PrevPane => self.focus = (self.focus + PANES.len() - 1) % PANES.len(),
            Action::Focus(i) => self.focus = i,
            Action::Zoom => self.zoomed = !self.zoomed,
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
            Action::EditSchedule => {
                let cur =
                    self.metrics.schedule.clone().or_else(|| self.form.config().ok().map(|c| c.schedule));
                self.mode = Mode::Schedule(ScheduleDraft::from(&cur.unwrap_or_default()));
            }
            Action::ToggleMouse => self.mouse = !self.mouse,
            Action::Up | Action::Down => {
                let d = if action == Action::Up { -1 } else { 1 };
                match self.scope() {
                    Scope::Models => self.models.move_by(d),
                    Scope::Hparams => self.form.move_by(d),
                    Scope::Explorer => {
                        let n = self.explorer.result.as_ref().map(|r| r.1.top.len()).unwrap_or(0);
                        if n > 0 {
                            self.explorer.selected =
                                (self.explorer.selected as isize + d).rem_euclid(n as isize) as usize;
                        }
                    }
                    Scope::Log => self.log.scroll(-d),
                    _ => {}
                }
            }
            Action::Select => return self.select(),
            Action::EditPrompt => self.explorer.editing = true,
            Action::ToggleChat => {
                self.explorer.chat = !self.explorer.chat;
                return self.probe();
            }
            Action::Pin => {
                self.explorer.pinned = match (&self.explorer.pinned, &self.explorer.result) {
                    (Some(_), _) | (None, None) => None,
                    (None, Some((step, r))) => Some((format!("step {step}"), r.clone())),
                };
            }
            Action::CompareBase => {
                self.explorer.compare_base = !self.explorer.compare_base;
                if self.explorer.compare_base {
                    return self.probe();
                }
                self.explorer.pinned = None;
            }
            Action::TempDown => self.explorer.temperature = (self.explorer.temperature - 0.1).max(0.1),
            Action::TempUp => self.explorer.temperature = (self.explorer.temperature + 0.1).min(5.0),
            Action::TopPDown => self.explorer.top_p = (self.explorer.top_p - 0.05).max(0.05),
            Action::TopPUp => self.explorer.top_p = (self.explorer.top_p + 0.05).min(1.0),
            Action::ProbeNow => return self.probe(),
            Action::Watch => self.explorer.toggle_watch(),
            Action::LogScale => self.metrics.log_scale = !self.metrics.log_scale,
            Action::SmoothMore => self.metrics.smoothing = (self.metrics.smoothing - 0.05).max(0.01),
            Action::SmoothLess => self.metrics.smoothing = (self.metrics.smoothing + 0.05).min(1.0),
        }
        vec![]
    }

    /// Enter in a pane.
    fn select(&mut self) -> Vec<Effect> {
        match self.scope() {
            Scope::Models => {
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
