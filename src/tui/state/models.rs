//! The Models pane: what the user can train, and the selected model's details.

use std::path::PathBuf;

use crate::engine::registry::RunSummary;
use crate::load::ModelSummary;

#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    Gguf,
    HfDir,
    /// An HF hub cache entry (`models--ORG--NAME`).
    HfCache,
    /// A from-scratch config in configs/.
    Scratch,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Status {
    Ok(ModelSummary),
    /// Listed but not usable: the reason is shown, the app goes on.
    Broken(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModelEntry {
    pub name: String,
    pub path: PathBuf,
    pub kind: Kind,
    pub status: Status,
}

/// The models, then the runs (`whet runs`): one selection over both lists.
#[derive(Debug, Default)]
pub struct ModelsState {
    pub entries: Vec<ModelEntry>,
    /// Every run this user started here, refreshed every few seconds.
    pub runs: Vec<RunSummary>,
    pub selected: usize,
    pub scanning: bool,
    /// The device the engine computes on (`cpu`, `cuda:0`), shown under the details.
    pub device: String,
}

impl ModelsState {
    pub fn set(&mut self, entries: Vec<ModelEntry>) {
        self.entries = entries;
        self.clamp();
        self.scanning = false;
    }

    pub fn set_runs(&mut self, runs: Vec<RunSummary>) {
        self.runs = runs;
        self.clamp();
    }

    fn len(&self) -> usize {
        self.entries.len() + self.runs.len()
    }

    fn clamp(&mut self) {
        self.selected = self.selected.min(self.len().saturating_sub(1));
    }

    pub fn selected(&self) -> Option<&ModelEntry> {
        self.entries.get(self.selected)
    }

    pub fn selected_run(&self) -> Option<&RunSummary> {
        self.selected.checked_sub(self.entries.len()).and_then(|i| self.runs.get(i))
    }

    pub fn move_by(&mut self, d: isize) {
        if self.len() == 0 {
            return;
        }
        let n = self.len() as isize;
        self.selected = (self.selected as isize + d).rem_euclid(n) as usize;
    }
}
