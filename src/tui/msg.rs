//! Everything that can happen to the UI, and everything it asks for.

use std::path::PathBuf;

use crossterm::event::{KeyEvent, MouseEvent};

use super::state::models::ModelEntry;
use crate::engine::registry::RunSummary;
use crate::engine::{Command, Event};

#[derive(Debug)]
pub enum Msg {
    Key(KeyEvent),
    Mouse(MouseEvent),
    Resize(u16, u16),
    /// The ~30 fps clock.
    Tick,
    Engine(Event),
    Models(Vec<ModelEntry>),
    /// A config file read for the form (`start`: run it at once).
    ConfigLoaded {
        path: PathBuf,
        text: Result<String, String>,
        start: bool,
    },
    ConfigSaved {
        path: PathBuf,
        result: Result<(), String>,
    },
    /// Resident memory of the process, sampled by the main loop.
    Memory(u64),
    /// SIGHUP (the SSH link dropped) or SIGTERM: the workbench leaves, the run goes on.
    Signal,
    /// The user's runs, re-read from the registry.
    Runs(Vec<RunSummary>),
    /// Connected to the engine host of this run directory.
    Attached(PathBuf),
    /// Starting or attaching to a host failed.
    AttachFailed(String),
    /// The connection to the engine host ended (the host exited or was killed); the number
    /// tells the main loop which connection.
    HostGone(u64),
    /// A stage of a running export, and its end: the path and size written.
    ExportProgress(String),
    /// The Data view's preview for request `id`.
    DataPreview {
        id: u64,
        result: Result<Box<crate::data::preview::Preview>, String>,
    },
    Exported(Result<(PathBuf, u64), String>),
}

/// What `update` asks the main loop to do: engine commands, and file I/O kept out of `update`.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// To the attached engine host while there is one (except `Open`), else to the
    /// workbench's own engine (probing a model with no run).
    Engine(Command),
    /// Start an engine host for a run (a `Command::Start`) and attach to it.
    Host(Command),
    /// Attach to the host running this run directory.
    Attach(PathBuf),
    /// Resume this run directory (its own config.toml) in a new host, and attach.
    ResumeRun(PathBuf),
    /// Close the connection to the engine host (its run ended; the host then exits).
    Detach,
    /// Re-read the user's runs.
    ScanRuns,
    LoadConfig {
        path: PathBuf,
        start: bool,
    },
    SaveConfig {
        path: PathBuf,
        text: String,
    },
    /// The data preview of a config, off the UI thread (answered by `Msg::DataPreview`).
    PreviewData {
        id: u64,
        config: Box<crate::engine::config::RunConfig>,
    },
    /// `whet export` off the UI thread.
    Export(crate::export::ExportArgs),
}
