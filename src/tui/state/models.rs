//! The Models pane: what the user can train, and the selected model's details.

use std::path::PathBuf;

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

#[derive(Debug, Default)]
pub struct ModelsState {
    pub entries: Vec<ModelEntry>,
    pub selected: usize,
    pub scanning: bool,
    /// The device the engine computes on (`cpu`, `cuda:0`), shown under the details.
    pub device: String,
}

impl ModelsState {
    pub fn set(&mut self, entries: Vec<ModelEntry>) {
        self.entries = entries;
        self.selected = self.selected.min(self.entries.len().saturating_sub(1));
        self.scanning = false;
    }

    pub fn selected(&self) -> Option<&ModelEntry> {
        self.entries.get(self.selected)
    }

    pub fn move_by(&mut self, d: isize) {
        if self.entries.is_empty() {
            return;
        }
        let n = self.entries.len() as isize;
        self.selected = (self.selected as isize + d).rem_euclid(n) as usize;
    }
}
