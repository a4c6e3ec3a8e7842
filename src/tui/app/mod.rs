//! The workbench's state and its one `update`: TEA's `update(&mut App, Msg) -> Vec<Effect>`.
//! Panes keep their own sub-states (`state/`); `update` routes keys and folds engine events.

use std::path::PathBuf;

use crossterm::event::{KeyCode, KeyEvent, MouseButton, MouseEventKind};

mod events;
mod explore;
mod keys;
mod text;

use super::keymap::Scope;
use super::msg::{Effect, Msg};
use super::pane::Pane;
use super::state::data::DataView;
use super::state::explorer::ExplorerState;
use super::state::form::FormState;
use super::state::log::{Level, LogState};
use super::state::metrics::MetricsState;
use super::state::models::ModelsState;
pub use super::state::schedule::ScheduleDraft;
use super::ui::layout;
use crate::engine::Command;

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
    pub focus: Pane,
    pub zoomed: bool,
    pub mode: Mode,
    pub run: RunState,
    pub models: ModelsState,
    pub form: FormState,
    pub metrics: MetricsState,
    pub explorer: ExplorerState,
    pub data: DataView,
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
    /// The run directory whose engine host this workbench is attached to.
    pub attached: Option<PathBuf>,
}

impl App {
    pub fn new(form: FormState, color: bool) -> Self {
        Self {
            focus: Pane::Models,
            zoomed: false,
            mode: Mode::Normal,
            run: RunState::Idle,
            models: ModelsState { scanning: true, ..Default::default() },
            form,
            metrics: MetricsState::new(),
            explorer: ExplorerState::default(),
            data: DataView::default(),
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
            attached: None,
        }
    }

    pub fn active(&self) -> bool {
        matches!(self.run, RunState::Loading | RunState::Running | RunState::Paused | RunState::Stopping)
    }

    fn scope(&self) -> Scope {
        if self.data.open && matches!(self.focus, Pane::Metrics | Pane::Explorer) {
            return Scope::Data;
        }
        self.focus.scope()
    }

    /// What the data preview depends on in the form.
    fn data_inputs(&self) -> [Option<toml::Value>; 4] {
        let doc = &self.form.doc;
        let kind = doc.get("method").and_then(|m| m.get("kind")).cloned();
        [doc.get("data").cloned(), doc.get("model").cloned(), doc.get("tokenizer").cloned(), kind]
    }

    /// Asks for the data preview of the form's config.
    pub(super) fn preview_data(&mut self) -> Vec<Effect> {
        match self.form.config() {
            Ok(cfg) => {
                let id = self.data.ask();
                vec![Effect::PreviewData { id, config: Box::new(cfg) }]
            }
            Err(e) => {
                self.data.loading = false;
                self.data.preview = Some(Err(format!("config: {e}")));
                vec![]
            }
        }
    }

    pub fn update(&mut self, msg: Msg) -> Vec<Effect> {
        // The open Data view follows the form: a new preview when its inputs change. Only keys
        // (the form, `:set`) and a loaded config edit the form; not the 30 fps clock.
        let edits = matches!(msg, Msg::Key(_) | Msg::ConfigLoaded { .. });
        let before = (self.data.open && edits).then(|| self.data_inputs());
        let mut effects = self.update_inner(msg);
        if before.is_some_and(|b| self.data.open && b != self.data_inputs()) {
            effects.extend(self.preview_data());
        }
        effects
    }

    fn update_inner(&mut self, msg: Msg) -> Vec<Effect> {
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
                    if let Some((pane, _)) = rects.iter().find(|(_, r)| r.contains((m.column, m.row).into()))
                    {
                        self.focus = *pane;
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
            Msg::DataPreview { id, result } => {
                self.data.answer(id, result);
                vec![]
            }
            Msg::ExportProgress(s) => {
                self.log.push(Level::Info, format!("export: {s}"));
                vec![]
            }
            Msg::Exported(r) => {
                match r {
                    Ok((p, size)) => self.log.push(
                        Level::Info,
                        format!("exported {} ({})", p.display(), crate::export::human_size(size)),
                    ),
                    Err(e) => self.log.push(Level::Error, format!("export failed: {e}")),
                }
                vec![]
            }
            // The terminal is gone: leave. A run lives in its host and goes on.
            Msg::Signal => {
                self.quit = true;
                vec![]
            }
            Msg::Runs(runs) => {
                self.models.set_runs(runs);
                vec![]
            }
            Msg::Attached(dir) => {
                self.log.push(
                    Level::Info,
                    format!("attached to {}: the run goes on if this workbench closes", dir.display()),
                );
                if !self.active() {
                    self.run = RunState::Loading;
                }
                self.attached = Some(dir);
                vec![Effect::ScanRuns]
            }
            Msg::AttachFailed(e) => {
                self.run = RunState::Failed;
                self.log.push(Level::Error, e);
                vec![]
            }
            Msg::HostGone(_) => self.host_gone(),
        }
    }

    /// The attached run ended: let its host go (it exits once its clients have).
    fn run_ended(&mut self) -> Vec<Effect> {
        match self.attached.take() {
            Some(_) => vec![Effect::Detach, Effect::ScanRuns],
            None => vec![],
        }
    }

    fn host_gone(&mut self) -> Vec<Effect> {
        let dir = self.attached.take().map(|d| d.display().to_string()).unwrap_or_default();
        if self.active() {
            // It died mid-run (kill -9, OOM): its last complete checkpoint is in Runs.
            self.run = RunState::Failed;
            self.explorer.pending = None;
            self.log.push(
                Level::Error,
                format!("the engine host of {dir} is gone; the run is stale: resume it from Runs"),
            );
        } else {
            self.log.push(Level::Info, format!("detached from {dir}"));
        }
        if self.quit_when_stopped {
            self.quit = true;
        }
        vec![Effect::ScanRuns]
    }

    fn tick(&mut self) -> Vec<Effect> {
        self.ticks += 1;
        // The Runs list: statuses change as hosts start, finish and die.
        if self.ticks.is_multiple_of(90) {
            return vec![Effect::ScanRuns];
        }
        // While training, refresh the explorer about once a second.
        if self.run == RunState::Running
            && self.explorer.pending.is_none()
            && !self.explorer.conversation.on
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
        let active = self.active();
        self.explorer.requests(&mut self.next_id, active).into_iter().map(Effect::Engine).collect()
    }

    /// The live-edit form over the schedule in force (the engine's), or the form's for the next run.
    pub(super) fn schedule_draft(&self) -> ScheduleDraft {
        let m = &self.metrics;
        match &m.schedule {
            Some(s) => ScheduleDraft::new(&s.plan, m.grad_clip, m.total_steps),
            None => {
                let cfg = self.form.config().ok();
                let plan = cfg.as_ref().map(|c| c.schedule.clone()).unwrap_or_default();
                let clip = cfg.as_ref().map_or(1.0, |c| c.optim.grad_clip);
                ScheduleDraft::new(&plan, clip, cfg.and_then(|c| c.optim.max_steps).unwrap_or(1))
            }
        }
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
                vec![Effect::Host(Command::Start { config: Box::new(cfg), run_dir, resume: false })]
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
            Mode::ConfirmQuit => match k.code {
                KeyCode::Char('d') => {
                    self.quit = true;
                    vec![]
                }
                KeyCode::Char('s') => {
                    self.quit_when_stopped = true;
                    self.run = RunState::Stopping;
                    vec![Effect::Engine(Command::Stop { save: true })]
                }
                _ => vec![],
            },
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
}
