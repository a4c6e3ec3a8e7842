//! Everything that can happen to the UI, and everything it asks for.

use std::path::PathBuf;

use crossterm::event::{KeyEvent, MouseEvent};

use super::state::models::ModelEntry;
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
    /// SIGHUP (the SSH link dropped) or SIGTERM.
    Signal,
    /// A stage of a running export, and its end: the path and size written.
    ExportProgress(String),
    Exported(Result<(PathBuf, u64), String>),
}

/// What `update` asks the main loop to do: engine commands, and file I/O kept out of `update`.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    Engine(Command),
    LoadConfig {
        path: PathBuf,
        start: bool,
    },
    SaveConfig {
        path: PathBuf,
        text: String,
    },
    /// `whet export` off the UI thread.
    Export(crate::export::ExportArgs),
}
