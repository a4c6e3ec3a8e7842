//! The five panes, by name: focus, layout, keymap scope and render all speak `Pane`.

use super::keymap::Scope;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pane {
    Models,
    Hparams,
    Metrics,
    Explorer,
    Log,
}

impl Pane {
    /// In display order (the number keys 1–5 follow it).
    pub const ALL: [Pane; 5] = [Pane::Models, Pane::Hparams, Pane::Metrics, Pane::Explorer, Pane::Log];

    pub fn title(self) -> &'static str {
        match self {
            Pane::Models => "Models",
            Pane::Hparams => "Hyperparameters",
            Pane::Metrics => "Metrics",
            Pane::Explorer => "Explorer",
            Pane::Log => "Log",
        }
    }

    /// 1-based, as the number keys and the pane titles show it.
    pub fn number(self) -> usize {
        Self::ALL.iter().position(|&p| p == self).map_or(0, |i| i + 1)
    }

    pub fn next(self) -> Pane {
        Self::ALL[self.number() % Self::ALL.len()]
    }

    pub fn prev(self) -> Pane {
        Self::ALL[(self.number() + Self::ALL.len() - 2) % Self::ALL.len()]
    }

    /// The keymap scope whose bindings apply while this pane has the focus.
    pub fn scope(self) -> Scope {
        match self {
            Pane::Models => Scope::Models,
            Pane::Hparams => Scope::Hparams,
            Pane::Metrics => Scope::Metrics,
            Pane::Explorer => Scope::Explorer,
            Pane::Log => Scope::Log,
        }
    }
}
